"""The session summary: units and formatting, the terminal table, the report files and hooks.

Formatting is tested on plain values; everything else in real in-process
sessions (``pytester``) on scikit-learn's digits with tiny MLPs and one epoch.
Timings are never asserted on: the machine may be busy.
"""

from __future__ import annotations

import csv
import fnmatch
import itertools
import json
import os
import re
from pathlib import Path

import pytest
import torch
from markdown_it import MarkdownIt

from pytest_batchprof.plugin.report import SummaryCollector, turned_off
from pytest_batchprof.reports import storage
from pytest_batchprof.reports.figures import COLUMNS, DEFAULT_COLUMNS, OPTIONAL_COLUMNS
from pytest_batchprof.reports.storage import ReportError, load_report, report_json, write_atomic
from pytest_batchprof.reports.summary import table_from_report
from pytest_batchprof.reports.tables import (
    KNOWN_COLUMNS,
    format_column,
    merge_outcome,
    render_table,
    sort_rows,
    table_columns,
)
from pytest_batchprof.settings import Settings
from pytest_batchprof.units import (
    BYTE_UNITS,
    ENERGY_UNITS,
    MASS_UNITS,
    TIME_UNITS,
    human_number,
    pick_unit,
)

DIGITS = ("--dataset", "digits", "--epochs", "1", "--no-co2")
SUMMARY_SEP = re.compile(r"^=+ batchprof summary( \(partial\))? =+$")
REPORT_LINE = re.compile(r"^report: (\S+\.md) \(\+ (\d+) files: json, csv, plots; ")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_SUFFIXES = ("-accuracy.png", "-time.png", "-learning-curves.png", "-trade-off.png")
"""The plots of a session of two models (the trade-off plot needs two or more)."""
DEFAULT_HEADERS = [
    "model", "data set", "batch", "epochs", "train time (*)", "time / epoch (*)",
    "train acc (%)", "val acc (%)", "test acc (%)", "latency / sample (*)", "FLOPs / sample",
    "params", "checkpoint size (kB)", "outcome",
]
"""The default header with --no-co2 (the session turned CO2eq off: no column of n/a); time
units vary."""
HISTORY_HEADERS = ["epoch", "train acc (%)", "val acc (%)", "train loss", "val loss", "time (s)"]
# Digits images are 8x8: 64 inputs, 10 classes. FLOPs = 2 x MACs per sample.
FLOPS = {"64-8-10": "1,184", "64-16-10": "2,368"}
PARAMS = {"64-8-10": "610", "64-16-10": "1,210"}


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions must not append to a real GitHub step summary (when run in CI)."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session; an inner Ctrl-C must not stop this (outer) session."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args,
                              no_reraise_ctrlc=True)


def summary_separators(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if SUMMARY_SEP.match(line)]


def terminal_table(result: pytest.RunResult) -> str:
    """The table printed after the one ``batchprof summary`` separator."""
    lines = result.outlines
    starts = [index for index, line in enumerate(lines) if SUMMARY_SEP.match(line)]
    assert len(starts) == 1, result.stdout.str()
    table = []
    for line in lines[starts[0] + 1:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert len(table) >= 3, result.stdout.str()  # header, rule, at least one row
    return "\n".join(table)


def report_path(result: pytest.RunResult) -> Path:
    """The markdown report named on the ``report:`` line, right after the table."""
    lines = result.outlines
    index = next(index for index, line in enumerate(lines) if SUMMARY_SEP.match(line))
    after = [line for line in lines[index + 1:] if not line.startswith("|")]
    match = REPORT_LINE.match(after[0])
    assert match, after[0]
    assert match[2] in ("5", "6")  # json, csv, three plots (a trade-off with 2 models or more)
    return Path(match[1])


def parse_table(table: str) -> list[list[str]]:
    """Header and body cells of one markdown table, as markdown-it parses it."""
    tables = markdown_tables(table)
    assert len(tables) == 1
    return tables[0][1]


def markdown_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """Every table of ``text`` with the heading above it: (heading, [header, *body rows])."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables: list[tuple[str, list[list[str]]]] = []
    heading = ""
    for previous, token in zip([None, *tokens], tokens, strict=False):
        if token.type == "inline" and previous.type == "heading_open":
            heading = token.content
        elif token.type == "table_open":
            tables.append((heading, []))
        elif token.type == "tr_open":
            tables[-1][1].append([])
        elif token.type == "inline" and previous.type in ("th_open", "td_open"):
            tables[-1][1][-1].append(token.content)
    return tables


def markdown_headings(text: str) -> list[tuple[str, str]]:
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    return [(opening.tag, inline.content) for opening, inline in itertools.pairwise(tokens)
            if opening.type == "heading_open"]


def image_links(text: str) -> list[str]:
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    return [child.attrGet("src") for token in tokens if token.type == "inline"
            for child in token.children or [] if child.type == "image"]


def summary_section(markdown: str) -> str:
    """The table under ``## Summary``, as text."""
    return markdown.split("\n## Summary\n\n", 1)[1].split("\n\n", 1)[0]


def assert_headers(header: list[str], patterns: list[str]) -> None:
    assert len(header) == len(patterns), header
    for cell, pattern in zip(header, patterns, strict=True):
        assert fnmatch.fnmatchcase(cell, pattern), (cell, pattern)


def column(table: list[list[str]], label: str) -> list[str]:
    """The body cells of the column whose header is ``label`` (or matches it)."""
    header = table[0]
    index = next(i for i, cell in enumerate(header) if fnmatch.fnmatchcase(cell, label))
    return [row[index] for row in table[1:]]


def no_temporary_files(directory: Path) -> None:
    assert [path.name for path in directory.iterdir() if path.name.startswith(".")] == []


# ---------------------------------------------------------------- formatting


def test_human_number_rule() -> None:
    # One decimal from 1 up (408 keeps its ".0"), thousands separators from 1,000,
    # three significant digits below 1.
    assert human_number(19.2) == "19.2"
    assert human_number(408.0) == "408.0"
    assert human_number(1.0) == "1.0"
    assert human_number(999.0) == "999.0"
    assert human_number(1000.0) == "1,000"
    assert human_number(9769.08) == "9,769"
    assert human_number(1234567.0) == "1,234,567"
    assert human_number(0.0123) == "0.0123"
    assert human_number(0.5) == "0.5"
    assert human_number(0.123456) == "0.123"
    assert human_number(0) == "0"
    assert human_number(-19.2) == "-19.2"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([2.5, 40.0], "s"),
        ([0.0123, 0.2], "ms"),
        ([4.2e-6, 9.3e-7, 2e-6], "µs"),
        ([3e-9], "ns"),
        ([1e-12], "ns"),  # nothing smaller: the last unit
        ([1.0], "s"),  # the boundary belongs to the larger unit
        ([1e-3], "ms"),
        ([], "s"),  # nothing to go by: the first unit
        ([0.0, 0.0], "s"),
        ([0.0, 0.0, 0.002], "ms"),  # zeros do not pull the median down
        ([5e-4, 2.0, 3.0], "s"),  # the median decides, not the smallest
        ([5e-4, 6e-4, 3.0], "µs"),
    ],
)
def test_pick_unit_seconds_by_median(values: list[float], expected: str) -> None:
    name, scale = pick_unit(values, TIME_UNITS)
    assert name == expected
    assert scale == dict(TIME_UNITS)[expected]


