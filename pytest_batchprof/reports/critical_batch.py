"""The critical batch size fitted from steps to target (McCandlish et al. 2018).

Their model of training to a target: the steps ``S`` and the samples ``E = S B`` a run
at batch ``B`` needs trade off as

    S = S_min (1 + B_crit / B)        E = E_min (1 + B / B_crit)

that is ``(S / S_min - 1)(E / E_min - 1) = 1``, with ``E_min = S_min B_crit``. Below
``B_crit`` doubling the batch nearly halves the steps; above it, it mostly doubles the
samples. Where ``--noise-scale`` *estimates* ``B_crit`` from the gradients of each run
(``B_simple``, :mod:`pytest_batchprof.measuring.noise_scale`), this module *measures* it
from a time-to-accuracy study (``--target-accuracy``): the steps each batch size took.

* :func:`fit_critical_batch`: ``S_min`` and ``B_crit`` by least squares on
  ``log S = log S_min + log(1 + B_crit / B)`` over every seed's steps (the noise of
  steps to target is multiplicative), with a 95% bootstrap interval that resamples,
  at each batch size, that batch size's seeds with replacement
  (:data:`BOOTSTRAP_RESAMPLES` times, from a seeded RNG: the same rows give the same
  report). A fit the data cannot pin down is a :class:`NoFit` with the
  reason as a sentence.
* :func:`fit_studies`: the rows grouped into studies (every run setting but the batch
  size, the seed and the learning rate, which each batch size may tune or scale for
  itself) and each study fitted, leaving out the batch sizes where a seed missed the
  target.
* :func:`add_critical_batch_fit`: the fitted figures on the rows of each study, and
  :func:`critical_batch_section`: the report's ``## Critical batch size, fitted``.

Rows a learning-rate grid did not choose (``lr_chosen`` False) play no part anywhere.
Pure Python, numpy and scipy; no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pytest_batchprof.reports.figures import OUT_OF_MEMORY_KEY
from pytest_batchprof.reports.lr_grid import chosen_rows
from pytest_batchprof.reports.stats import finite
from pytest_batchprof.reports.studies import (
    group_studies,
    row_target_words,
    study_title,
    varying_settings,
)
from pytest_batchprof.reports.tables import Row

MIN_BATCH_SIZES = 3
"""Two parameters need a third batch size to test the curve's shape at all."""
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
"""The bootstrap's RNG seed: a report is reproducible from its rows."""
BOUND_FACTOR = 100.0
"""``B_crit`` is searched from the smallest batch size over this to the largest times this;
a fit at either end says the data do not place it (flat steps, or perfect scaling
throughout)."""
CONFIDENCE = 0.95


NOISE_SCALE_KEY = "critical_batch"
FIT_KEY = "critical_batch_fit"
FIT_LOW_KEY = "critical_batch_fit_low"
FIT_HIGH_KEY = "critical_batch_fit_high"
FIT_S_MIN_KEY = "critical_batch_fit_s_min"
RATIO_KEY = "critical_batch_ratio"

MEANING = ("McCandlish et al. (2018) relate the steps S and the samples E = S B that a run "
           "at batch B needs to reach a target: S = S_min (1 + B_crit / B) and "
           "E = E_min (1 + B / B_crit), with E_min = S_min B_crit. Below B_crit, doubling "
           "the batch nearly halves the steps; above it, it mostly doubles the samples. "
           "S_min is the fewest steps any batch size can take, E_min the fewest samples.")


