"""The results inside pytest-html's report (``--html``), checked in the file and in a browser.

Real sessions (``pytester``, in-process, on the CPU) train a small MLP on a registered data
set at two batch sizes, beside a test that trains nothing, with ``--html=report.html
--self-contained-html``. The report's summary section must hold the batchprof summary table
with the very headers and cells the terminal printed, each training test's entry an HTML
table of its run and its learning curves as a PNG image, and the test without runs nothing.

pytest-html 4 builds its results table in JavaScript from a JSON blob, so the file alone
proves only that the data is there: the report is also opened in headless Chromium
(``--dump-dom`` once its scripts ran), and the same cells and the image must be in the
rendered page. Without Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it where it
can) that test is skipped, saying so. A session without pytest-html (``-p no:html``), or
with it but no ``--html``, neither registers the plugin's HTML hooks nor loses its table.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from inner_projects import blobs_conftest
from session_output import summary_rows

CONFTEST = blobs_conftest(train=240, test=120)

TESTS = """
    def test_mlp(trained_mlp, batch_size):
        run = trained_mlp(hidden=(16,), batch_size=batch_size, epochs=2)
        assert run.test_accuracy > 0.3


    def test_nothing_trained(request):
        hooks = request.config.pluginmanager.get_plugin("batchprof-html")
        print(f"batchprof-html registered: {hooks is not None}")
"""

HTML_FIRST = """

    @pytest.hookimpl(trylast=True)
    def pytest_configure(config):
        # register the plugin's summary again: of two trylast hooks the one registered last
        # is called last, so pytest-html's pytest_sessionfinish (which fills its summary
        # section) now comes before the plugin's (which makes the summary)
        from pytest_html.basereport import BaseReport

        manager = config.pluginmanager
        summary = manager.get_plugin("batchprof-summary")
        manager.unregister(summary)
        manager.register(summary, "batchprof-summary")
        report = next(plugin for plugin in manager.get_plugins()
                      if isinstance(plugin, BaseReport))
        order = [impl.plugin for impl in config.hook.pytest_sessionfinish.get_hookimpls()]
        assert order.index(summary) < order.index(report)  # called from the end backwards
"""


SESSION = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--batchprof-dataset", "blobs", "--batchprof-device", "cpu", "--batchprof-no-co2",
           "--batch-sizes", "8,16", "-s")
MLP_TESTS = {"test_main.py::test_mlp[bs8]": "8", "test_main.py::test_mlp[bs16]": "16"}
EMPTY_TEST = "test_main.py::test_nothing_trained"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_TIMEOUT_S = 90


# ---------------------------------------------------------------- helpers


class Page(HTMLParser):
    """The tables and images of an HTML page (elements only: an attribute's text, such as
    pytest-html's JSON blob, is not parsed), each with the classes of the elements around
    it and the test whose entry holds it (the ``col-testId`` cell of its ``tbody``)."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                      "meta", "source", "track", "wbr"})

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, set[str]]] = []
        self.tables: list[dict[str, object]] = []
        self.images: list[dict[str, object]] = []
        self.test_ids: list[str] = []
        self._test: str | None = None
        self._table: dict[str, object] | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._test_id: list[str] | None = None
        self.feed(text)
        self.close()

    def classes(self) -> set[str]:
        return {name for _, names in self.stack for name in names}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        names = set((attributes.get("class") or "").split())
        if tag == "img":
            self.images.append({"src": attributes.get("src") or "", "test": self._test,
                                "within": self.classes()})
        if tag in self.VOID:
            return
        self.stack.append((tag, names))
        if tag == "tbody" and "results-table-row" in names:
            self._test = None
        elif tag == "td" and "col-testId" in names:
            self._test_id = []
        elif tag == "table":
            self._table = {"rows": [], "test": self._test, "within": self.classes()}
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID or all(open_tag != tag for open_tag, _ in self.stack):
            return
        while self.stack.pop()[0] != tag:
            pass
        if tag == "td" and self._test_id is not None:
            self._test = "".join(self._test_id).strip()
            self.test_ids.append(self._test)
            self._test_id = None
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None

    def handle_data(self, data: str) -> None:
        for collecting in (self._cell, self._test_id):
            if collecting is not None:
                collecting.append(data)

    def tables_within(self, name: str) -> list[list[dict[str, str]]]:
        """The tables inside an element of class ``name``, as {header: cell} per row."""
        return [as_dicts(table["rows"]) for table in self.tables if name in table["within"]]


