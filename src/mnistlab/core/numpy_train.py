"""``--engine numpy``: the report's training with the NumPy MLP, on the same data, split, batch order and
initial weights as the PyTorch run (the split, order and initialisation come from the same code). What
configs it trains is checked with every config (:func:`mnistlab.core.checks.check_numpy_engine`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import data
from .config import Config
from .numpy_mlp import NumpyMLP
from .train import Split, Trainer


class NumpyTrainer(Trainer):
    """A :class:`Trainer` whose steps and evaluation run in NumPy; the torch model mirrors its weights
    after every epoch, so checkpoints, resume and ``predict`` work unchanged."""

    def __init__(self, cfg: Config, dataset: data.Dataset, device: torch.device) -> None:
        super().__init__(cfg, dataset, device)
        self.net = NumpyMLP.from_torch(self.model, cfg.model.activation)

    def _build_fused_step(self) -> None:
        return None  # the NumPy MLP takes the steps

    def _sync_to_torch(self) -> None:
        with torch.no_grad():
            for name, value in self.net.state_dict().items():
                self.model.get_parameter(name).copy_(torch.from_numpy(value))

    def load_state(self, tensors, meta) -> None:
        super().load_state(tensors, meta)
        self.net = NumpyMLP.from_torch(self.model, self.cfg.model.activation)

    def train_epoch(self, on_step: Callable[[], None] = lambda: None) -> float:
        b, lr = self.cfg.train.batch_size, self.cfg.optim.lr
        x = self.train_split.x.numpy().reshape(len(self.train_split.x), -1)  # (N, 784) float32 view
        y = self.train_split.y.numpy()
        order = self.train_idx[data.epoch_order(len(self.train_idx), self.g_data)].numpy()
        loss_sum = np.float32(0)
        for step in range(self.steps_per_epoch):
            idx = order[step * b : (step + 1) * b]
            loss_sum += self.net.loss_and_grads(x[idx], y[idx])
            self.net.sgd_step(lr)
            on_step()
        self._sync_to_torch()
        return float(loss_sum) / self.steps_per_epoch

    def loss_and_accuracy(self, split: Split) -> tuple[float, float]:
        x, y = split.x.numpy().reshape(len(split.x), -1), split.y.numpy()
        loss_sum, correct, chunk = 0.0, 0, self.cfg.train.eval_batch_size
        for i in range(0, len(x), chunk):
            logits = self.net.forward(x[i : i + chunk])
            loss_sum += self.net.loss_fn.forward(logits, y[i : i + chunk]) * len(logits)
            correct += int((logits.argmax(1) == y[i : i + chunk]).sum())
        return loss_sum / len(x), 100.0 * correct / len(x)