def test_time_columns() -> None:
    assert format_column("train_seconds", [19.2, 408.0]) == ("train time (s)",
                                                             ["19.2", "408.0"])
    assert format_column("seconds_per_epoch", [0.0123, 0.0456]) == ("time / epoch (ms)",
                                                                    ["12.3", "45.6"])
    assert format_column("latency_median_s", [1.6e-6, 9.3e-7, 5.8e-6]) == (
        "latency / sample (µs)", ["1.6", "0.93", "5.8"])
    assert format_column("latency_single_median_s", [4.5e-9]) == ("latency, batch 1 (ns)",
                                                                  ["4.5"])


def test_byte_columns_use_decimal_units() -> None:
    assert format_column("checkpoint_bytes", [9_769_080]) == ("checkpoint size (MB)", ["9.8"])
    assert format_column("state_dict_bytes", [19_763, 12_600]) == ("model size (kB)",
                                                                   ["19.8", "12.6"])
    assert format_column("peak_memory_bytes", [2.5e9]) == ("peak memory (GB)", ["2.5"])
    assert format_column("peak_memory_bytes", [999]) == ("peak memory (B)", ["999.0"])
    assert format_column("checkpoint_bytes", [1000]) == ("checkpoint size (kB)", ["1.0"])


def test_co2eq_columns_from_kilograms() -> None:
    assert format_column("train_co2eq_kg", [1.5]) == ("CO2eq (train) (kg)", ["1.5"])
    assert format_column("train_co2eq_kg", [0.004]) == ("CO2eq (train) (g)", ["4.0"])
    assert format_column("train_co2eq_kg", [2.5e-6]) == ("CO2eq (train) (mg)", ["2.5"])
    assert format_column("train_co2eq_kg", [6.233e-7, 3e-8]) == ("CO2eq (train) (µg)",
                                                                 ["623.3", "30.0"])
    assert format_column("inference_per_1000_co2eq_kg", [1e-12]) == (
        "CO2eq / 1k inferences (µg)", ["0.001"])
    assert [name for name, _ in MASS_UNITS] == ["kg", "g", "mg", "µg"]


def test_energy_columns_from_kilowatt_hours() -> None:
    assert format_column("train_energy_kwh", [2.0]) == ("energy (train) (kWh)", ["2.0"])
    assert format_column("train_energy_kwh", [0.0021]) == ("energy (train) (Wh)", ["2.1"])
    assert format_column("train_energy_kwh", [3e-6]) == ("energy (train) (mWh)", ["3.0"])
    assert [name for name, _ in ENERGY_UNITS] == ["kWh", "Wh", "mWh"]
    assert [name for name, _ in BYTE_UNITS] == ["GB", "MB", "kB", "B"]


def test_percent_count_and_plain_columns() -> None:
    assert format_column("test_accuracy", [0.9671, 1.0, 0.0]) == ("test acc (%)",
                                                                  ["96.7", "100.0", "0.0"])
    assert format_column("train_accuracy", [0.25]) == ("train acc (%)", ["25.0"])
    assert format_column("flops", [814_090, 1184]) == ("FLOPs / sample", ["814,090", "1,184"])
    assert format_column("params", [1_210]) == ("params", ["1,210"])
    assert format_column("batch_size", [64]) == ("batch", ["64"])
    assert format_column("lr", [0.001, 0.1]) == ("lr", ["0.001", "0.1"])
    assert format_column("train_samples_per_second", [12345.6]) == ("samples / s", ["12,346"])
    assert format_column("model", ["784-1024-10"]) == ("model", ["784-1024-10"])
    assert format_column("dataset", ["digits"]) == ("data set", ["digits"])


