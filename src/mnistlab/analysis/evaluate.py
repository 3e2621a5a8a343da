"""Look inside trained models: where they fail, whether their probabilities mean anything, how they break
under shifts, rotations, noise and inversion, how far adversarial attacks (FGSM, PGD) take them, and what
their first layer learned.

Everything is computed on a run's best-validation weights, on the test split (or the validation split,
rebuilt exactly as the run drew it). Perturbations use fixed seeds, so the numbers repeat. Each run gets
its figures and CSV/JSON files in ``OUT/NAME/``; several runs also get a side-by-side table and one
robustness plot.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core import adversarial, checkpoint, data, datasets
from ..core.metrics import predict_proba
from ..core.runs import RunDir, atomic_write
from ..errors import MnistlabError
from ..text import md_cell

N_CLASSES = 10  # MNIST's; a run's own number comes from its dataset
ECE_BINS = 15
PERTURB_SEED = 20261127  # fixed: the noise images are the same on every call


# ---------------------------------------------------------------- pure measures


def confusion_matrix(pred: np.ndarray, true: np.ndarray, k: int = N_CLASSES) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class."""
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (true, pred), 1)
    return cm


def per_class(cm: np.ndarray) -> list[dict[str, float]]:
    """Precision, recall and F1 (in [0, 1]) and support of each class from a confusion matrix."""
    out = []
    for c in range(len(cm)):
        tp, predicted, actual = cm[c, c], cm[:, c].sum(), cm[c].sum()
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        out.append(
            {
                "class": c,
                "precision": float(p),
                "recall": float(r),
                "f1": float(2 * p * r / (p + r)) if p + r else 0.0,
                "support": int(actual),
            }
        )
    return out


def most_confused(cm: np.ndarray, n: int = 5) -> list[dict[str, int]]:
    """The ``n`` largest off-diagonal cells: (true, predicted, count)."""
    off = [(int(cm[t, p]), t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p]]
    return [{"true": t, "predicted": p, "count": c} for c, t, p in sorted(off, key=lambda x: (-x[0], x[1], x[2]))[:n]]


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, the reliability table, and the NLL.

    ECE = sum over bins b of |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|.
    """
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)  # bin b holds (edge_b, edge_b+1]
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            acc, mean_conf = float(correct[mask].mean()), float(conf[mask].mean())
            ece += mask.mean() * abs(acc - mean_conf)
            table.append(
                {
                    "bin": b,
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(mask.sum()),
                    "accuracy": acc,
                    "confidence": mean_conf,
                }
            )
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return {"ece": float(ece), "nll": nll, "bins": table}


# ---------------------------------------------------------------- perturbations of (N, 1, 28, 28) images


def shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Move the digits ``pixels`` right and down (zero fill)."""
    if pixels == 0:
        return x
    out = torch.zeros_like(x)
    out[..., pixels:, pixels:] = x[..., :-pixels, :-pixels]
    return out


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the centre (bilinear, zero fill)."""
    if degrees == 0:
        return x
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Add Gaussian noise of std ``sigma`` (fixed seed), clipped to [0, 1]."""
    if sigma == 0:
        return x
    g = torch.Generator().manual_seed(PERTURB_SEED)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp_(0, 1)


