"""The figures of a report row, declared once: key, label, unit, how seeds fold, what a
baseline compares, and which are shown by default.

Tables, CSV and JSON columns, the seeds' folding (:mod:`pytest_batchprof.reports.seeds`)
and the baseline comparison (:mod:`pytest_batchprof.gating`) read this table; a
run's *settings* (which keys identify a run or an experiment) are declared on
:class:`pytest_batchprof.experiment.config.RunConfig`.

Each column has one unit, chosen from the magnitudes in that column and shown
in its header (``train time (s)``, ``latency / sample (µs)``), so that the
numbers in a column compare at a glance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pytest_batchprof.units import BYTE_UNITS, ENERGY_UNITS, MASS_UNITS, TIME_UNITS


@dataclass(frozen=True)
class Column:
    """One figure of a row: how it is shown (its header, and a unit family or a plain
    formatter), whether the default table shows it, how a row of several seeds holds it,
    and what a baseline comparison reads it as."""

    key: str
    label: str
    units: tuple[tuple[str, float], ...] | None = None
    plain: Callable[[object], str] | None = None
    default: bool = False
    """Shown in the table unless ``--batchprof-columns`` says otherwise."""
    optional: bool = False
    """A default column only some runs have (``--target-accuracy``, ``--noise-scale``,
    ``--batchprof-find-max-batch``, ``--batchprof-lr-grid``, data-parallel runs beside a
    single-process one, runs trained in pytest-xdist workers)."""
    folded: bool = True
    """Over seeds, an interval where they differ (the general rule of
    :func:`~pytest_batchprof.reports.seeds.fold`); ``False``: the folding sets it itself."""
    missing: str = "n/a"
    """The cell of a row without the figure (an lr note is simply empty)."""
    compared: str | None = None
    """What a baseline comparison reads it as: ``accuracy`` (a drop fails), ``time`` (a
    slow-down fails, when asked) or ``fit`` (set when the run ran out of memory: running
    out where the baseline fitted fails)."""
    off: str | None = None
    """The session setting (a :class:`~pytest_batchprof.settings.Settings` switch)
    that turns the figure off: a session with it on leaves the figure out of the default
    table, rather than showing a column of ``n/a``."""
    by_metric: bool = False
    """A figure of the run's metric (RMSE, F1, perplexity, the user's): its header names
    the metric (``test rmse``), read from the rows' ``metric``."""


def _percent(value: object) -> str:
    return f"{float(value) * 100:.1f}"


def _count(value: object) -> str:
    return f"{round(float(value)):,}"


def _text(value: object) -> str:
    return str(value)


def _unless_text(value: object, number: Callable[[object], str]) -> str:
    """``not reached`` stays as it is; a number is formatted."""
    return value if isinstance(value, str) else number(value)


def _significant(value: object) -> str:
    return f"{float(value):.4g}"


def _whole(value: object) -> str:
    return f"{float(value):,.0f}"


def _two_decimals(value: object) -> str:
    return _unless_text(value, lambda number: f"{float(number):.2f}")


