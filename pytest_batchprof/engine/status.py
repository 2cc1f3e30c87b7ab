"""Where a run stands while it trains: the engine's host-side counters, read with no
device sync, and the line that shows them.

The engine hands a :class:`TrainingStatus` to its observer
(:class:`~pytest_batchprof.engine.training.TrainingObserver`) at most every
:data:`~pytest_batchprof.engine.training.PROGRESS_POLL_SECONDS` during an epoch; the
session's live output (:class:`~pytest_batchprof.runs.progress.RunProgress`) shows it.
This module imports neither torch nor pytest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingStatus:
    """Where a run stands, from the engine's host-side counters (no device sync)."""

    epoch: int
    epochs: int
    step: int
    """Optimizer steps taken in this epoch."""
    steps_per_epoch: int
    samples_done: int
    """Training samples of the whole run so far."""
    total_samples: int
    """Training samples of the whole run as planned (a run may stop earlier at its target)."""
    run_seconds: float
    """Wall time since the run started, validation included, measuring excluded."""
    stops_early: bool = False
    """The run stops at a target accuracy, so the time left is an upper bound."""

    @property
    def samples_per_second(self) -> float:
        return self.samples_done / self.run_seconds if self.run_seconds > 0 else math.nan

    @property
    def seconds_left(self) -> float:
        """The planned rest of the run at the rate so far."""
        rate = self.samples_per_second
        if not rate > 0:
            return math.nan
        return max(self.total_samples - self.samples_done, 0) / rate

    def line(self) -> str:
        """``epoch 3/200, step 1,200/3,438, 2,345 samples/s, 1 min 23 s left``."""
        left = self.seconds_left
        remaining = "" if math.isnan(left) else (
            f", {'at most ' if self.stops_early else ''}{duration(left)} left")
        rate = self.samples_per_second
        speed = "" if math.isnan(rate) else f", {rate:,.0f} samples/s"
        return (f"epoch {self.epoch}/{self.epochs}, step {self.step:,}/{self.steps_per_epoch:,}"
                f"{speed}{remaining}")


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``2 h 07 min``: as precise as a person waiting needs."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    hours, minutes = divmod(round(whole / 60), 60)
    return f"{hours} h {minutes:02d} min"