def as_dicts(rows: list[list[str]]) -> list[dict[str, str]]:
    header, *body = rows
    return [dict(zip(header, cells, strict=True)) for cells in body]


def header_of(rows: list[dict[str, str]]) -> list[str]:
    return list(rows[0])


def report_data(report: Path) -> dict[str, object]:
    """pytest-html's JSON blob: the tests, their result rows and extras."""
    found = re.search(r'data-jsonblob="([^"]*)"', report.read_text(encoding="utf-8"))
    assert found is not None
    return json.loads(html.unescape(found.group(1)))


def summary_section(report: Path) -> str:
    """The report's summary section as written (the server-side part of the page)."""
    text = report.read_text(encoding="utf-8")
    return text[text.index('<div class="summary">'):text.index('<table id="results-table">')]


def assert_run_table(rows: list[dict[str, str]], expected: dict[str, str]) -> None:
    """A test's table: its one run, with the terminal's cells (those in units of their own:
    the other columns pick their unit from the rows they show)."""
    assert len(rows) == 1, rows
    shown = {key: rows[0].get(key) for key in ("model", "data set", "batch", "test acc (%)",
                                               "outcome")}
    assert shown == {key: expected[key] for key in shown}


def assert_png_data_uri(source: str) -> None:
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix), source[:60]
    assert base64.b64decode(source[len(prefix):], validate=True).startswith(PNG_MAGIC)


def chromium() -> str:
    """The headless browser, or a skip saying why there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip("no Chromium (/usr/bin/chromium) to render the HTML report in; .ci/run "
                    "installs it with apt-get where it can (apt-get install chromium)")
    return found


def rendered_dom(report: Path, profile: Path) -> str:
    """The report's DOM once its scripts ran, as headless Chromium serialises it."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-extensions",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
               report.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def sessions() -> dict[str, object]:
    """The module's main session (its result and report), run by the first test that asks
    (``pytester`` is per test; its directories last the whole run)."""
    return {}


@pytest.fixture
def html_session(pytester: pytest.Pytester, sessions: dict[str, object]):
    """A session with ``--html=report.html --self-contained-html``: its terminal summary's
    rows by batch size, and the report's path."""
    pytest.importorskip("pytest_html", reason="pytest-html is not installed (pip install "
                        "-e '.[dev]')")
    if "result" not in sessions:
        pytester.makeconftest(CONFTEST)
        pytester.makepyfile(test_main=TESTS)
        report = pytester.path / "report.html"
        result = pytester.runpytest(*SESSION, f"--html={report}", "--self-contained-html",
                                    no_reraise_ctrlc=True)
        result.assert_outcomes(passed=3)
        rows = summary_rows(result)
        header = next(line for line in result.outlines if line.startswith("| model"))
        sessions.update(result=result, report=report, path=pytester.path,
                        terminal={row["batch"]: row for row in rows},
                        header=[cell.strip() for cell in header.strip().strip("|").split("|")])
    return sessions


# ---------------------------------------------------------------- the report file


def test_the_report_file_holds_the_summary_table_and_each_tests_runs(html_session) -> None:
    result, report, terminal = (html_session["result"], html_session["report"],
                                html_session["terminal"])
    assert "batchprof-html registered: True" in result.stdout.str()
    assert set(terminal) == {"8", "16"}
    # the summary section, written by the server: the terminal's table, header and cells
    section = Page(summary_section(report))
    (summary,) = section.tables_within("batchprof-summary")
    assert header_of(summary) == html_session["header"]
    assert {row["batch"]: row for row in summary} == terminal
    assert "<h2>batchprof summary</h2>" in summary_section(report)
    # each test's entry: its run's table and its learning curves; nothing for the other
    tests = report_data(report)["tests"]
    for nodeid, batch in MLP_TESTS.items():
        (entry,) = tests[nodeid]
        assert entry["result"] == "Passed"
        formats = [extra["format_type"] for extra in entry["extras"]]
        assert formats == ["html", "image"]
        table, image = entry["extras"]
        (runs,) = Page(table["content"]).tables_within("batchprof-runs")
        assert_run_table(runs, terminal[batch])
        assert image["name"] == "batchprof: learning curves"
        assert_png_data_uri(image["content"])
    assert [entry["extras"] for entry in tests[EMPTY_TEST]] == [[]]


# ---------------------------------------------------------------- in a browser


