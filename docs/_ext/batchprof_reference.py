"""The manual's reference, rendered from the code so that it cannot fall behind.

Directives (each takes no argument, and writes reStructuredText, so each goes in an .rst
page; in a MyST page it stops the build with an error saying so):

``batchprof-options``
    Every option of :data:`pytest_batchprof.plugin.options.OPTIONS`: its ``--batchprof-``
    flag, short spelling, ini twin, type, default and help, one entry per option, grouped
    into the experiments' options (which have a short spelling) and the plugin's own.
``batchprof-fixtures``
    Every fixture pytest lists for the plugin (``pytest --fixtures``), with its scope, its
    docstring and, for a fixture that returns a factory, the factory's signature.
``batchprof-markers``
    Every marker the plugin registers, as ``pytest --markers`` shows it.
``batchprof-columns``
    Every figure of :data:`pytest_batchprof.reports.figures.FIGURES` and every setting of
    :class:`~pytest_batchprof.experiment.config.RunConfig`: the keys of a report's row.
``batchprof-api``
    autodoc of every name in ``pytest_batchprof.__all__``.

Each option, ini name, fixture, marker and column is a link target of the standard
domain: ``:option:`--batchprof-epochs``` (also ``--epochs``), ``:ini:`batchprof_epochs```,
``:fixture:`trained_model```, ``:marker:`min_accuracy``` and ``:column:`test_accuracy```
(in MyST: ``{option}`--batchprof-epochs```, and so on).

Fixtures and markers are read from pytest itself, in a subprocess that loads only this
plugin (``-p pytest_batchprof.plugin`` with plugin autoloading off), so the manual shows
what a session sees.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst.states import RSTState
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id, nested_parse_with_titles

PLUGIN_MODULE = "pytest_batchprof.plugin"
REPO_ROOT = Path(__file__).resolve().parents[2]

# What a baseline comparison does with a figure, by Column.compared. A value not here
# stops the build: a new kind of comparison needs its sentence in the manual.
COMPARED = {
    None: "",
    "accuracy": ("gates: a drop of more than :option:`--batchprof-fail-drop` percentage "
                 "points fails (a run scored by another metric is gated on its test metric "
                 "instead)"),
    "time": ("gates with :option:`--batchprof-fail-slowdown`: a run more than PCT% slower "
             "fails"),
    "fit": "gates: running out of memory where the baseline's run fitted fails",
}


# ---------------------------------------------------------------- helpers


def _escape(text: str) -> str:
    """Plain text as reStructuredText that reads the same."""
    return re.sub(r"([\\`*_|<>\[\]])", r"\\\1", text)


def _linked(text: str, flags: set[str]) -> str:
    """Escaped plain text in which every known ``--batchprof-`` flag links to its entry."""
    parts = re.split(r"(--batchprof-[a-z0-9-]*[a-z0-9])", text)
    return "".join(f":option:`{part}`" if part in flags else _escape(part)
                   for part in parts)


def _indent(lines: list[str], by: int = 3) -> list[str]:
    return [(" " * by + line) if line.strip() else "" for line in lines]


def _docstring_lines(obj: object) -> list[str]:
    doc = inspect.getdoc(obj)
    return doc.splitlines() if doc else []


def _parse(directive: SphinxDirective, lines: list[str],
           sources: tuple[str, ...]) -> list[nodes.Node]:
    """Parse generated reStructuredText (titles allowed) in the directive's place; the page
    is read again whenever one of the modules in ``sources`` (or this file) changes."""
    if not isinstance(directive.state, RSTState):  # MyST would read the text as Markdown
        raise directive.error(f"{directive.name} writes reStructuredText: use it in an .rst "
                              f"page (or inside an eval-rst block)")
    import importlib

    for name in sources:
        directive.env.note_dependency(importlib.import_module(name).__file__)
    directive.env.note_dependency(__file__)
    container = nodes.section()
    container.document = directive.state.document
    source = f"<{directive.name} in {directive.env.docname}>"
    content = StringList(lines, source=source)
    nested_parse_with_titles(directive.state, content, container)
    return list(container.children)


def _list_table(header: list[str], rows: list[list[str]], widths: str | None = None,
                cls: str = "batchprof-table") -> list[str]:
    """A ``list-table`` whose cells are reStructuredText (a cell may span lines)."""
    lines = [".. list-table::", "   :header-rows: 1", f"   :class: {cls}"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        for index, cell in enumerate(row):
            cell_lines = cell.splitlines() or [""]
            bullet = "   * - " if index == 0 else "     - "
            lines.append(bullet + cell_lines[0] if cell_lines[0] else bullet.rstrip())
            lines.extend(("       " + line) if line.strip() else "" for line in cell_lines[1:])
    lines.append("")
    return lines


# ---------------------------------------------------------------- link targets


def target_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any,
                options: dict | None = None, content: list | None = None):
    """``:batchprof-target:`column:test_accuracy```: a literal that is the link target of
    the standard domain's object ``test_accuracy`` of type ``column`` (for entries inside
    tables, where an object directive cannot go)."""
    objtype, _, term = text.partition(":")
    document = inliner.document
    env = document.settings.env
    node_id = make_id(env, document, objtype, term)
    literal = nodes.literal(term, term, ids=[node_id], classes=[f"batchprof-{objtype}"])
    document.note_explicit_target(literal)
    env.get_domain("std").note_object(objtype, term, node_id, location=(env.docname, lineno))
    return [literal], []


def _marker_signature(env: Any, sig: str, signode: addnodes.desc_signature) -> str:
    """``min_accuracy(fraction, split='test')`` is shown as ``@pytest.mark.`` + it and
    named ``min_accuracy``."""
    name = sig.split("(", 1)[0].strip()
    signode += addnodes.desc_addname("@pytest.mark.", "@pytest.mark.")
    signode += addnodes.desc_name(name, name)
    rest = sig[len(name):].strip()
    if rest:
        signode += addnodes.desc_annotation(rest, rest)
    return name


def _fixture_signature(env: Any, sig: str, signode: addnodes.desc_signature) -> str:
    """``trained_model`` (the fixture's name), with its scope after it when given as
    ``trained_model [session scope]``."""
    name, _, rest = sig.partition(" ")
    signode += addnodes.desc_name(name, name)
    if rest:
        signode += addnodes.desc_annotation(" " + rest, " " + rest)
    return name


def resolve_fixture_refs(app: Sphinx, env: Any, node: Any, contnode: Any):
    """Let the docstrings' ``:func:`trained_model``` (written for the code's readers) link
    to the fixture's entry."""
    if node.get("refdomain") != "py" or node.get("reftype") not in ("func", "obj"):
        return None
    target = node.get("reftarget", "").lstrip("~.")
    target = target.removeprefix(PLUGIN_MODULE + ".")
    std = env.get_domain("std")
    if ("fixture", target) not in std.objects:
        return None
    text = contnode.astext().removesuffix("()")  # a fixture is not called
    return std.resolve_xref(env, node["refdoc"], app.builder, "fixture", target, node,
                            nodes.literal(text, text))


