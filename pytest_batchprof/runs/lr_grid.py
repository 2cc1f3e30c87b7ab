"""A learning rate tuned per batch size: every rate of a grid is trained, the best one on
the validation split is kept.

Shallue et al. (2018) showed that a comparison of batch sizes is fair only when
the learning rate is re-tuned at each of them. With ``--batchprof-lr-grid`` (or
``trained_model(..., lr_grid=[...])``) a configuration is trained at every rate
of the grid, each with the session's seeds, and :func:`choose_lr` keeps the
rate whose runs did best on the *validation* split:

* with a target accuracy, the fewest mean steps to it, among the rates whose
  seeds all reached it (ties: the higher validation accuracy);
* else, the highest mean final validation accuracy.

A rate with a seed that diverged or ran out of memory is never chosen. The test
split plays no part, so the test accuracy of the chosen run stays an unbiased
estimate. A choice at either end of the grid is flagged: the best rate may lie
beyond it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_batchprof.engine.training import Run

STEPS_TO_TARGET = "steps to target"
VAL_ACCURACY = "val accuracy"


@dataclass(frozen=True)
class LrChoice:
    """The outcome of tuning one configuration's learning rate over a grid."""

    grid: tuple[float, ...]
    """The rates tried, smallest first."""
    chosen: float | None
    """The rate kept; ``None`` when every rate diverged or ran out of memory."""
    criterion: str
    """:data:`STEPS_TO_TARGET` or :data:`VAL_ACCURACY`."""
    scores: Mapping[float, float | None]
    """Each rate's validation figure under the criterion (mean over seeds); ``None``
    where a seed diverged, ran out of memory or (for steps) missed the target."""

    @property
    def note(self) -> str | None:
        """The edge flag: the best rate is the grid's smallest or largest."""
        if self.chosen is None:
            return None
        if self.chosen == self.grid[-1]:
            return "best lr is the grid's largest: widen the grid"
        if self.chosen == self.grid[0]:
            return "best lr is the grid's smallest: widen the grid"
        return None

    def summary(self, lr: float) -> dict[str, object]:
        """The row figures of the run at ``lr``."""
        chosen = lr == self.chosen
        return {"lr_grid": ",".join(f"{rate:g}" for rate in self.grid),
                "lr_chosen": chosen, "lr_grid_criterion": self.criterion,
                "lr_grid_score": self.scores.get(lr), "lr_grid_note": self.note if chosen else None}

    def describe(self) -> str:
        """One line for the console."""
        if self.chosen is None:
            return "lr grid: no rate trained without diverging or running out of memory"
        scores = ", ".join(f"{rate:g}: {_shown(score, self.criterion)}"
                           for rate, score in self.scores.items())
        note = f"; {self.note}" if self.note else ""
        return (f"lr grid: chose lr={self.chosen:g} by {self.criterion} on the validation "
                f"split ({scores}){note}")


def _shown(score: float | None, criterion: str) -> str:
    if score is None:
        return "n/a"
    return f"{score:,.0f} steps" if criterion == STEPS_TO_TARGET else f"{score:.2%}"


def _failed(run: Run) -> bool:
    return run.diverged is not None or run.out_of_memory is not None


def _mean_steps(runs: Sequence[Run]) -> float | None:
    steps = [run.time_to_target.steps if run.time_to_target else None for run in runs]
    if any(_failed(run) for run in runs) or None in steps:
        return None
    return statistics.fmean(steps)


def _mean_val_accuracy(runs: Sequence[Run]) -> float | None:
    if any(_failed(run) for run in runs) or any(not run.history for run in runs):
        return None
    values = [run.val_accuracy for run in runs]
    return statistics.fmean(values) if all(math.isfinite(value) for value in values) else None


def choose_lr(runs_by_lr: Mapping[float, Sequence[Run]], target: float | None) -> LrChoice:
    """The rate of ``runs_by_lr`` (each rate's runs, one per seed) that did best on the
    validation split (see the module docstring); every run's figures are read, none of
    its test figures."""
    grid = tuple(sorted(runs_by_lr))
    val = {rate: _mean_val_accuracy(runs_by_lr[rate]) for rate in grid}
    if target is not None:
        steps = {rate: _mean_steps(runs_by_lr[rate]) for rate in grid}
        reached = [rate for rate in grid if steps[rate] is not None]
        if reached:
            chosen = min(reached, key=lambda rate: (steps[rate], -(val[rate] or 0.0)))
            return LrChoice(grid, chosen, STEPS_TO_TARGET, steps)
    usable = [rate for rate in grid if val[rate] is not None]
    chosen = max(usable, key=lambda rate: val[rate]) if usable else None
    return LrChoice(grid, chosen, VAL_ACCURACY, val)
