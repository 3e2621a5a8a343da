"""End-to-end through the command line, on a small MNIST-format directory cut from the real data."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import interrupt_at_epoch
from mnistlab.cli import main


def run_cli(*argv):
    return main([str(a) for a in argv])


def _train(small_mnist_dir, out, *extra):
    return run_cli("train", "--data-dir", small_mnist_dir, "--epochs", 2, "--quiet", "--out", out, *extra)


def test_train_writes_a_complete_run(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(small_mnist_dir, out, "--hidden", "64") == 0
    printed = capsys.readouterr().out
    assert "final test accuracy" in printed and f"wrote {out}" in printed
    for f in ("config.toml", "run.json", "metrics.csv", "metrics.json", "accuracy.png", "loss.png"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0])[:6] == ["epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc"]
    assert float(rows[1]["test_acc"]) > 60  # 1,800 training images, 2 epochs of 18 steps: far above chance
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["config"]["model"]["hidden"] == [64]
    env = info["environment"]
    assert env["seed"] == 123 and env["torch"] and len(env["data_sha256"]) == 64 and env["torch_threads"] >= 1
    assert json.loads((out / "metrics.json").read_text())[1]["epoch"] == 2


def test_same_seed_same_numbers(small_mnist_dir, tmp_path):
    for name in ("a", "b"):
        assert _train(small_mnist_dir, tmp_path / name, "--hidden", "32") == 0

    def numbers(run):  # every epoch's row without its timings
        return [
            {k: v for k, v in row.items() if "seconds" not in k}
            for row in csv.DictReader((tmp_path / run / "metrics.csv").open())
        ]

    assert len(numbers("a")) == 2 and numbers("a") == numbers("b")


def test_refuses_to_overwrite_a_run(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(small_mnist_dir, out, "--hidden", "16") == 0
    before = (out / "metrics.csv").read_bytes()
    capsys.readouterr()
    assert _train(small_mnist_dir, out, "--hidden", "16", "--seed", "5") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--overwrite" in err
    assert (out / "metrics.csv").read_bytes() == before
    assert _train(small_mnist_dir, out, "--hidden", "16", "--seed", "5", "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["environment"]["seed"] == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "'train.epochs' = 0 is invalid"),
        (["train", "--activation", "swish"], "'model.activation' = 'swish' is unknown"),
        (["train", "--set", "model.hiden=[3]"], "unknown config key 'model.hiden'"),
        (["train", "--lr", "abc"], "'optim.lr' must be a number"),
        (["train", "--config", "/nonexistent.toml"], "cannot read config file"),
        (["train", "--data-dir", "/nonexistent"], "does not exist"),
        (["train", "--bogus"], "unrecognized arguments"),
        (["plot", "/nonexistent"], "not a run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    code = run_cli(*argv, *(["--out", out] if argv[0] == "train" else []))
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # nothing written for a run that never started


def test_divergence_stops_with_history_kept(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(small_mnist_dir, out, "--lr", "1e6") == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and err.count("\n") == 1
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows[0]["train_loss"] in ("nan", "inf")
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"


def test_plot_rebuilds_figures_from_files(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(small_mnist_dir, out, "--hidden", "16") == 0
    for f in ("accuracy.png", "loss.png"):
        (out / f).unlink()
    assert run_cli("plot", out) == 0
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "loss.png").is_file()


def test_interrupted_run_keeps_its_epochs(small_mnist_dir, tmp_path, monkeypatch, capsys):
    interrupt_at_epoch(monkeypatch, 2)
    out = tmp_path / "run"
    assert _train(small_mnist_dir, out, "--hidden", "16") == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 1
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_ctrl_c_on_a_real_process(small_mnist_dir, tmp_path):
    """SIGINT to a real `mnistlab train` once it has finished an epoch: exit 130, one line saying what was
    kept, files consistent. The child gets SIGINT's default handling back (a test run started in the
    background inherits it ignored), and the test waits for progress, not for a fixed time."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnistlab",
            "train",
            "--data-dir",
            str(small_mnist_dir),
            "--epochs",
            "1000",
            "--hidden",
            "16",
            "--quiet",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 300  # generous for a busy machine; the loop ends at the first epoch
        while proc.poll() is None and time.time() < deadline:
            try:
                if len((out / "metrics.csv").read_text().splitlines()) >= 2:  # header + one epoch
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.count("\n") == 1 and "finished epoch" in err and "mnistlab train --resume" in err
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_done"] == len(rows) >= 1


def test_python_dash_m_and_version():
    r = subprocess.run(
        [sys.executable, "-m", "mnistlab", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert r.returncode == 0 and r.stdout.startswith("mnistlab ")


def test_bf16_falls_back_with_a_message_without_hardware_support(small_mnist_dir, tmp_path, monkeypatch, capsys):
    from mnistlab.core import experiment

    monkeypatch.setattr(experiment, "bf16_supported", lambda device: False)
    out = tmp_path / "run"
    assert (
        run_cli(
            "train", "--data-dir", small_mnist_dir, "--epochs", 1, "--hidden", 8, "--precision", "bf16", "--out", out
        )
        == 0
    )
    assert "no bf16 support; falling back to fp32" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["config"]["train"]["precision"] == "fp32"


def test_a_name_outside_a_registry_is_one_line_naming_the_registrys_choices(tmp_path, capsys):
    """--track, --lang, --sampler and --pruner take their names from one registry each (output/tracking.py
    TRACKERS, output/report.py TEXT, studies/tune.py SAMPLERS and PRUNERS): an unknown name is refused with the
    registry's list and exit 2, before anything is written."""
    from mnistlab.output.report import TEXT
    from mnistlab.output.tracking import TRACKERS
    from mnistlab.studies.tune import PRUNERS, SAMPLERS

    root = Path(__file__).resolve().parents[1] / "experiments"
    tune = ["tune", root / "seed.toml", "--space", root / "spaces" / "mlp_noaug.toml", "--trials", 1]
    cases = [
        (["train", "--track", "wandb"], "'wandb'", [*TRACKERS]),
        (["report", tmp_path, "--out", tmp_path / "report", "--lang", "fr"], "--lang 'fr' is unknown", [*TEXT]),
        ([*tune, "--out", tmp_path / "t1", "--sampler", "grid"], "--sampler 'grid' is unknown", [*SAMPLERS]),
        ([*tune, "--out", tmp_path / "t2", "--pruner", "hyperband"], "--pruner 'hyperband' is unknown", [*PRUNERS]),
    ]
    for argv, problem, choices in cases:
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert problem in err and all(repr(c) in err or c in err for c in choices), err
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_imports_neither_torch_nor_matplotlib():
    """`mnistlab --help` and a subcommand's --help (the parsers are built from the registries) stay light."""
    from conftest import modules_after

    for loaded in modules_after(["--help"], ["tune", "--help"], ["report", "--help"]):
        assert not {"torch", "matplotlib", "optuna"} & loaded
