"""Checkpoints and exact resume: an interrupted run, resumed, ends with the uninterrupted run's numbers."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import interrupt_at_epoch, train_tiny
from mnistlab.cli import main
from mnistlab.core import checkpoint

# dropout (global RNG), momentum (optimizer state), cosine schedule with warm-up (a pure function of the
# step, so no state of its own), augmentation (its own generator): every piece of state that resume must restore
STATEFUL = [
    "--hidden",
    "64",
    "--set",
    "model.dropout=0.2",
    "--set",
    "optim.momentum=0.9",
    "--set",
    "optim.schedule='cosine'",
    "--set",
    "optim.warmup_epochs=1.0",
    "--set",
    "data.augment='affine'",
]
NUMBERS = ("epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr")


def _numbers(run_dir):
    return [{k: row[k] for k in NUMBERS} for row in json.loads((run_dir / "metrics.json").read_text())]


def _train(small_mnist_dir, out, epochs, *extra):
    return main(
        [
            "train",
            "--data-dir",
            str(small_mnist_dir),
            "--epochs",
            str(epochs),
            "--quiet",
            "--out",
            str(out),
            *STATEFUL,
            *extra,
        ]
    )


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


@pytest.mark.parametrize(
    "optimizer",
    [
        ["--set", "optim.name='adam'", "--set", "optim.lr=0.003"],
        ["--set", "optim.momentum=0.9", "--set", "optim.lr=0.05"],
    ],
    ids=["adam", "momentum"],
)
def test_a_channels_last_cnn_resumes_exactly(small_mnist_dir, tmp_path, monkeypatch, optimizer):
    """A CNN's weights are channels-last (NHWC); its optimizer state (Adam's moments, the momentum buffer) is
    saved in the standard layout and must come back in its parameter's layout, or the fused update pairs
    the wrong elements and the resumed run leaves the uninterrupted one."""
    cnn = ["--set", "model.arch='speedcnn'", "--set", "model.width=4", "--set", "model.init='default'"]

    def train(out):
        return main(
            [
                "train",
                "--data-dir",
                str(small_mnist_dir),
                "--epochs",
                "3",
                "--quiet",
                "--out",
                str(out),
                *cnn,
                *optimizer,
            ]
        )

    assert train(tmp_path / "full") == 0
    interrupt_at_epoch(monkeypatch, 2)
    assert train(tmp_path / "cut") == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert _numbers(tmp_path / "cut") == _numbers(tmp_path / "full")
    a = checkpoint.load_tensors(tmp_path / "full" / "checkpoint.safetensors")
    b = checkpoint.load_tensors(tmp_path / "cut" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _checkpoint_epoch(run_dir) -> int:
    if not (run_dir / "checkpoint.safetensors").exists():
        return 0
    try:
        return checkpoint.load(checkpoint.RunDir(run_dir))[1]["epoch"]
    except Exception:
        return 0


def test_resume_after_kill(small_mnist_dir, tmp_path):
    """SIGKILL mid-run (no cleanup at all): resume restarts from the last finished epoch."""
    args = ["--data-dir", str(small_mnist_dir), "--epochs", "30", "--hidden", "256", "--quiet"]
    assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "train", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _checkpoint_epoch(out) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _checkpoint_epoch(out)
    assert 2 <= done < 30, "the kill must land mid-run for this test to mean anything"
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["resumed"][0]["after_epoch"] == done  # a resume happened, from where the kill left it
    assert _numbers(out) == _numbers(tmp_path / "full")


KILL_AFTER = {  # file written -> the kill lands right after it, at epoch 3's end
    "best.safetensors": "the best weights are of epoch 3, the checkpoint still of epoch 2",
    "checkpoint.safetensors": "the checkpoint is of epoch 3, metrics.csv still of epoch 2",
}


@pytest.mark.parametrize("written", list(KILL_AFTER))
def test_kill_between_a_runs_files_resumes_exactly(small_mnist_dir, tmp_path, written):
    """A kill between writing two of a run's files (no cleanup): resume ends with the uninterrupted run's
    numbers, one epoch trained once."""
    args = ["--data-dir", str(small_mnist_dir), "--epochs", "5", "--hidden", "32", "--quiet", *STATEFUL[2:]]
    assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "cut"
    code = (
        "import os, sys\n"
        "from mnistlab.core import checkpoint, runs\n"
        "from mnistlab.cli import main\n"
        "real, seen = runs.atomic_write, {}\n"
        "def write(path, data):\n"
        "    real(path, data)\n"
        f"    if path.name == {written!r}:\n"
        "        seen['n'] = seen.get('n', 0) + 1\n"
        "        if seen['n'] == 3:\n"
        "            os._exit(9)  # as a kill would: no finally, no cleanup\n"
        "checkpoint.atomic_write = runs.atomic_write = write\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "train", *args, "--out", str(out)], timeout=300)
    assert proc.returncode == 9
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert _numbers(out) == _numbers(tmp_path / "full")
    assert json.loads((out / "run.json").read_text())["resumed"][0]["after_epoch"] == (
        2 if written.startswith("best") else 3
    )
    a = checkpoint.load_tensors(tmp_path / "full" / "best.safetensors")
    b = checkpoint.load_tensors(out / "best.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert not list(out.glob(".*.tmp"))


def test_resume_refusals(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(small_mnist_dir, out) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "already complete" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 2
    assert "takes no other run options" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (out / "checkpoint.safetensors").write_bytes(b"garbage")
    assert main(["train", "--resume", str(out)]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


@pytest.fixture()
def stopped_run(small_mnist_dir, tmp_path, monkeypatch):
    """A run interrupted after 2 of 4 epochs (momentum: optimizer state in the checkpoint)."""
    out = tmp_path / "run"
    interrupt_at_epoch(monkeypatch, 3)
    assert train_tiny(small_mnist_dir, out, "--set", "optim.momentum=0.9", epochs=4) == 130
    monkeypatch.undo()
    return out


def _rewrite(run_dir, tensors=None, meta=None, raw_meta=None):
    """Write a checkpoint with changed tensors or metadata, as a corrupting tool or a bug would."""
    t, m = checkpoint.load(checkpoint.RunDir(run_dir))
    t = tensors(t) if tensors else t
    text = raw_meta if raw_meta is not None else json.dumps(meta(m) if meta else m)
    checkpoint.save_tensors(run_dir / "checkpoint.safetensors", t, {"format": "2", "epoch": "2", "meta": text})


def _del(d, key):
    d = dict(d)
    del d[key]
    return d


@pytest.mark.parametrize(
    "change, message",
    [
        ({"raw_meta": "[]"}, "metadata is not an object"),
        ({"raw_meta": "{not json"}, "metadata is not JSON"),
        ({"meta": lambda m: {**m, "epoch": -1}}, "'epoch' has a wrong type or value"),
        ({"meta": lambda m: {**m, "epoch": "2"}}, "'epoch' has a wrong type or value"),
        ({"meta": lambda m: {**m, "epoch": 3}}, "records 2 epochs of history for epoch 3"),
        ({"meta": lambda m: _del(m, "history")}, "'history' is missing"),
        ({"meta": lambda m: {**m, "bad_epochs": None}}, "'bad_epochs' has a wrong type"),
        ({"meta": lambda m: {**m, "optimizer_param_groups": []}}, "'optimizer_param_groups' has a wrong type"),
        ({"meta": lambda m: {**m, "optimizer_scalars": {"99.step": 1}}}, "names no parameter"),
        ({"tensors": lambda t: _del(t, "rng.data")}, "'rng.data' is missing or malformed"),
        ({"tensors": lambda t: {**t, "rng.dropout": t["rng.dropout"][:10]}}, "random-number state does not fit"),
        ({"tensors": lambda t: {**t, "model.net.1.weight": t["model.net.1.weight"][:4]}}, "has shape (4, 784)"),
        ({"tensors": lambda t: _del(t, "model.net.1.bias")}, "lacks model.net.1.bias"),
        ({"tensors": lambda t: {**t, "optim.0.momentum_buffer": t["optim.0.momentum_buffer"][:2]}}, "its parameter"),
    ],
)
def test_malformed_checkpoints_are_one_line_errors(stopped_run, capsys, change, message):
    _rewrite(stopped_run, **change)
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped_run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "--overwrite" in err, err


@pytest.mark.parametrize(
    "header, shown",
    [
        (lambda meta: {"format": "1", "epoch": "2"}, "'1'"),  # tensors only, the metadata in another file
        (lambda meta: {"epoch": "2"}, "None"),  # a safetensors file that mnistlab did not write
        (lambda meta: {"format": "3", "epoch": "2", "meta": json.dumps({**meta, "format": 3})}, "'3'"),  # a later one
    ],
)
def test_a_checkpoint_of_an_unknown_format_is_refused(stopped_run, capsys, header, shown):
    tensors, meta = checkpoint.load(checkpoint.RunDir(stopped_run))
    checkpoint.save_tensors(stopped_run / "checkpoint.safetensors", tensors, header(meta))
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped_run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"unknown checkpoint format {shown}" in err and err.count("\n") == 1 and "--overwrite" in err, err


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("", "differs from the config the run started with"),
        ('name = "other"\n', "differs from the config the run started with"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_changed_config_on_resume_is_refused(stopped_run, capsys, config_text, message):
    (stopped_run / "config.toml").write_text(config_text)
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped_run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_run_killed_before_its_first_epoch_says_what_to_do(small_mnist_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "early"
    interrupt_at_epoch(monkeypatch, 1)
    assert train_tiny(small_mnist_dir, out, epochs=2) == 130
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "before its first epoch finished" in err and "kept" not in err
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint to resume from" in err and "--overwrite" in err


def test_checkpoint_files_hold_no_pickle(small_mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert train_tiny(small_mnist_dir, out, "--set", "optim.name='adam'") == 0
    for name in ("checkpoint.safetensors", "best.safetensors"):
        raw = (out / name).read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])  # safetensors: a JSON header, then raw tensor bytes
        assert "model.net.1.weight" in header or "net.1.weight" in header
    assert not (out / "checkpoint.json").exists()  # one file: tensors and metadata together
    assert checkpoint.load(checkpoint.RunDir(out))[1]["epoch"] == 1
    tensors = checkpoint.load_tensors(out / "checkpoint.safetensors")
    assert any(k.startswith("optim.") and k.endswith(".exp_avg") for k in tensors)
