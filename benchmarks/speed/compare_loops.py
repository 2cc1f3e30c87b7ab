"""The plugin's training engine against the textbook PyTorch loop, side by side in one run.

Both sides train the same MLP (``build_mlp``, same seed) with Adam (lr 1e-3) on
the same MNIST training samples (the engine's 55,000-sample split, reproduced
from ``data.SPLIT_SEED``), for the same number of samples and optimizer steps:

* textbook: ``torchvision.datasets.MNIST`` with ``ToTensor()`` + ``Normalize``,
  ``DataLoader(shuffle=True)`` (no workers), ``zero_grad()``, ``loss.backward()``,
  ``Adam.step()``, and ``loss.item()`` per step for the running loss, as the
  PyTorch tutorials print it; test accuracy through a ``DataLoader`` over the
  test set;
* engine: ``BatchprofSession.run`` with CO2 off, i.e. as the ``trained_mlp``
  fixture runs it (memory sampling during training, measuring afterwards);
* lean: the least loop that trains the same way, hand-written: the engine's
  in-memory tensors batched by index under the same shuffling, fused Adam,
  denormals flushed as the engine flushes them, and nothing else (no running
  loss or accuracy, no checks, no validation). ``engine / lean`` is the
  engine's optimisation throughput (samples per second, validation left out)
  over the lean loop's: what the engine's bookkeeping costs, or saves. The two
  sides train ``--pairs`` alternated bursts of about a second each (the engine
  through its ``train``; see :func:`alternated_rates`), and each side's best
  throughput is compared; the median of the pairs' ratios is shown beside it.
  On a shared 2-core machine one run of the same loop can take twice as long
  as the next, and its speed drifts over minutes: many short alternated bursts
  give both sides their turns in its fast spells.

Fed by a DataLoader: the same comparison for a training split a DataLoader reads
every epoch (a registered ``Dataset``), on MNIST's training images kept as uint8 and
normalised as each is read (:class:`NormalisedImages`, the tutorials' per-item
transform), with 0 and 2 worker processes (``--loader-workers``) at batch 16 and 128
(``--loader-batch-sizes``), 784-1024-10:

* hand-written: ``DataLoader(shuffle=True)`` from a seeded generator with the row's
  workers (kept across epochs), the same model, fused Adam, denormals flushed, and
  nothing else (:func:`hand_loader_samples_per_second`);
* engine: its ``train`` on the data set whose training split is a ``LoaderSplit`` of
  the same Dataset and DataLoader arguments, as ``register_dataset`` makes it
  (validation and test stay in memory and are left out of its samples/s).

Both sides train ``--pairs`` alternated one-epoch bursts of about
:data:`LOADER_BURST_SECONDS` (each starts its loader's workers, both sides alike), and
the table sets each side's best throughput against the other's, with the pairs' mean
ratio and its interval beside it; the verdict reads as the lean loop's.

The engine's seconds per epoch include its per-epoch validation pass; the
textbook's include no evaluation at all. Rows capped by ``--max-steps`` train
both sides on the first ``steps x batch`` samples of the split, extrapolate the
training seconds linearly to the whole epoch, and report test accuracy measured
after that partial epoch. Engine GFLOP/s is training FLOPs per sample
(FlopCounterMode, forward + backward) times training samples per second, set
against the matmul peak: a large float32 ``torch.mm`` read before the runs and
again after every row, each reading the median of about
:data:`PEAK_READING_SECONDS`, and the best reading kept (one reading on a shared
machine can come out at half the next; the table says how many were taken and
their spread).

The "floor" is what no loop doing this maths can beat on this machine: the
step's matrix products (forward ``addmm`` per layer, the weight and input
gradients of the backward pass) and one fused Adam step, each timed alone at
the row's batch size with warm caches, times the steps of an epoch, plus the
engine's validation pass. ``best speed-up`` is the textbook's seconds over the
floor: the most any engine could reach. ``--profile`` prints torch.profiler's
table of the engine's own training steps for each row, to see where the time
between the engine and the floor goes.

    make speed                                       # both models, batch 1,16,64,128: long
    make speed ARGS="--quick --data-dir=/path/to/data"   # smoke test, about two minutes
    make speed ARGS="--profile --max-steps 300"          # where the engine's time goes
    make speed ARGS="--loader-only --pairs 9"            # the DataLoader comparison alone
    .venv/bin/python benchmarks/speed/compare_loops.py --models 784-1024-10 \\
        --batch-sizes 1 --max-steps 200
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn
from torch.utils.data import DataLoader, Subset

from pytest_batchprof.data.datasets import SPLIT_SEED, Dataset, load_dataset
from pytest_batchprof.data.loading import LoaderSplit
from pytest_batchprof.engine.training import Run, RunConfig, train
from pytest_batchprof.experiment.models import build_mlp, mlp, mlp_name
from pytest_batchprof.hardware.denormals import denormals_flushed
from pytest_batchprof.measuring.metrics import benchmark_timer
from pytest_batchprof.reports.stats import Interval, mean_interval
from pytest_batchprof.reports.storage import cpu_name
from pytest_batchprof.runs.session import BatchprofSession
from pytest_batchprof.settings import DEFAULT_VAL_FRACTION, Settings, default_data_dir

MODELS: dict[str, tuple[int, ...]] = {
    "784-1024-10": (1024,),
    "784-1024-1024-10": (1024, 1024),
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the constants every MNIST tutorial normalises with
SEED = 0
LR = 1e-3
TEST_BATCH_SIZE = 1000
MATMUL_SIZE = 2048
PEAK_READING_SECONDS = 0.5
QUICK_SAMPLES = 10_000
BATCH1_DEFAULT_CAP = 3000
ACCURACY_TOLERANCE_PP = 1.0
BURST_SECONDS = 1.0
BURST_MIN_STEPS = 50
LOADER_BURST_SECONDS = 2.0
"""A DataLoader burst's length: longer than the in-memory one's, since each burst starts
its loader's worker processes (both sides alike)."""
LOADER_WORKERS = (0, 2)
LOADER_MODEL = "784-1024-10"


