"""The experiment itself: typed config and its checks, the MNIST family's data, models, optimiser and
learning-rate schedule, augmentation, the trainer and its fast paths (fused step, CUDA graphs) and its NumPy
engine (the NumPy MLP, backpropagation by hand), checkpoints and run directories, metrics, and the hardware a
run uses. Nothing here knows of studies, analysis or serving; of ``output`` only ``experiment`` uses
``plots``, to draw a run's own figures (the allowed edges: README "Layout", tests/test_house.py).

Add a model: register it in ``models.ARCHS`` (an ``Arch`` entry that declares its properties: conv, options).
Add a dataset: register it in ``datasets.REGISTRY``.
"""
