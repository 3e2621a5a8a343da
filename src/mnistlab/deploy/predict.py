"""Predictions on real images: MNIST-style preprocessing and a small Python API.

One path turns every input into the model's (28, 28) input: files, encoded bytes, PIL images, NumPy arrays
and torch tensors are first one grey image in [0, 1] (:func:`to_grey`; an alpha channel is the ink where it
carries the drawing), then made MNIST-style as MNIST itself was made (:func:`mnist_style`): light ink on a
dark background, the ink's bounding box scaled to 20x20 keeping the aspect ratio, placed in a 28x28 frame
with the ink's centre of mass at the centre.

The first rule is to do no harm: a clean image (uniform background, no grain) only gets its polarity and
levels set, so an MNIST digit passes unchanged. Photographs get what they need and no more: the paper's
uneven light is divided out (a smooth surface fitted to the paper, never to the ink, so no stroke is
thinned or hollowed) and the paper's grain is cut off. Image operations use OpenCV (the ``predict`` extra).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MnistlabError

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # beyond this PIL's decompression-bomb check refuses the image
# What MNIST's own digits look like to the model, measured on the 60,000 training images: the share of the
# 28x28 input above 0.5 lies between 0.036 and 0.292 for 99.8% of them (tests/test_predict.py recomputes it).
INK_COVERAGE_RANGE = (0.02, 0.35)  # that range with a margin; outside it an input is unlike any digit
# Drawn in strokes: the area above 0.1 (faint ink, the strokes' soft edges) is at most 2.53 times the area
# above 0.5 on all 60,000 MNIST training digits (1.33 typically; tests/test_predict.py recomputes it); pure
# noise, even after preprocessing, is mostly faint speckle (6 to thousands of times).
FAINT_INK_RATIO_MAX = 3.0
# Drawn in strokes, not scattered: the boundary of the solid ink (above 0.5), counted in pixel edges between ink
# and non-ink (4-neighbours, the frame's border counting as non-ink), is at most 19.0 times the square root of
# the ink's area on all 60,000 MNIST training digits (10.3 typically; 99.9% within 17.0; the ratio is
# scale-free: a disc has 8 / sqrt(pi) = 4.5, pixel edges running along the axes, a straight stroke of
# length L and width w about 2 sqrt(L / w)).
# tests/test_predict.py recomputes it. Binary salt-and-pepper noise at 28-64 pixels, after preprocessing,
# measures 25.5 and more (50% density): its ink is many fragments with holes.
EDGE_RATIO_MAX = 20.0
LOW_CONFIDENCE = 0.5  # a top probability below this: the model cannot tell
WORK_SIDE = 1024  # larger images are box-averaged to at most this many pixels a side before preprocessing


class ImageError(MnistlabError):
    """An image that cannot be read or holds no digit."""


def _read_limited(path: Path, name: str) -> bytes:
    """A file's bytes, refusing more than ``MAX_FILE_BYTES`` (also for devices and pipes, whose size is 0)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ImageError(f"{name}: cannot read file ({e.strerror or e})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: file too large (over {MAX_FILE_BYTES:,} bytes)")
    return raw


