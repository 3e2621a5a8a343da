"""Command-line glue: parse arguments, call library functions, turn user errors into one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .core import config as config_mod
from .errors import MnistlabError
from .text import plural

if TYPE_CHECKING:
    from .core.data import Dataset
    from .core.experiment import RunResult
    from .studies.ray_executor import RayOptions

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _logger(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda msg: None
    from tqdm import tqdm

    return lambda msg: tqdm.write(msg, file=sys.stdout)


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def default_out(name: str) -> Path:
    """runs/NAME-YYYYmmdd-HHMMSS, with a suffix if that exists."""
    base = Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


# ---------------------------------------------------------------- shared options


def _port(text: str) -> int:
    """A TCP port number, 1-65535 (argparse type)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {port}")
    return port


def check_paths(args: argparse.Namespace) -> None:
    """Output paths checked before any work: an output directory that exists as a file, or an output file
    that exists as a directory, is one line and exit 2 rather than a traceback after the work is done; the
    directories a report reads must exist."""
    out = getattr(args, "out", None)
    if out is not None and out.exists() and not out.is_dir():
        raise MnistlabError(f"--out {out} exists and is not a directory")
    onnx = getattr(args, "onnx", None)
    if onnx is not None and onnx.is_dir():
        raise MnistlabError(f"--onnx {onnx} is a directory; give a file name such as model.onnx")
    for flag in ("compare", "activations", "evaluate"):
        value = getattr(args, flag, None) if args.command == "report" else None
        for path in value if isinstance(value, list) else [value] if value else []:
            if not path.is_dir():
                raise MnistlabError(f"--{flag} {path} is not a directory")


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


# flag -> (config key, converter from the flag's text to a typed value)
OVERRIDE_FLAGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "--epochs": ("train.epochs", int),
    "--lr": ("optim.lr", float),
    "--batch-size": ("train.batch_size", int),
    "--hidden": ("model.hidden", _int_list),
    "--activation": ("model.activation", str),
    "--seed": ("train.seed", int),
    "--dataset": ("data.dataset", str),
    "--data-dir": ("data.dir", str),
    "--precision": ("train.precision", str),
    "--device": ("train.device", str),
    "--threads": ("train.threads", int),
    "--optimizer": ("optim.name", str),
    "--arch": ("model.arch", str),
    "--engine": ("train.engine", str),
}
_HELP = {
    "--hidden": "hidden widths, comma-separated (e.g. 512,512)",
    "--dataset": "mnist (bundled), fashion-mnist, kmnist, qmnist, emnist-balanced, ... (see `mnistlab datasets`)",
    "--data-dir": "a folder with the dataset's four MNIST-format files (default: the bundled, installed or "
    "cached copy; fetched once when missing)",
    "--precision": "fp32, bf16, or auto (bf16 only where the hardware runs it faster)",
    "--device": "auto, cpu, cuda or cuda:N",
    "--engine": "torch, or numpy for the from-scratch NumPy MLP",
}
# the overrides that studies (compare, tune) accept besides --set: what a quick small study changes
STUDY_FLAGS = [
    "--epochs",
    "--lr",
    "--batch-size",
    "--hidden",
    "--dataset",
    "--data-dir",
    "--precision",
    "--device",
    "--threads",
]


def _add_override_options(p: argparse.ArgumentParser, overrides: Sequence[str], with_set: bool = True) -> None:
    for flag in overrides:
        key = OVERRIDE_FLAGS[flag][0]
        p.add_argument(flag, dest=key.replace(".", "__"), metavar="X", help=_HELP.get(flag, f"set {key}"))
    if with_set:
        p.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="override any key, e.g. optim.momentum=0.9 (repeatable)"
        )


def _add_moved_data_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the run's data is now, when it moved (checked against the SHA-256 the run recorded)",
    )