@dataclass(frozen=True)
class CriticalBatchFit:
    """``B_crit`` and ``S_min`` fitted to steps to target, and what they were fitted to.

    ``low`` and ``high`` bound the 95% bootstrap interval of ``B_crit``; either is
    ``None`` where the resampled fits reach the edge of the search (the data do not
    bound ``B_crit`` on that side) and both are when no batch size has two seeds (the
    bootstrap has nothing to resample).
    """

    b_crit: float
    low: float | None
    high: float | None
    s_min: float
    batch_sizes: tuple[int, ...]
    """The batch sizes fitted, ascending."""
    points: int
    """Runs fitted (every seed of every batch size fitted)."""
    resamples: int
    """Bootstrap resamples behind ``low`` and ``high`` (0: no interval)."""
    left_out: tuple[str, ...] = ()
    """Why each batch size that was not fitted was left out (``batch 1,024 left out:
    2 of 3 seeds did not reach 97%``)."""

    @property
    def e_min(self) -> float:
        """The fewest samples to the target: ``S_min B_crit``."""
        return self.s_min * self.b_crit

    def interval(self) -> str:
        """``95% 420 to 610``, ``95% 420 to unbounded``, or why there is none."""
        if self.resamples == 0:
            return ("no interval: one seed per batch size"
                    if self.points == len(self.batch_sizes) else "no interval: not resampled")
        low = "unbounded" if self.low is None else f"{self.low:,.0f}"
        high = "unbounded" if self.high is None else f"{self.high:,.0f}"
        return f"95% {low} to {high}"

    def describe(self) -> str:
        """One line: the figures, what they were fitted to, and what was left out."""
        sizes = self.batch_sizes
        line = (f"B_crit = {self.b_crit:,.0f} samples ({self.interval()}), "
                f"S_min = {self.s_min:,.0f} steps, E_min = {self.e_min:,.0f} samples; fitted "
                f"to {self.points} run{'s' if self.points != 1 else ''} at {len(sizes)} batch "
                f"sizes ({sizes[0]:,} to {sizes[-1]:,})"
                + (f", {self.resamples:,} bootstrap resamples over seeds" if self.resamples
                   else ""))
        return line + "".join(f"; {reason}" for reason in self.left_out)


@dataclass(frozen=True)
class NoFit:
    """A study whose steps do not determine ``B_crit``, and why, as a sentence."""

    reason: str
    left_out: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: the reason, then what was left out."""
        return "no fit: " + self.reason + "".join(f"; {reason}" for reason in self.left_out)


class UndeterminedFit(ValueError):
    """The least-squares optimum of ``B_crit`` lies at an edge of its search: the steps
    do not place it (``side`` is ``lower`` or ``upper``)."""

    def __init__(self, side: str) -> None:
        super().__init__(f"B_crit is at the {side} edge of its search")
        self.side = side


def fit_pareto(batch_sizes: Sequence[float], steps: Sequence[float],
               start: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(S_min, B_crit)`` minimising the squared error of ``log S`` over the points.

    Parameters are fitted as logarithms, so both stay positive, with ``B_crit`` bounded
    to :data:`BOUND_FACTOR` beyond the batch sizes measured; ``start`` is an initial
    ``(S_min, B_crit)`` (by default the middle of the batch sizes). Raises
    :class:`UndeterminedFit` when the optimum lies at either bound and
    :class:`ValueError` when the optimizer fails.
    """
    return _fit(np.asarray(batch_sizes, dtype=float),
                np.log(np.asarray(steps, dtype=float)), start)


def _fit(sizes: np.ndarray, log_steps: np.ndarray,
         start: tuple[float, float] | None) -> tuple[float, float]:
    from scipy.optimize import least_squares  # scipy loads only when there is a study to fit

    lower = math.log(float(sizes.min()) / BOUND_FACTOR)
    upper = math.log(float(sizes.max()) * BOUND_FACTOR)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return theta[0] + np.log1p(np.exp(theta[1]) / sizes) - log_steps

    def jacobian(theta: np.ndarray) -> np.ndarray:
        ratio = np.exp(theta[1]) / sizes
        return np.column_stack([np.ones_like(sizes), ratio / (1 + ratio)])

    if start is None:
        log_b = 0.5 * (math.log(float(sizes.min())) + math.log(float(sizes.max())))
        log_s = float(np.mean(log_steps - np.log1p(math.exp(log_b) / sizes)))
    else:
        log_s, log_b = math.log(start[0]), math.log(start[1])
    log_b = min(max(log_b, lower + 1e-6), upper - 1e-6)
    result = least_squares(residuals, [log_s, log_b], jac=jacobian,
                           bounds=([-np.inf, lower], [np.inf, upper]), method="trf")
    if not result.success or not np.all(np.isfinite(result.x)):
        raise ValueError(f"the least-squares fit failed: {result.message}")
    log_s, log_b = (float(value) for value in result.x)
    edge = 1e-3 * (upper - lower)
    if log_b - lower < edge:
        raise UndeterminedFit("lower")
    if upper - log_b < edge:
        raise UndeterminedFit("upper")
    return math.exp(log_s), math.exp(log_b)


