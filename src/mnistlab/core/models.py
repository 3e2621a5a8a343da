"""Models as plain ``nn.Module``s, built from registries; they know nothing of training.

All models take float pixels in [0, 1] of shape (B, 1, 28, 28) and return logits (B, K), K the dataset's
number of classes (10 for MNIST).
Parameters are initialised from an explicit ``torch.Generator`` (never the global RNG), in the same
order of draws as PyTorch's own constructors, so the report's initial weights are reproduced exactly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import ModelConfig, check_choice, check_value

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # training-set pixel statistics after /255


@dataclass(frozen=True)
class Activation:
    """An activation function of the registry: calling it makes its layer (an elementwise ``nn.Module``)."""

    layer: Callable[[], nn.Module]
    by_hand: bool = False  # one of the report's four: the NumPy MLP (mnistlab.core.numpy_mlp) has it too

    def __call__(self) -> nn.Module:
        return self.layer()


# The one registry of activations: what model.activation may name, what `mnistlab gradcheck` checks (by_hand),
# what the activation figure draws (all, in this order: the report's four, then two modern ones).
ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation(nn.Sigmoid, by_hand=True),
    "tanh": Activation(nn.Tanh, by_hand=True),
    "relu": Activation(nn.ReLU, by_hand=True),
    "leaky_relu": Activation(lambda: nn.LeakyReLU(0.01), by_hand=True),  # the report's slope
    "gelu": Activation(nn.GELU),
    "silu": Activation(nn.SiLU),
}
BY_HAND = tuple(name for name, a in ACTIVATIONS.items() if a.by_hand)  # what the NumPy MLP implements


class Dropout(nn.Module):
    """Inverted dropout whose masks come from ``self.generator`` (the trainer sets one; else torch's global).

    A mask element costs 16 random bits instead of a float draw: each 63-bit word from ``random_`` gives
    three 16-bit numbers, about 10x faster than ``bernoulli_`` on a CPU. The drop probability is rounded
    to a multiple of 1/65536.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None
        self._threshold = round(p * 65536) - 32768  # drop where the signed 16-bit draw is below this
        self._scale = 1.0 / (1.0 - round(p * 65536) / 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        words = torch.empty((n + 2) // 3, dtype=torch.int64, device=x.device).random_(generator=self.generator)
        chunks = words.view(torch.int16).view(-1, 4)  # the top chunk of each word has a zero sign bit: skip it
        r = (chunks[:, :3] if sys.byteorder == "little" else chunks[:, 1:]).reshape(-1)[:n].view(x.shape)
        return x * ((r >= self._threshold).to(x.dtype) * self._scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GaussianNoise(nn.Module):
    """Add N(0, std^2) noise in training, nothing in evaluation: ``x + std * eps``, ``eps ~ N(0, I)``.

    The supervised baseline of ladder networks (Rasmus et al. 2015, "Semi-supervised learning with ladder
    networks", section 4: "MLP + noise", 0.80% test error on MNIST) adds such noise to the input and to every
    hidden layer's batch-normalised pre-activation. Draws come from ``self.generator`` (set by the trainer,
    like :class:`Dropout`'s), so a run and its resume draw the same noise. Shape-preserving: (B, ...) -> (B, ...).
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.std == 0:
            return x
        eps = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return x + self.std * eps

    def extra_repr(self) -> str:
        return f"std={self.std}"


STOCHASTIC_LAYERS = (Dropout, GaussianNoise)  # layers that draw from the trainer's regularisation stream


class Normalize(nn.Module):
    """Standardise pixels inside the model, so every caller feeds plain [0, 1] pixels."""

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class MLP(nn.Module):
    """Flatten -> (Noise) -> [Linear -> (BatchNorm) -> (Noise) -> activation -> (Dropout)] * len(hidden) -> Linear.

    ``noise_std`` > 0 adds Gaussian noise (training only) to the input and to each hidden pre-activation,
    after batch norm where there is one (see :class:`GaussianNoise`).
    """

    def __init__(
        self,
        hidden: list[int] | tuple[int, ...] = (1024,),
        activation: str = "relu",
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        batchnorm: bool = False,
        normalize: bool = False,
        in_features: int = 784,
        n_classes: int = 10,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]  # (B, 1, 28, 28) -> (B, 784)
        if normalize:
            layers.append(Normalize())
        if noise_std:
            layers.append(GaussianNoise(noise_std))
        if input_dropout:
            layers.append(Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            if noise_std:
                layers.append(GaussianNoise(noise_std))
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with max pooling and a modern activation."""

    def __init__(
        self, activation: str = "relu", dropout: float = 0.0, normalize: bool = False, n_classes: int = 10
    ) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            *([Normalize()] if normalize else []),
            nn.Conv2d(1, 6, 5, padding=2),
            act(),
            nn.MaxPool2d(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5),
            act(),
            nn.MaxPool2d(2),  # (B, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            act(),
            *([Dropout(dropout)] if dropout else []),
            nn.Linear(120, 84),
            act(),
            nn.Linear(84, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_block(cin: int, cout: int, act: Activation) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), act()]


class SmallCNN(nn.Module):
    """A small modern CNN: two VGG-style stages of 3x3 conv + BatchNorm, then a BatchNorm'd dense head."""

    def __init__(
        self,
        width: int = 32,
        activation: str = "relu",
        dropout: float = 0.0,
        normalize: bool = False,
        n_classes: int = 10,
    ) -> None:
        super().__init__()
        act, w = ACTIVATIONS[activation], width
        self.features = nn.Sequential(
            *([Normalize()] if normalize else []),
            *_conv_block(1, w, act),
            *_conv_block(w, w, act),
            nn.MaxPool2d(2),  # (B, w, 14, 14)
            *_conv_block(w, 2 * w, act),
            *_conv_block(2 * w, 2 * w, act),
            nn.MaxPool2d(2),  # (B, 2w, 7, 7)
            *_conv_block(2 * w, 4 * w, act),
            nn.MaxPool2d(2),  # (B, 4w, 3, 3)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * w * 9, 8 * w, bias=False),
            nn.BatchNorm1d(8 * w),
            act(),
            *([Dropout(dropout)] if dropout else []),
            nn.Linear(8 * w, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FastCNN(nn.Module):
    """Two strided convolutions and a dense head: cheap enough to train to 99% in seconds on a CPU."""

    flatten_in_head = True  # the head flattens (B, 2w, 7, 7) in NCHW order itself

    def __init__(
        self,
        width: int = 32,
        activation: str = "relu",
        dropout: float = 0.0,
        normalize: bool = False,
        n_classes: int = 10,
    ) -> None:
        super().__init__()
        act, w = ACTIVATIONS[activation], width
        self.features = nn.Sequential(
            *([Normalize()] if normalize else []),
            nn.Conv2d(1, w, 5, stride=2, padding=2),
            act(),  # (B, w, 14, 14)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            act(),  # (B, 2w, 7, 7), channels-last in memory
        )
        self.classifier = nn.Sequential(
            *([nn.Flatten()] if self.flatten_in_head else []),
            nn.Linear(2 * w * 49, 4 * w),
            act(),
            *([Dropout(dropout)] if dropout else []),
            nn.Linear(4 * w, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SpeedCNN(FastCNN):
    """:class:`FastCNN`'s layers laid out for a CPU: the dense head reads the features in channels-last
    (NHWC) order, the order oneDNN keeps them in memory.

    Flattening (B, 2w, 7, 7) in NCHW order copies a channels-last tensor every step, and its backward hands
    the second ReLU an NCHW gradient beside a channels-last output: ReLU's backward over two memory formats
    measured 10x slower than over one. Here the flatten is a view and the backward stays channels-last.
    (A different layout from fastcnn's: the dense weights of the two are not interchangeable.)
    """

    flatten_in_head = False  # forward flattens in HWC order

    def __init__(
        self,
        width: int = 16,
        activation: str = "relu",
        dropout: float = 0.0,
        normalize: bool = False,
        n_classes: int = 10,
    ) -> None:
        super().__init__(width, activation, dropout, normalize, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).permute(0, 2, 3, 1).flatten(1)  # (B, 7 * 7 * 2w), HWC order: a view when NHWC
        return self.classifier(h)


def translate(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images (..., H, W) moved ``dx`` pixels right and ``dy`` down (negative: left, up), zero fill."""
    if dx == 0 and dy == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))  # (..., H + |dy|, W + |dx|)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


class ShiftTTA(nn.Module):
    """Translation test-time augmentation: the mean softmax of ``model`` over translated copies of the input.

    ``p(y|x) = 1/S * sum_s softmax(model(T_s x))`` for the S shifts ``(dx, dy)`` (include ``(0, 0)`` for the
    image itself); returned as log-probabilities (B, K) for K classes, which are valid logits: their softmax
    is ``p`` and
    their cross-entropy is the NLL of ``p``. Averaging predictions over small translations is the test-time
    counterpart of training on shifted images (Simard et al. 2003; Krizhevsky et al. 2012 average over crops).
    The weights are the wrapped model's; the wrapper holds no parameters of its own.
    """

    def __init__(self, model: nn.Module, shifts: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.model = model
        self.shifts = [(int(dx), int(dy)) for dx, dy in shifts]
        self.train(model.training)  # the wrapped model's mode (an EMA copy stays in eval mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = torch.cat([translate(x, dx, dy) for dx, dy in self.shifts])  # (S * B, 1, 28, 28)
        logits = self.model(views).float()
        # (S, B, 10); the batch stays symbolic (-1), so an ONNX export keeps a dynamic batch
        logp = torch.log_softmax(logits, 1).view(len(self.shifts), -1, logits.shape[-1])
        return torch.logsumexp(logp, 0) - math.log(len(self.shifts))  # log of the mean probability, stably

    def extra_repr(self) -> str:
        return f"shifts={self.shifts}"


def for_inference(model: nn.Module, shifts: Sequence[Sequence[int]]) -> nn.Module:
    """The classifier a run evaluates and serves: ``model`` itself, or wrapped in :class:`ShiftTTA` when the
    config lists test-time shifts (``regularize.tta_shifts``)."""
    return ShiftTTA(model, shifts) if shifts else model


@dataclass(frozen=True)
class Arch:
    """An architecture of the registry: how to build it, and its properties."""

    build: Callable[[ModelConfig, int], nn.Module]  # (model config, number of classes) -> the model
    conv: bool  # convolutional: trained channels-last (NHWC), takes model.freeze_first
    options: tuple[str, ...] = ()  # the model.* options only some architectures take that this one does


MLP_OPTIONS = ("hidden", "input_dropout", "batchnorm", "noise_std")
CNN_OPTIONS = ("width",)

# Add a model here: its class above, and its entry with its properties.
ARCHS: dict[str, Arch] = {
    "mlp": Arch(
        lambda c, k: MLP(
            c.hidden,
            c.activation,
            c.dropout,
            c.input_dropout,
            c.batchnorm,
            c.normalize,
            n_classes=k,
            noise_std=c.noise_std,
        ),
        conv=False,
        options=MLP_OPTIONS,
    ),
    "lenet5": Arch(lambda c, k: LeNet5(c.activation, c.dropout, c.normalize, n_classes=k), conv=True),
    "cnn": Arch(
        lambda c, k: SmallCNN(c.width, c.activation, c.dropout, c.normalize, n_classes=k),
        conv=True,
        options=CNN_OPTIONS,
    ),
    "fastcnn": Arch(
        lambda c, k: FastCNN(c.width, c.activation, c.dropout, c.normalize, n_classes=k), conv=True, options=CNN_OPTIONS
    ),
    "speedcnn": Arch(
        lambda c, k: SpeedCNN(c.width, c.activation, c.dropout, c.normalize, n_classes=k),
        conv=True,
        options=CNN_OPTIONS,
    ),
}


# ---------------------------------------------------------------- initialisation

_WEIGHTED = (nn.Linear, nn.Conv2d)


def _torch_default_init(module: nn.Linear | nn.Conv2d, g: torch.Generator) -> None:
    """PyTorch's own ``reset_parameters`` for Linear/Conv2d, drawing from ``g``."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=g)
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(module.bias, -bound, bound, generator=g)


def _reinit_weights(
    fn: Callable[[torch.Tensor, torch.Generator], object],
) -> Callable[[nn.Module, torch.Generator], None]:
    def scheme(model: nn.Module, g: torch.Generator) -> None:
        for m in model.modules():
            if isinstance(m, _WEIGHTED):
                fn(m.weight, g)

    return scheme


# name -> pass applied after PyTorch's default init; "report" is the report's kaiming_uniform_ per layer
INITS: dict[str, Callable[[nn.Module, torch.Generator], None]] = {
    "default": lambda model, g: None,
    "report": _reinit_weights(lambda w, g: nn.init.kaiming_uniform_(w, generator=g)),
    "kaiming_normal": _reinit_weights(lambda w, g: nn.init.kaiming_normal_(w, generator=g)),
    "xavier_uniform": _reinit_weights(lambda w, g: nn.init.xavier_uniform_(w, generator=g)),
}


def init_parameters(model: nn.Module, scheme: str, generator: torch.Generator) -> None:
    """PyTorch's default init for every layer in order, then the named scheme, all drawn from ``generator``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _WEIGHTED):
                _torch_default_init(m, generator)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()  # ones, zeros and fresh running statistics: no randomness
            elif any(True for _ in m.parameters(recurse=False)):
                raise TypeError(f"no initialiser for {type(m).__name__}")
        INITS[scheme](model, generator)


def _option_kind(key: str) -> str:
    """What takes the option ``key``, from the registry: "a CNN option", "an MLP option" or the archs' names."""
    takers = [name for name, a in ARCHS.items() if key in a.options]
    if all(ARCHS[name].conv for name in takers):
        return "a CNN option"
    if not any(ARCHS[name].conv for name in takers):
        return "an MLP option"
    return f"an option of model.arch = {' or '.join(map(repr, takers))}"


def check(m: ModelConfig) -> None:
    """What the model registries support: names, and options that fit the architecture."""
    check_choice("model.arch", m.arch, ARCHS)
    check_choice("model.activation", m.activation, ACTIVATIONS)
    check_choice("model.init", m.init, INITS)
    defaults, arch = type(m)(), ARCHS[m.arch]
    for key in dict.fromkeys(k for a in ARCHS.values() for k in a.options):  # every arch-specific option, in order
        if key not in arch.options and getattr(m, key) != getattr(defaults, key):
            raise ConfigError(
                f"config key 'model.{key}' is {_option_kind(key)} and does not fit model.arch = {m.arch!r}"
            )
    check_value(m.width > 0, "model.width", m.width, "must be > 0")
    for key in ("freeze_first", "whiten_first"):
        if getattr(m, key) and not arch.conv:
            raise ConfigError(f"config key 'model.{key}' is a CNN option and does not fit model.arch = {m.arch!r}")
    if m.whiten_first:  # the first convolution's shape follows from the config: refuse before any data or files
        with torch.device("meta"):
            _check_whitening(first_conv(arch.build(m, 10)))


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first convolution (in module order, which is the order of the forward pass here)."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def build_model(
    cfg: ModelConfig, generator: torch.Generator, device: torch.device | str = "cpu", n_classes: int = 10
) -> nn.Module:
    """Construct the configured model with ``n_classes`` outputs (the dataset's classes) on ``device`` and
    initialise it from ``generator``."""
    with torch.device("meta"):  # no allocation and no global-RNG draws until we initialise
        model = ARCHS[cfg.arch].build(cfg, n_classes)
    # initialise where the generator lives (the CPU stream that replays the report's draws), then move
    model = model.to_empty(device=generator.device)
    init_parameters(model, cfg.init, generator)
    model = model.to(device)
    if ARCHS[cfg.arch].conv:  # NHWC: the fast layout for oneDNN (CPU) and cuDNN tensor cores
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    if cfg.freeze_first:  # fixed features from the first layer: no gradient to compute for it
        first_conv(model).requires_grad_(False)
    return model


def whiten_first_conv(model: nn.Module, x: torch.Tensor, eps: float = 1e-2) -> None:
    """Set the first convolution of ``model`` to a whitening of its input patches, as airbench does for
    CIFAR-10 (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024): with ``C`` the
    uncentred second-moment matrix of the (in * k * k)-pixel patches the convolution sees in ``x``, and
    ``C = V diag(l) V^T`` its eigendecomposition, the filters are the ``out / 2`` leading eigenvectors
    scaled by ``1 / sqrt(l + eps)``, then the same filters negated (so a ReLU after them keeps both signs);
    the bias is zero. ``model.whiten_first`` starts the layer so; with ``model.freeze_first`` it stays so.

    ``x``: (N, 1, 28, 28) training images as the model takes them (the model's own layers before the first
    convolution, e.g. its normalisation, are applied here). Deterministic: no random draws.
    Raises ConfigError when the convolution's output channels are odd or exceed twice its patch size.
    """
    conv = first_conv(model)
    _check_whitening(conv)
    out, fan_in = conv.out_channels, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].detach())
        raise _Seen

    handle = conv.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            model(x)
    except _Seen:
        pass
    finally:
        handle.remove()
    assert not isinstance(conv.padding, str)  # _check_whitening refused it
    patches = F.unfold(seen[0].double(), conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (N, in*k*k, L)
    p = patches.transpose(1, 2).reshape(-1, fan_in)  # (N * L, in*k*k)
    eigenvalues, eigenvectors = torch.linalg.eigh(p.T @ p / len(p))  # ascending
    top = eigenvectors[:, -(out // 2) :].flip(1) / (eigenvalues[-(out // 2) :].flip(0) + eps).sqrt()  # (fan_in, out/2)
    filters = torch.cat([top, -top], dim=1).T.reshape(conv.weight.shape)  # (out, in, k, k)
    with torch.no_grad():
        conv.weight.copy_(filters.to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.zero_()


def _check_whitening(conv: nn.Conv2d) -> None:
    """Raise ConfigError unless ``conv`` can be a whitening layer: an even number of output channels, at most
    twice its patch size (one filter and its negative per principal component), numeric padding."""
    out, fan_in = conv.out_channels, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    if out % 2 or out // 2 > fan_in:
        raise ConfigError(
            f"config key 'model.whiten_first' needs the first convolution's {out} channels to be even and at "
            f"most twice its {fan_in}-pixel patches"
        )
    if isinstance(conv.padding, str):  # "same"/"valid": not the numeric padding the patches are cut with here
        raise ConfigError(f"config key 'model.whiten_first' needs a numeric padding, not {conv.padding!r}")


class _Seen(Exception):
    """Stops a forward pass once the first convolution's input has been seen."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
