"""The session's report: rows gathered as tests finish, then table, files and plots.

Rows ride on test reports (``report.batchprof_rows``), so under pytest-xdist
they reach the controller with each report, and one table is rendered there.
Because rows are gathered as tests finish, an interrupted session (Ctrl-C,
``-x``, ``--maxfail``) still reports every run that finished; the report then
says it is partial. A session whose runs all finished is not partial, whatever
its tests' assertions said: their outcomes are in the table.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_batchprof.errors import one_line
from pytest_batchprof.gating import Comparison, compare
from pytest_batchprof.plugin.options import source_of
from pytest_batchprof.reports import storage
from pytest_batchprof.reports.critical_batch import (
    StudyFit,
    add_critical_batch_fit,
    critical_batch_section,
)
from pytest_batchprof.reports.figures import FIGURES, OUT_OF_MEMORY_KEY
from pytest_batchprof.reports.lr_grid import chosen_rows, grid_section
from pytest_batchprof.reports.seeds import aggregate_seeds
from pytest_batchprof.reports.summary import per_seed_section
from pytest_batchprof.reports.tables import (
    Row,
    add_scaling_efficiency,
    merge_outcome,
    render_markdown,
    render_table,
    run_key,
    seeds_repeat,
    sort_rows,
    table_columns,
)
from pytest_batchprof.settings import flag_of

if TYPE_CHECKING:
    from pytest_batchprof.engine.training import Run


def row_from_run(run: Run) -> Row:
    """A run's plain figures as a row, with room for its tests' outcome."""
    row = run.summary()
    row.update(_train_subset_note(row))
    row["outcome"] = None
    row["tests"] = []
    return row


def _train_subset_note(row: Row) -> Row:
    """The ``data_note`` of a run whose data set has fewer training samples than
    ``--batchprof-train-subset`` (at most N samples of each data set): it used them all.

    An epoch of a subset trains on all of it, or with ``drop_last`` on its whole
    batches; a run that trained on fewer per epoch had a smaller training split."""
    subset, samples = row.get("train_subset"), row.get("samples_per_epoch")
    if subset is None or samples is None:
        return {}
    whole_batches = bool(row.get("drop_last"))
    if samples >= (subset - subset % row["batch_size"] if whole_batches else subset):
        return {}
    used = (f"all training samples, {samples:,} per epoch in whole batches" if whole_batches
            else f"all {samples:,} training samples")
    return {"data_note": f"{used} (fewer than {flag_of('train_subset')} {subset:,})"}


RERUN = "rerun"
"""pytest-rerunfailures' outcome of an attempt it runs again: not an outcome of the run,
whose row takes the last attempt's."""


@dataclass
class SessionReport:
    """What the session produced, for the terminal summary."""

    table: str
    markdown: str
    partial: bool
    """The session was interrupted or stopped before every test ran (see
    :meth:`SummaryCollector.finish`)."""
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    saved_baseline: Path | None = None
    failed: bool = False
    """Some test failed (or the session failed otherwise): no baseline is saved from it."""
    tables: SummaryTables | None = None
    """The rows and columns behind ``table``, for other renderings of it (pytest-html's)."""

    def html_table(self) -> str:
        """The summary table as an HTML ``<table>``: the terminal's headers and cells."""
        if self.tables is None:
            return ""
        return render_table(self.tables.folded, self.tables.columns, tablefmt="html")

    @property
    def title(self) -> str:
        return "batchprof summary" + (" (partial)" if self.partial else "")

    def lines(self) -> list[SummaryLine]:
        """What the summary says under its table, in order, each with its kind: the one
        account the terminal and pytest-html's report each render in their own way."""
        lines = []
        if self.files:
            lines.append(SummaryLine("text", f"report: {self.files[0]} (+ {len(self.files) - 1} "
                                             f"files: json, csv, plots; latest.md and "
                                             f"latest.json point at it)"))
        comparison = self.comparison
        if comparison is not None:
            lines.append(SummaryLine("heading", f"compared with baseline "
                                                f"{comparison.baseline_path}"))
            if comparison.machine_note:
                lines.append(SummaryLine("caution", comparison.machine_note))
            lines.append(SummaryLine("block", comparison.table()))
            lines += [SummaryLine("regression", f"batchprof: {entry.title}: {entry.verdict}")
                      for entry in comparison.regressions]
        if self.saved_baseline:
            lines.append(SummaryLine("text", f"baseline saved: {self.saved_baseline}"))
        lines += [SummaryLine("caution", f"batchprof: {warning}") for warning in self.warnings]
        return lines


