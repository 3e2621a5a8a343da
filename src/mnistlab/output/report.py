"""The homework, written from real runs: Markdown (LaTeX math, PNGs beside it) and one self-contained HTML
file (figures embedded, math as MathML, no scripts or external styles), in English or Korean."""

from __future__ import annotations

import base64
import html
import math
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.metrics import BAND, WINDOW, summarize
from ..core.runs import RunDir, atomic_write, validation_curves
from ..errors import MnistlabError
from ..text import md_cell, plural
from .plots import overlay_figure, run_figures

if TYPE_CHECKING:
    from ..analysis.evaluate import Evaluation

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Artificial Neural Networks on {dataset}: a report generated from real runs",
        "intro": "This report answers the four questions of the KECE470 homework (data, activation functions, "
        "the MLP and backpropagation, training and evaluation) with numbers and figures produced by "
        "mnistlab from the runs listed below. Every number here was measured; none was typed in.",
        "data": "1. Data and validation split",
        "data_text": "{dataset}'s {n_train:,} training images are split at random (seed {seed}) into a training set "
        "and a validation set holding {val_pct:.0f}% of them; the {n_test:,} test images are used only to "
        "report accuracy, never to choose an epoch or a setting.",
        "split": "split",
        "images": "images",
        "role": "role",
        "train_set": "train",
        "val_set": "validation",
        "test_set": "test",
        "trainval_set": "train + validation",
        "model": "model",
        "optimizer": "optimizer",
        "batch_epochs": "batch size / epochs",
        "precision_seed": "precision / seed",
        "parameters": "parameters",
        "train_role": "fits the weights",
        "val_role": "chooses epochs and settings",
        "test_role": "reports the final accuracy",
        "checksum": "Data SHA-256 (decompressed IDX files): `{sha}`; source: {source}.",
        "bundled": "the MNIST bundled with mnistlab",
        "act": "2. Activation functions",
        "act_text": "An activation function makes the network non-linear: without it a stack of linear layers is "
        "one linear map, however deep. It decides how strongly each unit passes its input on; its "
        "derivative decides how much gradient flows back through the unit.",
        "act_defs": "Definitions (the report's four, then two modern ones):",
        "act_fig": "The functions and their derivatives.",
        "act_notes": "Sigmoid and tanh saturate: for large |x| their derivative is almost 0, so gradients vanish "
        "through many layers (sigmoid's derivative is at most 1/4). ReLU's derivative is exactly 1 for "
        "x > 0, cheap to compute and non-saturating, but a unit whose input is negative for every "
        "image gets no gradient and stays at 0 (a dead ReLU). Leaky ReLU keeps a small slope (0.01) "
        "for x < 0 so that no unit can die.",
        "act_measured": "Measured ({epochs} per run):",
        "dead_text": "Dead hidden units of the report's MLP (units that output 0 for all 6,000 validation images): "
        "{dead}.",
        "grad_text": "Weight-gradient norms per layer of an MLP with {depth} hidden layers of {width} units at "
        "initialisation: sigmoid, layer 1 / top layer = {s_ratio:.1e}; ReLU = {r_ratio:.1e}. "
        "Validation accuracy after training: sigmoid {s_acc:.1f}%, ReLU {r_acc:.1f}%.",
        "act_missing": "Run `mnistlab activations` and pass its directory with `--activations` to include measured "
        "dead-unit and gradient-norm figures.",
        "mlp": "3. The multilayer perceptron and backpropagation",
        "mlp_text": "Each layer computes a weighted sum of its inputs plus a bias, then an activation. For the "
        "report's 784-1024-10 network with input x (784 pixels in [0, 1]):",
        "loss_text": "Training minimises the mean cross-entropy of the softmax over a batch of B images:",
        "bp_text": "Backpropagation applies the chain rule from the loss back to every weight. With "
        "$\\delta$ denoting the gradient of the loss with respect to a layer's pre-activation:",
        "sgd_text": "and stochastic gradient descent moves every parameter against its gradient with learning "
        "rate $\\eta$:",
        "gc_text": "mnistlab's NumPy MLP (`mnistlab.core.numpy_mlp`) implements exactly these equations. Checked "
        "against PyTorch float64 autograd and central finite differences (`mnistlab gradcheck`), "
        "largest relative errors per activation:",
        "act_col": "activation",
        "ag_col": "vs autograd",
        "fd_col": "vs finite differences",
        "train": "4. Training and evaluation",
        "run_config": "Configuration",
        "curves_acc": "Validation and test accuracy per epoch (the convergence epoch marked).",
        "curves_loss": "Training, validation and test loss per epoch (cross-entropy, log scale).",
        "conv_text": "Convergence: validation accuracy stays within ±{band} points of its last-{window}-epoch mean "
        "({plateau:.2f}%) from epoch **{conv}** on. The best validation accuracy, {best_val:.2f}%, is "
        "at epoch {best}; the test accuracy there is **{test_at_best:.2f}%** (final epoch: "
        "{final_test:.2f}%).",
        "no_val": "This run trained on training + validation data; the last epoch is its model (test accuracy "
        "{final_test:.2f}%).",
        "too_short": "Convergence cannot be judged from {epochs} epoch{s} (the rule needs at least {window}). The best "
        "validation accuracy, {best_val:.2f}%, is at epoch {best}; the test accuracy there is "
        "**{test_at_best:.2f}%** (final epoch: {final_test:.2f}%).",
        "diverged": "**Training diverged at epoch {epoch}**: the mean training loss became NaN or infinite and the run "
        "stopped there.",
        "diverged_best": "Before that, the best validation accuracy was {best_val:.2f}% at epoch {best} (test accuracy "
        "there {test_at_best:.2f}%); those weights are the run's model.",
        "epoch_cols": "epoch|train loss|val loss|val acc %|test loss|test acc %",
        "inside_cols": "run|model|accuracy %|ECE %|NLL|shift 3 px %|rotation 30° %|noise 0.3 %|inverted %",
        "epoch_table": "Per-epoch numbers",
        "improve": "5. Doing better than the report's MLP",
        "improve_text": "Each row is a config run over several seeds (mean ± standard deviation); every run is "
        "read at its best-validation epoch, so the test set chooses nothing.",
        "improve_fig": "Validation accuracy per epoch, mean over seeds (band: min to max).",
        "inside": "6. Inside the trained models",
        "inside_text": "From `mnistlab evaluate` on the best-validation weights, on the {split} split: accuracy, "
        "expected calibration error (15 bins) and negative log-likelihood, and accuracy when the "
        "images are shifted right and down by 3 pixels, rotated by 30 degrees, given Gaussian noise "
        "of standard deviation 0.3, or inverted.",
        "inside_conf": "Confusion matrix of {name} (rows: true class, columns: prediction).",
        "inside_rel": "Reliability of {name}: accuracy against confidence; the diagonal is perfect calibration.",
        "inside_rob": "Accuracy under perturbations, every evaluated model on one plot.",
        "inside_adv": "Adversarial robustness, on the first {images} {split} images: accuracy when each image is "
        "moved within an L-inf ball of radius eps (pixels in [0, 1]) to raise the model's loss, by "
        "one signed-gradient step (FGSM, Goodfellow et al. 2015) or by {steps} projected steps of "
        "{step} from a random start (PGD, Madry et al. 2018's MNIST protocol). An adversarially "
        "trained CNN keeps about 89% under PGD at eps 0.3 (Madry et al.); an undefended model keeps "
        "almost nothing.",
        "inside_adv_fig": "Accuracy under FGSM and PGD against the radius eps, every evaluated model on one plot.",
        "inside_first": "What the first layer of {name} learned.",
        "inside_pairs": "Most confused pairs of {name} (true -> predicted, count): {pairs}.",
        "repro": "Reproducibility",
        "repro_text": "seed {seed}, torch {torch}, Python {python}, {threads} threads on {device}; the config is "
        "`config.toml` in `{path}`.",
        "key": "key",
        "value": "value",
    },
    "ko": {
        "title": "{dataset} 인공신경망 실험: 실제 실행 결과로 작성한 보고서",
        "intro": "이 보고서는 KECE470 과제의 네 가지 질문(데이터, 활성화 함수, MLP와 역전파, 학습과 평가)에 "
        "아래 실행들로 mnistlab이 만든 수치와 그림으로 답한다. 모든 수치는 측정값이며 손으로 입력한 값은 없다.",
        "data": "1. 데이터와 검증 세트 분할",
        "data_text": "{dataset} 학습 이미지 {n_train:,}개를 무작위로(시드 {seed}) 학습 세트와 그 {val_pct:.0f}%인 검증 세트로 "
        "나눈다. 테스트 이미지 {n_test:,}개는 정확도 보고에만 쓰고, 에폭이나 설정을 고르는 데는 쓰지 않는다.",
        "split": "세트",
        "images": "이미지 수",
        "role": "역할",
        "train_set": "학습",
        "val_set": "검증",
        "test_set": "테스트",
        "trainval_set": "학습 + 검증",
        "model": "모델",
        "optimizer": "최적화",
        "batch_epochs": "배치 크기 / 에폭",
        "precision_seed": "정밀도 / 시드",
        "parameters": "파라미터 수",
        "train_role": "가중치 학습",
        "val_role": "에폭과 설정 선택",
        "test_role": "최종 정확도 보고",
        "checksum": "데이터 SHA-256 (압축 해제한 IDX 파일): `{sha}`; 출처: {source}.",
        "bundled": "mnistlab에 포함된 MNIST",
        "act": "2. 활성화 함수",
        "act_text": "활성화 함수는 신경망에 비선형성을 더한다. 활성화 함수가 없으면 선형 층을 아무리 깊게 쌓아도 하나의 "
        "선형 변환일 뿐이다. 활성화 함수는 각 노드가 입력을 얼마나 강하게 다음 층으로 전달할지 정하고, "
        "그 도함수는 역전파 때 노드를 통해 흐르는 기울기의 크기를 정한다.",
        "act_defs": "정의 (보고서의 네 함수와 최근에 쓰이는 두 함수):",
        "act_fig": "활성화 함수와 그 도함수.",
        "act_notes": "Sigmoid와 tanh는 포화된다. |x|가 크면 도함수가 거의 0이 되어 여러 층을 거치며 기울기가 사라진다 "
        "(sigmoid의 도함수는 최대 1/4). ReLU의 도함수는 x > 0에서 정확히 1이라 계산이 간단하고 포화되지 "
        "않지만, 모든 이미지에서 입력이 음수인 노드는 기울기를 받지 못해 0에 머문다(죽은 ReLU). "
        "Leaky ReLU는 x < 0에서 작은 기울기(0.01)를 남겨 노드가 죽지 않게 한다.",
        "act_measured": "측정 결과 (실행마다 {epochs} 에폭):",
        "dead_text": "보고서 MLP의 죽은 은닉 노드 (검증 이미지 6,000개 모두에서 0을 출력하는 노드): {dead}.",
        "grad_text": "은닉층 {depth}개(각 {width} 노드)인 MLP의 초기화 시점 층별 가중치 기울기 노름: sigmoid는 "
        "1층 / 최상위 층 = {s_ratio:.1e}, ReLU는 {r_ratio:.1e}. 학습 후 검증 정확도: sigmoid "
        "{s_acc:.1f}%, ReLU {r_acc:.1f}%.",
        "act_missing": "죽은 노드와 기울기 노름 측정 그림을 넣으려면 `mnistlab activations`를 실행하고 그 디렉터리를 "
        "`--activations`로 넘긴다.",
        "mlp": "3. 다층 퍼셉트론과 역전파",
        "mlp_text": "각 층은 입력의 가중합에 편향을 더한 뒤 활성화 함수를 적용한다. 보고서의 784-1024-10 신경망에서 "
        "입력 x(0~1 범위의 픽셀 784개)에 대해:",
        "loss_text": "학습은 배치 B개 이미지에 대한 softmax 교차 엔트로피의 평균을 최소화한다:",
        "bp_text": "역전파는 연쇄 법칙으로 손실에서 모든 가중치까지 기울기를 거꾸로 전달한다. "
        "$\\delta$를 각 층의 활성화 이전 값에 대한 손실의 기울기라 하면:",
        "sgd_text": "확률적 경사 하강법은 학습률 $\\eta$로 모든 파라미터를 기울기의 반대 방향으로 움직인다:",
        "gc_text": "mnistlab의 NumPy MLP(`mnistlab.core.numpy_mlp`)는 위 식을 그대로 구현한다. PyTorch float64 자동 미분과 "
        "중심 차분으로 검증한 결과(`mnistlab gradcheck`), 활성화 함수별 최대 상대 오차:",
        "act_col": "활성화 함수",
        "ag_col": "자동 미분 대비",
        "fd_col": "유한 차분 대비",
        "train": "4. 학습과 평가",
        "run_config": "설정",
        "curves_acc": "에폭별 검증·테스트 정확도 (수렴 에폭 표시).",
        "curves_loss": "에폭별 학습·검증·테스트 손실 (교차 엔트로피, 로그 눈금).",
        "conv_text": "수렴: 에폭 **{conv}**부터 검증 정확도가 마지막 {window} 에폭 평균({plateau:.2f}%)의 ±{band}%p 안에 "
        "머문다. 최고 검증 정확도 {best_val:.2f}%는 에폭 {best}이며, 그때의 테스트 정확도는 "
        "**{test_at_best:.2f}%**이다 (마지막 에폭: {final_test:.2f}%).",
        "no_val": "이 실행은 학습+검증 데이터로 학습했으므로 마지막 에폭이 모델이다 (테스트 정확도 {final_test:.2f}%).",
        "too_short": "{epochs} 에폭으로는 수렴을 판단할 수 없다 (규칙은 최소 {window} 에폭이 필요하다). 최고 검증 정확도 "
        "{best_val:.2f}%는 에폭 {best}이며, 그때의 테스트 정확도는 **{test_at_best:.2f}%**이다 "
        "(마지막 에폭: {final_test:.2f}%).",
        "diverged": "**에폭 {epoch}에서 학습이 발산했다**: 평균 학습 손실이 NaN 또는 무한대가 되어 실행이 그 자리에서 멈췄다.",
        "diverged_best": "그 전까지 최고 검증 정확도는 에폭 {best}의 {best_val:.2f}%였고 (그때의 테스트 정확도 "
        "{test_at_best:.2f}%), 그 가중치가 이 실행의 모델이다.",
        "epoch_cols": "에폭|학습 손실|검증 손실|검증 정확도 %|테스트 손실|테스트 정확도 %",
        "inside_cols": "실행|모델|정확도 %|ECE %|NLL|3픽셀 이동 %|30도 회전 %|잡음 0.3 %|반전 %",
        "epoch_table": "에폭별 수치",
        "improve": "5. 보고서의 MLP보다 잘하기",
        "improve_text": "각 행은 여러 시드로 실행한 설정이다(평균 ± 표준편차). 모든 실행은 검증 정확도가 가장 높은 에폭에서 "
        "읽으므로 테스트 세트는 아무것도 고르지 않는다.",
        "improve_fig": "에폭별 검증 정확도, 시드 평균 (띠: 최솟값~최댓값).",
        "inside": "6. 학습된 모델의 속",
        "inside_text": "검증 정확도가 가장 높은 가중치로 {split} 세트에서 `mnistlab evaluate`를 실행한 결과: 정확도, "
        "기대 보정 오차(15구간)와 음의 로그 가능도, 그리고 이미지를 오른쪽 아래로 3픽셀 옮기거나 30도 "
        "회전하거나 표준편차 0.3의 가우스 잡음을 더하거나 반전했을 때의 정확도.",
        "inside_conf": "{name}의 혼동 행렬 (행: 실제 클래스, 열: 예측).",
        "inside_rel": "{name}의 신뢰도 그림: 확신도에 따른 정확도, 대각선이 완벽한 보정이다.",
        "inside_rob": "교란에 따른 정확도, 평가한 모든 모델을 한 그림에.",
        "inside_adv": "적대적 강건성 ({split} 세트의 처음 {images}장): 각 이미지를 반지름 eps(픽셀 범위 [0, 1])의 "
        "L-inf 공 안에서 모델의 손실이 커지도록 옮겼을 때의 정확도. 부호 기울기 한 걸음(FGSM, "
        "Goodfellow et al. 2015) 또는 무작위 시작점에서 크기 {step}의 투영 걸음 {steps}번(PGD, Madry "
        "et al. 2018의 MNIST 프로토콜)으로 옮긴다. 적대적 학습을 한 CNN은 eps 0.3의 PGD에서 약 89%를 "
        "유지하고(Madry et al.), 방어하지 않은 모델은 거의 모두 틀린다.",
        "inside_adv_fig": "반지름 eps에 따른 FGSM과 PGD 공격하의 정확도, 평가한 모든 모델을 한 그림에.",
        "inside_first": "{name}의 첫 층이 배운 것.",
        "inside_pairs": "{name}이(가) 가장 많이 헷갈린 쌍 (실제 -> 예측, 개수): {pairs}.",
        "repro": "재현성",
        "repro_text": "시드 {seed}, torch {torch}, Python {python}, {device}에서 스레드 {threads}개; 설정은 "
        "`{path}`의 `config.toml`.",
        "key": "항목",
        "value": "값",
    },
}

