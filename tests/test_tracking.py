"""--track tensorboard and --track mlflow: what a run and a study log, read back with each tool's reader."""

from __future__ import annotations

import json
import sys

import pytest

from mnistlab.cli import main


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    from mlflow import MlflowClient
    return MlflowClient()


def test_train_tracked_in_tensorboard_and_mlflow(small_mnist_dir, tmp_path, mlflow_store):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(small_mnist_dir), "--epochs", "3", "--hidden", "16", "--quiet",
                 "--out", str(out), "--track", "tensorboard", "--track", "mlflow"]) == 0
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
    assert main(["compare", str(cfg), "--seeds", "2", "--quiet", "--out", str(tmp_path / "study"),
                 "--track", "mlflow"]) == 0
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
    assert main(["train", "--data-dir", str(small_mnist_dir), "--epochs", "1", "--quiet", "--out", str(out),
                 "--track", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert "needs MLflow: pip install 'mnistlab[track]'" in err and err.count("\n") == 1
    assert not out.exists()


def test_untracked_commands_import_no_tracker(small_mnist_dir, tmp_path):
    import subprocess
    code = ("import sys; from mnistlab.cli import main; "
            f"main(['train', '--data-dir', {str(small_mnist_dir)!r}, '--epochs', '1', '--hidden', '8', '--quiet', "
            f"'--out', {str(tmp_path / 'r')!r}]); "
            "assert not {'mlflow', 'tensorboard', 'torch.utils.tensorboard'} & set(sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
