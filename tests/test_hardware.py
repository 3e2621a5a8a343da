"""The machine description every run and benchmark records, and what `train.precision = "auto"` picks."""

import json
import re

import pytest
import torch

from mnistlab.cli import main
from mnistlab.core import hardware

FLAG_KEYS = {"amx", "avx512_bf16", "avx512", "avx2"}


def test_description_names_the_cpu_its_flags_and_torchs_build():
    desc = hardware.describe("cpu")
    c, t = desc["cpu"], desc["torch"]
    assert c["model"] and c["logical_cpus"] >= 1 and 1 <= c["usable_cpus"] <= c["logical_cpus"]
    assert set(c["flags"]) >= FLAG_KEYS and all(isinstance(v, bool) for v in c["flags"].values())
    assert c["kind"] == hardware.cpu_kind(c["flags"]) and c["kind"] in hardware.KINDS
    # the flags agree with the kernels torch chose for this machine
    if t["cpu_capability"] == "AVX512":
        assert c["flags"]["avx512"]
    assert t["version"] == torch.__version__ and t["threads"] == torch.get_num_threads()
    if torch.backends.mkldnn.is_available():
        assert re.fullmatch(r"v\d+\.\d+(\.\d+)?", t["onednn"])
    line = hardware.summary(desc)
    assert c["model"] in line and torch.__version__ in line
    for key, name in (("amx", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512", "AVX-512"), ("avx2", "AVX2")):
        assert f"{name} {'yes' if c['flags'][key] else 'no'}" in line


@pytest.mark.parametrize(
    "flags, kind",
    [
        ({"amx": True, "avx512_bf16": True, "avx512": True, "avx2": True}, "amx"),
        ({"amx": False, "avx512_bf16": True, "avx512": True, "avx2": True}, "avx512_bf16"),  # e.g. AMD Zen 4
        ({"amx": False, "avx512_bf16": False, "avx512": True, "avx2": True}, "avx512"),  # e.g. a VM hiding AMX
        ({"amx": False, "avx512_bf16": False, "avx512": False, "avx2": True}, "avx2"),
        ({"amx": False, "avx512_bf16": False, "avx512": False, "avx2": False}, "other"),
    ],
)
def test_kind_is_the_most_capable_flag(flags, kind):
    assert hardware.cpu_kind(flags) == kind


@pytest.mark.parametrize(
    "flags, want",
    [
        ({"amx": True, "avx512_bf16": True, "avx512": True, "avx2": True}, "bf16"),
        ({"amx": False, "avx512_bf16": True, "avx512": True, "avx2": True}, "fp32"),  # bf16 not clearly faster
        ({"amx": False, "avx512_bf16": False, "avx512": True, "avx2": True}, "fp32"),  # bf16 emulated
    ],
)
def test_auto_precision_picks_bf16_only_with_amx_on_a_cpu(monkeypatch, flags, want):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    precision, reason = hardware.auto_precision(torch.device("cpu"))
    assert precision == want and reason


@pytest.mark.parametrize("amx", [False, True])
def test_auto_precision_is_resolved_and_recorded_by_a_run(small_mnist_dir, tmp_path, monkeypatch, capsys, amx):
    flags = {"amx": amx, "avx512_bf16": amx, "avx512": True, "avx2": True}
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--quiet",
                "--data-dir",
                str(small_mnist_dir),
                "--epochs",
                "1",
                "--hidden",
                "8",
                "--precision",
                "auto",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["train"]["precision"] == ("bf16" if amx else "fp32")  # the choice, not "auto"
    assert "precision = 'auto'" not in (out / "config.toml").read_text()
    assert info["environment"]["cpu"]["flags"] == flags and info["environment"]["torch_build"]["version"]
