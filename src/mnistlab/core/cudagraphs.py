"""CUDA graphs for the training step: one captured step replayed per batch, so that a small model's
step costs one launch instead of dozens of Python-issued kernels.

The step reads its batch through a static index buffer (the host copies each batch's indices into it) and
adds its loss to the trainer's static epoch accumulator (zeroed at each epoch's start, so the warm-up
counts for nothing). Learning rates become one-element device tensors that the schedule
fills in place, so a schedule keeps working under replay. Capture needs a few warm-up steps, which change
the weights and the optimizer state; both are put back afterwards, so the run's numbers do not depend on
whether it was captured. On a CPU (tests) ``replay`` runs the same body eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import Config
from .models import STOCHASTIC_LAYERS

GRAPH_OPTIMIZERS = ("sgd", "adam", "adamw")  # fused implementations that accept a tensor lr under capture
WARMUP_STEPS = 3


def applies(model: nn.Module, cfg: Config, device: torch.device) -> bool:
    """Capture needs no host work inside the step: no augmentation or dropout draws from host-side state, and
    no FGSM or VAT term (extra passes, input gradients and draws the captured step does not implement). A
    weight EMA is updated outside the captured step, so it works with graphs."""
    dropout = any(isinstance(m, STOCHASTIC_LAYERS) for m in model.modules())
    r = cfg.regularize
    return (
        cfg.train.cuda_graphs
        and cfg.train.fast
        and device.type == "cuda"
        and cfg.data.augment == "none"
        and not dropout
        and cfg.optim.name in GRAPH_OPTIMIZERS
        and r.vat_eps == 0
        and r.fgsm_eps == 0
    )


def tensor_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make each group's lr a device tensor (the trainer fills it in place each step) and allow capture."""
    for group in optimizer.param_groups:
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        if "capturable" in group:
            group["capturable"] = True


class StepGraph:
    """``body(idx)`` (a training step that adds its loss to the trainer's epoch sum) captured once;
    :meth:`run` replays it for each batch's indices."""

    def __init__(
        self,
        body: Callable[[torch.Tensor], None],
        batch_size: int,
        device: torch.device,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.body = body
        self.idx = torch.arange(batch_size, device=device)  # (B,) static: any valid indices for warm-up
        self.graph: torch.cuda.CUDAGraph | None = None
        saved_model = {k: v.clone() for k, v in model.state_dict().items()}
        saved_optim = {
            p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in optimizer.state.items()
        }
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._body()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._body()
        else:
            for _ in range(WARMUP_STEPS):
                self._body()
        # undo the warm-up: weights, buffers and optimizer state as they were (state created by the
        # warm-up starts from zero, which is where SGD momentum, Adam and RMSprop start)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for p, st in optimizer.state.items():
                for k, v in st.items():
                    if torch.is_tensor(v) and k in saved_optim.get(p, {}):
                        v.copy_(saved_optim[p][k])
                    elif torch.is_tensor(v):
                        v.zero_()

    def _body(self) -> None:
        self.body(self.idx)

    def run(self, idx: torch.Tensor) -> None:
        """One training step on the images ``idx`` (B,) on the device."""
        self.idx.copy_(idx)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
