"""The learning-rate grid in the report: the rows the table shows, the heat map of the
validation figure per learning rate and batch size, and the moved lr of a comparison.

With ``--batchprof-lr-grid``, every configuration is trained at each learning rate of
the grid, and the fixture chooses the best lr of each batch size on the validation split
(never the test split). It records the choice on every row it trained:

* ``lr_grid``: the grid as given (``0.0001,0.0003,0.001,0.003``);
* ``lr_chosen``: ``True`` on the rows (every seed) of the chosen lr, ``False`` on the others;
* ``lr_grid_criterion``: ``steps to target`` (with ``--target-accuracy``), ``val accuracy``,
  or for runs scored by another metric its final validation figure (``val rmse``: the
  lowest is best, in the metric's direction);
* ``lr_grid_score``: the mean over seeds of the figure the choice read;
* ``lr_grid_note``: on chosen rows, the edge flag (the best lr is the grid's largest or
  smallest) or ``None``.

Every run stays in the JSON and CSV reports and in a saved baseline (each measured run
is evidence); the summary table, the per-seed section, the per-epoch histories, the
per-batch-size plots and a baseline comparison read the chosen runs only
(:func:`chosen_rows`), so that a batch size is one row, at its best lr. The
``## Learning-rate grid`` section (:func:`grid_section`) and the ``lr-grid`` plot
(:func:`pytest_batchprof.reports.plots.build_figures`) show the whole grid, from the
same :class:`Study` data.

Rows are plain dicts; this module imports neither torch, matplotlib nor the other report
modules (tables, plots and gating import it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tabulate import tabulate

from pytest_batchprof.reports.figures import OUT_OF_MEMORY_KEY
from pytest_batchprof.reports.stats import finite
from pytest_batchprof.reports.studies import (
    group_studies,
    metric_of,
    row_target_words,
    study_title,
    varying_settings,
)

Row = dict[str, object]

GRID_KEY = "lr_grid"
CHOSEN_KEY = "lr_chosen"
CRITERION_KEY = "lr_grid_criterion"
SCORE_KEY = "lr_grid_score"
NOTE_KEY = "lr_grid_note"

STEPS_CRITERION = "steps to target"
"""Fewest steps to ``--target-accuracy`` on the validation split (row key ``target_steps``)."""
ACCURACY_CRITERION = "val accuracy"
"""Highest final validation accuracy (row key ``val_accuracy``)."""


SHADES = ("░", "▒", "▓", "█")
"""Heat-map shading of a cell, from the worst lr of its batch size to the best."""
CHOSEN_MARK = "★"
"""Beside the chosen cell of each batch size (in bold) and on the plot's chosen points."""

def tuned(rows: Iterable[Mapping[str, object]]) -> bool:
    """Whether any row was trained on a learning-rate grid."""
    return any(row.get(GRID_KEY) for row in rows)


def chosen_rows(rows: Iterable[Row]) -> list[Row]:
    """The rows a table, a per-batch plot, a fit across batch sizes or a comparison reads:
    all but those of the lrs a grid did not choose (``lr_chosen`` False).

    The rows themselves, not copies, so that what a caller adds to them stays on the
    session's rows; without a grid, every row.
    """
    return [row for row in rows if row.get(CHOSEN_KEY) is not False]


def lr_moved(before: Sequence[Mapping[str, object]],
             now: Sequence[Mapping[str, object]]) -> str | None:
    """``tuned lr 0.001 -> 0.003`` when a baseline's configuration and the session's ran
    at different learning rates and either side chose its lr on a grid; else ``None``.

    A comparison pairs runs by their experiment, not their recipe, so without this a
    grid that chose another lr would be compared in silence.
    """
    if not before or not now or not tuned([*before, *now]):
        return None
    old, new = before[0].get("lr"), now[0].get("lr")
    if not isinstance(old, int | float) or not isinstance(new, int | float) or math.isclose(
            old, new, rel_tol=1e-9):
        return None
    return f"tuned lr {old:g} -> {new:g}"


@dataclass(frozen=True)
class Cell:
    """One learning rate at one batch size: its validation figure, mean over its seeds."""

    value: float | None
    """Mean val accuracy (a fraction), val metric or steps to target; ``None`` where there
    is no figure to rank (not reached, diverged, out of memory, not trained)."""
    text: str
    """As the heat map shows it: ``97.3``, ``0.512``, ``1,234``, ``not reached``, ``diverged
    by 1 of 3``."""
    chosen: bool = False
    seeds: int = 0


