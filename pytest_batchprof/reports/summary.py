"""The summary table of a session's rows, and of a saved report: one row per configuration,
its seeds folded into mean ± 95% CI, of a learning-rate grid the chosen lr's only.

The session's report (:mod:`pytest_batchprof.plugin.report`) renders its table and its
per-seed section here, and :func:`table_from_report` renders a saved JSON report's table
exactly as the session printed it.
"""

from __future__ import annotations

from pathlib import Path

from pytest_batchprof.reports import storage
from pytest_batchprof.reports.lr_grid import chosen_rows
from pytest_batchprof.reports.seeds import aggregate_seeds
from pytest_batchprof.reports.tables import Row, render_table


def summary_table(rows: list[Row], columns: list[str]) -> str:
    """The summary table: one row per configuration, its seeds folded into mean ± 95% CI
    (of a learning-rate grid, the chosen lr's only)."""
    return render_table(aggregate_seeds(chosen_rows(rows)), columns)


def per_seed_section(rows: list[Row], columns: list[str]) -> str:
    """The markdown section listing every seed's run, for the reader who wants the spread."""
    per_seed = [("seed" if column == "seeds" else column) for column in columns]
    return "\n".join([
        "## Per-seed runs", "",
        "The summary shows each configuration's mean over its seeds ± the half-width of "
        "the 95% confidence interval (Student t with n - 1 degrees of freedom); these are "
        "the runs behind it.", "", render_table(rows, per_seed), ""])


def table_from_report(path: Path) -> str:
    """The summary table of a saved JSON report, exactly as the session printed it."""
    document = storage.load_report(path)
    return summary_table(document["rows"], document["columns"])
