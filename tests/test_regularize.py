"""Regularisers as config options: VAT, FGSM adversarial training, a moving average of the weights and
translation test-time augmentation; each against an oracle, and each resumed exactly."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import interrupt_at_epoch, tiny_trained
from mnistlab.cli import main
from mnistlab.core import adversarial, checkpoint, checks, config, data
from mnistlab.core.metrics import loss_and_accuracy
from mnistlab.core.models import ShiftTTA, build_model, for_inference, translate
from mnistlab.core.optim import weight_ema
from mnistlab.core.train import Trainer
from mnistlab.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_net(mnist):
    """A 784-64-10 MLP trained for 200 steps, and 128 test images."""
    return tiny_trained(build_model(config.ModelConfig(hidden=[64]), torch.Generator().manual_seed(0)), mnist)


def _trainer(small_mnist_dir, *overrides: str) -> Trainer:
    cfg = checks.set_values(
        config.Config(),
        checks.parse_overrides(
            [f"data.dir='{small_mnist_dir}'", "model.hidden=[32]", "model.batchnorm=true", *overrides]
        ),
    )
    return Trainer(cfg, data.load(small_mnist_dir), torch.device("cpu"))


# ---------------------------------------------------------------- VAT


def test_vat_direction_raises_the_kl_more_than_random_directions(tiny_net):
    model, x, _ = tiny_net
    with torch.no_grad():
        logp = torch.log_softmax(model(x), 1)
    g = torch.Generator().manual_seed(1)
    r = adversarial.vat_direction(model, x, logp, xi=1e-6, iterations=1, generator=g)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.ones(len(x)))  # a unit vector per image
    eps = 1.0
    with torch.no_grad():
        kl_vat = adversarial.kl_divergence(logp, model(x + eps * r))  # (B,)
        kl_random = torch.stack(
            [
                adversarial.kl_divergence(
                    logp, model(x + eps * adversarial.unit_vectors(torch.randn(x.shape, generator=g)))
                )
                for _ in range(10)
            ]
        )  # (10, B), the same norm
    assert (kl_vat > kl_random.max(0).values).float().mean() > 0.9  # per image, above all ten random ones
    assert kl_vat.mean() > 20 * kl_random.mean()


def test_extra_passes_leave_batch_norm_statistics_alone(small_mnist_dir):
    """VAT's and FGSM's passes on perturbed images update no running statistics: after the loss of one batch
    they are those of the plain cross-entropy's one forward pass, and batch norm tracks them again afterwards."""
    plain = _trainer(small_mnist_dir)
    idx = plain.train_idx[:100]
    x, y = plain.train_split.x[idx], plain.train_split.y[idx]
    plain._loss(x, y)
    want = {k: v.clone() for k, v in plain.model.state_dict().items() if "running" in k or "batches" in k}
    for override in ("regularize.vat_eps=2.0", "regularize.fgsm_eps=0.25"):
        tr = _trainer(small_mnist_dir, override)
        loss = tr._loss(x, y)
        assert loss > 0
        got = tr.model.state_dict()
        for k, v in want.items():
            assert torch.equal(got[k], v), (override, k)
        assert all(m.track_running_stats for m in tr.model.modules() if isinstance(m, torch.nn.BatchNorm1d))


def test_frozen_batch_norm_still_normalises_with_the_batch():
    bn = torch.nn.BatchNorm1d(3).train()
    x = torch.randn(16, 3) * 5 + 2
    with adversarial.frozen_bn_stats(bn):
        out = bn(x)
    assert torch.allclose(out.mean(0), torch.zeros(3), atol=1e-5)  # batch statistics, not the running ones
    assert torch.equal(bn.running_mean, torch.zeros(3)) and bn.num_batches_tracked == 0
    bn(x)
    assert bn.num_batches_tracked == 1  # tracking is back


# ---------------------------------------------------------------- FGSM


def test_fgsm_perturbation_has_linf_norm_eps_and_raises_the_loss(tiny_net):
    model, x, y = tiny_net
    eps = 0.1
    grad = adversarial.input_gradient(model, x, y)
    adv = adversarial.fgsm_perturb(x, grad, eps)
    delta = adv - x
    free = (x + eps * grad.sign() >= 0) & (x + eps * grad.sign() <= 1) & (grad != 0)  # not clipped
    assert free.float().mean() > 0.5
    assert torch.allclose(delta[free].abs(), torch.full_like(delta[free], eps), atol=1e-6)
    assert delta.abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adversarial.fgsm(model, x, y, eps), adv)
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 0.1


