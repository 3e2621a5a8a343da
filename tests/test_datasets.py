"""The MNIST family by name: the registry, fetching (mirrors, checksums, the lock), the quirks of EMNIST and
QMNIST, models with the dataset's number of classes, and runs that pin their data.

No internet: a local HTTP server started here serves small generated IDX files — a good mirror, one that
answers 503, one that cuts the body short, one that serves corrupted bytes — and the real Fashion-MNIST comes
from Debian's ``dataset-fashion-mnist`` package (installed by ``.ci/run``)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import idx_bytes, write_mnist_dir
from mnistlab.cli import main
from mnistlab.core import checkpoint, data, datasets

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
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
)


# ---------------------------------------------------------------- a local HTTP server with mirrors of every kind


class Mirrors:
    """Serves ``files`` (name -> bytes) under several prefixes, each a kind of mirror:
    /good/ serves them; /busy/ answers 503; /forbidden/ 403; /trunc/ announces the full length and sends half;
    /missing/ 404; /bad/ sends the right length of corrupted bytes; /gate/ serves them once ``gate`` is set.
    Counts requests by path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.gate = threading.Event()
        self.gate_reached = threading.Event()
        mirrors = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                _, kind, name = self.path.split("/", 2)
                mirrors.hits[self.path] = mirrors.hits.get(self.path, 0) + 1
                body = mirrors.files.get(name)
                if kind in ("busy", "forbidden", "missing") or body is None:
                    code = {"busy": 503, "forbidden": 403}.get(kind, 404)
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "gate":
                    mirrors.gate_reached.set()
                    mirrors.gate.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "trunc":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if kind == "bad":
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def base(self, kind: str) -> str:
        return f"{self.url}/{kind}/"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirrors():
    m = Mirrors()
    yield m
    m.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv(datasets.CACHE_ENV, str(d))
    return d


def _md5(raw: bytes) -> str:
    return "md5:" + hashlib.md5(raw).hexdigest()


def toy_arrays(n_train: int = 60, n_test: int = 20, k: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Small labelled images whose class shows (a bright square at a class-dependent place), by key."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % k
        images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c) % 36, 6)
            images[i, 2 + 4 * r : 5 + 4 * r, 2 + 4 * col : 5 + 4 * col] = 255
        out[f"{split}-images-idx3-ubyte"], out[f"{split}-labels-idx1-ubyte"] = images, labels.astype(np.uint8)
    return out


def toy_spec(mirrors: Mirrors, kinds: list[str], name: str = "toy") -> datasets.DatasetSpec:
    """A dataset of small generated gzip'd IDX files, served by ``mirrors`` under each of ``kinds``."""
    arrays = toy_arrays()
    files = {key: key for key in data.KEYS}
    artefacts = []
    for key in data.KEYS:
        raw = gzip.compress(idx_bytes(arrays[key]), mtime=0)
        mirrors.files[key + ".gz"] = raw
        artefacts.append(datasets.Artefact(key + ".gz", _md5(raw), len(raw)))
    return datasets.DatasetSpec(
        name=name,
        title="toy",
        classes=data.DIGITS,
        files=files,
        artefacts=tuple(artefacts),
        mirrors=tuple(mirrors.base(k) for k in kinds),
        sizes=(60, 20),
        licence="CC0",
        citation="generated",
        homepage="-",
    )


def _cache_contents(directory: Path) -> list[str]:
    """The files a cache folder holds, but for the (empty) lock file that may stay behind."""
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != datasets.LOCK_FILE
    )


# ---------------------------------------------------------------- fetching


