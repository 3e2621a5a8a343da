"""Digits as a phone would photograph them: how `predict`'s preprocessing copes, MLP vs CNN.

    python benchmarks/photo_digits.py [--n 1000] [--mlp RUN_DIR --cnn RUN_DIR]

Each of the first N test digits is rendered as a photo (fixed seeds): scaled 3-10x, dark ink on light
paper with a margin, an uneven lighting gradient and vignette, paper texture, blur and sensor noise.
The renderings go through `mnistlab.deploy.predict.preprocess` exactly as `mnistlab predict` would take them,
and the accuracy is compared with the same models on the clean 28x28 digits. Also: how often pure noise
and blank paper are flagged as unlike any digit. Writes benchmarks/results/photo_digits.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (28, 28) uint8 MNIST digit -> a grey uint8 'photo' of it (see the module docstring)."""
    scale = rng.uniform(3, 10)
    side = int(28 * scale)
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.BILINEAR), np.float32) / 255
    margin = int(side * rng.uniform(0.3, 0.8))
    h = w = side + 2 * margin
    canvas_ink = np.zeros((h, w), np.float32)
    oy, ox = rng.integers(0, margin + 1, 2) + margin // 2
    canvas_ink[oy : oy + side, ox : ox + side] = ink
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0.75, 0.95) - rng.uniform(0.15, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy)
    light -= rng.uniform(0.0, 0.2) * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)  # vignette
    texture = (
        np.asarray(
            Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(max(1.0, scale / 2))
            ),
            np.float32,
        )
        / 255
        - 0.5
    )
    paper = np.clip(light + 0.1 * texture, 0, 1)
    ink_level = rng.uniform(0.05, 0.3)  # how dark the pen is on this paper
    photo = paper * (1 - canvas_ink) + ink_level * paper * canvas_ink
    img = Image.fromarray((np.clip(photo, 0, 1) * 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * scale / 3))
    noisy = np.asarray(img, np.float32) / 255 + rng.normal(0, rng.uniform(0.01, 0.04), (h, w))
    return (np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def _train(tmp: Path, name: str, args: list[str]) -> Path:
    out = tmp / name
    subprocess.run(
        [sys.executable, "-m", "mnistlab", "train", "--quiet", "--out", str(out), *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def measure(models: dict[str, Path], n: int) -> dict:
    import mnistlab
    from mnistlab.core import data
    from mnistlab.deploy.predict import ImageError

    ds = data.load()
    digits, labels = ds.test_images[:n].numpy(), ds.test_labels[:n].numpy()
    rng = np.random.default_rng(20261127)
    photos = [render(d, rng) for d in digits]
    noise_rng = np.random.default_rng(7)
    junk = {
        "pure noise": [(noise_rng.random((300, 300)) * 255).astype(np.uint8) for _ in range(50)],
        "blank paper, uneven light": [render(np.zeros((28, 28), np.uint8), noise_rng) for _ in range(50)],
    }
    res: dict = {"n": n, "models": {}}
    for name, run_dir in models.items():
        clf = mnistlab.load_model(run_dir)
        clean = clf.probabilities(digits.astype(np.float32) / 255).argmax(1)
        preds, unlike, errors = [], 0, 0
        for p in photos:
            try:
                (pr,) = clf.predict([p])
                preds.append(pr.prediction)
                unlike += bool(getattr(pr, "unlike_digit", False))
            except ImageError:
                preds.append(-1)
                errors += 1
        flagged = {}
        for kind, imgs in junk.items():
            count = 0
            for img in imgs:
                try:
                    (pr,) = clf.predict([img])
                    count += bool(getattr(pr, "unlike_digit", False))
                except ImageError:
                    count += 1  # refused outright ("no digit found") counts as flagged
            flagged[kind] = round(100 * count / len(imgs), 1)
        res["models"][name] = {
            "clean_acc": round(100 * float((clean == labels).mean()), 2),
            "photo_acc": round(100 * float((np.array(preds) == labels).mean()), 2),
            "photo_no_digit_errors": errors,
            "photo_flagged_unlike": unlike,
            "junk_flagged_pct": flagged,
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--mlp", type=Path)
    ap.add_argument("--cnn", type=Path)
    ap.add_argument("--label", default="", help="a name for this measurement in the results file")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {
            "MLP (the report's, 30 epochs)": args.mlp or _train(tmp, "mlp", ["--config", "experiments/seed.toml"]),
            # issue 13's recipe, the one these figures were measured with
            "CNN (speedrun recipe)": args.cnn or _train(tmp, "cnn", ["--config", "experiments/speedrun_fastcnn.toml"]),
        }
        res = measure(models, args.n)
    from mnistlab.core import hardware

    res["machine"], res["hardware"] = hardware.summary(), hardware.describe()
    path = args.out / "photo_digits.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    runs[args.label or "latest"] = res
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=1) + "\n")
    lines = [
        f"# Photographed digits ({args.n} test digits rendered as photos; `python benchmarks/photo_digits.py`)",
        "",
    ]
    for label, r in runs.items():
        lines += [
            f"## {label}",
            "",
            *([f"Machine: {r['machine']}.", ""] if "machine" in r else []),
            "| model | clean 28x28 test acc % | photo acc % | refused as no digit | "
            "flagged unlike a digit | pure noise flagged % | blank paper flagged % |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, m in r["models"].items():
            j = m["junk_flagged_pct"]
            lines.append(
                f"| {name} | {m['clean_acc']} | {m['photo_acc']} | {m['photo_no_digit_errors']} | "
                f"{m['photo_flagged_unlike']} | {j['pure noise']} | {j['blank paper, uneven light']} |"
            )
        lines.append("")
    (args.out / "photo_digits.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
