"""Every code example of the README and the manual runs (issue 25).

The pages read are ``README.md``, ``docs/guides/*.md`` and ``docs/results.md``. Their
fenced code blocks follow one convention, which this module parses (with markdown-it, as
GitHub and MyST read the same fences) and enforces:

* **A file of the example's project.** A block whose first line is a comment naming a
  file (``# conftest.py``, ``# models.py``, ``# test_models.py``, ``# pytest.ini``,
  ``# .github/workflows/accuracy.yml``) is that file, written as shown (the comment
  stays in it). The reader sees the name; GitHub and Sphinx render it as code.
* **One project per section.** Each level-1 or level-2 heading starts a new, empty
  project; the files of its blocks accumulate in order, and a later block naming the same
  file replaces it. Deeper headings stay in their section's project.
* **A command.** In a ``console`` block, a line starting ``$ `` is a command (a line
  ending in ``\\`` continues on the next); the lines after it, up to the next command,
  are what it printed. A ``pytest`` command is run, with ``pytester`` in-process, in
  the project as its section has built it by then, with the page's arguments
  (plus ``-p no:hypothesispytest -p no:cacheprovider``, plugins of this repository's
  dev environment that a user's has not, and ``--batchprof-device=cpu``, so that a GPU
  machine runs them as printed too), with one torch thread. Its shown output is
  checked:

  - the exit code is 0, unless the output shows ``ERROR:`` lines (a usage error: 4,
    and each line is printed verbatim) or pytest's final tally (``1 failed, 2 passed in
    3.06s``: those counts, and exit code 1 when something failed);
  - a line starting ``batchprof:`` (the plugin's own lines: a run trained or loaded, what
    was left to the project, a grid's choice) is printed with the same words (its numbers,
    measured figures among them, aside);
  - a ``FAILED node - message`` line names a test that failed;
  - a summary table (``| model | data set | ...``): the same columns in the same order
    (units, which follow the magnitudes, aside), the same number of rows, and in each row
    the cells that name the run or count its model (model, data set, batch, epochs,
    seeds, precision, processes, params, FLOPs, outcome); measured figures (times,
    accuracies, metrics, steps, a tuned lr) are not compared, since another CPU rounds
    differently;
  - every other line (epoch lines, timings, ``...`` for what was left out) illustrates.

  A ``pytest`` command naming a path the project lacks but this repository has
  (``benchmarks/``) is a command of this repository: its paths must exist and every
  option must be one pytest knows, and it is not run (the experiments take minutes).
  ``make TARGET`` must name a target of the Makefile (and its ``ARGS`` known options),
  ``python FILE`` an existing file, ``torchrun ... -m pytest ...`` a known pytest
  command; ``pip`` and ``git`` commands are not checked.
* **A snippet.** A ``python`` block without a file name is compiled, so it is at least
  valid Python. A file block in a section without a ``pytest`` command is checked the
  same way (Python compiled, YAML, TOML and ini files parsed).
* ``text`` blocks show output or layouts and are not run. Shell code is written as
  ``console`` blocks; a ``bash``/``sh``/``shell`` fence is an error, so that no command
  escapes the checks.

Across each page: every ``--batchprof-NAME`` is an option of the plugin, every
``pytest.mark.NAME`` a marker that exists, every ``make TARGET`` in backticks a target
of the Makefile, and every relative link or image a file. The README has at most 250
lines, and its quick start, copied into an empty folder (conftest, model file, test
file), runs in a pytest process of its own and prints the table it shows.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from pytest_batchprof.plugin.options import OPTIONS, _option_names

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs" / "guides").glob("*.md")), ROOT / "docs" / "results.md"]
README_MAX_LINES = 250
QUICK_START = "Quick start"
"""The README section the quick-start test copies into an empty folder."""

EXTRA_ARGS = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider", "--batchprof-device=cpu")
FILE_HEADER = re.compile(r"^# ((?:[\w.-]+/)*[\w.-]+\.(?:py|ini|toml|cfg|yml|yaml|txt))$")
SHELL_FENCES = {"bash", "sh", "shell", "zsh"}
KNOWN_FENCES = {"python", "console", "text", "yaml", "toml", "ini", "", *SHELL_FENCES}
TALLY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
NUMBER = re.compile(r"\d[\d,.]*\d|\d")
FIXED_COLUMNS = {"model", "data set", "batch", "epochs", "seeds", "precision", "processes",
                 "batch / process", "params", "FLOPs / sample", "test data",
                 "train and val figures", "outcome"}
"""The columns of a summary table that name a run or count its model: the same on every
machine. Measured figures (times, accuracies, metrics, steps to a target, a chosen lr) are
not compared: another CPU rounds differently."""
UNIT = re.compile(r"\s*\([^()]*\)$")
TAKES_VALUE = {"-m", "-k", "-p", "-n", "-W", "-c", "-o", "--tx", "--dist", "--rootdir",
               "--maxfail", "--durations", "--deselect", "--ignore", "--basetemp",
               "--benchmark-save"}
"""pytest's and its plugins' options the examples use that take a value (a path argument
is any other word that is not an option)."""
PYTEST_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}


# ---------------------------------------------------------------- the pages, parsed


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str
    section: str

    @property
    def file(self) -> str | None:
        first = self.text.split("\n", 1)[0]
        match = FILE_HEADER.match(first)
        return match.group(1) if match else None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    words: list[str]
    output: list[str]
    line: int


@dataclass
class Section:
    page: Path
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")
        return f"{self.page.stem}::{slug}"


def sections_of(page: Path) -> list[Section]:
    tokens = MarkdownIt("commonmark").parse(page.read_text())
    sections = [Section(page, "(top)")]
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag in ("h1", "h2"):
            sections.append(Section(page, tokens[index + 1].content))
        elif token.type == "fence":
            lang = token.info.split()[0] if token.info.strip() else ""
            sections[-1].blocks.append(
                Block(page, token.map[0] + 1, lang, token.content, sections[-1].title))
    return [section for section in sections if section.blocks]


def commands_of(block: Block) -> list[Command]:
    commands: list[Command] = []
    lines = block.text.rstrip("\n").split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\") and index + 1 < len(lines):
                index += 1
                text = text[:-1] + " " + lines[index].strip()
            commands.append(Command(shlex.split(text, comments=True), [], block.line + index))
        elif commands:
            commands[-1].output.append(line)
        index += 1
    return commands


ALL_SECTIONS = [section for page in PAGES for section in sections_of(page)]
ALL_BLOCKS = [block for section in ALL_SECTIONS for block in section.blocks]


def is_pytest(words: list[str]) -> bool:
    return words[:1] == ["pytest"] or words[:3] == ["python", "-m", "pytest"]


def pytest_args(words: list[str]) -> list[str]:
    return words[1:] if words[0] == "pytest" else words[3:]


def paths_in(args: list[str]) -> list[str]:
    """The arguments that are paths: not options, nor the values of options that take one,
    and spelt as paths (with a ``/`` or a ``.py``)."""
    takes_value = TAKES_VALUE | {flag for option in OPTIONS if not option.switch
                                 for flag in (option.flag, option.short_flag) if flag}
    paths, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif arg.startswith("-"):
            skip = False
        elif "/" in arg or ".py" in arg or arg == ".":
            paths.append(arg.split("::")[0])
    return paths


def runs_in_project(section: Section, command: Command, files: set[str]) -> bool:
    """A pytest command is run in the example's project unless it names a path only this
    repository has."""
    paths = paths_in(pytest_args(command.words))
    return all(path.rstrip("/") in files or any(name.startswith(path.rstrip("/") + "/")
                                                 for name in files) for path in paths)


def _files_of(section: Section) -> set[str]:
    return {block.file for block in section.blocks if block.file}


RUN_SECTIONS = [
    section for section in ALL_SECTIONS
    if not (section.page == README and section.title == QUICK_START)
    and any(block.lang == "console" and any(
        is_pytest(command.words) and runs_in_project(section, command, _files_of(section))
        for command in commands_of(block)) for block in section.blocks)
]


# ---------------------------------------------------------------- what pytest knows


@pytest.fixture(scope="module")
def known_options(request: pytest.FixtureRequest) -> set[str]:
    """Every option string of a pytest session in this environment, the plugin's short
    spellings included."""
    config = request.config
    names = _option_names(config._parser)
    names.update(option.short_flag for option in OPTIONS if option.short_flag)
    return names


def plugin_flags() -> set[str]:
    return {option.flag for option in OPTIONS}


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, flags=re.MULTILINE))


def markers_known() -> set[str]:
    names = set(PYTEST_MARKS) | {"min_accuracy", "min_metric", "max_metric", "dataset"}
    ini = configparser.ConfigParser()
    ini.read(ROOT / "benchmarks" / "pytest.ini")
    if ini.has_option("pytest", "markers"):
        names.update(line.split(":")[0].strip()
                     for line in ini.get("pytest", "markers").splitlines() if line.strip())
    return names


def check_options(args: list[str], known: set[str], where: str) -> None:
    for arg in args:
        if arg.startswith("-") and arg != "-":
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
            assert name in known, f"{where}: {name} is not an option pytest knows"


# ---------------------------------------------------------------- output, as shown


def table_lines(lines: list[str], start: int = 0) -> list[list[str]]:
    """The first markdown table at or after ``start``: rows of cells, the |---| rule left out."""
    rows: list[list[str]] = []
    for line in lines[start:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [row for row in rows if not set("".join(row)) <= set("-: ")]


def summary_table(lines: list[str]) -> list[list[str]] | None:
    """The shown summary table (its header starts with ``model``), if any."""
    for index, line in enumerate(lines):
        if re.match(r"^\| model\s+\|", line):
            return table_lines(lines, index)
    return None


def assert_same_table(shown: list[list[str]], printed: list[list[str]], where: str) -> None:
    header = [UNIT.sub("", cell) for cell in shown[0]]
    assert [UNIT.sub("", cell) for cell in printed[0]] == header, where
    assert len(printed) == len(shown), f"{where}: {len(printed) - 1} rows, not {len(shown) - 1}"
    fixed = [index for index, cell in enumerate(shown[0]) if cell in FIXED_COLUMNS]
    def cells(row: list[str]) -> list[str]:
        # an outcome may quote what was measured: "out of memory at batch 32,768 (reached
        # 402.6 MB; ...)": its words are compared, its numbers not
        return [NUMBER.sub("#", row[index]) if shown[0][index] == "outcome" else row[index]
                for index in fixed]

    for shown_row, printed_row in zip(shown[1:], printed[1:], strict=True):
        assert cells(printed_row) == cells(shown_row), f"{where}: row {printed_row}"


def check_output(command: Command, result: pytest.RunResult, where: str) -> None:
    printed = result.outlines + result.errlines
    errors = [line for line in command.output if line.startswith("ERROR:")]
    tally = next((line for line in reversed(command.output) if TALLY.search(line)
                  and re.search(r" in [\d.]+s", line)), None)
    if errors:
        assert result.ret == pytest.ExitCode.USAGE_ERROR, f"{where}: exit code {result.ret}"
    elif tally:
        expected = {word.rstrip("s") if word.startswith("error") else word: int(count)
                    for count, word in TALLY.findall(tally)}
        outcomes = {key.rstrip("s") if key.startswith("error") else key: value
                    for key, value in result.parseoutcomes().items()}
        for key, count in expected.items():
            assert outcomes.get(key, 0) == count, f"{where}: {outcomes}, shown {expected}"
        failed = expected.get("failed", 0) or expected.get("error", 0)
        assert (result.ret == pytest.ExitCode.TESTS_FAILED) == bool(failed), (
            f"{where}: exit code {result.ret}")
    else:
        assert result.ret == pytest.ExitCode.OK, f"{where}: exit code {result.ret}\n" + (
            "\n".join(printed[-40:]))
    masked = {NUMBER.sub("#", line) for line in printed}
    for line in command.output:
        if line.startswith("ERROR:"):
            assert line in printed, f"{where}: not printed: {line}\n" + "\n".join(printed[-60:])
        elif line.startswith("batchprof:"):
            assert NUMBER.sub("#", line) in masked, (
                f"{where}: not printed: {line}\n" + "\n".join(printed[-60:]))
        elif line.startswith("FAILED "):
            node = line.split(" - ")[0]
            assert any(text.startswith(node) for text in printed), f"{where}: {node}"
    shown = summary_table(command.output)
    if shown is not None:
        table = summary_table(result.outlines)
        assert table is not None, f"{where}: no summary table printed"
        assert_same_table(shown, table, where)


# ---------------------------------------------------------------- the examples run


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Examples train with one torch thread (in-process, and in a subprocess through
    ``OMP_NUM_THREADS``): no figure they show is timed against, and on a shared CPU two
    contended OpenMP threads are many times slower than one."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write(project: Path, block: Block) -> None:
    path = project / block.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text)


MODEL_LIBRARIES = {"keras", "timm", "transformers"}
"""The optional model libraries (the ``libraries`` extra) an example may import: imported
here first, so that the inner session finds them loaded and leaves them so (an inner
session unloads the modules it imported, and Keras's ``ml_dtypes`` cannot be imported
twice in one process); an example that needs one that is not installed is skipped."""


def imported_modules(section: Section) -> set[str]:
    """The top-level names of the modules the section's Python files import."""
    names: set[str] = set()
    for block in section.blocks:
        if block.file and block.file.endswith(".py"):
            for node in ast.walk(ast.parse(block.text)):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