ACT_FORMULAS = [
    ("sigmoid", r"\sigma(x) = \frac{1}{1 + e^{-x}}, \quad \sigma'(x) = \sigma(x)\,(1 - \sigma(x))"),
    ("tanh", r"\tanh x = \frac{e^{x} - e^{-x}}{e^{x} + e^{-x}}, \quad \tanh'(x) = 1 - \tanh^2 x"),
    ("ReLU", r"f(x) = \max(0, x), \quad f'(x) = \mathbf{1}[x > 0]"),
    ("leaky ReLU", r"f(x) = \max(0.01x, x), \quad f'(x) = 1 \text{ if } x > 0 \text{ else } 0.01"),
    ("GELU", r"f(x) = x\,\Phi(x)"),
    ("SiLU", r"f(x) = x\,\sigma(x)"),
]
MLP_EQ = [
    r"a = W^{(1)} x + b^{(1)}, \quad h = f(a), \quad z = W^{(2)} h + b^{(2)}, \quad "
    r"p = \mathrm{softmax}(z), \; p_k = \frac{e^{z_k}}{\sum_j e^{z_j}}"
]
LOSS_EQ = r"L = -\frac{1}{B} \sum_{i=1}^{B} \log p_{i, y_i}"
BP_EQ = [
    r"\delta^{(2)} = \frac{\partial L}{\partial z} = \frac{1}{B}\,(p - \mathrm{onehot}(y))",
    r"\frac{\partial L}{\partial W^{(2)}} = {\delta^{(2)}}^{\top} h, \quad "
    r"\frac{\partial L}{\partial b^{(2)}} = \sum_{i} \delta^{(2)}_i",
    r"\delta^{(1)} = \left(\delta^{(2)} W^{(2)}\right) \odot f'(a)",
    r"\frac{\partial L}{\partial W^{(1)}} = {\delta^{(1)}}^{\top} x, \quad "
    r"\frac{\partial L}{\partial b^{(1)}} = \sum_{i} \delta^{(1)}_i",
]
SGD_EQ = r"W \leftarrow W - \eta \, \frac{\partial L}{\partial W}, \quad b \leftarrow b - \eta \, \frac{\partial L}{\partial b}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _copy_figure(src: Path, out: Path, name: str) -> str | None:
    if not src.is_file():
        return None
    shutil.copyfile(src, out / name)
    return name


