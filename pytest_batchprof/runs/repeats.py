"""Repeats: one configuration trained with several seeds, as one result with its noise.

``--repeats N`` (or ``trained_mlp(..., repeats=N)``) trains seeds ``seed`` to
``seed + N - 1``. The fixture then returns a :class:`RepeatedRun`, whose
figures are means over the seeds, with :meth:`RepeatedRun.interval` for the
95% confidence interval of any of them.

Reports keep one row per seed (JSON, CSV, baselines), and
:func:`aggregate_seeds` folds the rows of one configuration into one row when
a table is rendered: mean ± interval where the seeds differ, the value where
they agree. Folding at render time keeps a saved report's table identical to
the one the session printed.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_batchprof.reports.figures import NOT_FOLDED
from pytest_batchprof.reports.tables import Row, merge_outcome, run_key
from pytest_batchprof.runs.stats import Interval, finite, mean_interval, seed_label

if TYPE_CHECKING:
    from pytest_batchprof.engine.training import Run



def group_seeds(rows: Iterable[Row]) -> list[list[Row]]:
    """Rows grouped by configuration but for the seed, groups in order of first appearance."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(run_key(row, seed=False), []).append(row)
    return list(groups.values())


def aggregate_seeds(rows: Sequence[Row]) -> list[Row]:
    """One row per configuration: a group of seeds becomes one row (see :func:`fold`)."""
    return [{**group[0], "seeds": "1"} if len(group) == 1 else fold(group)
            for group in group_seeds(rows)]


def fold(group: Sequence[Row]) -> Row:
    """The row of several seeds of one configuration.

    A number the seeds agree on stays as it is (parameters, FLOPs); one they
    differ on becomes an :class:`~pytest_batchprof.runs.stats.Interval` over the
    seeds that have it (a diverged seed has no test accuracy). A mix of text
    and numbers, as ``not reached`` beside steps to target, becomes
    ``not reached by 1 of 3``; flags that differ count the true ones
    (``2 of 3``). ``seed`` is the seeds (``0-2``), ``seeds`` their count,
    ``outcome`` the worst outcome and ``tests`` every test.
    """
    keys = list(dict.fromkeys(key for row in group for key in row))
    folded: Row = {}
    for key in keys:
        if key in NOT_FOLDED:
            continue
        values = [row.get(key) for row in group]
        folded[key] = _fold_values(values)
    folded["seed"] = seed_label(row.get("seed") for row in group)
    diverged = sum(1 for row in group if row.get("diverged"))
    folded["seeds"] = f"{len(group)}" + (f" ({diverged} diverged)" if diverged else "")
    outcome = None
    for row in group:
        if row.get("outcome") is not None:
            outcome = merge_outcome(outcome, str(row["outcome"]))
    folded["outcome"] = outcome
    folded["tests"] = list(dict.fromkeys(test for row in group for test in row.get("tests") or ()))
    return folded


def _fold_values(values: list[object]) -> object:
    if len({json.dumps(value, sort_keys=True, default=str) for value in values}) == 1:
        return values[0]
    if all(isinstance(value, bool) for value in values):  # target_reached: "2 of 3"
        return f"{sum(values)} of {len(values)}"
    numbers = finite(values)
    texts = [value for value in values if isinstance(value, str)]
    if numbers and texts:
        text = max(set(texts), key=texts.count)
        return f"{text} by {len(texts)} of {len(values)}"
    if numbers:
        return mean_interval(numbers)
    if texts:
        return " / ".join(dict.fromkeys(texts))
    return None


class _FirstSeed:
    """A :class:`RepeatedRun` attribute that is the first seed's (its model, its config)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: RepeatedRun | None, owner: type) -> object:
        return self if instance is None else getattr(instance.runs[0], self.name)


class _MeanOfSeeds:
    """A :class:`RepeatedRun` figure that is the mean of the seeds' figure of that name
    (those that have it; ``missing`` when none has, as a diverged run's test accuracy)."""

    def __init__(self, missing: float | None = math.nan) -> None:
        self.missing = missing

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: RepeatedRun | None, owner: type) -> object:
        if instance is None:
            return self
        values = finite(getattr(run, self.name) for run in instance.runs)
        return statistics.fmean(values) if values else self.missing


@dataclass(frozen=True)
class RepeatedRun:
    """The runs of one configuration with seeds ``seed`` to ``seed + N - 1``.

    Figures are means over the seeds (``test_accuracy``, ``train_seconds``,
    ...), so an assertion such as ``run.test_accuracy >= 0.96`` reads the same
    as for one :class:`~pytest_batchprof.engine.training.Run`. ``interval(name)``
    gives the mean and 95% Student t interval of any figure of
    ``Run.summary()``; ``runs`` holds the single runs. The configuration
    (its ``seed`` the first), model, optimizer, measurements and
    ``predictor()`` are the first seed's.
    """

    runs: tuple[Run, ...]

    config = _FirstSeed()
    name = _FirstSeed()
    model = _FirstSeed()
    optimizer = _FirstSeed()
    samples_per_epoch = _FirstSeed()
    measurements = _FirstSeed()
    params = _FirstSeed()
    flops = _FirstSeed()
    predictor = _FirstSeed()

    test_accuracy = _MeanOfSeeds(missing=None)
    test_loss = _MeanOfSeeds(missing=None)
    val_accuracy = _MeanOfSeeds()
    train_accuracy = _MeanOfSeeds()
    train_seconds = _MeanOfSeeds()
    seconds_per_epoch = _MeanOfSeeds()

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("RepeatedRun needs at least one run")

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(run.config.seed for run in self.runs)

    @property
    def diverged(self) -> str | None:
        """The first seed's reason for diverging, if any seed diverged."""
        return next((f"seed {run.config.seed}: {run.diverged}" for run in self.runs
                     if run.diverged), None)

    def interval(self, figure: str) -> Interval | None:
        """Mean and 95% interval over the seeds of a ``Run.summary()`` figure, e.g.
        ``run.interval("test_accuracy").half_width``; ``None`` if no seed has it."""
        values = finite(run.summary().get(figure) for run in self.runs)
        return mean_interval(values) if values else None

    def __repr__(self) -> str:
        """What a failing ``assert run.test_accuracy`` shows: the mean, its interval, the seeds."""
        accuracy = self.interval("test_accuracy")
        shown = "n/a" if accuracy is None else f"{accuracy.mean:.2%}" + (
            "" if accuracy.half_width is None else f" ± {accuracy.half_width * 100:.2f} pp")
        each = ", ".join("n/a" if run.test_accuracy is None else f"{run.test_accuracy:.2%}"
                         for run in self.runs)
        state = f", diverged: {self.diverged}" if self.diverged else ""
        config = self.config.describe().replace(f"seed {self.config.seed}",
                                                f"seeds {seed_label(self.seeds)}")
        return (f"<RepeatedRun {config}: mean test acc {shown} (95% CI; seeds: {each}), "
                f"mean {self.train_seconds:.2f} s{state}>")

