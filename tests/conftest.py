"""Shared fixtures: the bundled MNIST, and small MNIST-format directories cut from it."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from mnistlab.core import data

# no library telemetry from tests (Ray's usage statistics, MLflow's telemetry)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array in IDX format."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_mnist_dir(
    directory: Path, ds: data.Dataset, n_train: int, n_test: int, compress: bool = True, layout: str = "flat"
) -> Path:
    """Write the first n_train/n_test samples of ``ds`` as the four MNIST files."""
    target = directory / "MNIST" / "raw" if layout == "torchvision" else directory
    target.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": ds.train_images[:n_train].numpy(),
        "train-labels-idx1-ubyte": ds.train_labels[:n_train].numpy().astype(np.uint8),
        "t10k-images-idx3-ubyte": ds.test_images[:n_test].numpy(),
        "t10k-labels-idx1-ubyte": ds.test_labels[:n_test].numpy().astype(np.uint8),
    }
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if compress:
            (target / (name + ".gz")).write_bytes(gzip.compress(raw, mtime=0))
        else:
            (target / name).write_bytes(raw)
    return directory


@pytest.fixture(scope="session")
def mnist() -> data.Dataset:
    return data.load()


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory, mnist) -> Path:
    """2,000 training and 500 test images of real MNIST, gzip-compressed, in the official names."""
    return write_mnist_dir(tmp_path_factory.mktemp("small_mnist"), mnist, 2000, 500)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A usable model: the report's MLP with 256 hidden units, 2 epochs on the full bundled MNIST (~96%)."""
    from mnistlab.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--hidden", "256", "--epochs", "2", "--quiet", "--out", str(out)]) == 0
    return out


def train_tiny(data_dir: Path | str, out: Path | str, *extra: str, epochs: int = 1, hidden: int = 8) -> int:
    """``mnistlab train`` of a tiny MLP (one hidden layer of ``hidden`` units) on ``data_dir`` into ``out``,
    quietly; ``extra``: more command-line arguments. Returns the command's exit code."""
    from mnistlab.cli import main

    return main(
        [
            "train",
            "--data-dir",
            str(data_dir),
            "--epochs",
            str(epochs),
            "--hidden",
            str(hidden),
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )


def interrupt_at_epoch(monkeypatch, n: int) -> None:
    """Make the n-th call of Trainer.train_epoch (counted across trainers) raise KeyboardInterrupt,
    as Ctrl-C would; ``monkeypatch.undo()`` restores training."""
    from mnistlab.core import train

    real, calls = train.Trainer.train_epoch, {"n": 0}

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(train.Trainer, "train_epoch", interrupting)


def tiny_trained(model, ds: data.Dataset, steps: int = 200):
    """``model`` after ``steps`` seeded SGD steps (lr 0.1, batch 100) on the first 2,000 training images,
    in eval mode, with the first 128 test images: (model, x (128, 1, 28, 28), y (128,))."""
    import torch
    import torch.nn.functional as F

    x, y = data.to_float(ds.train_images[:2000]), ds.train_labels[:2000]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 2000, (100,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data.to_float(ds.test_images[:128]), ds.test_labels[:128]


def modules_after(*commands: list[str]) -> list[set[str]]:
    """Run ``mnistlab`` command lines one after another in one fresh interpreter; the names of the modules
    loaded after each. Every command must exit 0 (a command that fails before its work would load little)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\nfrom mnistlab.cli import main\nloaded = []\n"
        f"for argv in {commands!r}:\n"
        "    code = main(argv)\n"
        "    if code != 0:\n"
        "        sys.exit(f'mnistlab {argv[0]} exited {code}')\n"
        "    loaded.append(sorted(sys.modules))\n"
        "print(json.dumps(loaded))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [set(names) for names in json.loads(proc.stdout.splitlines()[-1])]


def committed_spaces() -> list[tuple[Path, Path]]:
    """Every committed search space (experiments/spaces/*.toml) with its base config, named in the space's
    header comment as "(base: experiments/NAME.toml)" (the convention each space follows; one without it fails)."""
    import re

    root = Path(__file__).resolve().parents[1]
    spaces = sorted((root / "experiments" / "spaces").glob("*.toml"))
    assert spaces
    pairs = []
    for space in spaces:
        found = re.search(r"\(base: (experiments/[\w.-]+\.toml)", space.read_text())
        assert found, f"{space.name} names no base config in its header comment: (base: experiments/NAME.toml)"
        assert (root / found[1]).is_file(), f"{space.name}: its base {found[1]} does not exist"
        pairs.append((space, root / found[1]))
    return pairs
