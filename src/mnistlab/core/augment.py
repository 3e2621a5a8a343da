"""Batched tensor augmentation on the training device: random affine maps and elastic distortion.

Every random number comes from the generator passed in, so a seed fixes the augmented images. One
``grid_sample`` call per batch applies the whole deformation (bilinear, zero padding: pixels stay in
[0, 1] and labels are untouched).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import DataConfig, check_choice


def _affine_theta(b: int, cfg: DataConfig, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, 2, 3) maps from output to input coordinates: rotation, shear, scale, shift."""
    u = torch.rand(b, 5, generator=g, device=device) * 2 - 1  # (B, 5) in [-1, 1)
    angle = u[:, 0] * math.radians(cfg.max_rotation)
    scale = 1 + u[:, 1] * cfg.max_scale
    shear = u[:, 2] * cfg.max_shear
    shift = u[:, 3:] * (2 * cfg.max_shift / 28)  # pixels -> normalised [-1, 1] units
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.empty(b, 2, 3, device=device)
    # rotation @ [[1, shear], [0, 1]], divided by scale (the map runs from output back to input)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (cos * shear - sin) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = (sin * shear + cos) / scale
    theta[:, :, 2] = shift
    return theta


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _smoothing_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(n, n) matrix M with v @ M = v convolved with a Gaussian (reflected at the borders)."""
    k = _gaussian_kernel(sigma, device)
    r = (len(k) - 1) // 2
    impulses = torch.eye(n, device=device)[:, None, :]  # (n, 1, n)
    padded = F.pad(impulses, (r, r), mode="reflect" if r < n else "replicate")
    return F.conv1d(padded, k.view(1, 1, -1)).squeeze(1)


def _elastic_field(b: int, h: int, w: int, cfg: DataConfig, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, H, W, 2) displacement in normalised units: uniform noise smoothed by a Gaussian, times alpha."""
    d = torch.rand(b * 2, h, w, generator=g, device=device) * 2 - 1  # (2B, H, W)
    # separable Gaussian smoothing as two small matrix products (much faster than 1-channel convolutions)
    d = _smoothing_matrix(h, cfg.elastic_sigma, device).t() @ d @ _smoothing_matrix(w, cfg.elastic_sigma, device)
    d = d.view(b, 2, h, w).permute(0, 2, 3, 1) * cfg.elastic_alpha  # pixels
    return d * torch.tensor([2 / w, 2 / h], device=device)


def _identity_theta(b: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=device).expand(b, 2, 3)


def _warp(x: torch.Tensor, cfg: DataConfig, g: torch.Generator, affine: bool, elastic: bool) -> torch.Tensor:
    b, _, h, w = x.shape  # (B, 1, 28, 28)
    theta = _affine_theta(b, cfg, g, x.device) if affine else _identity_theta(b, x.device)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2)
    if elastic:
        grid = grid + _elastic_field(b, h, w, cfg, g, x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, DataConfig, torch.Generator], torch.Tensor] | None] = {
    "none": None,
    "affine": lambda x, c, g: _warp(x, c, g, affine=True, elastic=False),
    "elastic": lambda x, c, g: _warp(x, c, g, affine=False, elastic=True),
    "affine+elastic": lambda x, c, g: _warp(x, c, g, affine=True, elastic=True),
}


def check(d: DataConfig) -> None:
    """What the augmentation registry supports."""
    check_choice("data.augment", d.augment, AUGMENTATIONS)


def augment(x: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply ``cfg.augment`` to a float batch (B, 1, 28, 28) in [0, 1]."""
    fn = AUGMENTATIONS[cfg.augment]
    return x if fn is None else fn(x, cfg, generator)
