"""Looking inside models: ``evaluate`` (confusion, calibration, robustness, attacks, first layer),
``activations`` (activation-function studies: dead ReLUs, gradient norms) and ``gradcheck`` (the NumPy MLP's
backpropagation by hand, :mod:`mnistlab.core.numpy_mlp`, against float64 autograd and finite differences).
"""