def test_missing_values_are_na() -> None:
    nan = float("nan")
    # Missing values take no part in picking the unit.
    assert format_column("train_seconds", [None, nan, 0.002]) == ("train time (ms)",
                                                                  ["n/a", "n/a", "2.0"])
    assert format_column("train_seconds", [None, None]) == ("train time (s)", ["n/a", "n/a"])
    assert format_column("test_accuracy", [None, nan, 0.5]) == ("test acc (%)",
                                                                ["n/a", "n/a", "50.0"])
    assert format_column("flops", [None, nan]) == ("FLOPs / sample", ["n/a", "n/a"])
    assert format_column("train_co2eq_kg", [None]) == ("CO2eq (train) (kg)", ["n/a"])
    assert format_column("model", [None]) == ("model", ["n/a"])


def test_unknown_columns_show_str() -> None:
    assert format_column("note", ["x", 3, 3.25, True, None, float("nan")]) == (
        "note", ["x", "3", "3.25", "True", "n/a", "n/a"])
    assert format_column("tests", [["a::b"]]) == ("tests", ["['a::b']"])


def test_render_table_is_github_markdown() -> None:
    table = render_table([{"model": "a", "batch_size": 1000}, {"model": "b"}],
                         ["model", "batch_size"])
    assert table == ("| model   | batch   |\n"
                     "|---------|---------|\n"
                     "| a       | 1,000   |\n"
                     "| b       | n/a     |")
    assert parse_table(table) == [["model", "batch"], ["a", "1,000"], ["b", "n/a"]]


def test_sort_rows_groups_by_first_seen_model_then_batch_size() -> None:
    rows = [
        {"model": "z", "dataset": "d", "batch_size": 64, "seed": 0},
        {"model": "a", "dataset": "d", "batch_size": 8, "seed": 0},
        {"model": "z", "dataset": "d", "batch_size": 8, "seed": 1},
        {"model": "z", "dataset": "d", "batch_size": 8, "seed": 0},
        {"model": "a", "dataset": "d", "batch_size": None, "seed": 0},
    ]
    order = [(row["model"], row["batch_size"], row["seed"]) for row in sort_rows(rows)]
    assert order == [("z", 8, 0), ("z", 8, 1), ("z", 64, 0), ("a", 8, 0), ("a", None, 0)]


def test_merge_outcome_keeps_the_worse() -> None:
    assert merge_outcome(None, "passed") == "passed"
    assert merge_outcome("failed", "passed") == "failed"
    assert merge_outcome("passed", "failed") == "failed"
    assert merge_outcome("skipped", "interrupted") == "interrupted"
    assert merge_outcome("interrupted", "skipped") == "interrupted"


def test_table_columns() -> None:
    rows = [{"model": "m", "flops": 1, "outcome": "passed", "extra": "x", "listed": [1]}]
    assert table_columns(rows, ("outcome", "model")) == ["outcome", "model"]
    # defaults present (in default order), then scalar keys the hooks added
    assert table_columns(rows, None, {"model", "flops", "outcome"}) == [
        "model", "flops", "outcome", "extra"]
    # a key the rows already had is no added column
    assert table_columns(rows, None, {"model", "flops", "outcome", "extra"}) == [
        "model", "flops", "outcome"]
    # a default the session turned off is left out, unless asked for
    assert table_columns(rows, None, {"model", "flops", "outcome"}, turned_off={"flops"}) == [
        "model", "outcome", "extra"]
    assert table_columns(rows, ("flops",), turned_off={"flops"}) == ["flops"]


def test_no_co2_turns_off_the_carbon_figures() -> None:
    """``--batchprof-no-co2`` drops the CO2eq column (every row's would read n/a); the
    switch each figure answers to is declared with the figure."""
    off = turned_off(Settings(no_co2=True))
    assert "train_co2eq_kg" in off and "train_energy_kwh" in off
    assert all(COLUMNS[key].off == "no_co2" for key in off)
    assert turned_off(Settings()) == frozenset()
    row = {"model": "m", "train_co2eq_kg": None, "outcome": "passed"}
    assert "train_co2eq_kg" not in table_columns([row], None, set(row), off)
    assert "train_co2eq_kg" in table_columns([row], None, set(row), turned_off(Settings()))


# ---------------------------------------------------------------- storage