PERTURBATIONS: dict[str, tuple[str, list[float], Callable[[torch.Tensor, Any], torch.Tensor]]] = {
    "shift": ("shift (pixels)", [0, 1, 2, 3, 4, 5, 6], lambda x, v: shift(x, int(v))),
    "rotation": ("rotation (degrees)", [0, 5, 10, 15, 20, 30, 45], rotate),
    "noise": ("Gaussian noise (std)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], noise),
    "inverted": ("inverted (0 = no, 1 = yes)", [0, 1], lambda x, v: 1 - x if v else x),
}
# the points every table and log line shows, by (perturbation, value, label): shifted 3 px, rotated 30 degrees,
# noise of std 0.3, inverted
HEADLINE = (
    ("shift", 3, "shift 3 px"),
    ("rotation", 30, "rotation 30°"),
    ("noise", 0.3, "noise 0.3"),
    ("inverted", 1, "inverted"),
)


def robustness_at(robustness: dict[str, list[tuple[float, float]]], kind: str, value: float) -> float:
    """The accuracy in percent under perturbation ``kind`` of strength ``value``, looked up by value (the
    points of :data:`PERTURBATIONS`); a point that was not measured is a :class:`MnistlabError`."""
    for v, accuracy in robustness.get(kind, []):
        if math.isclose(float(v), value):
            return accuracy
    raise MnistlabError(f"the evaluation has no robustness point {kind} = {value} (run mnistlab evaluate again)")


def headline_robustness(robustness: dict[str, list[tuple[float, float]]]) -> list[float]:
    """The accuracies at the :data:`HEADLINE` points, in their order."""
    return [robustness_at(robustness, kind, value) for kind, value, _ in HEADLINE]


# ---------------------------------------------------------------- adversarial attacks

ATTACK_EPS = [0.0, 0.1, 0.2, 0.3]  # L-inf radii on [0, 1] pixels; 0.3 is Madry et al. 2018's MNIST challenge
ATTACK_LABELS = {"fgsm": "FGSM", "pgd": f"PGD-{adversarial.PGD_STEPS}"}
# default: the first 1,000 images (a standard error of at most 1.6 points). Measured on one thread of the shared
# 2-core development CPU: 24 s per 1,000 images for a 2 x 1024 MLP, 10 minutes for cnn_best's CNN, so all
# 10,000 would take 4 minutes and 1.7 hours (benchmarks/regularizer_cost.py --sections attacks)
ATTACK_IMAGES = 1000


def attack_curves(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values: list[float] = ATTACK_EPS
) -> dict[str, list[tuple[float, float]]]:
    """Accuracy in percent under each attack of :data:`adversarial.ATTACKS` at each L-inf radius:
    ``{"fgsm": [(eps, accuracy %)], "pgd": [...]}`` on (x, y), the model in eval mode. PGD is Madry et al.'s
    MNIST protocol (40 steps of 0.01 from a random start, seeded: the numbers repeat). At eps 0 every attack
    returns the images unchanged: the clean accuracy on (x, y)."""
    return {
        name: [(eps, adversarial.robust_accuracy(model, x, y, name, eps, seed=PERTURB_SEED)) for eps in eps_values]
        for name in adversarial.ATTACKS
    }


# ---------------------------------------------------------------- one run


@dataclass
class Evaluation:
    name: str
    arch: str
    data_source: str
    split: str
    dataset: str
    class_names: list[str]  # by label
    accuracy: float
    calibration: dict[str, Any]
    confusion: np.ndarray
    classes: list[dict[str, float]]
    confused: list[dict[str, int]]
    robustness: dict[str, list[tuple[float, float]]]  # kind -> [(value, accuracy %)]
    adversarial: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # attack -> [(eps, accuracy %)]
    attack_images: int = 0  # the first N images of the split the attacks used (0: no attacks)
    first_layer: np.ndarray | None = None  # (U, H, W) first-layer weights as images (first_layer_units)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "split": self.split,
            "data": self.data_source,
            "dataset": self.dataset,
            "classes": self.class_names,
            "accuracy": round(self.accuracy, 3),
            "ece": self.calibration["ece"],  # unrounded: every reader
            "nll": self.calibration["nll"],
            "most_confused": self.confused,  # formats it the same way
            "robustness": {k: [[v, round(a, 3)] for v, a in pts] for k, pts in self.robustness.items()},
            "adversarial": {k: [[v, round(a, 3)] for v, a in pts] for k, pts in self.adversarial.items()},
            "attack_images": self.attack_images,
        }


def splits_of(dataset: str) -> list[str]:
    """The splits ``--split`` may name for a dataset: test, val, and the dataset's named test subsets."""
    return ["test", "val", *datasets.get(dataset).subsets]


def _data(run: RunDir, cfg: Any, data_dir: str | Path | None, dataset: str | None) -> data.Dataset:
    """The run's own data (checked against its recorded SHA-256), or another dataset's test set that
    evaluates the run's models (QMNIST's for MNIST runs)."""
    if dataset is None or dataset == cfg.data.dataset:
        return datasets.load_for_run(run.path, cfg, data_dir)
    spec = datasets.get(dataset)
    if cfg.data.dataset not in spec.evaluates:
        raise MnistlabError(
            f"{run.path} was trained on {cfg.data.dataset}: its model cannot be evaluated on "
            f"{dataset} ("
            + (f"it evaluates {', '.join(spec.evaluates)} models" if spec.evaluates else "another dataset")
            + ")"
        )
    return datasets.load(dataset, data_dir and datasets.existing_dir(data_dir))  # never fetched into a new folder


