"""Reading what a pytester session printed: usage errors, failure sections, the summary table.

Shared by the test modules that run real sessions (imported by name: pytest puts this
folder on ``sys.path`` for the modules in it).
"""

from __future__ import annotations

import re

import pytest


def error_lines(result: pytest.RunResult) -> list[str]:
    """Every ``ERROR`` line the session wrote, on either stream."""
    return [line for line in result.outlines + result.errlines if line.startswith("ERROR")]


def assert_one_clean_error(result: pytest.RunResult) -> str:
    """Exit code 4 with a single ``ERROR:`` line and no traceback; returns the line."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = error_lines(result)
    assert len(errors) == 1, errors
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert "Error:" not in output.replace(errors[0], "")  # no exception reprs besides the line
    return errors[0]


def failure_section(result: pytest.RunResult, test: str) -> list[str]:
    """The lines pytest prints under ``____ test ____`` (or ``ERROR at setup of test``)."""
    lines = result.outlines
    heading = re.compile(rf"^_+ (ERROR at setup of )?{re.escape(test)} _+$")
    start = next(index for index, line in enumerate(lines) if heading.match(line))
    section = []
    for line in lines[start + 1:]:
        if re.match(r"^(_{3,} .* _{3,}|=+.*=+|-+ Captured .*)$", line):
            break
        section.append(line)
    while section and not section[-1]:
        section.pop()
    return section


def summary_rows(result: pytest.RunResult) -> list[dict[str, str]]:
    """The rows of the terminal's summary table, as {header: cell}."""
    lines = result.outlines
    start = next(index for index, line in enumerate(lines) if "batchprof summary" in line)
    table = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, body = table[0], table[2:]  # table[1] is the |---| rule
    return [dict(zip(header, cells, strict=True)) for cells in body]
