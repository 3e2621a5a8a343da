"""An MLP in NumPy alone: every layer's forward and backward side by side, trained by plain SGD.

This is the report's section 3 made runnable. For a layer ``y = f(x)`` the backward pass receives
``dL/dy`` and returns ``dL/dx`` (the chain rule), storing the gradients of its own parameters on the way.

    Linear      y = x W^T + b          dW = dy^T x,  db = sum_batch dy,  dx = dy W
    sigmoid     y = 1 / (1 + e^-x)      dx = dy * y (1 - y)
    tanh        y = tanh x              dx = dy * (1 - y^2)
    ReLU        y = max(0, x)           dx = dy * [x > 0]
    leaky ReLU  y = max(0.01 x, x)      dx = dy * (1 if x > 0 else 0.01)
    softmax + cross-entropy  L = -1/B sum log p_y,  p = softmax(z)   dz = (p - onehot(y)) / B
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Linear:
    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.W, self.b = weight, bias  # (out, in), (out,)
        self.dW, self.db = np.zeros_like(weight), np.zeros_like(bias)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x  # (B, in)
        return x @ self.W.T + self.b  # (B, out)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.dW = dy.T @ self.x  # (out, in)
        self.db = dy.sum(0)
        return dy @ self.W  # (B, in)

    def params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.W, self.dW), (self.b, self.db)]


class Sigmoid:
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.y = 1 / (1 + np.exp(-x))
        return self.y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * self.y * (1 - self.y)


class Tanh:
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.y = np.tanh(x)
        return self.y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * (1 - self.y * self.y)


class ReLU:
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * self.mask


class LeakyReLU:
    def __init__(self, slope: float = 0.01) -> None:
        self.slope = slope

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x > 0
        return np.where(self.mask, x, self.slope * x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return np.where(self.mask, dy, self.slope * dy)


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits); softmax and loss fused for numerical stability."""

    def forward(self, logits: np.ndarray, y: np.ndarray) -> float:
        z = logits - logits.max(1, keepdims=True)  # (B, C), shift for stability
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        self.p, self.y = np.exp(logp), y
        return float(-logp[np.arange(len(y)), y].mean())

    def backward(self) -> np.ndarray:
        dz = self.p.copy()
        dz[np.arange(len(self.y)), self.y] -= 1
        return dz / len(self.y)


# the NumPy layer of each activation that mnistlab.core.models.ACTIVATIONS marks ``by_hand`` (and of no other:
# tests/test_numpy_mlp.py holds the two together)
LAYERS: dict[str, Callable[[], object]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
}


class NumpyMLP:
    """Linear -> activation -> ... -> Linear, with softmax + cross-entropy."""

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]], activation: str = "relu") -> None:
        self.linears = [Linear(w, b) for w, b in weights]
        self.layers: list = []
        for i, lin in enumerate(self.linears):
            self.layers.append(lin)
            if i < len(self.linears) - 1:
                self.layers.append(LAYERS[activation]())
        self.loss_fn = SoftmaxCrossEntropy()

    @classmethod
    def from_torch(cls, model, activation: str = "relu", dtype=np.float32) -> NumpyMLP:
        """Copy the Linear weights of a torch MLP (same initial weights as the PyTorch run)."""
        import torch

        lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        return cls(
            [
                (m.weight.detach().cpu().numpy().astype(dtype), m.bias.detach().cpu().numpy().astype(dtype))
                for m in lins
            ],
            activation,
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x  # logits (B, 10)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> float:
        """Forward, loss and backward: every parameter's gradient is left in its layer."""
        loss = self.loss_fn.forward(self.forward(x), y)
        d = self.loss_fn.backward()
        for layer in reversed(self.layers):
            d = layer.backward(d)
        return loss

    def sgd_step(self, lr: float) -> None:
        for lin in self.linears:
            lin.W -= lr * lin.dW
            lin.b -= lr * lin.db

    def params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [pg for lin in self.linears for pg in lin.params()]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Weights under the names of the torch MLP (``net.1.weight`` ...), so torch can load them."""
        out, idx = {}, 1  # net.0 is Flatten; each Linear is followed by an activation
        for lin in self.linears:
            out[f"net.{idx}.weight"], out[f"net.{idx}.bias"] = lin.W, lin.b
            idx += 2
        return out