# ---------------------------------------------------------------- pytest's own view


def _pytest_output(directory: str, *args: str, plugin: bool = True) -> subprocess.Popen:
    """Start ``python -m pytest ARGS`` in an empty directory with only this plugin loaded
    (or none, with ``plugin=False``)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_", "COV_CORE_"))}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                      os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    if plugin:
        command[3:3] = ["-p", PLUGIN_MODULE]
    return subprocess.Popen(command, cwd=directory, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    if process.returncode != 0:
        raise ExtensionError(f"{' '.join(process.args)} exited {process.returncode}:\n"
                             f"{out}\n{err}")
    return out


_MARKER_LINE = re.compile(r"^@pytest\.mark\.(?P<name>\w+)(?P<args>\(.*?\))?: (?P<help>.*)$")
_FIXTURE_LINE = re.compile(r"^(?P<name>\w+)(?: \[(?P<scope>\w+) scope\])? -- ")


def _markers(text: str) -> dict[str, tuple[str, str]]:
    found = {}
    for line in text.splitlines():
        match = _MARKER_LINE.match(line)
        if match:
            found[match["name"]] = (match["args"] or "", match["help"])
    return found


def _fixtures(text: str) -> list[tuple[str, str]]:
    """(name, scope) of each fixture in the section ``fixtures defined from`` the plugin."""
    found, inside = [], False
    for line in text.splitlines():
        if re.match(r"^-+ fixtures defined from ", line):
            inside = line.split("fixtures defined from ", 1)[1].strip(" -") == PLUGIN_MODULE
            continue
        if inside and line and not line.startswith(" "):
            match = _FIXTURE_LINE.match(line)
            if match:
                found.append((match["name"], match["scope"] or "function"))
    return found


def pytest_view(app: Sphinx) -> dict[str, Any]:
    """The plugin's fixtures and markers as pytest lists them; asked once per build."""
    view = getattr(app, "_batchprof_pytest_view", None)
    if view is None:
        with tempfile.TemporaryDirectory(prefix="batchprof-docs-") as directory:
            Path(directory, "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
            fixtures = _pytest_output(directory, "--fixtures", "-v")
            with_plugin = _pytest_output(directory, "--markers")
            without = _pytest_output(directory, "--markers", plugin=False)
            fixture_list = _fixtures(_finish(fixtures))
            ours, theirs = _markers(_finish(with_plugin)), _markers(_finish(without))
        markers = {name: value for name, value in ours.items() if name not in theirs}
        if not fixture_list:
            raise ExtensionError("pytest --fixtures lists no fixture of the plugin")
        if not markers:
            raise ExtensionError("pytest --markers lists no marker of the plugin")
        view = {"fixtures": fixture_list, "markers": markers}
        app._batchprof_pytest_view = view
    return view


# ---------------------------------------------------------------- options


def default_of(option: Any) -> str:
    """The default an option's help states (``(default: 64)``), else its setting's."""
    from pytest_batchprof.settings import Settings

    start = option.help.rfind("default: ")
    if start >= 0:
        start += len("default: ")
        depth = 0
        for index in range(start, len(option.help)):
            char = option.help[index]
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    return option.help[start:index]
                depth -= 1
        return option.help[start:]
    field = next(item for item in dataclasses.fields(Settings) if item.name == option.field)
    value = field.default
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


class OptionsDirective(SphinxDirective):
    """Every command-line option and its ini twin, from the option registry."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from pytest_batchprof.plugin import options as registry

        flags = {option.flag for option in registry.OPTIONS}
        experiments = [option for option in registry.OPTIONS if option.short_flag]
        own = [option for option in registry.OPTIONS if not option.short_flag]
        if len(experiments) + len(own) != len(registry.OPTIONS):
            raise ExtensionError("an option is in neither group")
        lines = [f"``pytest --help`` lists them in the group ``{registry.GROUP_TITLE}``.", ""]
        for title, intro, group in (
            ("Options of the experiments",
             "Each also answers to its short spelling, ``--NAME`` without the prefix, "
             "unless the project (or another plugin) defines that name.", experiments),
            ("The plugin's own options",
             "Reports, baselines, the run cache and memory: these have only their "
             "``--batchprof-`` name.", own),
        ):
            lines += [title, "-" * len(title), "", intro, ""]
            lines += _list_table(
                ["Option", "Ini name", "Default"],
                [[f":option:`{option.flag}`", f"``{option.ini}``",
                  _linked(default_of(option), flags)] for option in group],
                widths="35 35 30")
            for option in group:
                lines += self._entry(option, flags)
        return _parse(self, lines, ("pytest_batchprof.plugin.options",
                                    "pytest_batchprof.settings"))

    @staticmethod
    def _entry(option: Any, flags: set[str]) -> list[str]:
        value = "" if option.switch else f" {option.metavar}"
        spellings = [option.flag + value]
        if option.short_flag:
            spellings.append(option.short_flag + value)
        if option.switch:
            kind = ("a switch: no value on the command line; ``true`` or ``false`` in the "
                    "ini file")
        else:
            kind = f"``{option.metavar}``: {_escape(option.allowed)}"
        body = [
            f":Ini name: :batchprof-target:`ini:{option.ini}`",
            f":Type: {kind}",
            f":Default: {_linked(default_of(option), flags)}",
        ]
        if option.short_flag:
            body.insert(0, f":Short spelling: ``{option.short_flag}``")
        return [f".. option:: {', '.join(spellings)}", "",
                *_indent([_linked(option.help, flags), "", *body]), ""]


# ---------------------------------------------------------------- fixtures and markers


def factory_signature(function: Any) -> str | None:
    """``(model: object, *, batch_size: int | None = None, ...) -> Run | RepeatedRun``: the
    signature of the function a fixture returns, when it defines and returns one."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    fixture = tree.body[0]
    if not isinstance(fixture, ast.FunctionDef):
        return None
    nested = {node.name: node for node in fixture.body if isinstance(node, ast.FunctionDef)}
    returned = [node.value.id for node in fixture.body
                if isinstance(node, ast.Return) and isinstance(node.value, ast.Name)]
    if not returned or returned[-1] not in nested:
        return None
    factory = nested[returned[-1]]
    arguments = ast.unparse(factory.args)
    result = f" -> {ast.unparse(factory.returns)}" if factory.returns is not None else ""
    return f"({arguments}){result}"


class FixturesDirective(SphinxDirective):
    """Every fixture of the plugin, with its scope and docstring."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import importlib

        module = importlib.import_module(PLUGIN_MODULE)
        aliases = getattr(module, "ALIASES", {})
        lines: list[str] = []
        for name, scope in pytest_view(self.env.app)["fixtures"]:
            if not hasattr(module, name):
                raise ExtensionError(f"fixture {name} is not an attribute of {PLUGIN_MODULE}")
            function = inspect.unwrap(getattr(module, name))
            function = getattr(function, "_get_wrapped_function", lambda f=function: f)()
            body = [f":Scope: {scope}"]
            if name in aliases:
                body.append(f":Alias of: :fixture:`{aliases[name]}`")
            body += ["", *_docstring_lines(function)]
            signature = factory_signature(function)
            if signature is not None:
                body += ["", "The factory it returns:", "",
                         f".. py:function:: {name}{signature}", "   :noindex:", ""]
            lines += [f".. fixture:: {name}", "", *_indent(body), ""]
        return _parse(self, lines, (PLUGIN_MODULE, "pytest_batchprof.plugin.options"))


class MarkersDirective(SphinxDirective):
    """Every marker the plugin registers, as ``pytest --markers`` shows it."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from pytest_batchprof.plugin.options import OPTIONS

        flags = {option.flag for option in OPTIONS}
        lines: list[str] = []
        for name, (args, help_text) in pytest_view(self.env.app)["markers"].items():
            lines += [f".. marker:: {name}{args}", "", *_indent([_linked(help_text, flags)]),
                      ""]
        return _parse(self, lines, (PLUGIN_MODULE, "pytest_batchprof.plugin.options"))


# ---------------------------------------------------------------- columns


def _unit_family(units: tuple[tuple[str, float], ...]) -> str:
    import pytest_batchprof.units as unit_module

    names = ", ".join(name for name, _ in units)
    for attribute, value in vars(unit_module).items():
        if attribute.endswith("_UNITS") and value == units:
            family = attribute.removesuffix("_UNITS").lower()
            return f"{family}: {_escape(names)} (one per column, in its header)"
    return _escape(names)


class ColumnsDirective(SphinxDirective):
    """Every key of a report's row: the figures, then the run's settings."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from sphinx.pycode import ModuleAnalyzer

        from pytest_batchprof.experiment import config
        from pytest_batchprof.reports.figures import FIGURES
        from pytest_batchprof.settings import flag_of

        rows = []
        for column in FIGURES:
            if column.compared not in COMPARED:
                raise ExtensionError(f"column {column.key}: the manual has no sentence for "
                                     f"compared={column.compared!r} (docs/_ext, COMPARED)")
            shown = ("yes, when a run has it" if column.optional
                     else "yes" if column.default else "")
            notes = []
            if column.by_metric:
                notes.append("its header names the run's metric (``test rmse``)")
            if column.off:
                notes.append(f"left out with :option:`{flag_of(column.off)}`")
            if column.missing != "n/a":
                notes.append("empty where a row lacks it" if not column.missing
                             else f"``{column.missing}`` where a row lacks it")
            rows.append([
                f":batchprof-target:`column:{column.key}`",
                _escape(column.label),
                _unit_family(column.units) if column.units else "",
                shown,
                "general rule" if column.folded else "its own rule",
                COMPARED[column.compared],
                "; ".join(notes),
            ])
        lines = ["Figures", "-------", "",
                 "What a run measured (:data:`pytest_batchprof.reports.figures.FIGURES`). "
                 "*Default* says whether the summary table shows it unless "
                 ":option:`--batchprof-columns` says otherwise. *Seeds fold* says how the "
                 "row of a configuration trained with several seeds "
                 "(:option:`--batchprof-repeats`) holds it: by the general rule of "
                 ":func:`~pytest_batchprof.reports.seeds.fold` (below), or by a rule of its "
                 "own, which that function's description names. *Baseline compare* says "
                 "what a comparison with a saved baseline (:option:`--batchprof-compare`) "
                 "does with it; the other figures are stored in the baseline and shown, "
                 "never gated.", ""]
        lines += _list_table(["Key", "Label", "Unit", "Default", "Seeds fold",
                              "Baseline compare", "Notes"], rows,
                             widths="18 16 14 10 16 16 10")
        lines += [".. autofunction:: pytest_batchprof.reports.seeds.fold", ""]

        docs = ModuleAnalyzer.for_module(config.__name__).find_attr_docs()
        figure_keys = {column.key for column in FIGURES}
        settings = []
        for item in dataclasses.fields(config.RunConfig):
            key = (f":column:`{item.name}`" if item.name in figure_keys
                   else f":batchprof-target:`column:{item.name}`")
            baseline = []
            if item.metadata.get("experiment"):
                baseline.append("matches a run to its baseline entry")
            if item.metadata.get("compared"):
                said = item.metadata.get("said")
                baseline.append("stored with the entry; a change is said"
                                + (f" (*{_escape(said)}*)" if said else "")
                                + ", never failed")
            plot = "separate lines" if item.metadata.get("lines") else ""
            text = "\n".join(docs.get(("RunConfig", item.name), []))
            settings.append([key, f"``{item.type}``", "; ".join(baseline) or "identifies the run",
                             plot, text])
        lines += ["Settings of a run", "-----------------", "",
                  "What a run was trained with (:class:`~pytest_batchprof.experiment.config."
                  "RunConfig`): every one identifies the run, so rows that differ in any are "
                  "never merged; seeds fold only rows that differ in ``seed`` alone.", ""]
        lines += _list_table(["Key", "Type", "Baseline", "Plots", "Meaning"], settings,
                             widths="18 18 24 10 30")
        return _parse(self, lines, ("pytest_batchprof.reports.figures",
                                    "pytest_batchprof.experiment.config",
                                    "pytest_batchprof.units", "pytest_batchprof.reports.seeds"))


# ---------------------------------------------------------------- public API


class ApiDirective(SphinxDirective):
    """autodoc of every name that ``import pytest_batchprof`` offers."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import importlib

        package = importlib.import_module("pytest_batchprof")
        exports = package._EXPORTS
        lines = [".. py:module:: pytest_batchprof", ""]
        missing = sorted(set(package.__all__) - set(exports) - {"__version__"})
        if missing:
            raise ExtensionError(f"pytest_batchprof.__all__ has {missing} without an import")
        functions, classes = [], []
        for name in sorted(exports, key=str.lower):
            obj = getattr(package, name)
            (classes if inspect.isclass(obj) else functions).append(name)
        lines += ["Functions", "---------", ""]
        for name in functions:
            lines += [f".. autofunction:: pytest_batchprof.{name}", ""]
        lines += ["Classes", "-------", ""]
        for name in classes:
            lines += [f".. autoclass:: pytest_batchprof.{name}", "   :members:", ""]
        lines += ["Version", "-------", "", ".. py:data:: __version__",
                  "   :type: str", "",
                  f"   The installed version of the package (``{package.__version__}`` when "
                  f"this manual was built).", ""]
        return _parse(self, lines, ("pytest_batchprof",))


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_object_type("fixture", "fixture", "pair: %s; fixture",
                        parse_node=_fixture_signature)
    app.add_object_type("marker", "marker", "pair: %s; marker", parse_node=_marker_signature)
    app.add_object_type("ini", "ini", "pair: %s; ini value")
    app.add_object_type("column", "column", "pair: %s; column")
    app.add_role("batchprof-target", target_role)
    app.add_directive("batchprof-options", OptionsDirective)
    app.add_directive("batchprof-fixtures", FixturesDirective)
    app.add_directive("batchprof-markers", MarkersDirective)
    app.add_directive("batchprof-columns", ColumnsDirective)
    app.add_directive("batchprof-api", ApiDirective)
    app.connect("missing-reference", resolve_fixture_refs)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
