"""The CPU speed recipe's parts: the channels-last dense head (speedcnn) and the frozen first layer."""

import pytest
import torch
import torch.nn.functional as F

from mnistlab.core import checks, config, models, optim
from mnistlab.errors import ConfigError


def _cfg(arch: str, width: int = 8, **extra) -> config.ModelConfig:
    sets = [f"model.arch='{arch}'", f"model.width={width}", "model.init='default'"]
    return checks.set_values(
        config.Config(), checks.parse_overrides(sets + [f"model.{k}={v}" for k, v in extra.items()])
    ).model


def test_speedcnn_is_fastcnn_with_its_dense_weights_read_in_channels_last_order():
    """Same layers, same initial draws; with fastcnn's dense weights permuted from (C, H, W) to (H, W, C)
    order, speedcnn computes the same function."""
    fast = models.build_model(_cfg("fastcnn"), torch.Generator().manual_seed(3)).eval()
    speed = models.build_model(_cfg("speedcnn"), torch.Generator().manual_seed(3)).eval()
    assert (
        models.count_parameters(speed)
        == models.count_parameters(fast)
        == 25 * 8 + 8 + 9 * 8 * 16 + 16 + 16 * 49 * 32 + 32 + 32 * 10 + 10
    )
    w = fast.classifier[1].weight  # (4w, C * 7 * 7) in CHW order
    with torch.no_grad():
        speed.classifier[0].weight.copy_(w.view(32, 16, 7, 7).permute(0, 2, 3, 1).reshape(32, -1))
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(speed(x), fast(x), rtol=1e-5, atol=1e-5)


def test_speedcnn_flattens_without_a_copy_and_keeps_one_memory_format_in_backward():
    model = models.build_model(_cfg("speedcnn"), torch.Generator().manual_seed(0))
    seen = {}
    model.features.register_forward_hook(lambda m, i, out: seen.update(features=out))
    model.classifier.register_forward_pre_hook(lambda m, args: seen.update(head_in=args[0]))
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert seen["head_in"].data_ptr() == seen["features"].data_ptr()  # a view of the conv output
    # fastcnn copies there: the difference this architecture exists for
    fast = models.build_model(_cfg("fastcnn"), torch.Generator().manual_seed(0))
    fast.classifier[1].register_forward_pre_hook(lambda m, args: seen.update(fast_head_in=args[0]))
    fast.features.register_forward_hook(lambda m, i, out: seen.update(fast_features=out))
    fast(torch.rand(4, 1, 28, 28))
    assert seen["fast_head_in"].data_ptr() != seen["fast_features"].data_ptr()