def test_the_rendered_report_shows_the_table_cells_and_the_plots(html_session,
                                                                 tmp_path: Path) -> None:
    terminal = html_session["terminal"]
    dom = Page(rendered_dom(html_session["report"], tmp_path / "profile"))
    # pytest-html's scripts built the results table: one entry per test
    assert sorted(dom.test_ids) == sorted([*MLP_TESTS, EMPTY_TEST])
    (summary,) = dom.tables_within("batchprof-summary")
    assert header_of(summary) == html_session["header"]
    assert {row["batch"]: row for row in summary} == terminal
    runs = [table for table in dom.tables if "extraHTML" in table["within"]]
    assert sorted(table["test"] for table in runs) == sorted(MLP_TESTS)
    for table in runs:
        assert "batchprof-runs" in table["within"]
        assert_run_table(as_dicts(table["rows"]), terminal[MLP_TESTS[table["test"]]])
    plots = [image for image in dom.images if image["src"].startswith("data:")]
    assert sorted(image["test"] for image in plots) == sorted(MLP_TESTS)
    for image in plots:
        assert "media-container__viewport" in image["within"]
        assert_png_data_uri(image["src"])


def test_a_plot_that_fails_leaves_the_table_and_says_so(html_session, monkeypatch) -> None:
    from pytest_batchprof.plugin.html import runs_extras
    from pytest_batchprof.reports import plots

    document = json.loads((html_session["path"] / "reports" / "latest.json").read_text())
    rows = [row for row in document["rows"] if row["batch_size"] == 8]
    assert plots.learning_curves_png(rows)[:8] == PNG_MAGIC
    assert plots.learning_curves_png([{**row, "test_accuracy": None} for row in rows]) is None

    def broken(rows):
        raise RuntimeError("no canvas\ntoday")

    monkeypatch.setattr(plots, "learning_curves_png", broken)
    (table,) = runs_extras(rows, "failed", SimpleNamespace(columns=None))
    assert "learning curves were not drawn: RuntimeError: no canvas" in table["content"]
    (runs,) = Page(table["content"]).tables_within("batchprof-runs")
    assert_run_table(runs, {**html_session["terminal"]["8"], "outcome": "failed"})


# ---------------------------------------------------------------- other sessions


def test_the_summary_is_made_for_pytest_html_whichever_comes_first(
        pytester: pytest.Pytester) -> None:
    """pytest-html's pytest_sessionfinish before the plugin's: the summary is made when
    pytest-html asks for it, once; with ``--batchprof-no-report`` (no report files) too."""
    pytest.importorskip("pytest_html", reason="pytest-html is not installed")
    pytester.makeconftest("import pytest\n" + CONFTEST.replace("\n    ", "\n") + HTML_FIRST
                          .replace("\n    ", "\n"))
    pytester.makepyfile(test_main=TESTS)
    report = pytester.path / "report.html"
    result = pytester.runpytest(*SESSION, "--batchprof-no-report", "-k", "bs8",
                                f"--html={report}", no_reraise_ctrlc=True)
    result.assert_outcomes(passed=1, deselected=2)
    assert [line for line in result.outlines if "batchprof summary" in line] != []
    (row,) = summary_rows(result)
    (summary,) = Page(summary_section(report)).tables_within("batchprof-summary")
    assert summary == [row]
    assert "report: " not in summary_section(report)  # no files were written
    assert not (pytester.path / "reports").exists()


def test_a_session_without_runs_gives_pytest_html_no_summary(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_html", reason="pytest-html is not installed")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_main=TESTS)
    report = pytester.path / "report.html"
    result = pytester.runpytest(*SESSION, "-k", "nothing", f"--html={report}",
                                no_reraise_ctrlc=True)
    result.assert_outcomes(passed=1, deselected=2)
    assert "batchprof" not in summary_section(report)
    assert report_data(report)["tests"][EMPTY_TEST][0]["extras"] == []


@pytest.mark.parametrize("without", [["-p", "no:html"], []], ids=["no-html", "no-html-option"])
def test_without_pytest_html_the_session_keeps_its_table(pytester: pytest.Pytester,
                                                         without: list[str]) -> None:
    """``-p no:html``, or pytest-html without ``--html``: no HTML hooks, the table as ever."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_main=TESTS)
    result = pytester.runpytest(*SESSION, "--batch-sizes", "8", *without, no_reraise_ctrlc=True)
    result.assert_outcomes(passed=2)
    assert "batchprof-html registered: False" in result.stdout.str()
    (row,) = summary_rows(result)
    assert (row["model"], row["batch"], row["outcome"]) == ("16-16-4", "8", "passed")
    assert not any("html report" in line for line in result.outlines)