FIGURES: tuple[Column, ...] = (
    Column("model", "model", plain=_text, default=True),
    Column("dataset", "data set", plain=_text, default=True),
    Column("batch_size", "batch", plain=_count, default=True),
    Column("epochs", "epochs", plain=_count, default=True),
    Column("seed", "seed", plain=_text, folded=False),
    Column("seeds", "seeds", plain=_text),
    Column("optimizer", "optimizer", plain=_text),
    Column("lr", "lr", plain=lambda value: f"{float(value):g}"),
    Column("lr_grid_note", "lr note", plain=_text, default=True, optional=True, missing=""),
    Column("lr_chosen", "lr chosen", plain=_text),
    Column("lr_grid", "lr grid", plain=_text),
    Column("lr_grid_criterion", "lr chosen by", plain=_text),
    Column("lr_grid_score", "lr grid score", plain=lambda value: f"{float(value):g}"),
    Column("precision", "precision", plain=_text),
    Column("precision_note", "precision note", plain=_text, missing=""),
    Column("ensemble", "ensemble", plain=_text),
    Column("processes", "processes", plain=_count),
    Column("per_process_batch", "batch / process", plain=_count),
    Column("threads", "threads", plain=_count),
    Column("threads_note", "threads note", plain=_text, default=True, optional=True,
           missing=""),
    Column("train_seconds", "train time", TIME_UNITS, default=True, compared="time"),
    Column("seconds_per_epoch", "time / epoch", TIME_UNITS, default=True),
    Column("train_samples_per_second", "samples / s", plain=_whole),
    Column("scaling_efficiency", "scaling efficiency (%)", plain=_percent, default=True,
           optional=True),
    Column("samples_per_epoch", "samples / epoch", plain=_count),
    Column("train_clock", "train clock", plain=_text),
    Column("train_accuracy", "train acc (%)", plain=_percent, default=True),
    Column("val_accuracy", "val acc (%)", plain=_percent, default=True),
    Column("test_accuracy", "test acc (%)", plain=_percent, default=True, compared="accuracy"),
    Column("train_metric", "train metric", plain=_significant, default=True, optional=True,
           by_metric=True),
    Column("val_metric", "val metric", plain=_significant, default=True, optional=True,
           by_metric=True),
    Column("test_metric", "test metric", plain=_significant, default=True, optional=True,
           by_metric=True),
    Column("test_loss", "test loss", plain=lambda value: f"{float(value):.4f}"),
    Column("diverged", "diverged", plain=_text),
    Column("latency_median_s", "latency / sample", TIME_UNITS, default=True),
    Column("latency_iqr_s", "latency IQR", TIME_UNITS),
    Column("latency_min_s", "latency min", TIME_UNITS),
    Column("latency_batch_size", "latency batch", plain=_count),
    Column("latency_repeats", "latency repeats", plain=_count),
    Column("latency_clock", "latency clock", plain=_text),
    Column("latency_single_median_s", "latency, batch 1", TIME_UNITS),
    Column("latency_single_iqr_s", "latency IQR, batch 1", TIME_UNITS),
    Column("latency_single_min_s", "latency min, batch 1", TIME_UNITS),
    Column("latency_single_batch_size", "latency batch (single)", plain=_count),
    Column("latency_single_repeats", "latency repeats, batch 1", plain=_count),
    Column("latency_single_clock", "latency clock, batch 1", plain=_text),
    Column("flops", "FLOPs / sample", plain=_count, default=True),
    Column("macs", "MACs / sample", plain=_count),
    Column("macs_by_layer", "MACs by layer", plain=_text),
    Column("flops_notes", "FLOPs notes", plain=_text),
    Column("train_flops", "train FLOPs / sample", plain=_count),
    Column("params", "params", plain=_count, default=True),
    Column("trainable_params", "trainable params", plain=_count),
    Column("state_dict_bytes", "model size", BYTE_UNITS),
    Column("checkpoint_bytes", "checkpoint size", BYTE_UNITS, default=True),
    Column("peak_memory_bytes", "peak memory", BYTE_UNITS),
    Column("peak_memory_method", "peak memory method", plain=_text),
    Column("train_energy_kwh", "energy (train)", ENERGY_UNITS, off="no_co2"),
    Column("train_co2eq_kg", "CO2eq (train)", MASS_UNITS, default=True, off="no_co2"),
    Column("train_co2_note", "CO2eq (train) note", plain=_text),
    Column("inference_per_1000_co2eq_kg", "CO2eq / 1k inferences", MASS_UNITS, off="no_co2"),
    Column("inference_per_1000_energy_kwh", "energy / 1k inferences", ENERGY_UNITS,
           off="no_co2"),
    Column("inference_per_1000_co2_note", "CO2eq / 1k inferences note", plain=_text),
    Column("target_metric_name", "target on", plain=_text),
    Column("target_reached", "target reached", plain=_text),
    Column("target_steps", "steps to target", plain=lambda value: _unless_text(value, _count),
           default=True, optional=True),
    Column("target_samples", "samples to target",
           plain=lambda value: _unless_text(value, _count), default=True, optional=True),
    Column("target_epochs", "epochs to target", plain=_two_decimals, default=True,
           optional=True),
    Column("target_seconds", "time to target (s)", plain=_two_decimals, default=True,
           optional=True),
    Column("critical_batch", "B_simple (noise scale)", plain=_whole, default=True,
           optional=True),
    Column("critical_batch_low", "B_simple 95% low", plain=_whole, default=True,
           optional=True),
    Column("critical_batch_high", "B_simple 95% high", plain=_whole, default=True,
           optional=True),
    Column("critical_batch_pairs", "B_simple pairs", plain=_text),
    Column("critical_batch_fit", "B_crit (fit)", plain=_whole, default=True, optional=True),
    Column("critical_batch_fit_low", "B_crit 95% low", plain=_whole, default=True,
           optional=True),
    Column("critical_batch_fit_high", "B_crit 95% high", plain=_whole, default=True,
           optional=True),
    Column("critical_batch_ratio", "B_crit / B_simple", plain=_two_decimals, default=True,
           optional=True),
    Column("critical_batch_fit_s_min", "S_min (fit)", plain=_whole),
    Column("max_batch_size", "max batch", plain=_count, default=True, optional=True),
    Column("max_batch_fits", "largest fit", plain=_count),
    Column("max_batch_fails", "first failure", plain=lambda value: _unless_text(value, _count)),
    Column("max_batch_limit", "memory limit", plain=_text),
    Column("data_note", "data note", plain=_text, default=True, optional=True, missing=""),
    Column("val_note", "validation note", plain=_text, default=True, optional=True,
           missing=""),
    Column("test_source", "test data", plain=_text, default=True, optional=True, missing=""),
    Column("history_source", "train and val figures", plain=_text, default=True,
           optional=True, missing=""),
    Column("outcome", "outcome", plain=_text, default=True, folded=False),
    Column("out_of_memory", "out of memory", plain=_text, compared="fit"),
    Column("tests", "tests", plain=_text, folded=False),
    Column("history", "per-epoch history", plain=_text, folded=False),
    Column("curve", "learning curve", plain=_text, folded=False),
)
"""Every figure a row may hold, beside the run's settings (:data:`~pytest_batchprof.experiment.
config.RUN_KEYS`): what ``--batchprof-columns`` may name, with a label and a role. A
``pytest_batchprof_summary`` hook may add others."""

