"""`mnistlab tune` in this process (no Ray): spaces, seeded sampling, pruning, resume, outputs, bad input."""

from __future__ import annotations

import csv
import json
import re

import pytest

from conftest import interrupt_at_epoch, modules_after
from mnistlab.cli import main
from mnistlab.core import config
from mnistlab.errors import ConfigError
from mnistlab.studies.space import load_space, space_from_dict

SPACE = """
[params."optim.lr"]
type = "float"
low = 0.0001
high = 1.0
log = true

[params."model.hidden"]
type = "categorical"
choices = [[8], [32], [32, 32]]
"""


@pytest.fixture()
def base(tmp_path, small_mnist_dir):
    path = tmp_path / "base.toml"
    path.write_text(
        f'name = "tiny"\n[data]\ndir = "{small_mnist_dir}"\n[model]\nhidden = [16]\n[train]\nepochs = 3\nthreads = 1\n'
    )
    (tmp_path / "space.toml").write_text(SPACE)
    return path


def _tune(base, out, *extra):
    return main(["tune", str(base), "--space", str(base.parent / "space.toml"), "--out", str(out), "--quiet", *extra])


def _trials(out):
    return json.loads((out / "trials.json").read_text())["trials"]


def test_same_seed_same_parameters_and_outputs(base, tmp_path, capsys):
    assert _tune(base, tmp_path / "a", "--trials", "4", "--pruner", "none") == 0
    assert _tune(base, tmp_path / "b", "--trials", "4", "--pruner", "none") == 0
    assert _tune(base, tmp_path / "c", "--trials", "4", "--pruner", "none", "--seed", "1") == 0
    a, b, c = (_trials(tmp_path / d) for d in "abc")
    params = lambda ts: [(t["optim.lr"], t["model.hidden"]) for t in ts]
    assert params(a) == params(b) and params(a) != params(c)
    assert [t["best_val_acc"] for t in a] == [t["best_val_acc"] for t in b]
    assert [t["state"] for t in a] == ["complete"] * 4
    out = capsys.readouterr().out
    assert "mnistlab compare" in out and "best.toml" in out

    # outputs: no test accuracy anywhere in the trials table; the best config is the best on validation
    rows = list(csv.DictReader((tmp_path / "a" / "trials.csv").open()))
    assert len(rows) == 4 and not any("test" in k for k in rows[0])
    best = max(a, key=lambda t: t["best_val_acc"])
    cfg = config.load(tmp_path / "a" / "best.toml")
    assert cfg.optim.lr == pytest.approx(best["optim.lr"]) and cfg.model.hidden == json.loads(best["model.hidden"])
    assert cfg.name == "tiny_tuned" and cfg.train.epochs == 3
    for fig in ("history.png", "importance.png"):
        assert (tmp_path / "a" / fig).read_bytes()[:4] == b"\x89PNG"
    # a trial's run directory holds the history the table reports
    run = tmp_path / "a" / "trials" / "trial0000"
    hist = list(csv.DictReader((run / "metrics.csv").open()))
    assert max(float(h["val_acc"]) for h in hist) == pytest.approx(a[0]["best_val_acc"], abs=1e-3)

    # the best config runs as a study (honest test estimate) without edits
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a" / "best.toml"),
                "--seeds",
                "1",
                "--quiet",
                "--out",
                str(tmp_path / "confirm"),
            ]
        )
        == 0
    )


def test_pruning_prunes_on_validation_accuracy(base, tmp_path):
    assert _tune(base, tmp_path / "p", "--trials", "8", "--pruner-startup", "2", "--set", "train.epochs=4") == 0
    trials = _trials(tmp_path / "p")
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert len(trials) == 8 and pruned
    assert all(t["epochs_run"] < 4 for t in pruned)
    assert all(t["epochs_run"] == 4 for t in trials if t["state"] == "complete")


