"""`mnistlab tune` in this process (no Ray): spaces, seeded sampling, pruning, resume, outputs, bad input."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from mnistlab import config
from mnistlab.cli import main
from mnistlab.errors import ConfigError
from mnistlab.space import load_space, space_from_dict

from conftest import interrupt_at_epoch

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
    path.write_text(f'name = "tiny"\n[data]\ndir = "{small_mnist_dir}"\n[model]\nhidden = [16]\n'
                    f'[train]\nepochs = 3\nthreads = 1\n')
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
    params = lambda ts: [(t["optim.lr"], t["model.hidden"]) for t in ts]  # noqa: E731
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
    assert main(["compare", str(tmp_path / "a" / "best.toml"), "--seeds", "1", "--quiet",
                 "--out", str(tmp_path / "confirm")]) == 0


def test_pruning_prunes_on_validation_accuracy(base, tmp_path):
    assert _tune(base, tmp_path / "p", "--trials", "8", "--pruner-startup", "2", "--set", "train.epochs=4") == 0
    trials = _trials(tmp_path / "p")
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert len(trials) == 8 and pruned
    assert all(t["epochs_run"] < 4 for t in pruned)
    assert all(t["epochs_run"] == 4 for t in trials if t["state"] == "complete")


def test_interrupted_search_resumes_with_the_same_trial(base, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    interrupt_at_epoch(monkeypatch, 5)  # the second trial's second epoch
    assert _tune(base, out, "--trials", "3", "--pruner", "none") == 130
    monkeypatch.undo()
    first = _trials_in_storage(out)
    assert [t.state.name for t in first] == ["COMPLETE", "FAIL", "WAITING"]
    assert _tune(base, out, "--trials", "3", "--pruner", "none") == 0
    trials = {t["number"]: t for t in _trials(out)}
    done = [t for t in trials.values() if t["state"] == "complete"]
    assert len(done) == 3 and trials[1]["state"] == "failed"
    # the interrupted trial ran again with the same parameters
    assert (trials[2]["optim.lr"], trials[2]["model.hidden"]) == (trials[1]["optim.lr"], trials[1]["model.hidden"])
    assert (out / "trials" / "trial0000" / "metrics.csv").is_file()


def _trials_in_storage(out):
    import optuna
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials()


@pytest.mark.parametrize("space, message", [
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
    ('[params]\n', "defines no parameters"),
    ('[search]\nx = 1\n', "unknown top-level key 'search'"),
    ('params = [', "not valid TOML"),
])
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
    params = space_from_dict({"params": {"train.epochs": {"type": "int", "low": 2, "high": 8, "step": 2},
                                         "optim.lr": {"type": "float", "low": 1, "high": 2}}}, config.Config())
    assert params[0].kind == "int" and params[0].step == 2
    assert params[1].low == 1.0 and isinstance(params[1].low, float)  # ints accepted for float keys
    with pytest.raises(ConfigError, match="train.epochs"):
        space_from_dict({"params": {"train.epochs": {"type": "int", "low": 0, "high": 3}}}, config.Config())


def test_compare_and_tune_never_import_ray_or_optuna_without_asking(base, tmp_path):
    import subprocess
    code = ("import sys; from mnistlab.cli import main; "
            f"main(['compare', {str(base)!r}, '--seeds', '1', '--epochs', '1', '--quiet', '--out', {str(tmp_path / 'c')!r}]); "
            "assert 'ray' not in sys.modules and 'optuna' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_space_reads_the_committed_spaces():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "experiments"
    for name, cfg in (("mlp_noaug.toml", "mlp_best.toml"), ("cnn.toml", "cnn_best.toml")):
        params = load_space(root / "spaces" / name, config.load(root / cfg))
        assert params
