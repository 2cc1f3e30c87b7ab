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
device sync.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

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
        from pytest_batchprof.reports.figures import BYTE_UNITS
        from pytest_batchprof.reports.tables import human_number, pick_unit

        reached = ""
        if self.reached_bytes is not None:  # in the report's byte units
            unit, scale = pick_unit([self.reached_bytes], BYTE_UNITS)
            reached = f"reached {human_number(self.reached_bytes / scale)} {unit}; "
        where = ("" if self.epoch is None else
                 f", epoch {self.epoch} step {self.step}")
        return f"out of memory at batch {self.batch_size:,} ({reached}{self.cause}{where})"


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
