"""Adversarial perturbations: the regularisers that train on them (VAT, FGSM adversarial training) and the
attacks that measure robustness (FGSM, PGD).

Images are float pixels in [0, 1] of shape (B, 1, 28, 28); models return logits (B, 10). Norms are taken per
image over all its pixels. Random draws come from an explicit ``torch.Generator`` (the trainer's
regularisation stream in training, a fixed seed in evaluation), so runs and their resumes repeat exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm keeps normalising with the batch's statistics but does not update its running statistics
    (nor ``num_batches_tracked``): for the extra forward passes on perturbed images, which must not shift the
    statistics the model is evaluated with. The reference implementations do the same (Miyato et al.'s
    ``forward_no_update_batch_stat``; ``update_batch_stats=False`` in their TensorFlow code)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False  # in training mode: batch statistics, no running update
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def unit_vectors(d: torch.Tensor) -> torch.Tensor:
    """Each image of ``d`` (B, ...) scaled to L2 norm 1 (scaled by its largest entry first, so that tiny
    gradients do not underflow: Miyato et al.'s ``get_normalized_vector``)."""
    flat = d.flatten(1)  # (B, D)
    flat = flat / flat.abs().amax(1, keepdim=True).clamp_min(1e-12)
    return F.normalize(flat, dim=1).view_as(d)


def kl_divergence(logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p || q) = sum_k p_k (log p_k - log q_k), (B,), for ``logp`` = log p (B, K) and q =
    softmax(logits)."""
    logq = torch.log_softmax(logits.float(), 1)
    return (logp.exp() * (logp - logq)).sum(1)


def vat_direction(
    model: nn.Module, x: torch.Tensor, logp: torch.Tensor, xi: float, iterations: int, generator: torch.Generator | None
) -> torch.Tensor:
    """The virtual adversarial direction: unit vectors (one per image, shaped like ``x``) approximating the
    dominant eigenvector of the Hessian of ``KL(p(y|x) || p(y|x + r))`` at r = 0.

    Power iteration from a random unit direction d (Miyato et al. 2018, Algorithm 1, eq. 11):
    ``d <- unit(grad_r KL(p || p(y|x + r)) at r = xi * d)``, ``iterations`` times. ``logp`` (B, K) is the clean
    prediction's log-probabilities, held fixed. Batch-norm statistics are not updated by the probes, and the
    probes run in fp32 even under bf16 autocast: a probe of norm ``xi`` = 1e-6 would vanish in bf16.
    """
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x = x.detach().float()
    with frozen_bn_stats(model), torch.autocast(x.device.type, enabled=False):
        for _ in range(iterations):
            r = (xi * unit_vectors(d)).requires_grad_(True)
            dist = kl_divergence(logp, model(x + r)).mean()
            (d,) = torch.autograd.grad(dist, r)
    return unit_vectors(d)


def vat_loss(
    model: nn.Module,
    x: torch.Tensor,
    logits: torch.Tensor,
    eps: float,
    xi: float,
    iterations: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Virtual adversarial loss (Miyato et al. 2016, 2018):
    ``mean_i KL(p(y|x_i) || p(y|x_i + r_adv,i))`` with ``r_adv = eps * vat_direction(...)`` (L2 norm ``eps``
    per image, no clipping to [0, 1], as in the paper). ``logits`` (B, K) are the clean prediction, detached
    here ("unchain_y" in the authors' code): the gradient flows only through the perturbed prediction.
    A scalar; its gradient reaches the model's parameters, not ``x``.
    """
    logp = torch.log_softmax(logits.detach().float(), 1)
    r_adv = eps * vat_direction(model, x, logp, xi, iterations, generator)
    with frozen_bn_stats(model):
        return kl_divergence(logp, model(x.detach() + r_adv)).mean()


def fgsm_perturb(x: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    """The fast gradient sign method's image (Goodfellow et al. 2015, eq. 3): ``clip(x + eps * sign(grad),
    0, 1)``, detached. Where a pixel is not pushed past 0 or 1 it moves by exactly ``eps`` (L-inf norm eps)."""
    return (x.detach() + eps * grad.sign()).clamp_(0.0, 1.0)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(sum of cross-entropies)/dx, shaped like ``x`` (the parameters' ``.grad`` are left untouched)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """FGSM attack on (x, y) at L-inf radius ``eps``: one signed-gradient step of the cross-entropy
    (Goodfellow et al. 2015). Images stay in [0, 1]. Deterministic (``generator`` is unused: one signature
    for :data:`ATTACKS`)."""
    if eps == 0:
        return x
    return fgsm_perturb(x, input_gradient(model, x, y), eps)


PGD_STEPS, PGD_STEP_SIZE = 40, 0.01  # Madry et al. 2018, MNIST challenge: 40 steps of 0.01, random start


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = PGD_STEPS,
    step_size: float = PGD_STEP_SIZE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the negative loss, L-inf (Madry et al. 2018, eq. 2):
    ``x_0 = clip(x + U(-eps, eps), 0, 1)``, then ``x_{t+1} = clip(Proj_{||. - x||_inf <= eps}(x_t + step_size *
    sign(grad_x CE(x_t, y))), 0, 1)``. Every image returned lies within ``eps`` of ``x`` and within [0, 1]."""
    if eps == 0:
        return x
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    start = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * (2 * eps) - eps
    adv = torch.minimum(torch.maximum(x + start, lo), hi)
    for _ in range(steps):
        adv = torch.minimum(torch.maximum(adv + step_size * input_gradient(model, adv, y).sign(), lo), hi)
    return adv


# name -> attack(model, x, y, eps, generator=...) -> adversarial images
ATTACKS: dict[str, Callable[..., torch.Tensor]] = {"fgsm": fgsm, "pgd": pgd}


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float, batch_size: int = 1000, seed: int = 0
) -> float:
    """Accuracy in percent of ``model`` (put in eval mode) on ``attack``'s images of (x, y) at radius ``eps``.
    PGD's random starts are drawn from a generator seeded with ``seed``, so the number repeats."""
    was = model.training
    model.eval()
    g = torch.Generator(device=x.device).manual_seed(seed)
    correct = 0
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            adv = ATTACKS[attack](model, xb, yb, eps, generator=g)
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == yb).sum())
    finally:
        model.train(was)
    return 100.0 * correct / len(x)
