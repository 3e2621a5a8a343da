import pytest
import torch

from mnistlab.core import checks, config, models, optim


def _o(**kw):
    return checks.set_values(config.Config(), checks.parse_overrides([f"optim.{k}={v}" for k, v in kw.items()])).optim


def test_constant():
    assert [optim.lr_factor(s, 100, 10, _o()) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_step_schedule():
    o = _o(schedule="'step'", step_epochs=2, gamma=0.5)
    assert [optim.lr_factor(s, 60, 10, o) for s in (0, 19, 20, 39, 40, 59)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_cosine_schedule():
    o = _o(schedule="'cosine'", min_lr_ratio=0.1)
    assert optim.lr_factor(0, 100, 10, o) == pytest.approx(1.0)
    assert optim.lr_factor(50, 100, 10, o) == pytest.approx(0.1 + 0.9 * 0.5)
    assert optim.lr_factor(100, 100, 10, o) == pytest.approx(0.1)


def test_warmup_then_cosine():
    o = _o(schedule="'cosine'", warmup_epochs=1.0)
    assert [optim.lr_factor(s, 100, 10, o) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert optim.lr_factor(10, 100, 10, o) == pytest.approx(1.0)
    assert optim.lr_factor(55, 100, 10, o) == pytest.approx(0.5)


def test_onecycle():
    o = _o(schedule="'onecycle'")
    assert optim.lr_factor(0, 100, 10, o) == pytest.approx(1 / 25 + (1 - 1 / 25) / 30)
    assert optim.lr_factor(29, 100, 10, o) == pytest.approx(1.0)
    assert optim.lr_factor(30, 100, 10, o) == pytest.approx(1.0)
    assert optim.lr_factor(99, 100, 10, o) < 0.01


@pytest.mark.parametrize("schedule", ["'step'", "'cosine'", "'onecycle'"])
def test_lr_per_step_equals_torch_lambdalr(schedule):
    """The pure get_lr(step) gives, bit for bit, what torch's LambdaLR scheduler would set before each step."""
    o = _o(schedule=schedule, step_epochs=1, gamma=0.5, lr=0.2, warmup_epochs=0.5)
    total, per_epoch = 30, 10
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=o.lr)
    oracle = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: optim.lr_factor(s, total, per_epoch, o))
    want = []
    for _ in range(total):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        oracle.step()
    got = [o.lr * optim.lr_factor(s, total, per_epoch, o) for s in range(total)]
    assert got == want


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_optimizer_registry(name, cls):
    o = _o(name=f"'{name}'", lr=0.01, weight_decay=1e-4)
    opt = optim.build_optimizer(torch.nn.Linear(2, 2), o)
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.01
    assert opt.param_groups[0]["weight_decay"] == 1e-4


def test_nesterov_momentum_reaches_sgd():
    opt = optim.build_optimizer(torch.nn.Linear(2, 2), _o(momentum=0.9, nesterov="true"))
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9


def test_max_norm_holds_after_a_step():
    cfg = checks.set_values(config.Config(), checks.parse_overrides(["model.hidden=[64, 32]", "optim.max_norm=0.5"]))
    model = models.build_model(cfg.model, torch.Generator().manual_seed(0))
    opt = optim.build_optimizer(model, cfg.optim)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28) * 50), torch.arange(8))
    loss.backward()
    opt.step()
    norms = [m.weight.norm(dim=1) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert max(n.max() for n in norms) > 0.5  # the step pushed some units past the bound
    optim.apply_max_norm(model, 0.5)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.norm(dim=1).max() <= 0.5 + 1e-5


def test_max_norm_applied_in_training(mnist):
    from mnistlab.core.train import Trainer

    cfg = checks.set_values(
        config.Config(), checks.parse_overrides(["model.hidden=[32]", "optim.max_norm=0.3", "train.epochs=1"])
    )
    tr = Trainer(cfg, mnist, torch.device("cpu"))
    tr.steps_per_epoch = 5
    tr.train_epoch()
    assert all(m.weight.norm(dim=1).max() <= 0.3 + 1e-5 for m in tr.model.modules() if isinstance(m, torch.nn.Linear))


def test_early_stopping(small_mnist_dir):
    from mnistlab.core import data
    from mnistlab.core.train import Trainer

    cfg = checks.set_values(
        config.Config(),
        checks.parse_overrides(
            [
                f"data.dir='{small_mnist_dir}'",
                "model.hidden=[8]",
                "train.epochs=50",
                "train.patience=2",
                "optim.lr=1e-6",
            ]
        ),
    )
    tr = Trainer(cfg, data.load(small_mnist_dir), torch.device("cpu"))
    hist = tr.fit()
    assert tr.stopped_early and len(hist) < 50
    best = max(range(len(hist)), key=lambda i: hist[i]["val_acc"])
    assert len(hist) - 1 - best == 2  # stopped exactly `patience` epochs after the last improvement


def test_linear_schedule_holds_then_decays_to_min():
    """Rasmus et al. 2015's annealing: constant for the first two thirds, then linear to min_lr_ratio."""
    o = _o(schedule="'linear'", decay_start=0.5, min_lr_ratio=0.2)
    assert [optim.lr_factor(s, 100, 10, o) for s in (0, 25, 50)] == [1.0, 1.0, 1.0]
    assert optim.lr_factor(75, 100, 10, o) == pytest.approx(0.6)
    assert optim.lr_factor(100, 100, 10, o) == pytest.approx(0.2)
    plain = _o(schedule="'linear'")  # decay_start 0: linear from the first step
    assert optim.lr_factor(50, 100, 10, plain) == pytest.approx(0.5)
