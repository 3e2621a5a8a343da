import pytest
import torch

from mnistlab.core import metrics


def test_convergence_rule():
    # rises, then oscillates within +-0.25 of the last-5 mean (98.0) from epoch 4
    val = [90.0, 95.0, 97.0, 97.9, 98.1, 97.8, 98.2, 98.0, 97.9, 98.0, 98.1]
    assert metrics.convergence_epoch(val) == 4


def test_convergence_needs_window_and_values():
    assert metrics.convergence_epoch([90.0, 91.0]) is None
    assert metrics.convergence_epoch([90.0, None, 91, 92, 93, 94]) is None


def test_convergence_when_still_climbing_is_late():
    val = [90.0 + i for i in range(10)]  # +1 per epoch: only the last epochs sit near the plateau
    assert metrics.convergence_epoch(val) == 10


def test_convergence_on_the_reports_table():
    from mnistlab.core.metrics import report_table
    val = [r["val_acc"] for r in report_table()]
    # report: "after ~25 epochs it oscillates between 97.6 and 98.1"
    epoch = metrics.convergence_epoch(val)
    assert 15 <= epoch <= 25
    plateau = sum(val[-5:]) / 5
    assert all(abs(v - plateau) <= metrics.BAND for v in val[epoch - 1:])
    assert abs(val[epoch - 2] - plateau) > metrics.BAND


def test_best_epoch_prefers_earliest_tie():
    assert metrics.best_epoch([1.0, 3.0, 2.0, 3.0]) == 2


def test_evaluate_counts_correctly():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]  # logits = first 10 pixels
    x = torch.zeros(4, 1, 28, 28)
    for i, c in enumerate([3, 1, 4, 1]):
        x[i, 0, 0, c] = 10.0
    y = torch.tensor([3, 1, 4, 2])
    loss, acc = metrics.loss_and_accuracy(Fixed(), x, y, batch_size=3)
    assert acc == 75.0
    expected = torch.nn.functional.cross_entropy(x.flatten(1)[:, :10], y).item()
    assert loss == pytest.approx(expected, rel=1e-6)