@dataclass
class Study:
    """A tuned study: one model and recipe, its grid of learning rates by batch sizes."""

    title: str
    criterion: str
    target: float | None
    lrs: list[float]
    """The grid's learning rates (and any other a run used), ascending."""
    batch_sizes: list[int]
    cells: dict[tuple[float, int], Cell] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)
    """The edge flag of a batch size's chosen lr."""
    metric: str = "accuracy"
    """The metric the study's runs are scored by (``rmse``, ...)."""
    higher_is_better: bool = True
    """Its direction."""
    target_text: str = "the target"
    """The target in words: ``97%``, ``rmse 0.3``."""

    @property
    def by_steps(self) -> bool:
        """Whether the lr was chosen by steps to target (fewer is better)."""
        return self.criterion == STEPS_CRITERION

    @property
    def lower_is_better(self) -> bool:
        """Whether a lower figure is the better one: steps, or a metric such as RMSE."""
        return self.by_steps or not self.higher_is_better

    @property
    def figure_words(self) -> str:
        """What a cell holds: ``steps to 97% val accuracy``, ``final val accuracy (%)``,
        ``final val rmse (lower is better)``."""
        if self.by_steps:
            if self.metric == "accuracy":
                return f"steps to {self.target_text} val accuracy"
            return ("steps to the target" if self.target_text == "the target"
                    else f"steps to val {self.target_text}")
        if self.metric == "accuracy":
            return "final val accuracy (%)"
        direction = "higher" if self.higher_is_better else "lower"
        return f"final val {self.metric} ({direction} is better)"

    def cell(self, lr: float, batch_size: int) -> Cell:
        return self.cells.get((lr, batch_size), Cell(None, "n/a"))

    def chosen(self, batch_size: int) -> float | None:
        """The lr chosen for ``batch_size``, if one was."""
        return next((lr for lr in self.lrs if self.cell(lr, batch_size).chosen), None)

    def points(self, batch_size: int) -> list[tuple[float, float]]:
        """(lr, mean figure) of ``batch_size`` where there is one, ascending lr."""
        return [(lr, cell.value) for lr in self.lrs
                if (cell := self.cell(lr, batch_size)).value is not None]

    def shade(self, lr: float, batch_size: int) -> str:
        """The heat-map character of a cell: its rank among the figures of its batch size,
        from ``░`` (worst) to ``█`` (best); ``""`` for a cell without a figure."""
        value = self.cell(lr, batch_size).value
        if value is None:
            return ""
        ranked = sorted({value for _, value in self.points(batch_size)},
                        reverse=self.lower_is_better)  # worst first
        if len(ranked) == 1:
            return SHADES[-1]
        return SHADES[round((len(SHADES) - 1) * ranked.index(value) / (len(ranked) - 1))]


def grid_studies(rows: Iterable[Mapping[str, object]]) -> list[Study]:
    """The tuned studies of ``rows`` (those with ``lr_grid``), in order of first appearance."""
    groups = group_studies(row for row in rows if row.get(GRID_KEY))
    varying = varying_settings(groups, named=("optimizer",))
    return [_study(group, varying) for group in groups]


def _study(rows: Sequence[Mapping[str, object]], varying: Sequence[str]) -> Study:
    first = rows[0]
    target = first.get("target_accuracy")
    metric, higher_is_better = metric_of(first)
    criterion = str(first.get(CRITERION_KEY) or (
        STEPS_CRITERION if isinstance(target, int | float) else ACCURACY_CRITERION))
    lrs = _merge_lrs([*_parse_grid(first.get(GRID_KEY)),
                      *finite(row.get("lr") for row in rows)])
    by_cell: dict[tuple[float, int], list[Mapping[str, object]]] = {}
    for row in rows:
        lr, batch_size = row.get("lr"), row.get("batch_size")
        if isinstance(lr, int | float) and isinstance(batch_size, int):
            by_cell.setdefault((_nearest(lrs, lr), batch_size), []).append(row)
    study = Study(study_title(first, varying, str(first.get("optimizer"))), criterion,
                  float(target) if isinstance(target, int | float) else None, lrs,
                  sorted({batch_size for _, batch_size in by_cell}), metric=metric,
                  higher_is_better=higher_is_better, target_text=row_target_words(first))
    for key, runs in by_cell.items():
        study.cells[key] = _cell(runs, criterion)
        note = next((row.get(NOTE_KEY) for row in runs
                     if row.get(CHOSEN_KEY) and row.get(NOTE_KEY)), None)
        if note:
            study.notes[key[1]] = str(note)
    return study


