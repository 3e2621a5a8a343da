import gzip

import numpy as np
import pytest
import torch

from conftest import idx_bytes, write_mnist_dir
from mnistlab.core import data
from mnistlab.errors import DataError


def test_bundled_mnist_is_verified_and_complete(mnist):
    assert mnist.is_mnist and mnist.source == "bundled"
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    # published facts about MNIST (see _mnist/README.md)
    assert torch.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(mnist.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(mnist.train_images.float().mean().item() - 33.318) < 1e-3


def test_parse_idx_roundtrip():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(arr)), arr)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:3], "too short"),
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "magic"),  # float data, not unsigned bytes
        (lambda b: b[:3] + b"\x07" + b[4:], "magic"),  # 7 dimensions
        (lambda b: b[:10], "truncated IDX header"),
        (lambda b: b[:-1], "length mismatch"),
        (lambda b: b + b"\x00", "length mismatch"),
        (lambda b: b[:4] + (0).to_bytes(4, "big") + b[8:], "implausible"),
    ],
)
def test_parse_idx_rejects_corrupt_input(mutate, message):
    good = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=message):
        data.parse_idx(mutate(good), "f")


@pytest.mark.parametrize("compress, layout", [(True, "flat"), (False, "flat"), (True, "torchvision")])
def test_load_directory_layouts(tmp_path, mnist, compress, layout):
    write_mnist_dir(tmp_path, mnist, 100, 50, compress=compress, layout=layout)
    ds = data.load(tmp_path)
    assert ds.train_images.shape == (100, 28, 28) and ds.test_labels.shape == (50,)
    assert torch.equal(ds.train_images, mnist.train_images[:100])
    assert not ds.is_mnist and ds.source == str(tmp_path)


def test_missing_file_is_named(tmp_path, mnist):
    write_mnist_dir(tmp_path, mnist, 10, 10)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data.load(tmp_path)


def test_truncated_gzip_is_reported(tmp_path, mnist):
    write_mnist_dir(tmp_path, mnist, 10, 10)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        data.load(tmp_path)


def test_count_mismatch_between_images_and_labels(tmp_path, mnist):
    write_mnist_dir(tmp_path, mnist, 10, 10)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(9, np.uint8))))
    with pytest.raises(DataError, match=r"10 images but .* 9 labels"):
        data.load(tmp_path)


def test_wrong_image_shape(tmp_path, mnist):
    write_mnist_dir(tmp_path, mnist, 10, 10)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((10, 32, 32), np.uint8))))
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        data.load(tmp_path)


def test_bundled_checksum_mismatch_is_caught(monkeypatch):
    # the bundled files are fine, so pretend the expected digest differs: only the checksum can tell
    wrong = dict(data.MNIST_SHA256, **{"t10k-images-idx3-ubyte": "0" * 64})
    monkeypatch.setattr(data, "MNIST_SHA256", wrong)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte fails its SHA-256"):
        data.load()


def test_checksum_covers_content(tmp_path, mnist):
    write_mnist_dir(tmp_path, mnist, 100, 50)
    a = data.load(tmp_path)
    write_mnist_dir(tmp_path, mnist, 100, 51)
    assert data.load(tmp_path).checksum != a.checksum


@pytest.mark.parametrize("n, frac", [(60000, 0.1), (1000, 0.1), (999, 0.1), (137, 0.3), (10, 0.5)])
def test_split_equals_random_split(n, frac):
    torch.manual_seed(123)
    sub_train, sub_val = torch.utils.data.random_split(range(n), [1 - frac, frac])
    train, val = data.split_indices(n, frac, torch.Generator().manual_seed(123))
    assert train.tolist() == list(sub_train.indices) and val.tolist() == list(sub_val.indices)


def test_report_split_selects_the_reports_validation_images(mnist):
    """Under torch.manual_seed(123), random_split(mnist_train, [54000, 6000]) picks these 6,000."""
    torch.manual_seed(123)
    _, val_set = torch.utils.data.random_split(range(60000), [54000, 6000])
    _, val = data.split_indices(60000, 0.1, torch.Generator().manual_seed(123))
    assert len(val) == 6000 and val.tolist() == list(val_set.indices)


def test_epoch_order_replays_shuffled_dataloader():
    """The same draws as DataLoader(shuffle=True): base seed, then RandomSampler's seed, epoch after epoch."""
    torch.manual_seed(7)
    torch.randn(3)  # arbitrary earlier use of the generator
    loader = torch.utils.data.DataLoader(range(50), batch_size=10, shuffle=True)
    expected = [torch.cat(list(loader)).tolist() for _ in range(3)]
    g = torch.Generator().manual_seed(7)
    torch.randn(3, generator=g)
    assert [data.epoch_order(50, g).tolist() for _ in range(3)] == expected


def test_to_float_matches_totensor_scaling(mnist):
    x = data.to_float(mnist.train_images[:5])
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], mnist.train_images[:5].to(torch.float32).div(255))


def test_run_split_is_the_trainers_validation_split(mnist):
    """One function draws a run's split: the trainer's validation images are those at run_split's indices
    (what `mnistlab evaluate --split val` rebuilds)."""
    from mnistlab.core import config
    from mnistlab.core.train import Trainer

    cfg = config.Config()
    tr = Trainer(cfg, mnist, torch.device("cpu"))
    train_idx, val_idx, _ = data.run_split(len(mnist.train_images), cfg.data.val_fraction, cfg.train.seed)
    assert torch.equal(tr.val.y, mnist.train_labels[val_idx]) and torch.equal(tr.train_idx, train_idx)
    assert torch.equal(tr.val.x, data.to_float(mnist.train_images[val_idx]))
    _, again, _ = data.run_split(len(mnist.train_images), 0.1, 124)
    assert not torch.equal(again, val_idx)  # the seed decides the split