def _split(run: RunDir, cfg: Any, split: str, ds: data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if split in ("test", *datasets.get(ds.name).subsets):
        lo, hi = datasets.get(ds.name).subsets.get(split, (0, len(ds.test_labels)))
        return data.to_float(ds.test_images[lo:hi]), ds.test_labels[lo:hi]
    if split != "val":
        raise MnistlabError(f"--split must be one of {', '.join(splits_of(ds.name))} for {ds.name}, got {split!r}")
    if ds.name != cfg.data.dataset:
        raise MnistlabError(
            f"--split val is the run's own validation split: it needs the run's dataset "
            f"{cfg.data.dataset}, not {ds.name}"
        )
    if cfg.data.train_on_val:
        raise MnistlabError(
            f"{run.path} was trained on train + validation: it has no validation split to "
            f"evaluate on (use --split test)"
        )
    _, val_idx, _ = data.run_split(len(ds.train_images), cfg.data.val_fraction, cfg.train.seed)
    return data.to_float(ds.train_images[val_idx]), ds.train_labels[val_idx]


Loaded = tuple[torch.nn.Module, Any, data.Dataset]  # a run's best model, its config and its checked data


def load_run(path: Path, split: str = "test", data_dir: str | Path | None = None, dataset: str | None = None) -> Loaded:
    """What evaluating a run reads, every check done (the run, its data's checksum, the split) and nothing
    written: (best-validation model, config, data). Raises MnistlabError (DataError for the data)."""
    run = RunDir(path)
    model, cfg = checkpoint.load_best_model(path)
    ds = _data(run, cfg, data_dir, dataset)
    _split(run, cfg, split, ds)  # a split the data does not have: refused now
    return model, cfg, ds


def evaluate_run(
    path: Path,
    split: str = "test",
    attack_images: int = ATTACK_IMAGES,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    loaded: Loaded | None = None,
) -> tuple[Evaluation, torch.nn.Module, torch.Tensor, np.ndarray, np.ndarray, str]:
    """Evaluate one run's best-validation model (in eval mode; the weight average for runs with
    ``regularize.ema``): (evaluation, model, images, labels, probabilities, data checksum). The attacks use
    the first ``attack_images`` images of the split (all when it holds fewer; 0 skips them). ``data_dir``:
    where the run's data is now; ``dataset``: another dataset whose test set evaluates the run's models
    (e.g. ``qmnist`` for an MNIST run); ``split``: test, val or the dataset's named test subsets (QMNIST's
    test50k). Data that is not the run's is refused (:class:`DataError`). ``loaded``: what
    :func:`load_run` returned for these arguments (read once, checked before anything is written)."""
    run = RunDir(path)
    model, cfg, ds = loaded if loaded is not None else load_run(path, split, data_dir, dataset)
    x, y = _split(run, cfg, split, ds)
    checksum = ds.checksum
    k = len(datasets.classes_of(cfg))
    with torch.inference_mode():
        probs = predict_proba(model, x, 2000).numpy()
        labels = y.numpy()
        cm = confusion_matrix(probs.argmax(1), labels, k)
        robust: dict[str, list[tuple[float, float]]] = {}
        for kind, (_, values, fn) in PERTURBATIONS.items():
            robust[kind] = []
            for v in values:
                p = predict_proba(model, fn(x, v), 2000).argmax(1).numpy() if v else probs.argmax(1)
                robust[kind].append((v, 100.0 * float((p == labels).mean())))
    n_attack = min(max(attack_images, 0), len(x))
    attacked = attack_curves(model, x[:n_attack], y[:n_attack]) if n_attack else {}
    source = "bundled MNIST" if ds.source == "bundled" else f"{ds.name} ({ds.source})"
    # the config's name, validated as one safe directory name (never a path out of --out)
    ev = Evaluation(
        name=cfg.name,
        arch=cfg.model.arch,
        data_source=source,
        split=split,
        dataset=ds.name,
        class_names=list(datasets.classes_of(cfg)),
        accuracy=100.0 * float(np.trace(cm) / cm.sum()),
        calibration=calibration(probs, labels),
        confusion=cm,
        classes=per_class(cm),
        confused=most_confused(cm),
        robustness=robust,
        adversarial=attacked,
        attack_images=n_attack,
        first_layer=first_layer_units(model),
    )
    return ev, model, x, labels, probs, checksum


# ---------------------------------------------------------------- files and figures


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_evaluation(ev: Evaluation, directory: Path) -> None:
    """An evaluation's files in ``directory`` (atomic writes): summary.json, confusion.csv, per_class.csv,
    calibration.csv, robustness.csv, adversarial.csv (when attacked) and first_layer.npy; read back by
    :func:`read_evaluation`."""
    d = Path(directory)
    k = len(ev.confusion)
    atomic_write(
        d / "confusion.csv",
        _csv([{"true": t, **{f"pred_{p}": int(ev.confusion[t, p]) for p in range(k)}} for t in range(k)]),
    )
    atomic_write(d / "per_class.csv", _csv([{**c, "name": ev.class_names[int(c["class"])]} for c in ev.classes]))
    atomic_write(d / "calibration.csv", _csv(ev.calibration["bins"]))
    atomic_write(
        d / "robustness.csv",
        _csv(
            [
                {"perturbation": kind, "value": v, "accuracy": round(a, 3)}
                for kind, pts in ev.robustness.items()
                for v, a in pts
            ]
        ),
    )
    atomic_write(d / "summary.json", json.dumps(ev.summary(), indent=1) + "\n")
    if ev.adversarial:
        atomic_write(
            d / "adversarial.csv",
            _csv(
                [
                    {"attack": kind, "eps": v, "accuracy": round(a, 3), "images": ev.attack_images}
                    for kind, pts in ev.adversarial.items()
                    for v, a in pts
                ]
            ),
        )
    if ev.first_layer is not None:
        buf = io.BytesIO()
        np.save(buf, ev.first_layer)
        atomic_write(d / "first_layer.npy", buf.getvalue())  # the report redraws it in its language


def read_evaluation(directory: Path) -> Evaluation:
    """An evaluation from the files :func:`write_evaluation` wrote: the summary, the confusion matrix, the
    reliability bins and the first layer (per-class figures recomputed from the confusion matrix). A missing
    or damaged file is a :class:`MnistlabError` naming the directory."""
    d = Path(directory)
    try:
        s = json.loads((d / "summary.json").read_text())
        names = s.get("classes") or [str(c) for c in range(N_CLASSES)]  # evaluations of older versions: digits
        with (d / "confusion.csv").open() as f:
            cm = np.array([[int(r[f"pred_{p}"]) for p in range(len(names))] for r in csv.DictReader(f)], dtype=np.int64)
        with (d / "calibration.csv").open() as f:
            bins = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        units = np.load(d / "first_layer.npy")

        def points(curves: dict[str, list]) -> dict[str, list[tuple[float, float]]]:
            return {kind: [(v, a) for v, a in pts] for kind, pts in curves.items()}

        return Evaluation(
            name=s["name"],
            arch=s["arch"],
            data_source=s.get("data", ""),
            split=s["split"],
            dataset=s.get("dataset", "mnist"),
            class_names=list(names),
            accuracy=s["accuracy"],
            calibration={"ece": s["ece"], "nll": s["nll"], "bins": bins},
            confusion=cm,
            classes=per_class(cm),
            confused=s["most_confused"],
            robustness=points(s["robustness"]),
            adversarial=points(s.get("adversarial") or {}),
            attack_images=s.get("attack_images", 0),
            first_layer=units,
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MnistlabError(f"{d} is an incomplete evaluation ({e}); run mnistlab evaluate again") from None


def read_evaluations(directory: Path) -> list[Evaluation]:
    """Every evaluation in a ``mnistlab evaluate`` output directory (its ``NAME/`` folders, by name)."""
    d = Path(directory)
    found = (
        sorted((p for p in d.iterdir() if (p / "summary.json").is_file()), key=lambda p: p.name) if d.is_dir() else []
    )
    if not found:
        raise MnistlabError(f"{d} holds no evaluation (NAME/summary.json); run mnistlab evaluate first")
    return [read_evaluation(p) for p in found]


def confusion_figure(
    cm: np.ndarray, name: str, path: Path, lang: str = "en", labels: Sequence[str] | None = None
) -> None:
    """Counts and row-normalised confusion matrices side by side; ``labels``: the class names (default:
    the label numbers)."""
    from ..output.plots import language, save_figure, subplots, t

    k = len(cm)
    labels = [str(c) for c in range(k)] if labels is None else list(labels)
    wordy = any(len(label) > 3 for label in labels)  # names (Fashion-MNIST's), not symbols ("7", "C/c")
    with language(lang):
        side = max(5.0, 0.28 * k)  # 47 EMNIST classes need room
        fig, axes = subplots(
            1,
            2,
            figsize=(2.4 * side + (2 if wordy else 0) if k <= 20 else 2.2 * side, side + (1.2 if wordy else 0)),
            gridspec_kw={"wspace": 0.45 if wordy else 0.2},
        )  # room for the names between
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        for ax, mat, title, fmt in (
            (axes[0], cm, "{}: confusion matrix, counts", "d"),
            (axes[1], norm, "{}: confusion matrix, row-normalised (recall)", ".2f"),
        ):
            ax.imshow(mat, cmap="Blues")
            if k <= 20:  # numbers in the cells while they can be read
                for i in range(k):
                    for j in range(k):
                        ax.text(
                            j,
                            i,
                            format(mat[i, j], fmt),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if mat[i, j] > mat.max() / 2 else "black",
                        )
            ax.set(
                xlabel=t("predicted", lang),
                ylabel=t("true", lang),
                title=t(title, lang).format(name),
                xticks=range(k),
                yticks=range(k),
            )
            ax.set_xticklabels(
                labels, rotation=45 if wordy else 0, ha="right" if wordy else "center", fontsize=7 if k > 20 else None
            )
            ax.set_yticklabels(labels, fontsize=7 if k > 20 else None)
        save_figure(fig, path)


def reliability_figure(bins: list[dict[str, float]], ece: float, name: str, path: Path, lang: str = "en") -> None:
    from ..output.plots import language, save_figure, subplots, t

    with language(lang):
        fig, ax = subplots(figsize=(5.5, 5))
        ax.bar(
            [(b["low"] + b["high"]) / 2 for b in bins],
            [b["accuracy"] for b in bins],
            width=1 / ECE_BINS,
            edgecolor="black",
            alpha=0.7,
            label=t("accuracy in the bin", lang),
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label=t("perfect calibration", lang))
        ax.set(
            xlabel=t("confidence (max probability)", lang),
            ylabel=t("accuracy", lang),
            xlim=(0, 1),
            ylim=(0, 1),
            title=t("{}: reliability (ECE {})", lang).format(name, f"{ece_percent(ece)}%"),
        )
        ax.legend(loc="upper left")
        save_figure(fig, path)


def _image_grid(n: int, cell: tuple[float, float] = (1.2, 1.2), cols: int = 8) -> tuple[Any, Any]:
    """A figure of ``n`` image cells, ``cols`` a row, axes hidden: (figure, the axes, flat)."""
    from ..output.plots import subplots

    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, figsize=(cols * cell[0], rows * cell[1]), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def first_layer_figure(units: np.ndarray, name: str, path: Path, lang: str = "en") -> None:
    """(U, H, W) weight images: 28x28 per hidden unit of an MLP, or a CNN's filters."""
    from ..output.plots import language, save_figure, t

    title = (
        "{}: first-layer weights of 64 hidden units (28x28 each)"
        if units.shape[1:] == (28, 28)
        else "{}: first-layer filters ({})"
    )
    with language(lang):
        fig, grid = _image_grid(len(units))
        axes = list(grid)
        lim = float(np.percentile(np.abs(units), 99.5)) or 1.0  # one scale for all units, so one colour bar
        shown = [ax.imshow(u, cmap="seismic", vmin=-lim, vmax=lim) for ax, u in zip(axes, units, strict=False)]
        fig.colorbar(shown[0], ax=list(axes), shrink=0.6, label=t("weight", lang), extend="both")
        fig.suptitle(t(title, lang).format(name, f"{units.shape[1]}x{units.shape[2]}"))
        save_figure(fig, path)


def _first_layer(model: torch.nn.Module) -> torch.nn.Linear | torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))