def _cell(runs: Sequence[Mapping[str, object]], criterion: str) -> Cell:
    """The mean of the seeds' figure, or what kept some seed from having one."""
    seeds = len(runs)
    chosen = any(row.get(CHOSEN_KEY) for row in runs)

    def some(count: int, text: str) -> str:
        return text if count == seeds else f"{text} by {count} of {seeds}"

    out_of_memory = sum(1 for row in runs if row.get(OUT_OF_MEMORY_KEY))
    if out_of_memory:
        return Cell(None, some(out_of_memory, "out of memory"), chosen, seeds)
    diverged = sum(1 for row in runs if row.get("diverged"))
    if diverged:
        return Cell(None, some(diverged, "diverged"), chosen, seeds)
    if criterion == STEPS_CRITERION:
        steps = finite(row.get("target_steps") for row in runs)
        if len(steps) < seeds:
            return Cell(None, some(seeds - len(steps), "not reached"), chosen, seeds)
        mean = statistics.fmean(steps)
        return Cell(mean, f"{mean:,.0f}", chosen, seeds)
    key = "val_accuracy" if criterion == ACCURACY_CRITERION else "val_metric"
    values = finite(row.get(key) for row in runs)
    if len(values) < seeds:
        return Cell(None, "n/a", chosen, seeds)
    mean = statistics.fmean(values)
    return Cell(mean, f"{100 * mean:.1f}" if key == "val_accuracy" else f"{mean:.4g}",
                chosen, seeds)


def grid_section(rows: Iterable[Mapping[str, object]]) -> str | None:
    """The ``## Learning-rate grid`` markdown section, or ``None`` when nothing was tuned.

    Per study, a heat map: a row per learning rate, a column per batch size, each cell
    the validation figure the choice read (mean over seeds), the chosen cell of each
    batch size in bold with a star; then the criterion and the edge flags.
    """
    studies = grid_studies(rows)
    if not studies:
        return None
    lines = ["## Learning-rate grid", "",
             "Each batch size was trained at every learning rate of the grid; the summary "
             "shows each batch size at the lr chosen here, and the JSON and CSV reports keep "
             "every run.", ""]
    for study in studies:
        lines += [f"### {study.title}", "", heat_map(study), "", *_legend(study), ""]
    return "\n".join(lines).rstrip() + "\n"


def heat_map(study: Study) -> str:
    """The study's grid as a GitHub-flavoured markdown table (see :func:`grid_section`)."""
    body = []
    for lr in study.lrs:
        cells = []
        for batch_size in study.batch_sizes:
            cell, shade = study.cell(lr, batch_size), study.shade(lr, batch_size)
            text = f"**{cell.text}** {CHOSEN_MARK}" if cell.chosen else cell.text
            cells.append(f"{shade} {text}" if shade else text)
        body.append([f"{lr:g}", *cells])
    return tabulate(body, headers=["lr", *(f"batch {size}" for size in study.batch_sizes)],
                    tablefmt="github", disable_numparse=True)


def _legend(study: Study) -> list[str]:
    seeds = sorted({cell.seeds for cell in study.cells.values()})
    over = (f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}" if len(seeds) == 1
            else "each cell's seeds")
    figure = study.figure_words
    shades = ", ".join(reversed(SHADES))
    lines = [f"Cells: {figure}, mean over {over}. **Bold** {CHOSEN_MARK}: the lr chosen for "
             f"the batch size. Shading ranks the lrs within each batch size, darker is "
             f"better ({shades}: best to worst); a cell without a figure is not shaded.", ""]
    rule = (f"the fewest {study.figure_words}" if study.by_steps else
            f"the {'highest' if study.higher_is_better else 'lowest'} final val {study.metric}")
    lines += [f"Chosen on the validation split by {rule}; the test split played no part.", ""]
    if study.notes:
        lines += ["Edge flags:", ""]
        lines += [f"- batch {size}: {note}" for size, note in sorted(study.notes.items())]
    else:
        lines.append("No chosen lr lies at an edge of the grid.")
    return lines


def _parse_grid(grid: object) -> list[float]:
    """The lrs of ``0.0001,0.0003,0.001``; an unreadable entry is skipped (the runs' own
    lrs still give the grid's rows)."""
    values = []
    for part in str(grid or "").split(","):
        try:
            values.append(float(part))
        except ValueError:
            continue
    return finite(values)


def _merge_lrs(lrs: Iterable[float]) -> list[float]:
    """Ascending, one of each (``1e-3`` written ``0.001`` in the grid is the same lr)."""
    merged: list[float] = []
    for lr in sorted(lrs):
        if not merged or not math.isclose(merged[-1], lr, rel_tol=1e-9):
            merged.append(lr)
    return merged


def _nearest(lrs: Sequence[float], lr: float) -> float:
    return min(lrs, key=lambda candidate: abs(candidate - lr))
