"""ONNX export: float32 pixels in [0, 1], shape (N, 1, 28, 28), to logits (N, K), K the dataset's classes
(whose names are in the model's metadata, ``classes``, a JSON list by label); normalisation (when the model
has it) inside the graph; a dynamic batch. The export checks itself with onnxruntime on the run's test set
before the file is written."""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import data, datasets
from ..core.checkpoint import load_best_model
from ..core.config import Config
from ..core.data import Dataset
from ..core.runs import atomic_write
from ..errors import MnistlabError

OPSET = 18


@dataclass
class ExportCheck:
    images: int
    max_abs_logit_diff: float
    same_predictions: int
    onnx_test_acc: float
    torch_test_acc: float

    @property
    def ok(self) -> bool:
        return self.same_predictions == self.images and self.max_abs_logit_diff < 1e-3


def _require():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MnistlabError("ONNX export needs the 'export' extra: pip install 'mnistlab[export]'") from None
    return onnx, onnxruntime


def export_onnx(
    run_dir: str | Path, out: str | Path, data_dir: str | Path | None = None, batch_size: int = 1000
) -> ExportCheck:
    """Export the run's best-validation model to ONNX (its class names in the metadata), check the export with
    onnxruntime against torch on the run's test set, and write ``out`` (atomically) only when it passed.

    The run's data (``data_dir`` where it moved) is loaded and checked against the SHA-256 the run recorded
    before anything is exported, and the check runs on the file's bytes in memory: data that is refused, an
    export error or a failed check leaves no file at ``out`` (nor a temporary one). Raises MnistlabError
    (DataError) for the run or its data; returns the check (``ok`` False: nothing was written).
    """
    model, cfg = load_best_model(run_dir)
    ds = datasets.load_for_run(run_dir, cfg, data_dir)  # refused data: nothing exported, nothing written
    raw = onnx_bytes(model, cfg)
    check = _compare(model, raw, ds, batch_size)
    if check.ok:
        atomic_write(Path(out), raw)
    return check


def onnx_bytes(model: torch.nn.Module, cfg: Config) -> bytes:
    """The ONNX file of ``model`` (trained with ``cfg``), checked by onnx's checker, as bytes."""
    onnx, _ = _require()
    classes = datasets.classes_of(cfg)
    model = model.float().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # nn.Module.to takes memory_format; torch's stubs omit it
    example = torch.rand(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter's chatter about optional torchvision ops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            verbose=False,
        )
    quiet.setLevel(level)
    if program is None:  # dynamo=True returns a program; None is the legacy exporter's answer
        raise MnistlabError("torch.onnx.export returned no program: this torch's exporter is not the dynamo one")
    proto = program.model_proto
    proto.doc_string = (
        f"mnistlab model ({cfg.data.dataset}): input 'pixels' float32 (N, 1, 28, 28) in [0, 1], "
        f"light ink on dark, MNIST-style; output 'logits' (N, {len(classes)}), one per class in the "
        f"metadata 'classes'."
    )
    for key, value in (("dataset", cfg.data.dataset), ("classes", json.dumps(list(classes), ensure_ascii=False))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    return buf.getvalue()


def check_onnx(
    run_dir: str | Path, onnx_model: str | Path | bytes, batch_size: int = 1000, data_dir: str | Path | None = None
) -> ExportCheck:
    """Run an ONNX model (a file, or its bytes) with onnxruntime and the run's torch model on the run's test
    set and compare. The test set is the run's data (``data_dir`` where it moved), checked against the
    SHA-256 the run recorded."""
    model, cfg = load_best_model(run_dir)
    ds = datasets.load_for_run(run_dir, cfg, data_dir)
    return _compare(model, onnx_model if isinstance(onnx_model, bytes) else str(onnx_model), ds, batch_size)


def _compare(model: torch.nn.Module, onnx_model: str | bytes, ds: Dataset, batch_size: int) -> ExportCheck:
    """Logits of onnxruntime and torch on ``ds``'s test set, ``batch_size`` images at a time."""
    _, ort = _require()
    x = data.to_float(ds.test_images)  # (N, 1, 28, 28)
    y = ds.test_labels.numpy()
    session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    diffs, same, correct_onnx, correct_torch = 0.0, 0, 0, 0
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        with torch.inference_mode():
            ref = model(chunk).float().numpy()
        got = session.run(["logits"], {"pixels": chunk.numpy()})[0]
        diffs = max(diffs, float(np.abs(got - ref).max()))
        same += int((got.argmax(1) == ref.argmax(1)).sum())
        correct_onnx += int((got.argmax(1) == y[i : i + batch_size]).sum())
        correct_torch += int((ref.argmax(1) == y[i : i + batch_size]).sum())
    return ExportCheck(len(x), diffs, same, 100 * correct_onnx / len(x), 100 * correct_torch / len(x))
