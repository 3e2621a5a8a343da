"""MNIST-format data: a validating IDX reader, file discovery, checksums and the seeded split.

The bundled copy lives in ``mnistlab/_mnist`` (MNIST, by LeCun, Cortes and Burges, CC BY-SA 3.0) and is
checked against the SHA-256 of its decompressed files on every load.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

BUNDLED_DIR = Path(__file__).parent / "_mnist"

# split name -> (images file, labels file), official names without ".gz"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of the decompressed IDX files of MNIST (SHA256SUMS.raw)
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}

_IDX_DTYPES = {0x08: np.uint8}  # MNIST uses unsigned bytes only
_MAX_IDX_BYTES = 1 << 30  # refuse absurd headers before allocating (EMNIST, the largest, is 0.64 GB)


def _idx_size(head: bytes) -> int | None:
    """The total length an IDX file's header announces (None when the header is not IDX-like)."""
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 3:
        return None
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return None
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return 4 + 4 * ndim + math.prod(dims)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number.

    Decompression stops one byte past the length the IDX header announces (bounded by ``_MAX_IDX_BYTES``),
    so a gzip bomb is refused after reading its header, not after inflating it.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
            f.seek(0)
            if magic != b"\x1f\x8b":
                raw = f.read(_MAX_IDX_BYTES + 16 + 1)
                if len(raw) > _MAX_IDX_BYTES + 16:
                    raise DataError(f"{path}: too large to be an MNIST-format file")
                return raw
            try:
                with gzip.GzipFile(fileobj=f) as gz:
                    head = gz.read(16)
                    want = _idx_size(head)
                    if want is None:  # not IDX: let parse_idx name the problem from the header
                        return head
                    if want > _MAX_IDX_BYTES + 16:
                        raise DataError(f"{path}: implausible IDX header (announces {want:,} bytes)")
                    rest = gz.read(max(0, want - len(head)) + 1)  # one byte more reveals trailing data
                    return head + rest
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def parse_idx(buf: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an IDX buffer, checking magic number, dimensions and length."""
    if len(buf) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(buf)} bytes)")
    zero, dtype_code, ndim = buf[0] << 8 | buf[1], buf[2], buf[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 3:
        raise DataError(f"{name}: bad IDX magic number 0x{buf[:4].hex()} (expected unsigned-byte data, 1-3 dims)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(dims)
    if count == 0 or count > _MAX_IDX_BYTES:
        raise DataError(f"{name}: implausible IDX dimensions {dims}")
    if len(buf) != header + count:
        raise DataError(f"{name}: IDX length mismatch: dimensions {dims} need {header + count} bytes, "
                        f"file has {len(buf)}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def find_files(directory: str | Path) -> dict[str, Path]:
    """Locate the four files in ``directory``: official ``.gz`` names, raw names, or ``MNIST/raw/``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    found: dict[str, Path] = {}
    for stem in (s for pair in FILES.values() for s in pair):
        candidates = [base / (stem + ext) for base in (directory, directory / "MNIST" / "raw")
                      for ext in (".gz", "")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise DataError(f"data directory {directory} has no {stem}[.gz] (also looked in MNIST/raw/)")
        found[stem] = hit
    return found


@dataclass(frozen=True)
class Dataset:
    """The four arrays of an MNIST-format dataset, as tensors."""

    train_images: torch.Tensor  # (60000, 28, 28) uint8
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 28, 28) uint8
    test_labels: torch.Tensor  # (10000,) int64
    sha256: dict[str, str]  # decompressed-file SHA-256, by official name
    source: str  # "bundled" or the directory

    @property
    def checksum(self) -> str:
        """One SHA-256 over the four files' digests: the dataset's identity in run records."""
        joined = "".join(f"{k}:{self.sha256[k]}\n" for k in sorted(self.sha256))
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def is_mnist(self) -> bool:
        return self.sha256 == MNIST_SHA256


def _load_pair(files: dict[str, Path], images_stem: str, labels_stem: str,
               digests: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = {}
    for stem in (images_stem, labels_stem):
        buf = _read_bytes(files[stem])
        digests[stem] = hashlib.sha256(buf).hexdigest()
        arrays[stem] = parse_idx(buf, str(files[stem]))
    images, labels = arrays[images_stem], arrays[labels_stem]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{files[images_stem]}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{files[labels_stem]}: expected a 1-D label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{files[images_stem]} has {len(images)} images but {files[labels_stem]} has "
                        f"{len(labels)} labels")
    if labels.max() > 9:
        raise DataError(f"{files[labels_stem]}: labels must be 0-9, found {int(labels.max())}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def load(data_dir: str | Path | None = None) -> Dataset:
    """Load the bundled MNIST (verified by SHA-256) or the four MNIST-format files in ``data_dir``."""
    bundled = data_dir is None or str(data_dir) == ""
    files = find_files(BUNDLED_DIR if bundled else data_dir)
    digests: dict[str, str] = {}
    train = _load_pair(files, *FILES["train"], digests)
    test = _load_pair(files, *FILES["test"], digests)
    if bundled:
        for stem, want in MNIST_SHA256.items():
            if digests[stem] != want:
                raise DataError(f"bundled {stem} fails its SHA-256 check (expected {want[:12]}..., "
                                f"got {digests[stem][:12]}...): reinstall mnistlab")
    return Dataset(*train, *test, sha256=digests, source="bundled" if bundled else str(data_dir))


# ---------------------------------------------------------------- split and batching order


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) sizes exactly as ``torch.utils.data.random_split(ds, [1 - f, f])`` computes them."""
    sizes = [math.floor(n * (1 - val_fraction)), math.floor(n * val_fraction)]
    for i in range(n - sum(sizes)):  # random_split hands out the remainder round-robin
        sizes[i % 2] += 1
    return sizes[0], sizes[1]


def split_indices(n: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/validation indices; equal to ``random_split``'s under the same generator state."""
    n_train, _ = split_sizes(n, val_fraction)
    perm = torch.randperm(n, generator=generator)
    return perm[:n_train], perm[n_train:]


def loader_seed(generator: torch.Generator) -> int:
    """One 64-bit draw, as ``DataLoader.__iter__`` makes for its base seed and ``RandomSampler`` for its own."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """The sample order of one epoch of a shuffled ``DataLoader`` drawing from ``generator``.

    A DataLoader iterator first draws its base seed; its ``RandomSampler`` then draws a seed for a fresh
    generator and takes ``randperm`` from it. Consuming the same draws keeps the report's order exactly.
    """
    loader_seed(generator)  # the iterator's base seed (used only by worker processes)
    return torch.randperm(n, generator=torch.Generator().manual_seed(loader_seed(generator)))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1], as torchvision's ToTensor scales."""
    return images.unsqueeze(1).to(torch.float32).div_(255)
