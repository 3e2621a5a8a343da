"""The cost of the issue-19 regularisers and attacks, on one CPU thread, each beside a baseline measured in the
same invocation (the machine is shared: read the ratios, not the seconds).

* ``epochs``: the training step of each experiment (``mlp_best`` is the baseline), interleaved rounds, the
  fastest of each, times the steps of an epoch.
* ``attacks``: the FGSM + PGD-40 curves of ``mnistlab evaluate`` (eps 0, 0.1, 0.2, 0.3) per 1,000 images, for
  an MLP and the ``cnn_best`` CNN (timing only: the weights are untrained).

    PYTHONPATH=src python benchmarks/regularizer_cost.py [--sections epochs attacks]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mnistlab.analysis import evaluate as ev
from mnistlab.core import checks, config, data
from mnistlab.core.models import build_model
from mnistlab.core.train import Trainer

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
EPOCH_CONFIGS = ["mlp_best", "mlp_noise", "mlp_noise_ema", "mlp_vat", "mlp_fgsm"]


def epochs(ds: data.Dataset, steps: int = 40, rounds: int = 3) -> None:
    trainers = {
        n: Trainer(checks.load_config(EXPERIMENTS / f"{n}.toml"), ds, torch.device("cpu")) for n in EPOCH_CONFIGS
    }
    best = dict.fromkeys(trainers, float("inf"))
    for rnd in range(rounds):
        for name, tr in trainers.items():
            tr.model.train()
            b = tr.cfg.train.batch_size
            order = tr.train_idx[torch.randperm(len(tr.train_idx), generator=torch.Generator().manual_seed(rnd))]
            start = time.perf_counter()
            for s in range(steps):
                tr._step(order[s * b : (s + 1) * b])
                if tr.ema is not None:
                    tr.ema.update_parameters(tr.model)
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    for name, tr in trainers.items():
        print(
            f"{name}: {1000 * best[name]:.1f} ms/step x {tr.steps_per_epoch} steps = "
            f"{best[name] * tr.steps_per_epoch:.1f} s/epoch, {best[name] / best['mlp_best']:.2f} x mlp_best"
        )


def attacks(ds: data.Dataset, images: int = 200) -> None:
    x, y = data.to_float(ds.test_images[:images]), ds.test_labels[:images]
    nets = {
        "2 x 1024 MLP": ["model.hidden=[1024, 1024]"],
        "cnn_best's CNN (width 32)": ["model.arch='cnn'", "model.width=32", "model.normalize=true"],
    }
    for name, overrides in nets.items():
        cfg = checks.set_values(config.Config(), checks.parse_overrides(overrides))
        model = build_model(cfg.model, torch.Generator().manual_seed(0)).eval()
        start = time.perf_counter()
        ev.attack_curves(model, x, y)
        per_1000 = (time.perf_counter() - start) / images * 1000
        print(f"{name}: {per_1000:.0f} s per 1,000 images, {per_1000 * 10 / 60:.1f} min for 10,000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=["epochs", "attacks"], default=["epochs", "attacks"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = data.load()
    for section in args.sections:
        {"epochs": epochs, "attacks": attacks}[section](ds)


if __name__ == "__main__":
    main()
