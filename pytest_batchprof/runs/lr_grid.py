"""A learning rate tuned per batch size: every rate of a grid is trained, the best one on
the validation split is kept.

Shallue et al. (2018) showed that a comparison of batch sizes is fair only when
the learning rate is re-tuned at each of them. With ``--batchprof-lr-grid`` (or
``trained_model(..., lr_grid=[...])``) a configuration is trained at every rate
of the grid, each with the session's seeds, and :func:`choose_lr` keeps the
rate whose runs did best on the *validation* split:

* with a target accuracy, the fewest mean steps to it, among the rates whose
  seeds all reached it (ties: the better validation figure);
* else, the best mean final validation accuracy, or of the runs' metric when they are
  scored by another (the lowest RMSE or perplexity, the highest F1: in its direction).

A rate with a seed that diverged or ran out of memory is never chosen. The test
split plays no part, so the test accuracy of the chosen run stays an unbiased
estimate. A choice at either end of the grid is flagged: the best rate may lie
beyond it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pytest_batchprof.engine.lr_choice import (  # noqa: F401  (VAL_ACCURACY: re-exported)
    STEPS_TO_TARGET,
    VAL_ACCURACY,
    LrChoice,
    val_criterion,
)

if TYPE_CHECKING:
    from pytest_batchprof.engine.training import Run


def _failed(run: Run) -> bool:
    return run.diverged is not None or run.out_of_memory is not None


def _mean_steps(runs: Sequence[Run]) -> float | None:
    steps = [run.time_to_target.steps if run.time_to_target else None for run in runs]
    if any(_failed(run) for run in runs) or None in steps:
        return None
    return statistics.fmean(steps)


def _mean_val_figure(runs: Sequence[Run]) -> float | None:
    """The mean final validation figure of the runs' metric (accuracy, or another)."""
    if any(_failed(run) for run in runs) or any(not run.history for run in runs):
        return None
    values = [run.val_metric for run in runs]
    return statistics.fmean(values) if all(math.isfinite(value) for value in values) else None


def choose_lr(runs_by_lr: Mapping[float, Sequence[Run]], target: float | None) -> LrChoice:
    """The rate of ``runs_by_lr`` (each rate's runs, one per seed) that did best on the
    validation split (see the module docstring); every run's figures are read, none of
    its test figures. ``target`` is the runs' target, of accuracy or of their metric."""
    grid = tuple(sorted(runs_by_lr))
    first = next(run for runs in runs_by_lr.values() for run in runs)
    sign = 1.0 if first.config.higher_is_better else -1.0  # the larger sign * value, the better
    val = {rate: _mean_val_figure(runs_by_lr[rate]) for rate in grid}
    if target is not None:
        steps = {rate: _mean_steps(runs_by_lr[rate]) for rate in grid}
        reached = [rate for rate in grid if steps[rate] is not None]
        if reached:
            chosen = min(reached, key=lambda rate: (
                steps[rate], -sign * val[rate] if val[rate] is not None else math.inf))
            return LrChoice(grid, chosen, STEPS_TO_TARGET, steps)
    usable = [rate for rate in grid if val[rate] is not None]
    chosen = max(usable, key=lambda rate: sign * val[rate]) if usable else None
    return LrChoice(grid, chosen, val_criterion(first.metric_name), val)
