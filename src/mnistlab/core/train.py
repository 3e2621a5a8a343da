"""The training loop: in-memory tensors, a seeded permutation per epoch, metrics per epoch.

Random streams, each from an explicit generator seeded by ``train.seed``:

* ``g_data`` (CPU) replays the report's use of PyTorch's default generator, draw for draw: ``random_split``,
  the validation DataLoader's base seed, the layers' initialisation, then per epoch the training
  DataLoader's base seed and its RandomSampler's seed.
* ``g_aug`` (on the training device) draws the augmentation.
* ``g_drop`` (on the training device) draws the regularisers' randomness: dropout masks, Gaussian noise and
  VAT's random starting directions (saved as ``rng.dropout``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import ConfigError, DivergenceError
from . import adversarial, checkpoint, cudagraphs, data, fused
from .augment import augment
from .config import Config
from .metrics import autocast, loss_and_accuracy
from .models import STOCHASTIC_LAYERS, build_model, for_inference, whiten_first_conv
from .optim import apply_max_norm, build_optimizer, lr_factor, weight_ema

AUG_SEED_OFFSET = 1_000_003  # keep the augmentation and dropout streams apart from the data stream
DROPOUT_SEED_OFFSET = 2_000_003
WHITEN_IMAGES = 5_000  # model.whiten_first: the training images whose patches the first convolution whitens
EMA_PREFIX = "ema."  # checkpoint tensors of the weights' moving average (regularize.ema)


@dataclass
class Split:
    """Float images (N, 1, 28, 28) in [0, 1] and int64 labels, on the training device."""

    x: torch.Tensor
    y: torch.Tensor


class Trainer:
    """Owns the model, optimizer, schedule and random streams of one run, and trains it epoch by epoch."""

    def __init__(self, cfg: Config, dataset: data.Dataset, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        t = cfg.train
        n = len(dataset.train_images)
        train_idx, split_val_idx, self.g_data = data.run_split(n, cfg.data.val_fraction, t.seed)
        val_idx: torch.Tensor | None = split_val_idx
        self.g_aug = torch.Generator(device=device).manual_seed(t.seed + AUG_SEED_OFFSET)
        self.g_drop = torch.Generator(device=device).manual_seed(t.seed + DROPOUT_SEED_OFFSET)

        data.loader_seed(self.g_data)  # the report's validation DataLoader draws its base seed here
        self.model = build_model(cfg.model, self.g_data, device, n_classes=dataset.n_classes)
        for m in self.model.modules():
            if isinstance(m, STOCHASTIC_LAYERS):
                m.generator = self.g_drop
        if cfg.data.train_on_val:
            train_idx, val_idx = torch.arange(n), None

        x_all = data.to_float(dataset.train_images).to(device)
        y_all = dataset.train_labels.to(device)
        self.train_split = Split(x_all, y_all)  # all training images, indexed through train_idx (no copy)
        self.train_idx = train_idx
        if cfg.model.whiten_first:  # from training images only (never validation or test), before the optimizer
            whiten_first_conv(self.model, x_all[train_idx[:WHITEN_IMAGES].to(device)])
        self.val = None if val_idx is None else Split(x_all[val_idx.to(device)], y_all[val_idx.to(device)])
        self.test = Split(data.to_float(dataset.test_images).to(device), dataset.test_labels.to(device))

        if val_idx is not None and len(val_idx) == 0:
            raise ConfigError(
                f"data.val_fraction = {cfg.data.val_fraction} leaves no validation images out of "
                f"{n} (use a larger fraction, or data.train_on_val = true)"
            )
        if len(self.test.y) == 0:
            raise ConfigError("the test set holds no images")
        self.steps_per_epoch = len(train_idx) // t.batch_size  # drop_last, as the report's loader
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size = {t.batch_size} exceeds the {len(train_idx)} training images")
        self.optimizer = build_optimizer(self.model, cfg.optim)
        r = cfg.regularize
        self.ema = weight_ema(self.model, r.ema_decay) if r.ema else None
        # what is evaluated every epoch: the EMA weights when on, through test-time shifts when listed
        self.eval_model = for_inference(self.weights, r.tta_shifts)
        self.total_steps = t.epochs * self.steps_per_epoch
        self.scheduled = cfg.optim.schedule != "constant" or cfg.optim.warmup_epochs > 0
        self.fused_step = self._build_fused_step()
        self.use_graphs = cudagraphs.applies(self.model, cfg, device)
        self.graph: cudagraphs.StepGraph | None = None  # captured at the first epoch, after any resume
        self.loss_sum = torch.zeros((), device=device)  # the epoch's summed batch losses; static under graphs
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_val_acc = -math.inf
        self.bad_epochs = 0  # epochs since validation accuracy last improved
        self.stopped_early = False

    @property
    def weights(self) -> torch.nn.Module:
        """The model whose weights the run evaluates and saves (best.safetensors): the raw model, or its
        exponential moving average when ``regularize.ema`` is on."""
        return self.ema.module if self.ema is not None else self.model

    def _build_fused_step(self) -> fused.FusedMLPStep | None:
        return fused.build(self.model, self.optimizer, self.cfg)

    def get_lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based over the whole run): a pure function."""
        return self.cfg.optim.lr * lr_factor(step, self.total_steps, self.steps_per_epoch, self.cfg.optim)

    def _set_lr(self, step: int) -> None:
        """Write step ``step``'s lr into the optimizer: in place where it is a device tensor (CUDA graphs
        read it there), as a float otherwise."""
        lr = self.get_lr(step)
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    @property
    def done(self) -> bool:
        return self.stopped_early or self.epoch >= self.cfg.train.epochs

    # ------------------------------------------------------------ one epoch

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on the batch (no schedule step: that is host work, outside CUDA graphs)."""
        o = self.cfg.optim
        if self.fused_step is not None:
            return self.fused_step(x, y)
        with autocast(self.device, self.cfg.train.precision):
            loss = self._loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if o.max_norm > 0:
            apply_max_norm(self.model, o.max_norm)
        return loss.detach()

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective on a batch: the cross-entropy, with FGSM adversarial training and VAT
        added when on (``regularize.*``; formulas and sources in :mod:`mnistlab.core.adversarial`):

        ``alpha * CE(x) + (1 - alpha) * CE(x_fgsm) + vat_weight * KL(p(y|x) || p(y|x + r_adv))``.

        The forward passes on perturbed images do not update batch-norm statistics."""
        r, smoothing = self.cfg.regularize, self.cfg.optim.label_smoothing
        # FGSM needs d(loss)/dx of this very forward pass
        x_in = x.detach().requires_grad_(True) if r.fgsm_eps else x
        logits = self.model(x_in)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        if r.fgsm_eps:
            (grad,) = torch.autograd.grad(loss, x_in, retain_graph=True)
            x_adv = adversarial.fgsm_perturb(x, grad, r.fgsm_eps)
            with adversarial.frozen_bn_stats(self.model):
                adv_loss = F.cross_entropy(self.model(x_adv).float(), y, label_smoothing=smoothing)
            loss = r.fgsm_alpha * loss + (1 - r.fgsm_alpha) * adv_loss
        if r.vat_eps:
            loss = loss + r.vat_weight * adversarial.vat_loss(
                self.model, x, logits, r.vat_eps, r.vat_xi, r.vat_iterations, self.g_drop
            )
        return loss

    def _batch_update(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.train_split.x.index_select(0, idx)  # (B, 1, 28, 28)
        y = self.train_split.y.index_select(0, idx)
        if self.cfg.data.augment != "none":
            x = augment(x, self.cfg.data, self.g_aug)
        return self._update(x, y)

    def _step(self, idx: torch.Tensor) -> None:
        """One training step, its loss added to the epoch's sum (the body a CUDA graph captures)."""
        self.loss_sum += self._batch_update(idx)

    def train_epoch(self, on_step: Callable[[], None] = lambda: None) -> float:
        """One pass over the training set in the seeded order; returns the mean batch loss."""
        b = self.cfg.train.batch_size
        self.model.train()
        order = self.train_idx[data.epoch_order(len(self.train_idx), self.g_data)].to(self.device)
        if self.use_graphs and self.graph is None:
            cudagraphs.tensor_lr(self.optimizer, self.device)
            self.graph = cudagraphs.StepGraph(self._step, b, self.device, self.model, self.optimizer)
        self.loss_sum.zero_()
        first = self.epoch * self.steps_per_epoch
        for step in range(self.steps_per_epoch):
            if self.scheduled:
                self._set_lr(first + step)
            idx = order[step * b : (step + 1) * b]
            if self.graph is not None:
                self.graph.run(idx)
            else:
                self._step(idx)
            if self.ema is not None:  # outside the step (and its CUDA graph): it reads the updated weights
                self.ema.update_parameters(self.model)
            on_step()
        return self.loss_sum.item() / self.steps_per_epoch

    # ------------------------------------------------------------ the loop

    def loss_and_accuracy(self, split: Split) -> tuple[float, float]:
        """Mean cross-entropy and accuracy in percent of the evaluated model on ``split``."""
        t = self.cfg.train
        return loss_and_accuracy(self.eval_model, split.x, split.y, t.eval_batch_size, t.precision)

    def fit(
        self, on_epoch: Callable[[Trainer, dict[str, Any], bool], None] = lambda *a: None, show_progress: bool = False
    ) -> list[dict[str, Any]]:
        """Train until ``train.epochs`` (or early stopping); ``on_epoch(trainer, row, improved)`` after each."""
        t = self.cfg.train
        while not self.done:
            start = time.perf_counter()
            lr = self.get_lr(self.epoch * self.steps_per_epoch)  # the lr of the epoch's first step
            with tqdm(
                total=self.steps_per_epoch,
                desc=f"epoch {self.epoch + 1}/{t.epochs}",
                leave=False,
                disable=not show_progress,
                unit="batch",
            ) as bar:
                train_loss = self.train_epoch(lambda: bar.update())
            row: dict[str, Any] = {
                "epoch": self.epoch + 1,
                "train_loss": train_loss,
                "lr": lr,
                "seconds": time.perf_counter() - start,
            }
            if not math.isfinite(train_loss):
                self.history.append(row)
                on_epoch(self, row, False)
                raise DivergenceError(
                    f"training diverged: mean loss of epoch {self.epoch + 1} is {train_loss} (try a smaller optim.lr)"
                )
            start = time.perf_counter()
            if self.val is not None:
                row["val_loss"], row["val_acc"] = self.loss_and_accuracy(self.val)
            row["test_loss"], row["test_acc"] = self.loss_and_accuracy(self.test)
            row["eval_seconds"] = time.perf_counter() - start
            self.epoch += 1
            self.history.append(row)
            improved = self.val is not None and row["val_acc"] > self.best_val_acc
            if improved:
                self.best_val_acc, self.bad_epochs = row["val_acc"], 0
            else:
                self.bad_epochs += 1
            self.stopped_early = bool(t.patience and self.bad_epochs >= t.patience)
            on_epoch(self, row, improved)
        return self.history

    # ------------------------------------------------------------ state, for exact resume

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything that determines the rest of the run: tensors (weights, optimizer state, RNG states,
        in :mod:`checkpoint`'s layout) and JSON-able metadata (epoch, history, early-stopping counters).
        The lr is a function of the step, and the step is the epoch times the steps per epoch: no schedule
        state to keep."""
        tensors, scalars = checkpoint.pack_state(self.model, self.optimizer, self._generators())
        if self.ema is not None:
            tensors.update({f"{EMA_PREFIX}{k}": v for k, v in self.ema.state_dict().items()})
        best = self.best_val_acc if math.isfinite(self.best_val_acc) else None
        meta = {
            "epoch": self.epoch,
            "history": self.history,
            "best_val_acc": best,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "optimizer_param_groups": _jsonable(self.optimizer.state_dict()["param_groups"]),
            "optimizer_scalars": scalars,
        }
        return tensors, meta

    def _generators(self) -> dict[str, torch.Generator]:
        return {"data": self.g_data, "augment": self.g_aug, "dropout": self.g_drop}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore a :meth:`state` (validated by :func:`checkpoint.load`); the trainer must have been built
        from the same config and data. Tensors of the wrong names or shapes are a clear error."""
        model_state, optim_state, rngs = checkpoint.unpack_state(
            tensors, meta["optimizer_scalars"], self.model, self.device
        )
        groups = meta["optimizer_param_groups"]
        n_params = len(list(self.model.parameters()))
        if len(groups) != len(self.optimizer.param_groups) or sorted(groups[0].get("params", [])) != list(
            range(n_params)
        ):
            raise checkpoint.CheckpointError(
                checkpoint.CHECKPOINT, "its optimizer parameter groups do not fit the model"
            )
        self.model.load_state_dict(model_state)
        if self.ema is not None:
            expected = self.ema.state_dict()
            checkpoint.check_shapes(tensors, expected, EMA_PREFIX, checkpoint.CHECKPOINT)
            self.ema.load_state_dict({k: tensors[EMA_PREFIX + k].to(self.device) for k in expected})
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
        try:
            for name, g in self._generators().items():
                g.set_state(rngs[name])
        except RuntimeError as e:
            raise checkpoint.CheckpointError(
                checkpoint.CHECKPOINT, f"a random-number state does not fit ({str(e).splitlines()[0]})"
            ) from None
        self.epoch, self.history = meta["epoch"], meta["history"]
        best = meta["best_val_acc"]
        self.best_val_acc = -math.inf if best is None else best
        self.bad_epochs = meta["bad_epochs"]
        self.stopped_early = meta["stopped_early"]
        if self.epoch > self.cfg.train.epochs:
            raise checkpoint.CheckpointError(
                checkpoint.CHECKPOINT,
                f"its epoch {self.epoch} is past the config's train.epochs = {self.cfg.train.epochs}",
            )
        # the lr is the step's (checkpoints of older versions hold the lr their schedule had reached)
        self._set_lr(self.epoch * self.steps_per_epoch)


def _jsonable(obj: Any) -> Any:
    """Replace one-element tensors (device learning rates under CUDA graphs) by floats, recursively."""
    if torch.is_tensor(obj):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_jsonable(v) for v in obj)
    return obj
