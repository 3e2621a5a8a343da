"""The from-scratch NumPy MLP: gradient checks, learning, and agreement with the PyTorch engine."""

import numpy as np
import pytest

from mnistlab.analysis import gradcheck
from mnistlab.cli import main
from mnistlab.core import config, data
from mnistlab.core.numpy_mlp import NumpyMLP, ReLU


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu"])
def test_every_gradient_matches_float64_autograd_and_finite_differences(activation):
    rows = gradcheck.check_activation(activation)
    assert len(rows) == 6  # 3 layers x (weight, bias)
    for r in rows:
        assert r.autograd_rel_err < 1e-8 and r.fd_rel_err < 1e-6, r


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    monkeypatch.setattr(ReLU, "backward", lambda self, dy: dy)  # forgets the ReLU mask
    rows = gradcheck.check_activation("relu")
    assert not all(r.ok for r in rows)
    assert all(r.ok for r in rows if r.param.startswith("layer3"))  # the top layer does not go through ReLU


def test_gradcheck_command(capsys):
    assert main(["gradcheck", "--activation", "tanh"]) == 0
    out = capsys.readouterr().out
    assert "gradcheck passed: 6 parameter gradients" in out and "layer1.weight" in out


def test_gradcheck_command_fails_loudly(monkeypatch, capsys):
    monkeypatch.setattr(ReLU, "backward", lambda self, dy: 2 * dy * self.mask)
    assert main(["gradcheck", "--activation", "relu"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_numpy_mlp_learns_in_one_epoch(mnist):
    """784-1024-10, the report's init and SGD: > 90% test accuracy after one epoch on 30,000 images."""
    import torch

    from mnistlab.core.models import build_model

    net = NumpyMLP.from_torch(build_model(config.ModelConfig(), torch.Generator().manual_seed(0)))
    x = data.to_float(mnist.train_images[:30000]).numpy().reshape(-1, 784)
    y = mnist.train_labels[:30000].numpy()
    for i in range(0, 30000, 100):
        net.loss_and_grads(x[i : i + 100], y[i : i + 100])
        net.sgd_step(0.1)
    xt = data.to_float(mnist.test_images).numpy().reshape(-1, 784)
    acc = (net.forward(xt).argmax(1) == mnist.test_labels.numpy()).mean() * 100
    assert acc > 90


def test_numpy_engine_tracks_the_torch_engine(small_mnist_dir, tmp_path):
    """Same split, order and initial weights: the two engines agree to float rounding."""
    import json

    for engine in ("torch", "numpy"):
        assert (
            main(
                [
                    "train",
                    "--engine",
                    engine,
                    "--data-dir",
                    str(small_mnist_dir),
                    "--epochs",
                    "3",
                    "--hidden",
                    "128",
                    "--quiet",
                    "--out",
                    str(tmp_path / engine),
                ]
            )
            == 0
        )
    a, b = (json.loads((tmp_path / e / "metrics.json").read_text()) for e in ("torch", "numpy"))
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4
        assert abs(ra["val_acc"] - rb["val_acc"]) <= 0.2 and abs(ra["test_acc"] - rb["test_acc"]) <= 0.2


@pytest.mark.parametrize(
    "override, key",
    [
        ("--set=model.dropout=0.5", "model.dropout"),
        ("--set=optim.name='adam'", "optim.name"),
        ("--arch=cnn", "model.arch"),
    ],
)
def test_numpy_engine_refuses_what_it_does_not_implement(override, key, tmp_path, capsys):
    assert main(["train", "--engine", "numpy", override, "--out", str(tmp_path / "r")]) == 2
    assert f"needs {key}" in capsys.readouterr().err


def test_numpy_state_dict_loads_into_torch():
    import torch

    from mnistlab.core.models import MLP

    rng = np.random.default_rng(0)
    net = NumpyMLP(
        [
            (rng.standard_normal((8, 784)).astype(np.float32), np.zeros(8, np.float32)),
            (rng.standard_normal((10, 8)).astype(np.float32), np.ones(10, np.float32)),
        ]
    )
    m = MLP(hidden=[8])
    m.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    x = rng.random((3, 784)).astype(np.float32)
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), net.forward(x), rtol=1e-5, atol=1e-5)


def test_the_numpy_mlp_has_exactly_the_activations_the_registry_marks_by_hand():
    from mnistlab.core.models import ACTIVATIONS, BY_HAND
    from mnistlab.core.numpy_mlp import LAYERS

    assert tuple(LAYERS) == BY_HAND and set(BY_HAND) < set(ACTIVATIONS)
    assert [r.activation for r in gradcheck.run_all()][::6] == list(BY_HAND)  # the default checks them all


def test_gradcheck_refuses_an_activation_the_numpy_mlp_lacks(capsys):
    assert main(["gradcheck", "--activation", "gelu"]) == 2
    err = capsys.readouterr().err
    assert "not one the NumPy MLP implements" in err and "leaky_relu" in err and err.count("\n") == 1
