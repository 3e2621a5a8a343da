"""Load on `mnistlab serve`, on loopback, in one invocation: throughput and latency of /api/predict against
/api/health at concurrency 1, 8 and 32; then a flood of 32 concurrent oversized images (6300x6300 PNG,
about 170 KB each, the decompression-amplification case) and of 32 concurrent largest-allowed images
(2048x2048), measuring the server's peak RSS and the latency of normal predictions sent meanwhile.

    python benchmarks/serve_load.py [--model RUN_DIR]   # default: trains a small model first

Targets (issue 12): 0 errors; peak RSS under the flood below +300 MB; normal requests' p99 during the
flood under 1 s; predict at concurrency 8 at least half of /api/health's throughput.
Writes benchmarks/results/serve_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _digit() -> bytes:
    arr = np.full((280, 280), 255, np.uint8)
    arr[40:240, 130:150] = 0  # a "1", dark ink on white paper
    return _png(arr)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def _load(url: str, method: str, body: bytes | None, concurrency: int, seconds: float) -> dict:
    """Closed-loop load for ``seconds``: requests/s, latency percentiles (ms), status counts."""
    lat, statuses = [], {}
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    if method == "GET":
                        r = await client.get(url)
                    else:
                        r = await client.post(url, content=body, headers={"content-type": "image/png"})
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                lat.append(time.perf_counter() - t)
                statuses[code] = statuses.get(code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "requests": len(lat),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(1000 * _pct(lat, 0.5), 2),
        "p99_ms": round(1000 * _pct(lat, 0.99), 2),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


async def _flood(base: str, image: bytes, pid: int, seconds: float) -> dict:
    """32 clients sending ``image`` while 2 clients send normal digits; the server's peak RSS meanwhile."""
    peak, stop_sampling = [_rss_mb(pid)], threading.Event()
    before = peak[0]

    def sample() -> None:
        while not stop_sampling.is_set():
            peak.append(_rss_mb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    flood, normal = await asyncio.gather(
        _load(base + "/api/predict", "POST", image, 32, seconds),
        _load(base + "/api/predict", "POST", _digit(), 2, seconds),
    )
    stop_sampling.set()
    sampler.join()
    return {
        "flood": flood,
        "normal_during_flood": normal,
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(max(peak), 1),
        "rss_growth_mb": round(max(peak) - before, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="a trained run directory (default: train a small one)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "run"
            subprocess.run(
                [sys.executable, "-m", "mnistlab", "train", "--epochs", "1", "--quiet", "--out", str(model)], check=True
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "mnistlab", "serve", "--model", str(model), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            from mnistlab.core import hardware

            result: dict = {
                "machine": hardware.summary(),
                "hardware": hardware.describe(),
                "model": "784-1024-10 MLP" if args.model is None else str(args.model),
                "seconds_per_measurement": args.seconds,
                "levels": {},
            }
            digit = _digit()
            for c in (1, 8, 32):
                health = asyncio.run(_load(base + "/api/health", "GET", None, c, args.seconds))
                predict = asyncio.run(_load(base + "/api/predict", "POST", digit, c, args.seconds))
                result["levels"][c] = {
                    "health": health,
                    "predict": predict,
                    "predict_vs_health": round(predict["rps"] / health["rps"], 2),
                }
            huge = _png(np.zeros((6300, 6300), np.uint8))
            allowed = np.zeros((2048, 2048), np.uint8)
            allowed[300:1700, 900:1100] = 255
            result["flood_oversized"] = {
                "image_bytes": len(huge),
                **asyncio.run(_flood(base, huge, server.pid, args.seconds)),
            }
            result["flood_largest_allowed"] = {
                "image_bytes": len(_png(allowed)),
                **asyncio.run(_flood(base, _png(allowed), server.pid, args.seconds)),
            }
        finally:
            server.terminate()
            server.wait(30)
    errors = sum(
        v
        for lvl in result["levels"].values()
        for k in ("health", "predict")
        for code, v in lvl[k]["statuses"].items()
        if code != "200"
    )
    for f in ("flood_oversized", "flood_largest_allowed"):
        errors += sum(v for code, v in result[f]["normal_during_flood"]["statuses"].items() if code != "200")
        errors += sum(
            v for code, v in result[f]["flood"]["statuses"].items() if not code.isdigit() or code.startswith("5")
        )
    c8 = result["levels"][8]["predict_vs_health"]
    worst_p99 = max(result[f]["normal_during_flood"]["p99_ms"] for f in ("flood_oversized", "flood_largest_allowed"))
    worst_rss = max(result[f]["rss_growth_mb"] for f in ("flood_oversized", "flood_largest_allowed"))
    result["targets"] = {
        "errors": errors,
        "errors_ok": errors == 0,
        "rss_growth_mb": worst_rss,
        "rss_ok": worst_rss < 300,
        "normal_p99_ms_during_flood": worst_p99,
        "p99_ok": worst_p99 < 1000,
        "predict_vs_health_c8": c8,
        "throughput_ok": c8 >= 0.5,
    }
    lines = [
        "# `mnistlab serve` under load",
        "",
        f"Machine: {result['machine']}.",
        "",
        "Command: `python benchmarks/serve_load.py` (server and load generator on this machine, loopback; "
        f"{args.seconds:g} s per measurement, closed loop).",
        "",
        "| concurrency | health req/s | health p50 / p99 ms | predict req/s | predict p50 / p99 ms "
        "| predict / health |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, lvl in result["levels"].items():
        h, p = lvl["health"], lvl["predict"]
        lines.append(
            f"| {c} | {h['rps']} | {h['p50_ms']} / {h['p99_ms']} | {p['rps']} | {p['p50_ms']} / {p['p99_ms']} "
            f"| {lvl['predict_vs_health']} |"
        )
    lines += [
        "",
        "| flood (32 clients) | image bytes | answers | server RSS growth MB | normal predicts during it: "
        "req/s, p50 / p99 ms |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    for f, name in (
        ("flood_oversized", "6300x6300 PNG (refused from its header)"),
        ("flood_largest_allowed", "2048x2048 PNG (decoded, 4 at a time)"),
    ):
        r = result[f]
        n = r["normal_during_flood"]
        lines.append(
            f"| {name} | {r['image_bytes']:,} | {r['flood']['statuses']} | {r['rss_growth_mb']} | "
            f"{n['rps']}, {n['p50_ms']} / {n['p99_ms']} |"
        )
    t = result["targets"]
    lines += [
        "",
        f"Targets: errors {t['errors']} ({'met' if t['errors_ok'] else 'MISSED'}); RSS growth "
        f"{t['rss_growth_mb']} MB < 300 ({'met' if t['rss_ok'] else 'MISSED'}); normal p99 during floods "
        f"{t['normal_p99_ms_during_flood']} ms < 1000 ({'met' if t['p99_ok'] else 'MISSED'}); predict at "
        f"concurrency 8 = {t['predict_vs_health_c8']} of health >= 0.5 ({'met' if t['throughput_ok'] else 'MISSED'}).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
