"""--track tensorboard and --track mlflow: what a run and a study log, read back with each tool's reader."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import train_tiny
from mnistlab.cli import main


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns: not in the checkout
    from mlflow import MlflowClient

    return MlflowClient()


def test_train_tracked_in_tensorboard_and_mlflow(small_mnist_dir, tmp_path, mlflow_store):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert train_tiny(small_mnist_dir, out, "--track", "tensorboard", "--track", "mlflow", epochs=3, hidden=16) == 0
    history = json.loads((out / "metrics.json").read_text())

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    val = acc.Scalars("val_acc")
    assert [e.step for e in val] == [1, 2, 3]
    assert [e.value for e in val] == pytest.approx([r["val_acc"] for r in history])
    assert {"accuracy", "loss"} <= set(acc.Tags()["images"])

    exp = mlflow_store.get_experiment_by_name("tests")
    (run,) = mlflow_store.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.1" and run.data.params["model.hidden"] == "[16]"
    steps = mlflow_store.get_metric_history(run.info.run_id, "test_acc")
    assert [(m.step, m.value) for m in steps] == [(r["epoch"], pytest.approx(r["test_acc"])) for r in history]
    artifacts = {a.path for a in mlflow_store.list_artifacts(run.info.run_id)}
    assert {"accuracy.png", "loss.png", "best.safetensors", "config.toml", "run.json"} <= artifacts


def test_study_is_a_parent_run_with_a_child_per_run(small_mnist_dir, tmp_path, mlflow_store):
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'name = "a"\n[data]\ndir = "{small_mnist_dir}"\n[model]\nhidden = [8]\n[train]\nepochs = 2\n')
    assert (
        main(["compare", str(cfg), "--seeds", "2", "--quiet", "--out", str(tmp_path / "study"), "--track", "mlflow"])
        == 0
    )
    exp = mlflow_store.get_experiment_by_name("tests")
    runs = mlflow_store.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mnistlab.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and parents[0].info.run_name == "study"
    assert sorted(r.data.params["train.seed"] for r in children) == ["123", "124"]
    assert all(len(mlflow_store.get_metric_history(r.info.run_id, "val_acc")) == 2 for r in children)


def test_a_tracker_that_is_not_installed_is_one_line(small_mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mnistlab[track] were not installed
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data-dir",
                str(small_mnist_dir),
                "--epochs",
                "1",
                "--quiet",
                "--out",
                str(out),
                "--track",
                "mlflow",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "needs MLflow: pip install 'mnistlab[track]'" in err and err.count("\n") == 1
    assert not out.exists()


def test_untracked_commands_import_no_tracker(small_mnist_dir, tmp_path):
    from conftest import modules_after

    (loaded,) = modules_after(
        [
            "train",
            "--data-dir",
            str(small_mnist_dir),
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--quiet",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert not {"mlflow", "tensorboard", "torch.utils.tensorboard"} & loaded
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "complete"  # it trained


def _mlflow_runs(client):
    return client.search_runs([client.get_experiment_by_name("tests").experiment_id])


def _train_tracked(data_dir, out, *extra):
    return main(
        ["train", "--data-dir", str(data_dir), "--epochs", "3", "--hidden", "16", "--quiet", "--out", str(out), *extra]
    )


def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_events(small_mnist_dir, tmp_path, mlflow_store):
    """Ctrl-C after epoch 1, then --resume: one MLflow run (KILLED in between, FINISHED at the end) holding
    epochs 1-3 once each, and TensorBoard events for epochs 1-3 once each."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import interrupt_at_epoch

    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:  # its own: undoing it keeps the store's environment
        interrupt_at_epoch(mp, 2)
        assert _train_tracked(small_mnist_dir, out, "--track", "mlflow", "--track", "tensorboard") == 130
    (first,) = _mlflow_runs(mlflow_store)
    assert first.info.status == "KILLED"
    tracking = json.loads((out / "run.json").read_text())["tracking"]
    assert tracking["mlflow"]["run_id"] == first.info.run_id and tracking["tensorboard"] == {"log_dir": "tensorboard"}

    assert main(["train", "--resume", str(out), "--quiet", "--track", "mlflow", "--track", "tensorboard"]) == 0
    (run,) = _mlflow_runs(mlflow_store)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    history = json.loads((out / "metrics.json").read_text())
    steps = mlflow_store.get_metric_history(run.info.run_id, "val_acc")
    assert sorted((m.step, m.value) for m in steps) == [(r["epoch"], pytest.approx(r["val_acc"])) for r in history]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("val_acc")] == [
        (r["epoch"], pytest.approx(r["val_acc"])) for r in history
    ]


