"""examples/tour.ipynb runs top to bottom (nbclient, a real Jupyter kernel), so it cannot rot, and its
figures show: importing mnistlab must leave the notebook's matplotlib backend alone."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tour.ipynb"
# the cells that draw: the digit grid, the curves, evaluate's figures, what the model saw
FIGURE_CELLS = ("ax.imshow(img", "plt.plot(epochs", "display(Image(", "plt.imshow(pred.input")


def test_tour_notebook_executes_and_shows_its_figures(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    outputs = "".join(o.get("text", "") for cell in code for o in cell.get("outputs", []))
    assert "epoch 3: validation" in outputs and "prediction: 1" in outputs
    assert (tmp_path / "runs" / "tour" / "evaluate" / "robustness.png").is_file()
    for marker in FIGURE_CELLS:
        (cell,) = [c for c in code if marker in c.source]
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"the cell with {marker!r} shows no figure"
    # even the first figure is drawn after mnistlab (and its figure code) is imported
    assert code[0].source.index("from mnistlab.core.experiment") < code[0].source.index("ax.imshow(img")
    assert (tmp_path / "runs" / "tour" / "evaluate" / "adversarial.png").is_file()