def first_layer_units(model: torch.nn.Module) -> np.ndarray:
    """The first layer as images: an MLP's first 64 weight vectors as 28x28, or a CNN's first filters."""
    first = _first_layer(model)
    w = first.weight.detach().float()
    return (w[:64].reshape(-1, 28, 28) if isinstance(first, torch.nn.Linear) else w[:, 0]).numpy()


def plot_labels(ev: Evaluation) -> list[str]:
    """Class names for figures (KMNIST's romanisations: the default fonts have no kana)."""
    spec = datasets.REGISTRY.get(ev.dataset)
    if spec is not None and list(spec.classes) == ev.class_names:
        return list(spec.labels_for_plots)
    return ev.class_names


def _figures(
    ev: Evaluation, model: torch.nn.Module, x: torch.Tensor, probs: np.ndarray, labels: np.ndarray, out: Path
) -> None:
    from ..output.plots import save_figure

    names = plot_labels(ev)
    confusion_figure(ev.confusion, ev.name, out / "confusion.png", labels=names)
    wrong = np.nonzero(probs.argmax(1) != labels)[0]
    wrong = wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:24]
    if len(wrong):
        fig, axes = _image_grid(len(wrong), cell=(1.4, 1.7))
        for ax, i in zip(axes, wrong, strict=False):
            ax.imshow(x[i, 0].numpy(), cmap="gray")
            ax.set_title(f"true {names[labels[i]]}\nsaid {names[probs[i].argmax()]} ({probs[i].max():.0%})", fontsize=8)
        fig.suptitle(f"{ev.name}: the most confident mistakes")
        save_figure(fig, out / "mistakes.png")
    reliability_figure(ev.calibration["bins"], ev.calibration["ece"], ev.name, out / "reliability.png")
    first_layer_figure(first_layer_units(model), ev.name, out / "first_layer.png")
    first = _first_layer(model)
    if isinstance(first, torch.nn.Conv2d):
        with torch.inference_mode():
            maps = first(x[:1])[0]  # (C, H, W) before the activation
        fig, axes = _image_grid(len(maps))
        for ax, m in zip(axes, maps, strict=False):
            ax.imshow(m.float().numpy(), cmap="viridis")
        fig.suptitle(f"{ev.name}: first-layer feature maps of one test digit")
        save_figure(fig, out / "feature_maps.png")