def _add_run_options(p: argparse.ArgumentParser, overrides: Sequence[str], with_set: bool = False) -> None:
    _add_override_options(p, overrides, with_set)
    p.add_argument("--out", type=Path, help="run directory (default: runs/NAME-TIMESTAMP)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no per-epoch table")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Typed values from the override flags, then ``--set KEY=VALUE`` (TOML values), later ones winning."""
    from .core.checks import parse_overrides

    values: dict[str, object] = {}
    for flag, (key, conv) in OVERRIDE_FLAGS.items():
        text = getattr(args, key.replace(".", "__"), None)
        if text is not None:
            try:
                values[key] = conv(text)
            except ValueError:
                want = {int: "an integer", float: "a number", _int_list: "a list of integers such as 512,512"}[conv]
                raise MnistlabError(f"config key '{key}' must be {want}, got {text!r} ({flag})") from None
    return {**values, **parse_overrides(getattr(args, "set", None) or [])}


# ---------------------------------------------------------------- commands


def _trackers(args: argparse.Namespace):
    from .output.tracking import Trackers

    return Trackers(getattr(args, "track", None))


def _add_track_option(p: argparse.ArgumentParser) -> None:
    from .output.tracking import TRACKERS  # light: the trackers' libraries load when one starts

    p.add_argument(
        "--track",
        action="append",
        choices=list(TRACKERS),
        help="follow the run(s) in TensorBoard (under the run directory) or MLflow (its default store, "
        "or MLFLOW_TRACKING_URI); repeatable; needs mnistlab[track]",
    )


def _run_and_report(cfg: config_mod.Config, args: argparse.Namespace, dataset: Dataset | None = None) -> RunResult:
    from .core.experiment import run

    log = _logger(args.quiet)
    result = run(
        cfg,
        args.out or default_out(cfg.name),
        overwrite=args.overwrite,
        log=log,
        show_progress=_show_progress(args),
        observers=list(_trackers(args)),
        dataset=dataset,
    )
    _print_summary(result)
    return result


def _print_summary(result: RunResult) -> None:
    from .core.metrics import BAND, WINDOW

    s = result.info["summary"]
    if result.convergence is not None:
        print(
            f"converged at epoch {result.convergence} (validation accuracy within ±{BAND} points of its "
            f"last-{WINDOW}-epoch mean from then on)"
        )
    if "best_epoch" in s:
        print(
            f"best validation accuracy {s['best_val_acc']:.3f}% at epoch {s['best_epoch']}; "
            f"test accuracy there {s['test_acc_at_best_val']:.3f}%; final test accuracy {s['final_test_acc']:.3f}%"
        )
    else:
        print(f"final test accuracy {s['final_test_acc']:.3f}%")
    print(f"wrote {result.run_dir.path}")


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        from .core.experiment import resume

        given = [
            f
            for f in ("config", "set", "out", *(k.replace(".", "__") for k, _ in OVERRIDE_FLAGS.values()))
            if getattr(args, f, None)
        ]
        if given or args.overwrite:
            raise MnistlabError("--resume continues a run with its own config; it takes no other run options")
        result = resume(
            args.resume, log=_logger(args.quiet), show_progress=_show_progress(args), observers=list(_trackers(args))
        )
        _print_summary(result)
        return 0
    from .core.checks import load_config, set_values

    # without --config: the report's MLP (the defaults, named report_mlp)
    overrides = _overrides(args)
    cfg = load_config(args.config, overrides) if args.config else set_values(config_mod.Config(), overrides)
    _run_and_report(cfg, args)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .core.checks import set_values
    from .core.metrics import GATE_TRAIN_LOSS, GATE_VAL_ACC, compare_with_report, matches_report, report_table

    cfg = set_values(config_mod.Config(name="reproduce"), _overrides(args))
    result = _run_and_report(cfg, args)
    if result.info.get("data_is_mnist") and len(result.history) == 30:
        gap = compare_with_report(result.history, report_table())
        verdict = "matches" if matches_report(gap) else "DIFFERS FROM"
        loss_gate = f"{GATE_TRAIN_LOSS:.0e}".replace("e-0", "e-")  # 1e-3, as the docs write it
        print(
            f"{verdict} the report: largest per-epoch gap {gap['max_val_acc_diff']:.3f} points of validation "
            f"accuracy (gate {GATE_VAL_ACC:g}), {gap['max_train_loss_diff']:.2e} of training loss "
            f"(gate {loss_gate})"
        )
        print(
            "note: the report's test column used raw 0-255 pixels; mnistlab scales test images to 0-1 "
            "as in training (see README)"
        )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .core.metrics import diverged_epoch
    from .core.runs import RunDir
    from .output.plots import run_figures

    run = RunDir(args.run_dir)
    history = run.read_history()
    name = run.read_info().get("name", "") if run.file("run.json").exists() else ""
    conv = run_figures(history, run.path, name)
    diverged = diverged_epoch(history)
    print(
        f"wrote {run.file('accuracy.png')} and {run.file('loss.png')}"
        + (f"; converged at epoch {conv}" if conv else "")
        + (f"; diverged at epoch {diverged}" if diverged else "")
    )
    return 0


def cmd_final(args: argparse.Namespace) -> int:
    from .core.datasets import load_for_run
    from .core.experiment import final_config
    from .core.runs import RunDir

    cfg, best = final_config(args.run_dir, args.data_dir)
    run = RunDir(args.run_dir)
    dataset = load_for_run(run.path, run.read_config(), args.data_dir, log=_logger(args.quiet))  # the run's own data
    print(
        f"final model: {cfg.name}, trained on train + validation for {plural(best, 'epoch')} (the best epoch on "
        f"validation)"
    )
    _run_and_report(cfg, args, dataset)
    return 0


def _ray_options(args: argparse.Namespace) -> RayOptions | None:
    if args.ray is None:
        if args.cpus_per_run is not None or args.gpus_per_run is not None or args.ray_timeout is not None:
            raise MnistlabError("--cpus-per-run, --gpus-per-run and --ray-timeout need --ray")
        return None
    from .studies.ray_executor import RayOptions

    return RayOptions(
        address=args.ray or None,
        cpus_per_run=1.0 if args.cpus_per_run is None else args.cpus_per_run,
        gpus_per_run=args.gpus_per_run or 0.0,
        schedule_timeout=600.0 if args.ray_timeout is None else args.ray_timeout,
    )


def _add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray: no ADDRESS starts an embedded local Ray; auto, HOST:PORT or ray://HOST:10001 "
        "joins a running cluster (needs mnistlab[scale])",
    )
    p.add_argument("--cpus-per-run", type=float, metavar="N", help="CPUs each run asks Ray for (default 1)")
    p.add_argument(
        "--gpus-per-run", type=float, metavar="F", help="GPUs each run asks Ray for; fractions share a GPU (default 0)"
    )
    p.add_argument(
        "--ray-timeout",
        type=float,
        metavar="SECONDS",
        help="on a cluster: how long runs may wait for a node that offers their resources before the "
        "study stops (default 600)",
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from .core.runs import check_study_dir
    from .studies import compare

    if args.seeds < 1:
        raise MnistlabError("--seeds must be at least 1")
    ray_options = _ray_options(args)
    overrides = _overrides(args)
    cfgs = compare.load_configs(args.configs, overrides)
    out = args.out or Path("runs") / "compare"
    check_study_dir(out, "compare")  # before anything is written there
    tracker = _trackers(args)  # checks the tracking store before anything is written
    _make_dir(out)
    log = _logger(args.quiet)
    with _study_lock(out):
        if ray_options is None:
            rows = compare.run_study(
                cfgs,
                args.seeds,
                out,
                log=log,
                show_progress=_show_progress(args),
                tracker=tracker,
                ensemble=args.ensemble,
            )
        else:
            rows = compare.run_study_ray(
                cfgs,
                args.seeds,
                out,
                ray_options,
                log=log,
                show_progress=_show_progress(args),
                tracker=tracker,
                epoch_lines=not args.quiet,
                ensemble=args.ensemble,
            )
    print(compare.markdown_table(rows), end="")
    print(f"wrote {out / 'compare.md'}, compare.csv, compare.json and curves.png")
    for warning in compare.mixed_threads(rows):
        print(f"mnistlab: warning: {warning}", file=sys.stderr)
    problem = compare.incomplete(rows)
    if problem:
        print(f"mnistlab: error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistlabError(f"cannot create directory {path}: {e.strerror or e}") from None


def _study_lock(out: Path):
    from .core.runs import study_lock

    return study_lock(out)


def cmd_tune(args: argparse.Namespace) -> int:
    from .core.checks import load_config
    from .core.runs import check_study_dir
    from .studies.space import load_space
    from .studies.tune import SearchOptions, check_request, tune

    # every option, the config and the whole space are checked before anything is written
    ray_options = _ray_options(args)
    options = SearchOptions(
        sampler=args.sampler,
        pruner=args.pruner,
        seed=args.seed,
        pruner_startup=args.pruner_startup,
        pruner_warmup=args.pruner_warmup,
    )
    base = load_config(args.config, _overrides(args))
    params = load_space(args.space, base)
    check_request(base, args.trials, args.storage, args.timeout)
    out = args.out or Path("runs") / f"tune-{base.name}"
    check_study_dir(out, "tune")
    tracker = _trackers(args)
    _make_dir(out)
    with _study_lock(out):
        result = tune(
            base,
            params,
            args.trials,
            out,
            options,
            storage_url=args.storage,
            study_name=args.study_name,
            ray_options=ray_options,
            log=_logger(args.quiet),
            tracker=tracker,
            timeout_minutes=args.timeout,
            show_progress=_show_progress(args),
            epoch_lines=not args.quiet,
        )
    print((out / "trials.md").read_text(), end="")
    if result.best_toml is None:
        if result.spent:
            print(
                f"mnistlab: error: no trial of {out} completed (see the table's notes), so there is no best "
                f"config; the budget of {args.trials} trials is spent: raise --trials to draw more, or change "
                "the space and use another --out",
                file=sys.stderr,
            )
        else:
            print(
                "mnistlab: error: no trial completed yet (stopped by --timeout); run the same command again to go on",
                file=sys.stderr,
            )
        return EXIT_USER_ERROR
    print(
        f"wrote {out / 'trials.md'}, trials.csv, trials.json, history.png and {result.best_toml} "
        f"(the best trial by validation accuracy)"
    )
    if result.timed_out:
        print(
            f"stopped by --timeout {args.timeout:g} before the budget of {args.trials} trials was spent; "
            f"run the same command again to go on"
        )
    print(f"next, the honest test estimate over seeds: mnistlab compare {result.best_toml} --seeds 3")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .analysis.evaluate import ATTACK_IMAGES, evaluate_runs

    out = args.out or Path("runs") / "evaluate"
    attack_images = ATTACK_IMAGES if args.attack_images is None else args.attack_images
    evals = evaluate_runs(
        args.run_dirs,
        out,
        args.split,
        log=print,
        attack_images=attack_images,
        data_dir=args.data_dir,
        dataset=args.dataset,
    )
    extra = f"; side by side in {out}: compare.md, compare.json, robustness.png" if len(evals) > 1 else ""
    if len(evals) > 1 and any(e.adversarial for e in evals):
        extra += ", adversarial.md, adversarial.png"
    print(
        f"wrote {', '.join(f'{out / e.name}/' for e in evals)} (confusion, per-class, calibration, robustness, "
        f"adversarial, mistakes, first layer){extra}"
    )
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from .studies.compare import ensemble_test_accuracy

    acc = ensemble_test_accuracy(args.run_dirs, data_dir=args.data_dir)
    print(
        f"ensemble of {plural(len(args.run_dirs), 'run')} (mean softmax of best-validation models): "
        f"test accuracy {acc:.2f}%"
    )
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from .analysis.gradcheck import format_table, run_all

    rows = run_all(args.activation, seed=args.seed)
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"gradcheck FAILED for {len(failed)} of {len(rows)} parameters", file=sys.stderr)
        return 1
    print(f"gradcheck passed: {len(rows)} parameter gradients")
    return 0


def cmd_activations(args: argparse.Namespace) -> int:
    from .analysis.activations import run_activation_study

    if args.epochs < 1 or args.depth < 1:
        raise MnistlabError("--epochs and --depth must be at least 1")
    run_activation_study(args.out, args.epochs, args.depth, log=_logger(args.quiet))
    print(f"wrote {args.out}/activations.png, dead_relu.png, gradient_norms.png and activations.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .output.report import write_report

    md, page = write_report(args.run_dirs, args.out, args.lang, args.compare, args.activations, args.evaluate)
    print(f"wrote {md} (with its figures) and {page} (self-contained)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .deploy.predict import Classifier, ImageError

    clf = Classifier.load(args.model)
    results, failed = [], 0
    noun = "digit" if clf.classes == tuple("0123456789") else "class the model knows"
    for path in args.images:
        try:
            (pred,) = clf.predict([str(path)])
        except ImageError as e:
            failed += 1
            print(f"mnistlab: error: {e}", file=sys.stderr)
            results.append({"path": str(path), "error": str(e)})
            continue
        results.append(pred.as_json())
        if not args.json:
            print(
                f"{path}: "
                + ", ".join(f"{clf.classes[c]} ({p:.1%})" for c, p in pred.top(3))
                + (f"  [unlike any {noun}: {pred.unlike_digit}]" if pred.unlike_digit else "")
            )
    if args.json:
        print(json.dumps(results, indent=1, allow_nan=False))
    return EXIT_USER_ERROR if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_onnx

    c = export_onnx(args.run_dir, args.onnx, data_dir=args.data_dir)  # written only when its check passed
    print(
        f"{'wrote' if c.ok else 'did not write'} {args.onnx}; onnxruntime check on {c.images:,} test images: max "
        f"|logit difference| {c.max_abs_logit_diff:.2e}, identical predictions {c.same_predictions:,}/{c.images:,}, "
        f"test accuracy {c.onnx_test_acc:.2f}% (torch {c.torch_test_acc:.2f}%)"
    )
    if not c.ok:
        print("mnistlab: error: the ONNX model does not reproduce the torch model; nothing written", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .deploy.serve import serve

    serve(args.model, args.host, args.port)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    import json

    from .core import datasets

    for name in args.fetch or []:
        spec = datasets.get(name)
        ds = datasets.load(spec.name, log=print, show_progress=not args.json and sys.stderr.isatty())
        print(
            f"{spec.name}: {len(ds.train_labels):,} training and {len(ds.test_labels):,} test images, verified, "
            f"in {ds.source} (SHA-256 {ds.checksum[:12]}...)"
        )
    if args.fetch:
        return 0
    rows = [
        {
            "name": s.name,
            "title": s.title,
            "classes": s.n_classes,
            "class_names": list(s.classes),  # by label
            "train": s.sizes[0],
            "test": s.sizes[1],
            "download_bytes": s.download_bytes(),
            "licence": s.licence,
            "available": datasets.availability(s),
            "quirks": s.quirks,
            "citation": s.citation,
            "homepage": s.homepage,
        }
        for s in (datasets.REGISTRY[n] for n in datasets.names())
    ]
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    from .text import md_cell

    print("| dataset | classes | class names | train / test images | licence | available |")
    print("| --- | ---: | --- | ---: | --- | --- |")
    for r, spec in zip(rows, (datasets.REGISTRY[n] for n in datasets.names()), strict=True):
        names = ", ".join(spec.classes[:10]) + (", ..." if spec.n_classes > 10 else "")
        print(
            f"| {r['name']} | {r['classes']} | {md_cell(names)} | {r['train']:,} / {r['test']:,} | {r['licence']} "
            f"| {r['available']} |"
        )
    print(
        f"cache: {datasets.cache_dir()} (set {datasets.CACHE_ENV} to move it); fetch ahead with "
        f"`mnistlab datasets --fetch NAME`"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnistlab", description="A fast, reproducible MNIST lab.")
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("reproduce", help="re-run the report's experiment and compare with its table")
    _add_run_options(p, ["--dataset", "--data-dir", "--precision", "--device", "--threads", "--epochs"])
    _add_track_option(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("train", help="train from a TOML config with overrides")
    p.add_argument("--config", type=Path, help="TOML config (default: the report's experiment)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run exactly")
    _add_run_options(p, list(OVERRIDE_FLAGS), with_set=True)
    _add_track_option(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("final", help="retrain a run's config on train+validation for its best-validation epoch count")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, help="run directory (default: runs/NAME_final-TIMESTAMP)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    _add_moved_data_option(p)
    p.set_defaults(func=cmd_final)

    p = sub.add_parser("compare", help="run configs over seeds; table, overlay figure, ensembles")
    p.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config: train.seed, +1, ... (default 3)")
    p.add_argument("--ensemble", action="store_true", help="also score the mean softmax of each config's seeds")
    p.add_argument("--out", type=Path, help="study directory (default runs/compare); rerunning resumes it")
    p.add_argument("--quiet", "-q", action="store_true")
    _add_override_options(p, STUDY_FLAGS)
    _add_ray_options(p)
    _add_track_option(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tune", help="hyperparameter search with Optuna (validation accuracy only), optionally on Ray")
    p.add_argument("config", type=Path, metavar="CONFIG", help="the base config; the space varies its keys")
    p.add_argument(
        "--space", type=Path, required=True, metavar="SPACE.toml", help="what to search (experiments/spaces/)"
    )
    p.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials the study should hold")
    p.add_argument("--out", type=Path, help="study directory (default runs/tune-NAME); rerunning resumes it")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage shared by several drivers, e.g. postgresql://user@host/db (default: SQLite in --out)",
    )
    p.add_argument("--study-name", metavar="NAME", help="the study's name in the storage (default: the config's name)")
    # the names live in studies/tune.py (SAMPLERS, PRUNERS), which imports torch: SearchOptions refuses an
    # unknown one with the list, so --help stays light
    p.add_argument("--sampler", default="tpe", help="Optuna's sampler (default tpe); an unknown name is refused")
    p.add_argument("--pruner", default="median", help="Optuna's pruner (default median; none turns pruning off)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0); train.seed is the config's")
    p.add_argument(
        "--pruner-startup",
        type=int,
        default=5,
        metavar="N",
        help="median pruner: trials to finish before pruning starts (default 5)",
    )
    p.add_argument(
        "--pruner-warmup",
        type=int,
        default=1,
        metavar="N",
        help="median pruner: epochs of a trial before it can be pruned (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="MINUTES",
        help="start no new trial after MINUTES (trials under way finish); rerunning goes on",
    )
    p.add_argument("--quiet", "-q", action="store_true")
    _add_override_options(p, STUDY_FLAGS)
    _add_ray_options(p)
    _add_track_option(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="errors, calibration, robustness and first-layer figures of trained runs")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, help="output directory (default runs/evaluate)")
    p.add_argument(
        "--split",
        default="test",
        help="the split to evaluate on: test (default), val, or a named "
        "test subset of the dataset (QMNIST: test10k, test50k)",
    )
    p.add_argument(
        "--dataset",
        metavar="NAME",
        help="evaluate on this dataset's test set instead of the run's own "
        "(one made for the run's classes: qmnist for mnist runs)",
    )
    _add_moved_data_option(p)
    p.add_argument(
        "--attack-images",
        type=int,
        default=None,
        metavar="N",
        help="images of the split (the first N) the FGSM and PGD attacks use (default 1000: all "
        "10,000 take over an hour for a CNN on one CPU thread; 0 skips the attacks)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ensemble", help="test accuracy of the mean softmax of several runs")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    _add_moved_data_option(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("datasets", help="the MNIST family: classes, sizes, licences, and what is available offline")
    p.add_argument("--fetch", action="append", metavar="NAME", help="fetch and verify a dataset now (repeatable)")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "gradcheck", help="check the NumPy MLP's backprop against float64 autograd and finite differences"
    )
    p.add_argument(
        "--activation",
        action="append",
        metavar="NAME",
        help="check only this activation (repeatable; default: each the NumPy MLP implements, "
        "mnistlab.core.models.BY_HAND)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("activations", help="activation functions, dead ReLUs and vanishing gradients, measured")
    p.add_argument("--out", type=Path, default=Path("runs") / "activations")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per measured run (default 5)")
    p.add_argument("--depth", type=int, default=8, help="hidden layers of the deep MLP (default 8)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_activations)

    p = sub.add_parser("report", help="write the homework report (Markdown + self-contained HTML) from runs")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True)
    # the languages are output/report.py's TEXT (it imports matplotlib): write_report refuses an unknown one
    p.add_argument("--lang", default="en", help="the report's language (default en; ko for Korean)")
    p.add_argument(
        "--compare",
        type=Path,
        action="append",
        metavar="STUDY_DIR",
        help="a `mnistlab compare` directory to include (repeatable)",
    )
    p.add_argument("--activations", type=Path, metavar="DIR", help="a `mnistlab activations` directory to include")
    p.add_argument("--evaluate", type=Path, metavar="DIR", help="a `mnistlab evaluate` directory to include")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="classify images (PNG, JPEG, ...) with a trained run's model")
    p.add_argument("--model", type=Path, required=True, metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, prediction, probabilities}")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run's model to ONNX and check it with onnxruntime")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--onnx", type=Path, required=True, metavar="FILE")
    _add_moved_data_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="web demo: draw a digit, see the prediction (FastAPI + uvicorn)")
    p.add_argument("--model", type=Path, required=True, metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1-65535 (default 8000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("plot", help="redraw a run's figures from its metrics files")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=cmd_plot)
    return parser


def _interrupted_message(e: KeyboardInterrupt, args: argparse.Namespace) -> str:
    """What Ctrl-C left behind, and how to go on."""
    study = args.command in ("compare", "tune")
    again = "; run the same command again to resume the study" if study else ""
    if args.command == "tune":
        where = "from its last finished epoch" if args.ray is None else "from its start (it ran on Ray)"
        again = (
            f"; trials.md and best.toml hold the finished trials; the same command continues the cut-off "
            f"trial under its own number and parameters, {where}"
        )
    epochs, run_dir = getattr(e, "epochs", None), getattr(e, "run_dir", None)
    if epochs is None:
        return "interrupted" + (" (finished runs are kept)" + again if study else "")
    if epochs == 0:
        return f"interrupted before its first epoch finished: {run_dir} holds nothing to resume" + (
            again if study else "; start it again with --overwrite"
        )
    return f"interrupted; {epochs} finished epoch{'s' if epochs > 1 else ''} kept in {run_dir}" + (
        again if study else f" (continue with: mnistlab train --resume {run_dir})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors (already printed in one line)
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    try:
        check_paths(args)
        return args.func(args)
    except MnistlabError as e:
        print(f"mnistlab: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        print(f"mnistlab: {_interrupted_message(e, args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout piped into a program that stopped reading (e.g. `| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
