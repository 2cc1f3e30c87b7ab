"""Repeats: one configuration trained with several seeds, as one result with its noise.

``--repeats N`` (or ``trained_mlp(..., repeats=N)``) trains seeds ``seed`` to
``seed + N - 1``. The fixture then returns a :class:`RepeatedRun`, whose
figures are means over the seeds, with :meth:`RepeatedRun.interval` for the
95% confidence interval of any of them.

Reports keep one row per seed (JSON, CSV, baselines), and fold the rows of one
configuration into one row when a table is rendered
(:func:`pytest_batchprof.reports.seeds.aggregate_seeds`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_batchprof.reports.stats import Interval, finite, mean_interval, seed_label

if TYPE_CHECKING:
    from pytest_batchprof.engine.training import Run


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

    metric_name = _FirstSeed()
    test_accuracy = _MeanOfSeeds(missing=None)
    test_metric = _MeanOfSeeds(missing=None)
    metric = _MeanOfSeeds(missing=None)
    """The mean of the seeds' metric on the test split (their accuracy, or another)."""
    val_metric = _MeanOfSeeds()
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
        """What a failing ``assert run.test_accuracy`` (or ``run.metric``) shows: the mean,
        its interval, the seeds."""
        name = self.config.metric
        if name == "accuracy":
            label, spread = "acc", self.interval("test_accuracy")
            shown = "n/a" if spread is None else f"{spread.mean:.2%}" + (
                "" if spread.half_width is None else f" ± {spread.half_width * 100:.2f} pp")
            each = ", ".join("n/a" if run.test_accuracy is None else f"{run.test_accuracy:.2%}"
                             for run in self.runs)
        else:
            label, spread = name, self.interval("test_metric")
            shown = "n/a" if spread is None else f"{spread.mean:.4g}" + (
                "" if spread.half_width is None else f" ± {spread.half_width:.2g}")
            each = ", ".join("n/a" if run.test_metric is None else f"{run.test_metric:.4g}"
                             for run in self.runs)
        state = f", diverged: {self.diverged}" if self.diverged else ""
        config = self.config.describe().replace(f"seed {self.config.seed}",
                                                f"seeds {seed_label(self.seeds)}")
        return (f"<RepeatedRun {config}: mean test {label} {shown} (95% CI; seeds: {each}), "
                f"mean {self.train_seconds:.2f} s{state}>")