def test_write_atomic_writes_and_replaces_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "new" / "report.md"
    assert write_atomic(target, "first") == target  # makes the directory
    assert target.read_text(encoding="utf-8") == "first"
    write_atomic(target, "second, µs")
    assert target.read_text(encoding="utf-8") == "second, µs"
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(path.name for path in target.parent.iterdir()) == ["report.md"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    write_atomic(target, "old")

    def failing_replace(source: object, destination: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]


def test_write_atomic_files_get_the_umask_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path = write_atomic(tmp_path / "report.md", "text")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_report_reads_what_report_json_wrote(tmp_path: Path) -> None:
    rows = [{"model": "m", "batch_size": 8, "test_accuracy": 0.5, "history": [{"epoch": 1}]}]
    path = write_atomic(tmp_path / "r.json", report_json(rows, ["model", "batch_size"],
                                                         {"torch": "x"}, True))
    document = load_report(path)
    assert document["rows"] == rows
    assert document["partial"] is True
    assert table_from_report(path) == render_table(rows, ["model", "batch_size"])


def valid_document() -> dict[str, object]:
    return {"schema": storage.SCHEMA, "schema_version": storage.SCHEMA_VERSION,
            "partial": False, "environment": {}, "columns": ["model"], "rows": []}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        ("[1, 2]", "not a pytest-batchprof report"),
        (json.dumps({**valid_document(), "schema": "other"}), "not a pytest-batchprof report"),
        (json.dumps({key: value for key, value in valid_document().items() if key != "schema"}),
         "not a pytest-batchprof report"),
        (json.dumps({**valid_document(), "schema_version": 2}), "schema version 2"),
        (json.dumps({key: value for key, value in valid_document().items()
                     if key != "schema_version"}), "schema version None"),
        (json.dumps({key: value for key, value in valid_document().items() if key != "rows"}),
         "has no rows or columns"),
        (json.dumps({**valid_document(), "rows": {"a": 1}}), "has no rows or columns"),
        (json.dumps({key: value for key, value in valid_document().items()
                     if key != "columns"}), "has no rows or columns"),
    ],
)
def test_load_report_errors_name_the_path(tmp_path: Path, content: str | bytes | None,
                                          message: str) -> None:
    path = tmp_path / "report.json"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ReportError) as caught:
        load_report(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_load_report_accepts_the_minimal_document(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(valid_document()))
    assert load_report(path)["columns"] == ["model"]
    assert table_from_report(path) == "| model   |\n|---------|"


# ---------------------------------------------------------------- collector


def test_collector_merges_one_run_of_several_tests() -> None:
    row = {"model": "m", "batch_size": 8, "outcome": None, "tests": []}
    collector = SummaryCollector()
    collector.add([row], "t.py::test_bad", "failed")
    collector.add([dict(row)], "t.py::test_ok", "passed")
    collector.add([{**row, "batch_size": 16}], "t.py::test_ok", "passed")
    assert [(kept["batch_size"], kept["outcome"], kept["tests"])
            for kept in collector.rows.values()] == [
        (8, "failed", ["t.py::test_bad", "t.py::test_ok"]), (16, "passed", ["t.py::test_ok"])]
    assert row["tests"] == []  # the report's own row is not changed


def test_collector_takes_the_outcome_of_a_rerun_attempt_from_the_last() -> None:
    """pytest-rerunfailures reports a failed attempt it runs again as ``rerun``: no outcome
    of the run, whose row reads as the last attempt ended."""
    row = {"model": "m", "batch_size": 8, "outcome": None, "tests": []}
    collector = SummaryCollector()
    collector.add([row], "t.py::test_flaky", "rerun")
    collector.add([dict(row)], "t.py::test_flaky", "passed")
    [kept] = collector.rows.values()
    assert (kept["outcome"], kept["tests"]) == ("passed", ["t.py::test_flaky"])


def test_collector_interrupted_run_lists_no_empty_test_id() -> None:
    collector = SummaryCollector()
    collector.add([{"model": "m", "outcome": None, "tests": []}], "", "interrupted")
    [kept] = collector.rows.values()
    assert kept["outcome"] == "interrupted"
    assert kept["tests"] == []


# ---------------------------------------------------------------- a real session


MAIN_TESTS = """
    import pytest

    @pytest.mark.parametrize("hidden", [8, 16])
    def test_train(trained_mlp, batch_size, hidden):
        trained_mlp(hidden=hidden)
"""


def test_session_report_files_table_and_step_summary(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    step_summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    out = pytester.path / "out"
    pytester.makepyfile(test_main=MAIN_TESTS)
    # 64 runs before 32 and 64-8-10 before 64-16-10: the table sorts the one, not the other.
    result = run(pytester, "test_main.py", *DIGITS, "--batch-sizes", "64,32",
                 "--batchprof-report", str(out))
    result.assert_outcomes(passed=4)
    assert summary_separators(result) == [
        line for line in result.outlines if "batchprof summary" in line]
    assert "(partial)" not in summary_separators(result)[0]

    # ---- the terminal table
    printed = terminal_table(result)
    table = parse_table(printed)
    assert_headers(table[0], DEFAULT_HEADERS)
    assert len(table) == 5
    assert list(zip(column(table, "model"), column(table, "batch"), strict=True)) == [
        ("64-8-10", "32"), ("64-8-10", "64"), ("64-16-10", "32"), ("64-16-10", "64")]
    assert column(table, "data set") == ["digits"] * 4
    assert column(table, "epochs") == ["1"] * 4
    assert column(table, "FLOPs / sample") == [FLOPS[model] for model in column(table, "model")]
    assert column(table, "params") == [PARAMS[model] for model in column(table, "model")]
    assert column(table, "outcome") == ["passed"] * 4
    for cell in column(table, "test acc (%)"):
        assert re.fullmatch(r"\d{1,3}\.\d", cell)

    # ---- the files
    markdown_path = report_path(result)
    assert markdown_path.parent == out
    stem = markdown_path.stem
    assert re.fullmatch(r"batchprof-\d{8}-\d{6}", stem)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [f"{stem}.md", f"{stem}.json", f"{stem}.csv", "latest.md", "latest.json",
         *(stem + suffix for suffix in PLOT_SUFFIXES)])
    no_temporary_files(out)
    assert (out / "latest.md").read_bytes() == markdown_path.read_bytes()
    assert (out / "latest.json").read_bytes() == (out / f"{stem}.json").read_bytes()

    # ---- the markdown
    markdown = markdown_path.read_text(encoding="utf-8")
    assert "Partial" not in markdown
    assert summary_section(markdown) == printed
    tables = markdown_tables(markdown)
    environment = dict(tables[0][1][1:])
    for key in ("date", "machine", "cpu", "torch", "python", "device", "option dataset",
                "option seed", "option epochs", "option batch_sizes"):
        assert key in environment, key
    assert environment["torch"] == torch.__version__
    assert (environment["device"], environment["gpu"]) == ("cpu", "none")  # the runs' own
    assert (environment["option dataset"], environment["option seed"],
            environment["option epochs"], environment["option batch_sizes"]) == (
        "digits", "0", "1", "64,32")
    assert environment["machine"]

    summaries = [rows for heading, rows in tables if heading == "Summary"]
    assert summaries == [table]

    links = image_links(markdown)
    assert sorted(links) == sorted(stem + suffix for suffix in PLOT_SUFFIXES)
    for link in links:
        assert (markdown_path.parent / link).read_bytes().startswith(PNG_MAGIC)

    titles = [f"{model} on digits, batch {batch}, seed 0" for model in ("64-8-10", "64-16-10")
              for batch in (32, 64)]
    headings = markdown_headings(markdown)
    assert [text for tag, text in headings if tag == "h2"] == [
        "Summary", "Plots", "Per-epoch history"]
    assert [text for tag, text in headings if tag == "h3"] == titles
    histories = [(heading, rows) for heading, rows in tables if heading in titles]
    assert [heading for heading, _ in histories] == titles
    for _, rows in histories:
        assert rows[0] == HISTORY_HEADERS
        assert [row[0] for row in rows[1:]] == ["01"]

    # ---- the JSON, and the table loaded back from it
    json_path = out / f"{stem}.json"
    assert table_from_report(json_path) == printed
    document = json.loads(json_path.read_text(encoding="utf-8"))
    assert set(document) >= {"schema", "schema_version", "partial", "environment", "columns",
                             "rows"}
    assert (document["schema"], document["schema_version"], document["partial"]) == (
        "pytest-batchprof/report", 1, False)
    assert document["environment"]["torch"] == torch.__version__
    assert document["columns"] == [key for key in DEFAULT_COLUMNS  # CO2eq: off (--no-co2)
                                   if key not in OPTIONAL_COLUMNS and COLUMNS[key].off is None]
    assert [(row["model"], row["batch_size"]) for row in document["rows"]] == [
        ("64-8-10", 32), ("64-8-10", 64), ("64-16-10", 32), ("64-16-10", 64)]
    for row in document["rows"]:
        assert set(row) <= KNOWN_COLUMNS  # every key may be named by --batchprof-columns
        assert row["outcome"] == "passed"
        assert row["tests"] == [f"test_main.py::test_train[bs{row['batch_size']}-"
                                f"{row['hidden'][0]}]"]
        [epoch] = row["history"]
        assert set(epoch) == {"epoch", "train_loss", "train_accuracy", "val_loss",
                              "val_accuracy", "train_seconds", "eval_seconds",
                              "train_metric", "val_metric"}
        assert (epoch["train_metric"], epoch["val_metric"]) == (None, None)  # scored by accuracy
        assert epoch["epoch"] == 1
        assert epoch["val_accuracy"] == row["val_accuracy"]
        assert f"{100 * row['test_accuracy']:.1f}" in column(table, "test acc (%)")

    # ---- the CSV: one line per run
    csv_text = (out / f"{stem}.csv").read_text(encoding="utf-8")
    assert len(csv_text.splitlines()) == 1 + 4
    records = list(csv.DictReader(csv_text.splitlines()))
    assert [(record["model"], record["batch_size"]) for record in records] == [
        ("64-8-10", "32"), ("64-8-10", "64"), ("64-16-10", "32"), ("64-16-10", "64")]
    assert [json.loads(record["history"]) for record in records] == [
        row["history"] for row in document["rows"]]
    assert {record["outcome"] for record in records} == {"passed"}

    # ---- GitHub's step summary got the table
    assert step_summary.read_text(encoding="utf-8") == f"## pytest-batchprof\n\n{printed}\n\n"

    # ---- a second session into the same directory, with chosen columns
    first_markdown = markdown_path.read_bytes()
    pytester.makepyfile(test_second="""
        def test_one(trained_mlp):
            trained_mlp(hidden=8, batch_size=32)
    """)
    second = run(pytester, "test_second.py", *DIGITS, "--batchprof-report", str(out),
                 "--batchprof-columns", "model,batch_size,test_accuracy")
    second.assert_outcomes(passed=1)
    second_printed = terminal_table(second)
    second_table = parse_table(second_printed)
    assert second_table[0] == ["model", "batch", "test acc (%)"]
    assert second_table[1][:2] == ["64-8-10", "32"]
    second_path = report_path(second)
    assert second_path.stem != stem
    assert markdown_path.read_bytes() == first_markdown  # the first report is kept
    assert (out / "latest.md").read_bytes() == second_path.read_bytes()
    assert (out / "latest.json").read_bytes() == (out / f"{second_path.stem}.json").read_bytes()
    assert load_report(out / "latest.json")["columns"] == ["model", "batch_size",
                                                           "test_accuracy"]
    assert table_from_report(out / "latest.json") == second_printed
    assert len(list(out.glob("batchprof-*.md"))) == 2
    no_temporary_files(out)
    assert step_summary.read_text(encoding="utf-8") == (
        f"## pytest-batchprof\n\n{printed}\n\n## pytest-batchprof\n\n{second_printed}\n\n")


# ---------------------------------------------------------------- columns


ONE_RUN = """
    def test_one(trained_mlp):
        trained_mlp(hidden=8, batch_size=32)
"""


def test_ini_columns_and_no_report(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        batchprof_columns = batch_size, model, test_loss
    """)
    pytester.makepyfile(ONE_RUN)
    result = run(pytester, *DIGITS, "--batchprof-report", "out", "--batchprof-no-report")
    result.assert_outcomes(passed=1)
    header, body = parse_table(terminal_table(result))
    assert header == ["batch", "model", "test loss"]
    assert body[:2] == ["32", "64-8-10"]
    assert re.fullmatch(r"\d+\.\d{4}", body[2])
    assert "which no row has" not in result.stdout.str()
    assert not any(line.startswith("report:") for line in result.outlines)
    assert not (pytester.path / "out").exists()
    assert not (pytester.path / "reports").exists()


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_unknown_column_is_a_usage_error_before_training(pytester: pytest.Pytester,
                                                         xdist: tuple[str, ...]) -> None:
    pytester.makeini("""
        [pytest]
        batchprof_columns = batch_size, model, bogus
    """)
    pytester.makepyfile(ONE_RUN)
    result = run(pytester, *DIGITS, *xdist)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.outlines + result.errlines if line.startswith("ERROR")]
    assert len(errors) == 1, errors
    known = sorted(KNOWN_COLUMNS)
    assert errors[0] == (f"ERROR: batchprof_columns (ini) names bogus, which no row has; "
                         f"known columns: {', '.join(known)}")
    assert {"model", "test_accuracy", "test_loss", "seeds", "outcome"} <= set(known)
    output = result.stdout.str() + result.stderr.str()
    assert "batchprof: training" not in output
    assert "Traceback" not in output


def test_a_column_a_hook_adds_may_be_named(pytester: pytest.Pytester) -> None:
    """Names a ``pytest_batchprof_summary`` hook may add are known only from the rows."""
    pytester.makeconftest("""
        def pytest_batchprof_summary(config, rows):
            for row in rows:
                row["note"] = "mine"
    """)
    pytester.makepyfile(ONE_RUN)
    result = run(pytester, *DIGITS, "--batchprof-no-report", "--batchprof-columns", "model,note")
    result.assert_outcomes(passed=1)
    assert parse_table(terminal_table(result)) == [["model", "note"], ["64-8-10", "mine"]]
    assert "which no row has" not in result.stdout.str()


@pytest.mark.parametrize("value", ["model,,x", "a-b", "model,", "model,batch size"])
def test_malformed_columns_are_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run(pytester, *DIGITS, "--batchprof-columns", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --batchprof-columns has *, which is not a column name*"])
    assert "passed" not in result.stdout.str()


# ---------------------------------------------------------------- hooks


HOOKS_CONFTEST = """
    import json

    def pytest_batchprof_summary(config, rows):
        with open(config.rootpath / "summary-calls.jsonl", "a") as handle:
            seen = [[row["model"], row["batch_size"], row["outcome"], row["tests"]]
                    for row in rows]
            handle.write(json.dumps(seen) + "\\n")
        for row in rows:
            row["note"] = "x"
            del row["flops"]
        rows[:] = [row for row in rows if row["batch_size"] != 64]
        rows.append({"model": "hand-made", "dataset": "none", "batch_size": 3, "note": 3.25,
                     "outcome": "passed"})

    def pytest_batchprof_markdown(config, markdown):
        return "# replaced\\n"
"""

HOOKS_TESTS = """
    import pytest

    @pytest.mark.parametrize("batch_size", [64, 32])
    def test_train(trained_mlp, batch_size):
        trained_mlp(hidden=16, batch_size=batch_size)
"""


def test_hooks_change_rows_and_replace_markdown(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOOKS_CONFTEST)
    pytester.makepyfile(test_hooks=HOOKS_TESTS)
    result = run(pytester, *DIGITS, "--batchprof-report", "out")
    result.assert_outcomes(passed=2)

    calls = (pytester.path / "summary-calls.jsonl").read_text().splitlines()
    assert len(calls) == 1  # once per session
    assert json.loads(calls[0]) == [  # sorted rows, outcomes and tests already set
        ["64-16-10", 32, "passed", ["test_hooks.py::test_train[32]"]],
        ["64-16-10", 64, "passed", ["test_hooks.py::test_train[64]"]],
    ]

    printed = terminal_table(result)
    table = parse_table(printed)
    expected_headers = [header for header in DEFAULT_HEADERS if header != "FLOPs / sample"]
    assert_headers(table[0], [*expected_headers, "note"])
    assert len(table) == 3
    trained, added = table[1:]
    assert trained[:3] == ["64-16-10", "digits", "32"]
    assert trained[-2:] == ["passed", "x"]
    assert added[:3] == ["hand-made", "none", "3"]
    assert added[-2:] == ["passed", "3.25"]
    assert added[3:-2] == ["n/a"] * (len(added) - 5)

    markdown_path = pytester.path / report_path(result)
    assert markdown_path.read_text(encoding="utf-8") == "# replaced\n"
    assert (markdown_path.parent / "latest.md").read_text(encoding="utf-8") == "# replaced\n"
    json_path = markdown_path.with_suffix(".json")
    assert table_from_report(json_path) == printed
    document = load_report(json_path)
    assert "flops" not in document["columns"]
    assert document["columns"][-1] == "note"
    assert [(row["model"], row["batch_size"]) for row in document["rows"]] == [
        ("64-16-10", 32), ("hand-made", 3)]
    records = list(csv.DictReader(markdown_path.with_suffix(".csv").read_text().splitlines()))
    assert [record["note"] for record in records] == ["x", "3.25"]


def test_markdown_hook_returning_none_keeps_and_sees_the_markdown(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_batchprof_markdown(config, markdown):
            (config.rootpath / "seen.md").write_text(markdown, encoding="utf-8")
    """)
    pytester.makepyfile(ONE_RUN)
    result = run(pytester, *DIGITS, "--batchprof-report", "out")
    result.assert_outcomes(passed=1)
    written = (pytester.path / report_path(result)).read_text(encoding="utf-8")
    seen = (pytester.path / "seen.md").read_text(encoding="utf-8")
    assert seen == written
    assert written.startswith("# pytest-batchprof report\n")
    assert summary_section(written) == terminal_table(result)


# ---------------------------------------------------------------- xdist


def test_xdist_renders_one_table_on_the_controller(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_xdist="""
        import pytest

        @pytest.mark.parametrize("batch_size", [64, 8, 32, 16])
        def test_train(trained_mlp, batch_size):
            trained_mlp(hidden=16, batch_size=batch_size)
    """)
    result = run(pytester, *DIGITS, "-n", "2", "--batchprof-report", "out")
    result.assert_outcomes(passed=4)
    assert len(summary_separators(result)) == 1
    assert sum("batchprof summary" in line for line in result.outlines) == 1
    printed = terminal_table(result)
    table = parse_table(printed)
    assert column(table, "batch") == ["8", "16", "32", "64"]
    assert column(table, "model") == ["64-16-10"] * 4
    assert column(table, "outcome") == ["passed"] * 4
    out = pytester.path / "out"
    assert len(list(out.glob("*.md"))) == 2  # the report and latest.md
    assert len(list(out.glob("*.json"))) == 2
    assert len(list(out.glob("*.csv"))) == 1
    assert len(list(out.glob("*.png"))) == 3
    no_temporary_files(out)
    assert table_from_report(out / "latest.json") == printed
    rows = load_report(out / "latest.json")["rows"]
    assert sorted(test for row in rows for test in row["tests"]) == sorted(
        f"test_xdist.py::test_train[{size}]" for size in (8, 16, 32, 64))


# ---------------------------------------------------------------- interruption and failure


def test_keyboard_interrupt_keeps_the_finished_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stop="""
        def test_a_finishes(trained_mlp):
            trained_mlp(hidden=16, batch_size=32)

        def test_b_interrupted(trained_mlp):
            trained_mlp(hidden=8, batch_size=32)
            raise KeyboardInterrupt

        def test_c_never_runs(trained_mlp):
            trained_mlp(hidden=4, batch_size=32)
    """)
    result = run(pytester, *DIGITS, "--batchprof-report", "out")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "batchprof summary (partial)" in summary_separators(result)[0]
    table = parse_table(terminal_table(result))
    assert [row[0] for row in table[1:]] == ["64-16-10", "64-8-10"]  # no 64-4-10
    assert column(table, "outcome") == ["passed", "interrupted"]

    markdown_path = pytester.path / report_path(result)
    assert "Partial" in markdown_path.read_text(encoding="utf-8")
    document = load_report(markdown_path.with_suffix(".json"))
    assert document["partial"] is True
    assert [row["model"] for row in document["rows"]] == ["64-16-10", "64-8-10"]
    assert document["rows"][0]["tests"] == ["test_stop.py::test_a_finishes"]
    assert (markdown_path.parent / "latest.json").read_bytes() == (
        markdown_path.with_suffix(".json").read_bytes())
    no_temporary_files(markdown_path.parent)