def fit_critical_batch(steps_by_batch: Mapping[int, Sequence[float]],
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       left_out: Sequence[str] = ()) -> CriticalBatchFit | NoFit:
    """Fit ``S_min`` and ``B_crit`` to the steps to target of each seed at each batch size.

    ``steps_by_batch`` maps a batch size to its seeds' steps (each seed is a point of
    the least-squares fit). The 95% interval is the 2.5th and 97.5th percentiles of
    ``B_crit`` over ``resamples`` bootstrap fits, each drawing every batch size's
    seeds with replacement from a seeded RNG. ``left_out`` (the batch sizes the caller
    did not fit, and why) is carried into the result.
    """
    notes = tuple(left_out)
    points = {int(size): [float(value) for value in values]
              for size, values in sorted(steps_by_batch.items()) if values}
    if len(points) < MIN_BATCH_SIZES:
        return NoFit(f"needs steps to target at {MIN_BATCH_SIZES} or more batch sizes; "
                     f"has {len(points)}", notes)
    if any(value <= 0 or not math.isfinite(value) for values in points.values()
           for value in values):
        return NoFit("steps to target must be positive numbers", notes)
    sizes = sorted(points)
    first, last = (statistics.geometric_mean(points[size]) for size in (sizes[0], sizes[-1]))
    if last >= first:
        return NoFit(f"the steps to target do not fall as the batch grows ({first:,.0f} at "
                     f"batch {sizes[0]:,}, {last:,.0f} at batch {sizes[-1]:,}), so B_crit "
                     f"lies below the batch sizes measured", notes)
    batch = [size for size in sizes for _ in points[size]]
    steps = [value for size in sizes for value in points[size]]
    try:
        s_min, b_crit = fit_pareto(batch, steps)
    except UndeterminedFit as error:
        return NoFit(_undetermined(error.side, sizes), notes)
    except ValueError as error:
        return NoFit(str(error), notes)
    low, high, drawn = _bootstrap(points, (s_min, b_crit), resamples, seed)
    return CriticalBatchFit(b_crit, low, high, s_min, tuple(sizes), len(steps), drawn, notes)


def _undetermined(side: str, sizes: Sequence[int]) -> str:
    if side == "lower":
        return (f"the steps level off already at the smallest batch sizes, so B_crit lies "
                f"below batch {sizes[0]:,} and the fit cannot place it")
    return (f"the steps halve with every doubling of the batch up to {sizes[-1]:,} "
            f"(perfect scaling), so B_crit lies above the batch sizes measured and the fit "
            f"cannot place it")


def _bootstrap(points: Mapping[int, Sequence[float]], estimate: tuple[float, float],
               resamples: int, seed: int) -> tuple[float | None, float | None, int]:
    """The percentile interval of ``B_crit`` over fits to resampled seeds, and how many
    resamples it took; ``(None, None, 0)`` when no batch size has two seeds to draw.

    Each batch size's log steps are first spread about their mean by ``sqrt(n / (n - 1))``
    (:func:`_rescaled`): drawing n values with replacement varies only ``(n - 1) / n`` as
    much as the values. In simulation (3 seeds at 9 batch sizes, 10% log-normal noise,
    150 studies) the plain bootstrap's 95% interval held the true ``B_crit`` 90% of the
    time, the rescaled one 94%."""
    if resamples <= 0 or all(len(values) < 2 for values in points.values()):
        return None, None, 0
    generator = np.random.default_rng(seed)
    sizes = sorted(points)
    arrays = [_rescaled(np.log(np.asarray(points[size], dtype=float))) for size in sizes]
    batch = np.asarray([size for size, values in zip(sizes, arrays, strict=True)
                        for _ in values], dtype=float)
    fits: list[float] = []
    edges = {"lower": math.log(sizes[0] / BOUND_FACTOR),
             "upper": math.log(sizes[-1] * BOUND_FACTOR)}
    for _ in range(resamples):
        log_steps = np.concatenate([values[generator.integers(len(values), size=len(values))]
                                    for values in arrays])
        try:
            fits.append(math.log(_fit(batch, log_steps, estimate)[1]))
        except UndeterminedFit as error:
            fits.append(edges[error.side])
        except ValueError:
            continue  # an optimizer failure is no evidence either way
    if not fits:
        return None, None, 0
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = (float(value) for value in np.percentile(fits, [tail, 100 - tail]))
    return (None if low <= edges["lower"] else math.exp(low),
            None if high >= edges["upper"] else math.exp(high), len(fits))