def _dataset_title(info: dict[str, Any]) -> str:
    """The title of the dataset a run's record names (MNIST for runs from before datasets had names)."""
    from ..core.datasets import REGISTRY

    name = info["config"]["data"].get("dataset", "mnist")
    spec = REGISTRY.get(name)
    return spec.title if spec is not None else name


def report_title(t: dict[str, str], infos: list[dict[str, Any]]) -> str:
    """The report's title, naming the runs' datasets (in the order given)."""
    return t["title"].format(dataset=" / ".join(dict.fromkeys(_dataset_title(i) for i in infos)))


def _section_data(t: dict[str, str], info: dict[str, Any]) -> str:
    cfg = info["config"]
    # the sizes the run recorded (any --data-dir); runs from before they were recorded used MNIST
    sizes = info.get("data_sizes") or {
        "train": 60000 - round(60000 * cfg["data"]["val_fraction"]),
        "val": round(60000 * cfg["data"]["val_fraction"]),
        "test": 10000,
    }
    if cfg["data"]["train_on_val"] and "data_sizes" not in info:
        sizes = {"train": 60000, "val": 0, "test": 10000}
    rows = [
        [t["train_set"], f"{sizes['train']:,}", t["train_role"]],
        [t["val_set"], f"{sizes['val']:,}", t["val_role"]],
        [t["test_set"], f"{sizes['test']:,}", t["test_role"]],
    ]
    if cfg["data"]["train_on_val"]:
        rows = [
            [t["trainval_set"], f"{sizes['train']:,}", t["train_role"]],
            [t["test_set"], f"{sizes['test']:,}", t["test_role"]],
        ]
    env = info["environment"]
    title = _dataset_title(info)
    n_train = sizes["train"] + sizes["val"]
    return (
        f"## {t['data']}\n\n"
        + t["data_text"].format(
            dataset=title,
            n_train=n_train,
            n_test=sizes["test"],
            seed=cfg["train"]["seed"],
            val_pct=100 * cfg["data"]["val_fraction"],
        )
        + "\n\n"
        + _table([t["split"], t["images"], t["role"]], rows)
        + "\n"
        + t["checksum"].format(
            sha=env["data_sha256"],
            source=t["bundled"] if env["data_source"] == "bundled" else f"`{env['data_source']}`",
        )
        + "\n"
    )