def robustness_figure(series: list[tuple[str, dict[str, list]]], path: Path, lang: str = "en") -> None:
    """Accuracy against each perturbation, one line per (label, robustness) (MLP vs CNN on one plot); the
    yes/no inversion as bars. The legend sits below the panels, never over a curve."""
    from ..output.plots import language, save_figure, series_styles, subplots, t

    styles = series_styles(len(series))
    with language(lang):
        fig, axes = subplots(
            1, len(PERTURBATIONS), figsize=(4.2 * len(PERTURBATIONS), 4), layout="constrained", sharey=True
        )
        for ax, (kind, (label, _values, _)) in zip(axes, PERTURBATIONS.items(), strict=True):
            if kind == "inverted":  # a yes/no case: grouped bars, not a line through "0.5 inverted"
                width = 0.8 / len(series)
                for i, ((_name, robust), style) in enumerate(zip(series, styles, strict=True)):
                    ax.bar(
                        [v + (i - (len(series) - 1) / 2) * width for v, _ in robust[kind]],
                        [a for _, a in robust[kind]],
                        width,
                        color=style["color"],
                    )
                ax.set_xticks([0, 1], [t("no", lang), t("yes", lang)])
                ax.set_xlabel(t("inverted", lang))
            else:
                for (name, robust), style in zip(series, styles, strict=True):
                    pts = robust[kind]
                    ax.plot([v for v, _ in pts], [a for _, a in pts], marker="o", ms=3, label=name, **style)
                ax.set_xlabel(t(label, lang))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(t("accuracy (%)", lang))
        fig.legend(
            *axes[0].get_legend_handles_labels(),
            loc="outside lower center",
            fontsize=9,
            frameon=False,
            ncol=min(len(series), 3),
        )
        fig.suptitle(t("Robustness: accuracy under perturbations of the evaluation images", lang))
        save_figure(fig, path)