@dataclass(frozen=True)
class SummaryLine:
    """A part of the summary under its table (:meth:`SessionReport.lines`)."""

    kind: str
    """``text``, ``heading`` (a comparison's), ``caution`` (a warning), ``block`` (a
    preformatted table) or ``regression`` (a run the gate fails)."""
    text: str


@dataclass
class SummaryCollector:
    """Rows of the runs that finished, keyed by configuration, with their tests' outcomes."""

    rows: dict[str, Row] = field(default_factory=dict)

    def add(self, rows: list[Row], nodeid: str, outcome: str) -> None:
        """Keep ``rows`` (a report's runs) with the test's node id and the worse outcome;
        an attempt that pytest-rerunfailures runs again (``rerun``) gives no outcome."""
        for row in rows:
            kept = self.rows.setdefault(run_key(row), dict(row))
            if row.get(OUT_OF_MEMORY_KEY):
                kept["outcome"] = row[OUT_OF_MEMORY_KEY]
            elif outcome != RERUN:
                kept["outcome"] = merge_outcome(kept.get("outcome"), outcome)
            if nodeid and nodeid not in kept["tests"]:
                kept["tests"] = [*kept["tests"], nodeid]

    def devices(self) -> str:
        """The devices the rows' runs trained on (``cpu``; ``cuda:0, cuda:1`` under xdist)."""
        return ", ".join(sorted({str(row.get("device")) for row in self.rows.values()}))

    def finish(self, config: pytest.Config, settings, partial: bool,
               baseline: tuple[Path, dict[str, object]] | None = None,
               failed: bool = False) -> SessionReport | None:
        """Apply the hooks, compare, render, and write the files; ``None`` if nothing trained.

        ``partial``: the session stopped before every test ran (the report says so);
        ``failed``: a test failed, so no baseline is saved. The report's device is the
        runs' own: an xdist controller trains nothing, and its workers may each have a
        GPU of their own.
        """
        if not self.rows:
            return None
        tables = SummaryTables.build(config, settings, sort_rows(self.rows.values()))
        env = storage.environment(_settings_dict(settings), self.devices(), tables.rows)
        comparison = None
        if baseline is not None:
            comparison = compare(tables.rows, baseline[1], baseline[0], settings.fail_drop,
                                 settings.fail_slowdown, env)
        report = SessionReport(tables.table, "", partial, warnings=tables.warnings,
                               comparison=comparison, failed=failed, tables=tables)
        stem = _free_stem(settings.report_dir)
        plots = ([] if settings.no_report
                 else _plots(tables.rows, settings.report_dir, stem, report.warnings))
        report.markdown = _markdown(config, tables, env, plots, partial, comparison)
        if not settings.no_report:
            _write_files(report, settings.report_dir, stem, tables, env, plots)
        _save_baseline(report, settings, tables, env)
        _append_step_summary(tables.table, comparison)
        return report


@dataclass
class SummaryTables:
    """The session's rows once the hooks have had them, the columns to show, the
    summary table (seeds folded), what was wrong with the requested columns, and the
    critical batch size fitted to each time-to-accuracy study."""

    rows: list[Row]
    columns: list[str]
    table: str
    warnings: list[str]
    critical_batch: list[StudyFit] = field(default_factory=list)
    folded: list[Row] = field(default_factory=list)
    """The rows the table shows, seeds folded (of a learning-rate grid, the chosen lr's)."""

    @classmethod
    def build(cls, config: pytest.Config, settings, rows: list[Row]) -> SummaryTables:
        add_scaling_efficiency(rows)
        studies = add_critical_batch_fit(rows)
        standard_keys = {key for row in rows for key in row}
        config.hook.pytest_batchprof_summary(config=config, rows=rows)
        rows = [{key: _finite(value) for key, value in row.items()} for row in rows]
        shown = chosen_rows(rows)  # a learning-rate grid's other lrs: JSON and CSV only
        columns = table_columns(shown, settings.columns, standard_keys,
                                turned_off=turned_off(settings))
        folded = aggregate_seeds(shown)
        known = {key for row in [*rows, *folded] for key in row}
        warnings = []
        # a name that no row can have was refused when the session started, unless a
        # pytest_batchprof_summary hook might add it: say so if none did
        unknown = [column for column in columns if column not in known]
        if unknown:
            warnings.append(f"{source_of(config, 'columns')} names {', '.join(unknown)}, which "
                            f"no row has; known: {', '.join(sorted(known))}")
        return cls(rows, columns, render_table(folded, columns), warnings, studies, folded)

    @property
    def shown(self) -> list[Row]:
        """The rows the table, per-seed section and histories show: of a learning-rate
        grid, the chosen lr's (``rows`` keeps every run, for JSON, CSV and baselines)."""
        return chosen_rows(self.rows)


