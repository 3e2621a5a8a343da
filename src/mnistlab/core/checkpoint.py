"""Checkpoints as safetensors (tensors) + JSON (everything else): loading one can never run code.

``checkpoint.safetensors`` holds the whole training state after the last finished epoch in one file
(tensors as tensors, history and counters as JSON in the safetensors header), so ``mnistlab train
--resume RUN_DIR`` continues exactly where the run stopped. ``best.safetensors``
holds the model weights of the best-validation epoch (the last epoch when there is no validation set):
the model that ``predict``, ``export`` and ``serve`` use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from .. import __version__
from ..errors import MnistlabError
from .runs import RunDir, atomic_write

if TYPE_CHECKING:
    from .config import Config

FORMAT = 2  # one file, the metadata inside the safetensors header (no released version wrote another)
CHECKPOINT = "checkpoint.safetensors"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants plain contiguous CPU tensors (channels-last weights are not)
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).contiguous() for k, v in tensors.items()}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write(path, safetensors.torch.save(_contiguous(tensors), metadata=metadata))


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise MnistlabError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        tensors = safetensors.torch.load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise MnistlabError(f"{path} is not a valid safetensors file ({e})") from None
    return tensors, metadata


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return _read_safetensors(path)[0]


def exists(run: RunDir) -> bool:
    """Whether the run directory holds a training state to resume from."""
    return run.file(CHECKPOINT).is_file()


def save(run: RunDir, tensors: dict[str, torch.Tensor], meta: dict[str, Any], data_sha256: str) -> None:
    """Write the training state as one file (tensors and metadata together), so that a kill at any
    moment leaves the previous complete state or the new one, never parts of two."""
    record = {"format": FORMAT, "mnistlab": __version__, "torch": torch.__version__, "data_sha256": data_sha256, **meta}
    save_tensors(
        run.file(CHECKPOINT), tensors, {"format": str(FORMAT), "epoch": str(meta["epoch"]), "meta": json.dumps(record)}
    )


class CheckpointError(MnistlabError):
    """A checkpoint that cannot be resumed from: named, with what is wrong and what to do."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path} is not a usable checkpoint: {problem}; start the run again with --overwrite")


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """The one validation of a checkpoint's metadata: types and ranges of everything resume reads."""
    if not isinstance(meta, dict):
        raise CheckpointError(path, "its metadata is not an object")
    checks = {
        "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "history": lambda v: (
            isinstance(v, list) and all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in v)
        ),
        "best_val_acc": lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        "bad_epochs": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "stopped_early": lambda v: isinstance(v, bool),
        "optimizer_param_groups": lambda v: isinstance(v, list) and v and all(isinstance(g, dict) for g in v),
        "optimizer_scalars": lambda v: isinstance(v, dict),
        "data_sha256": lambda v: isinstance(v, str),
    }
    for key, ok in checks.items():
        if key not in meta:
            raise CheckpointError(path, f"'{key}' is missing")
        if not ok(meta[key]):
            raise CheckpointError(path, f"'{key}' has a wrong type or value ({meta[key]!r:.60})")
    if len(meta["history"]) != meta["epoch"]:
        raise CheckpointError(path, f"it records {len(meta['history'])} epochs of history for epoch {meta['epoch']}")
    return meta


