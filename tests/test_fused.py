import copy

import pytest
import torch

from mnistlab.core import checks, config, fused, models


def _setup(hidden=(1024,), seed=0, lr=0.1):
    cfg = checks.set_values(config.Config(), checks.parse_overrides([f"model.hidden={list(hidden)}", f"optim.lr={lr}"]))
    model = models.build_model(cfg.model, torch.Generator().manual_seed(seed))
    return cfg, model


def test_applies_only_where_the_update_is_the_same():
    cfg, model = _setup()
    assert fused.applies(model, cfg)
    for override in (
        "optim.momentum=0.9",
        "model.dropout=0.2",
        "model.activation='tanh'",
        "optim.name='adam'",
        "optim.max_norm=3.0",
        "optim.label_smoothing=0.1",
        "train.fast=false",
        "optim.weight_decay=1e-4",
        "regularize.vat_eps=2.0",
        "regularize.fgsm_eps=0.25",
    ):
        assert not fused.applies(model, checks.set_values(cfg, checks.parse_overrides([override]))), override
    # the EMA is updated after the step and test-time shifts act at evaluation: the fused step still applies
    assert fused.applies(
        model, checks.set_values(cfg, checks.parse_overrides(["regularize.ema=true", "regularize.tta_shifts=[[0, 0]]"]))
    )


@pytest.mark.parametrize("hidden", [(1024,), (256, 128, 64)])
def test_fused_step_equals_autograd_sgd(hidden):
    _cfg, model = _setup(hidden)
    twin = copy.deepcopy(model)
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(twin.parameters(), lr=0.1)
    step = fused.FusedMLPStep(twin, opt_b)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.rand(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g)
        la = torch.nn.functional.cross_entropy(model(x), y)  # the oracle: the autograd step the fused one replaces
        opt_a.zero_grad(set_to_none=True)
        la.backward()
        opt_a.step()
        lb = step(x, y)
        assert lb.item() == pytest.approx(la.item(), rel=1e-5)
    for pa, pb in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6)


def test_fused_bf16_step_tracks_fp32():
    _cfg, model = _setup()
    twin = copy.deepcopy(model)
    s32 = fused.FusedMLPStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    s16 = fused.FusedMLPStep(twin, torch.optim.SGD(twin.parameters(), lr=0.1), "bf16")
    x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
    la, lb = s32(x, y), s16(x, y)
    assert lb.item() == pytest.approx(la.item(), rel=2e-2)
    w32, w16 = model.net[1].weight, twin.net[1].weight
    assert (w32 - w16).abs().max() < 1e-3
