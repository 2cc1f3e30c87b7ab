"""What measuring costs: a run as ``trained_mlp`` trains it (memory sampling during
training, then params, FLOPs, sizes and latency; CO2 off) against the bare
training engine, and the engine's learning-curve points against the same engine
without them, side by side in one process, alternating so that drift in the
machine's speed hits every side alike.

    make overhead                      # MNIST, 784-1024-10, batch 64, 1 epoch, 3 pairs
    .venv/bin/python benchmarks/measurement_overhead.py --dataset digits --pairs 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from tabulate import tabulate

from pytest_batchprof import training
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

    bare, measured, measuring, no_curve = [], [], [], []
    curve_spacing = training.CURVE_EVERY_SAMPLES
    for _ in range(args.pairs):
        started = time.perf_counter()
        run = train(config, data, device)
        bare.append(time.perf_counter() - started)
        points, curve_share = len(run.curve), run.curve_seconds / bare[-1]

        training.CURVE_EVERY_SAMPLES = math.inf  # the engine without learning-curve points
        try:
            started = time.perf_counter()
            train(config, data, device)
            no_curve.append(time.perf_counter() - started)
        finally:
            training.CURVE_EVERY_SAMPLES = curve_spacing

        session = BatchprofSession(settings, device)
        started = time.perf_counter()
        run = session.run(data, (args.hidden,), args.batch_size)
        measured.append(time.perf_counter() - started)
        measuring.append(measured[-1] - run.train_seconds)

    bare_median, measured_median = statistics.median(bare), statistics.median(measured)
    no_curve_median = statistics.median(no_curve)
    rows = [
        ["engine without learning-curve points", f"{no_curve_median:.3f}",
         ", ".join(f"{t:.3f}" for t in no_curve)],
        ["bare engine (train only, curve points included)", f"{bare_median:.3f}",
         ", ".join(f"{t:.3f}" for t in bare)],
        ["as trained_mlp runs it (CO2 off)", f"{measured_median:.3f}",
         ", ".join(f"{t:.3f}" for t in measured)],
        ["of which measuring after training", f"{statistics.median(measuring):.3f}",
         ", ".join(f"{t:.3f}" for t in measuring)],
    ]
    print(f"{config.describe()}; {args.pairs} alternating pairs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(tabulate(rows, headers=["run", "median s", "each s"], tablefmt="github"))
    print(f"\nlearning curve: {points} points of {training.CURVE_PROBE_SAMPLES:,} validation "
          f"samples, every {curve_spacing:,} training samples: "
          f"{bare_median / no_curve_median - 1:+.1%} wall time against the engine without "
          f"them; the points themselves took {curve_share:.1%} of the run (target: under 3%)")
    print(f"measurement overhead: {measured_median / bare_median - 1:+.1%} "
          f"(target: under +10%)")


if __name__ == "__main__":
    main()
