"""The whole check of a config: its own ranges (``config.validate``), then what each part supports, checked
by the module that implements it. Every entry point that trains checks a config here first."""

from __future__ import annotations

from pathlib import Path

from . import augment, config, datasets, models, optim
from .config import Config
from ..errors import ConfigError


def check(cfg: Config) -> Config:
    """Reject, by name, any value the registries or the chosen engine do not support; returns ``cfg``."""
    config.validate(cfg)
    datasets.check(cfg.data)
    augment.check(cfg.data)
    models.check(cfg.model)
    optim.check(cfg.optim)
    if cfg.train.engine == "numpy":
        check_numpy_engine(cfg)
    return cfg


def check_numpy_engine(cfg: Config) -> None:
    """``train.engine = "numpy"``: the NumPy MLP (:mod:`mnistlab.analysis.numpy_train`) implements exactly the
    report's kind of training: plain SGD on an MLP with an activation it has by hand
    (:data:`mnistlab.core.models.BY_HAND`), in fp32, on the CPU."""
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.train
    rules = [(m.arch == "mlp", "model.arch", "mlp"), (m.activation in models.BY_HAND, "model.activation",
              "/".join(models.BY_HAND)), (not m.batchnorm, "model.batchnorm", "false"),
             (m.dropout == 0 and m.input_dropout == 0 and m.noise_std == 0, "model.dropout", "0 (and no noise)"),
             (not m.normalize, "model.normalize", "false"), (o.name == "sgd", "optim.name", "sgd"),
             (o.momentum == 0 and o.weight_decay == 0, "optim.momentum", "0 (and no weight decay)"),
             (o.schedule == "constant" and o.warmup_epochs == 0, "optim.schedule", "constant"),
             (o.max_norm == 0 and o.label_smoothing == 0, "optim.max_norm", "0 (and no label smoothing)"),
             (d.augment == "none", "data.augment", "none"), (t.precision in ("fp32", "auto"), "train.precision", "fp32"),
             (t.device in ("auto", "cpu"), "train.device", "cpu"),
             (cfg.regularize == type(cfg.regularize)(), "regularize.*", "their defaults (no VAT, FGSM, EMA or TTA)")]
    for ok, key, want in rules:
        if not ok:
            raise ConfigError(f"train.engine = 'numpy' needs {key} = {want}")


def load_config(path: str | Path) -> Config:
    """A TOML config file, loaded and wholly checked."""
    return check(config.load(path))


def set_values(cfg: Config, values: dict) -> Config:
    """``config.set_values``, wholly checked."""
    return check(config.set_values(cfg, values))