def ece_percent(ece: float) -> str:
    """The expected calibration error as every output prints it: a percentage with two decimals."""
    return f"{100 * ece:.2f}"


def adversarial_figure(series: list[tuple[str, dict[str, list]]], images: int, path: Path, lang: str = "en") -> None:
    """Accuracy against the L-inf radius of each attack (FGSM, PGD), one line per (label, adversarial curves);
    ``images``: how many images the attacks used (named in the title)."""
    from ..output.plots import language, save_figure, subplots, t

    with language(lang):
        fig, axes = subplots(1, len(ATTACK_LABELS), figsize=(4.6 * len(ATTACK_LABELS), 4))
        for ax, (kind, label) in zip(axes, ATTACK_LABELS.items(), strict=True):
            for name, curves in series:
                pts = curves[kind]
                ax.plot([v for v, _ in pts], [a for _, a in pts], marker="o", ms=3, label=name)
            ax.set(
                title=label,
                xlabel=t("L-inf radius eps (pixels in [0, 1])", lang),
                ylabel=t("accuracy (%)", lang),
                ylim=(0, 100),
            )
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, loc="lower left")
        fig.suptitle(t("Adversarial robustness: accuracy under attack, first {} images", lang).format(f"{images:,}"))
        save_figure(fig, path)


