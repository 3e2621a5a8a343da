"""Figures rebuilt from history files: accuracy and loss per epoch, and study overlays.

Figures are plain :class:`matplotlib.figure.Figure` objects written straight to PNG: mnistlab never imports
pyplot nor selects a backend, so importing it leaves the caller's matplotlib as it was (a notebook's inline
figures keep showing)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import matplotlib
from matplotlib.figure import Figure

from ..core.metrics import convergence_epoch
from ..core.runs import atomic_write

# figure text in Korean, for the Korean report (keys are the English text; {} marks a value)
KO = {
    "Accuracy per epoch": "에폭별 정확도",
    "{}: accuracy per epoch": "{}: 에폭별 정확도",
    "Loss per epoch": "에폭별 손실",
    "{}: loss per epoch": "{}: 에폭별 손실",
    "validation accuracy": "검증 정확도",
    "test accuracy": "테스트 정확도",
    "epoch": "에폭",
    "accuracy (%)": "정확도 (%)",
    "converged: epoch {}": "수렴: {} 에폭",
    "converged (epoch {})": "수렴 ({} 에폭)",
    "training loss (epoch mean)": "학습 손실 (에폭 평균)",
    "validation loss": "검증 손실",
    "test loss": "테스트 손실",
    "cross-entropy": "교차 엔트로피",
    "validation accuracy (%)": "검증 정확도 (%)",
    "Validation accuracy per epoch (mean over seeds, min-max band)": "에폭별 검증 정확도 (시드 평균, 최솟값~최댓값 띠)",
    "activation functions f(x)": "활성화 함수 f(x)",
    "derivatives f'(x)": "도함수 f'(x)",
    "epoch (0 = initialisation)": "에폭 (0 = 초기화)",
    "dead hidden units (%)": "죽은 은닉 노드 (%)",
    "Units that output 0 for all 6,000 validation images": "검증 이미지 6,000장 모두에 0을 출력하는 노드",
    "{}, at initialisation": "{}, 초기화 직후",
    "{}, after training": "{}, 학습 후",
    "layer (1 = next to the input)": "층 (1 = 입력 바로 다음)",
    "||dL/dW|| (log scale)": "||dL/dW|| (로그 눈금)",
    "Weight-gradient norm per layer, {} hidden layers": "층별 가중치 기울기 노름, 은닉층 {}개",
    "predicted": "예측",
    "true": "실제",
    "{}: confusion matrix, counts": "{}: 혼동 행렬, 개수",
    "{}: confusion matrix, row-normalised (recall)": "{}: 혼동 행렬, 행 정규화 (재현율)",
    "confidence (max probability)": "확신도 (최대 확률)",
    "accuracy": "정확도",
    "accuracy in the bin": "구간의 정확도",
    "perfect calibration": "완벽한 보정",
    "{}: reliability (ECE {})": "{}: 신뢰도 (ECE {})",
    "shift (pixels)": "이동 (픽셀)",
    "rotation (degrees)": "회전 (도)",
    "Gaussian noise (std)": "가우스 잡음 (표준편차)",
    "inverted (0 = no, 1 = yes)": "반전 (0 = 아니오, 1 = 예)",
    "inverted": "반전",
    "no": "아니오",
    "yes": "예",
    "weight": "가중치",
    "Robustness: accuracy under perturbations of the evaluation images": "강건성: 평가 이미지를 교란했을 때의 정확도",
    "{}: first-layer weights of 64 hidden units (28x28 each)": "{}: 은닉 노드 64개의 첫 층 가중치 (각 28x28)",
    "{}: first-layer filters ({})": "{}: 첫 층 필터 ({})",
    "L-inf radius eps (pixels in [0, 1])": "L-inf 반지름 eps (픽셀 범위 [0, 1])",
    "Adversarial robustness: accuracy under attack, first {} images": "적대적 강건성: 공격받았을 때의 정확도, 처음 {}장",
}


def t(text: str, lang: str = "en") -> str:
    """A figure's text in ``lang`` ("en" or "ko")."""
    return KO.get(text, text) if lang == "ko" else text


@contextmanager
def language(lang: str = "en") -> Iterator[None]:
    """Figures drawn inside use a font that has the language's letters (NanumGothic for Korean, from the
    report extra's koreanize-matplotlib)."""
    if lang != "ko":
        yield
        return
    import importlib.util

    # the package is found, not imported: importing it would restyle every figure of the process
    spec = importlib.util.find_spec("koreanize_matplotlib")
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / "fonts" / "NanumGothic.ttf" if locations else None
    if path is None or not path.is_file():
        from ..errors import MnistlabError

        raise MnistlabError("the Korean report needs its font: pip install 'mnistlab[report]'")
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(path))
    name = font_manager.FontProperties(fname=path).get_name()
    # DejaVu Sans first: it has the minus sign that log-scale tick labels (mathtext) need; Hangul falls
    # back to NanumGothic, glyph by glyph
    with matplotlib.rc_context({"font.family": ["DejaVu Sans", name]}):
        yield