def _section_activations(t: dict[str, str], out: Path, act_dir: Path | None, lang: str) -> str:
    from ..analysis.activations import activation_figure, read_activation_study, study_figures

    activation_figure(out / "activations.png", lang)
    parts = [f"## {t['act']}\n", t["act_text"] + "\n", t["act_defs"] + "\n"]
    parts += [f"- {name}: ${formula}$" for name, formula in ACT_FORMULAS]
    parts += ["", f"![{t['act_fig']}](activations.png)", "", t["act_notes"], ""]
    if act_dir is None:
        parts.append(f"_{t['act_missing']}_\n")
        return "\n".join(parts)
    res = read_activation_study(act_dir)
    dead = "; ".join(f"{label}: {100 * r['dead_fraction'][-1]:.1f}%" for label, r in res["dead_relu"].items())
    g = res["gradients"]
    parts += [
        t["act_measured"].format(epochs=plural(res["epochs"], "epoch") if lang == "en" else res["epochs"]),
        "",
        "- " + t["dead_text"].format(dead=dead),
        "- "
        + t["grad_text"].format(
            depth=res["depth"],
            width=res["width"],
            s_ratio=g["sigmoid"]["init"][0] / g["sigmoid"]["init"][-1],
            r_ratio=g["relu"]["init"][0] / g["relu"]["init"][-1],
            s_acc=g["sigmoid"]["val_acc"][-1],
            r_acc=g["relu"]["val_acc"][-1],
        ),
        "",
    ]
    study_figures(res, out, lang)  # redrawn from activations.json, in the report's language
    for name in ("dead_relu.png", "gradient_norms.png"):
        parts += [f"![{name}]({name})", ""]
    return "\n".join(parts)


