"""Optimizers, learning-rate schedules and the max-norm weight constraint, from registries."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import OptimConfig, check_choice, check_value

# fused implementations: one kernel per step for all parameters, and no host syncs on the step counter
OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter], OptimConfig], torch.optim.Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(
        p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay, fused=True
    ),
    "adam": lambda p, c: torch.optim.Adam(
        p, lr=c.lr, betas=(c.betas[0], c.betas[1]), weight_decay=c.weight_decay, fused=True
    ),
    "adamw": lambda p, c: torch.optim.AdamW(
        p, lr=c.lr, betas=(c.betas[0], c.betas[1]), weight_decay=c.weight_decay, fused=True
    ),
    "rmsprop": lambda p, c: torch.optim.RMSprop(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}

# name -> lr factor as a function of (progress t in [0, 1] after warm-up, epoch, config)
SCHEDULES: dict[str, Callable[[float, int, OptimConfig], float]] = {
    "constant": lambda t, epoch, c: 1.0,
    "step": lambda t, epoch, c: c.gamma ** (epoch // c.step_epochs),
    "cosine": lambda t, epoch, c: c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)),
    "onecycle": lambda t, epoch, c: c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)),
    # constant until decay_start, then linear to min_lr_ratio (Rasmus et al. 2015: Adam, last third annealed)
    "linear": lambda t, epoch, c: (
        1.0 if t <= c.decay_start else 1.0 - (1 - c.min_lr_ratio) * (t - c.decay_start) / (1 - c.decay_start)
    ),
}

ONECYCLE_WARMUP = 0.3  # one-cycle's default share of steps spent warming up, as in torch's OneCycleLR
ONECYCLE_START = 1 / 25  # ... starting from lr / 25


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """The multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up (``warmup_epochs``, or 30% for one-cycle) rises linearly to 1; the schedule then runs over
    the remaining steps.
    """
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    start = 0.0
    if cfg.schedule == "onecycle" and warm == 0:
        warm, start = round(ONECYCLE_WARMUP * total_steps), ONECYCLE_START
    if step < warm:
        return start + (1 - start) * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return SCHEDULES[cfg.schedule](t, step // steps_per_epoch, cfg)


def check(o: OptimConfig) -> None:
    """What the optimizer and schedule registries support."""
    check_choice("optim.name", o.name, OPTIMIZERS)
    check_choice("optim.schedule", o.schedule, SCHEDULES)
    check_value(
        not o.nesterov or (o.name == "sgd" and o.momentum > 0),
        "optim.nesterov",
        o.nesterov,
        "needs optim.name = 'sgd' and optim.momentum > 0",
    )


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](model.parameters(), cfg)


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Rescale each unit's incoming weights to L2 norm <= ``max_norm`` (Srivastava et al. 2014)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.weight.renorm_(2, 0, max_norm)  # dim 0 = output units


def weight_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters and buffers (batch-norm running statistics
    included), updated by ``ema.update_parameters(model)`` after every optimizer step:
    ``w_ema <- decay * w_ema + (1 - decay) * w``, starting from a copy of the weights at the first update
    (Polyak & Juditsky 1992's averaging, in its exponential form; the decay 0.999 of Tarvainen & Valpola 2017).
    Decay 0 keeps the EMA equal to the raw weights. ``ema.module`` is the averaged model, kept in eval mode.
    PyTorch's ``AveragedModel`` with ``get_ema_multi_avg_fn``: one fused lerp per step for all tensors.
    """
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return ema.eval()
