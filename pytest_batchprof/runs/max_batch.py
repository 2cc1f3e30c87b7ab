"""The largest batch size whose training fits: doubling, then a binary search, with a margin.

For each model of a session (``--batchprof-find-max-batch``), batch sizes are
probed from 1 upwards, doubling until one does not fit or the cap is reached,
then bisected between the last that fitted and the first that did not, to
within :data:`RESOLUTION` of the fit. A probe is the engine itself on
:data:`PROBE_STEPS` steps of that batch size (fresh weights, the run's
precision, optimizer and loss), under the memory limit the runs have (the
budget, or a CUDA device's memory): it fits when it neither raises the device's
out-of-memory error nor passes the limit. The answer is the largest fit less
the margin (10% by default: what the first steps do not show, such as a longer
run's fragmentation, or a validation pass), so that a study can ask for it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from pytest_batchprof.engine.memory import MaxBatch, MemoryLimit, Probe
from pytest_batchprof.engine.training import TrainingLoop
from pytest_batchprof.measuring.metrics import PeakMemoryMeter
from pytest_batchprof.runs.build import Experiment

PROBE_STEPS = 2
"""Optimizer steps a probe trains: the second step is the first with the optimizer's state."""
PROBE_EVAL_SAMPLES = 16
"""The validation and test samples a probe evaluates on: it measures training, not these."""
RESOLUTION = 0.01
"""The bisection stops when the first failure is within this fraction of the last fit."""


def search(fits: Callable[[int], Probe], cap: int, resolution: float = RESOLUTION) -> (
        tuple[int, int | None, list[Probe]]):
    """Double from 1 until a size does not fit or passes ``cap`` (then try ``cap``), and
    bisect between the last fit and the first failure. Returns the largest fit (0 if
    none), the first failure (``None`` if ``cap`` fits) and the probes in order."""
    probes: list[Probe] = []

    def tried(size: int) -> bool:
        probes.append(fits(size))
        return probes[-1].fits

    fitted, failed, size = 0, None, 1
    while size <= cap:
        if not tried(size):
            failed = size
            break
        fitted, size = size, size * 2
    if failed is None and fitted < cap:
        if tried(cap):
            return cap, None, probes
        failed = cap
    if failed is None:
        return fitted, None, probes
    while failed - fitted > max(1, math.floor(fitted * resolution)):
        middle = (fitted + failed) // 2
        if tried(middle):
            fitted = middle
        else:
            failed = middle
    return fitted, failed, probes


def find_max_batch(experiment: Experiment, device: torch.device, limit: MemoryLimit,
                   margin: float, cap: int | None = None) -> MaxBatch:
    """Search the largest batch of ``experiment``'s model that trains within ``limit``
    (``cap`` defaults to its training samples)."""
    samples = len(experiment.data.train)
    cap = samples if cap is None else min(cap, samples)
    fitted, failed, probes = search(lambda size: probe(experiment, size, device, limit), cap)
    return MaxBatch(math.floor(fitted * (1 - margin)) if fitted > 1 else fitted, fitted,
                    failed, cap, margin, limit, tuple(probes))


def probe(experiment: Experiment, batch_size: int, device: torch.device,
          limit: MemoryLimit) -> Probe:
    """Train :data:`PROBE_STEPS` steps of ``batch_size`` on the engine under ``limit``."""
    config = dataclasses.replace(experiment.config, batch_size=batch_size, epochs=1,
                                 target_accuracy=None, lr_warmup_epochs=0.0)
    data = experiment.data.with_train_subset(min(len(experiment.data.train),
                                                 PROBE_STEPS * batch_size))
    data = dataclasses.replace(data, val=data.val.take(PROBE_EVAL_SAMPLES),
                               test=data.test.take(PROBE_EVAL_SAMPLES))
    meter = PeakMemoryMeter(device)
    loop = TrainingLoop(config, data, device, experiment.recipe, memory=meter,
                        memory_limit=limit)
    with meter:
        run = loop.run()
    if run.out_of_memory is not None:
        return Probe(batch_size, False, run.out_of_memory.reached_bytes)
    return Probe(batch_size, True, meter.result.bytes if meter.result else None)