def _section_mlp(t: dict[str, str]) -> str:
    from ..analysis.gradcheck import run_all

    rows = run_all()
    by_act: dict[str, list] = {}
    for r in rows:
        by_act.setdefault(r.activation, []).append(r)
    gc = _table(
        [t["act_col"], t["ag_col"], t["fd_col"]],
        [
            [a, f"{max(r.autograd_rel_err for r in rs):.1e}", f"{max(r.fd_rel_err for r in rs):.1e}"]
            for a, rs in by_act.items()
        ],
    )
    return "\n".join(
        [
            f"## {t['mlp']}\n",
            t["mlp_text"],
            "",
            *[f"$${e}$$" for e in MLP_EQ],
            "",
            t["loss_text"],
            "",
            f"$${LOSS_EQ}$$",
            "",
            t["bp_text"],
            "",
            *[f"$${e}$$\n" for e in BP_EQ],
            t["sgd_text"],
            "",
            f"$${SGD_EQ}$$",
            "",
            t["gc_text"],
            "",
            gc,
        ]
    )


def _section_run(t: dict[str, str], run: RunDir, out: Path, index: int, lang: str) -> str:
    info, history = run.read_info(), run.read_history()
    cfg = info["config"]
    name = info.get("name", run.path.name)
    conf_rows = [
        [
            t["model"],
            f"{cfg['model']['arch']} {cfg['model']['hidden'] if cfg['model']['arch'] == 'mlp' else ''}"
            f" {cfg['model']['activation']}, init {cfg['model']['init']}",
        ],
        [t["optimizer"], f"{cfg['optim']['name']}, lr {cfg['optim']['lr']}, schedule {cfg['optim']['schedule']}"],
        [t["batch_epochs"], f"{cfg['train']['batch_size']} / {cfg['train']['epochs']}"],
        [t["precision_seed"], f"{cfg['train']['precision']} / {cfg['train']['seed']}"],
        [t["parameters"], f"{info.get('parameters', 0):,}"],
    ]
    parts = [f"### {name}\n", f"**{t['run_config']}**\n", _table([t["key"], t["value"]], conf_rows)]
    run_figures(history, out, name, lang, prefix=f"run{index}_")  # redrawn from the history, in the language
    parts += [f"![{t['curves_acc']}](run{index}_accuracy.png)\n", f"![{t['curves_loss']}](run{index}_loss.png)\n"]
    parts.append(_run_outcome(t, history) + "\n")
    parts += [
        f"**{t['epoch_table']}**\n",
        _table(
            t["epoch_cols"].split("|"),
            [
                [
                    r["epoch"],
                    _number(r.get("train_loss"), ".5f"),
                    _number(r.get("val_loss"), ".4f"),
                    _number(r.get("val_acc"), ".2f"),
                    _number(r.get("test_loss"), ".4f"),
                    _number(r.get("test_acc"), ".2f"),
                ]
                for r in history
            ],
        ),
    ]
    env = info["environment"]
    parts.append(
        f"_{t['repro']}: "
        + t["repro_text"].format(
            seed=env["seed"],
            torch=env["torch"],
            python=env["python"],
            threads=env["torch_threads"],
            device=env["device"],
            path=run.path,
        )
        + "_\n"
    )
    return "\n".join(parts)


