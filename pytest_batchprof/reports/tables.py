"""Summary rows, their human formatting, and the blog-ready markdown.

A *row* is a plain dict: one trained run's ``Run.summary()`` plus the outcome
and node ids of the tests that used it. Rows travel as they are (through
pytest-xdist, into JSON), and everything shown is derived from them here, so a
report loaded back from JSON renders the same table.

Each column has one unit, chosen from the magnitudes in that column and shown
in its header (``train time (s)``, ``latency / sample (µs)``), so that the
numbers in a column compare at a glance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence

from tabulate import tabulate

from pytest_batchprof.experiment.config import RUN_KEYS
from pytest_batchprof.reports.figures import (
    COLUMNS,
    DEFAULT_COLUMNS,
    TRAINED_ALONE,
    Column,
    _percent,
    _text,
)
from pytest_batchprof.reports.lr_grid import tuned
from pytest_batchprof.reports.stats import Interval
from pytest_batchprof.units import human_number, pick_unit

Row = dict[str, object]

ACCURACY_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy")
"""The accuracy columns: left out of the default table when its runs are scored by other
metrics and none counts accuracy (a regression's, a multilabel set's)."""

OUTCOME_RANK = {"passed": 0, "skipped": 1, "interrupted": 2, "failed": 3}
"""When several tests use one run, its row shows the worst of their outcomes."""

def merge_outcome(current: str | None, new: str) -> str:
    """The worse of two test outcomes."""
    if current is None:
        return new
    return max(current, new, key=lambda outcome: OUTCOME_RANK.get(outcome, 0))


def run_key(row: Row, seed: bool = True) -> str:
    """What makes two rows the same run: the configuration, not the test that asked.

    With ``seed=False``, the seeds of one configuration (``--repeats``) share a key.
    """
    keys = RUN_KEYS if seed else tuple(key for key in RUN_KEYS if key != "seed")
    return json.dumps([row.get(key) for key in keys])  # tuples and lists alike, as in JSON


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Group by model (in order of first appearance), then by data set and batch size."""
    rows = list(rows)
    first_seen: dict[object, int] = {}
    for row in rows:
        first_seen.setdefault(row.get("model"), len(first_seen))
    return sorted(rows, key=lambda row: (first_seen[row.get("model")], str(row.get("dataset")),
                                         _number(row.get("batch_size")), _number(row.get("seed"))))


def add_scaling_efficiency(rows: Sequence[Row]) -> None:
    """Give each data-parallel row its scaling efficiency: its training throughput over N
    times that of the single-process run of the same configuration, when the rows have one
    (1.0: N processes train N times as fast)."""
    def alone(row: Row) -> str:
        return run_key({**row, "processes": 1})

    single = {alone(row): row for row in rows if (row.get("processes") or 1) == 1}
    for row in rows:
        processes = row.get("processes") or 1
        base = single.get(alone(row)) if processes > 1 else None
        rate, base_rate = row.get("train_samples_per_second"), (base or {}).get(
            "train_samples_per_second")
        if isinstance(rate, int | float) and isinstance(base_rate, int | float) and base_rate:
            row["scaling_efficiency"] = rate / (processes * base_rate)


def table_columns(
    rows: Sequence[Row], requested: Sequence[str] | None = None,
    standard_keys: Iterable[str] = (), turned_off: Iterable[str] = (),
) -> list[str]:
    """The columns to show: the requested ones, else the defaults present plus added keys.

    An added key is a scalar one not in ``standard_keys`` (the keys the rows
    had before the ``pytest_batchprof_summary`` hooks ran); a default column
    that no row has any more (a hook dropped it), or that the session turned off
    (``turned_off``: no row can have it), is left out.
    """
    if requested:
        return list(requested)
    present = {key for row in rows for key in row} - set(turned_off)
    if any("test_metric" in row for row in rows):  # accuracy only where some run counts it
        present -= {key for key in ACCURACY_KEYS if all(row.get(key) is None for row in rows)}
    columns = [key for key in DEFAULT_COLUMNS if key in present]
    if "epochs" in columns and (tuned(rows) or len(
            {row["lr"] for row in rows if row.get("lr") is not None}) > 1):
        columns.insert(columns.index("epochs") + 1, "lr")  # --lr-scaling, --lr-grid: own lr
    if "epochs" in columns and any(row.get("precision", "fp32") != "fp32" for row in rows):
        columns.insert(columns.index("lr" if "lr" in columns else "epochs") + 1, "precision")
    if "batch_size" in columns and any((row.get("processes") or 1) > 1 for row in rows):
        at = columns.index("batch_size") + 1  # data-parallel runs: processes, their batch
        columns[at:at] = ["processes", "per_process_batch"]
    if "epochs" in columns and seeds_repeat(rows):  # --repeats: how many seeds each row folds
        columns.insert(columns.index("epochs") + 1 + ("lr" in columns)
                       + ("precision" in columns), "seeds")
    standard = set(standard_keys)
    for row in rows:
        for key, value in row.items():
            if key not in standard and key not in columns and _is_scalar(value):
                columns.append(key)
    return columns


