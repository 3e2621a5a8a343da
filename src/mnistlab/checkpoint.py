"""Checkpoints as safetensors (tensors) + JSON (everything else): loading one can never run code.

``checkpoint.safetensors``/``checkpoint.json`` hold the whole training state after the last finished
epoch, so ``mnistlab train --resume RUN_DIR`` continues exactly where the run stopped. ``best.safetensors``
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

from . import __version__
from .errors import MnistlabError
from .runs import RunDir, atomic_write

if TYPE_CHECKING:
    from .config import Config

FORMAT = 1


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants plain contiguous CPU tensors (channels-last weights are not)
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).contiguous() for k, v in tensors.items()}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write(path, safetensors.torch.save(_contiguous(tensors), metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(Path(path).read_bytes())
    except OSError as e:
        raise MnistlabError(f"cannot read {path}: {e.strerror or e}") from None
    except (SafetensorError, ValueError) as e:
        raise MnistlabError(f"{path} is not a valid safetensors file ({e})") from None


def save(run: RunDir, tensors: dict[str, torch.Tensor], meta: dict[str, Any], data_sha256: str) -> None:
    """Write the training state; the tensors first, so the JSON never points at a missing epoch."""
    save_tensors(run.file("checkpoint.safetensors"), tensors, {"format": str(FORMAT), "epoch": str(meta["epoch"])})
    record = {"format": FORMAT, "mnistlab": __version__, "torch": torch.__version__, "data_sha256": data_sha256,
              **meta}
    atomic_write(run.file("checkpoint.json"), json.dumps(record, indent=1) + "\n")


def load(run: RunDir) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = run.file("checkpoint.json")
    try:
        meta = json.loads(path.read_text())
    except OSError:
        raise MnistlabError(f"{run.path} has no checkpoint to resume from (checkpoint.json)") from None
    except ValueError as e:
        raise MnistlabError(f"{path} is corrupt ({e})") from None
    tensors = load_tensors(run.file("checkpoint.safetensors"))
    if meta.get("format") != FORMAT or "epoch" not in meta:
        raise MnistlabError(f"{path} has an unknown checkpoint format")
    if "rng.data" not in tensors:
        raise MnistlabError(f"{run.file('checkpoint.safetensors')} lacks the training state")
    return tensors, meta


def save_weights(run: RunDir, model: torch.nn.Module, epoch: int) -> None:
    save_tensors(run.file("best.safetensors"), model.state_dict(), {"epoch": str(epoch)})


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, "Config"]:
    """The model of a run directory, in eval mode: its best-validation weights (best.safetensors)."""
    from .models import build_model

    run = RunDir(path)
    if not run.file("config.toml").is_file() or not run.file("best.safetensors").is_file():
        raise MnistlabError(f"{run.path} is not a trained run directory (needs config.toml and best.safetensors)")
    cfg = run.read_config()
    model = build_model(cfg.model, torch.Generator().manual_seed(0), device)
    try:
        model.load_state_dict(load_tensors(run.file("best.safetensors")))
    except RuntimeError as e:
        raise MnistlabError(f"{run.file('best.safetensors')} does not fit the run's model: {str(e).splitlines()[0]}") from None
    return model.eval(), cfg
