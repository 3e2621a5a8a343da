"""A fused training step for the report's kind of model: a plain ReLU MLP trained by plain SGD.

Forward, hand-written backward and the SGD update run as a few matrix multiplies with no autograd graph,
no gradient tensors and no optimizer bookkeeping: each weight update is one in-place GEMM
(``W.addmm_(dZ.T, A, alpha=-lr)``). The parameters stay those of the ``nn.Module``, so evaluation,
checkpoints and export are untouched. The numbers equal the autograd step's within float rounding
(tests/test_fused.py); the step is used only where it computes exactly the same update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .models import MLP


def applies(model: nn.Module, cfg: Config) -> bool:
    """True when the fused step computes the same update as autograd + torch.optim.SGD would."""
    o, m = cfg.optim, cfg.model
    return (cfg.train.fast and isinstance(model, MLP) and m.activation == "relu" and not m.batchnorm
            and m.dropout == 0 and m.input_dropout == 0 and o.name == "sgd" and o.momentum == 0
            and o.weight_decay == 0 and o.label_smoothing == 0 and o.max_norm == 0)


class FusedMLPStep:
    """Train step for ``Linear -> ReLU -> ... -> Linear`` with SGD; the lr is read from ``optimizer``."""

    def __init__(self, model: MLP, optimizer: torch.optim.Optimizer, precision: str = "fp32") -> None:
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.pre = [m for m in model.net if not isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten))]  # e.g. Normalize
        self.optimizer = optimizer
        self.dtype = torch.bfloat16 if precision == "bf16" else None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lr = self.optimizer.param_groups[0]["lr"]
        a = x.flatten(1)  # (B, 784)
        for m in self.pre:
            a = m(a)
        cast = (lambda t: t.to(self.dtype)) if self.dtype else (lambda t: t)
        acts = []  # input of each Linear, (B, in)
        weights = [cast(lin.weight) for lin in self.linears]  # low-precision copies made once per step
        for i, lin in enumerate(self.linears):
            acts.append(cast(a))
            if lin.out_features < 64:  # a skinny output runs faster as (W @ A^T)^T
                a = torch.addmm(cast(lin.bias)[:, None], weights[i], acts[-1].t()).t()  # (B, out)
            else:
                a = torch.addmm(cast(lin.bias), acts[-1], weights[i].t())  # (B, out)
            if i < len(self.linears) - 1:
                a = a.relu_()
        logits = a.float()  # (B, 10)
        logp = torch.log_softmax(logits, 1)
        loss = -logp.gather(1, y[:, None]).mean()
        g = logp.exp_()  # softmax
        g[torch.arange(len(y), device=y.device), y] -= 1
        g.div_(len(y))  # dLoss/dlogits, (B, 10)
        for i in range(len(self.linears) - 1, -1, -1):
            lin, a_in = self.linears[i], acts[i]
            g_in = None
            if i > 0:  # gradient for the layer below, through ReLU (a_in > 0 where the unit fired)
                g_in = torch.ops.aten.threshold_backward(torch.mm(cast(g), weights[i]).float(), a_in, 0)
            if self.dtype is None:
                lin.weight.addmm_(g.t(), a_in, alpha=-lr)  # the update is the gradient GEMM itself
            else:  # bf16 GEMM, fp32 master weights (as under autocast)
                lin.weight.sub_(torch.mm(cast(g).t(), a_in), alpha=lr)
            lin.bias.sub_(g.sum(0), alpha=lr)
            g = g_in
        return loss


def build(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config) -> FusedMLPStep | None:
    return FusedMLPStep(model, optimizer, cfg.train.precision) if applies(model, cfg) else None


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """The plain autograd step the fused one replaces (for tests and benchmarks)."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
