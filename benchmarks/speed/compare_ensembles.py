"""Runs trained as one ensemble against the same runs trained one after another, side by
side in one run.

Each row trains ``--members`` runs of one MLP (default 784-1024-10, Adam at lr
1e-3) on the first ``--samples`` MNIST training samples for one epoch, with seeds
0, 1, ...: a study's repeats. Three sides, alternated ``--pairs`` times so that
each gets its turns in the machine's fast and slow spells:

* sequential: ``train()`` of each run, one after another, as
  ``--batchprof-no-ensemble`` trains them;
* ensemble: one :class:`~pytest_batchprof.engine.ensemble.Ensemble` of the runs,
  through the forward pass the engine picks for a plain MLP (batched matrix
  products with the gradients kept in place, :class:`~pytest_batchprof.engine.
  ensemble.StackedMLP`);
* vmap: the same ensemble through ``torch.func.functional_call`` under
  ``torch.vmap`` (:class:`~pytest_batchprof.engine.ensemble.VmappedModel`), the
  path of any other model: measured, so the engine's choice is evidence.

Every side does the same work: the same optimizer steps of the same members, an
end-of-epoch validation pass on a fixed 1,000 samples and a test pass, per run.
The figure is wall time; ``ensemble / sequential`` is the best ensemble time over
the best sequential time, with the mean of the pairs' ratios and its 95% Student t
interval beside it. The issue's targets: at batch 16 at most 0.7, at batch 1 at
most 0.55. ``--profile`` prints torch.profiler's table of one ensemble's training,
to bound what is left.

    make speed-ensemble
    make speed-ensemble ARGS="--batch-sizes 1 --samples 1000 --profile"
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tabulate import tabulate

from pytest_batchprof.data.datasets import Dataset, load_dataset
from pytest_batchprof.engine.ensemble import Ensemble, MemberLoop, VmappedModel
from pytest_batchprof.engine.training import Recipe, RunConfig, train, warm_up
from pytest_batchprof.experiment.models import mlp_name
from pytest_batchprof.reports.stats import Interval, mean_interval
from pytest_batchprof.reports.storage import cpu_name
from pytest_batchprof.settings import DEFAULT_VAL_FRACTION, default_data_dir

CPU = torch.device("cpu")
VAL_SAMPLES = 1_000
TARGETS = {16: 0.7, 1: 0.55}
"""The issue's bound on ensemble / sequential time, by batch size."""


@dataclass(frozen=True)
class Row:
    batch_size: int
    sequential: list[float]
    ensemble: list[float]
    vmapped: list[float]

    @staticmethod
    def ratio(side: list[float], base: list[float]) -> float:
        return min(side) / min(base)

    def pairs(self, side: list[float]) -> Interval:
        return mean_interval([got / base for got, base in zip(side, self.sequential,
                                                               strict=True)])


def configs(data: Dataset, hidden: tuple[int, ...], batch_size: int, members: int) -> (
        list[RunConfig]):
    base = RunConfig(dataset=data.name, input_shape=data.sample_shape, hidden=hidden,
                     num_classes=data.num_classes, activation="relu", batch_size=batch_size,
                     epochs=1, lr=1e-3, optimizer="adam", seed=0, device="cpu",
                     train_subset=len(data.train), val_fraction=DEFAULT_VAL_FRACTION)
    return [replace(base, seed=seed) for seed in range(members)]


def sequential_seconds(runs: list[RunConfig], data: Dataset) -> float:
    started = time.perf_counter()
    for config in runs:
        train(config, data, CPU)
    return time.perf_counter() - started


def ensemble_seconds(runs: list[RunConfig], data: Dataset, vmapped: bool = False) -> float:
    started = time.perf_counter()
    recipe = Recipe.of_mlp(runs[0])
    loops = [MemberLoop(config, data, CPU, recipe) for config in runs]
    ensemble = Ensemble(loops, recipe)
    if vmapped:
        ensemble.forward = VmappedModel(loops[0].model)
    ensemble.run()
    return time.perf_counter() - started


def profile(runs: list[RunConfig], data: Dataset) -> str:
    from torch.profiler import profile as torch_profile

    with torch_profile() as profiler:
        ensemble_seconds(runs, data)
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def measure(data: Dataset, hidden: tuple[int, ...], batch_size: int, members: int,
            pairs: int) -> Row:
    runs = configs(data, hidden, batch_size, members)
    sequential, ensemble, vmapped = [], [], []
    for _ in range(pairs):
        sequential.append(sequential_seconds(runs, data))
        ensemble.append(ensemble_seconds(runs, data))
        vmapped.append(ensemble_seconds(runs, data, vmapped=True))
    return Row(batch_size, sequential, ensemble, vmapped)


def table(rows: list[Row], members: int) -> str:
    body = []
    for row in rows:
        target = TARGETS.get(row.batch_size)
        ratio = Row.ratio(row.ensemble, row.sequential)
        pairs = row.pairs(row.ensemble)
        verdict = ("" if target is None else
                   "holds" if ratio <= target else
                   "holds within noise" if pairs.low is not None and pairs.low <= target else
                   "MISSED")
        body.append([
            row.batch_size, f"{min(row.sequential):.2f}", f"{min(row.ensemble):.2f}",
            f"{min(row.vmapped):.2f}", f"{ratio:.2f}",
            f"{pairs.mean:.2f} ({pairs.low:.2f}-{pairs.high:.2f})"
            if pairs.low is not None else f"{pairs.mean:.2f}",
            f"{Row.ratio(row.vmapped, row.sequential):.2f}",
            "" if target is None else f"<= {target}", verdict])
    headers = ["batch", f"{members} sequential (s)", "ensemble (s)", "vmap ensemble (s)",
               "ensemble / sequential", "pairs' mean (95% CI)", "vmap / sequential",
               "target", "verdict"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--hidden", default="1024",
                        help="hidden widths of the MLP, comma-separated (default: 1024)")
    parser.add_argument("--batch-sizes", default="16,1")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--samples", type=int, default=None,
                        help="training samples per run (default: 2,000 at batch 1, "
                             "else 16,000)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    hidden = tuple(int(width) for width in args.hidden.split(","))
    full = load_dataset("mnist", args.data_dir, DEFAULT_VAL_FRACTION, None)
    full = replace(full, val=full.val.take(VAL_SAMPLES))
    warm_up(CPU)
    rows = []
    for batch_size in (int(size) for size in args.batch_sizes.split(",")):
        samples = args.samples or (2_000 if batch_size == 1 else 16_000)
        data = full.with_train_subset(samples)
        rows.append(measure(data, hidden, batch_size, args.members, args.pairs))
        print(f"batch {batch_size}: done", flush=True)
        if args.profile:
            print(profile(configs(data, hidden, batch_size, args.members), data))
    model = mlp_name(full.input_size, hidden, full.num_classes)
    print(f"\n{args.members} runs of {model} (Adam, seeds 0-{args.members - 1}), one epoch of "
          f"{args.samples or '2,000 (batch 1) / 16,000'} MNIST samples each, best of "
          f"{args.pairs} alternated pairs; {cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print(table(rows, args.members))


if __name__ == "__main__":
    main()