def adversarial_row(ev: Evaluation) -> list[str]:
    """An attacked evaluation as a table row: run, model, images, clean accuracy, then the accuracy under each
    attack of :data:`ATTACK_LABELS` at each radius > 0 (the evaluate command's adversarial.md and the report's
    section 6); points looked up by radius."""
    acc = {k: {float(v): a for v, a in pts} for k, pts in ev.adversarial.items()}
    eps = [e for e in ATTACK_EPS if e]
    return [
        ev.name,
        ev.arch,
        f"{ev.attack_images:,}",
        f"{acc['fgsm'][0.0]:.2f}",
        *(f"{acc[k][e]:.2f}" for k in ATTACK_LABELS for e in eps),
    ]


def adversarial_table(evals: list[Evaluation]) -> str:
    """Markdown: clean accuracy and accuracy under FGSM and PGD at each radius > 0, a row per run."""
    eps = [e for e in ATTACK_EPS if e]
    lines = [
        "| run | model | images | clean % | "
        + " | ".join(f"{ATTACK_LABELS[k]} {e} %" for k in ATTACK_LABELS for e in eps)
        + " |",
        "| --- | --- | ---: | ---: |" + " ---: |" * (len(ATTACK_LABELS) * len(eps)),
    ]
    lines += ["| " + " | ".join([md_cell(ev.name), *adversarial_row(ev)[1:]]) + " |" for ev in evals if ev.adversarial]
    return "\n".join(lines) + "\n"


def _log_adversarial(ev: Evaluation, total: int, log: Callable[[str], None]) -> None:
    if not ev.adversarial:
        log(f"{ev.name}: no adversarial attacks (--attack-images 0)")
        return
    acc = {k: dict(pts) for k, pts in ev.adversarial.items()}
    eps = [e for e in ATTACK_EPS if e]
    log(
        f"{ev.name}: adversarial accuracy on the first {ev.attack_images:,} of {total:,} {ev.split} images "
        f"(--attack-images to change): clean {acc['fgsm'][0.0]:.1f}%; "
        + "; ".join(
            f"{ATTACK_LABELS[k]} eps {'/'.join(map(str, eps))}: " + "/".join(f"{acc[k][e]:.1f}" for e in eps) + "%"
            for k in ATTACK_LABELS
        )
    )