def test_frozen_first_convolution_keeps_its_weights_and_the_rest_train():
    cfg = checks.set_values(
        config.Config(),
        checks.parse_overrides(
            [
                "model.arch='speedcnn'",
                "model.width=8",
                "model.init='default'",
                "model.freeze_first=true",
                "optim.name='adam'",
                "optim.lr=0.01",
            ]
        ),
    )
    model = models.build_model(cfg.model, torch.Generator().manual_seed(0))
    opt = optim.build_optimizer(model, cfg.optim)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        loss = F.cross_entropy(model(torch.rand(16, 1, 28, 28)), torch.randint(0, 10, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    first = models.first_conv(model)
    for name, p in model.named_parameters():
        frozen = p is first.weight or p is first.bias
        assert torch.equal(p, before[name]) == frozen, name


def test_freeze_first_is_a_cnn_option():
    with pytest.raises(ConfigError, match="freeze_first"):
        models.check(checks.set_values(config.Config(), checks.parse_overrides(["model.freeze_first=true"])).model)
    models.check(_cfg("lenet5", width=32, freeze_first="true"))  # any CNN takes it


def test_whitened_first_convolution_decorrelates_its_patches():
    """Oracle: the filters' responses to the patches they were fitted on have second moment
    diag(l / (l + eps)) (whitened, decorrelated), each filter's negative beside it, zero bias."""
    from mnistlab.core import data

    x = data.to_float(data.load().train_images[:500])  # (500, 1, 28, 28)
    cfg = _cfg("speedcnn", whiten_first="true", normalize="true")
    model = models.build_model(cfg, torch.Generator().manual_seed(0))
    models.whiten_first_conv(model, x, eps=1e-2)
    conv = models.first_conv(model)
    w = conv.weight.detach().double().reshape(8, 25)
    torch.testing.assert_close(w[4:], -w[:4])
    assert torch.count_nonzero(conv.bias) == 0
    assert isinstance(model.features[0], models.Normalize)
    normalized = model.features[0](x).double()  # what the convolution sees
    p = F.unfold(normalized, 5, padding=2, stride=2).transpose(1, 2).reshape(-1, 25)  # (N * 196, 25)
    r = p @ w[:4].T  # (N * 196, 4) responses
    second = r.T @ r / len(r)
    eig = torch.linalg.eigvalsh(p.T @ p / len(p)).flip(0)[:4]
    torch.testing.assert_close(second, torch.diag(eig / (eig + 1e-2)), atol=1e-6, rtol=1e-6)


def test_whiten_first_needs_a_cnn_and_an_even_number_of_channels_within_the_patch_size():
    with pytest.raises(ConfigError, match="whiten_first"):
        models.check(checks.set_values(config.Config(), checks.parse_overrides(["model.whiten_first=true"])).model)
    x = torch.rand(4, 1, 28, 28)
    for width in (7, 52):  # odd; 26 pairs from 25-pixel patches
        with pytest.raises(ConfigError, match="even and at most twice its 25-pixel patches"):
            _cfg("speedcnn", width=width, whiten_first="true")  # at config time, before any data or file
        with pytest.raises(ConfigError, match="even and at most twice its 25-pixel patches"):
            models.whiten_first_conv(models.build_model(_cfg("speedcnn", width=width), torch.Generator()), x)
    models.check(_cfg("speedcnn", width=16, whiten_first="true"))  # the easy case stays valid
    with pytest.raises(ConfigError, match="32 channels to be even and at most twice its 9-pixel patches"):
        _cfg("cnn", width=32, whiten_first="true")  # 3x3 first convolution


def test_a_whitening_that_cannot_fit_leaves_no_study_behind(small_mnist_dir, tmp_path, capsys):
    from mnistlab.cli import main

    out = tmp_path / "study"
    args = [
        "compare",
        "experiments/speedrun.toml",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--data-dir",
        str(small_mnist_dir),
    ]
    assert main([*args, "--set", "model.whiten_first=true", "--set", "model.width=15"]) == 2
    assert "'model.whiten_first' needs the first convolution's 15 channels" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_whitens_from_training_images_only_and_freezes_with_freeze_first(small_mnist_dir):
    """The trainer fits the filters on its training split (the same filters whatever the validation and test
    images are), and freeze_first keeps them through training."""
    from mnistlab.core import experiment

    sets = [
        "model.arch='speedcnn'",
        "model.width=8",
        "model.init='default'",
        "model.whiten_first=true",
        "model.freeze_first=true",
        f"data.dir='{small_mnist_dir}'",
        "train.batch_size=50",
        "train.epochs=1",
        "train.device='cpu'",
    ]
    cfg = checks.set_values(config.Config(), checks.parse_overrides(sets))
    dataset, device, cfg = experiment.prepare(cfg, lambda *a: None)
    trainer = experiment.make_trainer(cfg, dataset, device)
    fitted = models.first_conv(trainer.model).weight.detach().clone()
    expected = models.build_model(cfg.model, torch.Generator().manual_seed(0))
    train_x = trainer.train_split.x[trainer.train_idx]
    models.whiten_first_conv(expected, train_x)
    torch.testing.assert_close(fitted, models.first_conv(expected).weight.detach())
    trainer.fit()
    assert torch.equal(models.first_conv(trainer.model).weight, fitted)
