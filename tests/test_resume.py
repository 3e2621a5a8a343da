"""Checkpoints and exact resume: an interrupted run, resumed, ends with the uninterrupted run's numbers."""

import json
import signal
import subprocess
import sys
import time


from mnistlab import checkpoint
from mnistlab.cli import main

from conftest import interrupt_at_epoch

# dropout (global RNG), momentum (optimizer state), cosine schedule with warm-up (scheduler state),
# augmentation (its own generator): every piece of state that resume must restore
STATEFUL = ["--hidden", "64", "--set", "model.dropout=0.2", "--set", "optim.momentum=0.9",
            "--set", "optim.schedule='cosine'", "--set", "optim.warmup_epochs=1.0", "--set", "data.augment='affine'"]
NUMBERS = ("epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr")


def _numbers(run_dir):
    return [{k: row[k] for k in NUMBERS} for row in json.loads((run_dir / "metrics.json").read_text())]


def _train(small_mnist_dir, out, epochs, *extra):
    return main(["train", "--data-dir", str(small_mnist_dir), "--epochs", str(epochs), "--quiet", "--out", str(out),
                 *STATEFUL, *extra])


def test_resume_after_interrupt_equals_uninterrupted(small_mnist_dir, tmp_path, monkeypatch):
    assert _train(small_mnist_dir, tmp_path / "full", 4) == 0

    interrupt_at_epoch(monkeypatch, 3)
    assert _train(small_mnist_dir, tmp_path / "cut", 4) == 130
    monkeypatch.undo()
    assert len(_numbers(tmp_path / "cut")) == 2

    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert _numbers(tmp_path / "cut") == _numbers(tmp_path / "full")
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed"][0]["after_epoch"] == 2
    # the weights too, bit for bit
    a = checkpoint.load_tensors(tmp_path / "full" / "checkpoint.safetensors")
    b = checkpoint.load_tensors(tmp_path / "cut" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_after_kill(small_mnist_dir, tmp_path):
    """SIGKILL mid-run (no cleanup at all): resume restarts from the last finished epoch."""
    assert main(["train", "--data-dir", str(small_mnist_dir), "--epochs", "6", "--hidden", "32", "--quiet",
                 "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", "--data-dir", str(small_mnist_dir),
                             "--epochs", "6", "--hidden", "32", "--quiet", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint.json").exists() and json.loads((out / "checkpoint.json").read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((out / "checkpoint.json").read_text())["epoch"]
    if done < 6:
        assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert _numbers(out) == _numbers(tmp_path / "full")


def test_resume_refusals(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(small_mnist_dir), "--epochs", "1", "--hidden", "8", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "already complete" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 2
    assert "takes no other run options" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (out / "checkpoint.safetensors").write_bytes(b"garbage")
    meta = json.loads((out / "checkpoint.json").read_text())
    meta["epoch"] = 0
    (out / "checkpoint.json").write_text(json.dumps(meta))
    assert main(["train", "--resume", str(out)]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


def test_checkpoint_files_hold_no_pickle(small_mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(small_mnist_dir), "--epochs", "1", "--hidden", "8", "--quiet",
                 "--out", str(out), "--set", "optim.name='adam'"]) == 0
    for name in ("checkpoint.safetensors", "best.safetensors"):
        raw = (out / name).read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])  # safetensors: a JSON header, then raw tensor bytes
        assert "model.net.1.weight" in header or "net.1.weight" in header
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 1
    tensors = checkpoint.load_tensors(out / "checkpoint.safetensors")
    assert any(k.startswith("optim.") and k.endswith(".exp_avg") for k in tensors)
