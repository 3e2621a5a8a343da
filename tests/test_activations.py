"""Activation studies and the generated report."""

import base64
import json
import re

import pytest
import torch
from torch import nn

from conftest import train_tiny
from mnistlab.analysis import activations
from mnistlab.cli import main
from mnistlab.core import data


def test_activation_derivatives_match_their_formulas():
    x = torch.linspace(-4, 4, 81)
    c = activations.activation_curves(x)
    s = torch.sigmoid(x)
    torch.testing.assert_close(c["sigmoid"][1], s * (1 - s))
    torch.testing.assert_close(c["tanh"][1], 1 - torch.tanh(x) ** 2)
    torch.testing.assert_close(c["relu"][1][x != 0], (x[x != 0] > 0).float())
    torch.testing.assert_close(c["leaky_relu"][1][x < 0], torch.full_like(x[x < 0], 0.01))
    assert c["sigmoid"][1].max() <= 0.25 + 1e-6  # the vanishing-gradient bound


def test_dead_fraction_counts_units_silent_on_every_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    x = torch.tensor([[[0.2, 0, 0, 0]], [[0.9, 0, 0, 0]]])  # unit 0 fires, unit 1 fires on the first, unit 2 never
    assert activations.dead_fraction(model, x) == [pytest.approx(1 / 3)]


