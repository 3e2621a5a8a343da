"""Predictions on real images: MNIST-style preprocessing and a small Python API.

Preprocessing follows how MNIST itself was made: grey levels, light ink on a dark background (inverted
when the image is dark-on-light), cropped to the ink, scaled to fit a 20x20 box keeping the aspect ratio,
then placed in a 28x28 frame so that the ink's centre of mass is at the centre.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .errors import MnistlabError

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # beyond this PIL's decompression-bomb check refuses the image
# What MNIST's own digits look like to the model, measured on the 60,000 training images: the share of the
# 28x28 input above 0.5 lies between 0.036 and 0.292 for 99.8% of them (tests/test_predict.py recomputes it).
INK_COVERAGE_RANGE = (0.02, 0.35)  # that range with a margin; outside it an input is unlike any digit
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


def to_grey(img: Image.Image) -> np.ndarray:
    """float32 (H, W) in [0, 1]; transparent pixels count as white paper."""
    img = ImageOps.exif_transpose(img)
    factor = -(-max(img.size) // WORK_SIDE)
    if factor > 1:  # the digit ends up 20 pixels tall: averaging big images down first saves memory and time
        img = img.reduce(factor)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _background(x: np.ndarray) -> np.ndarray:
    """The slowly varying level under the ink (uneven light, shadows, paper), same shape as ``x``.

    A morphological opening (min then max filter) wider than a pen stroke removes the light strokes and
    keeps the background; it runs on a copy at most 128 pixels a side, then is smoothed and scaled back.
    """
    h, w = x.shape
    img = Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8))
    factor = max(1, max(h, w) // 128)
    small = img.reduce(factor) if factor > 1 else img
    k = max(3, min(small.size) // 6) | 1  # odd, about a sixth of the image: wider than any stroke
    opened = small.filter(ImageFilter.MinFilter(k)).filter(ImageFilter.MaxFilter(k))
    smooth = opened.filter(ImageFilter.GaussianBlur(k / 2)).resize((w, h), Image.BILINEAR)
    return np.minimum(np.asarray(smooth, np.float32) / 255, x)


def otsu_threshold(x: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1]: the split of a 256-bin histogram with the largest
    between-class variance."""
    hist, edges = np.histogram(x, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between[~np.isfinite(between)] = 0
    return float(edges[int(np.argmax(between)) + 1])


def _ink_bounds(mass: np.ndarray, tail: float = 0.005) -> tuple[int, int]:
    """Where the ink mass along one axis starts and ends, ignoring ``tail`` of it at each end (specks)."""
    c = np.cumsum(mass) / mass.sum()
    return int(np.searchsorted(c, tail)), int(np.searchsorted(c, 1 - tail))


def mnist_style(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """A grey image of any size and polarity -> (28, 28) float32, MNIST-style (see the module docstring).

    Photographs have uneven light: the background is estimated and subtracted before the ink is found
    with Otsu's threshold, so a grey, shaded sheet of paper does not become ink."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    x = 1.0 - grey if np.median(border) > 0.5 else grey  # make the ink light on a dark background
    x = x - _background(x)
    t = otsu_threshold(x)
    ink = x > t
    if not ink.any() or x[ink].mean() - x[~ink].mean() < 0.1:
        raise ImageError(f"{name}: no digit found (the image is blank)")
    top = float(np.percentile(x[ink], 95))
    low = 0.5 * t  # keep the soft edges of strokes, drop the paper's grain
    if top - low < 0.05:
        raise ImageError(f"{name}: no digit found (the image is blank)")
    x = np.clip((x - low) / (top - low), 0, 1)  # background -> 0, ink -> 1
    r0, r1 = _ink_bounds(x.sum(1))
    c0, c1 = _ink_bounds(x.sum(0))
    x = x[r0:r1 + 1, c0:c1 + 1]
    h, w = x.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    box = np.asarray(Image.fromarray((x * 255).astype(np.uint8)).resize(size, Image.LANCZOS), np.float32) / 255
    mass = box.sum()
    if not mass > 0:  # ink so sparse (a few far-apart dots) that nothing survives scaling to 20x20
        raise ImageError(f"{name}: no digit found (the ink is too sparse to make out a digit)")
    cy, cx = (np.arange(box.shape[0]) @ box.sum(1)) / mass, (np.arange(box.shape[1]) @ box.sum(0)) / mass
    top_left = (int(np.clip(round(14 - cy), 0, 28 - box.shape[0])), int(np.clip(round(14 - cx), 0, 28 - box.shape[1])))
    out = np.zeros((28, 28), np.float32)
    out[top_left[0]:top_left[0] + box.shape[0], top_left[1]:top_left[1] + box.shape[1]] = box
    return out


def fill_frame(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """A grey image of an object of any size and polarity -> (28, 28) float32, as Fashion-MNIST was made
    (Xiao et al. 2017, section 2): light on a dark background (inverted when the image is dark-on-light),
    trimmed to the object, its longer side scaled to 28 pixels, centred in the 28x28 frame. A 28x28 image
    of the dataset itself passes through unchanged (but for centring)."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    x = 1.0 - grey if np.median(border) > 0.5 else grey
    paper = float(np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])))
    x = np.clip((x - paper) / max(1.0 - paper, 1e-6), 0, 1)  # the background to 0
    rows, cols = np.nonzero((x > 0.05).any(1))[0], np.nonzero((x > 0.05).any(0))[0]
    if not len(rows):
        raise ImageError(f"{name}: nothing found (the image is blank)")
    x = x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = x.shape
    size = (max(1, round(w * 28 / max(h, w))), max(1, round(h * 28 / max(h, w))))
    img = Image.fromarray(np.round(x * 255).astype(np.uint8))
    box = np.asarray(img if img.size == size else img.resize(size, Image.LANCZOS), np.float32) / 255
    out = np.zeros((28, 28), np.float32)
    top, left = (28 - box.shape[0]) // 2, (28 - box.shape[1]) // 2
    out[top:top + box.shape[0], left:left + box.shape[1]] = box
    return out


