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


def test_export_writes_nothing_when_the_data_is_refused(trained_run, small_mnist_dir, tmp_path, capsys):
    """The run's data is checked before the export: other data (here a 2,000-image cut of MNIST, not the
    run's) is one line, exit 2, and no .onnx file (it used to be written before the check refused)."""
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(trained_run), "--onnx", str(out / "m.onnx"), "--data-dir", str(small_mnist_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained on other data" in err, err
    assert list(out.iterdir()) == []  # nor a temporary file


def test_export_writes_nothing_when_the_onnxruntime_check_fails(trained_run, tmp_path, capsys, monkeypatch):
    """An ONNX graph that does not reproduce the torch model (its weights perturbed) fails the check: exit 1,
    the numbers printed, and no file left."""
    import copy

    from mnistlab.deploy import export

    real = export.onnx_bytes

    def perturbed(model, cfg):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
        return real(other, cfg)

    monkeypatch.setattr(export, "onnx_bytes", perturbed)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(trained_run), "--onnx", str(out / "m.onnx")]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"did not write {out / 'm.onnx'}") and "nothing written" in captured.err
    assert list(out.iterdir()) == []