def test_fetch_skips_failing_mirrors_and_caches_only_the_good_files(mirrors, cache, monkeypatch):
    spec = toy_spec(mirrors, ["busy", "forbidden", "trunc", "bad", "good"])
    monkeypatch.setitem(datasets.REGISTRY, "toy", spec)
    lines: list[str] = []
    ds = datasets.load("toy", log=lines.append)
    assert ds.name == "toy" and ds.verified and ds.train_images.shape == (60, 28, 28)
    assert torch.equal(ds.train_labels, torch.arange(60) % 10)
    for key in data.KEYS:  # each file was tried on every mirror in order and taken from the good one
        assert [mirrors.hits.get(f"/{k}/{key}.gz", 0) for k in ("busy", "forbidden", "trunc", "bad", "good")] == [1] * 5
    assert _cache_contents(cache / "toy") == sorted(f"{k}.gz" for k in data.KEYS)  # nothing partial, no staging
    assert len(lines) == 4 and all(line.startswith("fetching toy: ") for line in lines)
    # a second load reads the cache: no request at all
    before = dict(mirrors.hits)
    assert datasets.load("toy", log=lines.append).checksum == ds.checksum and mirrors.hits == before
    # a cached file damaged later is fetched again, nothing else
    damaged = cache / "toy" / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-3])
    assert datasets.load("toy", log=lines.append).checksum == ds.checksum
    assert (
        mirrors.hits["/good/t10k-labels-idx1-ubyte.gz"] == 2 and mirrors.hits["/good/train-images-idx3-ubyte.gz"] == 1
    )