def test_after_kill_9_the_resumed_run_continues_the_same_mlflow_run(small_mnist_dir, tmp_path, mlflow_store):
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnistlab",
            "train",
            "--data-dir",
            str(small_mnist_dir),
            "--epochs",
            "40",
            "--hidden",
            "64",
            "--threads",
            "1",
            "--quiet",
            "--out",
            str(out),
            "--track",
            "mlflow",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "INFO" not in err and "Creating" not in err  # MLflow's INFO lines are off under -q
    (first,) = _mlflow_runs(mlflow_store)
    assert first.info.status == "RUNNING"  # nobody ended it
    assert main(["train", "--resume", str(out), "--quiet", "--track", "mlflow"]) == 0
    (run,) = _mlflow_runs(mlflow_store)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    steps = sorted(m.step for m in mlflow_store.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == list(range(1, 41))  # every epoch once


def test_overwrite_clears_the_run_and_its_trackers(small_mnist_dir, tmp_path, mlflow_store):
    out = tmp_path / "run"
    assert _train_tracked(small_mnist_dir, out, "--track", "tensorboard", "--track", "mlflow") == 0
    old = json.loads((out / "run.json").read_text())["tracking"]["mlflow"]["run_id"]
    stale = out / "tensorboard" / "stale-marker"
    stale.write_text("x")
    assert _train_tracked(small_mnist_dir, out, "--overwrite", "--epochs", "2", "--track", "mlflow") == 0
    assert not (out / "tensorboard").exists()  # the tensorboard/ folder belonged to the replaced run
    new = json.loads((out / "run.json").read_text())["tracking"]["mlflow"]["run_id"]
    assert new != old and len(_mlflow_runs(mlflow_store)) == 2


@pytest.mark.parametrize(
    "uri", ["sqlite:///{tmp}/a-file/mlflow.db", "postgresql://nobody@127.0.0.1:1/none", "sqlite://"]
)
def test_a_tracking_store_that_cannot_be_used_fails_before_the_run_directory(
    small_mnist_dir, tmp_path, monkeypatch, capsys, uri
):
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    out = tmp_path / "run"
    assert _train_tracked(small_mnist_dir, out, "--track", "mlflow") == 2
    err = capsys.readouterr().err
    assert "MLflow tracking store" in err and err.count("\n") == 1 and "retried" not in err
    assert not out.exists()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'name = "a"\n[data]\ndir = "{small_mnist_dir}"\n')
    assert main(["compare", str(cfg), "--out", str(tmp_path / "study"), "--track", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert "MLflow tracking store" in err and err.count("\n") == 1
    assert not (tmp_path / "study").exists()


class _Recorder:
    """An EpochObserver that writes down what it is told; stops the run after ``stop_at`` epochs."""

    def __init__(self, name: str, calls: list, stop_at: int = 0) -> None:
        self.name, self.calls, self.stop_at = name, calls, stop_at

    def start(self, run):
        self.calls.append((self.name, "start", run.previous, [r["epoch"] for r in run.history]))
        return {"seen": len(run.history)}

    def epoch(self, row):
        self.calls.append((self.name, "epoch", row["epoch"]))
        if row["epoch"] == self.stop_at:
            from mnistlab.core.experiment import StopRun

            raise StopRun(f"stopped by {self.name}")

    def end(self, run_dir, status):
        self.calls.append((self.name, "end", status))


def test_a_run_calls_one_list_of_epoch_observers_in_order(small_mnist_dir, tmp_path, monkeypatch):
    """Trackers and the pruning hook are all EpochObservers: a run starts them in order, calls each epoch in
    order (one may stop the run), ends them with the final status, and hands each its identity back on resume."""
    from conftest import interrupt_at_epoch
    from mnistlab.core import checks, config
    from mnistlab.core.experiment import RunInterrupted, StopRun, resume, run
    from mnistlab.output.tracking import MlflowTracker, TensorBoardTracker
    from mnistlab.studies.tune import PruningHook

    assert all(
        callable(getattr(cls, m, None))
        for cls in (MlflowTracker, TensorBoardTracker, PruningHook)
        for m in ("start", "epoch", "end")
    )  # the EpochObserver protocol
    assert all(callable(getattr(cls, "study", None)) for cls in (MlflowTracker, TensorBoardTracker))  # StudyObserver

    cfg = checks.set_values(config.Config(), {"data.dir": str(small_mnist_dir), "train.epochs": 3, "model.hidden": [8]})
    calls: list = []
    with pytest.raises(StopRun, match="stopped by b"):
        run(
            cfg, tmp_path / "r", log=lambda m: None, observers=[_Recorder("a", calls), _Recorder("b", calls, stop_at=2)]
        )
    assert calls == [
        ("a", "start", None, []),
        ("b", "start", None, []),
        ("a", "epoch", 1),
        ("b", "epoch", 1),
        ("a", "epoch", 2),
        ("b", "epoch", 2),
        ("a", "end", "stopped"),
        ("b", "end", "stopped"),
    ]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["tracking"] == {"a": {"seen": 0}, "b": {"seen": 0}}

    interrupt_at_epoch(monkeypatch, 2)
    calls.clear()
    with pytest.raises(RunInterrupted):
        run(cfg, tmp_path / "i", log=lambda m: None, observers=[_Recorder("a", calls)])
    monkeypatch.undo()
    assert calls[-1] == ("a", "end", "interrupted")
    calls.clear()
    resume(tmp_path / "i", log=lambda m: None, observers=[_Recorder("a", calls)])
    assert calls == [("a", "start", {"seen": 0}, [1]), ("a", "epoch", 2), ("a", "epoch", 3), ("a", "end", "complete")]
    assert json.loads((tmp_path / "i" / "run.json").read_text())["tracking"] == {"a": {"seen": 1}}