def test_layer_grad_norms_vanish_through_a_deep_sigmoid_stack():
    torch.manual_seed(0)
    layers = [nn.Flatten()]
    for _ in range(8):
        layers += [nn.Linear(64 if layers[1:] else 784, 64), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    norms = activations.layer_grad_norms(model, torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    assert len(norms) == 9 and norms[0] < norms[-1] / 100


def test_activations_command(small_mnist_dir, tmp_path, monkeypatch, capsys):
    small = data.load(small_mnist_dir)
    monkeypatch.setattr(activations.data, "load", lambda *a, **k: small)
    out = tmp_path / "act"
    assert main(["activations", "--epochs", "1", "--depth", "4", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "activations.json").read_text())
    assert activations.read_activation_study(out) == res  # the report's reader, next to the writer
    assert set(res["dead_relu"]) == {"relu, lr 0.1 (report)", "relu, lr 1.0", "leaky_relu, lr 1.0"}
    assert all(len(r["dead_fraction"]) == 2 for r in res["dead_relu"].values())  # initialisation + 1 epoch
    assert len(res["gradients"]["sigmoid"]["init"]) == 5
    g = res["gradients"]["sigmoid"]["init"]
    assert g[0] < g[-1]  # vanishing toward the input
    for f in ("activations.png", "dead_relu.png", "gradient_norms.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def short_run(small_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_run") / "run"
    assert train_tiny(small_mnist_dir, out, epochs=6, hidden=32) == 0
    return out


SECTIONS = {
    "en": [
        "1. Data and validation split",
        "2. Activation functions",
        "3. The multilayer perceptron and backpropagation",
        "4. Training and evaluation",
    ],
    "ko": ["1. 데이터와 검증 세트 분할", "2. 활성화 함수", "3. 다층 퍼셉트론과 역전파", "4. 학습과 평가"],
}


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_report_renders_every_section(short_run, tmp_path, lang):
    import warnings

    out = tmp_path / lang
    with warnings.catch_warnings():  # a figure text in a font without its letters would warn (and show boxes)
        warnings.filterwarnings("error", message=".*[Gg]lyph.*missing")
        assert main(["report", str(short_run), "--out", str(out), "--lang", lang]) == 0
    md = (out / "report.md").read_text()
    for title in SECTIONS[lang]:
        assert f"## {title}" in md
    assert "$$L = -\\frac{1}{B}" in md and "activations.png" in md and "run1_accuracy.png" in md
    assert "| 1,800 |" in md and "| 200 |" in md and "| 500 |" in md  # the run's own data: 2,000 + 500 images
    history = json.loads((short_run / "metrics.json").read_text())
    assert f"{history[-1]['test_acc']:.2f}" in md  # real numbers from the run
    assert (out / "run1_accuracy.png").is_file() and (out / "activations.png").is_file()
    page = (out / "report.html").read_text()
    assert f'<html lang="{lang}">' in page and "<math" in page and page.count("data:image/png;base64,") >= 3
    for title in SECTIONS[lang]:
        assert title in page


def test_report_html_refers_to_no_external_resource(short_run, tmp_path):
    out = tmp_path / "r"
    assert main(["report", str(short_run), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:") or attr.startswith("#"), attr
    assert "$" not in re.sub(r"<math.*?</math>", "", page, flags=re.S)  # every formula became MathML


def test_report_with_compare_and_activations(short_run, small_mnist_dir, tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'name = "tiny"\nlabel = "Tiny MLP"\n[data]\ndir = "{small_mnist_dir}"\n[model]\nhidden = [8]\n'
        f"[train]\nepochs = 1\n"
    )
    assert main(["compare", str(cfg), "--seeds", "2", "--out", str(tmp_path / "study"), "--quiet"]) == 0
    act = tmp_path / "act"
    act.mkdir()
    (act / "activations.json").write_text(
        json.dumps(
            {
                "epochs": 1,
                "depth": 8,
                "width": 256,
                "dead_relu": {"relu, lr 0.1 (report)": {"dead_fraction": [0.0, 0.01], "final_val_acc": 95.0}},
                "gradients": {
                    "sigmoid": {"init": [1e-7, 1.0], "trained": [1e-6, 1.0], "val_acc": [11.0]},
                    "relu": {"init": [1e-3, 1e-2], "trained": [1e-3, 1e-2], "val_acc": [95.0]},
                },
            }
        )
    )
    out = tmp_path / "rep"
    assert (
        main(
            [
                "report",
                str(short_run),
                "--out",
                str(out),
                "--compare",
                str(tmp_path / "study"),
                "--activations",
                str(act),
            ]
        )
        == 0
    )
    md = (out / "report.md").read_text()
    assert "## 5. Doing better than the report's MLP" in md and "| Tiny MLP | 2 |" in md
    assert "relu, lr 0.1 (report): 1.0%" in md and "1.0e-07" in md


def test_report_bad_inputs(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_refuses_a_directory_without_the_study_it_names(short_run, tmp_path, capsys):
    """--activations and --compare name directories read by the readers next to their writers: an empty one is
    one line naming the missing file and exit 2, and no report."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for flag, problem in (
        ("--activations", "holds no activation study (activations.json)"),
        ("--compare", "holds no comparison (compare.md)"),
    ):
        assert main(["report", str(short_run), "--out", str(tmp_path / "o"), flag, str(empty)]) == 2
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1, err
        assert not (tmp_path / "o" / "report.md").exists()


def test_report_html_escapes_labels_and_inlines_only_its_own_figures(short_run, small_mnist_dir, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not for the report")
    label = f'<script>alert(1)</script><img src="{secret}" onerror="x()"> [click](javascript:alert(2)) ![s]({secret})'
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'name = "tiny"\nlabel = \'{label}\'\n[data]\ndir = "{small_mnist_dir}"\n[model]\nhidden = [8]\n'
        f"[train]\nepochs = 1\n"
    )
    assert main(["compare", str(cfg), "--seeds", "1", "--out", str(tmp_path / "study"), "--quiet"]) == 0
    out = tmp_path / "rep"
    assert main(["report", str(short_run), "--out", str(out), "--compare", str(tmp_path / "study")]) == 0
    page = (out / "report.html").read_text()
    assert "<script" not in page and not re.search(r"<[a-z][^>]*onerror", page) and "javascript:" not in page
    assert "&lt;script&gt;alert(1)" in page  # shown as text
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    for attr in re.findall(r'<[a-z][^>]*?(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:image/png;base64,") or attr in ("#", ""), attr