def subplots(
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float] | None = None,
    layout: Literal["constrained", "compressed", "tight"] | None = None,
    **kwargs: Any,
) -> tuple[Figure, Any]:
    """A new figure and its axes, like ``pyplot.subplots`` but outside pyplot (no backend, no global state)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def series_styles(n: int) -> list[dict[str, Any]]:
    """Line styles that tell ``n`` series apart: tab10's colours up to 10 series, tab20's up to 20, then
    tab20's colours again with dashed and dotted lines (matplotlib's default cycle repeats after 10)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    assert isinstance(cmap, ListedColormap)  # tab10 and tab20 are lists of colours
    colours = list(cmap.colors)  # type: ignore[arg-type]  # a list of RGB tuples; the stubs type it as any array
    dashes = ["-", "--", ":", "-."]
    return [
        {"color": colours[i % len(colours)], "linestyle": dashes[(i // len(colours)) % len(dashes)]} for i in range(n)
    ]


def save_figure(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    atomic_write(path, buf.getvalue())


def _column(history: Sequence[dict[str, Any]], key: str) -> list[float | None]:
    return [row.get(key) for row in history]


def _present(values: Sequence[float | None]) -> bool:
    return any(v is not None for v in values)


def accuracy_figure(history: Sequence[dict[str, Any]], path: Path, title: str = "", lang: str = "en") -> int | None:
    """The report's graph: validation and test accuracy per epoch, convergence epoch marked."""
    epochs = _column(history, "epoch")
    val, test = _column(history, "val_acc"), _column(history, "test_acc")
    conv = convergence_epoch(val) if _present(val) else None
    fig, ax = subplots(figsize=(7, 4.2))
    if _present(val):
        ax.plot(epochs, val, marker="o", ms=3, label=t("validation accuracy", lang))
    ax.plot(epochs, test, marker="s", ms=3, label=t("test accuracy", lang))
    if conv is not None:  # in the legend: a label on the plot hides behind it or falls off the right edge
        ax.axvline(conv, color="grey", ls="--", lw=1, label=t("converged: epoch {}", lang).format(conv))
    ax.set(xlabel=t("epoch", lang), ylabel=t("accuracy (%)", lang), title=title or t("Accuracy per epoch", lang))
    _integer_epochs(ax, epochs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)
    return conv


def _integer_epochs(ax: Any, epochs: Sequence[float | None] = ()) -> None:
    """Whole-epoch ticks, also for runs of a few epochs (matplotlib would put ticks at 1.5, 2.5...)."""
    from matplotlib.ticker import MaxNLocator

    if 0 < len(epochs) <= 12:
        ax.set_xticks(list(epochs))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_figure(history: Sequence[dict[str, Any]], path: Path, title: str = "", lang: str = "en") -> None:
    epochs = _column(history, "epoch")
    fig, ax = subplots(figsize=(7, 4.2))
    for key, label in (
        ("train_loss", "training loss (epoch mean)"),
        ("val_loss", "validation loss"),
        ("test_loss", "test loss"),
    ):
        values = _column(history, key)
        if _present(values):
            ax.plot(epochs, values, marker="o", ms=3, label=t(label, lang))
    conv = convergence_epoch(_column(history, "val_acc")) if _present(_column(history, "val_acc")) else None
    if conv is not None:
        ax.axvline(conv, color="grey", ls="--", lw=1, label=t("converged (epoch {})", lang).format(conv))
    ax.set(
        xlabel=t("epoch", lang), ylabel=t("cross-entropy", lang), title=title or t("Loss per epoch", lang), yscale="log"
    )
    _integer_epochs(ax, epochs)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper right")
    save_figure(fig, path)


def run_figures(
    history: Sequence[dict[str, Any]], run_dir: Path, name: str = "", lang: str = "en", prefix: str = ""
) -> int | None:
    """Write PREFIXaccuracy.png and PREFIXloss.png into ``run_dir``; returns the convergence epoch."""
    with language(lang):
        conv = accuracy_figure(
            history,
            Path(run_dir) / f"{prefix}accuracy.png",
            t("{}: accuracy per epoch", lang).format(name) if name else "",
            lang,
        )
        loss_figure(
            history,
            Path(run_dir) / f"{prefix}loss.png",
            t("{}: loss per epoch", lang).format(name) if name else "",
            lang,
        )
    return conv


def overlay_figure(
    curves: dict[str, list[list[float]]],
    path: Path,
    ylabel: str = "validation accuracy (%)",
    title: str = "",
    lang: str = "en",
) -> None:
    """One line per label (the mean over its seeds) with a band from the min to the max seed."""
    with language(lang):
        _overlay(curves, path, ylabel, title, lang)


def _overlay(curves: dict[str, list[list[float]]], path: Path, ylabel: str, title: str, lang: str) -> None:
    fig, ax = subplots(figsize=(8, 5))
    for (label, runs), style in zip(curves.items(), series_styles(len(curves)), strict=True):
        n = min(len(r) for r in runs)
        cols = [[r[i] for r in runs] for i in range(n)]
        mean = [sum(c) / len(c) for c in cols]
        x = list(range(1, n + 1))
        (line,) = ax.plot(x, mean, lw=1.5, label=label, **style)
        if len(runs) > 1:
            ax.fill_between(x, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.15)
    ax.set(xlabel=t("epoch", lang), ylabel=t(ylabel, lang), title=t(title, lang))
    _integer_epochs(ax)
    lo = min(min(r[len(r) // 3 :] or r) for runs in curves.values() for r in runs)
    ax.set_ylim(max(lo - 0.3, 0), None)
    ax.grid(alpha=0.3)
    # below the axes, in columns: readable at any number of configs and never over the curves
    ax.legend(
        fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2 if len(curves) > 4 else 1, frameon=False
    )
    save_figure(fig, path)