def test_a_test_that_passes_on_a_rerun_is_passed(pytester: pytest.Pytester) -> None:
    """pytest-rerunfailures runs a failed test again; the run's outcome is the last
    attempt's, in the table, the JSON and a saved baseline."""
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_flaky="""
        from pathlib import Path

        def test_flaky(trained_mlp):
            trained_mlp(hidden=8, batch_size=32)
            attempt = Path("attempted")
            if not attempt.exists():
                attempt.write_text("once")
                raise AssertionError("fails on its first attempt only")
    """)
    result = run(pytester, *DIGITS, "--reruns", "1", "--batchprof-report", "out",
                 "--batchprof-save", "base")
    assert (result.parseoutcomes()["passed"], result.parseoutcomes()["rerun"]) == (1, 1)
    assert result.ret == pytest.ExitCode.OK
    (separator,) = summary_separators(result)
    assert "(partial)" not in separator
    assert column(parse_table(terminal_table(result)), "outcome") == ["passed"]
    report = load_report(pytester.path / "out" / "latest.json")
    baseline = load_report(pytester.path / "out" / "baselines" / "base.json")
    for document in (report, baseline):
        assert [(row["outcome"], row["tests"]) for row in document["rows"]] == [
            ("passed", ["test_flaky.py::test_flaky"])]


