"""The device code path, checked on the CPU: no host synchronisation inside an epoch.

On a GPU every `.item()`, `.tolist()`, `.cpu()`, `.numpy()` or truth test of a device tensor stalls the
pipeline. An epoch may read its one loss at the end; the DataLoader-compatible seed draws read CPU
generator tensors (two per epoch), which never touch the device."""

import pytest
import torch

from mnistlab.core import checks, config
from mnistlab.core.train import Trainer

SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__")


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the report's run: fused fp32 step
        ["train.precision='bf16'"],  # fused bf16 step
        [
            "model.hidden=[64, 32]",
            "model.dropout=0.3",
            "optim.momentum=0.9",
            "optim.schedule='cosine'",
            "optim.max_norm=2.0",
            "optim.label_smoothing=0.1",
        ],  # autograd path with every option
        [
            "model.arch='cnn'",
            "model.width=4",
            "data.augment='affine+elastic'",
            "optim.name='adamw'",
            "optim.schedule='onecycle'",
        ],
    ],
    ids=["fused", "fused-bf16", "autograd", "cnn-augment"],
)
def test_an_epoch_makes_no_host_syncs(small_mnist_dir, monkeypatch, overrides):
    from mnistlab.core import data

    cfg = checks.set_values(
        config.Config(), checks.parse_overrides([f"data.dir='{small_mnist_dir}'", "train.epochs=2", *overrides])
    )
    tr = Trainer(cfg, data.load(small_mnist_dir), torch.device("cpu"))
    calls = {name: 0 for name in SYNCING}
    for name in SYNCING:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    tr.train_epoch()
    monkeypatch.undo()
    assert calls["item"] == 3, calls  # two CPU seed draws + the epoch's mean loss
    assert sum(calls[n] for n in SYNCING if n != "item") == 0, calls


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="a placement check can only fail where there is a second device: benchmarks/gpu_check.sh runs it on a GPU",
)
def test_data_and_generators_live_on_the_gpu(small_mnist_dir):
    from mnistlab.core import data

    cfg = checks.set_values(
        config.Config(), checks.parse_overrides([f"data.dir='{small_mnist_dir}'", "train.device='cuda'"])
    )
    tr = Trainer(cfg, data.load(small_mnist_dir), torch.device("cuda"))
    for split in (tr.train_split, tr.val, tr.test):
        assert split.x.device.type == "cuda" and split.y.device.type == "cuda"
    assert tr.g_aug.device.type == "cuda" and tr.g_drop.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in tr.model.parameters())
    assert tr.g_data.device.type == "cpu"  # the report's draws stay on the CPU generator
