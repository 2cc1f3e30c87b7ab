"""Means with 95% confidence intervals over seeds, and the noise of a difference of means.

With ``--repeats N`` every configuration is trained with N seeds. A figure is
then reported as its mean ± the half-width of a Student t interval, the
interval that fits a handful of runs (N = 3 gives t = 4.30, not 1.96), and two
sessions are compared by the difference of their means with a Welch interval,
which does not assume both sides vary alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and the half-width of its confidence interval.

    ``half_width`` is ``None`` with fewer than two values: one run measures no
    spread, and showing ``± 0`` would claim a precision nobody measured.
    """

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def excludes_zero(self) -> bool | None:
        """Whether the interval lies wholly on one side of 0 (``None``: spread unknown)."""
        if self.half_width is None:
            return None
        return abs(self.mean) > self.half_width


def t_quantile(degrees_of_freedom: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student t critical value (4.303 for 2 degrees of freedom at 95%)."""
    from scipy.stats import t  # scipy loads only when there are repeats to summarise

    return float(t.ppf(0.5 + confidence / 2, degrees_of_freedom))


def finite(values: Iterable[object]) -> list[float]:
    """The values that are finite numbers (a diverged run has ``None``), as floats."""
    return [float(value) for value in values
            if isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value)]


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student t interval of ``values`` (at least one)."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, len(values))
    half = t_quantile(len(values) - 1, confidence) * statistics.stdev(values) / math.sqrt(
        len(values))
    return Interval(mean, half, len(values))


def difference_interval(before: Sequence[float], now: Sequence[float],
                        confidence: float = CONFIDENCE) -> Interval:
    """``mean(now) - mean(before)`` with the interval of that difference.

    Both sides with two values or more: Welch's interval (Welch-Satterthwaite
    degrees of freedom). One side with a single value: its run is taken to
    vary as much as the other side's runs do (the spread over seeds belongs to
    the configuration), with that side's degrees of freedom. Neither side with
    two values: no interval.
    """
    if not before or not now:
        raise ValueError("difference_interval needs values on both sides")
    difference = statistics.fmean(now) - statistics.fmean(before)
    count = len(before) + len(now)
    if len(before) < 2 and len(now) < 2:
        return Interval(difference, None, count)
    if len(before) < 2 or len(now) < 2:
        measured = now if len(now) >= 2 else before
        spread = statistics.stdev(measured)
        error = spread * math.sqrt(1 / len(before) + 1 / len(now))
        freedom: float = len(measured) - 1
    else:
        share_before = statistics.variance(before) / len(before)
        share_now = statistics.variance(now) / len(now)
        error = math.sqrt(share_before + share_now)
        if error == 0:
            return Interval(difference, 0.0, count)
        freedom = (share_before + share_now) ** 2 / (
            share_before ** 2 / (len(before) - 1) + share_now ** 2 / (len(now) - 1))
    return Interval(difference, t_quantile(freedom, confidence) * error, count)


def seed_label(seeds: Iterable[object]) -> str:
    """``0-2`` for consecutive seeds, ``0, 5, 9`` otherwise."""
    values = sorted({int(seed) for seed in seeds if isinstance(seed, int)})
    if not values:
        return "n/a"
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))