COLUMNS: dict[str, Column] = {column.key: column for column in FIGURES}

DEFAULT_COLUMNS: tuple[str, ...] = tuple(column.key for column in FIGURES if column.default)
"""The table of the reference posts, plus the data set, validation accuracy and CO2eq."""

OPTIONAL_COLUMNS = frozenset(column.key for column in FIGURES if column.optional)
"""Default columns that only runs with ``--target-accuracy`` or ``--noise-scale`` have."""

SERIES_KEYS = ("history", "curve")
"""Row keys holding a run's series (per epoch, between epochs) rather than one figure."""

NOT_FOLDED = frozenset(column.key for column in FIGURES if not column.folded)
"""Row keys :func:`~pytest_batchprof.reports.seeds.aggregate_seeds` sets itself rather than
by the general rule."""

TRAINED_ALONE = "trained alone: "
"""How the ``ensemble`` figure of a run begins when it differs from other runs only in seed
and learning rate but was trained alone; the reason follows."""

ACCURACY_KEY = next(column.key for column in FIGURES if column.compared == "accuracy")
"""The figure a baseline comparison gates on (a drop larger than the allowed one fails)."""
TIME_KEY = next(column.key for column in FIGURES if column.compared == "time")
OUT_OF_MEMORY_KEY = next(column.key for column in FIGURES if column.compared == "fit")
"""Set (to the outcome's words) in the row of a run that ran out of memory."""
"""The figure whose growth fails a comparison when ``--batchprof-fail-slowdown`` is set."""
