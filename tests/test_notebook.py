"""examples/tour.ipynb runs top to bottom (nbclient, a real Jupyter kernel), so it cannot rot."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tour.ipynb"


def test_tour_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "epoch 3: validation" in outputs and "prediction: 1" in outputs
    assert (tmp_path / "runs" / "tour" / "evaluate" / "robustness.png").is_file()
    assert (tmp_path / "runs" / "tour" / "evaluate" / "adversarial.png").is_file()
