"""What measuring costs: a run as ``trained_mlp`` trains it (memory sampling during
training, then params, FLOPs, sizes and latency; CO2 off) against the bare
training engine, side by side in one process, alternating so that drift in the
machine's speed hits both alike.

    make overhead                      # MNIST, 784-1024-10, batch 64, 1 epoch, 3 pairs
    .venv/bin/python benchmarks/measurement_overhead.py --dataset digits --pairs 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from tabulate import tabulate

from pytest_batchprof.data import load_dataset
from pytest_batchprof.options import Settings, default_data_dir
from pytest_batchprof.session import BatchprofSession
from pytest_batchprof.training import RunConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    device = torch.device("cpu")
    settings = Settings(batch_sizes=(args.batch_size,), epochs=args.epochs,
                        dataset=args.dataset, data_dir=args.data_dir, device="cpu",
                        no_co2=True)
    data = load_dataset(args.dataset, args.data_dir, settings.val_fraction).to(device)
    config = RunConfig(
        dataset=data.name, input_shape=data.image_shape, hidden=(args.hidden,),
        num_classes=data.num_classes, activation="relu", batch_size=args.batch_size,
        epochs=args.epochs, lr=settings.lr, optimizer=settings.optimizer, seed=settings.seed,
        device=str(device), train_subset=None, val_fraction=settings.val_fraction,
    )
    train(config, data, device)  # warm-up: first-call costs belong to neither side

    bare, measured, measuring = [], [], []
    for _ in range(args.pairs):
        started = time.perf_counter()
        train(config, data, device)
        bare.append(time.perf_counter() - started)

        session = BatchprofSession(settings, device)
        started = time.perf_counter()
        run = session.run(data, (args.hidden,), args.batch_size)
        measured.append(time.perf_counter() - started)
        measuring.append(measured[-1] - run.train_seconds)

    bare_median, measured_median = statistics.median(bare), statistics.median(measured)
    rows = [
        ["bare engine (train only)", f"{bare_median:.3f}", ", ".join(f"{t:.3f}" for t in bare)],
        ["as trained_mlp runs it (CO2 off)", f"{measured_median:.3f}",
         ", ".join(f"{t:.3f}" for t in measured)],
        ["of which measuring after training", f"{statistics.median(measuring):.3f}",
         ", ".join(f"{t:.3f}" for t in measuring)],
    ]
    print(f"{config.describe()}; {args.pairs} alternating pairs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(tabulate(rows, headers=["run", "median s", "each s"], tablefmt="github"))
    print(f"\nmeasurement overhead: {measured_median / bare_median - 1:+.1%} "
          f"(target: under +10%)")


if __name__ == "__main__":
    main()
