"""Reports that survive real histories, paths that cannot escape, and the polish a teacher would notice
(issue 17, items 6, 7 and 9). Each broken case sits next to the easy case it must not disturb."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mnistlab.analysis import evaluate
from mnistlab.cli import main
from mnistlab.core import checks, config, metrics
from mnistlab.core.runs import CSV_COLUMNS, RunDir
from mnistlab.output import plots
from mnistlab.studies import compare
from mnistlab.text import md_cell, mean_epoch, plural

HEADER = ",".join(CSV_COLUMNS)


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnistlab: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture()
def run_copy(trained_run, tmp_path):
    """A copy of the session's trained run whose files a test may damage."""
    return shutil.copytree(trained_run, tmp_path / "run")


# ---------------------------------------------------------------- item 6: histories


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "is empty"),
        (HEADER.encode() + b"\n", "holds no epochs"),
        (HEADER.encode() + b"\n1,0.42,0.26,92.4", "row 1 is truncated"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (HEADER.encode() + b"\n1,abc,0.26,92.4,0.25,92.8,0.1,1.0,0.1\n", "not a number"),
        (HEADER.encode() + b"\n2,0.4,0.26,92.4,0.25,92.8,0.1,1.0,0.1\n", "epochs must run 1, 2, 3"),
        (HEADER.encode() + b"\n1,0.4,0.26,nan,0.25,92.8,0.1,1.0,0.1\n", "not an accuracy"),
        (b"a,b\n1,2\n", "no valid header"),
        # every column the writer writes is required (`cut -d, -f1-4 metrics.csv` was a KeyError in report)
        (b"epoch,train_loss,val_loss,val_acc\n1,0.4,0.26,92.4\n", "lacks the columns test_loss, test_acc, lr"),
        # a finished epoch has its test cells (empty ones were a TypeError formatting None)
        (HEADER.encode() + b"\n1,0.4,0.26,92.4,,,0.1,1.0,0.1\n", "epoch 1 has no test_loss, test_acc"),
        # validated in epoch 1, validated in every epoch
        (
            HEADER.encode() + b"\n1,0.4,0.26,92.4,0.25,92.8,0.1,1.0,0.1\n2,0.3,,,0.21,93.6,0.1,1.0,0.1\n",
            "epoch 2 has no val_loss, val_acc",
        ),
        (HEADER.encode() + b"\n2.0,0.4,0.26,92.4,0.25,92.8,0.1,1.0,0.1\n", "row 1 is epoch 2;"),  # not "2.0"
    ],
)
def test_broken_histories_are_one_line_and_exit_2(run_copy, tmp_path, capsys, content, needle):
    assert main(["plot", str(run_copy)]) == 0  # the easy case first: the run as training wrote it
    assert main(["report", str(run_copy), "--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    (run_copy / "metrics.csv").write_bytes(content)
    assert main(["plot", str(run_copy)]) == 2
    _one_line_error(capsys, "metrics.csv", needle)
    assert main(["report", str(run_copy), "--out", str(tmp_path / "rep")]) == 2
    _one_line_error(capsys, "metrics.csv", needle)
    assert not (tmp_path / "rep").exists()  # refused before --out was made


def test_a_history_without_validation_is_reported_without_none(run_copy, tmp_path):
    """A run trained on train + validation (data.train_on_val) has empty validation cells in every row:
    summarised and reported from its test column, "-" in the table, never a formatted None."""
    rows = ["1,0.42,,,0.25,92.81,0.1,1.0,0.1", "2,0.31,,,0.21,93.60,0.1,1.0,0.1"]
    (run_copy / "metrics.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    s = metrics.summarize(RunDir(run_copy).read_history())
    assert s == {"epochs_run": 2, "final_test_acc": 93.6, "final_val_acc": None, "final_train_loss": 0.31}
    assert main(["report", str(run_copy), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "the last epoch is its model (test accuracy 93.60%)" in md
    assert "| 2 | 0.31000 | - | - | 0.2100 | 93.60 |" in md and "None" not in md


def _diverged_history(run_dir, rows: list[str]) -> None:
    (run_dir / "metrics.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")


def test_a_diverged_run_is_reported_as_diverged(run_copy, tmp_path, capsys):
    """train keeps the NaN row of a run that diverged: report and plot say where it diverged, and never
    print "nan%" or "from epoch - on"."""
    _diverged_history(
        run_copy,
        ["1,0.42,0.26,92.47,0.25,92.81,0.1,1.0,0.1", "2,0.31,0.22,93.50,0.21,93.60,0.1,1.0,0.1", "3,nan,,,,,0.1,1.0,"],
    )
    s = metrics.summarize(RunDir(run_copy).read_history())
    assert (
        s["diverged_epoch"] == 3 and s["best_epoch"] == 2 and s["best_val_acc"] == 93.5 and s["final_test_acc"] is None
    )
    assert main(["plot", str(run_copy)]) == 0
    assert "diverged at epoch 3" in capsys.readouterr().out
    for lang, says in (("en", "Training diverged at epoch 3"), ("ko", "에폭 3에서 학습이 발산했다")):
        out = tmp_path / lang
        assert main(["report", str(run_copy), "--out", str(out), "--lang", lang]) == 0
        md = (out / "report.md").read_text()
        assert says in md and "93.50%" in md
        assert "nan%" not in md.lower() and "epoch -" not in md and "에폭 **-**" not in md
        assert "| 3 | NaN | - | - | - | - |" in md


def test_a_run_that_diverged_in_its_first_epoch(small_mnist_dir, tmp_path, capsys):
    """A real divergence (lr 1e6): train exits 2 and keeps the NaN row; report and plot read the run."""
    out = tmp_path / "div"
    assert (
        main(
            ["train", "--data-dir", str(small_mnist_dir), "--epochs", "2", "--lr", "1e6", "--quiet", "--out", str(out)]
        )
        == 2
    )
    assert "diverged" in capsys.readouterr().err
    history = RunDir(out).read_history()
    assert len(history) == 1 and np.isnan(history[0]["train_loss"])
    assert main(["plot", str(out)]) == 0 and "diverged at epoch 1" in capsys.readouterr().out
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Training diverged at epoch 1" in md and "nan%" not in md.lower()


def test_too_few_epochs_to_judge_convergence_is_said_so(trained_run, tmp_path):
    """The session's run has 2 epochs; the convergence rule needs 5: no "from epoch - on"."""
    assert main(["report", str(trained_run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.startswith("# Artificial Neural Networks on MNIST: a report generated from real runs\n")  # its dataset
    assert "Convergence cannot be judged from 2 epochs (the rule needs at least 5)" in md
    assert "from epoch **-**" not in md and "best validation accuracy" in md.lower()


# ---------------------------------------------------------------- item 7: paths


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "a/b", ".hidden", "..", "bad name"])
def test_config_names_are_single_safe_path_components(name, tmp_path, capsys):
    with pytest.raises(config.ConfigError, match="name"):
        checks.set_values(config.Config(), {"name": name})
    cfg = tmp_path / "x.toml"
    cfg.write_text(f'name = "{name}"\n')
    assert main(["compare", str(cfg), "--seeds", "1", "--out", str(tmp_path / "study")]) == 2
    _one_line_error(capsys, "config key 'name'")
    for ok in ("seed", "mlp_best", "speedrun-trial0001", "실험1"):  # the easy cases stay valid
        assert checks.set_values(config.Config(), {"name": ok}).name == ok


def test_a_tampered_run_name_cannot_write_outside_out(run_copy, tmp_path, capsys):
    """A run whose config says name = "../../x" is refused by evaluate (it used to write outside --out)."""
    text = (run_copy / "config.toml").read_text()
    (run_copy / "config.toml").write_text(re.sub(r'^name = ".*"$', 'name = "../../escaped"', text, flags=re.M))
    out = tmp_path / "deep" / "er" / "ev"
    assert main(["evaluate", str(run_copy), "--out", str(out)]) == 2
    _one_line_error(capsys, "name")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "RUN", "--out", "FILE"],
        ["report", "RUN", "--out", "FILE"],
        ["activations", "--out", "FILE"],
        ["compare", "experiments/seed.toml", "--out", "FILE"],
        ["train", "--out", "FILE", "--epochs", "1"],
    ],
)
def test_out_naming_an_existing_file_is_one_line(trained_run, tmp_path, capsys, argv):
    file = tmp_path / "a_file"
    file.write_text("keep me")
    argv = [str(trained_run) if a == "RUN" else str(file) if a == "FILE" else a for a in argv]
    assert main(argv) == 2
    _one_line_error(capsys, str(file), "not a directory")
    assert file.read_text() == "keep me"


@pytest.mark.parametrize("port", ["70000", "0", "-1", "http"])
def test_serve_port_out_of_range_is_one_line(trained_run, capsys, port):
    assert main(["serve", "--model", str(trained_run), "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "port number 1-65535" in err


def test_report_input_directories_are_checked_first(trained_run, tmp_path, capsys):
    assert main(["report", str(trained_run), "--out", str(tmp_path / "r"), "--evaluate", str(tmp_path / "none")]) == 2
    _one_line_error(capsys, "--evaluate", "not a directory")
    assert not (tmp_path / "r").exists()  # nothing written before the check


# ---------------------------------------------------------------- item 8: matplotlib's backend


def test_importing_mnistlab_leaves_matplotlibs_backend_alone():
    code = (
        "import matplotlib, sys; matplotlib.use('svg'); import mnistlab.output.plots, mnistlab.analysis.evaluate, "
        "mnistlab.output.report, mnistlab.analysis.activations, mnistlab.core.experiment; "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "False"]


# ---------------------------------------------------------------- item 9: polish


def test_text_helpers():
    assert [plural(1, "epoch"), plural(2, "epoch"), plural(0, "run")] == ["1 epoch", "2 epochs", "0 runs"]
    assert [mean_epoch(2.0), mean_epoch(2.5), mean_epoch(12.25)] == ["2", "2.5", "12.2"]
    assert md_cell("MLP | wide\nand deep") == "MLP \\| wide and deep"


def test_labels_with_a_pipe_or_newline_keep_tables_whole(tmp_path):
    from mnistlab.output.report import _table

    table = _table(["config", "acc"], [["MLP | wide\nand deep", "98.0"]])
    lines = table.strip().splitlines()
    assert len(lines) == 3 and all(len(re.findall(r"(?<!\\)\|", line)) == 3 for line in lines)
    import markdown

    html = markdown.markdown(table, extensions=["tables"])
    assert html.count("<td>") == 2 and "MLP | wide and deep" in html


def test_study_labels_say_what_overrides_changed(tmp_path):
    cfgs = compare.load_configs(
        ["experiments/seed.toml", "experiments/mlp_dropout.toml"],
        {"model.hidden": [64], "train.epochs": 2, "train.threads": 1},
    )
    assert [c.label for c in cfgs] == [
        "The report's MLP (baseline) (model.hidden=[64], train.epochs=2)",
        "MLP + dropout (model.hidden=[64], train.epochs=2)",
    ]
    # the easy case: no override that changes the experiment, no change to the label
    (plain,) = compare.load_configs(["experiments/seed.toml"], {"train.threads": 1})
    assert plain.label == "The report's MLP (baseline)"


def test_evaluate_names_duplicates_by_directory_and_formats_ece_once(trained_run, tmp_path, capsys):
    second = shutil.copytree(trained_run, tmp_path / "second")
    out = tmp_path / "ev"
    assert main(["evaluate", str(trained_run), str(second), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report_mlp ({trained_run};" in printed and f"report_mlp_2 ({second};" in printed
    assert "NAME" not in printed and f"{out / 'report_mlp'}/, {out / 'report_mlp_2'}/" in printed
    summary = json.loads((out / "report_mlp" / "summary.json").read_text())
    ece = evaluate.ece_percent(summary["ece"])
    assert f"ECE {ece}%" in printed and f"| {ece} |" in (out / "compare.md").read_text()
    assert main(["report", str(trained_run), "--out", str(tmp_path / "rep"), "--evaluate", str(out)]) == 0
    assert f"| {ece} |" in (tmp_path / "rep" / "report.md").read_text()


def test_korean_report_is_korean_and_captions_are_per_figure(trained_run, tmp_path):
    out = tmp_path / "ko"
    assert main(["report", str(trained_run), "--out", str(out), "--lang", "ko"]) == 0
    md = (out / "report.md").read_text()
    for english in ("| epoch |", "train loss", "test acc %", "bundled", "Run report_mlp"):
        assert english not in md, english
    assert "| 에폭 | 학습 손실 |" in md and "출처: mnistlab에 포함된 MNIST" in md
    captions = re.findall(r"!\[([^\]]*)\]\(run1_(accuracy|loss)\.png\)", md)
    assert len(captions) == 2 and captions[0][0] != captions[1][0]
    en = tmp_path / "en"
    assert main(["report", str(trained_run), "--out", str(en)]) == 0
    text = (en / "report.md").read_text()
    assert text.count("report_mlp") == 1 and "### report_mlp" in text  # named once, by its heading


def _captured_figures(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    return figures


def test_robustness_figure_draws_inversion_as_bars_with_the_legend_outside(monkeypatch):
    figures = _captured_figures(monkeypatch)
    series = [
        (f"run {i}", {k: [(v, 90.0 - i) for v in values] for k, (_, values, _) in evaluate.PERTURBATIONS.items()})
        for i in range(12)
    ]
    evaluate.robustness_figure(series, None)
    (fig,) = figures
    axes = fig.axes
    inverted = axes[list(evaluate.PERTURBATIONS).index("inverted")]
    assert [t.get_text() for t in inverted.get_xticklabels()] == ["no", "yes"] and len(inverted.patches) == 24
    assert not inverted.lines  # bars, not a line through "0.5 inverted"
    assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1  # never over a curve
    assert [ax.get_ylabel() for ax in axes][1:] == [""] * (len(axes) - 1)  # no label into the next panel
    styles = {(tuple(line.get_color()), line.get_linestyle()) for line in axes[0].lines}
    assert len(styles) == 12  # 12 runs, 12 looks (matplotlib's default cycle repeats after 10)


def test_series_styles_stay_distinct_past_twenty():
    styles = plots.series_styles(45)
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 45
    assert plots.series_styles(3) == plots.series_styles(10)[:3]


def test_first_layer_figure_has_a_colour_bar(monkeypatch):
    figures = _captured_figures(monkeypatch)
    evaluate.first_layer_figure(np.random.default_rng(0).normal(size=(64, 28, 28)), "m", None)
    (fig,) = figures
    assert any(ax.get_ylabel() == "weight" for ax in fig.axes)  # the colour bar's axis
