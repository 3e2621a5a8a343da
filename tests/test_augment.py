import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnistlab.core import augment, checks, config, data


def _cfg(kind, **kw):
    return checks.set_values(
        config.Config(), checks.parse_overrides([f"data.augment='{kind}'"] + [f"data.{k}={v}" for k, v in kw.items()])
    ).data


@pytest.fixture(scope="module")
def batch(mnist):
    return data.to_float(mnist.train_images[:64])


@pytest.mark.parametrize("kind", ["affine", "elastic", "affine+elastic"])
def test_deterministic_per_seed_and_different_across_seeds(batch, kind):
    c = _cfg(kind)
    a = augment.augment(batch, c, torch.Generator().manual_seed(1))
    b = augment.augment(batch, c, torch.Generator().manual_seed(1))
    other = augment.augment(batch, c, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert a.shape == batch.shape and a.dtype == batch.dtype


@pytest.mark.parametrize("kind", ["affine", "elastic", "affine+elastic"])
def test_keeps_images_in_range_and_recognisable(batch, kind):
    out = augment.augment(batch, _cfg(kind), torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, batch)
    # a mild deformation: most ink stays where it was (correlation with the original)
    a, b = out.flatten(1), batch.flatten(1)
    corr = ((a - a.mean(1, keepdim=True)) * (b - b.mean(1, keepdim=True))).sum(1) / (a.std(1) * b.std(1) * 783)
    assert corr.mean() > 0.4


def test_none_is_identity(batch):
    assert augment.augment(batch, _cfg("none"), torch.Generator()) is batch


def test_zero_ranges_are_identity(batch):
    c = _cfg("affine", max_shift=0, max_rotation=0, max_scale=0, max_shear=0)
    out = augment.augment(batch, c, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, batch, atol=1e-5, rtol=0)


def test_pure_shift_moves_ink_by_whole_pixels(batch):
    c = _cfg("affine", max_shift=3, max_rotation=0, max_scale=0, max_shear=0)
    out = augment.augment(batch[:1], c, torch.Generator().manual_seed(0))
    mass = lambda im: (im[0, 0].sum(0) * torch.arange(28)).sum() / im.sum()  # centre of mass along x
    assert abs(mass(out) - mass(batch[:1])) <= 3.01


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    shift=st.floats(0, 4),
    rot=st.floats(0, 30),
    scale=st.floats(0, 0.3),
    alpha=st.floats(0, 40),
)
def test_range_property(batch, seed, shift, rot, scale, alpha):
    c = _cfg("affine+elastic", max_shift=shift, max_rotation=rot, max_scale=scale, elastic_alpha=alpha)
    out = augment.augment(batch[:8], c, torch.Generator().manual_seed(seed))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_training_with_augmentation_keeps_labels(mnist):
    """Labels are never touched: the trainer feeds augmented images with the original labels."""
    from mnistlab.core.train import Trainer

    cfg = checks.set_values(
        config.Config(), checks.parse_overrides(["data.augment='affine'", "train.epochs=1", "model.hidden=[16]"])
    )
    tr = Trainer(cfg, mnist, torch.device("cpu"))
    seen = []
    tr._update = lambda x, y: (seen.append(y.clone()), torch.zeros(()))[1]
    tr.train_epoch()
    assert torch.cat(seen).sort().values.tolist() == tr.train_split.y[tr.train_idx].sort().values.tolist()


def test_smoothing_matrix_equals_separable_gaussian_convolution():
    import torch.nn.functional as F

    d = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    k = augment._gaussian_kernel(4.0, torch.device("cpu"))
    r = (len(k) - 1) // 2
    ref = F.conv2d(F.pad(d, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    ref = F.conv2d(F.pad(ref, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    m = augment._smoothing_matrix(28, 4.0, torch.device("cpu"))
    torch.testing.assert_close(m.t() @ d[:, 0] @ m, ref[:, 0], atol=1e-6, rtol=0)
