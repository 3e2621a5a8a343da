"""mnistlab beside the tools a user would pick instead: the same two jobs, interleaved in one invocation.

Jobs:

* ``report``: the report's experiment: 54,000/6,000 split of the training set (the report's split, seed 123),
  784-1024-10 ReLU MLP, plain SGD at lr 0.1, batch 100, 30 epochs, shuffled every epoch, validation and
  test accuracy after every epoch. Each tool written the way its documentation teaches:

  - ``mnistlab``: ``mnistlab train`` with the default config (the report's),
  - ``torch``: plain PyTorch, data as tensors in memory, ``nn.Sequential`` + ``torch.optim.SGD``,
  - ``jax_step``: JAX + optax, one jitted training step (batch gathered inside the jit), a Python loop,
  - ``jax_scan``: JAX + optax, the whole epoch compiled as one ``lax.scan`` over its batches,
  - ``keras_jax``: Keras 3 on the JAX backend, ``model.fit`` (XLA-compiled steps),
  - ``sklearn``: scikit-learn's ``MLPClassifier`` (solver "sgd", no momentum, no L2), one ``partial_fit``
    per epoch.

* ``speed``: time to 99% test accuracy on all 60,000 training images:

  - ``mnistlab``: ``mnistlab train --config experiments/speedrun.toml``,
  - ``fastest``: a CPU port of the fastest public recipe we know (the study "Training a NN to 99% accuracy
    on MNIST in 0.76 seconds", tuomaso/train_mnist_fast on GitHub, notebook 8_Final_00s76: conv 5x5 (24) ->
    max-pool -> ReLU -> conv 3x3 (32) -> max-pool -> ReLU -> 256 -> 10, Adam lr
    0.01 with betas (0.7, 0.9) and a one-cycle schedule, batch 256, one epoch on normalised images shuffled
    once; 99.04% mean test accuracy over 30 seeds, 0.76 s on a laptop GPU), in plain PyTorch.

Each run is its own subprocess (so imports, JIT caches and memory do not leak between tools); the tools
take turns within each pass, in an order rotated from pass to pass, so a slow spell of a shared machine
hits all of them. Recorded per run: process wall time and peak resident memory (``wait4``), training time
(the sum of the epochs' training steps, evaluation excluded; JAX's and Keras's first epoch includes
compiling), the per-epoch training time, accuracies. Tables use the lower quartile of the per-epoch time
over all epochs after the first and all passes: the figure a VM's level shifts disturb least.

Setup: the peers' dependencies live outside mnistlab's environment (benchmarks/requirements-peers.txt):

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install -r benchmarks/requirements-peers.txt
    python benchmarks/peers.py --peers-python /work/peers-venv/bin/python          # 3 passes, ~30 min quiet
    python benchmarks/peers.py --peers-python /work/peers-venv/bin/python --quick  # 2 epochs, 1 pass: a check

The torch-based tools run under this interpreter (mnistlab's environment), the others under
``--peers-python``. Writes ``benchmarks/results/peers_KIND.json`` and ``.md`` (KIND: this CPU's kind, see
``mnistlab.core.hardware``), or ``peers_quick_KIND`` with ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import peak_rss  # the launcher beside this script (a script's own folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
REPORT_TOOLS = ("mnistlab", "torch", "jax_step", "jax_scan", "keras_jax", "sklearn")
SPEED_TOOLS = ("mnistlab", "fastest")
SPEED_SEEDS = 200  # the speed job's seeds are 200, 201, ...: none of them chose mnistlab's recipe (bench.py)
TORCH_TOOLS = {"mnistlab", "torch", "fastest"}  # run under mnistlab's interpreter; the rest under --peers-python
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# ---------------------------------------------------------------------------- workers (one tool, one run)
# A worker reads the data from an .npz the driver wrote, trains, and writes a JSON result. Workers import only
# what their tool needs: the peers' environment has no torch and no mnistlab.


def _lower_quartile(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=4)[0] if len(xs) >= 4 else min(xs)


def _result(tool: str, epochs: list[dict], versions: dict, **extra) -> dict:
    return {
        "tool": tool,
        "epochs": epochs,
        "train_s": sum(e["train_s"] for e in epochs),
        "versions": versions,
        "final_val_acc": epochs[-1].get("val_acc"),
        "final_test_acc": epochs[-1]["test_acc"],
        **extra,
    }


def worker_torch(d, epochs: int, seed: int) -> dict:
    """Plain PyTorch, the way its tutorials write it, with the data in memory as tensors."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    xtr, ytr = torch.from_numpy(d["x_train"]), torch.from_numpy(d["y_train"]).long()
    xva, yva = torch.from_numpy(d["x_val"]), torch.from_numpy(d["y_val"]).long()
    xte, yte = torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"]).long()
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def accuracy(x, y):
        with torch.no_grad():
            return 100.0 * (model(x).argmax(1) == y).float().mean().item()

    rows = []
    for epoch in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(xtr))
        for i in range(len(xtr) // 100):
            idx = perm[i * 100 : (i + 1) * 100]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        rows.append(
            {
                "epoch": epoch + 1,
                "train_s": time.perf_counter() - start,
                "val_acc": accuracy(xva, yva),
                "test_acc": accuracy(xte, yte),
            }
        )
    return _result("torch", rows, {"torch": torch.__version__}, threads=torch.get_num_threads())


def _jax_mlp(seed: int):
    """Parameters of the 784-1024-10 MLP (PyTorch's default uniform init), its loss and accuracy."""
    import jax
    import jax.numpy as jnp
    import optax

    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)

    def uniform(k, shape, fan_in):
        return jax.random.uniform(k, shape, jnp.float32, -1 / fan_in**0.5, 1 / fan_in**0.5)

    params = {
        "w1": uniform(k1, (784, 1024), 784),
        "b1": uniform(k2, (1024,), 784),
        "w2": uniform(k3, (1024, 10), 1024),
        "b2": uniform(k4, (10,), 1024),
    }

    def logits(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

    @jax.jit
    def correct(p, x, y):
        return (logits(p, x).argmax(1) == y).sum()

    return params, loss, correct


def worker_jax(d, epochs: int, seed: int, scan: bool) -> dict:
    """JAX + optax: a jitted step in a Python loop, or (``scan``) the whole epoch as one compiled lax.scan."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    xtr, ytr = jnp.asarray(d["x_train"]), jnp.asarray(d["y_train"].astype(np.int32))
    evals = {
        "val": (jnp.asarray(d["x_val"]), jnp.asarray(d["y_val"].astype(np.int32))),
        "test": (jnp.asarray(d["x_test"]), jnp.asarray(d["y_test"].astype(np.int32))),
    }
    params, loss_fn, correct = _jax_mlp(seed)
    opt = optax.sgd(0.1)
    opt_state = opt.init(params)
    steps, b = len(d["x_train"]) // 100, 100

    def step(carry, idx):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, xtr[idx], ytr[idx])
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    jit_step = jax.jit(lambda p, s, idx: step((p, s), idx))

    @jax.jit
    def epoch_scan(p, s, perm):
        (p, s), losses = jax.lax.scan(step, (p, s), perm[: steps * b].reshape(steps, b))
        return p, s, losses.mean()

    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(epochs):
        start = time.perf_counter()
        perm = jnp.asarray(rng.permutation(len(d["x_train"])).astype(np.int32))
        if scan:
            params, opt_state, _ = epoch_scan(params, opt_state, perm)
        else:
            for i in range(steps):
                (params, opt_state), _loss = jit_step(params, opt_state, perm[i * b : (i + 1) * b])
        jax.block_until_ready(params)
        row = {"epoch": epoch + 1, "train_s": time.perf_counter() - start}
        for name, (x, y) in evals.items():
            row[f"{name}_acc"] = 100.0 * int(correct(params, x, y)) / len(y)
        rows.append(row)
    return _result(
        "jax_scan" if scan else "jax_step",
        rows,
        {"jax": jax.__version__, "optax": optax.__version__},
        devices=str(jax.devices()),
    )


def worker_keras(d, epochs: int, seed: int) -> dict:
    """Keras 3 on the JAX backend: Sequential, compile, fit, as its guides write it."""
    os.environ["KERAS_BACKEND"] = "jax"
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rows: list[dict] = []

    class Clock(keras.callbacks.Callback):
        """Training time of each epoch: from its start to the start of its validation."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.trained = time.perf_counter(), None

        def on_test_begin(self, logs=None):
            if self.trained is None:
                self.trained = time.perf_counter() - self.start

        def on_epoch_end(self, epoch, logs=None):
            _, test_acc = model.evaluate(d["x_test"], d["y_test"], batch_size=2000, verbose=0)
            rows.append(
                {
                    "epoch": epoch + 1,
                    "train_s": self.trained,
                    "val_acc": 100.0 * logs["val_accuracy"],
                    "test_acc": 100.0 * test_acc,
                }
            )

    model.fit(
        d["x_train"],
        d["y_train"],
        batch_size=100,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        validation_data=(d["x_val"], d["y_val"]),
        validation_batch_size=2000,
        callbacks=[Clock()],
    )
    import jax

    return _result(
        "keras_jax", rows, {"keras": keras.__version__, "jax": jax.__version__}, backend=keras.backend.backend()
    )


def worker_sklearn(d, epochs: int, seed: int) -> dict:
    """scikit-learn's MLPClassifier with the report's settings: one partial_fit (one shuffled pass) per epoch."""
    import numpy as np
    import sklearn
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=(1024,),
        activation="relu",
        solver="sgd",
        learning_rate_init=0.1,
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=100,
        shuffle=True,
        random_state=seed,
    )
    rows = []
    for epoch in range(epochs):
        start = time.perf_counter()
        clf.partial_fit(d["x_train"], d["y_train"], classes=np.arange(10))
        rows.append(
            {
                "epoch": epoch + 1,
                "train_s": time.perf_counter() - start,
                "val_acc": 100.0 * clf.score(d["x_val"], d["y_val"]),
                "test_acc": 100.0 * clf.score(d["x_test"], d["y_test"]),
            }
        )
    return _result("sklearn", rows, {"scikit-learn": sklearn.__version__, "numpy": np.__version__})


