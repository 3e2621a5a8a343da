"""Gradient checks of the NumPy MLP: every parameter gradient against PyTorch float64 autograd on the same
weights and batch, and against central finite differences on sampled coordinates."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.models import ACTIVATIONS, BY_HAND
from ..core.numpy_mlp import NumpyMLP
from ..errors import MnistlabError

AUTOGRAD_TOL = 1e-8  # max |numpy - autograd| / max |autograd|, per parameter
FD_TOL = 1e-6  # central differences in float64, relative to the gradient's scale


@dataclass
class CheckRow:
    activation: str
    param: str
    shape: tuple[int, ...]
    autograd_rel_err: float
    fd_rel_err: float

    @property
    def ok(self) -> bool:
        return self.autograd_rel_err < AUTOGRAD_TOL and self.fd_rel_err < FD_TOL


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _random_problem(sizes: list[int], batch: int, seed: int) -> tuple[list, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = [
        (rng.uniform(-1, 1, (o, i)) * np.sqrt(6 / i), rng.uniform(-0.1, 0.1, o)) for i, o in itertools.pairwise(sizes)
    ]
    x = rng.uniform(0, 1, (batch, sizes[0]))
    y = rng.integers(0, sizes[-1], batch)
    return weights, x, y


def check_activation(
    activation: str,
    sizes: list[int] | None = None,
    batch: int = 16,
    seed: int = 0,
    fd_samples: int = 12,
    eps: float = 1e-6,
) -> list[CheckRow]:
    """Compare the NumPy MLP's gradients for one activation with torch float64 autograd and with
    central finite differences at ``fd_samples`` random coordinates of each parameter."""
    sizes = sizes or [784, 64, 32, 10]
    weights, x, y = _random_problem(sizes, batch, seed)
    net = NumpyMLP([(w.copy(), b.copy()) for w, b in weights], activation)
    net.loss_and_grads(x, y)

    params = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for wb in weights for a in wb]
    h = torch.tensor(x)
    act = ACTIVATIONS[activation]()  # torch's layer of the same name, in float64
    for i in range(0, len(params), 2):
        h = h @ params[i].T + params[i + 1]
        if i < len(params) - 2:
            h = act(h)
    F.cross_entropy(h, torch.tensor(y)).backward()

    rng = np.random.default_rng(seed + 1)
    rows = []
    for k, ((value, grad), tp) in enumerate(zip(net.params(), params, strict=True)):
        assert tp.grad is not None  # every parameter is in the loss
        ref = tp.grad.numpy()
        fd_err = 0.0
        scale = max(np.abs(ref).max(), 1e-30)
        for _ in range(fd_samples):
            idx = tuple(int(rng.integers(0, n)) for n in value.shape)
            old = value[idx]
            value[idx] = old + eps
            up = net.loss_fn.forward(net.forward(x), y)
            value[idx] = old - eps
            down = net.loss_fn.forward(net.forward(x), y)
            value[idx] = old
            fd_err = max(fd_err, abs((up - down) / (2 * eps) - grad[idx]) / scale)
        name = f"layer{k // 2 + 1}.{'weight' if k % 2 == 0 else 'bias'}"
        rows.append(CheckRow(activation, name, value.shape, _rel(grad, ref), fd_err))
    return rows


def run_all(activations: list[str] | None = None, seed: int = 0) -> list[CheckRow]:
    """:func:`check_activation` for each of ``activations`` (default: every activation the NumPy MLP has,
    :data:`mnistlab.core.models.BY_HAND`); a name it does not have is a :class:`MnistlabError`."""
    for act in activations or []:
        if act not in BY_HAND:
            raise MnistlabError(
                f"--activation {act!r} is not one the NumPy MLP implements (choose from {', '.join(BY_HAND)})"
            )
    return [row for act in (activations or BY_HAND) for row in check_activation(act, seed=seed)]


def format_table(rows: list[CheckRow]) -> str:
    lines = [
        f"{'activation':<11} {'parameter':<14} {'shape':<11} {'vs autograd':>12} {'vs finite diff':>15}  result",
        "-" * 72,
    ]
    for r in rows:
        lines.append(
            f"{r.activation:<11} {r.param:<14} {'x'.join(map(str, r.shape)):<11} {r.autograd_rel_err:12.2e} "
            f"{r.fd_rel_err:15.2e}  {'ok' if r.ok else 'FAIL'}"
        )
    lines.append(f"tolerances: {AUTOGRAD_TOL:g} relative to float64 autograd, {FD_TOL:g} to central differences")
    return "\n".join(lines)
