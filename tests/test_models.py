import math
import re

import pytest
import torch
from torch import nn

from mnistlab.core import checks, config, models
from mnistlab.errors import ConfigError


def _cfg(**kw):
    return checks.set_values(config.Config(), checks.parse_overrides([f"model.{k}={v}" for k, v in kw.items()])).model


def test_report_init_equals_the_reports_construction():
    """nn.Linear x2 under torch.manual_seed, then kaiming_uniform_ on both weights, as the report does."""
    torch.manual_seed(123)
    l1, l2 = nn.Linear(784, 1024), nn.Linear(1024, 10)
    nn.init.kaiming_uniform_(l1.weight)
    nn.init.kaiming_uniform_(l2.weight)
    model = models.build_model(config.ModelConfig(), torch.Generator().manual_seed(123))
    got = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for ours, theirs in zip(got, (l1, l2), strict=True):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    models.build_model(_cfg(arch='"cnn"'), torch.Generator().manual_seed(1))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize(
    "kw, params",
    [
        ({}, 784 * 1024 + 1024 + 1024 * 10 + 10),
        ({"hidden": "[512, 256]"}, 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10),
        ({"hidden": "[100]", "batchnorm": "true"}, 784 * 100 + 100 + 200 + 100 * 10 + 10),
        ({"arch": '"lenet5"'}, 6 * 25 + 6 + 16 * 6 * 25 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10),
        # 5 bias-free 3x3 convs with BatchNorm (2 per channel), a bias-free dense layer with BatchNorm, the output
        (
            {"arch": '"cnn"', "width": "8"},
            9 * 8
            + 16
            + 9 * 8 * 8
            + 16
            + 9 * 8 * 16
            + 32
            + 9 * 16 * 16
            + 32
            + 9 * 16 * 32
            + 64
            + 32 * 9 * 64
            + 128
            + 64 * 10
            + 10,
        ),
        ({"arch": '"fastcnn"', "width": "8"}, 25 * 8 + 8 + 9 * 8 * 16 + 16 + 16 * 49 * 32 + 32 + 32 * 10 + 10),
    ],
)
def test_parameter_counts(kw, params):
    model = models.build_model(_cfg(**kw), torch.Generator().manual_seed(0))
    assert models.count_parameters(model) == params


@pytest.mark.parametrize("arch", list(models.ARCHS))
@pytest.mark.parametrize("activation", list(models.ACTIVATIONS))
def test_output_shape_and_finite(arch, activation):
    cfg = _cfg(arch=f'"{arch}"', activation=f'"{activation}"')
    model = models.build_model(cfg, torch.Generator().manual_seed(0)).eval()
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_activation_registry_matches_definitions():
    x = torch.linspace(-3, 3, 13)
    assert torch.allclose(models.ACTIVATIONS["sigmoid"]()(x), 1 / (1 + torch.exp(-x)))
    assert torch.allclose(models.ACTIVATIONS["tanh"]()(x), torch.tanh(x))
    assert torch.equal(models.ACTIVATIONS["relu"]()(x), x.clamp(min=0))
    assert torch.allclose(models.ACTIVATIONS["leaky_relu"]()(x), torch.maximum(0.01 * x, x))


def test_init_schemes_differ_and_are_seeded():
    def first_weight(init, seed):
        m = models.build_model(_cfg(init=f'"{init}"'), torch.Generator().manual_seed(seed))
        return m.net[1].weight

    assert torch.equal(first_weight("report", 5), first_weight("report", 5))
    assert not torch.equal(first_weight("report", 5), first_weight("report", 6))
    w = first_weight("report", 5)
    bound = math.sqrt(2) * math.sqrt(3 / 784)  # kaiming_uniform_, relu gain, fan_in
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert first_weight("default", 5).abs().max() <= 1 / math.sqrt(784)


def test_normalize_inside_model():
    m = models.build_model(_cfg(normalize="true"), torch.Generator().manual_seed(0))
    assert isinstance(m.net[1], models.Normalize)


def test_dropout_rate_scale_and_determinism():
    d = models.Dropout(0.3).train()
    d.generator = torch.Generator().manual_seed(0)
    x = torch.ones(200, 1000)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7), rtol=1e-4)
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation
    d.generator = torch.Generator().manual_seed(0)
    assert torch.equal(d(x), y)
    assert torch.equal(d.eval()(x), x)


def test_dropout_masks_are_not_correlated_across_positions():
    d = models.Dropout(0.5).train()
    d.generator = torch.Generator().manual_seed(1)
    m = (d(torch.ones(4000, 6)) != 0).float()
    corr = torch.corrcoef(m.t())
    assert (corr - torch.eye(6)).abs().max() < 0.06


def test_gaussian_noise_is_absent_in_eval_mode_and_has_its_std_in_training():
    model = models.build_model(_cfg(hidden="[64]", batchnorm="true", noise_std="0.3"), torch.Generator().manual_seed(0))
    noise = [m for m in model.modules() if isinstance(m, models.GaussianNoise)]
    assert len(noise) == 2  # the input and the one hidden layer
    x = torch.rand(256, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))  # deterministic: no noise
    layer = noise[0]
    layer.train()
    layer.generator = torch.Generator().manual_seed(1)
    delta = layer(x) - x
    assert delta.std().item() == pytest.approx(0.3, rel=0.02) and abs(delta.mean().item()) < 0.01
    layer.eval()
    assert torch.equal(layer(x), x)


def test_an_architectures_properties_come_from_its_registry_entry(monkeypatch):
    """Adding a CNN is one ARCHS entry: its ``conv`` property alone makes it channels-last and lets it take
    model.freeze_first; the options it does not list are refused by name."""

    class Tiny(torch.nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(2 * 26 * 26, k)

        def forward(self, x):
            return self.head(self.conv(x).flatten(1))

    monkeypatch.setitem(models.ARCHS, "tinycnn", models.Arch(lambda c, k: Tiny(k), conv=True))
    m = _cfg(arch='"tinycnn"', freeze_first="true")
    models.check(m)
    model = models.build_model(m, torch.Generator().manual_seed(0))
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv.weight.requires_grad  # frozen first convolution
    with pytest.raises(ConfigError, match=re.escape("'model.width' is a CNN option")):
        models.check(_cfg(arch='"tinycnn"', width=8))
    monkeypatch.setitem(models.ARCHS, "tinycnn", models.Arch(lambda c, k: Tiny(k), conv=False))
    with pytest.raises(ConfigError, match=re.escape("'model.freeze_first' is a CNN option")):
        models.check(_cfg(arch='"tinycnn"', freeze_first="true"))