def test_interrupted_trial_continues_under_its_number_from_its_epochs(base, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    interrupt_at_epoch(monkeypatch, 5)  # the second trial's second epoch
    assert _tune(base, out, "--trials", "3", "--pruner", "none") == 130
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "continues the cut-off trial under its own number" in err and err.count("\n") == 1
    assert [t.state.name for t in _trials_in_storage(out)] == ["COMPLETE", "RUNNING"]
    # Ctrl-C wrote the tables and best.toml of the finished trial, and names the cut-off one
    assert [(t["number"], t["state"]) for t in _trials(out)] == [(0, "complete"), (1, "interrupted")]
    assert "| 1 | interrupted |" in (out / "trials.md").read_text() and (out / "best.toml").is_file()

    assert _tune(base, out, "--trials", "3", "--pruner", "none") == 0
    trials = _trials(out)
    assert [(t["number"], t["state"]) for t in trials] == [(0, "complete"), (1, "complete"), (2, "complete")]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial0000", "trial0001", "trial0002"]
    info = json.loads((out / "trials" / "trial0001" / "run.json").read_text())
    assert [r["after_epoch"] for r in info["resumed"]] == [1]  # continued from its finished epoch
    # the same numbers as a search that was never interrupted: parameters, and each trial's accuracy
    assert _tune(base, tmp_path / "whole", "--trials", "3", "--pruner", "none") == 0
    same = ("optim.lr", "model.hidden", "best_val_acc", "epochs_run")
    assert [{k: t[k] for k in same} for t in trials] == [{k: t[k] for k in same} for t in _trials(tmp_path / "whole")]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_an_extended_search_continues_its_sequence(base, tmp_path, sampler):
    """--trials 3, then --trials 6 on the same study: six different points, the six of a fresh 6-trial study."""
    args = ("--pruner", "none", "--sampler", sampler, "--set", "train.epochs=1")
    assert _tune(base, tmp_path / "grown", "--trials", "3", *args) == 0
    assert _tune(base, tmp_path / "grown", "--trials", "6", *args) == 0
    assert _tune(base, tmp_path / "fresh", "--trials", "6", *args) == 0
    points = lambda out: [(t["optim.lr"], t["model.hidden"]) for t in _trials(out)]
    grown = points(tmp_path / "grown")
    assert len(grown) == 6 and len({lr for lr, _ in grown}) == 6
    assert grown == points(tmp_path / "fresh")


def test_trial_seeds_depend_on_the_trial_number_only():
    from mnistlab.studies.tune import trial_seed

    seeds = [trial_seed(0, k) for k in range(100)]
    assert len(set(seeds)) == 100 and seeds == [trial_seed(0, k) for k in range(100)]
    assert trial_seed(1, 0) != trial_seed(0, 0) and all(0 <= s < 2**32 for s in seeds)


def test_a_trial_refused_at_run_time_is_rejected_and_the_search_goes_on(base, tmp_path, capsys):
    """A batch size above the 1,800 training images is refused when the trial's run is set up: the trial is a
    rejected row with the reason, the others run, and a rerun does not try it again."""
    (tmp_path / "space.toml").write_text('[params."train.batch_size"]\ntype = "categorical"\nchoices = [100, 5000]\n')
    out = tmp_path / "b"
    assert _tune(base, out, "--trials", "6", "--pruner", "none", "--sampler", "random") == 0
    trials = _trials(out)
    states = {t["state"] for t in trials}
    assert len(trials) == 6 and states == {"complete", "rejected"}
    for t in trials:
        assert (t["state"] == "rejected") == (t["train.batch_size"] == 5000)
        if t["state"] == "rejected":
            assert "exceeds the 1800 training images" in t["note"] and t["epochs_run"] == 0
    assert "rejected" in (out / "trials.md").read_text()
    # every choice refused: a table of rejected rows, exit 2 saying so, and a rerun that does not wedge
    (tmp_path / "space.toml").write_text('[params."train.batch_size"]\ntype = "categorical"\nchoices = [4000, 5000]\n')
    capsys.readouterr()
    for _ in range(2):
        assert _tune(base, tmp_path / "all", "--trials", "2") == 2
        captured = capsys.readouterr()
        assert "no trial of" in captured.err and "budget of 2 trials is spent" in captured.err
        assert captured.out.count("| rejected |") == 2
    assert [t["state"] for t in _trials(tmp_path / "all")] == ["rejected", "rejected"]


def test_a_search_whose_every_trial_diverged_ends_with_its_table_and_exit_2(base, tmp_path, capsys):
    (tmp_path / "space.toml").write_text('[params."optim.lr"]\ntype = "float"\nlow = 1e30\nhigh = 1e31\n')
    out = tmp_path / "d"
    assert _tune(base, out, "--trials", "2", "--pruner", "none") == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "no trial of" in captured.err and "Traceback" not in captured.err
    trials = _trials(out)
    assert [t["state"] for t in trials] == ["diverged", "diverged"]
    assert all("diverged at epoch 1" in t["note"] for t in trials)
    assert "| diverged |" in (out / "trials.md").read_text() and not (out / "best.toml").exists()


def _trials_in_storage(out):
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials()


@pytest.mark.parametrize(
    "space, message",
    [
        ('[params."optim.lrr"]\ntype = "float"\nlow = 0.1\nhigh = 0.2\n', "unknown config key 'optim.lrr'"),
        ('[params."optim.lr"]\ntype = "float"\nlow = 0.2\nhigh = 0.1\n', "empty range"),
        ('[params."optim.lr"]\ntype = "float"\nlow = "a"\nhigh = 0.1\n', "low must be a number"),
        ('[params."optim.lr"]\ntype = "int"\nlow = 1\nhigh = 2\n', "float key"),
        ('[params."optim.lr"]\ntype = "float"\nlow = 0.0\nhigh = 0.1\nlog = true\n', "needs low > 0"),
        ('[params."optim.lr"]\ntype = "float"\nlow = -1.0\nhigh = 0.1\n', "rejected by the config"),
        ('[params."optim.lr"]\ntype = "floaty"\n', "choose from float, int, categorical"),
        ('[params."optim.lr"]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nlogg = true\n', "unknown field 'logg'"),
        ('[params."model.hidden"]\ntype = "categorical"\nchoices = [[8], [-3]]\n', "choice 2 ([-3]) is rejected"),
        ('[params."optim.name"]\ntype = "categorical"\nchoices = ["sgd", "lion"]\n', "choice 2 ('lion') is rejected"),
        ('[params."model.hidden"]\ntype = "categorical"\nchoices = []\n', "non-empty list of choices"),
        ('[params."model.hidden"]\ntype = "int"\nlow = 1\nhigh = 4\n', "does not fit"),
        ("[params]\n", "defines no parameters"),
        ("[search]\nx = 1\n", "unknown top-level key 'search'"),
        ("params = [", "not valid TOML"),
    ],
)
def test_bad_space_is_one_line_and_exit_2(base, tmp_path, capsys, space, message):
    (tmp_path / "space.toml").write_text(space)
    assert _tune(base, tmp_path / "o", "--trials", "2") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "study.db").exists()  # nothing started


