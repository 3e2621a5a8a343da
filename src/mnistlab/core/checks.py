"""The one validating way to load and change a config: :func:`load_config` and :func:`set_values` (with
:func:`parse_overrides` for ``KEY=VALUE`` text) return configs that passed :func:`check`, the whole check:
the config's own ranges (``config.validate``), then what each part supports, checked by the module that
implements it. Light: nothing here imports the trainer (train, fused step, CUDA graphs, checkpoints)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import augment, config, datasets, models, optim
from .config import Config


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
    """``train.engine = "numpy"``: the NumPy MLP (:mod:`mnistlab.core.numpy_train`) implements exactly the
    report's kind of training: plain SGD on an MLP with an activation it has by hand
    (:data:`mnistlab.core.models.BY_HAND`), in fp32, on the CPU."""
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.train
    rules = [
        (m.arch == "mlp", "model.arch", "mlp"),
        (m.activation in models.BY_HAND, "model.activation", "/".join(models.BY_HAND)),
        (not m.batchnorm, "model.batchnorm", "false"),
        (m.dropout == 0 and m.input_dropout == 0 and m.noise_std == 0, "model.dropout", "0 (and no noise)"),
        (not m.normalize, "model.normalize", "false"),
        (o.name == "sgd", "optim.name", "sgd"),
        (o.momentum == 0 and o.weight_decay == 0, "optim.momentum", "0 (and no weight decay)"),
        (o.schedule == "constant" and o.warmup_epochs == 0, "optim.schedule", "constant"),
        (o.max_norm == 0 and o.label_smoothing == 0, "optim.max_norm", "0 (and no label smoothing)"),
        (d.augment == "none", "data.augment", "none"),
        (t.precision in ("fp32", "auto"), "train.precision", "fp32"),
        (t.device in ("auto", "cpu"), "train.device", "cpu"),
        (cfg.regularize == type(cfg.regularize)(), "regularize.*", "their defaults (no VAT, FGSM, EMA or TTA)"),
    ]
    for ok, key, want in rules:
        if not ok:
            raise ConfigError(f"train.engine = 'numpy' needs {key} = {want}")


def set_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with typed values set by dotted key (``{"optim.lr": 0.05}``), wholly checked.

    The one way configs are changed: ``--set`` text (:func:`parse_overrides`), command-line flags, a search's
    sampled parameters and the library's own changes all end here, so unknown keys, wrong types and values
    a registry does not support are rejected by name (:class:`ConfigError`) in one place."""
    data = config.to_dict(cfg)
    for key, value in values.items():
        *path, leaf = key.strip().split(".")
        node = data
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{key}'")
            node = node[part]
        if leaf not in node or isinstance(node[leaf], dict):
            raise ConfigError(f"unknown config key '{key}'")
        node[leaf] = value
    return check(config.from_dict(data))


def load_config(path: str | Path, values: dict[str, Any] | None = None) -> Config:
    """A TOML config file with ``values`` set (as :func:`set_values`), wholly checked: how every command
    loads the config it is given."""
    return set_values(config.load(path), values or {})


def parse_overrides(items: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` texts (``optim.momentum=0.9``, ``model.hidden=[512, 512]``) as typed values by dotted key,
    for :func:`set_values`: each value is read as TOML, else taken as a bare string; later keys win. Text
    without ``=`` is a :class:`ConfigError` naming ``flag``."""
    values: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} '{item}' must look like section.key=value")
        key, text = item.split("=", 1)
        values[key.strip()] = config.parse_value(text.strip())
    return values