def _number(v: float | None, fmt: str) -> str:
    """A table cell: "-" for a value not measured, NaN and infinities spelled out."""
    if v is None:
        return "-"
    return format(v, fmt) if math.isfinite(v) else ("NaN" if math.isnan(v) else ("∞" if v > 0 else "-∞"))


def _run_outcome(t: dict[str, str], history: list[dict[str, Any]]) -> str:
    """What the run came to: where it converged and its best epoch; or that it was too short to tell, or
    diverged (never a NaN percentage or an epoch "-")."""
    s = summarize(history)
    best = {
        "best_val": s.get("best_val_acc"),
        "best": s.get("best_epoch"),
        "test_at_best": s.get("test_acc_at_best_val"),
    }
    if "diverged_epoch" in s:
        text = t["diverged"].format(epoch=s["diverged_epoch"])
        return text + (" " + t["diverged_best"].format(**best) if "best_epoch" in s else "")
    if "best_epoch" not in s:
        return t["no_val"].format(final_test=s["final_test_acc"])
    if s["convergence_epoch"] is None:
        return t["too_short"].format(
            epochs=len(history),
            s="" if len(history) == 1 else "s",
            window=WINDOW,
            final_test=s["final_test_acc"],
            **best,
        )
    val = [r["val_acc"] for r in history]
    return t["conv_text"].format(
        band=BAND,
        window=WINDOW,
        plateau=sum(val[-WINDOW:]) / WINDOW,
        conv=s["convergence_epoch"],
        final_test=s["final_test_acc"],
        **best,
    )


