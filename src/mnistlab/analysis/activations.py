"""Activation studies: the functions and their derivatives, dead ReLUs during training, and per-layer
gradient norms in a deep sigmoid vs ReLU MLP (the vanishing gradient the report describes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import checks, config, data
from ..core.models import ACTIVATIONS
from ..core.runs import atomic_write
from ..core.train import Trainer
from ..errors import MnistlabError

Log = Callable[[str], None]
STUDY_RECORD = "activations.json"  # the measured numbers; every figure is redrawn from them


def activation_curves(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each activation and its derivative (by autograd) on the points ``x``."""
    out = {}
    for name in ACTIVATIONS:  # the report's four, then two modern ones
        xg = x.clone().requires_grad_(True)
        y = ACTIVATIONS[name]()(xg)
        (dy,) = torch.autograd.grad(y.sum(), xg)
        out[name] = (y.detach(), dy)
    return out


def activation_figure(path: Path, lang: str = "en") -> None:
    """Two panels: the functions, and their derivatives."""
    from ..output.plots import language

    with language(lang):
        _activation_figure(path, lang)


def _activation_figure(path: Path, lang: str) -> None:
    from ..output.plots import save_figure, subplots, t

    x = torch.linspace(-5, 5, 1001)
    curves = activation_curves(x)
    fig, (a, b) = subplots(1, 2, figsize=(11, 4.2))
    for name, (y, dy) in curves.items():
        # dashed lines drawn later, and ReLU thicker: ReLU and leaky ReLU coincide for x > 0, and would
        # otherwise hide each other
        style = {
            "lw": 3.0 if name == "relu" else 1.5,
            "ls": "--" if name == "leaky_relu" else "-",
            "zorder": 3 if name == "leaky_relu" else 2,
        }
        a.plot(x, y, label=name, **style)
        b.plot(x, dy, label=name, **style)
    a.set(title=t("activation functions f(x)", lang), xlabel="x", ylim=(-1.5, 5))
    b.set(title=t("derivatives f'(x)", lang), xlabel="x", ylim=(-0.2, 1.2))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.axhline(0, color="black", lw=0.5)
        ax.axvline(0, color="black", lw=0.5)
    a.legend(fontsize=8)
    save_figure(fig, path)


def _hidden_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every activation module (in order) for input ``x``, in eval mode."""
    acts = tuple(type(ACTIVATIONS[n]()) for n in ACTIVATIONS)
    outs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outs.append(o.detach()))
        for m in model.modules()
        if isinstance(m, acts)
    ]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was)
    for h in hooks:
        h.remove()
    return outs


def dead_fraction(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Per hidden layer: the fraction of units whose output is <= 0 for every image in ``x`` (dead ReLUs;
    a leaky ReLU unit counts when its output is never positive)."""
    return [float((h <= 0).all(0).float().mean()) for h in _hidden_outputs(model, x)]


def layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """L2 norm of d(loss)/d(weight) for each Linear layer, input side first."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [float(m.weight.grad.norm()) if m.weight.grad is not None else 0.0 for m in layers]


def dead_relu_study(dataset: data.Dataset, epochs: int, log: Log) -> dict[str, Any]:
    """Dead units per epoch of the report's MLP: ReLU at the report's lr 0.1 and at a large lr 1.0, where
    big updates push units below zero for every input; leaky ReLU at lr 1.0 keeps a gradient and cannot die."""
    variants = {
        "relu, lr 0.1 (report)": ("relu", 0.1),
        "relu, lr 1.0": ("relu", 1.0),
        "leaky_relu, lr 1.0": ("leaky_relu", 1.0),
    }
    result = {}
    for label, (act, lr) in variants.items():
        cfg = checks.set_values(config.Config(), {"model.activation": act, "optim.lr": lr, "train.epochs": epochs})
        tr = Trainer(cfg, dataset, torch.device("cpu"))
        assert tr.val is not None  # the default config keeps a validation split
        probe = tr.val.x  # the 6,000 validation images
        series = [dead_fraction(tr.model, probe)[0]]

        def record(
            t: Trainer, row: dict[str, Any], improved: bool, series: list[float] = series, probe: torch.Tensor = probe
        ) -> None:  # bound now: the loop moves on after fit returns
            series.append(dead_fraction(t.model, probe)[0])

        tr.fit(record)
        result[label] = {"dead_fraction": series, "final_val_acc": tr.history[-1]["val_acc"]}
        log(f"dead units, {label}: " + " ".join(f"{v:.3f}" for v in series))
    return result


def gradient_study(dataset: data.Dataset, epochs: int, depth: int, width: int, log: Log) -> dict[str, Any]:
    """Per-layer weight-gradient norms of a deep MLP at initialisation and after training, sigmoid vs ReLU."""
    result = {}
    for act in ("sigmoid", "relu"):
        cfg = checks.set_values(
            config.Config(), {"model.activation": act, "model.hidden": [width] * depth, "train.epochs": epochs}
        )
        tr = Trainer(cfg, dataset, torch.device("cpu"))
        assert tr.val is not None  # the default config keeps a validation split
        x, y = tr.val.x[:1000], tr.val.y[:1000]
        init = layer_grad_norms(tr.model, x, y)
        tr.fit()
        trained = layer_grad_norms(tr.model, x, y)
        result[act] = {"init": init, "trained": trained, "val_acc": [r["val_acc"] for r in tr.history]}
        log(
            f"gradient norms, {act}: init "
            + " ".join(f"{v:.1e}" for v in init)
            + f"; val acc {tr.history[-1]['val_acc']:.2f}%"
        )
    return result


def study_figures(res: dict[str, Any], out: Path, lang: str = "en", prefix: str = "") -> None:
    """PREFIXdead_relu.png and PREFIXgradient_norms.png from the activation study's results."""
    from ..output.plots import language

    with language(lang):
        _study_figures(res, out, lang, prefix)


