"""The manual builds without a warning, and its reference lists all that the code has.

The manual (docs/, ``make docs``) is built once for the module, in a subprocess, with
warnings as errors. Every option that ``pytest --help`` shows in the plugin's group, every
ini name, fixture, marker, report column, hook and public name must then be an entry of the
built manual: an object of its inventory (``objects.inv``) whose page holds its anchor.
What the code has is read here independently of the docs' extension: options and ini
names from ``pytest --help``, markers from ``pytest --markers``, fixtures from the plugin
module, columns from the figures' schema and the run's settings.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")
pytest.importorskip("furo")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
HELP_GROUP = "batchprof:"


# ---------------------------------------------------------------- the checker


def read_inventory(path: Path) -> dict[tuple[str, str], str]:
    """``{("std:cmdoption", "--batchprof-epochs"): "reference/options.html#cmdoption-..."}``
    from a Sphinx inventory (version 2: four header lines, then zlib)."""
    header = path.read_bytes().split(b"\n", 4)
    if header[0].strip() != b"# Sphinx inventory version 2":
        raise ValueError(f"{path}: not a version 2 Sphinx inventory")
    entries = {}
    for line in zlib.decompress(header[4]).decode("utf-8").splitlines():
        match = re.match(r"(.+?)\s+(\S+)\s+(-?\d+)\s+?(\S*)\s+(.*)", line)
        if match:
            name, kind, _, uri, _ = match.groups()
            entries[kind, name] = uri[:-1] + name if uri.endswith("$") else uri
    return entries


def missing_from_manual(names: set[str], kind: str, inventory: dict[tuple[str, str], str],
                        html_dir: Path) -> list[str]:
    """The names that are not an entry of ``kind`` in the built manual: absent from its
    inventory, or on a page that lacks the entry's anchor."""
    missing = []
    for name in sorted(names):
        uri = inventory.get((kind, name))
        if uri is None:
            missing.append(name)
            continue
        page, _, anchor = uri.partition("#")
        html = (html_dir / page).read_text(encoding="utf-8") if (html_dir / page).is_file() else ""
        if not html or (anchor and f'id="{anchor}"' not in html):
            missing.append(name)
    return missing


# ---------------------------------------------------------------- the manual


@dataclass(frozen=True)
class Manual:
    returncode: int
    output: str
    html: Path

    def inventory(self) -> dict[tuple[str, str], str]:
        return read_inventory(self.html / "objects.inv")


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> Manual:
    """The manual, built once as ``make docs`` builds it (warnings as errors)."""
    out = tmp_path_factory.mktemp("manual")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=_clean_env(),
    )
    return Manual(result.returncode, result.stdout + result.stderr, out / "html")


def _clean_env() -> dict[str, str]:
    """The environment without this session's pytest variables (xdist's among them)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}


def _pytest(tmp_path: Path, *args: str) -> str:
    """The output of ``pytest ARGS`` in an empty directory, with the installed plugins."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=_clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def help_options(help_text: str) -> tuple[set[str], set[str]]:
    """The options of the plugin's group of ``pytest --help``, and the ini names it lists."""
    options: set[str] = set()
    inside = False
    for line in help_text.splitlines():
        if line and not line.startswith(" "):
            inside = line.startswith(HELP_GROUP)
            continue
        match = re.match(r"^  (-[^\s=,]+)", line)
        if inside and match:
            options.add(match.group(1))
    ini = set(re.findall(r"^  (batchprof_\w+) ", help_text, flags=re.MULTILINE))
    return options, ini


def plugin_markers(tmp_path: Path) -> set[str]:
    """The markers ``pytest --markers`` lists with the plugin and not without it."""
    def names(text: str) -> set[str]:
        return set(re.findall(r"^@pytest\.mark\.(\w+)", text, flags=re.MULTILINE))

    return names(_pytest(tmp_path, "--markers")) - names(
        _pytest(tmp_path, "--markers", "-p", "no:batchprof"))


def plugin_fixtures() -> set[str]:
    """The fixtures defined in the plugin module, by their pytest names."""
    from _pytest.fixtures import getfixturemarker

    import pytest_batchprof.plugin as plugin

    found = set()
    for attribute, value in vars(plugin).items():
        marker = getfixturemarker(value)
        if marker is not None:
            found.add(marker.name or attribute)
    return found


# ---------------------------------------------------------------- tests


def test_the_manual_builds_without_a_warning(manual: Manual) -> None:
    assert manual.returncode == 0, manual.output
    assert "WARNING" not in manual.output, manual.output