def _study_curves(study: Path) -> dict[str, list[list[float]]] | None:
    """Validation curves of a study's runs by config label, or None when its run directories are not there
    (a study kept as its tables only)."""
    from ..studies.compare import read_record

    try:
        doc = read_record(study)
        return (
            validation_curves(
                study,
                [(row["config"], row["name"], [r["seed"] for r in doc["runs"][row["name"]]]) for row in doc["rows"]],
            )
            or None
        )
    except (KeyError, TypeError, MnistlabError):
        return None


def _section_compare(t: dict[str, str], studies: list[Path], out: Path, lang: str) -> str:
    from ..studies.compare import read_table

    parts = [f"## {t['improve']}\n", t["improve_text"] + "\n"]
    for i, study in enumerate(studies, 1):
        parts.append(read_table(study))
        curves = _study_curves(study)
        if curves:
            overlay_figure(
                curves,
                out / f"compare{i}_curves.png",
                title="Validation accuracy per epoch (mean over seeds, min-max band)",
                lang=lang,
            )
        if curves or _copy_figure(study / "curves.png", out, f"compare{i}_curves.png"):
            parts.append(f"![{t['improve_fig']}](compare{i}_curves.png)\n")
    return "\n".join(parts)


def _section_inside(t: dict[str, str], ev_dir: Path, out: Path, lang: str) -> str:
    """Section 6 from a `mnistlab evaluate` directory: its table, and each model's figures."""
    from ..analysis.evaluate import (
        compare_row,
        confusion_figure,
        first_layer_figure,
        plot_labels,
        read_evaluations,
        reliability_figure,
        robustness_figure,
    )

    evals = read_evaluations(ev_dir)
    parts = [
        f"## {t['inside']}\n",
        t["inside_text"].format(split=evals[0].split) + "\n",
        _table(t["inside_cols"].split("|"), [compare_row(ev) for ev in evals]),
    ]
    # every figure redrawn from the evaluation's files, in the report's language
    robustness_figure([(f"{ev.name} ({ev.arch})", ev.robustness) for ev in evals], out / "inside_robustness.png", lang)
    parts.append(f"![{t['inside_rob']}](inside_robustness.png)\n")
    parts.append(_inside_adversarial(t, evals, out, lang))
    for i, ev in enumerate(evals, 1):
        names = ev.class_names
        pairs = ", ".join(f"{names[c['true']]} -> {names[c['predicted']]} ({c['count']})" for c in ev.confused[:3])
        parts.append(t["inside_pairs"].format(name=ev.name, pairs=pairs) + "\n")
        confusion_figure(ev.confusion, ev.name, out / f"inside{i}_confusion.png", lang, labels=plot_labels(ev))
        reliability_figure(
            ev.calibration["bins"], ev.calibration["ece"], ev.name, out / f"inside{i}_reliability.png", lang
        )
        if ev.first_layer is not None:
            first_layer_figure(ev.first_layer, ev.name, out / f"inside{i}_first_layer.png", lang)
        for fig, key in (
            ("confusion.png", "inside_conf"),
            ("reliability.png", "inside_rel"),
            ("first_layer.png", "inside_first"),
        ):
            parts.append(f"![{t[key].format(name=ev.name)}](inside{i}_{fig})\n")
    return "\n".join(parts)


def _inside_adversarial(t: dict[str, str], evals: list[Evaluation], out: Path, lang: str) -> str:
    """Section 6's adversarial part: a table of clean / FGSM / PGD accuracy and one figure, from the
    evaluations that ran the attacks (``mnistlab evaluate --attack-images 0`` skips them: no part)."""
    from ..analysis.evaluate import ATTACK_EPS, ATTACK_LABELS, adversarial_figure, adversarial_row
    from ..core.adversarial import PGD_STEP_SIZE, PGD_STEPS

    attacked = [ev for ev in evals if ev.adversarial]
    if not attacked:
        return ""
    eps = [e for e in ATTACK_EPS if e]
    images = min(ev.attack_images for ev in attacked)
    adversarial_figure(
        [(f"{ev.name} ({ev.arch})", ev.adversarial) for ev in attacked], images, out / "inside_adversarial.png", lang
    )
    text = t["inside_adv"].format(images=f"{images:,}", split=attacked[0].split, steps=PGD_STEPS, step=PGD_STEP_SIZE)
    return "\n".join(
        [
            text + "\n",
            _table(
                [
                    "run",
                    "model",
                    "images",
                    "clean %",
                    *[f"{ATTACK_LABELS[k]} eps {e} %" for k in ATTACK_LABELS for e in eps],
                ],
                [adversarial_row(ev) for ev in attacked],
            ),
            f"![{t['inside_adv_fig']}](inside_adversarial.png)\n",
        ]
    )


