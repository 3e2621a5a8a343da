"""`mnistlab compare` and ensembles through the CLI, on small data."""

import csv
import json

import pytest

from conftest import interrupt_at_epoch, train_tiny
from mnistlab.cli import main
from mnistlab.core.runs import study_run_dir
from mnistlab.errors import MnistlabError
from mnistlab.studies import compare


def _config(path, name, small_mnist_dir, extra=""):
    path.write_text(
        f'name = "{name}"\nlabel = "{name} label"\n[data]\ndir = "{small_mnist_dir}"\n'
        f"[model]\nhidden = [16]\n[train]\nepochs = 2\n{extra}"
    )
    return path


def test_compare_table_curves_ensemble_and_resume(small_mnist_dir, tmp_path, monkeypatch, capsys):
    a = _config(tmp_path / "a.toml", "plain", small_mnist_dir)
    b = _config(tmp_path / "b.toml", "momentum", small_mnist_dir, "[optim]\nmomentum = 0.9\nlr = 0.05\n")
    out = tmp_path / "study"

    # interrupt the study in the second epoch of the second config's first run
    interrupt_at_epoch(monkeypatch, 6)
    assert main(["compare", str(a), str(b), "--seeds", "2", "--out", str(out), "--quiet"]) == 130
    monkeypatch.undo()
    first_run = (out / "plain" / "seed123" / "metrics.csv").read_bytes()

    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--seeds", "2", "--out", str(out), "--ensemble"]) == 0
    printed = capsys.readouterr().out
    assert "plain/seed123: complete, skipped" in printed and "momentum/seed123: resuming" in printed
    assert (out / "plain" / "seed123" / "metrics.csv").read_bytes() == first_run  # not retrained
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["config"] for r in rows] == ["plain label", "momentum label"]
    for r in rows:
        assert r["seeds"] == "2" and float(r["test_acc_mean"]) > 30 and float(r["ensemble_test_acc"]) > 30
        assert int(r["parameters"]) == 784 * 16 + 16 + 16 * 10 + 10
    md = (out / "compare.md").read_text()
    assert "| plain label | 2 |" in md and "±" in md
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert compare.read_record(out) == json.loads((out / "compare.json").read_text())  # the report's readers
    assert compare.read_table(out) == md
    assert sorted(r["seed"] for r in runs["momentum"]) == [123, 124]
    # the reported test accuracy is the one at the best *validation* epoch
    for r in runs["plain"]:
        hist = list(csv.DictReader((study_run_dir(out, "plain", r["seed"]) / "metrics.csv").open()))
        vals = [float(h["val_acc"]) for h in hist]
        best = vals.index(max(vals))
        assert r["test_acc"] == pytest.approx(float(hist[best]["test_acc"]))


def test_compare_rejects_configs_on_different_data(small_mnist_dir, tmp_path, capsys):
    a = _config(tmp_path / "a.toml", "a", small_mnist_dir)
    b = _config(tmp_path / "b.toml", "b", tmp_path)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "another dataset" in err and err.count("\n") == 1


def test_compare_rejects_duplicate_names(small_mnist_dir, tmp_path, capsys):
    a = _config(tmp_path / "a.toml", "same", small_mnist_dir)
    b = _config(tmp_path / "b.toml", "same", small_mnist_dir)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "s")]) == 2
    assert "distinct names" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        ('[model]\narch = "cnn"\ninput_dropout = 0.2\n', "'model.input_dropout' is an MLP option"),
        ('[optim]\nschedule = "exponential"\n', "'optim.schedule' = 'exponential' is unknown"),
        ('[data]\naugment = "mixup"\n', "'data.augment' = 'mixup' is unknown"),
    ],
)
def test_bad_study_configs(tmp_path, capsys, extra, message):
    p = tmp_path / "bad.toml"
    p.write_text(extra)
    assert main(["compare", str(p), "--out", str(tmp_path / "s")]) == 2
    assert message in capsys.readouterr().err


def test_ensemble_command(small_mnist_dir, tmp_path, capsys):
    dirs = []
    for seed in (1, 2):
        out = tmp_path / f"r{seed}"
        assert train_tiny(small_mnist_dir, out, "--seed", str(seed), hidden=16) == 0
        dirs.append(str(out))
    capsys.readouterr()
    assert main(["ensemble", *dirs]) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out