def _rescaled(values: np.ndarray) -> np.ndarray:
    """A batch size's log steps spread about their mean by ``sqrt(n / (n - 1))``."""
    if len(values) < 2:
        return values
    mean = values.mean()
    return mean + (values - mean) * math.sqrt(len(values) / (len(values) - 1))


# ------------------------------------------------------------------ studies of rows


@dataclass(frozen=True)
class StudyFit:
    """A time-to-accuracy study (its chosen rows) and the fit of its critical batch size."""

    title: str
    rows: tuple[Row, ...] = field(repr=False)
    fit: CriticalBatchFit | NoFit

    @property
    def b_simple_estimates(self) -> list[float]:
        """The study's gradient-noise-scale estimates (``--noise-scale``), one per run."""
        return [value for value in finite(row.get(NOISE_SCALE_KEY) for row in self.rows)
                if value > 0]

    def b_simple_median(self) -> float | None:
        """The median ``B_simple`` over the study's runs, if any was measured."""
        values = self.b_simple_estimates
        return statistics.median(values) if values else None


def fit_studies(rows: Iterable[Row], resamples: int = BOOTSTRAP_RESAMPLES,
                seed: int = BOOTSTRAP_SEED) -> list[StudyFit]:
    """Each time-to-accuracy study among ``rows`` (in order of first appearance), fitted.

    A study (:mod:`~pytest_batchprof.reports.studies`) is the chosen rows of one
    experiment but for batch size, seed and lr, and is one when its runs had a target
    (``--target-accuracy``, or ``--batchprof-target-metric`` for runs scored by another
    metric, which its title names: ``to rmse 0.3``). A batch size is fitted when every
    one of its seeds reached the target; the others are left out, and said.
    """
    studies = [group for group in group_studies(chosen_rows(rows))
               if any(_has_target(row) for row in group)]
    varying = varying_settings(studies, named=("target_accuracy", "target_metric"))
    return [_fit_study(group, varying, resamples, seed) for group in studies]


def _fit_study(rows: Sequence[Row], varying: Sequence[str], resamples: int,
               seed: int) -> StudyFit:
    by_batch: dict[int, list[Row]] = {}
    for row in rows:
        size = row.get("batch_size")
        if isinstance(size, int | float) and not isinstance(size, bool):
            by_batch.setdefault(int(size), []).append(row)
    target = row_target_words(rows[0])  # 97%, or the run's metric: rmse 0.3
    steps: dict[int, list[float]] = {}
    left_out = []
    for size in sorted(by_batch):
        runs = by_batch[size]
        reached = [float(row["target_steps"]) for row in runs if _reached(row)]
        if len(reached) == len(runs):
            steps[size] = reached
        else:
            left_out.append(f"batch {size:,} left out: {_missed(runs, target)}")
    return StudyFit(study_title(rows[0], varying, f"to {target}"), tuple(rows),
                    fit_critical_batch(steps, resamples, seed, left_out))


def _has_target(row: Mapping[str, object]) -> bool:
    return (row.get("target_accuracy") is not None or row.get("target_metric") is not None
            or "target_steps" in row)


def _reached(row: Mapping[str, object]) -> bool:
    steps = row.get("target_steps")
    return (row.get("target_reached") is not False and isinstance(steps, int | float)
            and not isinstance(steps, bool) and math.isfinite(steps) and steps > 0)


def _missed(runs: Sequence[Mapping[str, object]], target: str) -> str:
    """``2 of 3 seeds did not reach 97%``; ``its run ran out of memory``."""
    missed: dict[str, int] = {}
    for row in runs:
        if _reached(row):
            continue
        what = ("ran out of memory" if row.get(OUT_OF_MEMORY_KEY)
                else "diverged" if row.get("diverged") else f"did not reach {target}")
        missed[what] = missed.get(what, 0) + 1
    if len(runs) == 1:
        return f"its run {next(iter(missed))}"
    return ", ".join(f"{count} of {len(runs)} seeds {what}" for what, count in missed.items())


