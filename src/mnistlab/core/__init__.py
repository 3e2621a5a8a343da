"""The experiment itself: typed config and its checks, the MNIST family's data, models, optimiser and
learning-rate schedule, augmentation, the trainer and its fast paths (fused step, CUDA graphs), checkpoints
and run directories, metrics, and the hardware a run uses. Nothing here knows of studies, plots or serving.

Add a model: register it in ``models.ARCHS`` (an ``Arch`` entry that declares its properties: conv, options).
Add a dataset: register it in ``datasets.REGISTRY``.
"""