def open_image(source: str | Path | bytes, max_side: int | None = None) -> Image.Image:
    """Open a PNG/JPEG (or any PIL-readable image) with size and decompression-bomb limits.

    Sizes are checked from the header, before any pixel is decoded: at most ``MAX_PIXELS`` pixels, and at
    most ``max_side`` pixels a side when given (the web demo's limit)."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    raw = source if isinstance(source, bytes) else _read_limited(Path(source), name)
    if len(raw) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: image too large ({len(raw):,} bytes; limit {MAX_FILE_BYTES:,})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))  # reads the header only
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{name}: image too large ({img.width}x{img.height} pixels; limit {MAX_PIXELS:,})")
            if max_side is not None and max(img.size) > max_side:
                raise ImageError(f"{name}: image too large ({img.width}x{img.height}; limit {max_side} a side)")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image too large (decompression bomb check)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from None
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{name}: empty image")
    return img


def _cv2() -> Any:
    """OpenCV, the imaging library behind preprocessing (the ``predict`` extra)."""
    try:
        import cv2
    except ImportError:
        raise MnistlabError("reading images needs OpenCV: pip install 'mnistlab[predict]'") from None
    return cv2


ARRAY_LAYOUTS = "(H, W), (1, H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")


def _pil_array(img: Image.Image) -> np.ndarray:
    """A decoded PIL image as the array an API user would pass for it: (H, W) grey, (H, W, 3) RGB or
    (H, W, 4) RGBA; uint8, uint16 (16-bit images), int32 or float32 (PIL's "I" and "F" modes).

    EXIF orientation is applied, and images over ``WORK_SIDE`` pixels a side are box-averaged down first
    (the digit ends up 20 pixels tall: it saves memory and time)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        img = img.convert("I")  # the same values as int32; PIL reduces "I" but not "I;16"
    elif img.mode in ("LA", "La", "PA", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("L", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGB")  # palette, CMYK, YCbCr, LAB, HSV
    factor = -(-max(img.size) // WORK_SIDE)
    if factor > 1:
        img = img.reduce(factor)
    arr = np.asarray(img)
    if img.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # a 16-bit image: read on its 16-bit scale
    return arr


def _to_numpy(source: Any) -> np.ndarray:
    """An array or tensor as a NumPy array (tensors detached, moved to the CPU, bf16/fp16 made float32)."""
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # bf16 / fp16: NumPy has no bf16
        return t.numpy()
    return np.asarray(source)


def _unit_range(arr: np.ndarray, name: str) -> np.ndarray:
    """Pixel values -> float32 in [0, 1]. Integers (0-65535) are read on the smallest of 8, 10, 12, 14 or 16
    bits that holds them (a 12-bit sensor's image in a 16-bit PNG reads on its 12-bit scale), booleans as
    0/1, floats in [0, 1] as they are and floats in (1, 255] by 255."""
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.float32)
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageError(f"{name}: integer pixel values must lie in 0-65535, got {lo} to {hi}")
        bits = next(b for b in (8, 10, 12, 14, 16) if hi < 2**b)
        return arr.astype(np.float32) / (2**bits - 1)
    if kind == "f":
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise ImageError(f"{name}: the array holds NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 255:
            raise ImageError(f"{name}: float pixel values must lie in [0, 1] (or 0-255), got {low:g} to {high:g}")
        return x / 255.0 if high > 1 else x
    raise ImageError(f"{name}: unsupported array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")


# the opaque pixels of a drawing made in one colour span at most this much grey (1st to 99th percentile);
# anti-aliased canvas strokes keep their colour and vary only in alpha, while a picture (paper and ink) spans
# its ink contrast as soon as ink is 1% of it
ONE_COLOUR_SPREAD = 0.1


def _alpha_composite(grey: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, bool]:
    """Grey (H, W) with its alpha channel (H, W), both in [0, 1] -> (grey on white paper, whether the alpha
    channel is the drawing: then the transparent pixels are the paper, white, however little of them there is).

    Decided by colour, not by area: when the opaque pixels (alpha at least half its maximum) are (nearly)
    one colour (their grey spans at most :data:`ONE_COLOUR_SPREAD`), the alpha channel is the drawing,
    whatever that colour and however much of the image it covers (a canvas export of white strokes on a
    transparent background reads like black on white). Only a picture whose colours vary is composited onto
    white paper (an opaque photo with transparent margins stays the photo)."""
    if float(alpha.max() - alpha.min()) < 1 / 255:  # uniform alpha carries nothing
        return (grey if float(alpha.min()) > 0 else np.ones_like(grey)), False
    opaque = grey[alpha >= 0.5 * float(alpha.max())]
    low, high = np.percentile(opaque, [1, 99])
    if high - low <= ONE_COLOUR_SPREAD:
        return 1.0 - alpha, True
    return alpha * grey + (1.0 - alpha), False


def to_grey(source: np.ndarray | torch.Tensor | Image.Image, name: str = "array") -> np.ndarray:
    """An image as an array or tensor (see ``ARRAY_LAYOUTS``; uint8, uint16, other integers 0-65535, bool,
    float in [0, 1] or 0-255) or a PIL image -> float32 (H, W) grey in [0, 1].

    Colour becomes BT.601 luma; an alpha channel is composited on white paper, or taken as the ink where
    it carries a drawing of one colour (:func:`_alpha_composite`). Raises :class:`ImageError` naming the
    shape or dtype it cannot take."""
    return _grey_and_paper(source, name)[0]


def _grey_and_paper(source: np.ndarray | torch.Tensor | Image.Image, name: str) -> tuple[np.ndarray, float | None]:
    """:func:`to_grey`, and the paper's grey level where the image says what it is (1.0, white, where the
    alpha channel is the drawing: the transparent pixels), else None (the framing estimates it)."""
    arr = _pil_array(source) if isinstance(source, Image.Image) else _to_numpy(source)
    shape = arr.shape
    if arr.ndim == 3 and shape[-1] in (1, 3, 4):
        pass  # channels last
    elif arr.ndim == 3 and shape[0] == 1:
        arr = arr[0]
    elif arr.ndim != 2:
        raise ImageError(f"{name}: expected an image array of shape {ARRAY_LAYOUTS}, got shape {shape}")
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise ImageError(f"{name}: empty image (shape {shape})")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise ImageError(f"{name}: image too large ({arr.shape[1]}x{arr.shape[0]} pixels; limit {MAX_PIXELS:,})")
    x = _unit_range(arr, name)
    if x.ndim == 2:
        return x, None
    grey = x[..., 0] if x.shape[-1] == 1 else x[..., :3] @ LUMA
    if x.shape[-1] != 4:
        return grey, None
    grey, drawing = _alpha_composite(grey, x[..., 3])
    return np.clip(grey, 0, 1), (1.0 if drawing else None)


def _robust_std(v: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the standard deviation of the normal part of ``v``."""
    return 1.4826 * float(np.median(np.abs(v - np.median(v)))) if v.size else 0.0


def _quadratic(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 6) design matrix of a quadratic surface at points with coordinates in [-1, 1]: 1, u, v, u², uv, v²."""
    u, v = cols.astype(np.float64), rows.astype(np.float64)
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], 1)


def _background(g: np.ndarray) -> tuple[np.ndarray, float]:
    """The level of the paper under the ink (uneven light, vignette, grey paper) of a grey image ``g``
    (H, W), either polarity: (background (H, W), the cut beyond which a pixel is ink rather than paper).

    A quadratic surface is fitted by least squares to the paper only: starting from the median level (the
    paper covers most of an image of a digit), pixels more than 2.5 robust standard deviations (at least
    2% of the image's range) from the surface are left out of the next fit, until the set stops changing.
    Ink never enters the fit, so strokes of any width keep their level, and a uniform background comes out
    as exactly its constant. The fit runs on every f-th pixel, at most 64 a side (the surface is smooth)."""
    h, w = g.shape
    f = max(1, max(h, w) // 64)
    small = g[f // 2 :: f, f // 2 :: f]
    rows = (np.arange(small.shape[0]) * f + f // 2 + 0.5) / h * 2 - 1
    cols = (np.arange(small.shape[1]) * f + f // 2 + 0.5) / w * 2 - 1
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    a = _quadratic(rr.ravel(), cc.ravel())
    values = small.ravel().astype(np.float64)
    floor = 0.02 * max(float(g.max() - g.min()), 1e-3)  # 2% of the image's range: clean images have no spread
    resid = values - np.median(values)
    cut = max(2.5 * _robust_std(resid), floor)
    use, coef = np.abs(resid) <= cut, np.array([np.median(values), 0, 0, 0, 0, 0])
    for _ in range(8):
        if use.sum() < a.shape[1]:
            break
        aa = a[use]
        coef = np.linalg.lstsq(aa.T @ aa, aa.T @ values[use], rcond=None)[0]  # the normal equations (6x6)
        resid = values - a @ coef
        cut = max(2.5 * _robust_std(resid[use]), floor)
        new = np.abs(resid) <= cut
        if (new == use).all():
            break
        use = new
    v = ((np.arange(h) + 0.5) / h * 2 - 1)[:, None]  # (H, 1)
    u = ((np.arange(w) + 0.5) / w * 2 - 1)[None, :]  # (1, W)
    c = coef
    return (c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v).astype(np.float32), cut


def otsu_threshold(x: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (Otsu 1979, via OpenCV on 256 levels)."""
    cv2 = _cv2()
    t, _ = cv2.threshold(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (float(t) + 0.5) / 255


def _normalise(grey: np.ndarray, name: str, paper: float | None = None) -> np.ndarray:
    """Grey (H, W) in [0, 1] of either polarity -> light ink on a black background, ink at 1.

    The ink is on the side where more of the image departs from the paper's level (:func:`_background`):
    dark ink on light paper is inverted, and the paper's level divided out (a flat-field correction), a
    light ink has the ground's level subtracted; the paper's grain is cut at its 99th percentile. On a clean
    image (uniform background, no grain) the correction and the cut do nothing, so an MNIST digit keeps its grey levels.
    ``paper``, where known (a drawing carried by alpha), is the paper's level: used as the background, not
    estimated (a tightly cropped drawing, mostly ink, would otherwise have its ink taken for the paper).
    A blank image (ink less than 0.1 above the paper, relative to the paper's level for dark ink) raises
    ImageError."""
    if paper is None:
        background, cut = _background(grey)
    else:  # as _background finds a uniform background: exactly its level, the cut at its floor
        background, cut = np.full_like(grey, paper), 0.02 * max(float(grey.max() - grey.min()), 1e-3)
    r = grey - background
    dark_ink = float(np.clip(-r - cut, 0, None).sum()) > float(np.clip(r - cut, 0, None).sum())
    # dark ink on paper: light falling unevenly scales paper and ink alike, so divide it out (a flat field);
    # light ink on a dark ground: subtract (dividing by a ground near black would only amplify its noise)
    x = -r / np.maximum(background, 0.05) if dark_ink else r
    bare = np.abs(r) <= cut  # the paper's pixels
    peak = max(float(x.max()), 1e-6)
    t = otsu_threshold(x / peak) * peak  # on the ink's own range: 256 levels even for faint 16-bit ink
    ink = x > t
    bare &= ~ink
    if not ink.any() or not bare.any():
        raise ImageError(f"{name}: no digit found (the image is blank)")
    if float(x[ink].mean() - x[bare].mean()) < 0.1:  # less contrast than this is shading, not ink
        raise ImageError(f"{name}: no digit found (the image is blank)")
    low = min(max(float(np.percentile(x[bare], 99)), 0.0), 0.5 * t)
    top = float(np.percentile(x[ink], 95))
    if top - low < 1e-3:
        raise ImageError(f"{name}: no digit found (the image is blank)")
    return np.clip((x - low) / (top - low), 0, 1)


def _framed(x: np.ndarray) -> bool:
    """Whether a light-ink image (H, W) is already framed as MNIST frames a digit: square, the ink's box 17-22
    28ths of the side (MNIST: 20 of 28) and its centre of mass within a 28th of MNIST's (13.5-14.5 of 28,
    measured on the training set)."""
    h, w = x.shape
    if h != w or h < 28:
        return False
    ys, xs = np.nonzero(x > 0.5 / 255)  # above half a grey level
    if not len(ys):
        return False
    box = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    mass = float(x.sum())
    cy, cx = (
        (float(np.arange(h) @ x.sum(1)) / mass + 0.5) * 28 / h - 0.5,
        (float(np.arange(w) @ x.sum(0)) / mass + 0.5) * 28 / w - 0.5,
    )
    return 17 <= box * 28 / h <= 22 and 13 <= cy <= 15 and 13 <= cx <= 15


def mnist_style(grey: np.ndarray, name: str = "image", paper: float | None = None) -> np.ndarray:
    """A grey image (H, W) in [0, 1], any size and polarity -> (28, 28) float32 in [0, 1], as MNIST was made.

    The ink (above half its level, specks under 2% of the largest stroke dropped) gives a bounding box whose
    longer side is scaled to 20 pixels (area-averaged when shrinking: anti-aliased, as MNIST's digits); the
    faint edges around it are kept and scaled alike. The result is placed in a 28x28 frame with its centre
    of mass at pixel (14, 14), MNIST's convention (LeCun et al., "The MNIST database": centred by mass).
    An MNIST digit passes unchanged. ``paper``: the paper's grey level where known (see :func:`_normalise`).
    Raises :class:`ImageError` when there is no digit to find."""
    cv2 = _cv2()
    g = np.asarray(grey, np.float32)
    if g.ndim != 2 or g.size == 0:
        raise ImageError(f"{name}: expected a grey (H, W) image, got shape {g.shape}")
    if max(g.shape) > WORK_SIDE:
        f = -(-max(g.shape) // WORK_SIDE)
        g = cv2.resize(g, (max(1, g.shape[1] // f), max(1, g.shape[0] // f)), interpolation=cv2.INTER_AREA)
    x = _normalise(g, name, paper)
    if _framed(x):  # already an MNIST digit's frame: only resized (an MNIST digit itself: unchanged)
        return x if x.shape == (28, 28) else cv2.resize(x, (28, 28), interpolation=cv2.INTER_AREA)
    mask = (x > 0.5).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        raise ImageError(f"{name}: no digit found (the image is blank)")
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = areas >= 0.02 * areas.max()
    if not keep.all():  # specks: clear them and their faint halo
        specks = np.isin(labels, 1 + np.nonzero(~keep)[0]).astype(np.uint8)
        x[(cv2.dilate(specks, np.ones((5, 5), np.uint8)) > 0) & ~np.isin(labels, 1 + np.nonzero(keep)[0])] = 0
    kept = stats[1:][keep]
    r0, c0 = int(kept[:, cv2.CC_STAT_TOP].min()), int(kept[:, cv2.CC_STAT_LEFT].min())
    r1 = int((kept[:, cv2.CC_STAT_TOP] + kept[:, cv2.CC_STAT_HEIGHT]).max())
    c1 = int((kept[:, cv2.CC_STAT_LEFT] + kept[:, cv2.CC_STAT_WIDTH]).max())
    scale = 20.0 / max(r1 - r0, c1 - c0)
    m = int(np.ceil(4 / scale)) + 1  # the frame's margin, in image pixels: the faint edges of the strokes
    crop = x[max(0, r0 - m) : r1 + m, max(0, c0 - m) : c1 + m]
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    if size != (crop.shape[1], crop.shape[0]):
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    box = np.clip(crop, 0, 1)
    mass = float(box.sum())
    if not mass > 0 or float(box.max()) < 0.1:  # a few far-apart dots: nothing left at digit scale
        raise ImageError(f"{name}: no digit found (the ink is too sparse to make out a digit)")
    cy = float(np.arange(box.shape[0]) @ box.sum(1)) / mass
    cx = float(np.arange(box.shape[1]) @ box.sum(0)) / mass
    ty, tx = round(14 - cy), round(14 - cx)  # where the box's top-left corner lands in the frame
    out = np.zeros((28, 28), np.float32)
    ys, xs = slice(max(0, ty), min(28, ty + box.shape[0])), slice(max(0, tx), min(28, tx + box.shape[1]))
    out[ys, xs] = box[ys.start - ty : ys.stop - ty, xs.start - tx : xs.stop - tx]
    return out


def fill_frame(grey: np.ndarray, name: str = "image", paper: float | None = None) -> np.ndarray:
    """A grey image of an object of any size and polarity -> (28, 28) float32, as Fashion-MNIST was made
    (Xiao et al. 2017, section 2): light on a dark background (inverted when the image is dark-on-light),
    trimmed to the object, its longer side scaled to 28 pixels, centred in the 28x28 frame. A 28x28 image
    of the dataset itself passes through unchanged (but for centring). ``paper``: the background's grey level
    where known (a drawing carried by alpha), else the median of the image's border."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    level = float(np.median(border)) if paper is None else paper
    x = 1.0 - grey if level > 0.5 else grey
    if paper is None:
        ground = float(np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])))  # the background's level in x
    else:
        ground = 1.0 - paper if paper > 0.5 else paper
    x = np.clip((x - ground) / max(1.0 - ground, 1e-6), 0, 1)  # the background to 0
    rows, cols = np.nonzero((x > 0.05).any(1))[0], np.nonzero((x > 0.05).any(0))[0]
    if not len(rows):
        raise ImageError(f"{name}: nothing found (the image is blank)")
    x = x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = x.shape
    size = (max(1, round(w * 28 / max(h, w))), max(1, round(h * 28 / max(h, w))))
    img = Image.fromarray(np.round(x * 255).astype(np.uint8))
    box = np.asarray(img if img.size == size else img.resize(size, Image.Resampling.LANCZOS), np.float32) / 255
    out = np.zeros((28, 28), np.float32)
    top, left = (28 - box.shape[0]) // 2, (28 - box.shape[1]) // 2
    out[top : top + box.shape[0], left : left + box.shape[1]] = box
    return out


FRAMES = {"digit": mnist_style, "fill": fill_frame}  # how a dataset's images were framed (see DatasetSpec.handwriting)


def preprocess(
    source: str | Path | bytes | Image.Image | np.ndarray | torch.Tensor, name: str | None = None, frame: str = "digit"
) -> np.ndarray:
    """A file path, encoded bytes, PIL image, NumPy array or torch tensor -> (28, 28) float32 in [0, 1].

    Every kind takes the same path (:func:`to_grey`, then the dataset's framing), so an array is read as the
    same image as the file that holds it, with the same polarity rule. ``frame``: ``digit`` (MNIST's:
    :func:`mnist_style`) or ``fill`` (Fashion-MNIST's: :func:`fill_frame`). Raises :class:`ImageError`."""
    if frame not in FRAMES:
        raise ImageError(f"unknown frame {frame!r} (one of {', '.join(FRAMES)})")
    style = FRAMES[frame]
    if isinstance(source, (str, Path, bytes)):
        label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
        grey, paper = _grey_and_paper(open_image(source), label)
        return style(grey, label, paper)
    label = name or ("image" if isinstance(source, Image.Image) else "array")
    if not isinstance(source, (Image.Image, np.ndarray, torch.Tensor)):
        raise ImageError(
            f"{label}: cannot read a {type(source).__name__} as an image (give a path, bytes, a PIL "
            f"image, a NumPy array or a torch tensor)"
        )
    grey, paper = _grey_and_paper(source, label)
    return style(grey, label, paper)


@dataclass
class Prediction:
    path: str
    prediction: int  # the most probable class's label (its index)
    probabilities: list[float]  # by label
    input: np.ndarray  # the (28, 28) image the model saw
    unlike_digit: str | None = None  # why the input is unlike any digit, when it is
    label: str = ""  # the most probable class's name (the dataset's: "7", "Ankle boot", ...)

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(i), float(self.probabilities[i])) for i in order]

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "prediction": self.prediction,
            "label": self.label,
            "probabilities": [round(float(p), 6) for p in self.probabilities],
            "unlike_digit": self.unlike_digit,
        }


class Classifier:
    """A trained run's model, ready to predict: ``Classifier.load(run_dir).predict(images)``.

    ``classes``: the dataset's class names by label; ``handwriting``: whether its images are handwriting,
    framed as MNIST's (else as Fashion-MNIST's, see :func:`fill_frame`); the ink-coverage check of
    :func:`unlike_digit` is measured on handwritten digits and applies only there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        run_dir: str = "",
        classes: Sequence[str] = tuple("0123456789"),
        handwriting: bool = True,
        dataset: str = "mnist",
    ) -> None:
        self.model, self.run_dir = model.eval(), run_dir
        self.classes, self.handwriting, self.dataset = tuple(classes), handwriting, dataset
        self.frame = "digit" if handwriting else "fill"

    @classmethod
    def load(cls, run_dir: str | Path) -> Classifier:
        from ..core.checkpoint import load_best_model
        from ..core.datasets import get

        model, cfg = load_best_model(run_dir)
        spec = get(cfg.data.dataset)
        return cls(model, str(run_dir), spec.classes, spec.handwriting, spec.name)

    def note(self, x: np.ndarray, probs: np.ndarray) -> str | None:
        """Why the input is unlike what the model knows (see :func:`unlike_digit`), or None."""
        if self.handwriting:
            return unlike_digit(x, probs)
        return f"low confidence ({float(probs.max()):.0%})" if float(probs.max()) < LOW_CONFIDENCE else None

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 28, 28) MNIST-style float images -> (N, K) softmax probabilities, K the dataset's classes."""
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).unsqueeze(1)  # (N, 1, 28, 28)
        return torch.softmax(self.model(x).float(), 1).numpy()

    def predict(self, images: Sequence[Any] | Any) -> list[Prediction]:
        """Predict file paths, bytes, PIL images, NumPy arrays or torch tensors (one or a list), each read by
        :func:`preprocess`; raises :class:`ImageError` for one that holds no readable digit, or for none at all."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ImageError("no images given")
        inputs = np.stack([preprocess(im, frame=self.frame) for im in images])
        probs = self.probabilities(inputs)
        names = [str(im) if isinstance(im, (str, Path)) else f"<{type(im).__name__}>" for im in images]
        return [
            Prediction(n, int(p.argmax()), p.tolist(), x, self.note(x, p), self.classes[int(p.argmax())])
            for n, p, x in zip(names, probs, inputs, strict=True)
        ]


def unlike_digit(x: np.ndarray, probs: np.ndarray) -> str | None:
    """Why the (28, 28) input ``x`` with softmax ``probs`` is unlike any digit the model knows, or None.

    Models trained on MNIST are confident on anything (pure noise: "8" at 90%), so confidence alone is
    not enough: the input must also be drawn in strokes (faint ink at most ``FAINT_INK_RATIO_MAX`` times
    the solid ink's area; noise is mostly faint speckle), its solid ink must be strokes rather than scattered
    fragments (:func:`ink_edge_ratio` at most ``EDGE_RATIO_MAX``; binary noise has no faint ink to give it
    away) and its ink coverage must look like a handwritten digit's (``INK_COVERAGE_RANGE``). All three
    bounds are measured on MNIST's training digits."""
    solid = float((x > 0.5).mean())
    faint = float((x > 0.1).mean())
    if faint > FAINT_INK_RATIO_MAX * solid:
        return f"its ink is speckle, not strokes (faint ink covers {faint:.0%} of the digit box, solid ink {solid:.0%})"
    edge = ink_edge_ratio(x)
    if edge > EDGE_RATIO_MAX:
        return (
            f"its ink is scattered fragments, not strokes (the ink's edge is {edge:.1f} times the square root of "
            f"its area; digits: at most {EDGE_RATIO_MAX:g})"
        )
    lo, hi = INK_COVERAGE_RANGE
    if not lo <= solid <= hi:
        return f"its ink covers {solid:.0%} of the digit box (digits: {lo:.0%}-{hi:.0%})"
    if float(probs.max()) < LOW_CONFIDENCE:
        return f"low confidence ({float(probs.max()):.0%})"
    return None


def ink_edge_ratio(x: np.ndarray) -> float:
    """The length of the solid ink's boundary over the square root of its area, for an image ``x`` (H, W) in
    [0, 1]: solid ink is above 0.5; the boundary is counted in pixel edges between ink and non-ink
    (4-neighbours, outside the image non-ink). Scale-free (a compactness measure, perimeter / sqrt(area);
    the edges run along the axes, so a disc measures 8 / sqrt(pi) = 4.5); 0 for an image without ink."""
    ink = np.pad(x > 0.5, 1).astype(np.int8)  # (H + 2, W + 2)
    area = int(ink.sum())
    if area == 0:
        return 0.0
    edges = int(np.abs(np.diff(ink, axis=0)).sum() + np.abs(np.diff(ink, axis=1)).sum())
    return edges / math.sqrt(area)


def load_model(run_dir: str | Path) -> Classifier:
    """The public entry point: ``mnistlab.load_model("runs/reproduce-...").predict(["digit.png"])``."""
    return Classifier.load(run_dir)