def test_final_model_mode(small_mnist_dir, tmp_path, capsys):
    """`mnistlab final RUN_DIR`: train + validation, for the epoch count validation chose."""
    run = tmp_path / "run"
    assert train_tiny(small_mnist_dir, run, epochs=4, hidden=16) == 0
    best = json.loads((run / "run.json").read_text())["summary"]["best_epoch"]
    out = tmp_path / "final"
    assert main(["final", str(run), "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["data"]["train_on_val"] and info["config"]["train"]["epochs"] == best
    hist = json.loads((out / "metrics.json").read_text())
    assert len(hist) == best and hist[-1].get("val_acc") is None and hist[-1]["test_acc"] > 30
    capsys.readouterr()
    assert main(["final", str(out)]) == 2  # a final model has no validation epoch to take
    assert "no best-validation epoch" in capsys.readouterr().err


def test_compare_refuses_a_stale_run_of_a_changed_config(small_mnist_dir, tmp_path, capsys):
    a = _config(tmp_path / "a.toml", "plain", small_mnist_dir)
    out = tmp_path / "study"
    assert main(["compare", str(a), "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    _config(a, "plain", small_mnist_dir, "[optim]\nlr = 0.01\n")  # same name, other numbers
    capsys.readouterr()
    assert main(["compare", str(a), "--seeds", "1", "--out", str(out), "--quiet"]) == 2
    assert "holds a run of a different plain config" in capsys.readouterr().err
    a.write_text(a.read_text().replace('label = "plain label"', 'label = "renamed"').replace("lr = 0.01", "lr = 0.1"))
    assert main(["compare", str(a), "--seeds", "1", "--out", str(out), "--quiet"]) == 0  # a label is not a change


def test_a_run_made_before_a_config_key_existed_still_compares():
    from mnistlab.core import config
    from mnistlab.studies.compare import _comparable

    cfg = config.to_dict(config.Config())
    older = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "cuda_graphs"}}
    assert _comparable(older) == _comparable(cfg)
    assert _comparable({**cfg, "train": {**cfg["train"], "epochs": 5}}) != _comparable(cfg)


def test_convergence_is_given_as_a_spread_over_seeds():
    from mnistlab.studies.compare import StudyRow, _converged

    row = lambda epochs: StudyRow("x", "x", [{"convergence_epoch": e} for e in epochs], 1)
    assert _converged(row([21, 15, 19])) == "15-21"
    assert _converged(row([17])) == "17" and _converged(row([None, None])) == "-"


def test_a_diverging_config_is_a_row_and_the_study_goes_on(small_mnist_dir, tmp_path, capsys):
    """One config diverges: the later configs still run, the table has every row (the diverged one saying
    so), the exit code is 2, and a rerun does not train the diverged runs again."""
    a = _config(tmp_path / "a.toml", "plain", small_mnist_dir)
    bad = _config(tmp_path / "bad.toml", "huge_lr", small_mnist_dir, "[optim]\nlr = 1e30\n")
    c = _config(tmp_path / "c.toml", "momentum", small_mnist_dir, "[optim]\nmomentum = 0.9\nlr = 0.05\n")
    out = tmp_path / "study"
    argv = ["compare", str(a), str(bad), str(c), "--seeds", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "2 runs diverged (huge_lr seed 123, huge_lr seed 124" in captured.err
    rows = {r["name"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert list(rows) == ["plain", "huge_lr", "momentum"]
    assert rows["plain"]["seeds"] == rows["momentum"]["seeds"] == "2" and float(rows["momentum"]["test_acc_mean"]) > 30
    assert rows["huge_lr"]["seeds"] == "0" and rows["huge_lr"]["diverged_seeds"] == "123 124"
    md = (out / "compare.md").read_text()
    assert "| huge_lr label | 0 of 2 (2 diverged) | diverged |" in md and "| momentum label | 2 |" in md
    assert json.loads((out / "huge_lr" / "seed123" / "run.json").read_text())["status"] == "diverged"
    before = (out / "huge_lr" / "seed123" / "run.json").read_bytes()
    assert main(argv[:-1]) == 2
    assert "huge_lr/seed123: diverged, skipped" in capsys.readouterr().out
    assert (out / "huge_lr" / "seed123" / "run.json").read_bytes() == before


def test_threads_are_shown_and_a_row_that_mixes_them_is_flagged(small_mnist_dir, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        a = _config(tmp_path / "a.toml", "plain", small_mnist_dir)
        out = tmp_path / "study"
        assert (
            main(["compare", str(a), "--seeds", "1", "--epochs", "1", "--threads", "1", "--quiet", "--out", str(out)])
            == 0
        )
        assert torch.get_num_threads() == 3  # a run's thread count does not leak into what runs next
    finally:
        torch.set_num_threads(before)
    assert "warning" not in capsys.readouterr().err
    assert next(csv.DictReader((out / "compare.csv").open()))["threads"] == "1"
    # a second seed made with two threads: the same config (threads do not define it), numbers not comparable
    assert (
        main(["compare", str(a), "--seeds", "2", "--epochs", "1", "--threads", "2", "--quiet", "--out", str(out)]) == 0
    )
    err = capsys.readouterr().err
    assert "plain label (train.epochs=1): its runs used 1 and 2 threads" in err and err.count("\n") == 1
    assert next(csv.DictReader((out / "compare.csv").open()))["threads"] == "1, 2"
    assert "| 1, 2 |" in (out / "compare.md").read_text()


def test_an_interrupted_tensorboard_tracked_study_resumes(small_mnist_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    """Cut off in a run's first epoch (no checkpoint: the run starts over, its tensorboard/ folder part of it)."""
    a = _config(tmp_path / "a.toml", "plain", small_mnist_dir)
    out = tmp_path / "study"
    argv = ["compare", str(a), "--seeds", "2", "--out", str(out), "--quiet", "--track", "tensorboard"]
    interrupt_at_epoch(monkeypatch, 3)  # seed 124's first epoch
    assert main(argv) == 130
    assert (out / "plain" / "seed124" / "tensorboard").is_dir()
    monkeypatch.undo()
    assert main(argv) == 0
    for seed in (123, 124):
        acc = EventAccumulator(str(study_run_dir(out, "plain", seed) / "tensorboard"))
        acc.Reload()
        history = json.loads((study_run_dir(out, "plain", seed) / "metrics.json").read_text())
        assert [(e.step, e.value) for e in acc.Scalars("val_acc")] == [
            (r["epoch"], pytest.approx(r["val_acc"])) for r in history
        ]  # each epoch once
    assert len(history) == 2


def test_run_study_from_the_library_records_the_study_and_writes_the_finished_runs_table_when_stopped(
    small_mnist_dir, tmp_path, monkeypatch
):
    """A library caller of run_study gets what the command gets: study.json (the kind), and when the study is
    stopped, the table of the runs that finished; a directory holding a tune study is refused first."""
    from mnistlab.core.runs import read_study

    cfgs = compare.load_configs([_config(tmp_path / "a.toml", "plain", small_mnist_dir)])
    out = tmp_path / "study"
    out.mkdir()
    interrupt_at_epoch(monkeypatch, 3)  # the second seed's first epoch
    with pytest.raises(KeyboardInterrupt):
        compare.run_study(cfgs, 2, out, log=lambda _: None)
    monkeypatch.undo()
    assert read_study(out)["kind"] == "compare"
    assert "| plain label | 1 of 2 (1 unfinished) |" in compare.read_table(out)  # the finished seed's row
    assert [r["seed"] for r in compare.read_record(out)["runs"]["plain"]] == [123]
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "tune.json").write_text("{}")
    with pytest.raises(MnistlabError, match="holds a `mnistlab tune` study"):
        compare.run_study(cfgs, 1, tuned, log=lambda _: None)
    assert sorted(p.name for p in tuned.iterdir()) == ["tune.json"]


def test_a_study_of_an_auto_precision_config_extends_without_retraining(small_mnist_dir, tmp_path, capsys):
    """A run records the precision it trained in ("auto" resolved); meeting it again, the study compares what
    was asked, so extending a study of `precision = "auto"` (the speed recipe's) reuses its finished runs."""
    a = _config(tmp_path / "a.toml", "auto", small_mnist_dir, 'precision = "auto"\n')
    out = tmp_path / "study"
    assert main(["compare", str(a), "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    run_json = out / "auto" / "seed123" / "run.json"
    info = json.loads(run_json.read_text())
    assert info["config"]["train"]["precision"] in ("fp32", "bf16") and info["precision_requested"] == "auto"
    first = (out / "auto" / "seed123" / "metrics.csv").read_bytes()
    assert main(["compare", str(a), "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    assert (out / "auto" / "seed123" / "metrics.csv").read_bytes() == first  # kept, not trained again
    assert (out / "auto" / "seed124" / "run.json").is_file()
    # a run made before the request was recorded: compared with "auto" as it resolves on this machine
    del info["precision_requested"]
    run_json.write_text(json.dumps(info))
    assert main(["compare", str(a), "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    # what was asked still decides: a different precision is a different experiment
    _config(a, "auto", small_mnist_dir, 'precision = "bf16"\n')
    capsys.readouterr()
    assert main(["compare", str(a), "--seeds", "2", "--out", str(out), "--quiet"]) == 2
    assert "holds a run of a different auto config" in capsys.readouterr().err