def test_failure_marks_the_row_not_the_session_partial(pytester: pytest.Pytester) -> None:
    """Every run finished and one assertion failed: the failed test's row says so, and the
    report is whole (partial is for sessions stopped before every test ran)."""
    pytester.makepyfile(test_fail="""
        def test_bad(trained_mlp):
            run = trained_mlp(hidden=16, batch_size=32)
            assert run.test_accuracy > 2, "an accuracy above 200 %"

        def test_ok_same_config(trained_mlp):
            trained_mlp(hidden=16, batch_size=32)

        def test_other(trained_mlp):
            trained_mlp(hidden=8, batch_size=32)
    """)
    result = run(pytester, *DIGITS, "--batchprof-report", "out")
    result.assert_outcomes(passed=2, failed=1)
    assert len([line for line in result.outlines  # the run both tests use is trained once
                if line.startswith("batchprof: training 64-16-10 on digits, batch 32,")]) == 1
    (separator,) = summary_separators(result)
    assert "(partial)" not in separator
    table = parse_table(terminal_table(result))
    # one row for the run both tests used, with the worse outcome though the pass came last
    assert [(row[0], row[-1]) for row in table[1:]] == [("64-16-10", "failed"),
                                                        ("64-8-10", "passed")]
    markdown_path = pytester.path / report_path(result)
    assert "Partial" not in markdown_path.read_text(encoding="utf-8")
    document = load_report(markdown_path.with_suffix(".json"))
    assert document["partial"] is False
    assert document["rows"][0]["tests"] == ["test_fail.py::test_bad",
                                            "test_fail.py::test_ok_same_config"]
    assert document["rows"][0]["outcome"] == "failed"

    # stopped at the first failure (-x), the session did not run every test: partial
    stopped = run(pytester, *DIGITS, "-x", "--batchprof-no-report")
    stopped.assert_outcomes(failed=1)
    assert "batchprof summary (partial)" in summary_separators(stopped)[0]


