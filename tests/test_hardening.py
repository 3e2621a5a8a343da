"""Hostile and unlucky input: full disks, foreign directories, locked studies, bombs, non-finite models,
and property tests of the readers (IDX, checkpoints, images): a clear one-line error, never a traceback."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import idx_bytes, train_tiny
from mnistlab.cli import main
from mnistlab.core import checkpoint, data
from mnistlab.core.runs import RunDir, study_lock
from mnistlab.deploy.predict import ImageError, mnist_style, preprocess
from mnistlab.errors import MnistlabError


def _one_line(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ---------------------------------------------------------------- a full disk


@pytest.fixture()
def tiny_disk(tmp_path):
    """An 8 MB tmpfs (root only), so that a test can fill it mid-run."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_one_line_and_leaves_consistent_files(small_mnist_dir, tiny_disk, capsys):
    """The disk fills up after epoch 2 (another program's file): the run stops with one line naming the
    file it could not write, and what it leaves agrees with itself."""
    out = tiny_disk / "run"

    def fill_when_two_epochs_are_written():
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if len((out / "metrics.csv").read_text().splitlines()) >= 3:  # header + 2 epochs
                    break
            except OSError:
                pass
            time.sleep(0.005)
        free = shutil.disk_usage(tiny_disk).free
        with open(tiny_disk / "filler", "wb") as f, contextlib.suppress(OSError):
            f.write(b"\0" * free)

    filler = threading.Thread(target=fill_when_two_epochs_are_written)
    filler.start()
    code = train_tiny(small_mnist_dir, out, epochs=300, hidden=256)
    filler.join()
    assert code == 2
    _one_line(capsys, "cannot write", "No space left on device")
    (tiny_disk / "filler").unlink()
    info = json.loads((out / "run.json").read_text())  # still valid JSON
    rows = RunDir(out).read_history()
    assert 2 <= len(rows) < 300
    # run.json is the last one that fit: the final one (failed, with what metrics.csv holds) or, when the
    # disk had no room even for that, the one written at the start (running, claiming no epochs)
    assert (info["status"], info.get("epochs_done", 0) <= len(rows)) in (("failed", True), ("running", True))
    assert not list(out.glob(".*.tmp"))
    # and the run resumes from its last complete checkpoint once there is room again
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert len(RunDir(out).read_history()) == 300


# ---------------------------------------------------------------- directories


def test_out_into_a_folder_of_other_files_is_refused(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        assert train_tiny(small_mnist_dir, out, *extra) == 2
        _one_line(capsys, "holds files that are not a run's (notes.txt)")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_study_directory_in_use_is_refused_naming_its_holder(small_mnist_dir, tmp_path, capsys):
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'name = "a"\n[data]\ndir = "{small_mnist_dir}"\n[model]\nhidden = [8]\n[train]\nepochs = 1\n')
    out = tmp_path / "study"
    out.mkdir()
    with study_lock(out):  # as a first `mnistlab compare` holds it
        assert main(["compare", str(cfg), "--seeds", "1", "--out", str(out), "--quiet"]) == 2
        _one_line(capsys, f"{out} is in use by pid {os.getpid()}")
        assert not (out / "a").exists()  # the second command touched nothing
    assert main(["compare", str(cfg), "--seeds", "1", "--out", str(out), "--quiet"]) == 0  # released


