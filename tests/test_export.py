"""ONNX export: parity with torch on the test set, dynamic batch, normalisation inside the graph."""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mnistlab.cli import main
from mnistlab.core import checkpoint, data


def test_export_mlp_parity_on_the_test_set(trained_run, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--onnx", str(path)]) == 0
    out = capsys.readouterr().out
    assert "identical predictions 10,000/10,000" in out and "max |logit difference|" in out
    m = onnx.load(str(path))
    (inp,) = m.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "pixels" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7, 300):  # dynamic batch
        assert sess.run(None, {"pixels": np.zeros((n, 1, 28, 28), np.float32)})[0].shape == (n, 10)


def test_export_cnn_with_normalisation_inside_the_graph(small_mnist_dir, tmp_path, mnist):
    run = tmp_path / "cnn"
    assert (
        main(
            [
                "train",
                "--data-dir",
                str(small_mnist_dir),
                "--arch",
                "cnn",
                "--set",
                "model.width=8",
                "--set",
                "model.normalize=true",
                "--set",
                "model.dropout=0.3",
                "--epochs",
                "1",
                "--quiet",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    path = tmp_path / "cnn.onnx"
    assert main(["export", str(run), "--onnx", str(path)]) == 0
    model, _ = checkpoint.load_best_model(run)
    x = data.to_float(mnist.test_images[:64])  # raw [0, 1] pixels: the graph normalises them itself
    got = ort.InferenceSession(str(path)).run(None, {"pixels": x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert any(n.op_type in ("Sub", "Div") for n in onnx.load(str(path)).graph.node)


def test_export_bad_run_dir(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "not a trained run directory" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
