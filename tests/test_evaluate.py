"""`mnistlab evaluate`: the measures against hand-built cases, and the command end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import train_tiny
from mnistlab.analysis import evaluate as ev
from mnistlab.cli import main


def test_confusion_matrix_and_per_class_figures_on_a_hand_built_case():
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    cm = ev.confusion_matrix(pred, true, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    pc = ev.per_class(cm)
    assert pc[0] == {
        "class": 0,
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert pc[1]["precision"] == pytest.approx(0.5) and pc[1]["recall"] == pytest.approx(0.5)
    assert pc[2]["precision"] == pytest.approx(0.5) and pc[2]["recall"] == 1.0
    assert ev.most_confused(cm, 2) == [{"true": 0, "predicted": 1, "count": 1}, {"true": 1, "predicted": 2, "count": 1}]


def test_ece_of_a_calibrated_model_is_about_zero():
    """Always predicts class 0 with confidence c (the rest spread evenly), and is right with probability c."""
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.15, 1.0, n)
    probs = np.repeat(((1 - conf) / 9)[:, None], 10, axis=1)
    probs[:, 0] = conf
    labels = np.where(rng.random(n) < conf, 0, 1)
    assert ev.calibration(probs, labels)["ece"] < 0.01


def test_ece_of_an_overconfident_model_follows_the_formula():
    n = 1000
    probs = np.full((n, 10), 0.1 / 9)
    probs[:, 3] = 0.9  # always 90% sure of class 3
    labels = np.where(np.arange(n) < 600, 3, 4)  # right 60% of the time
    cal = ev.calibration(probs, labels)
    assert cal["ece"] == pytest.approx(0.3)  # one bin: |0.6 - 0.9|
    assert [b["count"] for b in cal["bins"]] == [n]
    expected_nll = -(0.6 * np.log(0.9) + 0.4 * np.log(0.1 / 9))
    assert cal["nll"] == pytest.approx(expected_nll)


def test_perturbations_are_deterministic_and_shift_zero_is_identity():
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(ev.shift(x, 0), x) and torch.equal(ev.rotate(x, 0), x)
    assert torch.equal(ev.noise(x, 0.3), ev.noise(x, 0.3))
    assert torch.equal(ev.shift(x, 2)[..., 2:, 2:], x[..., :-2, :-2])
    assert ev.rotate(x, 90).shape == x.shape


def test_evaluate_command_end_to_end(trained_run, small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    second = tmp_path / "copy"
    shutil.copytree(trained_run, second)
    assert main(["evaluate", str(trained_run), str(second), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "ECE" in printed
    run_out = next(p for p in out.iterdir() if p.is_dir())
    summary = json.loads((run_out / "summary.json").read_text())
    # each robustness point is the model's accuracy on the test images perturbed that much, recomputed here
    from mnistlab.core import checkpoint, data

    model, _ = checkpoint.load_best_model(trained_run)
    mnist = data.load()  # the run's data: the bundled MNIST
    x, y = data.to_float(mnist.test_images), mnist.test_labels
    for kind, value, perturbed in (
        ("shift", 3, ev.shift(x, 3)),
        ("rotation", 30, ev.rotate(x, 30)),
        ("noise", 0.3, ev.noise(x, 0.3)),
        ("inverted", 1, 1 - x),
    ):
        with torch.inference_mode():
            acc = 100.0 * (model(perturbed).argmax(1) == y).float().mean().item()
        assert dict(summary["robustness"][kind])[value] == pytest.approx(acc, abs=1e-3), kind
    # and the plain accuracy is the run's own test accuracy at its best epoch
    info = json.loads((trained_run / "run.json").read_text())
    assert summary["accuracy"] == pytest.approx(info["summary"]["test_acc_at_best_val"], abs=0.02)
    for f in (
        "confusion.png",
        "confusion.csv",
        "per_class.csv",
        "calibration.csv",
        "reliability.png",
        "mistakes.png",
        "robustness.png",
        "robustness.csv",
        "first_layer.png",
    ):
        assert (run_out / f).is_file(), f
    assert (out / "compare.md").read_text().count("| mlp |") == 2 and (out / "robustness.png").is_file()

    # bad input: one line, exit 2
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "not a trained run directory" in capsys.readouterr().err
    other = tmp_path / "other"
    assert train_tiny(small_mnist_dir, other) == 0
    assert main(["evaluate", str(trained_run), str(other), "--out", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err
    assert "trained on other data" in err and err.count("\n") == 1
    final = tmp_path / "final"
    assert train_tiny(small_mnist_dir, final, "--set", "data.train_on_val=true") == 0
    capsys.readouterr()
    assert main(["evaluate", str(final), "--split", "val", "--out", str(tmp_path / "ev3")]) == 2
    err = capsys.readouterr().err
    assert "no validation split" in err and err.count("\n") == 1


def test_validation_split_is_the_runs_own(small_mnist_dir, tmp_path):
    """--split val rebuilds the run's validation images: its accuracy equals the run's best val_acc."""
    out = tmp_path / "run"
    assert train_tiny(small_mnist_dir, out, epochs=2, hidden=16) == 0
    e = ev.evaluate_run(out, "val")[0]
    info = json.loads((out / "run.json").read_text())
    assert e.accuracy == pytest.approx(info["summary"]["best_val_acc"], abs=1e-6)


@pytest.mark.parametrize("lang, title", [("en", "## 6. Inside the trained models"), ("ko", "## 6. 학습된 모델의 속")])
def test_report_gains_a_section_from_evaluate(trained_run, tmp_path, lang, title):
    ev_dir = tmp_path / "ev"
    assert main(["evaluate", str(trained_run), "--out", str(ev_dir)]) == 0
    out = tmp_path / "rep"
    assert main(["report", str(trained_run), "--out", str(out), "--lang", lang, "--evaluate", str(ev_dir)]) == 0
    md = (out / "report.md").read_text()
    summary = json.loads(next(ev_dir.glob("*/summary.json")).read_text())
    assert title in md and f"| {summary['accuracy']:.2f} |" in md
    for fig in ("inside_robustness.png", "inside1_confusion.png", "inside1_reliability.png", "inside1_first_layer.png"):
        assert fig in md and (out / fig).is_file()
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 7


def _hand_built(robustness: dict[str, list[tuple[float, float]]] | None = None) -> ev.Evaluation:
    cm = np.array([[5, 1, 0], [0, 6, 2], [1, 0, 7]])
    robust = robustness or {
        kind: [(v, 90.0 - float(v)) for v in values] for kind, (_, values, _) in ev.PERTURBATIONS.items()
    }
    return ev.Evaluation(
        name="hand",
        arch="mlp",
        data_source="bundled MNIST",
        split="test",
        dataset="toy",
        class_names=["a", "b", "c"],
        accuracy=81.818,
        confusion=cm,
        classes=ev.per_class(cm),
        calibration={
            "ece": 0.0123,
            "nll": 0.456,
            "bins": [
                {"bin": 3, "low": 0.2, "high": 0.4, "count": 4, "accuracy": 0.25, "confidence": 0.3},
                {"bin": 14, "low": 14 / 15, "high": 1.0, "count": 18, "accuracy": 0.9, "confidence": 0.95},
            ],
        },
        confused=ev.most_confused(cm),
        robustness=robust,
        adversarial={k: [(e, 81.8 - 100 * e * (i + 1)) for e in ev.ATTACK_EPS] for i, k in enumerate(ev.ATTACK_LABELS)},
        attack_images=22,
        first_layer=np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5),
    )


def test_read_evaluation_gives_back_what_write_evaluation_wrote(tmp_path):
    """The report reads evaluations through the reader beside the writer: every field comes back."""
    written = _hand_built()
    ev.write_evaluation(written, tmp_path)
    read = ev.read_evaluation(tmp_path)
    assert read.summary() == written.summary()
    assert np.array_equal(read.confusion, written.confusion) and read.classes == written.classes
    assert read.calibration == written.calibration
    assert np.array_equal(read.first_layer, written.first_layer)
    assert ev.compare_row(read) == ev.compare_row(written)
    assert ev.adversarial_row(read) == ev.adversarial_row(written)
    (tmp_path / "calibration.csv").unlink()
    with pytest.raises(ev.MnistlabError, match="incomplete evaluation"):
        ev.read_evaluation(tmp_path)


def test_robustness_headline_points_are_looked_up_by_value():
    """The table's 'shift 3 px' is the point whose value is 3, wherever it sits in the list."""
    robust = {
        kind: [(v, 90.0 - float(v)) for v in reversed(values)] for kind, (_, values, _) in ev.PERTURBATIONS.items()
    }
    assert ev.headline_robustness(robust) == [87.0, 60.0, 89.7, 89.0]
    row = ev.compare_row(_hand_built(robust))
    assert row[-4:] == ["87.00", "60.00", "89.70", "89.00"]
    del robust["rotation"][0]  # rotation 45 gone: the headline's 30 is still found
    assert ev.robustness_at(robust, "rotation", 30) == 60.0
    with pytest.raises(ev.MnistlabError, match="no robustness point shift = 7"):
        ev.robustness_at(robust, "shift", 7)