def test_stale_temporary_files_are_removed_on_resume(small_mnist_dir, tmp_path, monkeypatch):
    from conftest import interrupt_at_epoch

    out = tmp_path / "run"
    interrupt_at_epoch(monkeypatch, 2)
    assert train_tiny(small_mnist_dir, out, epochs=2) == 130
    monkeypatch.undo()
    (out / ".metrics.csv.x1y2.tmp").write_text("half")  # what a kill mid-write leaves
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "100000"], "'train.threads' = 100000 is invalid"),
        (["--seed", "99999999999999999999"], "'train.seed' = 99999999999999999999 is invalid"),
        (["--seed", "x"], "'train.seed' must be an integer, got 'x' (--seed)"),
        (["--device", "cuda:x"], "'train.device' = 'cuda:x' is invalid"),
        (["--device", "cuda:"], "'train.device' = 'cuda:' is invalid"),
        (["--device", "cuda:-1"], "'train.device' = 'cuda:-1' is invalid"),
        (["--set", "data.val_fraction=0.0001"], "leaves no validation images out of 2000"),
    ],
)
def test_bad_run_options_are_one_line(small_mnist_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert (
        main(["train", "--data-dir", str(small_mnist_dir), "--epochs", "1", "--quiet", "--out", str(out), *argv]) == 2
    )
    _one_line(capsys, message)
    assert not (out / "metrics.csv").exists()


# ---------------------------------------------------------------- bombs and endless input


def test_gzip_idx_bomb_is_refused_after_its_header(tmp_path, mnist):
    """The header announces 10 images; the stream inflates to 300 MB. Reading stops one byte past 7,856."""
    d = data_dir = tmp_path / "bomb"
    from conftest import write_mnist_dir

    write_mnist_dir(d, mnist, 100, 10)
    header = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(header)
        zeros = bytes(1 << 20)
        for _ in range(300):
            f.write(zeros)
    tracemalloc.start()
    with pytest.raises(MnistlabError, match="length mismatch"):
        data.load(data_dir)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_predict_reads_at_most_its_limit_from_a_device(trained_run, capsys):
    assert main(["predict", "--model", str(trained_run), "/dev/zero"]) == 2
    _one_line(capsys, "/dev/zero: file too large")


def test_sparse_ink_is_no_digit_not_a_traceback(trained_run, tmp_path, capsys):
    from PIL import Image

    arr = np.zeros((2000, 2000), np.uint8)
    arr[5, 5] = arr[1990, 1990] = 255
    Image.fromarray(arr).save(tmp_path / "dots.png")
    assert main(["predict", "--model", str(trained_run), str(tmp_path / "dots.png")]) == 2
    _one_line(capsys, "no digit found")


# ---------------------------------------------------------------- non-finite models


def test_non_finite_weights_are_refused_by_predict_and_export(trained_run, tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "nan_run"
    shutil.copytree(trained_run, run)
    weights = checkpoint.load_tensors(run / "best.safetensors")
    weights["net.1.weight"][0, 0] = float("nan")
    checkpoint.save_tensors(run / "best.safetensors", weights)
    digit = tmp_path / "d.png"
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(digit)
    assert main(["predict", "--model", str(run), "--json", str(digit)]) == 2
    _one_line(capsys, "holds non-finite weights (net.1.weight)")
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 2
    _one_line(capsys, "holds non-finite weights")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------- property tests


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_idx_reader_accepts_or_names_the_problem(buf):
    try:
        arr = data.parse_idx(buf, "x")
    except MnistlabError as e:
        assert str(e).startswith("x: ")
    else:
        assert arr.size > 0 and arr.dtype == np.uint8


@given(st.lists(st.integers(0, 255), min_size=4, max_size=40), st.integers(0, 3), st.integers(0, 9))
@settings(max_examples=200, deadline=None)
def test_idx_reader_on_mutated_valid_files(body, which, value):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    valid = idx_bytes(arr)
    buf = bytearray(valid)
    buf[which] = value  # mutate the magic number
    buf += bytes(body[:which])  # and sometimes append trailing bytes
    # the oracle: only the unchanged file parses; a changed one is refused for its magic number when that is
    # no longer unsigned-byte or int32 data in 1-3 dims, else for its length (other dims or trailing bytes)
    if bytes(buf) == valid:
        assert np.array_equal(data.parse_idx(bytes(buf), "m"), arr)
        return
    magic_ok = buf[0] == buf[1] == 0 and buf[2] in (0x08, 0x0C) and 1 <= buf[3] <= 3
    with pytest.raises(MnistlabError, match="^m: IDX length mismatch" if magic_ok else "^m: bad IDX magic number"):
        data.parse_idx(bytes(buf), "m")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def good_checkpoint(small_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert train_tiny(small_mnist_dir, out, "--set", "optim.momentum=0.5", hidden=4) == 0
    return checkpoint.load(RunDir(out))


@given(
    key=st.sampled_from(
        [
            "epoch",
            "history",
            "best_val_acc",
            "bad_epochs",
            "stopped_early",
            "optimizer_param_groups",
            "optimizer_scalars",
            "data_sha256",
            "format",
        ]
    ),
    value=_json_values,
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_checkpoint_loader_validates_any_metadata(good_checkpoint, tmp_path_factory, key, value):
    tensors, meta = good_checkpoint
    run = RunDir(tmp_path_factory.mktemp("prop"))
    checkpoint.save_tensors(
        run.file("checkpoint.safetensors"),
        tensors,
        {"format": "2", "epoch": "1", "meta": json.dumps({**meta, key: value})},
    )
    try:
        _, got = checkpoint.load(run)
    except MnistlabError as e:
        assert "--overwrite" in str(e)
    else:
        assert isinstance(got["epoch"], int) and len(got["history"]) == got["epoch"]


@given(st.integers(1, 60), st.integers(1, 60), st.integers(0, 2**32 - 1), st.sampled_from(["dots", "noise", "blank"]))
@settings(max_examples=150, deadline=None)
def test_preprocessing_gives_an_mnist_image_or_a_clear_error(h, w, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        img = rng.random((h, w), dtype=np.float32)
    elif kind == "blank":
        img = np.full((h, w), rng.random(), np.float32)
    else:
        img = np.zeros((h, w), np.float32)
        img[rng.integers(0, h, 3), rng.integers(0, w, 3)] = 1.0
    try:
        out = mnist_style(img)
    except ImageError as e:
        assert "no digit found" in str(e)
    else:
        assert out.shape == (28, 28) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_preprocess_rejects_arrays_of_the_wrong_shape():
    with pytest.raises(ImageError, match=r"expected an image array of shape .*got shape \(2, 2, 2, 2\)"):
        preprocess(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ImageError, match="no digit found"):  # a blank array, as a blank file
        preprocess(np.zeros((28, 28)))
    digit = np.zeros((28, 28), np.float32)
    digit[4:24, 13:15] = 1.0
    assert torch.tensor(preprocess(digit)).shape == (28, 28)