KNOWN_COLUMNS: frozenset[str] = frozenset(COLUMNS) | frozenset(RUN_KEYS)
"""Every key a row of the plugin may hold: its figures and its run's settings."""


def unknown_columns(requested: Sequence[str]) -> list[str]:
    """The names among ``requested`` (``--batchprof-columns``) that no row of the plugin
    has (see :data:`KNOWN_COLUMNS`), in order."""
    return [name for name in requested if name not in KNOWN_COLUMNS]


def seeds_repeat(rows: Iterable[Row]) -> bool:
    """Whether some configuration among ``rows`` was trained with more than one seed."""
    keys = [run_key(row, seed=False) for row in rows]
    return len(set(keys)) < len(keys)


def render_table(rows: Sequence[Row], columns: Sequence[str], tablefmt: str = "github") -> str:
    """A GitHub-flavoured markdown table of ``rows``; ``n/a`` where a figure is missing.

    A value may be an :class:`~pytest_batchprof.reports.stats.Interval` (seeds folded
    by :func:`pytest_batchprof.reports.seeds.aggregate_seeds`): it shows as
    ``mean ± half-width`` in the column's unit. ``tablefmt="html"`` gives the same headers
    and cells as an HTML ``<table>``, escaped (the pytest-html report's).
    """
    headers, cells = [], []
    for key in columns:
        values = [row.get(key) for row in rows]
        metrics = ([str(row.get("metric")) if row.get(key) is not None else None
                    for row in rows] if COLUMNS.get(key, Column(key, key)).by_metric else None)
        header, formatted = format_column(key, values, metrics)
        headers.append(header)
        cells.append(formatted)
    body = [list(row) for row in zip(*cells, strict=True)] if cells else []
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def format_column(key: str, values: Sequence[object],
                  metrics: Sequence[str | None] | None = None) -> tuple[str, list[str]]:
    """The header (with its unit) and the cells of one column; a column of the runs' metric
    is titled by its name (``test rmse``) given each value's ``metrics``, and when the
    rows have several metrics each cell names its own (``rmse 0.52``)."""
    column = COLUMNS.get(key, Column(key, key, plain=_text))
    if column.by_metric and metrics is not None:
        return _metric_column(column, values, metrics)
    if column.units is None:
        plain = column.plain or _text
        number = human_number if plain is _text else plain  # a hook's column of floats
        return column.label, [
            column.missing if _missing(value) else (
                _interval(value, number) if isinstance(value, Interval) else plain(value))
            for value in values]
    numbers = [value.mean if isinstance(value, Interval) else float(value)
               for value in values if _missing(value) is None]
    name, scale = pick_unit(numbers, column.units)
    cells = [_missing(value) or (
        _interval(value, lambda number: human_number(float(number) / scale))
        if isinstance(value, Interval) else human_number(float(value) / scale))
        for value in values]
    return f"{column.label} ({name})", cells


def _metric_column(column: Column, values: Sequence[object],
                   metrics: Sequence[str | None]) -> tuple[str, list[str]]:
    """A column of the runs' metric: ``test rmse`` when one metric is in it, else ``test
    metric`` and cells such as ``rmse 0.52`` and ``f1 0.91``."""
    names = sorted({name for name in metrics if name is not None})
    split = column.label.removesuffix(" metric")
    plain = column.plain or _text
    cells = [column.missing if _missing(value) else (
        _interval(value, plain) if isinstance(value, Interval) else plain(value))
        for value in values]
    if len(names) == 1:
        return f"{split} {names[0]}", cells
    return column.label, [cell if name is None else f"{name} {cell}"
                          for cell, name in zip(cells, metrics, strict=True)]


def _interval(value: Interval, number: Callable[[object], str]) -> str:
    """``96.9 ± 0.3``; a half-width that the column's precision would show as 0 gets
    two significant digits; no ``±`` when the spread is unknown (one finished seed)."""
    if value.half_width is None:
        return number(value.mean)
    half = number(value.half_width)
    if value.half_width > 0 and not any(digit in "123456789" for digit in half):
        half = f"{_factor(number) * value.half_width:.2g}"
    return f"{number(value.mean)} ± {half}"


def _factor(number: Callable[[object], str]) -> float:
    """What a cell formatter multiplies by (100 for percentages, 1,000 for s shown in
    ms), read off its rendering of 1."""
    return float(number(1.0).replace(",", ""))