def build_markdown(
    run_dirs: list[Path],
    out: Path,
    lang: str = "en",
    compare_dirs: list[Path] | None = None,
    activations_dir: Path | None = None,
    evaluate_dir: Path | None = None,
) -> str:
    t = TEXT[lang]
    runs = [RunDir(p) for p in run_dirs]
    for r in runs:
        if not r.is_run() or not r.file("run.json").is_file():
            raise MnistlabError(f"{r.path} is not a run directory (needs run.json and metrics.csv)")
        r.read_history()  # a damaged history is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# {report_title(t, [r.read_info() for r in runs])}\n",
        t["intro"] + "\n",
        _section_data(t, runs[0].read_info()),
        _section_activations(t, out, activations_dir, lang),
        _section_mlp(t),
        f"## {t['train']}\n",
    ]
    parts += [_section_run(t, r, out, i + 1, lang) for i, r in enumerate(runs)]
    if compare_dirs:
        parts.append(_section_compare(t, compare_dirs, out, lang))
    if evaluate_dir is not None:
        parts.append(_section_inside(t, evaluate_dir, out, lang))
    return "\n".join(parts)


# ---------------------------------------------------------------- self-contained HTML

CSS = """body{font-family:system-ui,-apple-system,'Segoe UI','Noto Sans KR','Apple SD Gothic Neo','Malgun Gothic','NanumGothic',sans-serif;max-width:60em;
margin:2em auto;padding:0 1em;line-height:1.55;color:#222}table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}math[display=block]{margin:.6em 0;font-size:1.1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""

_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)
_FIGURE_NAME = re.compile(r"[A-Za-z0-9_-]+\.png")  # what the report writes next to report.md


def markdown_to_html(md: str, figures_dir: Path, title: str, lang: str) -> str:
    """Markdown -> one HTML page: math as MathML, images as data URIs, styles inline."""
    try:
        import latex2mathml.converter
        import markdown
    except ImportError:
        raise MnistlabError("the report needs the 'report' extra: pip install 'mnistlab[report]'") from None
    maths: list[str] = []

    def stash(m: re.Match) -> str:
        tex, display = (m.group(1), "block") if m.group(1) is not None else (m.group(2), "inline")
        maths.append(latex2mathml.converter.convert(tex.strip(), display=display))
        return f"MATHPLACEHOLDER{len(maths) - 1}X"

    # the Markdown holds text from run files (config labels, names): no raw HTML may pass through
    text = _MATH.sub(stash, md).replace("&", "&amp;").replace("<", "&lt;")
    body = markdown.markdown(text, extensions=["tables"])
    body = re.sub(r"MATHPLACEHOLDER(\d+)X", lambda m: maths[int(m.group(1))], body)

    def embed(m: re.Match) -> str:
        name = html.unescape(m.group(2))
        path = figures_dir / name
        if not _FIGURE_NAME.fullmatch(name) or not path.is_file():  # only the report's own figures
            return f'{m.group(1)}src=""'
        return f'{m.group(1)}src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'(<img\b[^>]*?)src="([^"]*)"', embed, body)
    body = re.sub(r'(<a\b[^>]*?)href="(?!#|https?://)[^"]*"', r'\1href="#"', body)  # no javascript: or file links
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}'
        f"</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(
    run_dirs: list[Path],
    out: Path,
    lang: str = "en",
    compare_dirs: list[Path] | None = None,
    activations_dir: Path | None = None,
    evaluate_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``report.md`` (+ PNGs) and ``report.html`` into ``out``."""
    if lang not in TEXT:
        raise MnistlabError(f"--lang {lang!r} is unknown (choose from {', '.join(TEXT)})")
    md = build_markdown(run_dirs, out, lang, compare_dirs, activations_dir, evaluate_dir)
    atomic_write(out / "report.md", md)
    title = report_title(TEXT[lang], [RunDir(p).read_info() for p in run_dirs])
    atomic_write(out / "report.html", markdown_to_html(md, out, title, lang))
    return out / "report.md", out / "report.html"