def test_study_directory_that_holds_another_study_is_refused(base, tmp_path, capsys):
    out = tmp_path / "s"
    assert _tune(base, out, "--trials", "1", "--pruner", "none") == 0
    before = (out / "trials.json").read_bytes()
    capsys.readouterr()
    assert _tune(base, out, "--trials", "1", "--pruner", "none", "--set", "optim.momentum=0.5") == 2
    err = capsys.readouterr().err
    assert "holds another study (its config differs)" in err and err.count("\n") == 1
    assert (out / "trials.json").read_bytes() == before  # nothing finished is lost
    # a larger budget on the same study is the same study: it resumes and adds trials
    assert _tune(base, out, "--trials", "2", "--pruner", "none") == 0
    assert len(_trials(out)) == 2


def test_unreachable_storage_and_bad_options(base, tmp_path, capsys):
    cases = [
        (["--trials", "1", "--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open study storage"),
        (["--trials", "1", "--storage", "nosuchdb://x"], "cannot open study storage"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--trials", "1", "--sampler", "grid"], "--sampler 'grid' is unknown"),
        (["--trials", "1", "--cpus-per-run", "2"], "need --ray"),
        (["--trials", "1", "--ray", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--trials", "1", "--set", "data.train_on_val=true"], "data.train_on_val must be false"),
    ]
    for i, (extra, message) in enumerate(cases):
        assert _tune(base, tmp_path / f"o{i}", *extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)


def test_space_helpers_check_values_against_the_config():
    params = space_from_dict(
        {
            "params": {
                "train.epochs": {"type": "int", "low": 2, "high": 8, "step": 2},
                "optim.lr": {"type": "float", "low": 1, "high": 2},
            }
        },
        config.Config(),
    )
    assert params[0].kind == "int" and params[0].step == 2
    assert params[1].low == 1.0 and isinstance(params[1].low, float)  # ints accepted for float keys
    with pytest.raises(ConfigError, match=re.escape("train.epochs")):
        space_from_dict({"params": {"train.epochs": {"type": "int", "low": 0, "high": 3}}}, config.Config())


def test_compare_and_tune_never_import_ray_or_optuna_without_asking(base, tmp_path):
    """compare imports neither Ray nor Optuna; tune imports Optuna (its search) but not Ray without --ray."""
    after_compare, after_tune = modules_after(
        ["compare", str(base), "--seeds", "1", "--epochs", "1", "--quiet", "--out", str(tmp_path / "c")],
        [
            "tune",
            str(base),
            "--space",
            str(base.parent / "space.toml"),
            "--trials",
            "1",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "t"),
        ],
    )
    assert not {"ray", "optuna"} & after_compare, "compare imported Ray or Optuna"
    assert "optuna" in after_tune  # it searched
    assert "ray" not in after_tune, "tune imported Ray without --ray"
    assert (tmp_path / "c" / "compare.csv").is_file() and (tmp_path / "t" / "trials.csv").is_file()  # both ran


def test_load_space_reads_the_committed_spaces():
    from conftest import committed_spaces

    for space, base in committed_spaces():
        params = load_space(space, config.load(base))
        assert params, space.name


# ---------------------------------------------------------------- refused before anything is written


@pytest.mark.parametrize(
    "bad, good, message",
    [
        (["--space-text", "step = inf"], [], "step must be a finite number"),
        (["--space-text", "step = 0.4"], [], "must be a whole number of steps of 0.4"),
        (["--seed", str(2**32)], ["--seed", "1"], "--seed must be in [0, 4294967295]"),
        (["--storage", "sqlite://"], [], "keeps the study in memory"),
        (["--storage", "sqlite:///:memory:"], [], "keeps the study in memory"),
        (["--timeout", "0"], ["--timeout", "5"], "--timeout must be a finite number of minutes > 0"),
        (["--timeout", "inf"], [], "--timeout must be a finite number of minutes > 0"),
    ],
)
def test_a_refused_command_leaves_out_usable(base, tmp_path, capsys, bad, good, message):
    """Every option and the whole space are checked before anything is written: the corrected command then
    uses the same --out."""
    out = tmp_path / "o"
    space = tmp_path / "space.toml"
    lr = '[params."optim.lr"]\ntype = "float"\nlow = 0.1\nhigh = 1.0\n'
    bad = list(bad)
    if bad[0] == "--space-text":
        space.write_text(lr + bad[1] + "\n")
        bad = []
    else:
        space.write_text(lr)
    assert _tune(base, out, "--trials", "1", *bad) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    space.write_text(lr)
    assert _tune(base, out, "--trials", "1", "--pruner", "none", "--set", "train.epochs=1", *good) == 0


def test_each_study_directory_keeps_its_kind(base, tmp_path, capsys):
    """compare refuses a tune directory and tune a compare directory, before touching anything."""
    tuned, compared = tmp_path / "tuned", tmp_path / "compared"
    assert _tune(base, tuned, "--trials", "1", "--pruner", "none", "--set", "train.epochs=1") == 0
    assert main(["compare", str(base), "--seeds", "1", "--epochs", "1", "--quiet", "--out", str(compared)]) == 0
    assert json.loads((tuned / "study.json").read_text())["kind"] == "tune"
    assert json.loads((compared / "study.json").read_text())["kind"] == "compare"

    def files(d):
        return {p: p.stat().st_mtime_ns for p in d.rglob("*")}

    before = files(tuned), files(compared)
    capsys.readouterr()
    assert main(["compare", str(base), "--seeds", "1", "--epochs", "1", "--quiet", "--out", str(tuned)]) == 2
    assert "holds a `mnistlab tune` study" in capsys.readouterr().err
    assert _tune(base, compared, "--trials", "1") == 2
    err = capsys.readouterr().err
    assert "holds a `mnistlab compare` study" in err and err.count("\n") == 1
    assert (files(tuned), files(compared)) == before  # nothing written, not even a lock or a study.db
    # a directory holding a run is no study directory either
    run = tmp_path / "run"
    assert main(["train", "--config", str(base), "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    assert _tune(base, run, "--trials", "1") == 2 and "holds a run" in capsys.readouterr().err
    assert not (run / ".mnistlab.lock").exists()
    # the files that mark each kind (core/runs.py STUDY_MARKERS) are the ones its command writes, so a study
    # made before study.json existed is still known by them
    from mnistlab.core.runs import STUDY_FILE, STUDY_MARKERS, study_kind

    for kind, directory in (("tune", tuned), ("compare", compared)):
        assert all((directory / name).is_file() for name in STUDY_MARKERS[kind]), kind
        (directory / STUDY_FILE).unlink()
        assert study_kind(directory) == kind


def test_a_moved_study_resumes(base, tmp_path):
    import shutil

    first = tmp_path / "here"
    assert _tune(base, first, "--trials", "1", "--pruner", "none", "--set", "train.epochs=1") == 0
    assert json.loads((first / "tune.json").read_text())["storage"] == "study.db"  # relative to the directory
    moved = tmp_path / "elsewhere" / "there"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert _tune(base, moved, "--trials", "2", "--pruner", "none", "--set", "train.epochs=1") == 0
    assert [t["number"] for t in _trials(moved)] == [0, 1]


def test_timeout_stops_starting_trials_and_a_rerun_goes_on(base, tmp_path, capsys):
    """--timeout MINUTES: no trial starts after the time is up; the trial under way finishes."""
    out = tmp_path / "t"
    args = ("--pruner", "none", "--set", "train.epochs=2")
    assert _tune(base, out, "--trials", "50", "--timeout", "0.02", *args) == 0  # 1.2 s
    printed = capsys.readouterr().out
    assert "stopped by --timeout 0.02 before the budget of 50 trials was spent" in printed
    done = len(_trials(out))
    assert 1 <= done < 50 and {t["state"] for t in _trials(out)} == {"complete"}
    assert _tune(base, out, "--trials", str(done + 1), *args) == 0  # the same study, one trial more
    assert [t["number"] for t in _trials(out)] == list(range(done + 1))


def test_progress_inside_trials_shows_validation_only(base, tmp_path, capsys):
    assert (
        main(
            [
                "tune",
                str(base),
                "--space",
                str(base.parent / "space.toml"),
                "--out",
                str(tmp_path / "p"),
                "--trials",
                "1",
                "--pruner",
                "none",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("trial 0: epoch")]
    assert len(epochs) == 3 and all("val_acc" in line and "test" not in line for line in epochs)
    assert "trial 0: optim.lr=" in out


def test_ray_requests_that_cannot_be_met_are_one_line(base, tmp_path, capsys):
    for extra, message in [
        (["--ray", "--cpus-per-run", "inf"], "--cpus-per-run must be a finite number > 0"),
        (["--ray", "--gpus-per-run", "nan"], "--gpus-per-run must be a finite number >= 0"),
        (["--ray", "ray://127.0.0.1"], "needs a host and a port, e.g. ray://HOST:10001"),
        (["--ray", "somehost"], "needs a host and a port"),
        (["--ray", "--ray-timeout", "-1"], "--ray-timeout must be a finite number of seconds > 0"),
    ]:
        assert _tune(base, tmp_path / "o", "--trials", "1", *extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
        assert not (tmp_path / "o").exists()


def test_search_figures_are_readable():
    """history.png: one title, the axis in percent, whole trial numbers; importance.png: the number of
    trials behind it, with a caveat when few."""
    import matplotlib

    matplotlib.use("Agg")
    from mnistlab.studies.tune import history_figure, importance_figure

    recs = [
        {"number": 0, "state": "complete", "best_val_acc": 90.0},
        {"number": 1, "state": "pruned", "best_val_acc": 60.0},
        {"number": 2, "state": "complete", "best_val_acc": 95.0},
    ]
    fig = history_figure(recs, "tiny")
    (ax,) = fig.axes
    assert not fig._suptitle and ax.get_title().startswith("Validation accuracy of each trial")
    assert ax.get_ylabel() == "validation accuracy (%)" and ax.get_xlabel() == "trial"
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    few = importance_figure({"optim.lr": 0.7, "model.hidden": 0.3}, complete=3)
    assert "from 3 complete trials: few trials" in few.axes[0].get_title()
    many = importance_figure({"optim.lr": 0.7, "model.hidden": 0.3}, complete=40)
    assert "few trials" not in many.axes[0].get_title()
