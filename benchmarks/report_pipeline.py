"""The report's script, line for line, without torchvision: the baseline mnistlab is measured against.

torchvision's ``MNIST`` dataset returns one PIL image per sample and ``ToTensor`` converts it; this file
does the same per-sample work (PIL image -> uint8 array -> float tensor / 255) through a plain
``torch.utils.data.Dataset`` and ``DataLoader``. Two of the report's defects are fixed so that its numbers
can be compared: test images are scaled to [0, 1] like the training images, and the epoch's mean loss is
recorded (the report kept the last batch's loss tensor).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from mnistlab.core import data


class PerSampleMNIST(torch.utils.data.Dataset):
    """What torchvision.datasets.MNIST + transforms.ToTensor() do for each sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.data, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i].numpy(), mode="L")  # torchvision MNIST.__getitem__
        x = torch.from_numpy(np.array(img, np.uint8, copy=True))  # ToTensor: PIL -> tensor
        x = x.view(28, 28, 1).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return x, int(self.targets[i])


def run_report_script(epochs: int = 30, log=print) -> list[dict]:
    """The report's training script; returns per-epoch rows like mnistlab's metrics."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = data.load()
    torch.manual_seed(123)
    learning_rate, training_epochs, batch_size = 0.1, epochs, 100

    mnist_train = PerSampleMNIST(ds.train_images, ds.train_labels)
    train_set, val_set = torch.utils.data.random_split(mnist_train, [54000, 6000])
    test_set = PerSampleMNIST(ds.test_images, ds.test_labels)

    val_dataloader = torch.utils.data.DataLoader(dataset=val_set, batch_size=6000)
    test_X = test_set.data.view(-1, 28 * 28).float().div(255).to(device)  # the report forgot the /255
    test_Y = test_set.targets.to(device)
    val_X, val_Y = next(iter(val_dataloader))
    val_X = val_X.view(-1, 28 * 28).float().to(device)
    val_Y = val_Y.to(device)
    data_loader = torch.utils.data.DataLoader(dataset=train_set, batch_size=batch_size, shuffle=True, drop_last=True)

    linear1 = torch.nn.Linear(784, 1024, bias=True)
    linear2 = torch.nn.Linear(1024, 10, bias=True)
    relu = torch.nn.ReLU()
    torch.nn.init.kaiming_uniform_(linear1.weight)
    torch.nn.init.kaiming_uniform_(linear2.weight)
    model = torch.nn.Sequential(linear1, relu, linear2).to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    total_batch = len(data_loader)

    rows = []
    for epoch in range(training_epochs):
        start = time.perf_counter()
        avg_cost = 0
        for X, Y in data_loader:
            X = X.view(-1, 28 * 28).to(device)
            Y = Y.to(device)
            optimizer.zero_grad()
            hypothesis = model(X)
            cost = criterion(hypothesis, Y)
            cost.backward()
            optimizer.step()
            avg_cost += cost / total_batch
        with torch.no_grad():
            val_accuracy = (torch.argmax(model(val_X), 1) == val_Y).float().mean() * 100
            test_accuracy = (torch.argmax(model(test_X), 1) == test_Y).float().mean() * 100
        rows.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(avg_cost),
                "val_acc": float(val_accuracy),
                "test_acc": float(test_accuracy),
                "seconds": time.perf_counter() - start,
            }
        )
        log(
            f"report  epoch {epoch + 1:3d}  cost {float(avg_cost):.9f}  val_acc {float(val_accuracy):.3f}  "
            f"test_acc {float(test_accuracy):.3f}"
        )
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", help="write the per-epoch rows here")
    args = parser.parse_args()
    rows = run_report_script(args.epochs)
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).write_text(json.dumps(rows))
