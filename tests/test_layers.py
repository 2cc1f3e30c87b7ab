"""The package's layers: every import points down (import-linter's layers contract in
pyproject.toml, which ``make test`` also runs as ``lint-imports``).

The first test checks the package as it is. The others copy it, add one import that
points up (inside a function, or under ``TYPE_CHECKING``: both count), and see the same
contract fail on it, so an arrow that points up cannot pass unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
"""import-linter's command, from the environment running the tests (the dev extra)."""

UPWARD_IMPORTS = {
    "in a function": """

def _upward() -> object:
    from pytest_batchprof.plugin import options

    return options
""",
    "under TYPE_CHECKING": """

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_batchprof.plugin.options import OptionError
""",
}


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on ``project``'s pyproject.toml, run in ``project`` (so that its
    ``pytest_batchprof`` is the one checked), without a cache."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"],
                          cwd=project, capture_output=True, text=True, timeout=120, check=False)


def test_every_import_points_down() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout, done.stdout


@pytest.mark.parametrize("where", list(UPWARD_IMPORTS))
def test_an_import_that_points_up_breaks_the_contract(tmp_path: Path, where: str) -> None:
    """The engine importing the plugin (a layer above it) fails the check, naming both."""
    shutil.copytree(ROOT / "pytest_batchprof", tmp_path / "pytest_batchprof",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    module = tmp_path / "pytest_batchprof" / "engine" / "memory.py"
    module.write_text(module.read_text() + UPWARD_IMPORTS[where])
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("pytest_batchprof.engine is not allowed to import pytest_batchprof.plugin"
            in done.stdout), done.stdout
    assert "pytest_batchprof.engine.memory -> pytest_batchprof.plugin.options" in done.stdout
