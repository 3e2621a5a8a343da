"""MNIST-format data: a validating IDX reader, file discovery, checksums and the seeded split.

The bundled copy lives in ``mnistlab/_mnist`` (MNIST, by LeCun, Cortes and Burges, CC BY-SA 3.0) and is
checked against the SHA-256 of its decompressed files on every load. Named datasets of the MNIST family
(Fashion-MNIST, KMNIST, QMNIST, EMNIST), where their files come from and how they are verified live in
:mod:`mnistlab.core.datasets`; this module reads whatever files it is given.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from ..errors import DataError

BUNDLED_DIR = Path(__file__).parents[1] / "_mnist"  # mnistlab/_mnist: package data beside the subpackages

# split name -> (images file, labels file), official names without ".gz". These names are also the keys of
# every dataset's digests (whatever its own files are called), so a dataset's checksum does not depend on
# how its files are named or compressed.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
KEYS = tuple(stem for pair in FILES.values() for stem in pair)
DIGITS = tuple("0123456789")

# SHA-256 of the decompressed IDX files of MNIST (SHA256SUMS.raw)
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}

# IDX type codes (LeCun's IDX format): 0x08 unsigned bytes (images, labels), 0x0C big-endian 32-bit integers
# (QMNIST's extended label tables)
_IDX_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x0C: np.dtype(">i4")}
_MAX_IDX_BYTES = 1 << 30  # refuse absurd headers before allocating (EMNIST, the largest, is 0.64 GB)

# A data file: a path, or (archive, member) for a file inside a zip archive (EMNIST's gzip.zip)
Source = Path | tuple[Path, str]


def source_name(source: Source) -> str:
    """How a data file is named in messages: its path, or ``archive:member``."""
    return f"{source[0]}:{source[1]}" if isinstance(source, tuple) else str(source)


def _idx_size(head: bytes) -> int | None:
    """The total length an IDX file's header announces (None when the header is not IDX-like)."""
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 3:
        return None
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return None
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return 4 + 4 * ndim + math.prod(dims) * _IDX_DTYPES[head[2]].itemsize


def _read_stream(f: IO[bytes], name: str) -> bytes:
    """The bytes of an open binary stream, gunzipped when they start with the gzip magic number.

    Decompression stops one byte past the length the IDX header announces (bounded by ``_MAX_IDX_BYTES``),
    so a gzip bomb is refused after reading its header, not after inflating it.
    """
    head = f.read(2)
    if head != b"\x1f\x8b":
        raw = head + f.read(_MAX_IDX_BYTES + 16 + 1 - len(head))
        if len(raw) > _MAX_IDX_BYTES + 16:
            raise DataError(f"{name}: too large to be an MNIST-format file")
        return raw
    try:
        with gzip.GzipFile(fileobj=_Prefixed(head, f)) as gz:
            head = gz.read(16)
            want = _idx_size(head)
            if want is None:  # not IDX: let parse_idx name the problem from the header
                return head
            if want > _MAX_IDX_BYTES + 16:
                raise DataError(f"{name}: implausible IDX header (announces {want:,} bytes)")
            rest = gz.read(max(0, want - len(head)) + 1)  # one byte more reveals trailing data
            return head + rest
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt or truncated gzip data ({e})") from None


class _Prefixed(io.RawIOBase):
    """A read-only stream: ``prefix`` (bytes already read from ``f``), then the rest of ``f``."""

    def __init__(self, prefix: bytes, f: IO[bytes]) -> None:
        self.prefix, self.f = prefix, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n], self.prefix = self.prefix[:n], self.prefix[n:]
            return n
        chunk = self.f.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def read_source(source: Source) -> bytes:
    """A data file's bytes (gunzipped when compressed), from a path or a member of a zip archive."""
    name = source_name(source)
    try:
        if isinstance(source, tuple):
            archive, member = source
            try:
                with zipfile.ZipFile(archive) as z, z.open(member) as f:
                    return _read_stream(f, name)
            except KeyError:
                raise DataError(f"{archive} holds no {member}") from None
            except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
                raise DataError(f"{archive}: not a readable zip archive ({e})") from None
        with open(source, "rb") as f:
            return _read_stream(f, name)
    except OSError as e:
        raise DataError(f"cannot read {name}: {e.strerror or e}") from None