def worker_fastest(d, epochs: int, seed: int) -> dict:
    """The fastest public recipe's training, ported to the CPU unchanged (module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    order = torch.randperm(len(d["x_train"]))  # the recipe shuffles the training set once, when saving it
    x = ((torch.from_numpy(d["x_train"]) - MNIST_MEAN) / MNIST_STD).view(-1, 1, 28, 28)[order]
    y = torch.from_numpy(d["y_train"]).long()[order]
    xte = ((torch.from_numpy(d["x_test"]) - MNIST_MEAN) / MNIST_STD).view(-1, 1, 28, 28)
    yte = torch.from_numpy(d["y_test"]).long()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 24, 5), nn.Conv2d(24, 32, 3)
            self.fc1, self.fc2 = nn.Linear(800, 256), nn.Linear(256, 10)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 2))  # (B, 24, 12, 12)
            x = F.relu(F.max_pool2d(self.conv2(x), 2))  # (B, 32, 5, 5)
            return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))

    model, b = Net(), 256
    steps = (len(x) + b - 1) // b  # the last, partial batch too
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps * epochs, cycle_momentum=False)
    rows = []
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        for i in range(steps):
            loss = F.cross_entropy(model(x[i * b : (i + 1) * b]), y[i * b : (i + 1) * b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        trained = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            acc = (
                100.0
                * sum(
                    (model(xte[i : i + 2000]).argmax(1) == yte[i : i + 2000]).sum().item()
                    for i in range(0, len(xte), 2000)
                )
                / len(yte)
            )
        rows.append({"epoch": epoch + 1, "train_s": trained, "test_acc": acc})
    return _result("fastest", rows, {"torch": torch.__version__}, threads=torch.get_num_threads())


WORKERS = {
    "torch": worker_torch,
    "jax_step": lambda d, e, s: worker_jax(d, e, s, False),
    "jax_scan": lambda d, e, s: worker_jax(d, e, s, True),
    "keras_jax": worker_keras,
    "sklearn": worker_sklearn,
    "fastest": worker_fastest,
}


def run_worker(args: argparse.Namespace) -> None:
    import numpy as np

    d = dict(np.load(args.data))
    res = WORKERS[args.worker](d, args.epochs, args.seed)
    Path(args.json).write_text(json.dumps(res) + "\n")


# ---------------------------------------------------------------------------- the driver


def write_data(path: Path, job: str) -> None:
    """The job's data as float32 pixels in [0, 1], (N, 784), and int64 labels: the report's split (its seed
    123 and its random_split draws, via mnistlab.core.data) for ``report``, all 60,000 images for ``speed``."""
    import numpy as np
    import torch

    from mnistlab.core import data

    ds = data.load()
    x = data.to_float(ds.train_images).reshape(-1, 784).numpy()
    y = ds.train_labels.numpy()
    arrays = {"x_test": data.to_float(ds.test_images).reshape(-1, 784).numpy(), "y_test": ds.test_labels.numpy()}
    if job == "report":
        train_idx, val_idx = data.split_indices(len(x), 0.1, torch.Generator().manual_seed(123))
        arrays.update(
            x_train=x[train_idx.numpy()],
            y_train=y[train_idx.numpy()],
            x_val=x[val_idx.numpy()],
            y_val=y[val_idx.numpy()],
        )
    else:
        arrays.update(x_train=x, y_train=y)
    np.savez(path, **arrays)


THREADS = 0  # --threads: 0 leaves every tool its default (all cores)


def thread_env() -> dict[str, str]:
    """The environment that holds every tool to ``THREADS`` threads: OpenMP (torch, MKL), OpenBLAS
    (numpy, scikit-learn) and XLA's CPU matrix kernels (single-threaded Eigen: one thread is the only count
    XLA takes from a flag)."""
    env = dict(os.environ)
    if THREADS:
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS))
        if THREADS == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


def pin_to_one_cpu() -> None:
    """Run the tool (and every thread it starts) on one CPU: XLA's CPU client keeps a thread pool of its own
    whatever its flags say (measured: several threads busy with --xla_cpu_multi_thread_eigen=false), so only
    the affinity holds every tool to one core. XLA and OpenMP size their pools from it."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``: wall seconds, its peak RSS in MiB (through benchmarks/peak_rss.py, so the driver's own
    memory is not counted) and its output; a failure stops the benchmark."""
    wall, peak, proc = peak_rss.measure(
        cmd, cwd=ROOT, env=thread_env(), preexec_fn=pin_to_one_cpu if THREADS == 1 else None
    )
    if proc.returncode != 0:
        raise SystemExit(f"peers: failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    return wall, peak, proc.stdout


def run_mnistlab(tmp: Path, job: str, epochs: int, seed: int) -> dict:
    out = tmp / f"mnistlab_{job}_{seed}_{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "mnistlab",
        "train",
        "--quiet",
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--device",
        "cpu",
        *(["--threads", str(THREADS)] if THREADS else []),
    ]
    cmd += ["--config", "experiments/speedrun.toml"] if job == "speed" else ["--epochs", str(epochs)]
    wall, rss, _ = timed(cmd)
    info = json.loads((out / "run.json").read_text())
    rows = [
        {"epoch": r["epoch"], "train_s": r["seconds"], "val_acc": r.get("val_acc"), "test_acc": r["test_acc"]}
        for r in json.loads((out / "metrics.json").read_text())
    ]
    import torch

    return {
        **_result(
            "mnistlab",
            rows,
            {"torch": torch.__version__, "mnistlab": info["environment"]["mnistlab"]},
            precision=info["config"]["train"]["precision"],
            config=info["config"]["name"],
        ),
        "wall_s": wall,
        "peak_rss_mib": rss,
    }


def run_tool(tool: str, tmp: Path, job: str, epochs: int, seed: int, peers_python: str) -> dict:
    if tool == "mnistlab":
        return run_mnistlab(tmp, job, epochs, seed)
    python = sys.executable if tool in TORCH_TOOLS else peers_python
    out = tmp / f"{tool}_{job}_{seed}.json"
    wall, rss, _ = timed(
        [
            python,
            __file__,
            "--worker",
            tool,
            "--data",
            str(tmp / f"{job}.npz"),
            "--epochs",
            str(epochs),
            "--seed",
            str(seed),
            "--json",
            str(out),
        ]
    )
    return {**json.loads(out.read_text()), "wall_s": wall, "peak_rss_mib": rss}


def summarize(runs: list[dict]) -> dict:
    """Per tool: the lower quartile of the per-epoch training time (first epochs left out where there are
    more), mean training time, wall time and peak memory, and accuracies."""
    steady = [e["train_s"] for r in runs for e in (r["epochs"][1:] or r["epochs"])]
    tests = [r["final_test_acc"] for r in runs]
    return {
        "epoch_s_lq": round(_lower_quartile(steady), 4),
        "train_s_mean": round(statistics.mean(r["train_s"] for r in runs), 3),
        "train_s_min": round(min(r["train_s"] for r in runs), 3),
        "train_s_std": round(statistics.stdev([r["train_s"] for r in runs]), 3) if len(runs) > 1 else 0.0,
        "wall_s_mean": round(statistics.mean(r["wall_s"] for r in runs), 2),
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1),
        "test_acc_mean": round(statistics.mean(tests), 3),
        "test_acc_min": round(min(tests), 2),
        "at_99": sum(t >= 99.0 for t in tests),
        "runs": len(runs),
        "val_acc_mean": round(statistics.mean(r["final_val_acc"] for r in runs), 3)
        if all(r.get("final_val_acc") is not None for r in runs)
        else None,
    }


def markdown(res: dict) -> str:
    lines = [
        f"# mnistlab beside its peers{' (quick check, not a measurement)' if res['quick'] else ''}",
        "",
        f"Machine: {res['machine']}. Threads per tool: {res.get('threads', 'default')}.",
        "",
        f"Command: `{res['command']}`; {res['date']}. Versions: {res['versions']}.",
        "",
        *([f"**Note:** {res['note']}", ""] if res.get("note") else []),
    ]
    if "report" in res:
        r = res["report"]
        lines += [
            f"## The report's experiment ({r['epochs']} epochs, {r['passes']} passes, tools interleaved)",
            "",
            "Per-epoch training time: lower quartile over the epochs after the first, all passes. Training "
            "time: all epochs' training steps (the first epoch holds JAX's and Keras's compiling). Wall: the "
            f"whole process (imports, data, {r['epochs']} evaluations of validation and test).",
            "",
            "| tool | epoch s (LQ) | vs mnistlab | train s (mean) | wall s (mean) | peak RSS MiB | "
            "final val % | final test % |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        base = r["summary"]["mnistlab"]["epoch_s_lq"]
        for tool, s in r["summary"].items():
            lines.append(
                f"| {tool} | {s['epoch_s_lq']:.3f} | {s['epoch_s_lq'] / base:.2f}x | {s['train_s_mean']:.2f} | "
                f"{s['wall_s_mean']:.2f} | {s['peak_rss_mib']:.0f} | {s['val_acc_mean']:.2f} | "
                f"{s['test_acc_mean']:.2f} |"
            )
        peers = {t: s for t, s in r["summary"].items() if t != "mnistlab"}
        if peers:
            best = min(peers, key=lambda t: peers[t]["epoch_s_lq"])
            lines += [
                "",
                f"Fastest peer: {best}; mnistlab is {peers[best]['epoch_s_lq'] / base:.2f}x faster per "
                f"epoch (goal: 1.2x).",
                "",
            ]
    if "speed" in res:
        r = res["speed"]
        lines += [
            f"## Time to 99% test accuracy ({r['seeds']} seeds each, tools interleaved)",
            "",
            "| tool | train s (mean ± std) | train s (min) | wall s (mean) | peak RSS MiB | test % (mean) | "
            "test % (min) | seeds >= 99% |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for tool, s in r["summary"].items():
            lines.append(
                f"| {tool} | {s['train_s_mean']:.2f} ± {s['train_s_std']:.2f} | {s['train_s_min']:.2f} | "
                f"{s['wall_s_mean']:.2f} | {s['peak_rss_mib']:.0f} | {s['test_acc_mean']:.3f} | "
                f"{s['test_acc_min']:.2f} | {s['at_99']}/{s['runs']} |"
            )
        s = r["summary"]
        if "fastest" in s and "mnistlab" in s:
            lines += [
                "",
                f"mnistlab's recipe vs the fastest public recipe's CPU port: "
                f"{s['fastest']['train_s_mean'] / s['mnistlab']['train_s_mean']:.2f}x faster in mean training "
                f"time (goal: 1.2x at the same accuracy).",
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--peers-python",
        default=os.environ.get("PEERS_PYTHON", "/work/peers-venv/bin/python"),
        help="interpreter with benchmarks/requirements-peers.txt installed (jax, optax, keras, "
        "scikit-learn); default $PEERS_PYTHON or /work/peers-venv/bin/python",
    )
    ap.add_argument("--jobs", default="report,speed", help="report, speed or both")
    ap.add_argument("--tools", default="", help="comma-separated subset of the tools (default: all)")
    ap.add_argument("--passes", type=int, default=3, help="passes over the report job's tools")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the report job")
    ap.add_argument("--seeds", type=int, default=10, help="seeds of the speed job (200, 201, ...)")
    ap.add_argument(
        "--quick", action="store_true", help="2 epochs, 1 pass, 1 seed: checks the script, measures nothing"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="1: every tool pinned to one CPU with one thread (steadier "
        "ratios on a busy machine); 0: each tool's default, all cores (the figures that count)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument(
        "--name",
        default="",
        help="results file name without extension (default: peers_KIND, with _quick and _1t where they apply)",
    )
    # worker mode (internal): one tool, one run
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.passes, args.epochs, args.seeds = 1, 2, 1
    if args.threads not in (0, 1):
        ap.error("--threads must be 0 (each tool's default: all cores) or 1")
    global THREADS
    THREADS = args.threads
    jobs = [j for j in args.jobs.split(",") if j]
    chosen = set(args.tools.split(",")) if args.tools else set(REPORT_TOOLS) | set(SPEED_TOOLS)
    unknown = chosen - set(REPORT_TOOLS) - set(SPEED_TOOLS)
    if unknown or not set(jobs) <= {"report", "speed"}:
        ap.error(f"unknown tools or jobs: {sorted(unknown) or args.jobs}")
    if chosen - TORCH_TOOLS and not Path(args.peers_python).is_file():
        ap.error(
            f"no interpreter at {args.peers_python}: create the peers' environment (see --help's text at "
            f"the top of benchmarks/peers.py) or pass --peers-python"
        )

    from mnistlab.core import hardware

    desc = hardware.describe("cpu")
    res: dict = {
        "machine": hardware.summary(desc),
        "hardware": desc,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:]),
    }
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for job in jobs:
            write_data(tmp / f"{job}.npz", job)
        if "report" in jobs:
            tools = [t for t in REPORT_TOOLS if t in chosen]
            runs: dict[str, list[dict]] = {t: [] for t in tools}
            for p in range(args.passes):
                for tool in tools[p % len(tools) :] + tools[: p % len(tools)]:  # rotate the order each pass
                    r = run_tool(tool, tmp, "report", args.epochs, 123 + p, args.peers_python)
                    runs[tool].append(r)
                    versions.update(r["versions"])
                    print(
                        f"[report pass {p + 1}] {tool}: train {r['train_s']:.2f} s, wall {r['wall_s']:.1f} s, "
                        f"test {r['final_test_acc']:.2f}%",
                        flush=True,
                    )
            res["report"] = {
                "epochs": args.epochs,
                "passes": args.passes,
                "runs": runs,
                "summary": {t: summarize(rs) for t, rs in runs.items()},
            }
        if "speed" in jobs:
            tools = [t for t in SPEED_TOOLS if t in chosen]
            runs = {t: [] for t in tools}
            for i, seed in enumerate(range(SPEED_SEEDS, SPEED_SEEDS + args.seeds)):
                for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
                    r = run_tool(tool, tmp, "speed", 1, seed, args.peers_python)  # mnistlab: its config's epochs
                    runs[tool].append(r)
                    versions.update(r["versions"])
                    print(
                        f"[speed seed {seed}] {tool}: train {r['train_s']:.2f} s, test {r['final_test_acc']:.2f}%",
                        flush=True,
                    )
            res["speed"] = {"seeds": args.seeds, "runs": runs, "summary": {t: summarize(rs) for t, rs in runs.items()}}
    res["versions"] = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    res["threads"] = args.threads or "default (all cores)"
    name = (
        args.name
        or f"peers_{'quick_' if args.quick else ''}{desc['cpu']['kind']}{f'_{args.threads}t' if args.threads else ''}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / f"{name}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
