"""The reference posts' MNIST script, as a PyTorch tutorial writes it: the yardstick of
``benchmarks/session_overhead.py``.

torchvision's ``MNIST`` read from the files already on disk (no download), ``ToTensor()``
+ ``Normalize`` per sample, a 55,000 / 5,000 train / validation split of the training
file (the plugin's default sizes), ``DataLoader(batch_size=128, shuffle=True)``, the
784-1024-10 MLP as an ``nn.Sequential``, Adam at lr 1e-3 for one epoch, then validation
and test accuracy through DataLoaders of 1,000 (as ``make speed``'s textbook side). It
prints the accuracies as the posts did, and with ``--json`` one last line of its phases'
seconds (each read with ``time.perf_counter`` around the code that does it), for the
benchmark to parse.

    .venv/bin/python benchmarks/textbook_mnist.py --data-dir .data
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402  (the clock above starts before every import)
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, random_split  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the constants every MNIST tutorial normalises with
VAL_SAMPLES = 5000
EVAL_BATCH_SIZE = 1000


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Share of ``loader``'s samples whose top class is the label."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("BATCHPROF_DATA_DIR",
                                                    "~/.cache/pytest-batchprof")).expanduser())
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true",
                        help="end with one line of JSON: the phases' seconds")
    args = parser.parse_args()
    phases = {"imports": time.perf_counter() - STARTED}

    started = time.perf_counter()
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    full_train = datasets.MNIST(str(args.data_dir), train=True, download=False,
                                transform=transform)
    test_set = datasets.MNIST(str(args.data_dir), train=False, download=False,
                              transform=transform)
    train_set, val_set = random_split(
        full_train, [len(full_train) - VAL_SAMPLES, VAL_SAMPLES],
        generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=EVAL_BATCH_SIZE)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH_SIZE)
    phases["data load"] = time.perf_counter() - started

    started = time.perf_counter()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 1024), nn.ReLU(),
                          nn.Linear(1024, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    phases["model build"] = time.perf_counter() - started

    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        running_loss = 0.0
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * len(labels)
        print(f"Epoch {epoch:02d}, Train loss={running_loss / len(train_set):.3f}")
    phases["training"] = time.perf_counter() - started

    started = time.perf_counter()
    val_accuracy = accuracy(model, val_loader)
    test_accuracy = accuracy(model, test_loader)
    phases["evaluation"] = time.perf_counter() - started
    print(f"Elapsed Time: {phases['training']:.4f}s")
    print(f"Val Accuracy : {val_accuracy:.1%}")
    print(f"Test Accuracy : {test_accuracy:.1%}")
    if args.json:
        print(json.dumps({"phases": phases, "val_accuracy": val_accuracy,
                          "test_accuracy": test_accuracy,
                          "elapsed_in_process": time.perf_counter() - STARTED}))


if __name__ == "__main__":
    main()