@pytest.fixture
def libraries_loaded(request: pytest.FixtureRequest) -> None:
    """The :data:`MODEL_LIBRARIES` the section's example imports, imported before
    ``pytester`` takes its snapshot of the loaded modules (which it restores after)."""
    section = request.node.callspec.params["section"]
    for library in sorted(MODEL_LIBRARIES & imported_modules(section)):
        if library == "keras":
            os.environ.setdefault("KERAS_BACKEND", "torch")  # as the example's conftest does
        pytest.importorskip(library)


@pytest.mark.parametrize("section", RUN_SECTIONS, ids=[section.id for section in RUN_SECTIONS])
def test_example_runs(libraries_loaded: None, pytester: pytest.Pytester, section: Section,
                      known_options: set[str], one_thread: None,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The section's project is written block by block, and each of its pytest commands
    runs in it as printed.

    The project's modules are its own: a module of this suite's session with the same name
    (``tests/test_models.py`` is ``test_models`` here) is set aside while it runs, as a
    user's fresh process would not have it."""
    files: set[str] = _files_of(section)
    for name in files:
        if "/" not in name and name.endswith(".py"):
            monkeypatch.delitem(sys.modules, name[:-3], raising=False)
    for block in section.blocks:
        if block.file:
            write(pytester.path, block)
        elif block.lang == "console":
            for command in commands_of(block):
                where = f"{block.page.relative_to(ROOT)}:{command.line}"
                if not is_pytest(command.words) or not runs_in_project(section, command,
                                                                       files):
                    continue
                args = pytest_args(command.words)
                check_options(args, known_options, where)
                result = pytester.runpytest(*EXTRA_ARGS, *args)
                check_output(command, result, where)


def test_readme_quick_start_runs_as_printed(pytester: pytest.Pytester, one_thread: None
                                            ) -> None:
    """The README's quick start, copied into an empty folder, runs in a pytest process of
    its own and prints the table the README shows."""
    section = next(section for section in sections_of(README) if section.title == QUICK_START)
    files = [block for block in section.blocks if block.file]
    assert {Path(block.file).name for block in files} >= {"conftest.py"}
    assert any(Path(block.file).name.startswith("test_") for block in files)
    assert len(files) >= 3, "a conftest, a model file and a test file"
    for block in files:
        write(pytester.path, block)
    commands = [command for block in section.blocks if block.lang == "console"
                for command in commands_of(block) if is_pytest(command.words)]
    assert len(commands) == 1
    shown = summary_table(commands[0].output)
    assert shown is not None, "the quick start shows the table it prints"
    result = pytester.runpytest_subprocess(*EXTRA_ARGS, *pytest_args(commands[0].words))
    check_output(commands[0], result, f"README.md:{commands[0].line}")


# ---------------------------------------------------------------- blocks checked, not run


SNIPPETS = [block for block in ALL_BLOCKS if block.lang == "python" and not block.file]
IDLE_FILES = [block for section in ALL_SECTIONS if section not in RUN_SECTIONS
              and not (section.page == README and section.title == QUICK_START)
              for block in section.blocks if block.file]


@pytest.mark.parametrize("block", SNIPPETS + IDLE_FILES,
                         ids=[block.where for block in SNIPPETS + IDLE_FILES])
def test_code_is_valid(block: Block, known_options: set[str]) -> None:
    """A snippet, or a file of a section that runs nothing, is at least valid; the pytest
    commands of a workflow's steps name options pytest knows."""
    name = block.file or "snippet.py"
    if name.endswith(".py"):
        compile(block.text, block.where, "exec")
    elif name.endswith((".yml", ".yaml")):
        workflow = yaml.safe_load(block.text)
        assert isinstance(workflow, dict), block.where
        steps = [step for job in workflow.get("jobs", {}).values()
                 for step in job.get("steps", [])]
        for step in steps:
            words = shlex.split(step.get("run", ""))
            if words[:1] == ["pytest"]:
                check_options(words[1:], known_options, block.where)
    elif name.endswith(".toml"):
        tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
        tomllib.loads(block.text)
    elif name.endswith((".ini", ".cfg")):
        configparser.ConfigParser().read_string(block.text)


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_fences_follow_the_convention(page: Path) -> None:
    for section in sections_of(page):
        for block in section.blocks:
            assert block.lang in KNOWN_FENCES, f"{block.where}: fence {block.lang!r}"
            assert block.lang not in SHELL_FENCES, (
                f"{block.where}: write shell commands as a console block of $ lines")
            if block.lang == "console":
                assert commands_of(block), f"{block.where}: a console block without $ lines"
            if block.lang in ("yaml", "toml", "ini"):
                assert block.file, f"{block.where}: a {block.lang} block names its file"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_commands_are_real(page: Path, known_options: set[str]) -> None:
    """Commands that are not run name real targets, files and options."""
    targets = makefile_targets()
    for section in sections_of(page):
        files = _files_of(section)
        for block in section.blocks:
            if block.lang != "console":
                continue
            for command in commands_of(block):
                words, where = command.words, f"{page.relative_to(ROOT)}:{command.line}"
                if words[0] == "torchrun":
                    words = words[words.index("-m") + 1:]
                if is_pytest(words):
                    args = pytest_args(words)
                    check_options(args, known_options, where)
                    if not runs_in_project(section, command, files):
                        for path in paths_in(args):
                            assert (ROOT / path).exists(), f"{where}: no {path} here"
                elif words[0] == "make":
                    assert words[1] in targets, f"{where}: make {words[1]} is no target"
                    for word in words[2:]:
                        if word.startswith("ARGS="):
                            check_options(shlex.split(word[5:]), known_options, where)
                elif words[0] == "python" and words[1] != "-m":
                    assert (ROOT / words[1]).is_file(), f"{where}: no {words[1]}"
                else:
                    assert words[0] in ("pip", "git", "cd", "python"), f"{where}: {words}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_names_are_real(page: Path) -> None:
    """Options, markers, make targets and relative links the page names exist."""
    text = page.read_text()
    flags = plugin_flags()
    for flag in set(re.findall(r"--batchprof-[a-z0-9-]*[a-z0-9]", text)):
        assert flag in flags, f"{page.name}: {flag} is not an option of the plugin"
    markers = markers_known()
    for marker in set(re.findall(r"pytest\.mark\.([a-z_]+)", text)):
        assert marker in markers, f"{page.name}: pytest.mark.{marker} is no marker"
    targets = makefile_targets()
    for target in set(re.findall(r"`make ([a-z][\w-]*)", text)):
        assert target in targets, f"{page.name}: make {target} is no target"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:|^#|^<", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: the link {target} leads nowhere"


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines"
