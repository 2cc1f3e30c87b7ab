"""The session's rows in pytest-html's report (``--html=report.html``).

Registered by the plugin's ``pytest_configure`` only when pytest-html is active and writes
a report (``config.pluginmanager.hasplugin("html")`` and ``--html`` given), so a session
without it never imports this module or pytest-html. Then:

* the report's summary section (``pytest_html_results_summary``) opens with the batchprof
  summary table, the one the terminal summary prints (the same headers and cells, rendered
  by :func:`~pytest_batchprof.reports.tables.render_table` as HTML), and what the terminal
  says under it (the report files, a baseline comparison, warnings);
* each test that trained (or recorded) runs gets two extras on the report of the phase
  that carries its rows: an HTML table of those runs, one row each (its seeds and learning
  rates apart), and their learning curves as a PNG image, drawn as the report's
  ``learning-curves`` plot (:func:`~pytest_batchprof.reports.plots.learning_curves_png`).
  A test without runs gets nothing.

The extras are added in ``pytest_runtest_logreport``, where the rows are on the report
(``report.batchprof_rows``): under pytest-xdist that is the controller, which writes the
HTML report. pytest-html fills its summary in its own ``pytest_sessionfinish``, which may
come before the plugin's summary is made: :meth:`HtmlResults.pytest_html_results_summary`
asks for it (:meth:`~pytest_batchprof.plugin.SummaryReporter.finish` makes it once).
"""

from __future__ import annotations

import base64
from html import escape
from typing import TYPE_CHECKING

import pytest

from pytest_batchprof.errors import one_line

if TYPE_CHECKING:
    from pytest_batchprof.plugin.report import SessionReport
    from pytest_batchprof.reports.tables import Row
    from pytest_batchprof.settings import Settings

CSS = """<style>
.batchprof { color: black; margin: 0 0 12px; }
.batchprof h2, .batchprof h3 { margin: 8px 0 4px; }
.batchprof table { border-collapse: collapse; margin: 4px 0; }
.batchprof th, .batchprof td { border: 1px solid #ccc; padding: 3px 6px; text-align: left;
  white-space: nowrap; }
.batchprof th { background: #f6f6f6; }
.batchprof pre { color: black; }
.batchprof .warning { color: #a60; }
.batchprof .regression { color: #c00; font-weight: bold; }
</style>"""
"""How the batchprof tables look: bordered cells, like the report's environment table."""

SUMMARY_CLASS = "batchprof batchprof-summary"
RUNS_CLASS = "batchprof batchprof-runs"
PLOT_NAME = "batchprof: learning curves"


class HtmlResults:
    """pytest-html's hooks for one session's config (pytester runs sessions in sessions)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)  # before pytest-html's (trylast) reads the extras
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Give the report that carries a test's rows their table and learning curves.

        An attempt that pytest-rerunfailures runs again gets none: the last one has them.
        """
        rows = getattr(report, "batchprof_rows", None)
        if not rows or report.outcome == "rerun":
            return
        from pytest_batchprof.plugin import SETTINGS_KEY

        report.extras = [*getattr(report, "extras", []),
                         *runs_extras(rows, report.outcome, self.config.stash[SETTINGS_KEY])]

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str],
                                    postfix: list[str], session: pytest.Session) -> None:
        """Open the summary section with the batchprof summary; nothing when no run
        trained (or another process reports: an xdist worker, a torchrun rank but 0)."""
        reporter = self.config.pluginmanager.get_plugin("batchprof-summary")
        if reporter is None:
            return
        report = reporter.finish(session, session.exitstatus)
        if report is not None:
            prefix.append(summary_html(report))


def summary_html(report: SessionReport) -> str:
    """The batchprof summary as HTML: what the terminal summary prints, in the same order."""
    parts = [CSS, f'<div class="{SUMMARY_CLASS}">', f"<h2>{escape(report.title)}</h2>",
             report.html_table()]
    for part in report.lines():
        text = escape(part.text)
        parts.append({"heading": f"<h3>{text}</h3>", "block": f"<pre>{text}</pre>",
                      "caution": f'<p class="warning">{text}</p>',
                      "regression": f'<p class="regression">{text}</p>'}.get(
                          part.kind, f"<p>{text}</p>"))
    parts.append("</div>")
    return "\n".join(parts)


def runs_extras(rows: list[Row], outcome: str, settings: Settings) -> list[dict[str, object]]:
    """A test's extras: the table of its runs and (when a run has a curve) their learning
    curves. A plot that cannot be drawn is a line under the table, never a lost report."""
    from pytest_html import extras

    runs = runs_html(rows, outcome, settings)
    try:
        png = _learning_curves(rows)
    except Exception as error:  # a plot must never cost the test's report
        png = None
        runs += f'<p class="warning">learning curves were not drawn: {escape(one_line(error))}</p>'
    found = [extras.html(f'{CSS}<div class="{RUNS_CLASS}">{runs}</div>')]
    if png is not None:
        found.append(extras.png(base64.b64encode(png).decode("ascii"), name=PLOT_NAME))
    return found


def runs_html(rows: list[Row], outcome: str, settings: Settings) -> str:
    """The HTML table of a test's runs: one row per run (seed and lr apart), the session's
    columns (``--batchprof-columns``, else the default ones its rows have), the test's
    outcome in each (a run that ran out of memory says so instead)."""
    from pytest_batchprof.plugin.report import turned_off
    from pytest_batchprof.reports.figures import OUT_OF_MEMORY_KEY
    from pytest_batchprof.reports.tables import render_table, table_columns

    shown = [{**row, "outcome": row.get(OUT_OF_MEMORY_KEY) or outcome} for row in rows]
    columns = table_columns(shown, settings.columns, {key for row in shown for key in row},
                            turned_off=turned_off(settings))
    columns = ["seed" if column == "seeds" else column for column in columns]  # not folded
    count = len(shown)
    return (f"<h3>batchprof: the {'run' if count == 1 else f'{count} runs'} of this test</h3>"
            + render_table(shown, columns, tablefmt="html"))


def _learning_curves(rows: list[Row]) -> bytes | None:
    from pytest_batchprof.reports.plots import learning_curves_png  # matplotlib: when drawing

    return learning_curves_png(rows)
