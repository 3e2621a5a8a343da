"""Adversarial robustness in `mnistlab evaluate` and the report: FGSM and PGD (Madry et al. 2018's MNIST
protocol) against their defining properties, on a trained MLP and a trained CNN."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_trained, train_tiny
from mnistlab.analysis import evaluate as ev
from mnistlab.cli import main
from mnistlab.core import adversarial, checkpoint, checks, config, data
from mnistlab.core.metrics import loss_and_accuracy
from mnistlab.core.models import build_model

NETS = {"mlp": ["model.hidden=[64]"], "cnn": ["model.arch='fastcnn'", "model.width=4"]}


@pytest.fixture(scope="module", params=list(NETS))
def net(request, mnist):
    """A trained tiny MLP or CNN and 64 test images."""
    cfg = checks.set_values(config.Config(), checks.parse_overrides(NETS[request.param]))
    model, x, y = tiny_trained(build_model(cfg.model, torch.Generator().manual_seed(0)), mnist, steps=100)
    return model, x[:64], y[:64]


def test_pgd_at_most_fgsm_at_most_clean_and_all_clean_at_eps_zero(net):
    model, x, y = net
    _, clean = loss_and_accuracy(model, x, y)
    assert clean > 80  # a trained net: the ordering below means something
    curves = ev.attack_curves(model, x, y)
    fgsm, pgd = dict(curves["fgsm"]), dict(curves["pgd"])
    assert fgsm[0.0] == pgd[0.0] == clean
    for eps in (0.1, 0.2, 0.3):
        assert pgd[eps] <= fgsm[eps] <= clean, (eps, pgd[eps], fgsm[eps], clean)
    assert pgd[0.3] < clean - 30  # an undefended net keeps little at eps 0.3


@pytest.mark.parametrize("attack", list(adversarial.ATTACKS))
def test_attacks_stay_within_eps_and_in_the_unit_range(net, attack):
    model, x, y = net
    for eps in (0.1, 0.3):
        adv = adversarial.ATTACKS[attack](model, x, y, eps, generator=torch.Generator().manual_seed(0))
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() > eps / 2  # it moved
    again = adversarial.ATTACKS[attack](model, x, y, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)  # seeded: evaluations repeat
    assert torch.equal(adversarial.ATTACKS[attack](model, x, y, 0.0), x)


def test_pgd_takes_madrys_steps_from_a_random_start(net):
    model, x, y = net
    one = adversarial.pgd(model, x, y, 0.3, steps=0, generator=torch.Generator().manual_seed(0))
    assert ((one - x).abs() > 0).float().mean() > 0.1  # the random start alone moves the pixels
    assert (adversarial.PGD_STEPS, adversarial.PGD_STEP_SIZE) == (40, 0.01)


@pytest.fixture(scope="module")
def noisy_ema_run(small_mnist_dir, tmp_path_factory):
    """A run whose training is random (dropout, noise) and whose saved weights are an EMA."""
    out = tmp_path_factory.mktemp("adv") / "run"
    assert (
        train_tiny(
            small_mnist_dir,
            out,
            "--set",
            "model.dropout=0.3",
            "--set",
            "model.noise_std=0.3",
            "--set",
            "regularize.ema=true",
            "--set",
            "regularize.ema_decay=0.9",
            hidden=32,
        )
        == 0
    )
    return out


def test_evaluate_attacks_the_saved_model_in_eval_mode(noisy_ema_run, small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", str(noisy_ema_run), "--out", str(out), "--attack-images", "100"]) == 0
    printed = capsys.readouterr().out
    assert "adversarial accuracy on the first 100 of 500 test images" in printed
    d = next(p for p in out.iterdir() if p.is_dir())
    summary = json.loads((d / "summary.json").read_text())
    assert summary["attack_images"] == 100
    assert [e for e, _ in summary["adversarial"]["pgd"]] == ev.ATTACK_EPS
    # the oracle: the saved model (the EMA weights) in eval mode on the first 100 test images
    model, _ = checkpoint.load_best_model(noisy_ema_run)
    ds = data.load(small_mnist_dir)
    _, clean = loss_and_accuracy(model, data.to_float(ds.test_images[:100]), ds.test_labels[:100])
    assert summary["adversarial"]["fgsm"][0][1] == pytest.approx(clean, abs=1e-3)
    assert summary["accuracy"] == pytest.approx(
        json.loads((noisy_ema_run / "run.json").read_text())["summary"]["test_acc_at_best_val"], abs=1e-3
    )
    # no dropout or noise in the attacks: the same numbers again, and from the oracle model too
    again = ev.attack_curves(model, data.to_float(ds.test_images[:100]), ds.test_labels[:100])
    assert {k: [[e, round(a, 3)] for e, a in v] for k, v in again.items()} == summary["adversarial"]
    assert (d / "adversarial.png").is_file() and "pgd,0.3," in (d / "adversarial.csv").read_text()


def test_attack_images_zero_skips_and_negative_is_refused(noisy_ema_run, tmp_path, capsys):
    assert main(["evaluate", str(noisy_ema_run), "--out", str(tmp_path / "ev"), "--attack-images", "0"]) == 0
    assert "no adversarial attacks" in capsys.readouterr().out
    assert not list((tmp_path / "ev").glob("*/adversarial.csv"))
    assert main(["evaluate", str(noisy_ema_run), "--out", str(tmp_path / "ev2"), "--attack-images", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--attack-images" in err and err.count("\n") == 1


def test_several_runs_and_the_report_show_the_attacks(noisy_ema_run, tmp_path):
    ev_dir = tmp_path / "ev"
    assert (
        main(["evaluate", str(noisy_ema_run), str(noisy_ema_run), "--out", str(ev_dir), "--attack-images", "50"]) == 0
    )
    table = (ev_dir / "adversarial.md").read_text()
    assert "| FGSM 0.1 % |" in table and table.count("| mlp | 50 |") == 2 and (ev_dir / "adversarial.png").is_file()
    summary = json.loads(next(ev_dir.glob("*/summary.json")).read_text())
    pgd03 = f"{dict(summary['adversarial']['pgd'])[0.3]:.2f}"
    for lang, words in (("en", "Adversarial robustness, on the first 50 test images"), ("ko", "적대적 강건성")):
        out = tmp_path / f"rep_{lang}"
        assert main(["report", str(noisy_ema_run), "--out", str(out), "--lang", lang, "--evaluate", str(ev_dir)]) == 0
        md = (out / "report.md").read_text()
        assert words in md and "PGD-40 eps 0.3 %" in md and f"| {pgd03} |" in md
        assert "inside_adversarial.png" in md and (out / "inside_adversarial.png").is_file()
