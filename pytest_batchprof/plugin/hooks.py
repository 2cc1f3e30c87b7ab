"""Hooks the plugin calls, for conftests and other plugins to implement."""

from __future__ import annotations

import pytest


def pytest_batchprof_summary(config: pytest.Config, rows: list[dict[str, object]]) -> None:
    """Change the summary rows in place before anything is rendered.

    ``rows`` holds one dict per trained run (``Run.summary()`` plus
    ``outcome`` and ``tests``), sorted by model and batch size. Append,
    remove or edit rows; a key added to the rows becomes a column of the table
    (unless ``--batchprof-columns`` says otherwise), and a column whose key no
    row has any more is left out. Called once, on the xdist controller when
    there is one.
    """


@pytest.hookspec(firstresult=True)
def pytest_batchprof_markdown(config: pytest.Config, markdown: str) -> str | None:
    """See the session's final markdown report, e.g. to post it somewhere.

    Return a string to replace the markdown that is written to the report
    file (``$GITHUB_STEP_SUMMARY`` gets the summary table either way);
    return ``None`` to keep it.
    """