def parse_idx(buf: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an IDX buffer, checking magic number, dimensions and length.

    Unsigned-byte data (images, labels) comes back as uint8; 32-bit integer data (QMNIST's label tables)
    as big-endian int32. Raises :class:`DataError` naming what is wrong.
    """
    if len(buf) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(buf)} bytes)")
    zero, dtype_code, ndim = buf[0] << 8 | buf[1], buf[2], buf[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 3:
        raise DataError(
            f"{name}: bad IDX magic number 0x{buf[:4].hex()} (expected unsigned-byte or 32-bit integer data, 1-3 dims)"
        )
    dtype = _IDX_DTYPES[dtype_code]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(dims)
    if count == 0 or count * dtype.itemsize > _MAX_IDX_BYTES:
        raise DataError(f"{name}: implausible IDX dimensions {dims}")
    if len(buf) != header + count * dtype.itemsize:
        raise DataError(
            f"{name}: IDX length mismatch: dimensions {dims} need {header + count * dtype.itemsize} "
            f"bytes, file has {len(buf)}"
        )
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)


def name_variants(stem: str) -> list[str]:
    """The names a file of ``stem`` goes by: the official one, and Kaggle's with a dot before the IDX type
    (``train-images.idx3-ubyte``)."""
    head, sep, idx = stem.rpartition("-idx")
    return [stem] + ([f"{head}.idx{idx}"] if sep else [])


def _listing(directory: Path, limit: int = 12) -> str:
    """What a directory holds, for an error message: up to ``limit`` names (folders with a slash)."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    except OSError:
        return "it cannot be listed"
    if not names:
        return "it is empty"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "it holds " + ", ".join(names[:limit]) + more


def find_files(
    directory: str | Path, names: dict[str, str] | None = None, subdirs: tuple[str, ...] = ("MNIST",)
) -> dict[str, Path]:
    """Locate a dataset's four files in ``directory``, by key (see ``KEYS``).

    ``names`` maps each key to the dataset's own file stem (default: MNIST's official names). Each is
    found as ``STEM.gz`` or ``STEM``, with Kaggle's dotted name (``train-images.idx3-ubyte``), directly in
    ``directory``, in torchvision's ``NAME/raw/`` (``subdirs``), or in a folder of its own name (as Kaggle's
    archives unpack). A missing file is a :class:`DataError` that lists what the directory holds.
    """
    directory = Path(directory)
    names = names or {k: k for k in KEYS}
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    bases = [directory, *(directory / s / "raw" for s in subdirs)]
    found: dict[str, Path] = {}
    for key in KEYS:
        variants = name_variants(names[key])
        candidates = [b / (v + ext) for b in bases for v in variants for ext in (".gz", "")]
        candidates += [directory / v / v for v in variants]  # Kaggle: train-images-idx3-ubyte/train-images-idx3-ubyte
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            also = ", ".join(f"{s}/raw/" for s in subdirs)
            raise DataError(
                f"data directory {directory} has no {' or '.join(variants)} (.gz or not; also looked "
                f"in {also}); {_listing(directory)}"
            )
        found[key] = hit
    return found


@dataclass(frozen=True)
class Dataset:
    """The four arrays of an MNIST-format dataset, as tensors, with what it is and where it came from."""

    train_images: torch.Tensor  # (N_train, 28, 28) uint8
    train_labels: torch.Tensor  # (N_train,) int64 in [0, len(classes))
    test_images: torch.Tensor  # (N_test, 28, 28) uint8
    test_labels: torch.Tensor  # (N_test,) int64
    sha256: dict[str, str]  # decompressed-file SHA-256, by key (MNIST's official names, see FILES)
    source: str  # "bundled", or where the files are
    name: str = "mnist"  # the registry's name (mnistlab.core.datasets)
    classes: tuple[str, ...] = DIGITS  # class names, by label
    verified: bool = True  # checked against known checksums (False: a folder of MNIST-format files of unknown origin)

    @property
    def checksum(self) -> str:
        """One SHA-256 over the four files' digests: the dataset's identity in run records."""
        joined = "".join(f"{k}:{self.sha256[k]}\n" for k in sorted(self.sha256))
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def is_mnist(self) -> bool:
        return self.sha256 == MNIST_SHA256

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Layout:
    """How a dataset's files differ from MNIST's, and what its labels mean.

    ``transposed``: images are stored column by column (EMNIST), so each is transposed after reading.
    ``label_offset``: the first class's label (EMNIST letters: 1), subtracted after reading.
    ``label_column``: labels are a table (QMNIST: N x 8 int32) whose column holds the class.
    """

    classes: tuple[str, ...] = DIGITS
    transposed: bool = False
    label_offset: int = 0
    label_column: int | None = None


def _load_pair(
    files: dict[str, Source], images_key: str, labels_key: str, digests: dict[str, str], layout: Layout
) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = {}
    for key in (images_key, labels_key):
        buf = read_source(files[key])
        digests[key] = hashlib.sha256(buf).hexdigest()
        arrays[key] = parse_idx(buf, source_name(files[key]))
    images, labels = arrays[images_key], arrays[labels_key]
    img_name, lab_name = source_name(files[images_key]), source_name(files[labels_key])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{img_name}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if layout.label_column is not None:
        if labels.ndim != 2 or labels.shape[1] <= layout.label_column:
            raise DataError(
                f"{lab_name}: expected a label table with a column {layout.label_column}, got shape {labels.shape}"
            )
        labels = labels[:, layout.label_column]
    elif labels.ndim != 1:
        raise DataError(f"{lab_name}: expected a 1-D label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{img_name} has {len(images)} images but {lab_name} has {len(labels)} labels")
    labels = labels.astype(np.int64) - layout.label_offset
    k = len(layout.classes)
    if labels.min() < 0 or labels.max() >= k:
        lo, hi = layout.label_offset, layout.label_offset + k - 1
        bad = int(labels.min() if labels.min() < 0 else labels.max()) + layout.label_offset
        raise DataError(f"{lab_name}: labels must be {lo}-{hi}, found {bad}")
    if layout.transposed:
        images = images.transpose(0, 2, 1)  # stored column by column: (N, W, H) -> (N, H, W)
    return torch.from_numpy(np.array(images, order="C")), torch.from_numpy(labels)  # copies: the buffer is read-only


def read_dataset(
    files: dict[str, Source], layout: Layout = Layout(), *, source: str, name: str = "mnist", verified: bool = False
) -> Dataset:
    """Read the four files (``files``: key -> path or zip member, see ``KEYS``) as a :class:`Dataset`.

    Images must be (N, 28, 28) uint8; labels are converted by ``layout``; every file is checked (IDX
    header, length, counts, label range) and its decompressed content hashed. Raises :class:`DataError`.
    """
    digests: dict[str, str] = {}
    train = _load_pair(files, *FILES["train"], digests, layout)
    test = _load_pair(files, *FILES["test"], digests, layout)
    return Dataset(*train, *test, sha256=digests, source=source, name=name, classes=layout.classes, verified=verified)


def load(data_dir: str | Path | None = None) -> Dataset:
    """Load the bundled MNIST (verified by SHA-256) or the four MNIST-format files in ``data_dir`` (ten
    digit classes; named datasets and their checks: :func:`mnistlab.core.datasets.load`)."""
    bundled = data_dir is None or str(data_dir) == ""
    files = find_files(BUNDLED_DIR if bundled or data_dir is None else data_dir)
    ds = read_dataset(dict(files), source="bundled" if bundled else str(data_dir), verified=bundled)
    if bundled:
        for stem, want in MNIST_SHA256.items():
            if ds.sha256[stem] != want:
                raise DataError(
                    f"bundled {stem} fails its SHA-256 check (expected {want[:12]}..., "
                    f"got {ds.sha256[stem][:12]}...): reinstall mnistlab"
                )
    return ds


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


def run_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """A run's train/validation split of its ``n`` training images: the first draw of the run's data stream,
    the CPU generator seeded with ``train.seed`` (as the report's ``random_split`` under
    ``torch.manual_seed(seed)``). Returns (train indices, validation indices, the data stream after the
    draw): the trainer goes on drawing from it (initial weights, epoch orders); anything that rebuilds a
    run's validation split (``mnistlab evaluate --split val``) calls this and drops the stream."""
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = split_indices(n, val_fraction, generator)
    return train_idx, val_idx, generator


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
