"""The MNIST family by name: a registry of datasets, where their files come from, and how they are verified.

Each :class:`DatasetSpec` holds a dataset's classes (by label), its files, the publisher's checksums and
mirrors, its licence and citation, and its quirks (EMNIST stores images transposed; EMNIST letters' labels
start at 1; QMNIST's labels are a table whose first column is the class). :func:`load` finds the files:

1. ``mnist`` is bundled with mnistlab (offline, verified by SHA-256 of its decompressed content);
2. a folder given with ``data_dir`` (``--data-dir``), with official, Kaggle or torchvision file names;
3. an offline copy installed by the system (Debian's ``dataset-fashion-mnist`` under
   ``/usr/share/datasets/fashion-mnist``);
4. the user cache (``platformdirs``' cache directory, or ``$MNISTLAB_DATA``), fetched there once with pooch.

Verification: where the decompressed content's SHA-256 is known (MNIST, Fashion-MNIST), every load checks
it, whatever the files are called or however compressed. Elsewhere every load checks the publisher's own
artefacts (the ``.gz`` files, EMNIST's ``gzip.zip``) against the publisher's checksum, and reads the data
from them. A fetch tries each mirror in turn, downloads into a staging folder and moves a file into place
only once its checksum matched, so a truncated or corrupted download never reaches the cache; a file lock
makes a second process that fetches the same dataset wait and then reuse the files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from . import data
from .data import DIGITS, KEYS, Dataset, Layout, Source

if TYPE_CHECKING:
    from .config import Config

Log = Callable[[str], None]

CACHE_ENV = "MNISTLAB_DATA"  # overrides the cache directory
REQUEST_TIMEOUT_S = 60  # per HTTP request (connect and each read), pooch's downloader
LOCK_TIMEOUT_S = 3600  # how long a process waits for another that fetches the same dataset
LOCK_FILE = ".mnistlab-fetch.lock"
STAGING = ".partial"  # downloads land here until their checksum matched


class OtherDatasetError(DataError):
    """A folder that holds another registered dataset than the one asked for (``found``, not ``wanted``).
    The message's hint is the training commands' (``--dataset``); readers of a run say it their own way."""

    def __init__(self, where: str | Path, found: str, wanted: str) -> None:
        self.where, self.found, self.wanted = str(where), found, wanted
        super().__init__(f"{where} holds {found}, not {wanted} (pass --dataset {found})")


@dataclass(frozen=True)
class Artefact:
    """A file as its publisher serves it: its name (the end of its URLs) and the publisher's checksum."""

    name: str
    hash: str  # "md5:..." or "sha256:...", as pooch takes it
    size: int | None = None  # bytes, where known (for `mnistlab datasets`)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the family: what it is, its files and checksums, where to get them, and its quirks.

    ``files`` maps each key of :data:`mnistlab.core.data.KEYS` (MNIST's official names) to the dataset's own
    file stem. Where ``archive`` is set, those files are members ``archive_dir + stem + ".gz"`` of that
    artefact (EMNIST's zip); otherwise each is an artefact ``stem + ".gz"``.
    """

    name: str
    title: str
    classes: tuple[str, ...]
    files: dict[str, str]
    artefacts: tuple[Artefact, ...]
    mirrors: tuple[str, ...]  # base URLs; an artefact's URL is base + its name
    sizes: tuple[int, int]  # training and test images
    licence: str
    citation: str
    homepage: str
    layout: Layout = field(default_factory=Layout)  # quirks of the files (its classes are the spec's)
    content_sha256: dict[str, str] | None = None  # SHA-256 of the decompressed files, by key, where known
    archive: str | None = None
    archive_dir: str = ""
    offline_dirs: tuple[str, ...] = ()  # where the system may have installed the files
    torchvision_dir: str = "MNIST"  # torchvision's ROOT/NAME/raw/ layout
    plot_labels: tuple[str, ...] | None = None  # class names for figures where the full names need other fonts
    subsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # named slices [a, b) of the test set
    evaluates: tuple[str, ...] = ()  # datasets whose models this test set may evaluate (same classes)
    handwriting: bool = True  # handwritten strokes (the predict path's digit-likeness check applies)
    bundled: bool = False
    quirks: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def labels_for_plots(self) -> tuple[str, ...]:
        return self.plot_labels or self.classes

    def urls(self, artefact: Artefact) -> list[str]:
        return [base + artefact.name for base in self.mirrors]

    def download_bytes(self) -> int | None:
        sizes = [a.size for a in self.artefacts if a.size is not None]
        return sum(sizes) if len(sizes) == len(self.artefacts) else None  # one size unknown: the total is too


def _idx_files(prefix: str = "", labels: str = "labels-idx1-ubyte") -> dict[str, str]:
    return {
        "train-images-idx3-ubyte": f"{prefix}train-images-idx3-ubyte",
        "train-labels-idx1-ubyte": f"{prefix}train-{labels}",
        "t10k-images-idx3-ubyte": f"{prefix}{'test' if prefix else 't10k'}-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte": f"{prefix}{'test' if prefix else 't10k'}-{labels}",
    }


def _gz_artefacts(
    files: dict[str, str], hashes: dict[str, str], sizes: dict[str, int] | None = None
) -> tuple[Artefact, ...]:
    return tuple(Artefact(files[k] + ".gz", hashes[k], (sizes or {}).get(k)) for k in KEYS)


# ---------------------------------------------------------------- the registry

_MNIST_FILES = _idx_files()
_KMNIST_CLASSES = (
    "お (o)",
    "き (ki)",
    "す (su)",
    "つ (tsu)",
    "な (na)",
    "は (ha)",
    "ま (ma)",
    "や (ya)",
    "れ (re)",
    "を (wo)",
)
# EMNIST: the lowercase letters that bymerge and balanced merge into their uppercase class (shapes alike)
_EMNIST_MERGED = set("cijklmopsuvwxyz")
_EMNIST_BY_MERGE = (
    DIGITS
    + tuple(u if u.lower() not in _EMNIST_MERGED else f"{u}/{u.lower()}" for u in string.ascii_uppercase)
    + tuple(c for c in string.ascii_lowercase if c not in _EMNIST_MERGED)
)
EMNIST_SPLITS = {  # split -> (classes, label offset, training images, test images)
    "byclass": (DIGITS + tuple(string.ascii_uppercase) + tuple(string.ascii_lowercase), 0, 697_932, 116_323),
    "bymerge": (_EMNIST_BY_MERGE, 0, 697_932, 116_323),
    "balanced": (_EMNIST_BY_MERGE, 0, 112_800, 18_800),
    "letters": (tuple(f"{u}/{u.lower()}" for u in string.ascii_uppercase), 1, 124_800, 20_800),
    "digits": (DIGITS, 0, 240_000, 40_000),
    "mnist": (DIGITS, 0, 60_000, 10_000),
}
EMNIST_ZIP = Artefact("gzip.zip", "md5:58c8d27c78d21e728a6bc7b3cc06412e", 561_753_746)
_EMNIST_CITATION = (
    'G. Cohen, S. Afshar, J. Tapson and A. van Schaik, "EMNIST: an extension of MNIST to '
    'handwritten letters", arXiv:1702.05373, 2017'
)


def _emnist(split: str) -> DatasetSpec:
    classes, offset, n_train, n_test = EMNIST_SPLITS[split]
    quirks = "images stored transposed (read column by column)"
    if offset:
        quirks += f"; labels start at {offset}"
    if split in ("bymerge", "balanced"):
        quirks += "; 15 lowercase letters share their uppercase class (C/c ...)"
    return DatasetSpec(
        name=f"emnist-{split}",
        title=f"EMNIST {split}",
        classes=classes,
        files=_idx_files(f"emnist-{split}-"),
        artefacts=(EMNIST_ZIP,),
        archive=EMNIST_ZIP.name,
        archive_dir="gzip/",
        mirrors=("https://biometrics.nist.gov/cs_links/EMNIST/", "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/"),
        sizes=(n_train, n_test),
        layout=Layout(transposed=True, label_offset=offset),
        licence="NIST Special Database 19 terms (public data; cite the EMNIST paper)",
        citation=_EMNIST_CITATION,
        homepage="https://www.nist.gov/itl/products-and-services/emnist-dataset",
        torchvision_dir="EMNIST",
        quirks=quirks,
    )


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="mnist",
            title="MNIST",
            classes=DIGITS,
            files=_MNIST_FILES,
            bundled=True,
            artefacts=_gz_artefacts(
                _MNIST_FILES,
                {
                    "train-images-idx3-ubyte": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "train-labels-idx1-ubyte": "md5:d53e105ee54ea40749a09fcbcd1e9432",
                    "t10k-images-idx3-ubyte": "md5:9fb629c4189551a2d022fa330f9573f3",
                    "t10k-labels-idx1-ubyte": "md5:ec29112dd5afa0611ce80d1b7f02629c",
                },
            ),
            mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            sizes=(60_000, 10_000),
            content_sha256=data.MNIST_SHA256,
            licence="CC BY-SA 3.0",
            citation="Y. LeCun, C. Cortes and C. J. C. Burges, The MNIST database of handwritten digits, 1998",
            homepage="http://yann.lecun.com/exdb/mnist/",
        ),
        DatasetSpec(
            name="fashion-mnist",
            title="Fashion-MNIST",
            classes=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            files=_MNIST_FILES,
            artefacts=_gz_artefacts(
                _MNIST_FILES,
                {
                    "train-images-idx3-ubyte": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "train-labels-idx1-ubyte": "md5:25c81989df183df01b3e8a0aad5dffbe",
                    "t10k-images-idx3-ubyte": "md5:bef4ecab320f06d8554ea6380940ec79",
                    "t10k-labels-idx1-ubyte": "md5:bb300cfdad3c16e7a12a480ee83cd310",
                },
                {
                    "train-images-idx3-ubyte": 26_421_880,
                    "train-labels-idx1-ubyte": 29_515,
                    "t10k-images-idx3-ubyte": 4_422_102,
                    "t10k-labels-idx1-ubyte": 5_148,
                },
            ),
            mirrors=(
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            ),
            sizes=(60_000, 10_000),
            # measured on Debian's dataset-fashion-mnist, whose .gz files are recompressed (other MD5s, same content)
            content_sha256={
                "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
            offline_dirs=("/usr/share/datasets/fashion-mnist",),
            torchvision_dir="FashionMNIST",
            handwriting=False,
            licence="MIT (Zalando SE)",
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation='H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking '
            'machine learning algorithms", arXiv:1708.07747, 2017',
        ),
        DatasetSpec(
            name="kmnist",
            title="Kuzushiji-MNIST",
            classes=_KMNIST_CLASSES,
            plot_labels=tuple(c.split("(")[1].rstrip(")") for c in _KMNIST_CLASSES),
            files=_MNIST_FILES,
            artefacts=_gz_artefacts(
                _MNIST_FILES,
                {
                    "train-images-idx3-ubyte": "md5:bdb82020997e1d708af4cf47b453dcf7",
                    "train-labels-idx1-ubyte": "md5:e144d726b3acfaa3e44228e80efcd344",
                    "t10k-images-idx3-ubyte": "md5:5c965bf0a639b31b8f53240b1b52f4d7",
                    "t10k-labels-idx1-ubyte": "md5:7320c461ea6c1c855c0b718fb2a4b134",
                },
            ),
            mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            sizes=(60_000, 10_000),
            torchvision_dir="KMNIST",
            licence="CC BY-SA 4.0",
            homepage="https://github.com/rois-codh/kmnist",
            citation='T. Clanuwat, M. Bober-Irizar, A. Kitamoto, A. Lamb, K. Yamamoto and D. Ha, "Deep learning for '
            'classical Japanese literature", arXiv:1812.01718, 2018 ("KMNIST Dataset" created by CODH, '
            'adapted from "Kuzushiji Dataset" created by NIJL and others, doi:10.20676/00000341)',
        ),
        DatasetSpec(
            name="qmnist",
            title="QMNIST",
            classes=DIGITS,
            files=_idx_files("qmnist-", "labels-idx2-int"),
            artefacts=_gz_artefacts(
                _idx_files("qmnist-", "labels-idx2-int"),
                {
                    "train-images-idx3-ubyte": "md5:ed72d4157d28c017586c42bc6afe6370",
                    "train-labels-idx1-ubyte": "md5:0058f8dd561b90ffdd0f734c6a30e5e4",
                    "t10k-images-idx3-ubyte": "md5:1394631089c404de565df7b7aeaf9412",
                    "t10k-labels-idx1-ubyte": "md5:5b5b05890a5e13444e108efe57b788aa",
                },
            ),
            mirrors=("https://raw.githubusercontent.com/facebookresearch/qmnist/master/",),
            sizes=(60_000, 60_000),
            layout=Layout(label_column=0),
            torchvision_dir="QMNIST",
            subsets={"test10k": (0, 10_000), "test50k": (10_000, 60_000)},
            evaluates=("mnist",),
            licence="BSD-style (Facebook, Inc.)",
            homepage="https://github.com/facebookresearch/qmnist",
            citation='C. Yadav and L. Bottou, "Cold case: the lost MNIST digits", NeurIPS 2019, arXiv:1905.10498',
            quirks="labels are an N x 8 int32 table, column 0 the class; test: MNIST's 10,000 (test10k) then 50,000 "
            "lost MNIST test digits (test50k)",
        ),
        *(_emnist(split) for split in EMNIST_SPLITS),
    ]
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> DatasetSpec:
    """The registry's entry; an unknown name is a :class:`DataError` that lists the names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(names())})") from None


def check(d: Any) -> None:
    """``data.dataset`` must name a registry entry (``d`` is a DataConfig)."""
    from .config import check_choice

    check_choice("data.dataset", d.dataset, REGISTRY)


def classes_of(cfg: Config) -> tuple[str, ...]:
    """A config's class names, by label (the model's outputs)."""
    return get(cfg.data.dataset).classes


# ---------------------------------------------------------------- where files are


def cache_dir() -> Path:
    """Where fetched datasets live: ``$MNISTLAB_DATA``, else the user cache (``platformdirs``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mnistlab")) / "datasets"


def _cache_of(spec: DatasetSpec) -> Path:
    # the EMNIST splits share one archive: one folder for all of them
    return cache_dir() / ("emnist" if spec.archive == EMNIST_ZIP.name else spec.name)


def _file_hash(path: Path, algorithm_hash: str) -> str:
    import pooch

    alg = algorithm_hash.split(":", 1)[0] if ":" in algorithm_hash else "sha256"
    return f"{alg}:{pooch.file_hash(str(path), alg)}"


def _artefact_ok(path: Path, artefact: Artefact) -> bool:
    try:
        return path.is_file() and _file_hash(path, artefact.hash) == artefact.hash
    except OSError:
        return False


def _archive_sources(spec: DatasetSpec, archive: Path) -> dict[str, Source]:
    return {k: (archive, f"{spec.archive_dir}{spec.files[k]}.gz") for k in KEYS}


def _locate(spec: DatasetSpec, directory: Path) -> dict[str, Source]:
    """The dataset's files in ``directory`` (its archive's members where it has one). Raises
    :class:`DataError`, naming what the directory holds, when files are missing."""
    if spec.archive is not None and (directory / spec.archive).is_file():
        return _archive_sources(spec, directory / spec.archive)
    subdirs = tuple(dict.fromkeys(("MNIST", spec.torchvision_dir)))
    return dict(data.find_files(directory, spec.files, subdirs=subdirs))


def _published(spec: DatasetSpec, files: dict[str, Source]) -> bool:
    """Whether ``files`` are the publisher's own artefacts, with the publisher's checksums."""
    by_name = {a.name: a for a in spec.artefacts}
    paths = {f[0] if isinstance(f, tuple) else f for f in files.values()}
    return all(p.name in by_name and _artefact_ok(p, by_name[p.name]) for p in paths)


def _complete(spec: DatasetSpec, directory: Path) -> bool:
    """Whether ``directory`` seems to hold the dataset (files present; checked when loaded)."""
    try:
        _locate(spec, directory)
        return True
    except DataError:
        return False


def offline_dir(spec: DatasetSpec) -> Path | None:
    """The first system folder (a Debian package's) that holds the dataset, or None."""
    return next((Path(d) for d in spec.offline_dirs if _complete(spec, Path(d))), None)


def availability(spec: DatasetSpec) -> str:
    """Where the dataset would come from now: bundled, a system package, the cache, or a download."""
    if spec.bundled:
        return "bundled (offline)"
    where = offline_dir(spec)
    if where is not None:
        return f"installed at {where} (offline)"
    if _complete(spec, _cache_of(spec)):
        return f"cached at {_cache_of(spec)} (offline)"
    size = spec.download_bytes()
    return "download" + (f" ({_size(size)})" if size else "")


# ---------------------------------------------------------------- fetching


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.0f} kB"


def _reason(e: BaseException) -> str:
    """A download failure in a few words."""
    import requests

    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code}"
    if isinstance(e, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return "download cut short"
    if isinstance(e, requests.Timeout):
        return "timed out"
    if isinstance(e, requests.ConnectionError):
        return "cannot connect"
    if isinstance(e, ValueError) and "hash" in str(e).lower():
        return "checksum mismatch (a truncated or corrupted file)"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _fetch_artefact(spec: DatasetSpec, artefact: Artefact, directory: Path, show_progress: bool) -> list[str]:
    """Download ``artefact`` into ``directory`` from the first mirror that serves it with the right
    checksum; returns the failures as "URL: reason" (empty when it succeeded)."""
    import pooch
    import requests

    staging = directory / STAGING
    failures = []
    for url in spec.urls(artefact):
        shutil.rmtree(staging, ignore_errors=True)  # what a killed fetch left behind (we hold the lock)
        try:
            staging.mkdir(parents=True)
            downloader = pooch.HTTPDownloader(progressbar=show_progress, timeout=REQUEST_TIMEOUT_S)
            got = pooch.retrieve(
                url, known_hash=artefact.hash, fname=artefact.name, path=staging, downloader=downloader
            )
            os.replace(got, directory / artefact.name)  # in place only once its checksum matched
            return []
        except (requests.RequestException, ValueError, OSError) as e:
            failures.append(f"{url}: {_reason(e)}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return failures


def _lock(directory: Path, log: Log) -> Any:
    """An acquired cross-process lock on ``directory`` (filelock); says so when it has to wait."""
    import filelock

    lock = filelock.FileLock(str(directory / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log(f"waiting for another process that is fetching into {directory}")
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except filelock.Timeout:
            raise DataError(f"gave up waiting {LOCK_TIMEOUT_S} s for the fetch lock {directory / LOCK_FILE}") from None
    return lock


def fetch(spec: DatasetSpec, directory: Path | None = None, log: Log = print, show_progress: bool = False) -> Path:
    """Make sure ``directory`` (default: the cache) holds the dataset's artefacts with the publisher's
    checksums, downloading what is missing or damaged; returns the directory.

    Raises :class:`DataError` in one line: an unwritable directory, or a file that no mirror served intact
    (with every URL tried and where to put the files by hand).
    """
    directory = Path(directory) if directory is not None else _cache_of(spec)
    if spec.bundled:
        raise DataError(f"{spec.name} is bundled with mnistlab; there is nothing to fetch")
    if not spec.mirrors:
        raise DataError(f"{spec.name} has no download location; put its files in a folder and pass --data-dir")
    if all(_artefact_ok(directory / a.name, a) for a in spec.artefacts):
        return directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = _lock(directory, log)
    except OSError as e:
        raise DataError(
            f"cannot write the data cache {directory}: {e.strerror or e} (set {CACHE_ENV} to a "
            f"writable folder, or pass --data-dir)"
        ) from None
    import pooch

    pooch.get_logger().setLevel("WARNING")  # our own one line per file instead of pooch's
    try:
        for artefact in spec.artefacts:
            target = directory / artefact.name
            if _artefact_ok(target, artefact):  # another process fetched it while we waited
                continue
            log(f"fetching {spec.name}: {artefact.name}" + (f" ({_size(artefact.size)})" if artefact.size else ""))
            failures = _fetch_artefact(spec, artefact, directory, show_progress)
            if failures:
                by_hand = " ".join(u for a in spec.artefacts for u in spec.urls(a)[:1])
                raise DataError(
                    f"cannot fetch {spec.name}'s {artefact.name}: "
                    + "; ".join(failures)
                    + f". Without a network, download {by_hand} by hand and put the files in "
                    f"{directory} (or in a folder passed with --data-dir)"
                )
    finally:
        lock.release()
    return directory


# ---------------------------------------------------------------- loading and verification


def identify(ds: Dataset) -> str | None:
    """The registry name whose known content checksums ``ds`` has, or None."""
    return next((s.name for s in REGISTRY.values() if s.content_sha256 and ds.sha256 == s.content_sha256), None)


def _identify_files(files: dict[str, Source]) -> str | None:
    """The registry name whose publisher artefacts these files are (by name and checksum), or None."""
    return next(
        (s.name for s in REGISTRY.values() if s.archive is None and s.files == _MNIST_FILES and _published(s, files)),
        None,
    )


def _verify(spec: DatasetSpec, ds: Dataset, published: bool, where: str) -> None:
    """Refuse data that is not ``spec``'s: content checksums where known, else the publisher's artefacts."""
    if spec.content_sha256 is not None:
        if ds.sha256 == spec.content_sha256:
            return
        other = identify(ds)
        if other is not None:
            raise OtherDatasetError(where, other, spec.name)
        key = next(k for k in KEYS if ds.sha256[k] != spec.content_sha256[k])
        raise DataError(
            f"{where}: {key} fails {spec.name}'s SHA-256 check (expected "
            f"{spec.content_sha256[key][:12]}..., got {ds.sha256[key][:12]}...): another dataset or a "
            f"damaged copy"
        )
    if not published:
        other = identify(ds)
        if other is not None:
            raise OtherDatasetError(where, other, spec.name)
        wanted = ", ".join(a.name for a in spec.artefacts)
        raise DataError(
            f"cannot verify {where} as {spec.name}: mnistlab checks {spec.name} by its publisher's "
            f"checksums, so the folder must hold the published files ({wanted}) as downloaded"
        )


def _read(spec: DatasetSpec, files: dict[str, Source], where: str) -> Dataset:
    layout = dataclasses.replace(spec.layout, classes=spec.classes)
    return data.read_dataset(files, layout, source=where, name=spec.name, verified=True)


def load(
    name: str = "mnist", data_dir: str | Path | None = None, *, log: Log = print, show_progress: bool = False
) -> Dataset:
    """The dataset ``name``, verified, from ``data_dir`` when given, else from where it is (bundled, a
    system package, the cache), fetching it into the cache the first time.

    ``mnist`` with a ``data_dir`` reads any folder of MNIST-format files, as mnistlab always has: it is
    verified MNIST when its content is MNIST's, refused when it is another registered dataset, and taken as
    ten-digit data of unknown origin (``verified=False``) otherwise. Every other name must find its own data.
    Raises :class:`DataError` in one line.
    """
    spec = get(name)
    if spec.bundled and not data_dir:
        return data.load()
    if data_dir:
        directory = Path(data_dir)
        if spec.bundled:  # a folder of MNIST-format files
            ds = data.load(directory)
            other = identify(ds) or _identify_files(dict(data.find_files(directory)))
            if other is not None and other != spec.name:
                raise OtherDatasetError(directory, other, spec.name)
            return dataclasses.replace(ds, verified=ds.sha256 == spec.content_sha256)
        if not directory.is_dir() or not _complete(spec, directory):
            if directory.is_dir() and any(directory.iterdir()):
                _locate(spec, directory)  # a folder of other files: name what is missing and what is there
            fetch(spec, directory, log, show_progress)  # an empty or new folder: fetch into it
        return _load_verified(spec, directory, str(directory))
    where = offline_dir(spec)
    if where is not None:
        return _load_verified(spec, where, str(where))
    # fetch checks every artefact's checksum and fetches again what is missing or damaged
    directory = fetch(spec, log=log, show_progress=show_progress)
    return _load_verified(spec, directory, str(directory), f"the cache {directory}", published=True)


def _load_verified(
    spec: DatasetSpec, directory: Path, source: str, where: str | None = None, published: bool | None = None
) -> Dataset:
    files = _locate(spec, directory)
    if published is None:  # content checks need no artefacts
        published = spec.content_sha256 is None and _published(spec, files)
    ds = _read(spec, files, source)
    _verify(spec, ds, published, where or source)
    return ds


def load_for(cfg: Config, log: Log = print, show_progress: bool = False) -> Dataset:
    """The data a config names (``data.dataset``, ``data.dir``), as :func:`load` returns it (its errors too).
    Not to be confused with :func:`mnistlab.core.checks.load_config`, which reads a config file."""
    return load(cfg.data.dataset, cfg.data.dir or None, log=log, show_progress=show_progress)


def pin_dir(cfg: Config) -> Config:
    """``cfg`` with ``data.dir`` absolute, so that a run's record points at its data from anywhere."""
    if not cfg.data.dir:
        return cfg
    absolute = os.path.abspath(Path(cfg.data.dir).expanduser())  # symlinks kept: the path the user gave
    # the same folder, spelled absolute: nothing to check again
    return (
        cfg if absolute == cfg.data.dir else dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=absolute))
    )


def existing_dir(path: str | Path, what: str = "--data-dir") -> Path:
    """``path``, which must be an existing directory: commands that read data (evaluate, ensemble, export,
    final) never create a folder or fetch into one; only training fetches into a new folder. Raises
    :class:`DataError` in one line ("... does not exist", "... is not a directory")."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a directory")
    return path


def load_for_run(run_dir: str | Path, cfg: Config, data_dir: str | Path | None = None, log: Log = print) -> Dataset:
    """The data a run trained on, checked against the SHA-256 in its ``run.json``.

    ``data_dir`` replaces the recorded ``data.dir`` (the data moved). Either folder must exist: reading a
    run never creates one nor fetches into it (:func:`existing_dir`). Data that differs from the run's is a
    :class:`DataError` naming both checksums; another registered dataset is named, with the run's own.
    """
    from .runs import RunDir

    run = RunDir(run_dir)
    if data_dir:
        existing_dir(data_dir)
    elif cfg.data.dir:
        try:
            existing_dir(cfg.data.dir, "the run's data folder")
        except DataError as e:
            raise DataError(f"{e} (the run's data moved? pass --data-dir)") from None
    try:
        ds = load(cfg.data.dataset, data_dir or cfg.data.dir or None, log=log)
    except OtherDatasetError as e:  # readers of a run have no --dataset: the run decides the dataset
        raise DataError(
            f"{e.where} holds {e.found}, not the run's data: {run.path} was trained on {e.wanted} "
            f"(pass --data-dir with its data)"
        ) from None
    info = run.read_info() if run.file("run.json").is_file() else {}
    recorded = (info.get("environment") or {}).get("data_sha256")
    if recorded and ds.checksum != recorded:
        raise DataError(
            f"{run.path} was trained on other data (SHA-256 {recorded[:12]}...) than {ds.source} holds "
            f"({ds.checksum[:12]}...); pass --data-dir with the run's data"
        )
    return ds