def test_session_without_training_reports_nothing(pytester: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    step_summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    pytester.makepyfile(test_quiet="""
        def test_data_only(dataset):
            assert dataset.name == "digits"

        def test_plain():
            pass
    """)
    result = run(pytester, *DIGITS)
    result.assert_outcomes(passed=2)
    assert "batchprof summary" not in result.stdout.str()
    assert not any(line.startswith("report:") for line in result.outlines)
    assert not (pytester.path / "reports").exists()
    assert not step_summary.exists()
    # nothing but the test file (and the caches of Python and pytest-benchmark)
    assert [name for name in os.listdir(pytester.path)
            if name != "__pycache__" and not name.startswith(".")] == ["test_quiet.py"]


def test_the_report_device_is_the_runs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """An xdist controller trains nothing: its report names the workers' devices, and the
    GPU models behind them once each."""
    collector = SummaryCollector()
    for device, batch in (("cuda:1", 16), ("cuda:0", 16), ("cuda:0", 64)):
        collector.add([{"model": "m", "batch_size": batch, "device": device, "tests": []}],
                      f"t{batch}{device}", "passed")
    assert collector.devices() == "cuda:0, cuda:1"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100")
    env = storage.environment({}, collector.devices())
    assert (env["device"], env["gpu"]) == ("cuda:0, cuda:1", "NVIDIA H100")
    assert storage.environment({}, "cpu")["gpu"] == "none"


def test_one_declaration_gives_the_default_columns_folding_and_compared_figures() -> None:
    """The figures' table (reports.figures) is the one place their roles are declared."""
    from pytest_batchprof.reports import figures

    assert figures.DEFAULT_COLUMNS == (
        "model", "dataset", "batch_size", "epochs", "lr_grid_note", "threads_note",
        "train_seconds", "seconds_per_epoch", "scaling_efficiency", "train_accuracy",
        "val_accuracy", "test_accuracy", "train_metric", "val_metric", "test_metric",
        "latency_median_s", "flops", "params",
        "checkpoint_bytes", "train_co2eq_kg", "target_steps", "target_samples",
        "target_epochs", "target_seconds", "critical_batch", "critical_batch_low",
        "critical_batch_high", "critical_batch_fit", "critical_batch_fit_low",
        "critical_batch_fit_high", "critical_batch_ratio", "max_batch_size", "data_note",
        "val_note", "test_source", "history_source", "outcome")
    assert {column.key for column in figures.FIGURES if column.off == "no_co2"} == {
        "train_energy_kwh", "train_co2eq_kg", "inference_per_1000_energy_kwh",
        "inference_per_1000_co2eq_kg"}
    assert {"seed", "outcome", "tests", *figures.SERIES_KEYS} == figures.NOT_FOLDED
    assert (figures.ACCURACY_KEY, figures.TIME_KEY, figures.OUT_OF_MEMORY_KEY) == (
        "test_accuracy", "train_seconds", "out_of_memory")
    assert len(figures.COLUMNS) == len(figures.FIGURES)  # no key declared twice