def test_fgsm_training_loss_is_the_mixture(small_mnist_dir):
    """alpha * CE(x) + (1 - alpha) * CE(x_fgsm), computed by hand from the same model."""
    tr = _trainer(small_mnist_dir, "regularize.fgsm_eps=0.2", "regularize.fgsm_alpha=0.3", "model.batchnorm=false")
    idx = tr.train_idx[:100]
    x, y = tr.train_split.x[idx], tr.train_split.y[idx]
    clean = F.cross_entropy(tr.model(x), y)
    adv = adversarial.fgsm_perturb(x, adversarial.input_gradient(tr.model, x, y), 0.2)
    want = 0.3 * clean + 0.7 * F.cross_entropy(tr.model(adv), y)
    assert tr._loss(x, y).item() == pytest.approx(want.item(), rel=1e-5)


# ---------------------------------------------------------------- EMA


def test_ema_with_decay_zero_equals_the_raw_weights(small_mnist_dir):
    """Weights and batch-norm statistics, bit for bit, and so the numbers of a run without the EMA."""
    with_ema = _trainer(small_mnist_dir, "regularize.ema=true", "regularize.ema_decay=0.0", "train.epochs=2")
    without = _trainer(small_mnist_dir, "train.epochs=2")
    a, b = with_ema.fit(), without.fit()
    raw = with_ema.model.state_dict()
    for k, v in with_ema.weights.state_dict().items():
        assert torch.equal(v, raw[k]), k
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]
    assert [r["test_loss"] for r in a] == [r["test_loss"] for r in b]


def test_ema_follows_its_formula():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = weight_ema(model, 0.9)
    ema.update_parameters(model)  # the first update copies
    w1 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves the running statistics
    ema.update_parameters(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * w1 + 0.1 * model[0].weight)
    assert torch.allclose(ema.module[1].running_mean, 0.1 * model[1].running_mean)  # from zeros
    assert not ema.module.training


def test_ema_weights_are_evaluated_and_saved(small_mnist_dir, tmp_path):
    """best.safetensors holds the EMA (not the raw weights), and the run's test accuracy is the EMA's."""
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data-dir",
                str(small_mnist_dir),
                "--epochs",
                "1",
                "--hidden",
                "32",
                "--quiet",
                "--set",
                "regularize.ema=true",
                "--set",
                "regularize.ema_decay=0.99",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    state = checkpoint.load_tensors(out / "checkpoint.safetensors")
    best = checkpoint.load_tensors(out / "best.safetensors")
    for k, v in best.items():
        assert torch.equal(v, state[f"ema.module.{k}"]), k
    assert not torch.equal(best["net.1.weight"], state["model.net.1.weight"])
    model, _ = checkpoint.load_best_model(out)
    ds = data.load(small_mnist_dir)
    _, acc = loss_and_accuracy(model, data.to_float(ds.test_images), ds.test_labels)
    assert acc == pytest.approx(json.loads((out / "run.json").read_text())["summary"]["final_test_acc"], abs=1e-9)


# ---------------------------------------------------------------- test-time augmentation


def test_translate_moves_the_image_with_zero_fill():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    right_up = translate(x, 1, -2)
    want = torch.zeros_like(x)
    want[..., :3, 1:] = x[..., 2:, :4]
    assert torch.equal(right_up, want)
    assert torch.equal(translate(x, 0, 0), x)


def test_tta_with_no_shifts_equals_plain_evaluation(tiny_net):
    model, x, y = tiny_net
    assert for_inference(model, []) is model  # no shifts: the model itself
    plain = loss_and_accuracy(model, x, y)
    identity = loss_and_accuracy(ShiftTTA(model, [[0, 0]]), x, y)
    assert identity[1] == plain[1] and identity[0] == pytest.approx(plain[0], rel=1e-5)


def test_tta_is_the_mean_softmax_over_shifts(tiny_net):
    model, x, _ = tiny_net
    shifts = [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]]
    with torch.no_grad():
        want = torch.stack([torch.softmax(model(translate(x, dx, dy)), 1) for dx, dy in shifts]).mean(0)
        got = torch.softmax(ShiftTTA(model, shifts)(x), 1)
    assert torch.allclose(got, want, atol=1e-6)