def evaluate_runs(
    paths: list[Path],
    out: Path,
    split: str = "test",
    log: Callable[[str], None] = print,
    attack_images: int = ATTACK_IMAGES,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
) -> list[Evaluation]:
    """Evaluate each run into ``out/NAME/``; with several, also ``out/compare.md/.json`` and one robustness plot,
    and ``out/adversarial.md/.png`` side by side. The FGSM and PGD attacks use the first ``attack_images``
    images of the split (0 skips them). Runs of the same name get ``NAME_2``, ``NAME_3``... in the order given;
    each log line names its run directory. ``data_dir``, ``dataset``: see :func:`evaluate_run`.

    Every run and its data (dataset and checksum) are checked before anything is written, and ``out`` is
    made only then: a refusal leaves no output (not one run evaluated, nor an empty folder)."""
    if attack_images < 0:
        raise MnistlabError(f"--attack-images must be >= 0 (0 skips the attacks), got {attack_images}")
    if dataset is not None:
        datasets.get(dataset)  # an unknown name, before any work
    runs: list[Loaded] = []
    for path in paths:
        model, cfg, ds = load_run(Path(path), split, data_dir, dataset)
        if runs and ds.checksum != runs[0][2].checksum:
            raise MnistlabError(
                f"{path} was trained on other data ({cfg.data.dataset}, SHA-256 {ds.checksum[:12]}...) than "
                f"{paths[0]} ({runs[0][1].data.dataset}, {runs[0][2].checksum[:12]}...): a comparison needs one "
                f"dataset; nothing written"
            )
        runs.append((model, cfg, runs[0][2] if runs else ds))  # one copy of the shared data
    evals: list[Evaluation] = []
    out.mkdir(parents=True, exist_ok=True)
    for path, loaded in zip(paths, runs, strict=True):
        ev, model, x, labels, probs, _ = evaluate_run(Path(path), split, attack_images, data_dir, dataset, loaded)
        name, k = ev.name, 2
        while name in {e.name for e in evals}:
            name, k = f"{ev.name}_{k}", k + 1
        ev.name = name
        d = out / name
        d.mkdir(exist_ok=True)
        write_evaluation(ev, d)
        _figures(ev, model, x, probs, labels, d)
        robustness_figure([(f"{ev.name} ({ev.arch})", ev.robustness)], d / "robustness.png")
        if ev.adversarial:
            adversarial_figure([(f"{ev.name} ({ev.arch})", ev.adversarial)], ev.attack_images, d / "adversarial.png")
        log(
            f"{name} ({path}; {ev.arch}, {split}) -> {d}/: accuracy {ev.accuracy:.2f}%, "
            f"ECE {ece_percent(ev.calibration['ece'])}%, "
            f"NLL {ev.calibration['nll']:.4f}; most confused "
            + ", ".join(
                f"{ev.class_names[c['true']]}->{ev.class_names[c['predicted']]} ({c['count']})" for c in ev.confused[:3]
            )
            + "; "
            + ", ".join(
                f"{label} {accuracy:.1f}%"
                for (_, _, label), accuracy in zip(HEADLINE, headline_robustness(ev.robustness), strict=True)
            )
        )
        _log_adversarial(ev, len(labels), log)
        evals.append(ev)
    if len(evals) > 1:
        robustness_figure([(f"{e.name} ({e.arch})", e.robustness) for e in evals], out / "robustness.png")
        atomic_write(out / "compare.json", json.dumps([e.summary() for e in evals], indent=1) + "\n")
        atomic_write(out / "compare.md", compare_table(evals))
        attacked = [e for e in evals if e.adversarial]
        if attacked:
            atomic_write(out / "adversarial.md", adversarial_table(attacked))
            adversarial_figure(
                [(f"{e.name} ({e.arch})", e.adversarial) for e in attacked],
                min(e.attack_images for e in attacked),
                out / "adversarial.png",
            )
    return evals


COMPARE_COLUMNS = (
    "run",
    "model",
    "accuracy %",
    "ECE %",
    "NLL",
    *(f"{label} %" for _, _, label in HEADLINE),
)


def compare_row(ev: Evaluation) -> list[str]:
    """One evaluation as a row of :data:`COMPARE_COLUMNS` (the evaluate command's compare.md and the report's
    section 6 table)."""
    return [
        ev.name,
        ev.arch,
        f"{ev.accuracy:.2f}",
        ece_percent(ev.calibration["ece"]),
        f"{ev.calibration['nll']:.4f}",
        *(f"{a:.2f}" for a in headline_robustness(ev.robustness)),
    ]


def compare_table(evals: list[Evaluation]) -> str:
    """Markdown: a :func:`compare_row` per evaluation."""
    lines = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "| --- | --- |" + " ---: |" * (len(COMPARE_COLUMNS) - 2)]
    lines += ["| " + " | ".join([md_cell(ev.name), *compare_row(ev)[1:]]) + " |" for ev in evals]
    return "\n".join(lines) + "\n"