def load(run: RunDir) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training state of a run directory, validated (one clear error for any problem)."""
    path = run.file(CHECKPOINT)
    if not path.is_file():
        raise MnistlabError(
            f"{run.path} has no checkpoint to resume from (it stopped before its first epoch "
            f"finished); start it again with --overwrite"
        )
    tensors, header = _read_safetensors(path)
    if header.get("format") != str(FORMAT) or "meta" not in header:
        raise CheckpointError(
            path,
            f"unknown checkpoint format {header.get('format')!r} (mnistlab writes format "
            f"{FORMAT}, its metadata in the file's header)",
        )
    try:
        meta = json.loads(header["meta"])
    except ValueError as e:
        raise CheckpointError(path, f"its metadata is not JSON ({e})") from None
    meta = _check_meta(meta, path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, f"unknown checkpoint format {meta.get('format')!r}")
    for key in ("rng.data", "rng.augment", "rng.dropout"):
        t = tensors.get(key)
        if t is None or t.dtype != torch.uint8 or t.dim() != 1:
            raise CheckpointError(path, f"the random-number state '{key}' is missing or malformed")
    return tensors, meta


# ---------------------------------------------------------------- the key layout of a training state
#   model.NAME          a model tensor (state_dict name)
#   optim.INDEX.KEY     a tensor of the optimizer state of parameter INDEX (momentum_buffer, exp_avg, step...)
#   rng.NAME            the state of a random generator (uint8)
#   ema.NAME            the weights' moving average (regularize.ema): AveragedModel's state_dict
# Non-tensor optimizer state goes to the metadata as "INDEX.KEY" scalars.


def pack_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A model, optimizer and generators as (tensors, optimizer scalars) in the layout above."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, Any] = {}
    for idx, st in optimizer.state_dict()["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{key}"] = v
            else:
                scalars[f"{idx}.{key}"] = v
    tensors.update({f"rng.{name}": g.get_state() for name, g in generators.items()})
    return tensors, scalars


def unpack_state(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any], model: torch.nn.Module, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, Any]], dict[str, torch.Tensor]]:
    """(model state_dict, optimizer state by parameter index, generator states) from a checkpoint, with
    every name and shape checked against ``model``; optimizer state comes back on ``device`` in the memory
    layout of its parameter (channels-last for a CNN's weights)."""
    where = CHECKPOINT
    check_shapes(tensors, model.state_dict(), "model.", where)
    params = list(model.parameters())
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            parts = k.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
                raise CheckpointError(where, f"{k} names no parameter of the model")
            idx = int(parts[1])
            if v.dim() > 0 and tuple(v.shape) != tuple(params[idx].shape):
                raise CheckpointError(
                    where, f"{k} has shape {tuple(v.shape)}, its parameter {tuple(params[idx].shape)}"
                )
            # in its parameter's memory layout: files hold the standard layout, a CNN's weights are channels-last,
            # and the fused optimizers pair a parameter's elements with its state's by memory position
            restored = torch.empty_like(params[idx], dtype=v.dtype, device=device).copy_(v) if v.dim() else v.to(device)
            state.setdefault(idx, {})[parts[2]] = restored
    for k, v in scalars.items():
        number, _, key = k.partition(".")
        if not number.isdigit() or int(number) >= len(params):
            raise CheckpointError(where, f"optimizer scalar {k!r} names no parameter of the model")
        state.setdefault(int(number), {})[key] = v
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    rngs = {k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")}
    return model_state, state, rngs


def check_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], prefix: str, path: str) -> None:
    """Every ``prefix`` tensor of a checkpoint must exist in ``expected`` with the same shape, and all of them."""
    got = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, extra = expected.keys() - got.keys(), got.keys() - expected.keys()
    if missing or extra:
        what = f"lacks {prefix}{sorted(missing)[0]}" if missing else f"has an unexpected {prefix}{sorted(extra)[0]}"
        raise CheckpointError(Path(path), f"it {what} (a checkpoint of another model?)")
    for k, v in expected.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise CheckpointError(
                Path(path), f"{prefix}{k} has shape {tuple(got[k].shape)}, the model needs {tuple(v.shape)}"
            )


def save_weights(run: RunDir, model: torch.nn.Module, epoch: int) -> None:
    save_tensors(run.file("best.safetensors"), model.state_dict(), {"epoch": str(epoch)})


def load_best_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Config]:
    """The model of a run directory, in eval mode: its best-validation weights (best.safetensors; the moving
    average of the weights for a run with ``regularize.ema``), which must be finite (a diverged model would
    print NaN probabilities); wrapped in :class:`~mnistlab.core.models.ShiftTTA` when the run lists test-time
    shifts (``regularize.tta_shifts``), so predict, serve, export and evaluate classify as the run evaluated."""
    from .datasets import get
    from .models import build_model, for_inference

    run = RunDir(path)
    if not run.file("config.toml").is_file() or not run.file("best.safetensors").is_file():
        raise MnistlabError(f"{run.path} is not a trained run directory (needs config.toml and best.safetensors)")
    cfg = run.read_config()
    model = build_model(cfg.model, torch.Generator().manual_seed(0), device, n_classes=get(cfg.data.dataset).n_classes)
    weights = load_tensors(run.file("best.safetensors"))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise MnistlabError(
            f"{run.file('best.safetensors')} does not fit the run's model: {str(e).splitlines()[0]}"
        ) from None
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise MnistlabError(f"{run.file('best.safetensors')} holds non-finite weights ({bad}): the model is unusable")
    return for_inference(model, cfg.regularize.tta_shifts).eval(), cfg
