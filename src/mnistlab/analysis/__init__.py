"""Looking inside models: ``evaluate`` (confusion, calibration, robustness, attacks, first layer),
``activations`` (activation-function studies: dead ReLUs, gradient norms), ``gradcheck`` and the NumPy MLP
(``numpy_mlp``, ``numpy_train``) that shows backpropagation by hand.
"""
