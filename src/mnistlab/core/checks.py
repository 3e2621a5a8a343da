"""The whole check of a config: its own ranges (``config.validate``), then what each part supports, checked
by the module that implements it. Every entry point that trains checks a config here first."""

from __future__ import annotations

from pathlib import Path

from . import augment, config, datasets, models, optim
from ..analysis import numpy_train
from .config import Config


def check(cfg: Config) -> Config:
    """Reject, by name, any value the registries or the chosen engine do not support; returns ``cfg``."""
    config.validate(cfg)
    datasets.check(cfg.data)
    augment.check(cfg.data)
    models.check(cfg.model)
    optim.check(cfg.optim)
    if cfg.train.engine == "numpy":
        numpy_train.check(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    """A TOML config file, loaded and wholly checked."""
    return check(config.load(path))


def set_values(cfg: Config, values: dict) -> Config:
    """``config.set_values``, wholly checked."""
    return check(config.set_values(cfg, values))