def test_tta_runs_classify_and_export_through_the_shifts(small_mnist_dir, tmp_path, capsys):
    """The run's accuracy is the TTA model's, and its ONNX export keeps the shifts and a dynamic batch."""
    import numpy as np
    import onnxruntime as ort

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data-dir",
                str(small_mnist_dir),
                "--epochs",
                "1",
                "--hidden",
                "32",
                "--quiet",
                "--set",
                "regularize.tta_shifts=[[0, 0], [1, 0], [-1, 0]]",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    model, _ = checkpoint.load_best_model(out)
    assert isinstance(model, ShiftTTA) and model.shifts == [(0, 0), (1, 0), (-1, 0)]
    ds = data.load(small_mnist_dir)
    _, acc = loss_and_accuracy(model, data.to_float(ds.test_images), ds.test_labels)
    assert acc == pytest.approx(json.loads((out / "run.json").read_text())["summary"]["final_test_acc"], abs=1e-9)
    assert main(["export", str(out), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "identical predictions 500/500" in capsys.readouterr().out
    x = data.to_float(ds.test_images[:7])
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pixels": x.numpy()})[0]
    with torch.inference_mode():
        assert np.abs(got - model(x).numpy()).max() < 1e-4


# ---------------------------------------------------------------- config and resume


@pytest.mark.parametrize(
    "override, message",
    [
        ("regularize.vat_eps=-1.0", "regularize.vat_eps"),
        ("regularize.vat_iterations=0", "regularize.vat_iterations"),
        ("regularize.fgsm_alpha=1.5", "regularize.fgsm_alpha"),
        ("regularize.ema_decay=1.1", "regularize.ema_decay"),
        ("regularize.tta_shifts=[[1]]", "regularize.tta_shifts"),
        ("regularize.tta_shifts=[[0, 0], [0, 0]]", "regularize.tta_shifts"),
        ("regularize.tta_shifts=[[0, 30]]", "regularize.tta_shifts"),
        ("regularize.vat_eps='big'", "regularize.vat_eps"),
    ],
)
def test_bad_values_are_rejected_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        checks.set_values(config.Config(), checks.parse_overrides([override]))


def test_the_numpy_engine_refuses_regularisers(small_mnist_dir, capsys):
    assert (
        main(
            [
                "train",
                "--data-dir",
                str(small_mnist_dir),
                "--epochs",
                "1",
                "--engine",
                "numpy",
                "--quiet",
                "--set",
                "regularize.ema=true",
            ]
        )
        == 2
    )
    assert "regularize" in capsys.readouterr().err


REGULARISERS = [
    "regularize.vat_eps=2.0",
    "regularize.fgsm_eps=0.25",
    "regularize.ema=true",
    "regularize.ema_decay=0.9",
    "regularize.tta_shifts=[[0, 0], [1, 0], [0, -1]]",
]


def test_resume_with_the_regularisers_equals_uninterrupted(small_mnist_dir, tmp_path, monkeypatch):
    """VAT (its draws), FGSM, the EMA (its weights and buffers) and TTA all on in one run, with batch norm
    and dropout, so every stream and buffer is in play: the resumed run ends bit for bit where the
    uninterrupted one does."""
    args = [
        "--data-dir",
        str(small_mnist_dir),
        "--epochs",
        "3",
        "--hidden",
        "32",
        "--quiet",
        "--set",
        "model.batchnorm=true",
        "--set",
        "model.dropout=0.2",
        "--set",
        "optim.name='adam'",
        "--set",
        "optim.lr=0.002",
    ]
    for key in REGULARISERS:
        args += ["--set", key]
    assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0
    interrupt_at_epoch(monkeypatch, 2)
    assert main(["train", *args, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    rows = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "cut")]
    assert rows[0] == [
        {**r, "seconds": rows[0][i]["seconds"], "eval_seconds": rows[0][i]["eval_seconds"]}
        for i, r in enumerate(rows[1])
    ]
    for name in ("checkpoint.safetensors", "best.safetensors"):
        a, b = (checkpoint.load_tensors(tmp_path / d / name) for d in ("full", "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