@dataclass(frozen=True)
class Side:
    """One side's figures for one (model, batch) row."""

    seconds_per_epoch: float
    test_accuracy: float


@dataclass(frozen=True)
class Row:
    """Both sides of one (model, batch) comparison."""

    model: str
    batch_size: int
    steps: int
    full_steps: int
    textbook: Side
    engine: Side
    lean_samples_per_second: float
    engine_samples_per_second: float
    pair_ratios: Interval
    """The mean over the alternated pairs of the engine's samples/s over the lean loop's,
    with its 95% Student t interval: how far apart the two are, beyond the noise."""
    engine_call_seconds: float
    engine_gflops: float
    floor_seconds_per_epoch: float

    @property
    def extrapolated(self) -> bool:
        return self.steps < self.full_steps

    @property
    def speedup(self) -> float:
        return self.textbook.seconds_per_epoch / self.engine.seconds_per_epoch

    @property
    def engine_over_lean(self) -> float:
        """The engine's optimisation throughput over the lean loop's."""
        return self.engine_samples_per_second / self.lean_samples_per_second

    @property
    def best_speedup(self) -> float:
        """The speed-up of a loop that spent nothing beyond the floor."""
        return self.textbook.seconds_per_epoch / self.floor_seconds_per_epoch


# ---------------------------------------------------------------- machine


def matmul_gflops(size: int = MATMUL_SIZE, seconds: float = PEAK_READING_SECONDS) -> float:
    """GFLOP/s of a ``size`` x ``size`` float32 ``torch.mm``: 2 n^3 FLOPs per call, the
    median over blocks lasting about ``seconds`` in all."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    _, Timer = benchmark_timer()
    timer = Timer("torch.mm(a, b)", globals={"torch": torch, "a": a, "b": b},
                  num_threads=torch.get_num_threads())
    median = timer.blocked_autorange(min_run_time=seconds).median
    return 2 * size**3 / median / 1e9


@dataclass
class MatmulPeak:
    """The machine's matmul peak as the best of readings spread through the run."""

    readings: list[float]

    def read(self) -> None:
        self.readings.append(matmul_gflops())

    @property
    def best(self) -> float:
        return max(self.readings)

    def describe(self) -> str:
        return (f"matmul peak {self.best:.1f} GFLOP/s: the best of {len(self.readings)} "
                f"readings of a {MATMUL_SIZE}x{MATMUL_SIZE} float32 torch.mm, one before the "
                f"runs and one after each row (they ranged {min(self.readings):.1f} to "
                f"{self.best:.1f})")


