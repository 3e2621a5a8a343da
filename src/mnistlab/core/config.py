"""Typed experiment configuration: dataclasses whose defaults are the report's experiment.

A config is loaded from TOML (``[data]``, ``[model]``, ``[optim]``, ``[train]`` tables plus a top-level
``name``). Unknown keys, values of the wrong type and values out of range are rejected by name with a
:class:`~mnistlab.errors.ConfigError`. Commands load and change configs through
:mod:`mnistlab.core.checks` (``load_config``, ``set_values``), which also checks what each registry supports.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "mnist"  # see mnistlab.core.datasets.REGISTRY (mnist is bundled; others are fetched once)
    dir: str = ""  # "" = where the dataset is (bundled, installed or cached); else a folder with its four files
    val_fraction: float = 0.1  # the report: 6,000 of the 60,000 training images
    train_on_val: bool = False  # final-model mode: train on train+validation (no validation metrics)
    augment: str = "none"  # see mnistlab.core.augment.AUGMENTATIONS
    max_shift: float = 2.0  # pixels
    max_rotation: float = 10.0  # degrees
    max_scale: float = 0.1  # relative
    max_shear: float = 0.1  # shear factor
    elastic_alpha: float = 34.0  # pixels of displacement before smoothing (Simard et al. 2003)
    elastic_sigma: float = 4.0  # Gaussian smoothing of the displacement field, pixels


@dataclass
class ModelConfig:
    arch: str = "mlp"  # see mnistlab.core.models.ARCHS
    hidden: list[int] = field(default_factory=lambda: [1024])  # MLP hidden layer widths
    activation: str = "relu"  # see mnistlab.core.models.ACTIVATIONS
    init: str = "report"  # see mnistlab.core.models.INITS
    dropout: float = 0.0  # after each hidden layer
    input_dropout: float = 0.0  # MLP only: dropout on the pixels
    batchnorm: bool = False  # MLP only: BatchNorm1d before each hidden activation
    noise_std: float = 0.0  # MLP only: Gaussian noise on the input and each hidden pre-activation, training only
    normalize: bool = False  # standardise pixels with MNIST's mean/std inside the model
    width: int = 32  # CNN only: channels of the first convolution block
    freeze_first: bool = False  # CNN only: the first convolution keeps its initial weights (no gradient)
    # CNN only: the first convolution starts as the whitened principal components of the training images'
    # patches, each with its negative (airbench's whitening layer; frozen with freeze_first): models.whiten_first_conv
    whiten_first: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"  # see mnistlab.core.optim.OPTIMIZERS
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "constant"  # see mnistlab.core.optim.SCHEDULES
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    min_lr_ratio: float = 0.0  # cosine / one-cycle / linear: final lr as a fraction of lr
    decay_start: float = 0.0  # linear schedule: fraction of training after which the lr decays linearly
    max_norm: float = 0.0  # > 0: clamp each unit's incoming weight vector to this L2 norm after a step
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 100
    seed: int = 123
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 only where the hardware runs it faster: mnistlab.core.hardware)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # 0 = leave torch's default
    eval_batch_size: int = 2000  # chunks that stay in cache
    patience: int = 0  # early stopping on validation accuracy; 0 = off
    fast: bool = True  # fused fp32 MLP/SGD step where it applies (same numbers within float tolerance)
    cuda_graphs: bool = True  # on a GPU, capture the training step once and replay it (where it applies)
    engine: str = "torch"  # torch | numpy (the from-scratch NumPy MLP: plain SGD MLPs only)


@dataclass
class RegularizeConfig:
    """Regularisers of the training objective, weight averaging and test-time augmentation; all off by
    default (see mnistlab.core.adversarial, mnistlab.core.optim.weight_ema, mnistlab.core.models.ShiftTTA)."""

    vat_eps: float = 0.0  # VAT (Miyato et al. 2018): L2 norm of the virtual adversarial perturbation; 0 = off
    vat_xi: float = 1e-6  # VAT: L2 norm of the probe of the power iteration (the authors' code: 1e-6)
    vat_iterations: int = 1  # VAT: power iterations (the authors: 1 is enough)
    vat_weight: float = 1.0  # VAT: weight of the KL term (the paper's alpha)
    fgsm_eps: float = 0.0  # FGSM adversarial training (Goodfellow et al. 2015): L-inf step; 0 = off
    fgsm_alpha: float = 0.5  # FGSM: weight of the clean loss; 1 - alpha weighs the adversarial loss
    ema: bool = False  # evaluate and save an exponential moving average of the weights (and BN statistics)
    ema_decay: float = 0.999  # EMA: w_ema <- decay * w_ema + (1 - decay) * w after every step
    tta_shifts: list[list[int]] = field(default_factory=list)  # [[dx, dy], ...]: evaluate the mean softmax over
    # these translations (pixels; dx right, dy down; include [0, 0] for the image itself); [] = off


@dataclass
class Config:
    name: str = "report_mlp"  # the report's MLP; names the run's directory in studies and evaluations
    label: str = ""  # what a study table calls this config, e.g. "MLP + dropout" (default: name)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)


# ---------------------------------------------------------------- loading and type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a programming error, not user input


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & data.keys():
        tp, value, key = hints[name], data[name], prefix + name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' must be a table")
            kwargs[name] = _from_dict(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dicts, rejecting unknown keys and wrong types by name."""
    cfg = _from_dict(Config, data, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load(path: str | Path) -> Config:
    """Load a TOML config file; keys left out keep the report's defaults."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return from_dict(data)


def dumps(cfg: Config) -> str:
    return tomli_w.dumps(to_dict(cfg))


def parse_value(text: str) -> Any:
    """A command-line value as TOML (``3``, ``0.1``, ``true``, ``[512, 512]``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def key_type(key: str) -> Any:
    """The annotated type of a dotted config key (``float`` for ``optim.lr``); unknown keys are rejected."""
    cls: Any = Config
    *path, leaf = key.split(".")
    for part in path:
        hints = typing.get_type_hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            raise ConfigError(f"unknown config key '{key}'")
        cls = hints[part]
    hints = typing.get_type_hints(cls)
    if leaf not in hints or dataclasses.is_dataclass(hints[leaf]):
        raise ConfigError(f"unknown config key '{key}'")
    return hints[leaf]


# ---------------------------------------------------------------- value checks

MAX_SEED = 2**32 - 1  # seeds are combined with stream offsets and must stay within torch's 64-bit seeds
MAX_THREADS = 1024  # torch crashes on absurd thread counts (100,000 segfaults)


def check_value(ok: bool, key: str, value: Any, want: str) -> None:
    """Reject ``value`` of ``key`` by name unless ``ok`` (used here and by each module's ``check``)."""
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: {want}")


def check_choice(key: str, value: str, choices: typing.Iterable[str]) -> None:
    """A name that must be one of a registry's keys (used by each module's ``check``)."""
    choices = sorted(choices)
    if value not in choices:
        raise ConfigError(f"config key '{key}' = {value!r} is unknown (choose from {', '.join(choices)})")


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express. What each model, optimizer, schedule, augmentation
    and engine supports is checked beside it (``models.check`` and so on), all together by
    :func:`mnistlab.core.checks.check`."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    # the name becomes a directory (studies, evaluations, reports): one safe path component, never "..",
    # an absolute path or a hidden file
    check_value(
        re.fullmatch(r"\w[\w.-]{0,127}", cfg.name) is not None,
        "name",
        cfg.name,
        "must be one file name of letters, digits, '_', '-' and '.', not starting with '.' or '-' "
        "(at most 128 characters)",
    )
    check_value(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "must be between 0 and 1")
    for key in ("max_shift", "max_rotation", "max_scale", "max_shear", "elastic_alpha"):
        check_value(getattr(d, key) >= 0, f"data.{key}", getattr(d, key), "must be >= 0")
    check_value(d.elastic_sigma > 0, "data.elastic_sigma", d.elastic_sigma, "must be > 0")
    check_value(d.max_scale < 1, "data.max_scale", d.max_scale, "must be < 1")

    check_value(
        len(m.hidden) > 0 and all(h > 0 for h in m.hidden),
        "model.hidden",
        m.hidden,
        "must be a non-empty list of positive widths",
    )
    check_value(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "must be in [0, 1)")
    check_value(0.0 <= m.input_dropout < 1.0, "model.input_dropout", m.input_dropout, "must be in [0, 1)")
    check_value(m.width > 0, "model.width", m.width, "must be > 0")
    check_value(m.noise_std >= 0, "model.noise_std", m.noise_std, "must be >= 0 (0 = off)")

    check_value(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    check_value(0.0 <= o.momentum < 1.0, "optim.momentum", o.momentum, "must be in [0, 1)")
    check_value(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    check_value(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "must be two numbers in [0, 1)"
    )
    check_value(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "must be >= 0")
    check_value(o.step_epochs > 0, "optim.step_epochs", o.step_epochs, "must be > 0")
    check_value(0 < o.gamma <= 1, "optim.gamma", o.gamma, "must be in (0, 1]")
    check_value(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    check_value(0 <= o.decay_start < 1, "optim.decay_start", o.decay_start, "must be in [0, 1)")
    check_value(o.max_norm >= 0, "optim.max_norm", o.max_norm, "must be >= 0 (0 = off)")
    check_value(0 <= o.label_smoothing < 1, "optim.label_smoothing", o.label_smoothing, "must be in [0, 1)")

    check_value(t.epochs > 0, "train.epochs", t.epochs, "must be > 0")
    check_value(t.batch_size > 0, "train.batch_size", t.batch_size, "must be > 0")
    check_value(0 <= t.seed <= MAX_SEED, "train.seed", t.seed, f"must be in [0, {MAX_SEED}]")
    check_choice("train.precision", t.precision, ("fp32", "bf16", "auto"))
    check_value(
        re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", t.device) is not None,
        "train.device",
        t.device,
        "must be auto, cpu, cuda or cuda:N",
    )
    check_value(
        0 <= t.threads <= MAX_THREADS,
        "train.threads",
        t.threads,
        f"must be in [0, {MAX_THREADS}] (0 = torch's default)",
    )
    check_value(t.eval_batch_size > 0, "train.eval_batch_size", t.eval_batch_size, "must be > 0")
    check_value(t.patience >= 0, "train.patience", t.patience, "must be >= 0 (0 = off)")
    check_value(
        not (d.train_on_val and t.patience),
        "train.patience",
        t.patience,
        "early stopping needs a validation set (data.train_on_val = true has none)",
    )
    check_choice("train.engine", t.engine, ("torch", "numpy"))

    r = cfg.regularize
    check_value(r.vat_eps >= 0, "regularize.vat_eps", r.vat_eps, "must be >= 0 (0 = off)")
    check_value(r.vat_xi > 0, "regularize.vat_xi", r.vat_xi, "must be > 0")
    check_value(r.vat_iterations >= 1, "regularize.vat_iterations", r.vat_iterations, "must be >= 1")
    check_value(r.vat_weight >= 0, "regularize.vat_weight", r.vat_weight, "must be >= 0")
    check_value(
        0 <= r.fgsm_eps <= 1, "regularize.fgsm_eps", r.fgsm_eps, "must be in [0, 1] (pixels are in [0, 1]; 0 = off)"
    )
    check_value(0 <= r.fgsm_alpha <= 1, "regularize.fgsm_alpha", r.fgsm_alpha, "must be in [0, 1]")
    check_value(0 <= r.ema_decay <= 1, "regularize.ema_decay", r.ema_decay, "must be in [0, 1]")
    check_value(
        all(len(s) == 2 and all(abs(v) < 28 for v in s) for s in r.tta_shifts),
        "regularize.tta_shifts",
        r.tta_shifts,
        "must be a list of [dx, dy] pixel pairs, each within (-28, 28)",
    )
    check_value(
        len(r.tta_shifts) == len({tuple(s) for s in r.tta_shifts}),
        "regularize.tta_shifts",
        r.tta_shifts,
        "must not repeat a shift",
    )