def _markdown(config: pytest.Config, tables: SummaryTables, env: dict[str, object],
              plots: list[tuple[str, Path]], partial: bool,
              comparison: Comparison | None) -> str:
    """The report's markdown, as the ``pytest_batchprof_markdown`` hook leaves it."""
    shown = tables.shown
    sections = [section for section in [grid_section(tables.rows)] if section]
    if seeds_repeat(shown):
        sections.append(per_seed_section(shown, tables.columns))
    fitted = critical_batch_section(tables.critical_batch)
    if fitted:
        sections.append(fitted)
    if comparison:
        sections.append(comparison.markdown())
    markdown = render_markdown(tables.table, shown, env,
                               [(title, path.name) for title, path in plots], partial, sections)
    replaced = config.hook.pytest_batchprof_markdown(config=config, markdown=markdown)
    return replaced if replaced is not None else markdown


def _write_files(report: SessionReport, directory: Path, stem: str, tables: SummaryTables,
                 env: dict[str, object], plots: list[tuple[str, Path]]) -> None:
    """Markdown, JSON and CSV (each written atomically), and ``latest.*`` copies."""
    try:
        markdown_path = storage.write_atomic(directory / f"{stem}.md", report.markdown)
        json_path = storage.write_atomic(
            directory / f"{stem}.json",
            storage.report_json(tables.rows, tables.columns, env, report.partial))
        csv_path = storage.write_atomic(directory / f"{stem}.csv",
                                        storage.report_csv(tables.rows))
        storage.copy_atomic(markdown_path, directory / "latest.md")
        storage.copy_atomic(json_path, directory / "latest.json")
    except OSError as error:  # a full disk must not cost the terminal table
        report.warnings.append(f"report files were not written: {error}")
        return
    report.files = [markdown_path, json_path, csv_path, *(path for _, path in plots)]


def _save_baseline(report: SessionReport, settings, tables: SummaryTables,
                   env: dict[str, object]) -> None:
    """``--batchprof-save NAME``: only a complete, passing session that did not regress is
    saved."""
    if not settings.save:
        return
    comparison = report.comparison
    if report.partial:
        report.warnings.append(
            f"baseline {settings.save!r} was not saved: the session was interrupted, so its "
            f"figures are incomplete")
    elif report.failed:
        report.warnings.append(
            f"baseline {settings.save!r} was not saved: the session had failures; a baseline "
            f"records a passing session")
    elif comparison and comparison.regressions:
        report.warnings.append(f"baseline {settings.save!r} was not saved: the session "
                               f"regressed against {comparison.baseline_path}")
    else:
        report.saved_baseline = storage.write_atomic(
            settings.baseline_dir / f"{settings.save}.json",
            storage.report_json(tables.rows, tables.columns, env, report.partial))


def _append_step_summary(table: str, comparison: Comparison | None) -> None:
    """The table, and the comparison with its verdict, in a GitHub Actions job summary,
    when there is one."""
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        compared = "" if comparison is None else f"{comparison.markdown()}\n"
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(f"## pytest-batchprof\n\n{table}\n\n{compared}")


def _plots(rows: list[Row], directory: Path, stem: str, warnings: list[str]):
    from pytest_batchprof.reports.plots import write_plots  # matplotlib loads only when plotting

    try:
        return write_plots(rows, directory, stem)
    except Exception as error:  # a plot must never cost the tables
        warnings.append(f"plots were not drawn: {one_line(error)}")
        return []


def _free_stem(directory: Path) -> str:
    stem = storage.session_stem()
    candidate, number = stem, 1
    while (directory / f"{candidate}.json").exists():
        number += 1
        candidate = f"{stem}-{number}"
    return candidate


def turned_off(settings) -> frozenset[str]:
    """The figures this session turned off (``--batchprof-no-co2``: CO2eq and energy), which
    the default table leaves out rather than show a column of ``n/a``."""
    return frozenset(column.key for column in FIGURES
                     if column.off is not None and getattr(settings, column.off, False))


def _settings_dict(settings) -> dict[str, object]:
    return {key: (",".join(map(str, value)) if isinstance(value, tuple) else value)
            for key, value in vars(settings).items()}


def _finite(value: object) -> object:
    """``None`` for NaN and infinities (a hook may add them), which JSON cannot hold."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
