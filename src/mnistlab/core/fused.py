"""A fused training step for the report's kind of model: a plain ReLU MLP trained by plain SGD.

Forward, hand-written backward and the SGD update run as a few matrix multiplies with no autograd graph,
no gradient tensors and no optimizer bookkeeping: in fp32 each weight update is one in-place GEMM
(``W.addmm_(dZ.T, A, alpha=-lr)``). In bf16 the matrix multiplies take bf16 operands (one cast of each
weight per step, reused by forward and backward) and update fp32 master weights, as autocast does.
The parameters stay those of the ``nn.Module``, so evaluation, checkpoints and export are untouched.
The numbers equal the autograd step's within float rounding (tests/test_fused.py); the step is used only
where it computes the same update as autograd + ``torch.optim.SGD``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .models import MLP

SKINNY = 64  # a layer with fewer outputs runs faster as (W @ A^T)^T


def applies(model: nn.Module, cfg: Config) -> bool:
    """True when the fused step computes the same update as autograd + torch.optim.SGD would: plain
    cross-entropy (no adversarial or virtual adversarial term; a weight EMA is updated after the step, and
    test-time shifts act at evaluation, so both work with it)."""
    o, m, r = cfg.optim, cfg.model, cfg.regularize
    return (
        cfg.train.fast
        and isinstance(model, MLP)
        and m.activation == "relu"
        and not m.batchnorm
        and m.dropout == 0
        and m.input_dropout == 0
        and m.noise_std == 0
        and o.name == "sgd"
        and o.momentum == 0
        and o.weight_decay == 0
        and o.label_smoothing == 0
        and o.max_norm == 0
        and r.vat_eps == 0
        and r.fgsm_eps == 0
    )


def _linear(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ w.T + b, (B, in) -> (B, out)."""
    if w.shape[0] < SKINNY:
        return torch.addmm(b[:, None], w, a.t()).t()
    return torch.addmm(b, a, w.t())


_MINUS_ONES: dict[tuple[int, torch.device], torch.Tensor] = {}  # (B, 1) of -1 per batch size and device


def _softmax_xent_grad(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and B times its gradient with respect to the logits, (B, C) fp32: softmax minus the
    one-hot target. The 1/B of the mean is left to the caller, which folds it into the update's scale (the
    backward pass is linear in the gradient), saving a pass over the gradient and an operator per step."""
    logp = torch.log_softmax(logits, 1)
    loss = F.nll_loss(logp, y)
    key = (len(y), logits.device)
    if key not in _MINUS_ONES:
        _MINUS_ONES[key] = torch.full((len(y), 1), -1.0, device=logits.device)
    return loss, logp.exp_().scatter_add_(1, y[:, None], _MINUS_ONES[key])


class FusedMLPStep:
    """Train step for ``Linear -> ReLU -> ... -> Linear`` with SGD; the lr is read from ``optimizer``."""

    def __init__(self, model: MLP, optimizer: torch.optim.Optimizer, precision: str = "fp32") -> None:
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.pre = [m for m in model.net if not isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten))]  # e.g. Normalize
        self.optimizer = optimizer
        self.bf16 = precision == "bf16"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lr = self.optimizer.param_groups[0]["lr"]
        a = x.flatten(1)  # (B, 784)
        for m in self.pre:
            a = m(a)
        if self.bf16:
            return self._bf16(a, y, lr)
        acts = []  # input of each Linear, (B, in)
        for i, lin in enumerate(self.linears):
            acts.append(a)
            a = _linear(a, lin.weight, lin.bias)
            if i < len(self.linears) - 1:
                a = a.relu_()
        loss, g = _softmax_xent_grad(a, y)  # g: B times dL/dlogits
        scale = 1.0 / len(y)  # the mean's 1/B, applied in each update
        for i in range(len(self.linears) - 1, -1, -1):
            lin = self.linears[i]
            # (B times) the gradient for the layer below (before this layer's update), through ReLU
            g_in = torch.ops.aten.threshold_backward(torch.mm(g, lin.weight), acts[i], 0) if i else g  # unused at i = 0
            if torch.is_tensor(lr):  # a device lr (CUDA graphs): scale the small gradient, then the same GEMM
                g = g * lr
                lin.weight.addmm_(g.t(), acts[i], alpha=-scale)
                lin.bias.sub_(g.sum(0), alpha=scale)
            else:
                lin.weight.addmm_(g.t(), acts[i], alpha=-lr * scale)  # the update is the gradient GEMM itself
                lin.bias.sub_(g.sum(0), alpha=lr * scale)
            g = g_in
        return loss

    def _bf16(self, a: torch.Tensor, y: torch.Tensor, lr: float | torch.Tensor) -> torch.Tensor:
        bf16 = torch.bfloat16
        weights = [lin.weight.to(bf16) for lin in self.linears]  # one cast per weight per step
        acts = []
        a = a.to(bf16)
        for i, lin in enumerate(self.linears):
            acts.append(a)
            a = _linear(a, weights[i], lin.bias.to(bf16))
            if i < len(self.linears) - 1:
                a = a.relu_()
        loss, g = _softmax_xent_grad(a.float(), y)
        g16 = g.to(bf16)  # B times the gradient
        lr = lr / len(y)  # the mean's 1/B
        for i in range(len(self.linears) - 1, -1, -1):
            lin = self.linears[i]
            g_in = (
                torch.ops.aten.threshold_backward(torch.mm(g16, weights[i]), acts[i], 0) if i else g16
            )  # unused at i = 0
            if torch.is_tensor(lr):  # a device lr (CUDA graphs)
                lin.weight.addcmul_(torch.mm(g16.t(), acts[i]), lr, value=-1)
                lin.bias.addcmul_(g16.sum(0, dtype=torch.float32), lr, value=-1)
            else:
                lin.weight.sub_(torch.mm(g16.t(), acts[i]), alpha=lr)  # bf16 gradient into fp32 master
                lin.bias.sub_(g16.sum(0, dtype=torch.float32), alpha=lr)
            g16 = g_in
        return loss


def build(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config) -> FusedMLPStep | None:
    return (
        FusedMLPStep(model, optimizer, cfg.train.precision) if isinstance(model, MLP) and applies(model, cfg) else None
    )