FRAMES = {"digit": mnist_style, "fill": fill_frame}  # how a dataset's images were framed (see DatasetSpec.handwriting)


def preprocess(source: str | Path | bytes | Image.Image | np.ndarray, name: str | None = None,
               frame: str = "digit") -> np.ndarray:
    """A file path, encoded bytes, PIL image or array -> (28, 28) float32 in [0, 1].

    ``frame``: ``digit`` (MNIST's: :func:`mnist_style`) or ``fill`` (Fashion-MNIST's: :func:`fill_frame`).
    A (28, 28) array with values in [0, 1] is taken as already MNIST-style (light ink on dark)."""
    style = FRAMES[frame]
    if isinstance(source, np.ndarray):
        arr = np.asarray(source, np.float32)
        if arr.ndim == 3:
            arr = arr.mean(-1)
        if arr.ndim != 2 or arr.size == 0:
            raise ImageError(f"{name or 'array'}: expected a 2-D grey (or 3-D colour) array, got shape {source.shape}")
        if arr.max() > 1.0:
            arr = arr / 255.0
        if arr.shape == (28, 28):
            return arr
        return style(arr, name or "array")
    img = source if isinstance(source, Image.Image) else open_image(source)
    return style(to_grey(img), name or (str(source) if isinstance(source, (str, Path)) else "image"))


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
        return {"path": self.path, "prediction": self.prediction, "label": self.label,
                "probabilities": [round(float(p), 6) for p in self.probabilities], "unlike_digit": self.unlike_digit}


class Classifier:
    """A trained run's model, ready to predict: ``Classifier.load(run_dir).predict(images)``.

    ``classes``: the dataset's class names by label; ``handwriting``: whether its images are handwriting,
    framed as MNIST's (else as Fashion-MNIST's, see :func:`fill_frame`); the ink-coverage check of
    :func:`unlike_digit` is measured on handwritten digits and applies only there.
    """

    def __init__(self, model: torch.nn.Module, run_dir: str = "", classes: Sequence[str] = tuple("0123456789"),
                 handwriting: bool = True, dataset: str = "mnist") -> None:
        self.model, self.run_dir = model.eval(), run_dir
        self.classes, self.handwriting, self.dataset = tuple(classes), handwriting, dataset
        self.frame = "digit" if handwriting else "fill"

    @classmethod
    def load(cls, run_dir: str | Path) -> "Classifier":
        from .checkpoint import load_best_model
        from .datasets import get
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
        """Predict file paths, bytes, PIL images or NumPy arrays (one or a list)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        inputs = np.stack([preprocess(im, frame=self.frame) for im in images])
        probs = self.probabilities(inputs)
        names = [str(im) if isinstance(im, (str, Path)) else f"<{type(im).__name__}>" for im in images]
        return [Prediction(n, int(p.argmax()), p.tolist(), x, self.note(x, p), self.classes[int(p.argmax())])
                for n, p, x in zip(names, probs, inputs)]


def unlike_digit(x: np.ndarray, probs: np.ndarray) -> str | None:
    """Why the (28, 28) input ``x`` with softmax ``probs`` is unlike any digit the model knows, or None.

    Models trained on MNIST are confident on anything (pure noise: "8" at 90%), so confidence alone is
    not enough: the input's ink coverage must also look like a handwritten digit's."""
    coverage = float((x > 0.5).mean())
    lo, hi = INK_COVERAGE_RANGE
    if not lo <= coverage <= hi:
        return f"its ink covers {coverage:.0%} of the digit box (digits: {lo:.0%}-{hi:.0%})"
    if float(probs.max()) < LOW_CONFIDENCE:
        return f"low confidence ({float(probs.max()):.0%})"
    return None


def load_model(run_dir: str | Path) -> Classifier:
    """The public entry point: ``mnistlab.load_model("runs/reproduce-...").predict(["digit.png"])``."""
    return Classifier.load(run_dir)