def _study_figures(res: dict[str, Any], out: Path, lang: str, prefix: str) -> None:
    from ..output.plots import save_figure, subplots, t

    fig, ax = subplots(figsize=(7, 4.2))
    for label, r in res["dead_relu"].items():
        shown = label.replace("(report)", "(보고서)") if lang == "ko" else label
        ax.plot(range(len(r["dead_fraction"])), [100 * v for v in r["dead_fraction"]], marker="o", ms=3, label=shown)
    ax.set(
        xlabel=t("epoch (0 = initialisation)", lang),
        ylabel=t("dead hidden units (%)", lang),
        title=t("Units that output 0 for all 6,000 validation images", lang),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / f"{prefix}dead_relu.png")

    g = res["gradients"]
    fig, ax = subplots(figsize=(7, 4.2))
    for act, style in (("sigmoid", "-"), ("relu", "--")):
        n = len(g[act]["init"])
        ax.semilogy(
            range(1, n + 1), g[act]["init"], style, marker="o", label=t("{}, at initialisation", lang).format(act)
        )
        ax.semilogy(
            range(1, n + 1), g[act]["trained"], style, marker="s", label=t("{}, after training", lang).format(act)
        )
    ax.set(
        xlabel=t("layer (1 = next to the input)", lang),
        ylabel=t("||dL/dW|| (log scale)", lang),
        title=t("Weight-gradient norm per layer, {} hidden layers", lang).format(n - 1),
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, out / f"{prefix}gradient_norms.png")


def run_activation_study(
    out: Path, epochs: int = 5, depth: int = 8, width: int = 256, log: Log = print
) -> dict[str, Any]:
    """All activation studies into ``out``: activations.png, dead_relu.png, gradient_norms.png, activations.json."""
    out.mkdir(parents=True, exist_ok=True)
    activation_figure(out / "activations.png")
    dataset = data.load()
    res = {
        "epochs": epochs,
        "depth": depth,
        "width": width,
        "dead_relu": dead_relu_study(dataset, epochs, log),
        "gradients": gradient_study(dataset, epochs, depth, width, log),
    }
    atomic_write(out / STUDY_RECORD, json.dumps(res, indent=1) + "\n")
    study_figures(res, out)
    return res


def read_activation_study(directory: Path) -> dict[str, Any]:
    """The numbers :func:`run_activation_study` wrote into ``directory`` (activations.json): ``epochs``,
    ``depth``, ``width``, ``dead_relu`` {label: {"dead_fraction": [per epoch], ...}} and ``gradients``
    {activation: {"init": [per layer], "val_acc": [per epoch], ...}}.

    Raises MnistlabError when ``directory`` holds no activation study."""
    try:
        res = json.loads((Path(directory) / STUDY_RECORD).read_text())
    except (OSError, ValueError):
        res = None
    if not (isinstance(res, dict) and {"epochs", "depth", "width", "dead_relu", "gradients"} <= res.keys()):
        raise MnistlabError(f"{directory} holds no activation study ({STUDY_RECORD}); run mnistlab activations")
    return res
