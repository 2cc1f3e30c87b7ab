"""What measuring costs: a run as ``trained_mlp`` trains it (memory sampling during
training, then params, FLOPs, sizes and latency; CO2 off) against the bare
training engine; and the engine's learning-curve points and its progress
observer against the same engine without them. All side by side in one
process, alternating so that drift in the machine's speed hits every side alike.

    make overhead                      # MNIST, 784-1024-10, batch 64, 1 epoch, 3 pairs
    .venv/bin/python benchmarks/measurement_overhead.py --dataset digits --pairs 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import timeit
from functools import partial
from pathlib import Path

import torch
from tabulate import tabulate

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine import training
from pytest_batchprof.engine.training import RunConfig, train
from pytest_batchprof.runs.progress import RunProgress
from pytest_batchprof.runs.session import BatchprofSession
from pytest_batchprof.settings import Settings, default_data_dir

NO_CURVE = "engine without learning-curve points"
BARE = "bare engine (train only, curve points included)"
PROGRESS = "bare engine with its progress observer"
MEASURED = "as trained_mlp runs it (CO2 off)"
SIDES = (NO_CURVE, BARE, PROGRESS, MEASURED)


class SilentConsole:
    """A terminal that shows nothing: the progress line's own cost, without the drawing."""

    is_terminal = True
    verbose = False

    def line(self, text: str) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def clear_status(self) -> None:
        pass


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

    times: dict[str, list[float]] = {side: [] for side in SIDES}
    measuring: list[float] = []
    curve_spacing = training.CURVE_EVERY_SAMPLES

    def timed(side: str, work):
        started = time.perf_counter()
        result = work()
        times[side].append(time.perf_counter() - started)
        return result

    for _ in range(args.pairs):
        training.CURVE_EVERY_SAMPLES = math.inf  # the engine without learning-curve points
        try:
            timed(NO_CURVE, lambda: train(config, data, device))
        finally:
            training.CURVE_EVERY_SAMPLES = curve_spacing
        run = timed(BARE, lambda: train(config, data, device))
        points, curve_share = len(run.curve), run.curve_seconds / times[BARE][-1]
        timed(PROGRESS, lambda: train(config, data, device,
                                      RunProgress(SilentConsole(), config.epochs)))
        run = timed(MEASURED, partial(BatchprofSession(settings, device).run, data,
                                      (args.hidden,), args.batch_size))
        measuring.append(times[MEASURED][-1] - run.train_seconds)

    medians = {side: statistics.median(values) for side, values in times.items()}
    rows = [[side, f"{medians[side]:.3f}", ", ".join(f"{t:.3f}" for t in times[side])]
            for side in SIDES]
    rows.append(["of which measuring after training", f"{statistics.median(measuring):.3f}",
                 ", ".join(f"{t:.3f}" for t in measuring)])
    print(f"{config.describe()}; {args.pairs} alternating pairs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(tabulate(rows, headers=["run", "median s", "each s"], tablefmt="github"))
    print(f"\nlearning curve: {points} points of {training.CURVE_PROBE_SAMPLES:,} validation "
          f"samples, every {curve_spacing:,} training samples: "
          f"{medians[BARE] / medians[NO_CURVE] - 1:+.1%} wall time against the engine without "
          f"them; the points themselves took {curve_share:.1%} of the run (target: under 3%)")
    steps = math.ceil(len(data.train) / config.batch_size) * config.epochs
    check = min(timeit.repeat("time.perf_counter() >= due", "due = 0.0", globals={"time": time},
                              number=100_000, repeat=5)) / 100_000
    print(f"progress line: {medians[PROGRESS] / medians[BARE] - 1:+.1%} wall time against the "
          f"engine without an observer; its per-step clock check ({check * 1e9:.0f} ns x "
          f"{steps:,} steps) is {check * steps / medians[BARE]:.3%} of the run "
          f"(target: nothing measurable)")
    print(f"measurement overhead: {medians[MEASURED] / medians[BARE] - 1:+.1%} "
          f"(target: under +10%)")


if __name__ == "__main__":
    main()