def render_history(row: Row) -> str:
    """The per-epoch table of one run, as the posts print their epoch lines; a run scored
    by another metric than accuracy shows it by its name (``train rmse``)."""
    metric = row.get("metric") or "accuracy"
    if metric == "accuracy":
        keys, shown = ("train_accuracy", "val_accuracy"), _percent
        headers = ["epoch", "train acc (%)", "val acc (%)"]
    else:
        keys, shown = ("train_metric", "val_metric"), COLUMNS["test_metric"].plain
        headers = ["epoch", f"train {metric}", f"val {metric}"]
    body = [
        [f"{record['epoch']:02d}",
         *("n/a" if record.get(key) is None else shown(record[key]) for key in keys),
         f"{record['train_loss']:.4f}", f"{record['val_loss']:.4f}",
         human_number(record["train_seconds"] + record["eval_seconds"])]
        for record in row.get("history") or []
    ]
    headers += ["train loss", "val loss", "time (s)"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def run_title(row: Row) -> str:
    """``784-1024-10 on mnist, batch 64, seed 0`` (``seeds 0-2`` for a row of folded seeds;
    ``, 2 processes`` and ``, bf16`` for a data-parallel run and another precision)."""
    seed = row.get("seed")
    processes = row.get("processes") or 1
    precision = row.get("precision") or "fp32"
    return (f"{row.get('model')} on {row.get('dataset')}, batch {row.get('batch_size')}"
            + (f", {processes} processes" if processes != 1 else "")
            + (f", {precision}" if precision != "fp32" else "")
            + f", seed{'s' if isinstance(seed, str) else ''} {seed}")


def render_markdown(
    table: str,
    rows: Sequence[Row],
    environment: dict[str, object],
    plots: Sequence[tuple[str, str]],
    partial: bool,
    sections: Sequence[str] = (),
) -> str:
    """The session's report: header, summary table, ``sections`` (e.g. the baseline
    comparison), plots (by relative link), histories."""
    lines = ["# pytest-batchprof report", ""]
    if partial:
        lines += ["> **Partial:** the session was interrupted before every test ran; this "
                  "report holds the runs that finished.", ""]
    lines += [tabulate([[key, _text(value)] for key, value in environment.items()],
                       headers=["", ""], tablefmt="github", disable_numparse=True), ""]
    lines += ["## Summary", "", table, "", _notes(rows)]
    for section in sections:
        lines += [section, ""]
    if plots:
        lines += ["## Plots", ""]
        for title, link in plots:
            lines += [f"![{title}]({link})", ""]
    lines += ["## Per-epoch history", ""]
    for row in rows:
        lines += [f"### {run_title(row)}", ""]
        if row.get("diverged"):
            lines += [f"Diverged: {row['diverged']}", ""]
        lines += [render_history(row), ""]
    return "\n".join(line for line in lines if line is not None).rstrip() + "\n"


def _notes(rows: Sequence[Row]) -> str:
    notes = ["FLOPs are per sample, forward, 2 per multiply-add (FlopCounterMode). "
             "Latency is the median per sample at the inference batch size. Size is the "
             "checkpoint of model and optimizer state. Training and validation accuracy "
             "are of the last epoch."]
    if seeds_repeat(rows):
        notes.append("A row of several seeds (see seeds) shows each figure that differs "
                     "between them as mean ± the half-width of its 95% confidence interval "
                     "(Student t).")
    labels = {str(row["ensemble"]) for row in rows if row.get("ensemble")}
    alone = sorted(label for label in labels if label.startswith(TRAINED_ALONE))
    ensembles = sorted(labels - set(alone))
    notes += [f"Runs that differ only in seed and learning rate were trained one at a time: "
              f"{label.removeprefix(TRAINED_ALONE)}." for label in alone]
    if ensembles:
        notes.append(
            f"Runs that differ only in seed and learning rate were trained together as one "
            f"stacked ensemble ({', '.join(ensembles)}; the rows' ensemble key says which): "
            f"each run's training time is its share, the time of every stretch of shared "
            f"steps divided equally among the runs training in it plus its own validation "
            f"passes, and its training CO2eq is the ensemble's in proportion; its peak memory "
            f"is the whole ensemble's.")
    for key, figure in (("train_clock", "Training times"), ("latency_clock", "Latencies")):
        clocks = sorted({str(row[key]) for row in rows if row.get(key)})
        if clocks:
            notes.append(f"{figure} were read from {' and '.join(clocks)}.")
    reasons = sorted({str(row[key]) for row in rows
                      for key in ("train_co2_note",) if row.get(key)})
    notes += [f"CO2eq n/a: {reason}." for reason in reasons]
    notes += [f"Precision: {note}." for note in sorted({str(row["precision_note"])
                                                         for row in rows
                                                         if row.get("precision_note")})]
    return "\n".join(notes) + "\n"


def _missing(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return None


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.inf


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