@pytest.mark.parametrize(
    "kinds, reason",
    [
        (["busy"], "HTTP 503"),
        (["forbidden"], "HTTP 403"),
        (["missing"], "HTTP 404"),
        (["bad"], "checksum mismatch"),
        (["trunc"], "cut short|checksum mismatch"),
    ],
)
def test_a_bad_mirror_is_one_line_and_leaves_nothing_in_the_cache(mirrors, cache, monkeypatch, capsys, kinds, reason):
    spec = toy_spec(mirrors, kinds)
    monkeypatch.setitem(datasets.REGISTRY, "toy", spec)
    assert main(["train", "--dataset", "toy", "--epochs", "1", "--quiet", "--out", str(cache.parent / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot fetch toy's train-images-idx3-ubyte.gz" in err and f"{mirrors.base(kinds[0])}train-images" in err
    import re

    assert re.search(reason, err)
    assert "download" in err and "by hand" in err and str(cache / "toy") in err
    assert _cache_contents(cache / "toy") == []  # no partial file, no staging folder
    assert not (cache.parent / "run").exists()


def test_without_a_network_the_error_names_the_urls_and_where_to_put_the_files(cache, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    spec = dataclasses.replace(datasets.REGISTRY["kmnist"], mirrors=(dead,))
    monkeypatch.setitem(datasets.REGISTRY, "kmnist", spec)
    assert main(["datasets", "--fetch", "kmnist"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect" in err
    for a in spec.artefacts:  # every file's URL, to fetch by hand
        assert dead + a.name in err
    assert f"put the files in {cache / 'kmnist'}" in err


def test_an_unwritable_cache_is_one_line(tmp_path, monkeypatch, capsys, mirrors):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(datasets.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setitem(datasets.REGISTRY, "toy", toy_spec(mirrors, ["good"]))
    assert main(["datasets", "--fetch", "toy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the data cache" in err and datasets.CACHE_ENV in err
    assert mirrors.hits == {}


_FETCH_SCRIPT = textwrap.dedent("""
    import json, sys
    from mnistlab.core import data, datasets
    spec = json.loads(sys.argv[1])
    datasets.REGISTRY["toy"] = datasets.DatasetSpec(
        name="toy", title="toy", classes=data.DIGITS, files={k: k for k in data.KEYS},
        artefacts=tuple(datasets.Artefact(*a) for a in spec["artefacts"]), mirrors=tuple(spec["mirrors"]),
        sizes=(60, 20), licence="CC0", citation="generated", homepage="-")
    ds = datasets.load("toy", log=lambda m: print(m, flush=True))
    print("checksum", ds.checksum, flush=True)
""")


def test_a_second_process_waits_for_the_first_and_reuses_its_download(mirrors, cache, tmp_path):
    spec = toy_spec(mirrors, ["gate"])
    arg = json.dumps({"artefacts": [[a.name, a.hash, a.size] for a in spec.artefacts], "mirrors": list(spec.mirrors)})
    env = {**os.environ, datasets.CACHE_ENV: str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", _FETCH_SCRIPT, arg]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = None
    try:
        assert mirrors.gate_reached.wait(60), "the first process never started its download"
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = second.stdout.readline()  # the first holds the lock, in the middle of a download
        assert line.startswith("waiting for another process that is fetching into"), line
        mirrors.gate.set()
        out1, _ = first.communicate(timeout=120)
        out2, _ = second.communicate(timeout=120)
    finally:
        mirrors.gate.set()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert out1.count("fetching toy: ") == 4 and "fetching" not in out2  # the second downloaded nothing
    assert [mirrors.hits[f"/gate/{k}.gz"] for k in data.KEYS] == [1, 1, 1, 1]
    sums = {line.split()[1] for line in (out1 + out2).splitlines() if line.startswith("checksum")}
    assert len(sums) == 1
    assert _cache_contents(cache / "toy") == sorted(f"{k}.gz" for k in data.KEYS)


# ---------------------------------------------------------------- the registry and the bundled MNIST


def test_unknown_dataset_names_are_refused_with_the_list(capsys, tmp_path):
    assert main(["train", "--dataset", "fasion-mnist", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'fasion-mnist' is unknown" in err
    assert all(n in err for n in ("fashion-mnist", "kmnist", "qmnist", "emnist-letters", "mnist"))
    assert main(["evaluate", str(tmp_path), "--dataset", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_registry_entries_are_complete():
    for spec in datasets.REGISTRY.values():
        assert spec.n_classes == len(set(spec.classes)) >= 10, spec.name
        assert set(spec.files) == set(data.KEYS) and spec.artefacts and spec.mirrors
        assert all(a.hash.startswith(("md5:", "sha256:")) for a in spec.artefacts)
        assert spec.licence and spec.citation and spec.homepage.startswith("http")
    assert datasets.get("fashion-mnist").classes == FASHION_CLASSES
    assert datasets.get("kmnist").classes[0] == "お (o)" and datasets.get("kmnist").labels_for_plots[9] == "wo"
    assert (
        datasets.get("emnist-letters").n_classes,
        datasets.get("emnist-balanced").n_classes,
        datasets.get("emnist-byclass").n_classes,
    ) == (26, 47, 62)
    # balanced: digits, 26 uppercase (15 of them merged with their lowercase), 11 lowercase of their own
    balanced = datasets.get("emnist-balanced").classes
    assert (
        balanced[:10] == data.DIGITS
        and balanced[10] == "A"
        and balanced[12] == "C/c"
        and balanced[36:] == tuple("abdefghnqrt")
    )


def test_the_bundled_mnist_loads_offline_without_the_fetcher():
    code = (
        "import sys; from mnistlab.core import datasets; ds = datasets.load('mnist'); "
        "print(ds.checksum, ds.verified, ds.source, 'pooch' in sys.modules, 'requests' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    checksum, verified, source, pooch_loaded, requests_loaded = out.stdout.split()
    assert checksum == data.load().checksum and verified == "True" and source == "bundled"
    assert pooch_loaded == requests_loaded == "False"


def test_datasets_command_lists_the_family(capsys, cache):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "fashion-mnist", "kmnist", "qmnist", "emnist-balanced", "emnist-letters", "emnist-digits"):
        assert f"| {name} |" in out
    assert "| mnist | 10 | 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 | 60,000 / 10,000 | CC BY-SA 3.0 | bundled (offline) |" in out
    assert (
        "| fashion-mnist | 10 | T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot |"
        in out
    )
    assert "| emnist-letters | 26 | A/a, B/b, C/c, D/d, E/e, F/f, G/g, H/h, I/i, J/j, ... |" in out
    assert "CC BY-SA 4.0" in out and "MIT (Zalando SE)" in out and str(cache) in out
    if FASHION_DIR.is_dir():
        assert f"installed at {FASHION_DIR} (offline)" in out
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["emnist-letters"]["classes"] == 26 and "transposed" in rows["emnist-letters"]["quirks"]
    assert rows["fashion-mnist"]["class_names"] == list(FASHION_CLASSES)  # issue 21: the classes by name
    assert rows["kmnist"]["class_names"][0] == "お (o)" and len(rows["emnist-balanced"]["class_names"]) == 47
    assert "1812.01718" in rows["kmnist"]["citation"]


# ---------------------------------------------------------------- folders: names, identity, pinned runs


def test_kaggle_file_names_and_folders_are_found(tmp_path, mnist):
    flat = write_mnist_dir(tmp_path / "flat", mnist, 50, 20, compress=False)
    kaggle, nested = tmp_path / "kaggle", tmp_path / "nested"
    kaggle.mkdir()
    nested.mkdir()
    for key in data.KEYS:
        dotted = data.name_variants(key)[1]  # train-images.idx3-ubyte
        shutil.copy(flat / key, kaggle / dotted)
        (nested / key).mkdir()  # Kaggle's archive unpacks each file into a folder of its name
        shutil.copy(flat / key, nested / key / key)
    for d in (kaggle, nested):
        ds = datasets.load("mnist", d)
        assert torch.equal(ds.test_images, mnist.test_images[:20]) and not ds.verified


def test_a_missing_file_error_says_what_the_folder_holds(tmp_path, mnist, capsys):
    write_mnist_dir(tmp_path, mnist, 50, 20)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "t10k-labels.gz")
    assert main(["train", "--data-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "has no t10k-labels-idx1-ubyte or t10k-labels.idx1-ubyte" in err and "t10k-labels.gz" in err


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_a_folder_of_another_dataset_than_the_config_names_is_refused(capsys, tmp_path, small_mnist_dir):
    assert main(["train", "--data-dir", str(FASHION_DIR), "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds fashion-mnist, not mnist (pass --dataset fashion-mnist)" in err
    assert (
        main(
            [
                "train",
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                str(small_mnist_dir),
                "--quiet",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "fails fashion-mnist's SHA-256 check" in capsys.readouterr().err
    assert (
        main(["train", "--dataset", "kmnist", "--data-dir", str(FASHION_DIR), "--quiet", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "holds fashion-mnist, not kmnist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_pins_its_data(tmp_path, mnist, monkeypatch, capsys):
    """A relative --data-dir is stored absolute; evaluate/final/ensemble/export refuse other data in one
    line and take --data-dir when the data moved."""
    work = tmp_path / "work"
    work.mkdir()
    write_mnist_dir(work / "data", mnist, 600, 200)
    monkeypatch.chdir(work)
    assert main(["train", "--data-dir", "data", "--hidden", "32", "--epochs", "2", "--quiet", "--out", "run"]) == 0
    run = work / "run"
    assert (work / "run" / "config.toml").read_text().count(f'dir = "{work / "data"}"') == 1
    monkeypatch.chdir(tmp_path)  # elsewhere: the run still finds its data
    assert main(["evaluate", str(run), "--out", str(tmp_path / "ev")]) == 0
    acc = json.loads((tmp_path / "ev" / "report_mlp" / "summary.json").read_text())["accuracy"]
    capsys.readouterr()

    shutil.move(work / "data", tmp_path / "moved")  # the data moved
    write_mnist_dir(work / "data", mnist, 600, 201)  # ... and other data took its place
    commands = [
        ["evaluate", str(run), "--out", str(tmp_path / "ev2")],
        ["final", str(run), "--out", str(tmp_path / "f")],
        ["ensemble", str(run), str(run)],
        ["export", str(run), "--onnx", str(tmp_path / "m.onnx")],
    ]
    for cmd in commands:
        assert main([*cmd, "--quiet"] if cmd[0] == "final" else cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "was trained on other data" in err and "--data-dir" in err, (cmd, err)
    assert not (tmp_path / "f").exists() and not (tmp_path / "ev2" / "report_mlp").exists()
    shutil.rmtree(work / "data")
    assert main(commands[0]) == 2
    assert "the run's data moved? pass --data-dir" in capsys.readouterr().err

    moved = ["--data-dir", str(tmp_path / "moved")]
    assert main([*commands[0], *moved]) == 0
    assert json.loads((tmp_path / "ev2" / "report_mlp" / "summary.json").read_text())["accuracy"] == acc
    assert main([*commands[2], *moved]) == 0
    assert main([*commands[1], "--quiet", *moved]) == 0
    assert f'dir = "{tmp_path / "moved"}"' in (tmp_path / "f" / "config.toml").read_text()
    assert main([*commands[3], *moved]) == 0


# ---------------------------------------------------------------- EMNIST and QMNIST quirks on generated files


def _emnist_zip(splits: dict[str, tuple[dict[str, np.ndarray], int]]) -> bytes:
    """gzip.zip as NIST publishes it: gzip/emnist-SPLIT-{train,test}-{images-idx3,labels-idx1}-ubyte.gz, the
    images stored transposed and labels from ``offset`` on (the documented layout)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for split, (arrays, offset) in splits.items():
            for part, (images_key, labels_key) in (("train", data.FILES["train"]), ("test", data.FILES["test"])):
                stored = arrays[images_key].transpose(0, 2, 1)  # column by column
                z.writestr(
                    f"gzip/emnist-{split}-{part}-images-idx3-ubyte.gz", gzip.compress(idx_bytes(stored), mtime=0)
                )
                z.writestr(
                    f"gzip/emnist-{split}-{part}-labels-idx1-ubyte.gz",
                    gzip.compress(idx_bytes(arrays[labels_key] + offset), mtime=0),
                )
    return buf.getvalue()


@pytest.fixture
def emnist(mirrors, cache, monkeypatch) -> dict[str, dict[str, np.ndarray]]:
    """EMNIST letters (26 classes, labels from 1) and balanced (47) as generated files in a served gzip.zip."""
    arrays = {"letters": toy_arrays(104, 52, k=26, seed=1), "balanced": toy_arrays(141, 94, k=47, seed=2)}
    raw = _emnist_zip({"letters": (arrays["letters"], 1), "balanced": (arrays["balanced"], 0)})
    mirrors.files["gzip.zip"] = raw
    for split, a in arrays.items():
        name = f"emnist-{split}"
        spec = dataclasses.replace(
            datasets.REGISTRY[name],
            artefacts=(datasets.Artefact("gzip.zip", _md5(raw), len(raw)),),
            mirrors=(mirrors.base("busy"), mirrors.base("good")),
            sizes=(len(a["train-labels-idx1-ubyte"]), len(a["t10k-labels-idx1-ubyte"])),
        )
        monkeypatch.setitem(datasets.REGISTRY, name, spec)
    return arrays


def test_emnist_images_are_transposed_and_letters_labels_start_at_zero(emnist, mirrors, cache):
    letters = datasets.load("emnist-letters", log=lambda m: None)
    want = emnist["letters"]
    assert torch.equal(letters.train_images, torch.from_numpy(want["train-images-idx3-ubyte"]))  # as drawn
    assert torch.equal(letters.test_labels, torch.from_numpy(want["t10k-labels-idx1-ubyte"]).long())  # 1-26 -> 0-25
    assert letters.classes[0] == "A/a" and letters.n_classes == 26
    balanced = datasets.load("emnist-balanced", log=lambda m: None)
    assert torch.equal(balanced.test_images, torch.from_numpy(emnist["balanced"]["t10k-images-idx3-ubyte"]))
    assert int(balanced.train_labels.max()) == 46
    assert mirrors.hits["/good/gzip.zip"] == 1  # one archive for every split
    assert _cache_contents(cache / "emnist") == ["gzip.zip"]


@pytest.mark.parametrize("split, k", [("letters", 26), ("balanced", 47)])
def test_emnist_models_train_export_and_predict_with_their_classes(emnist, tmp_path, capsys, split, k):
    import onnx

    run = tmp_path / split
    assert (
        main(
            [
                "train",
                "--dataset",
                f"emnist-{split}",
                "--hidden",
                "32",
                "--epochs",
                "3",
                "--batch-size",
                "10",
                "--lr",
                "0.05",
                "--quiet",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["dataset"] == f"emnist-{split}" and len(info["data"]["classes"]) == k
    onnx_path = tmp_path / f"{split}.onnx"
    assert main(["export", str(run), "--onnx", str(onnx_path)]) == 0
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dataset"] == f"emnist-{split}" and json.loads(meta["classes"]) == list(
        datasets.get(f"emnist-{split}").classes
    )
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == k
    image = emnist[split]["t10k-images-idx3-ubyte"][0]
    Image.fromarray(image).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--json", str(tmp_path / "x.png")]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    classes = datasets.get(f"emnist-{split}").classes
    assert len(rec["probabilities"]) == k and rec["label"] == classes[rec["prediction"]]
    assert main(["predict", "--model", str(run), str(tmp_path / "x.png")]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1].startswith(rec["label"] + " (")


def test_qmnist_labels_are_the_first_column_and_its_extra_test_digits_evaluate_mnist_runs(
    trained_run, mnist, tmp_path, monkeypatch, capsys
):
    """QMNIST's files as published (labels: an N x 8 int32 table) in a --data-dir; an MNIST run is evaluated on
    its test10k / test50k subsets, a Fashion-MNIST dataset is refused for it."""
    folder = tmp_path / "qmnist"
    folder.mkdir()
    spec = datasets.get("qmnist")
    n_train, n_test = 40, 60
    rng = np.random.default_rng(0)
    table = {
        "train": rng.integers(0, 3000, (n_train, 8)).astype(">i4"),
        "t10k": rng.integers(0, 3000, (n_test, 8)).astype(">i4"),
    }
    table["train"][:, 0] = mnist.train_labels[:n_train].numpy()
    table["t10k"][:, 0] = mnist.test_labels[:n_test].numpy()
    images = {"train": mnist.train_images[:n_train].numpy(), "t10k": mnist.test_images[:n_test].numpy()}
    hashes = {}
    for split in ("train", "t10k"):
        for key, raw in (
            (f"{split}-images-idx3-ubyte", idx_bytes(images[split])),
            (f"{split}-labels-idx1-ubyte", _idx_int(table[split])),
        ):
            gz = gzip.compress(raw, mtime=0)
            (folder / (spec.files[key] + ".gz")).write_bytes(gz)
            hashes[spec.files[key] + ".gz"] = _md5(gz)
    patched = dataclasses.replace(
        spec,
        artefacts=tuple(dataclasses.replace(a, hash=hashes[a.name]) for a in spec.artefacts),
        sizes=(n_train, n_test),
        subsets={"test10k": (0, 10), "test50k": (10, n_test)},
    )
    monkeypatch.setitem(datasets.REGISTRY, "qmnist", patched)
    ds = datasets.load("qmnist", folder)
    assert torch.equal(ds.train_labels, mnist.train_labels[:n_train]) and ds.test_images.shape == (n_test, 28, 28)

    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                str(trained_run),
                "--dataset",
                "qmnist",
                "--data-dir",
                str(folder),
                "--split",
                "test50k",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "report_mlp" / "summary.json").read_text())
    model, _ = checkpoint.load_best_model(trained_run)
    with torch.inference_mode():
        pred = model(data.to_float(mnist.test_images[10:n_test])).argmax(1)
    assert summary["dataset"] == "qmnist" and summary["split"] == "test50k"
    assert summary["accuracy"] == round(100 * float((pred == mnist.test_labels[10:n_test]).float().mean()), 3)
    if FASHION_DIR.is_dir():
        assert main(["evaluate", str(trained_run), "--dataset", "fashion-mnist", "--out", str(out)]) == 2
        assert "cannot be evaluated on fashion-mnist" in capsys.readouterr().err
    assert main(["evaluate", str(trained_run), "--split", "test50k", "--out", str(out)]) == 2
    assert "--split must be one of test, val for mnist" in capsys.readouterr().err


def _idx_int(table: np.ndarray) -> bytes:
    """An IDX file of big-endian int32 (type 0x0C), as QMNIST's label tables."""
    header = bytes([0, 0, 0x0C, table.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in table.shape)
    return header + np.ascontiguousarray(table, dtype=">i4").tobytes()


# ---------------------------------------------------------------- the real Fashion-MNIST (Debian's package)


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory) -> Path:
    """The report's MLP trained for 2 epochs through --dataset fashion-mnist (Debian's files)."""
    assert FASHION_DIR.is_dir(), (
        "Debian's dataset-fashion-mnist is needed: apt-get install dataset-fashion-mnist (.ci/run does)"
    )
    run = tmp_path_factory.mktemp("fashion") / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--epochs", "2", "--quiet", "--out", str(run)]) == 0
    return run


def _fashion_test_pngs(directory: Path, n: int) -> list[str]:
    """The first ``n`` Fashion-MNIST test images as PNG files, read straight from Debian's file."""
    raw = gzip.decompress((FASHION_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    paths = []
    for i in range(n):
        Image.fromarray(images[i]).save(directory / f"item{i}.png")
        paths.append(str(directory / f"item{i}.png"))
    return paths


def test_the_reports_mlp_on_real_fashion_mnist(fashion_run, tmp_path, capsys):
    """Debian's files, verified; the accuracy a 784-1024-10 MLP reaches after 2 epochs; predict, evaluate and
    the report speak Fashion-MNIST's classes."""
    info = json.loads((fashion_run / "run.json").read_text())
    assert info["data"] == {"dataset": "fashion-mnist", "classes": list(FASHION_CLASSES), "verified": True}
    assert info["environment"]["data_source"] == str(FASHION_DIR)
    assert info["config"]["model"]["hidden"] == [1024] and info["config"]["optim"]["lr"] == 0.1
    # Fashion-MNIST's benchmark: MLPs reach 84-89%; after 2 epochs of plain SGD the report's MLP is at ~85%
    assert 83.0 <= info["summary"]["test_acc_at_best_val"] <= 90.0
    capsys.readouterr()

    assert main(["evaluate", str(fashion_run), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "most confused" in out and any(f"{a}->{b}" in out for a in FASHION_CLASSES for b in FASHION_CLASSES)
    per_class = (tmp_path / "ev" / "report_mlp" / "per_class.csv").read_text()
    assert all(name in per_class for name in FASHION_CLASSES)
    assert (
        main(["report", str(fashion_run), "--out", str(tmp_path / "report"), "--evaluate", str(tmp_path / "ev")]) == 0
    )
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Fashion-MNIST's 60,000 training images" in md and "the 10,000 test images" in md
    assert md.startswith("# Artificial Neural Networks on Fashion-MNIST: a report generated from real runs\n")
    assert "<title>Artificial Neural Networks on Fashion-MNIST" in (tmp_path / "report" / "report.html").read_text()
    pairs = next(line for line in md.splitlines() if line.startswith("Most confused pairs"))
    assert sum(name in pairs for name in FASHION_CLASSES) >= 2, pairs
    capsys.readouterr()

    paths = _fashion_test_pngs(tmp_path, 3)
    assert main(["predict", "--model", str(fashion_run), *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.split(": ", 1)[1].split(" (")[0] in FASHION_CLASSES for line in lines)
    assert main(["predict", "--model", str(fashion_run), "--json", *paths]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert all(r["label"] == FASHION_CLASSES[r["prediction"]] for r in recs)


def test_predict_frames_fashion_items_as_fashion_mnist_was_made(fashion_run, tmp_path):
    """Fashion-MNIST's items fill the 28x28 frame (longer side 28 px): files are read that way, not with MNIST's
    20-px digit box (which read 26% of these right), as they are and as enlarged dark-on-light scans."""
    from mnistlab.deploy.predict import Classifier

    clf = Classifier.load(fashion_run)
    raw = gzip.decompress((FASHION_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:300]
    labels = np.frombuffer(
        gzip.decompress((FASHION_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8
    )[:300]
    tensor_acc = float((clf.probabilities(images.astype(np.float32) / 255).argmax(1) == labels).mean())
    for variant in (lambda a: a, lambda a: np.asarray(Image.fromarray(255 - a).resize((112, 112), Image.BILINEAR))):
        files = []
        for a in images:
            buf = io.BytesIO()
            Image.fromarray(variant(a)).save(buf, format="PNG")
            files.append(buf.getvalue())
        acc = float(np.mean([p.prediction == y for p, y in zip(clf.predict(files), labels, strict=True)]))
        assert acc >= tensor_acc - 0.03, (acc, tensor_acc)


def test_the_web_page_and_api_speak_the_runs_classes(fashion_run, tmp_path):
    """A Fashion-MNIST run served: the API names the class, the page is headed with the dataset."""
    from fastapi.testclient import TestClient

    from mnistlab.deploy.serve import create_app

    client = TestClient(create_app(fashion_run))
    page = client.get("/").text
    assert "<h1>Draw: fashion-mnist</h1>" in page and "Ankle boot" in page
    assert "like any Fashion-MNIST item: " in page and "like a digit" not in page  # its items, not digits
    (path,) = _fashion_test_pngs(tmp_path, 1)
    body = client.post("/api/predict", content=Path(path).read_bytes(), headers={"Content-Type": "image/png"}).json()
    assert body["classes"] == list(FASHION_CLASSES) and body["label"] == FASHION_CLASSES[body["prediction"]]
    assert client.get("/api/health").json()["dataset"] == "fashion-mnist"


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_readers_of_a_run_say_the_folder_is_not_the_runs_data(trained_run, tmp_path, capsys):
    """export, ensemble, final and evaluate have no --dataset: a --data-dir holding another dataset is "not
    the run's data", naming the dataset the run was trained on (the hint was "pass --dataset X")."""
    other = ["--data-dir", str(FASHION_DIR)]
    for cmd in (
        ["export", str(trained_run), "--onnx", str(tmp_path / "m.onnx")],
        ["ensemble", str(trained_run)],
        ["final", str(trained_run), "--quiet", "--out", str(tmp_path / "f")],
        ["evaluate", str(trained_run), "--out", str(tmp_path / "ev")],
    ):
        assert main([*cmd, *other]) == 2, cmd
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"{FASHION_DIR} holds fashion-mnist, not the run's data: {trained_run} was trained on mnist" in err
        assert "--dataset" not in err, err
    assert list(tmp_path.iterdir()) == []
    assert main(["ensemble", str(trained_run)]) == 0  # the easy case: the run's own (bundled) data


def test_read_only_commands_never_create_or_fetch_into_a_data_dir(fashion_run, tmp_path, capsys, monkeypatch):
    """A mistyped --data-dir on evaluate, ensemble, export or final was created and fetched into (a
    Fashion-MNIST run left /nonexist/.mnistlab-fetch.lock): a folder that does not exist and a path that is a
    file are one line, exit 2, nothing created. Training still fetches into a new folder."""
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))
    missing, a_file = tmp_path / "nonexist", tmp_path / "file"
    a_file.write_text("not a folder")
    out = tmp_path / "out"
    commands = [
        ["evaluate", str(fashion_run), "--out", str(out / "ev")],
        ["ensemble", str(fashion_run)],
        ["export", str(fashion_run), "--onnx", str(out / "m.onnx")],
        ["final", str(fashion_run), "--quiet", "--out", str(out / "f")],
    ]
    for cmd in commands:
        for path, says in ((missing, "does not exist"), (a_file, "is not a directory")):
            assert main([*cmd, "--data-dir", str(path)]) == 2, cmd
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"--data-dir {path} {says}" in err, (cmd, err)
    assert not missing.exists() and not out.exists() and not (tmp_path / "cache").exists()
    assert a_file.read_text() == "not a folder"
    assert main([*commands[1], "--data-dir", str(FASHION_DIR)]) == 0  # the easy case: the run's data, found


def test_evaluate_checks_every_runs_data_before_writing_anything(trained_run, fashion_run, tmp_path, capsys):
    """`evaluate RUN_A RUN_B` with runs of different datasets evaluated A in full (11 files) and then
    refused: now every run's data is checked first, and --out is made only when the work starts."""
    for pair in ((trained_run, fashion_run), (fashion_run, trained_run)):
        out = tmp_path / "ev"
        assert main(["evaluate", *map(str, pair), "--attack-images", "0", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "was trained on other data" in err and "one dataset" in err, err
        assert not out.exists()
    # the easy case: two runs of one dataset are evaluated side by side
    out = tmp_path / "ok"
    assert main(["evaluate", str(fashion_run), str(fashion_run), "--attack-images", "0", "--out", str(out)]) == 0
    assert (out / "compare.md").is_file() and (out / "report_mlp_2" / "summary.json").is_file()