# ---------------------------------------------------------------- textbook side


def train_indices(count: int, val_fraction: float) -> torch.Tensor:
    """Indices of the engine's training split in the 60,000-sample training file."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[round(count * val_fraction):]


def textbook_sets(data_dir: Path) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """torchvision's MNIST train and test sets with the tutorials' transform."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    return (datasets.MNIST(str(data_dir), train=True, download=False, transform=transform),
            datasets.MNIST(str(data_dir), train=False, download=False, transform=transform))


def seeded_mlp(hidden: tuple[int, ...]) -> nn.Module:
    """The engine's model: ``build_mlp`` under the run's seed, global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build_mlp(784, hidden, 10)


def textbook_train(model: nn.Module, train_set: torch.utils.data.Dataset, batch_size: int,
                   epochs: int) -> float:
    """The loop a user writes today; returns seconds of training (no evaluation)."""
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        running_loss = 0.0
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return time.perf_counter() - started


@torch.no_grad()
def textbook_accuracy(model: nn.Module, test_set: torch.utils.data.Dataset) -> float:
    """Test accuracy the textbook way: a DataLoader over the test set."""
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(test_set, batch_size=TEST_BATCH_SIZE):
        correct += (model(images).argmax(dim=1) == labels).sum().item()
        total += len(labels)
    return correct / total


# ---------------------------------------------------------------- lean side


def lean_samples_per_second(data: Dataset, hidden: tuple[int, ...], batch_size: int,
                            train_count: int, epochs: int) -> float:
    """Samples per second of the least loop that trains like the engine (see the module
    docstring), over the engine's first ``train_count`` training samples."""
    model = seeded_mlp(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    images, labels = data.train.x[:train_count], data.train.y[:train_count]
    shuffle = torch.Generator().manual_seed(SEED)
    with denormals_flushed(True):
        started = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(train_count, generator=shuffle)
            for start in range(0, train_count, batch_size):
                index = order[start:start + batch_size]
                loss = F.cross_entropy(model(images[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        seconds = time.perf_counter() - started
    return train_count * epochs / seconds


# ---------------------------------------------------------------- engine side


def engine_run(settings: Settings, data: Dataset, hidden: tuple[int, ...], batch_size: int,
               train_count: int) -> tuple[Run, float]:
    """Train as ``trained_mlp`` does (fresh session, CO2 off); the run and the call's seconds."""
    session = BatchprofSession(replace(settings, batch_sizes=(batch_size,),
                                       train_subset=train_count), torch.device("cpu"))
    started = time.perf_counter()
    run = session.run(data, mlp(hidden), batch_size)
    return run, time.perf_counter() - started


def engine_seconds_per_epoch(run: Run, scale: float) -> float:
    """Seconds per epoch with the training part scaled by ``scale`` (validation as measured)."""
    seconds = sum(r.train_seconds * scale + r.eval_seconds for r in run.history)
    return seconds / len(run.history)


def alternated_rates(run: Run, data: Dataset, hidden: tuple[int, ...], batch_size: int,
                     used: int, pairs: int) -> tuple[list[float], list[float]]:
    """Optimisation samples/s of the engine (its ``train``, as ``run`` was trained) and of
    the lean loop, in ``pairs`` alternated bursts of about :data:`BURST_SECONDS` each.

    A burst trains one epoch over the first samples of the row's ``used`` ones, as
    many as the lean loop trains in :data:`BURST_SECONDS` (whole batches, at least
    :data:`BURST_MIN_STEPS` steps). Short bursts, many of them, alternated: on a
    shared machine whose speed drifts over minutes, each side then gets its turns in
    the fast spells, and a pair's two bursts run seconds apart.
    """
    probe = min(used, batch_size * BURST_MIN_STEPS * 4)
    rate = lean_samples_per_second(data, hidden, batch_size, probe, 1)
    samples = min(used, max(batch_size * BURST_MIN_STEPS,
                            round(rate * BURST_SECONDS / batch_size) * batch_size))
    subset = data.with_train_subset(samples)
    config = replace(run.config, train_subset=samples, epochs=1)
    engine_rates, lean_rates = [], []
    for _ in range(pairs):
        engine_rates.append(train(config, subset, torch.device("cpu")).train_samples_per_second)
        lean_rates.append(lean_samples_per_second(data, hidden, batch_size, samples, 1))
    return engine_rates, lean_rates


# ---------------------------------------------------------------- floor and profile


def floor_seconds_per_step(hidden: tuple[int, ...], batch_size: int) -> float:
    """Seconds of one training step's unavoidable kernels, run back to back.

    Forward: one ``addmm`` per layer. Backward: each layer's weight gradient
    (``grad.T @ input``) and, above the first layer, the input gradient
    (``grad @ weight``). Then one fused Adam step over all parameters, which
    sweeps the weights and their state through the caches as training does.
    Element-wise work, the loss, autograd and Python's loop are left out.
    """
    _, Timer = benchmark_timer()
    model = seeded_mlp(hidden)
    layers = [module for module in model.modules() if isinstance(module, nn.Linear)]
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    inputs = [torch.randn(batch_size, layer.in_features) for layer in layers]
    grads = [torch.randn(batch_size, layer.out_features) for layer in layers]

    @torch.no_grad()
    def kernels() -> None:
        for layer, x in zip(layers, inputs, strict=True):
            torch.addmm(layer.bias, x, layer.weight.t())
        for index, (layer, x, grad) in enumerate(zip(layers, inputs, grads, strict=True)):
            torch.mm(grad.t(), x)
            if index > 0:
                torch.mm(grad, layer.weight)
        optimizer.step()

    timer = Timer("kernels()", globals={"kernels": kernels}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.5).median


def profile_engine(run: Run, data: Dataset) -> str:
    """torch.profiler's busiest operators while the engine trains ``run`` again (no measuring)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        train(run.config, data.with_train_subset(run.config.train_subset), torch.device("cpu"))
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


# ---------------------------------------------------------------- comparison


def warm_up(settings: Settings, data: Dataset, train_set: torch.utils.data.Dataset,
            test_set: torch.utils.data.Dataset, hidden: tuple[int, ...]) -> None:
    """A few steps of every path: one-off costs (imports, first kernels) count for none."""
    textbook_train(seeded_mlp(hidden), Subset(train_set, range(256)), 64, 1)
    textbook_accuracy(seeded_mlp(hidden), Subset(test_set, range(TEST_BATCH_SIZE)))
    engine_run(replace(settings, epochs=1), data, hidden, 64, 256)
    lean_samples_per_second(data, hidden, 64, 256, 1)


def compare(args: argparse.Namespace, settings: Settings, data: Dataset, indices: torch.Tensor,
            train_set: torch.utils.data.Dataset, test_set: torch.utils.data.Dataset,
            model: str, batch_size: int) -> Row:
    """Train one (model, batch) both ways and collect the row."""
    hidden = MODELS[model]
    count = len(indices)
    full_steps = math.ceil(count / batch_size)
    cap = args.max_steps if args.max_steps is not None else (
        BATCH1_DEFAULT_CAP if batch_size == 1 else None)
    steps = min(full_steps, cap) if cap else full_steps
    used = min(count, steps * batch_size)
    scale = full_steps / steps

    model_t = seeded_mlp(hidden)
    seconds = textbook_train(model_t, Subset(train_set, indices[:used].tolist()), batch_size,
                             args.epochs)
    textbook = Side(seconds * scale / args.epochs, textbook_accuracy(model_t, test_set))

    run, call_seconds = engine_run(settings, data, hidden, batch_size, used)
    if run.diverged or run.measurements is None or run.test_accuracy is None:
        raise RuntimeError(f"the engine's run failed: {run!r}")
    engine = Side(engine_seconds_per_epoch(run, scale), run.test_accuracy)
    engine_rates, lean_rates = alternated_rates(run, data, hidden, batch_size, used, args.pairs)
    train_flops = run.measurements.flops.train_flops or 0
    gflops = train_flops * run.train_samples_per_second / 1e9
    eval_seconds = sum(record.eval_seconds for record in run.history) / len(run.history)
    floor = floor_seconds_per_step(hidden, batch_size) * full_steps + eval_seconds
    if args.profile:
        print(f"\ntorch.profiler, engine, {model} batch {batch_size}, {used:,} samples:")
        print(profile_engine(run, data))
    return Row(model, batch_size, steps, full_steps, textbook, engine, max(lean_rates),
               max(engine_rates), mean_interval(
                   [e / lean for e, lean in zip(engine_rates, lean_rates, strict=True)]),
               call_seconds, gflops, floor)


def check_same_split(data: Dataset, train_set: torch.utils.data.Dataset,
                     indices: torch.Tensor) -> None:
    """Fail loudly if the reproduced split is not the engine's."""
    labels = train_set.targets[indices]
    if not torch.equal(labels, data.train.y[:len(indices)].cpu()):
        raise RuntimeError("the reproduced training split differs from load_dataset's")


def targets(rows: list[Row], peak: float) -> list[tuple[str, str]]:
    """Each target of the issue and whether this run meets it."""
    def verdict(selected: list[Row], holds) -> str:
        if not selected:
            return "not run"
        return "holds" if all(holds(row) for row in selected) else "MISSED"

    results = []
    for batches, minimum in (((64, 128), 5.0), ((1,), 3.0)):
        selected = [row for row in rows if row.batch_size in batches]
        speedups = ", ".join(f"{row.speedup:.1f}x" for row in selected)
        results.append((f">= {minimum:g}x speed-up at batch {' and '.join(map(str, batches))}",
                        f"{verdict(selected, lambda r, m=minimum: r.speedup >= m)}"
                        + (f" ({speedups})" if selected else "")))
    selected = [row for row in rows if row.batch_size in (1, 16, 128)]
    ratios = ", ".join(f"{row.engine_over_lean:.2f}x (pairs {ratio_interval(row.pair_ratios)})"
                       for row in selected)
    results.append((">= 1.0x the lean loop's samples/s at batch 1, 16 and 128",
                    lean_verdict(selected) + (f": {ratios}" if selected else "")))
    selected = [row for row in rows if row.batch_size == 128 and row.model == "784-1024-10"]
    shares = ", ".join(f"{row.engine_gflops / peak:.0%}" for row in selected)
    results.append((">= 50% of matmul peak at batch 128, 784-1024-10",
                    verdict(selected, lambda r: r.engine_gflops / peak >= 0.5)
                    + (f" ({shares})" if selected else "")))
    full = [row for row in rows if not row.extrapolated]
    worst = max((abs(row.textbook.test_accuracy - row.engine.test_accuracy) * 100
                 for row in full), default=0.0)
    results.append((f"test accuracies agree within {ACCURACY_TOLERANCE_PP:g} pp "
                    "(noise check, full-epoch rows)",
                    "not run" if not full else
                    f"{'holds' if worst <= ACCURACY_TOLERANCE_PP else 'MISSED'} "
                    f"(largest gap {worst:.2f} pp)"))
    return results


def ratio_interval(interval: Interval) -> str:
    """``1.02 (0.98-1.06)``: a mean ratio and its 95% interval."""
    if interval.low is None or interval.high is None:
        return f"{interval.mean:.2f}"
    return f"{interval.mean:.2f} ({interval.low:.2f}-{interval.high:.2f})"


def lean_verdict(rows: list[Row] | list[LoaderRow]) -> str:
    """``holds`` when each side's best puts the engine at or above the loop it is set
    against (the lean loop, or the hand-written DataLoader loop) in every row; ``parity
    within noise`` when it does not, but no row's pairs show the engine slower (their
    interval reaches 1.0); ``MISSED`` when some row's pairs do."""
    if not rows:
        return "not run"
    if all(row.engine_over_lean >= 1.0 for row in rows):
        return "holds"
    if all(row.pair_ratios.high is None or row.pair_ratios.high >= 1.0 for row in rows):
        return "parity within noise"
    return "MISSED"


def table(rows: list[Row], peak: float) -> str:
    """The comparison as a GitHub-flavoured markdown table."""
    body = [[
        row.model, row.batch_size,
        f"{row.textbook.seconds_per_epoch:.2f}", f"{row.engine.seconds_per_epoch:.2f}",
        f"{row.speedup:.1f}",
        f"{row.lean_samples_per_second:,.0f}", f"{row.engine_samples_per_second:,.0f}",
        f"{row.engine_over_lean:.2f}", ratio_interval(row.pair_ratios),
        f"{row.textbook.test_accuracy:.2%}".rstrip("%"),
        f"{row.engine.test_accuracy:.2%}".rstrip("%"),
        f"{row.engine_gflops:.1f}", f"{row.engine_gflops / peak:.0%}",
        f"{row.floor_seconds_per_epoch:.2f}", f"{row.best_speedup:.1f}",
        f"{row.engine_call_seconds:.2f}",
        (f"extrapolated from {row.steps} of {row.full_steps} steps; acc after "
         f"{row.steps} steps" if row.extrapolated else ""),
    ] for row in rows]
    headers = ["model", "batch", "textbook s/epoch", "engine s/epoch", "speed-up (x)",
               "lean samples/s", "engine samples/s", "engine / lean (x)",
               "pairs' mean (95% CI)",
               "textbook test acc (%)", "engine test acc (%)", "engine GFLOP/s",
               "% of matmul peak", "floor s/epoch", "best speed-up (x)", "engine call s",
               "note"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


# ---------------------------------------------------------------- DataLoader comparison


class NormalisedImages(torch.utils.data.Dataset):
    """MNIST's training images as uint8, each normalised as it is read (what the
    tutorials' ``ToTensor()`` + ``Normalize`` do to one image): a Dataset with a cheap
    per-item transform, read by a DataLoader on both sides."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[index].float() / 255 - MNIST_MEAN) / MNIST_STD, self.labels[index]


@dataclass(frozen=True)
class LoaderRow:
    """The engine fed by a DataLoader against a hand-written DataLoader loop, one row."""

    workers: int
    batch_size: int
    samples: int
    """Training samples of each burst (one epoch)."""
    hand_samples_per_second: float
    engine_samples_per_second: float
    pair_ratios: Interval

    @property
    def engine_over_lean(self) -> float:
        """The engine's samples/s over the hand-written loop's (:func:`lean_verdict`'s name)."""
        return self.engine_samples_per_second / self.hand_samples_per_second


def loader_options(workers: int) -> dict[str, object]:
    """The DataLoader arguments of both sides: ``workers`` processes, kept across epochs."""
    return {"num_workers": workers, "persistent_workers": workers > 0}


def hand_loader_samples_per_second(dataset: torch.utils.data.Dataset, hidden: tuple[int, ...],
                                   batch_size: int, workers: int) -> float:
    """Samples per second of the DataLoader loop a user writes, over one epoch of
    ``dataset``: seeded shuffle, ``workers`` worker processes, the engine's model and fused
    Adam, denormals flushed as the engine flushes them; no running loss, no evaluation.
    The clock runs from the loader's first batch asked (its workers started) to the last
    step, as the engine's epoch clock does."""
    model = seeded_mlp(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED), **loader_options(workers))
    with denormals_flushed(True):
        started = time.perf_counter()
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - started
    del loader  # its persistent workers end here, not during the other side's burst
    return len(dataset) / seconds


def loader_config(settings: Settings, data: Dataset, hidden: tuple[int, ...], batch_size: int,
                  samples: int, workers: int) -> RunConfig:
    """The engine's configuration of a DataLoader-fed epoch of ``samples`` samples: the one
    its session makes for the MLP at ``batch_size`` (from a run of one batch), with the
    row's feed."""
    feed = "DataLoader" + (f", {workers} workers" if workers else "")
    base, _ = engine_run(replace(settings, epochs=1), data, hidden, batch_size, batch_size)
    return replace(base.config, train_subset=samples, epochs=1, data_feed=feed)


def engine_loader_samples_per_second(config: RunConfig, data: Dataset,
                                     dataset: torch.utils.data.Dataset, workers: int) -> float:
    """The engine's optimisation samples/s (validation left out) over one epoch of
    ``dataset``, fed by a DataLoader as a registered ``Dataset`` is: its training split a
    :class:`~pytest_batchprof.data.loading.LoaderSplit` of ``dataset`` with the same
    options (validation and test stay in memory)."""
    fed = replace(data, train=LoaderSplit(dataset, loader_options(workers)))
    return train(config, fed, torch.device("cpu")).train_samples_per_second


def compare_loader(args: argparse.Namespace, settings: Settings, data: Dataset,
                   images: NormalisedImages, workers: int, batch_size: int) -> LoaderRow:
    """Train one (workers, batch) row both ways in ``args.pairs`` alternated bursts of
    about :data:`LOADER_BURST_SECONDS`, each one epoch over the first samples of
    ``images``, as many as the hand-written loop reads in that time."""
    hidden = MODELS[LOADER_MODEL]
    probe = Subset(images, range(min(len(images), batch_size * BURST_MIN_STEPS * 4)))
    rate = hand_loader_samples_per_second(probe, hidden, batch_size, workers)
    samples = min(len(images), max(batch_size * BURST_MIN_STEPS,
                                   round(rate * LOADER_BURST_SECONDS / batch_size) * batch_size))
    burst = Subset(images, range(samples))
    config = loader_config(settings, data, hidden, batch_size, samples, workers)
    engine_rates, hand_rates = [], []
    for _ in range(args.pairs):
        engine_rates.append(engine_loader_samples_per_second(config, data, burst, workers))
        hand_rates.append(hand_loader_samples_per_second(burst, hidden, batch_size, workers))
    if args.profile:
        print(f"\ntorch.profiler, engine, DataLoader with {workers} workers, batch "
              f"{batch_size}, {samples:,} samples:")
        print(profile_loader_engine(config, data, burst, workers))
    return LoaderRow(workers, batch_size, samples, max(hand_rates), max(engine_rates),
                     mean_interval([e / h for e, h in zip(engine_rates, hand_rates,
                                                          strict=True)]))


def profile_loader_engine(config: RunConfig, data: Dataset, dataset: torch.utils.data.Dataset,
                          workers: int) -> str:
    """torch.profiler's busiest operators while the engine trains an epoch of ``dataset``
    through a DataLoader."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        engine_loader_samples_per_second(config, data, dataset, workers)
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def loader_table(rows: list[LoaderRow]) -> str:
    """The DataLoader comparison as a GitHub-flavoured markdown table."""
    body = [[row.workers, row.batch_size, f"{row.samples:,}",
             f"{row.hand_samples_per_second:,.0f}", f"{row.engine_samples_per_second:,.0f}",
             f"{row.engine_over_lean:.2f}", ratio_interval(row.pair_ratios)] for row in rows]
    headers = ["workers", "batch", "samples per burst", "hand-written loop samples/s",
               "engine samples/s", "engine / hand-written (x)", "pairs' mean (95% CI)"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="directory holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batch-sizes", default="1,16,64,128")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap optimizer steps per epoch and extrapolate seconds/epoch "
                             f"(default: {BATCH1_DEFAULT_CAP} at batch 1, no cap otherwise)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: 784-1024-10, batch 64 and 128, "
                             f"{QUICK_SAMPLES:,} training samples")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's busiest operators of each engine run")
    parser.add_argument("--pairs", type=int, default=15,
                        help=f"engine and lean bursts (about {BURST_SECONDS:g} s each), "
                             "alternated, per row; each side's best throughput is compared "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: torch's, {torch.get_num_threads()})")
    parser.add_argument("--loader-batch-sizes", default="16,128",
                        help=f"batch sizes of the DataLoader comparison ({LOADER_MODEL}; "
                             "'none' leaves it out; default: %(default)s)")
    parser.add_argument("--loader-workers", default=",".join(map(str, LOADER_WORKERS)),
                        help="DataLoader worker processes of its rows (default: %(default)s)")
    parser.add_argument("--loader-only", action="store_true",
                        help="run the DataLoader comparison alone")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch_sizes = "784-1024-10", "64,128"
        args.loader_batch_sizes = "128"
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    try:
        args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be whole numbers, got {args.batch_sizes!r}")
    if args.epochs < 1 or min(args.batch_sizes) < 1 or (args.max_steps or 1) < 1:
        parser.error("--epochs, --batch-sizes and --max-steps must be >= 1")
    try:
        args.loader_batch_sizes = ([] if args.loader_batch_sizes.strip() == "none" else
                                   [int(size) for size in args.loader_batch_sizes.split(",")])
        args.loader_workers = [int(count) for count in args.loader_workers.split(",")]
    except ValueError:
        parser.error(f"--loader-batch-sizes and --loader-workers must be whole numbers, got "
                     f"{args.loader_batch_sizes!r} and {args.loader_workers!r}")
    if min(args.loader_batch_sizes, default=1) < 1 or min(args.loader_workers) < 0:
        parser.error("--loader-batch-sizes must be >= 1 and --loader-workers >= 0")
    if args.loader_only and not args.loader_batch_sizes:
        parser.error("--loader-only needs --loader-batch-sizes")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(epochs=args.epochs, dataset="mnist", data_dir=args.data_dir,
                        device="cpu", seed=SEED, lr=LR, optimizer="adam", no_co2=True)
    data = load_dataset("mnist", args.data_dir, DEFAULT_VAL_FRACTION)
    train_set, test_set = textbook_sets(args.data_dir)
    indices = train_indices(len(train_set), DEFAULT_VAL_FRACTION)
    if args.quick:
        indices = indices[:QUICK_SAMPLES]
    check_same_split(data, train_set, indices)

    peak = MatmulPeak([])
    peak.read()
    physical = psutil.cpu_count(logical=False)
    print(f"{cpu_name()}, {physical} cores / {os.cpu_count()} logical, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; first {MATMUL_SIZE}x{MATMUL_SIZE} float32 "
          f"matmul reading {peak.best:.1f} GFLOP/s")
    print(f"MNIST from {args.data_dir}: {len(indices):,} training samples per epoch "
          f"(the engine's split{', first 10,000: --quick' if args.quick else ''}), "
          f"{args.epochs} epoch(s), Adam lr {LR:g}, seed {SEED}. Engine s/epoch includes its "
          f"validation pass; 'engine call s' is the whole session.run call, measuring included.")

    models = [] if args.loader_only else args.models
    for name in {*models, LOADER_MODEL}:
        warm_up(settings, data, train_set, test_set, MODELS[name])
    rows = []
    for name in models:
        for batch_size in args.batch_sizes:
            rows.append(compare(args, settings, data, indices, train_set, test_set,
                                name, batch_size))
            peak.read()
            print(f"  done: {mlp_name(784, MODELS[name], 10)} batch {batch_size}", flush=True)
    images = NormalisedImages(train_set.data[indices], train_set.targets[indices])
    loader_rows = []
    for workers in args.loader_workers if args.loader_batch_sizes else ():
        for batch_size in args.loader_batch_sizes:
            loader_rows.append(compare_loader(args, settings, data, images, workers,
                                              batch_size))
            print(f"  done: DataLoader, {workers} workers, batch {batch_size}", flush=True)
    if rows:
        print()
        print(table(rows, peak.best))
        print()
        print(peak.describe())
        for target, result in targets(rows, peak.best):
            print(f"{target}: {result}")
    if loader_rows:
        print(f"\nFed by a DataLoader ({LOADER_MODEL}, MNIST's images as uint8 normalised per "
              f"item, one epoch of each burst's samples, {args.pairs} alternated pairs): the "
              f"engine's train against a hand-written DataLoader loop")
        print(loader_table(loader_rows))
        ratios = ", ".join(f"{row.engine_over_lean:.2f}x (pairs {ratio_interval(row.pair_ratios)})"
                           for row in loader_rows)
        print(f">= 1.0x the hand-written DataLoader loop's samples/s: "
              f"{lean_verdict(loader_rows)}: {ratios}")


if __name__ == "__main__":
    main()