# ------------------------------------------------------------------ rows and report


def add_critical_batch_fit(rows: Sequence[Row], resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = BOOTSTRAP_SEED) -> list[StudyFit]:
    """Fit every study among ``rows`` and give each chosen row of a fitted study its
    figures; return the studies (fitted or not) for the report's section.

    The figures: ``critical_batch_fit`` (``B_crit``), ``critical_batch_fit_low`` and
    ``..._high`` (its 95% interval), ``critical_batch_fit_s_min`` (``S_min``) and, on a
    row with a noise-scale estimate, ``critical_batch_ratio``: ``B_crit`` over that
    run's ``B_simple``. They are the study's, so every seed of a configuration has the
    same fitted figures and the folded table shows them as single numbers.
    """
    studies = fit_studies(rows, resamples, seed)
    for study in studies:
        fit = study.fit
        if not isinstance(fit, CriticalBatchFit):
            continue
        for row in study.rows:
            row[FIT_KEY] = fit.b_crit
            row[FIT_LOW_KEY] = fit.low
            row[FIT_HIGH_KEY] = fit.high
            row[FIT_S_MIN_KEY] = fit.s_min
            b_simple = row.get(NOISE_SCALE_KEY)
            if (isinstance(b_simple, int | float) and not isinstance(b_simple, bool)
                    and math.isfinite(b_simple) and b_simple > 0):
                row[RATIO_KEY] = fit.b_crit / b_simple
    return studies


def critical_batch_section(studies: Sequence[StudyFit]) -> str | None:
    """The ``## Critical batch size, fitted`` markdown section, or ``None`` without a
    time-to-accuracy study: per study the fitted ``B_crit`` with its interval, ``S_min``,
    ``E_min`` and the points behind them, the median ``B_simple`` beside it, or the
    reason there is no fit."""
    if not studies:
        return None
    resamples = next((study.fit.resamples for study in studies
                      if isinstance(study.fit, CriticalBatchFit) and study.fit.resamples),
                     BOOTSTRAP_RESAMPLES)
    lines = ["## Critical batch size, fitted", "", MEANING, "",
             "B_crit and S_min are fitted by least squares on log S over every seed that "
             "reached the target (a batch size where a seed missed it is left out); the "
             f"95% interval is a bootstrap over seeds ({resamples:,} resamples, each batch "
             "size's seeds drawn with replacement). B_simple, the gradient noise scale "
             "(`--noise-scale`), estimates the same critical batch from the gradients alone; "
             "B_crit / B_simple near 1 means the two agree.", ""]
    for study in studies:
        lines += [f"### {study.title}", "", *_study_lines(study), ""]
    return "\n".join(lines).rstrip() + "\n"


def _study_lines(study: StudyFit) -> list[str]:
    fit = study.fit
    median = study.b_simple_median()
    noise = ([] if median is None else
             [f"- B_simple (noise scale): median {median:,.0f} samples over "
              f"{len(study.b_simple_estimates)} run"
              f"{'s' if len(study.b_simple_estimates) != 1 else ''}"])
    left_out = ([] if not fit.left_out else
                ["", "Left out: " + "; ".join(fit.left_out) + "."])
    if isinstance(fit, NoFit):
        return [f"No fit: {fit.reason}.", *(["", *noise] if noise else []), *left_out]
    sizes = fit.batch_sizes
    lines = [f"- B_crit (fit): {fit.b_crit:,.0f} samples ({fit.interval()})",
             f"- S_min: {fit.s_min:,.0f} steps",
             f"- E_min = S_min x B_crit: {fit.e_min:,.0f} samples",
             f"- fitted to: {fit.points} run{'s' if fit.points != 1 else ''} at "
             f"{len(sizes)} batch sizes ({', '.join(f'{size:,}' for size in sizes)})",
             *noise]
    if median is not None:
        lines.append(f"- B_crit / B_simple: {fit.b_crit / median:.2f}")
    return lines + left_out
