"""The hardware a run uses and what machine a number was measured on: the device a config names
(:func:`resolve_device`), the precision it runs fastest in (:func:`auto_precision`), the CPU, the instruction
sets that decide its speed, torch's build.

One home for the machine description that run.json records and every benchmark prints. On a CPU the
speed of training at MNIST's size is decided by a few instruction sets, through the kernels oneDNN and MKL
pick for them:

* **AMX** (Intel Sapphire Rapids and later): bf16 tile multiplies, several times fp32's throughput; the only
  kind of CPU where oneDNN's bf16 convolutions are much faster than fp32 ones.
* **AVX512-BF16** (e.g. AMD Zen 4, Intel Cooper Lake): bf16 dot products in vector registers, about 2x fp32
  per instruction, but the casts around them eat most of it at this size.
* **AVX-512**, **AVX2**: fp32 vector width (16 or 8 lanes).

A virtual machine can hide flags the silicon has (a KVM guest on an AMX-capable Xeon without AMX passed
through is an "AVX-512" machine for every library), so the kind comes from what torch detects at run time,
not from the model name.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

# kind -> what the docs call it; the order is most to least capable
KINDS = {
    "amx": "AMX (bf16 tile multiplies)",
    "avx512_bf16": "AVX-512 with AVX512-BF16, no AMX",
    "avx512": "AVX-512, no AMX, no AVX512-BF16",
    "avx2": "AVX2, no AVX-512",
    "other": "no AVX2",
}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); {} elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _torch_flag(name: str) -> bool | None:
    fn = getattr(torch.cpu, f"_is_{name}_supported", None)  # private, but the one place torch says it
    return bool(fn()) if fn is not None else None


def cpu_flags() -> dict[str, bool]:
    """The instruction sets that decide training speed, as torch detects them (cpuinfo, with the OS's
    permission for AMX tiles), falling back to /proc/cpuinfo's flags where this torch cannot say."""
    listed = set(_cpuinfo().get("flags", "").split())
    from_proc = {
        "amx": "amx_tile" in listed,
        "avx512_bf16": "avx512_bf16" in listed,
        "avx512": "avx512f" in listed,
        "avx2": "avx2" in listed,
        "avx512_vnni": "avx512_vnni" in listed,
    }
    from_torch = {
        "amx": _torch_flag("amx_tile"),
        "avx512_bf16": _torch_flag("avx512_bf16"),
        "avx512": _torch_flag("avx512"),
        "avx2": _torch_flag("avx2"),
        "avx512_vnni": _torch_flag("vnni"),
    }
    return {k: from_proc[k] if v is None else v for k, v in from_torch.items()}


def cpu_kind(flags: dict[str, bool] | None = None) -> str:
    """The most capable of :data:`KINDS` that ``flags`` (default: this machine's) support."""
    flags = cpu_flags() if flags is None else flags
    for kind in ("amx", "avx512_bf16", "avx512", "avx2"):
        if flags.get(kind):
            return kind
    return "other"


def cpu() -> dict[str, Any]:
    """This machine's CPU: model name, vendor/family/model/stepping numbers (a VM often shows a generic
    name, the numbers still tell the generation), logical CPUs (all, and those this process may use),
    whether it runs under a hypervisor, the speed-deciding flags and the resulting kind."""
    info = _cpuinfo()
    flags = cpu_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": info.get("vendor_id", ""),
        "family": int(info["cpu family"]) if info.get("cpu family", "").isdigit() else None,
        "model_number": int(info["model"]) if info.get("model", "").isdigit() else None,
        "stepping": int(info["stepping"]) if info.get("stepping", "").isdigit() else None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "hypervisor": "hypervisor" in info.get("flags", "").split(),
        "machine": platform.machine(),
        "flags": flags,
        "kind": cpu_kind(flags),
    }


def torch_build() -> dict[str, Any]:
    """torch's version and the parts of its build that decide CPU speed (from ``torch.__config__``):
    the vector ISA its kernels use, MKL's and oneDNN's versions, the OpenMP threads."""
    shown = torch.__config__.show()

    def find(pattern: str) -> str:
        m = re.search(pattern, shown)
        return m.group(1).strip() if m else ""

    return {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": find(r"Math Kernel Library Version ([\d.]+)"),
        "onednn": find(r"MKL-DNN (v[\d.]+)"),
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "openmp": find(r"OpenMP (\d+)"),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
    }


def describe(device: torch.device | str | None = None) -> dict[str, Any]:
    """:func:`cpu` and :func:`torch_build`, plus the GPU's name when ``device`` is a CUDA device."""
    desc: dict[str, Any] = {"cpu": cpu(), "torch": torch_build()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
    return desc


def summary(desc: dict[str, Any] | None = None) -> str:
    """One line naming the machine, for the head of a benchmark's table, e.g. ``Intel(R) Xeon(R) Processor
    (GenuineIntel family 6 model 207), 2 logical CPUs (2 usable), virtual machine; AMX no, AVX512-BF16 no,
    AVX-512 yes, AVX2 yes; torch 2.13.0+cpu (AVX512 kernels, MKL 2024.2, oneDNN v3.12.0), 2 threads``."""
    desc = describe() if desc is None else desc
    c, t = desc["cpu"], desc["torch"]
    ident = f"{c['vendor']} family {c['family']} model {c['model_number']}" if c["family"] is not None else c["machine"]
    flags = ", ".join(
        f"{name} {'yes' if c['flags'].get(key) else 'no'}"
        for key, name in (("amx", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512", "AVX-512"), ("avx2", "AVX2"))
    )
    line = (
        f"{c['model']} ({ident}), {c['logical_cpus']} logical CPUs ({c['usable_cpus']} usable)"
        f"{', virtual machine' if c['hypervisor'] else ''}; {flags}; "
        f"torch {t['version']} ({t['cpu_capability']} kernels, MKL {t['mkl'] or '-'}, oneDNN {t['onednn'] or '-'}), "
        f"{t['threads']} threads"
    )
    if desc.get("gpu"):
        line += f"; GPU {desc['gpu']} (CUDA {t['cuda']})"
    return line


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device: 'auto' -> cuda when available, else cpu; a CUDA device this machine
    does not have is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device = {name!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix multiplies run natively on ``device`` (else they are emulated, far slower)."""
    if device.type == "cuda":
        try:  # native only: older GPUs emulate bf16 (torch's default answer counts emulation as support)
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no such argument and counts only native support
            return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    return bool(flags["avx512_bf16"] or flags["amx"])


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``train.precision = "auto"`` means on ``device``: ``(precision, reason)``.

    bf16 only where the hardware runs it clearly faster than fp32: a CUDA GPU with native bf16, or a CPU
    with AMX, where oneDNN's bf16 convolutions and GEMMs use the tile unit. Elsewhere fp32: measured on an
    AVX-512 CPU with AVX512-BF16 but no AMX (AMD Zen 4, 2 cores), the CNN speed recipe trained only 8% faster
    in bf16 (10.9 s vs 11.8 s) and the report's MLP no faster (the casts of the fp32 master weights eat the
    gain); without AVX512-BF16, bf16 is emulated and slower (docs/speed.md).
    """
    if device.type == "cuda":
        return ("bf16", "GPU with native bf16") if bf16_supported(device) else ("fp32", "GPU without native bf16")
    flags = cpu_flags()
    if flags["amx"]:
        return "bf16", "CPU with AMX"
    if flags["avx512_bf16"]:
        return "fp32", "CPU with AVX512-BF16 but no AMX: bf16 not clearly faster"
    return "fp32", "CPU without AMX or AVX512-BF16: bf16 would be emulated"