def test_every_option_of_pytest_help_is_in_the_reference(manual: Manual,
                                                          tmp_path: Path) -> None:
    options, ini = help_options(_pytest(tmp_path, "--help"))
    assert "--batchprof-epochs" in options and "batchprof_epochs" in ini  # the parse works
    inventory = manual.inventory()
    assert missing_from_manual(options, "std:cmdoption", inventory, manual.html) == []
    assert missing_from_manual(ini, "std:ini", inventory, manual.html) == []


def test_every_short_spelling_is_in_the_reference(manual: Manual) -> None:
    from pytest_batchprof.plugin.options import OPTIONS

    short = {option.short_flag for option in OPTIONS if option.short_flag}
    assert missing_from_manual(short, "std:cmdoption", manual.inventory(), manual.html) == []


def test_every_fixture_and_marker_is_in_the_reference(manual: Manual, tmp_path: Path) -> None:
    fixtures, markers = plugin_fixtures(), plugin_markers(tmp_path)
    assert {"trained_model", "trained_mlp", "batch_size"} <= fixtures
    assert "min_accuracy" in markers
    inventory = manual.inventory()
    assert missing_from_manual(fixtures, "std:fixture", inventory, manual.html) == []
    assert missing_from_manual(markers, "std:marker", inventory, manual.html) == []


def test_every_column_of_a_row_is_in_the_reference(manual: Manual) -> None:
    from pytest_batchprof.experiment.config import RUN_KEYS
    from pytest_batchprof.reports.figures import FIGURES

    keys = {column.key for column in FIGURES} | set(RUN_KEYS)
    assert missing_from_manual(keys, "std:column", manual.inventory(), manual.html) == []


def test_every_hook_and_public_name_is_in_the_reference(manual: Manual) -> None:
    import pytest_batchprof
    from pytest_batchprof.plugin import hooks

    inventory = manual.inventory()
    hook_names = {f"{hooks.__name__}.{name}" for name, value in vars(hooks).items()
                  if name.startswith("pytest_") and inspect.isfunction(value)}
    assert hook_names
    assert missing_from_manual(hook_names, "py:function", inventory, manual.html) == []
    documented = {name for kind, name in inventory if kind.startswith("py:")}
    public = {f"pytest_batchprof.{name}" for name in pytest_batchprof.__all__}
    assert sorted(public - documented) == []


def test_the_factories_signatures_are_in_the_reference(manual: Manual) -> None:
    page = (manual.html / "reference" / "fixtures-markers-hooks.html").read_text("utf-8")
    text = re.sub(r"<[^>]+>", "", page)
    assert "sync_batchnorm" in text  # a keyword of trained_model's factory only
    assert "activation" in text  # trained_mlp's


def test_the_check_reports_what_the_manual_lacks(tmp_path: Path) -> None:
    """The checker bites: a name missing from the inventory, or whose page lacks its
    anchor, is reported."""
    page = tmp_path / "reference" / "options.html"
    page.parent.mkdir()
    page.write_text('<dt id="cmdoption-batchprof-epochs">--batchprof-epochs</dt>', "utf-8")
    inventory = {
        ("std:cmdoption", "--batchprof-epochs"):
            "reference/options.html#cmdoption-batchprof-epochs",
        ("std:cmdoption", "--batchprof-seed"): "reference/options.html#cmdoption-batchprof-seed",
    }
    names = {"--batchprof-epochs", "--batchprof-seed", "--batchprof-new"}
    assert missing_from_manual(names, "std:cmdoption", inventory, tmp_path) == [
        "--batchprof-new", "--batchprof-seed"]
    assert missing_from_manual({"--batchprof-epochs"}, "std:ini", inventory, tmp_path) == [
        "--batchprof-epochs"]


def test_the_inventory_reader_expands_the_name_placeholder(tmp_path: Path) -> None:
    body = "trained_model std:fixture 1 reference/f.html#fixture-$ -\n"
    path = tmp_path / "objects.inv"
    path.write_bytes(b"# Sphinx inventory version 2\n# Project: x\n# Version: 1\n"
                     b"# The remainder of this file is compressed using zlib.\n"
                     + zlib.compress(body.encode()))
    assert read_inventory(path) == {
        ("std:fixture", "trained_model"): "reference/f.html#fixture-trained_model"}


def test_help_parsing_reads_only_the_plugins_group() -> None:
    text = ("general:\n  --foo=X   help naming --batchprof-lr\n\n"
            "batchprof: experiments:\n  --batchprof-epochs=N  training epochs\n"
            "                        see --batchprof-lr\n  --batchprof-no-co2\n\n"
            "Hypothesis:\n  --hypothesis-seed=S\n\n"
            "[pytest] ini-options:\n  batchprof_epochs (string): epochs\n")
    assert help_options(text) == ({"--batchprof-epochs", "--batchprof-no-co2"},
                                  {"batchprof_epochs"})
