"""Out of memory as a result, not a crash: a run's memory limit, and what a run that
ran out of it leaves.

A batch size that does not fit is an answer a batch-size study wants, so the
engine turns the device's out-of-memory error (CUDA, MPS), and a peak that
passes the memory budget (``--batchprof-memory-budget``), into an
:class:`OutOfMemory` record on the run instead of an exception, and frees what
the failed step held before the next run starts. The budget is checked against
the same peak the report shows (:class:`~pytest_batchprof.measuring.metrics.
PeakMemoryMeter`), at a few points of the first steps and after every epoch
(:class:`~pytest_batchprof.engine.steps.MemoryCheck`), never as a per-step
device sync. A run may also hold the largest batch size of its model that fits the
limit (:class:`MaxBatch`, which :mod:`pytest_batchprof.runs.max_batch` searches).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from pytest_batchprof.units import BYTE_UNITS, human_number, pick_unit

MPS_OUT_OF_MEMORY = "MPS backend out of memory"
"""How the MPS backend's out-of-memory ``RuntimeError`` begins (it has no class of its own)."""


@dataclass(frozen=True)
class MemoryLimit:
    """The most memory a run's peak may reach, in bytes, and where that limit comes from."""

    bytes: int
    source: str
    """``the --batchprof-memory-budget of 2 GiB``, ``the memory of cuda:0``."""


@dataclass(frozen=True)
class OutOfMemory:
    """A run that ran out of memory: at which batch size, how much it had reached and why.

    ``reached_bytes`` is the run's peak memory growth when it stopped (``None``
    where nothing measured it); ``epoch`` and ``step`` say where (``None`` for a
    cached run whose recorded peak passes today's budget).
    """

    batch_size: int
    reached_bytes: int | None
    cause: str
    epoch: int | None = None
    step: int | None = None

    def describe(self) -> str:
        """``out of memory at batch 4,096 (reached 2.3 GB; ...)``: the row's outcome."""
        reached = ""
        if self.reached_bytes is not None:  # in the report's byte units
            unit, scale = pick_unit([self.reached_bytes], BYTE_UNITS)
            reached = f"reached {human_number(self.reached_bytes / scale)} {unit}; "
        where = ("" if self.epoch is None else
                 f", epoch {self.epoch} step {self.step}")
        return f"out of memory at batch {self.batch_size:,} ({reached}{self.cause}{where})"


@dataclass(frozen=True)
class Probe:
    """One batch size tried: whether it fitted, and the peak it reached (``None``: the
    device ran out before anything measured it)."""

    batch_size: int
    fits: bool
    peak_bytes: int | None


@dataclass(frozen=True)
class MaxBatch:
    """The largest batch of one model whose training fits a memory limit, as
    :func:`~pytest_batchprof.runs.max_batch.find_max_batch` found it; a run holds it
    (``run.max_batch``)."""

    batch_size: int
    """The answer: ``largest_fit`` less the margin (0 when not even batch 1 fits)."""
    largest_fit: int
    first_failure: int | None
    """``None`` when every size up to the cap fitted."""
    cap: int
    margin: float
    limit: MemoryLimit
    probes: tuple[Probe, ...]

    def describe(self) -> str:
        """One line for the live output."""
        if not self.largest_fit:
            return f"no batch size fits {self.limit.source}, not even 1"
        failure = (f"{self.first_failure:,} does not" if self.first_failure is not None
                   else f"every size up to the cap of {self.cap:,} does")
        return (f"largest batch that fits {self.limit.source}: {self.batch_size:,} "
                f"({self.largest_fit:,} fits, {failure}; {self.margin:.0%} margin; "
                f"{len(self.probes)} probes)")

    def summary(self) -> dict[str, object]:
        """Row figures of every run of the model."""
        return {"max_batch_size": self.batch_size, "max_batch_fits": self.largest_fit,
                "max_batch_fails": self.first_failure, "max_batch_limit": self.limit.source}


class MemoryBudgetExceeded(Exception):
    """Raised inside the loop when the run's peak passed its :class:`MemoryLimit`."""

    def __init__(self, reached: int, limit: MemoryLimit) -> None:
        super().__init__(f"peak memory {reached} bytes passed {limit.source}")
        self.reached = reached
        self.limit = limit


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device (or the budget) ran out of memory."""
    return (isinstance(error, torch.OutOfMemoryError | MemoryBudgetExceeded)
            or (isinstance(error, RuntimeError) and str(error).startswith(MPS_OUT_OF_MEMORY)))


def cause_of(error: BaseException) -> str:
    """What ran out, in a few words: the budget, or the device's own first line."""
    if isinstance(error, MemoryBudgetExceeded):
        return f"passed {error.limit.source}"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"the device: {first_line}"


def release_device_memory(device: torch.device) -> None:
    """Give back what a failed run's tensors held, so the next run starts as a fresh one
    would: collect reference cycles, then empty the device allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
