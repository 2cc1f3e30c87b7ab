"""The plugin among a project's own options and other plugins, and what it costs a session.

pytest-batchprof loads in every pytest session of its environment, so its short
spellings (``--epochs``, ``--device``, ...) must give way to any option of the
same name that a project's initial conftest or another plugin defines, with the
``--batchprof-`` spelling still reaching the plugin; and a session that never
uses the plugin must not import torch or the other heavy dependencies.

The inner sessions run in-process and train nothing (their tests ask for
``batch_size`` at most), except the few start-up checks, which need a fresh
interpreter: ``runpytest_subprocess`` and ``python -c``. A project's own fixtures
of the plugin's public names (``dataset``, ``device``, ``batch_size``) beside the
plugin's factories are in ``test_project_fixtures.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pytest_batchprof
from pytest_batchprof.plugin.options import OPTIONS, Option

TRIVIAL_TEST = """
def test_bs(batch_size):
    assert isinstance(batch_size, int) and batch_size >= 1
"""

NO_HYPOTHESIS = ("-p", "no:hypothesispytest")
"""The hypothesis plugin has no say in these sessions; blocking it makes them start faster."""

SHORT_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.short_flag is not None)
"""The experiments' options: each answers to ``--batchprof-NAME`` and, unless held, ``--NAME``."""

SAMPLES: dict[str, tuple[str | None, str]] = {
    # field: a valid value for --batchprof-NAME (None for a switch), what the header then shows
    "batch_sizes": ("4,8", "batch-sizes=4,8"),
    "epochs": ("3", "epochs=3"),
    "dataset": ("digits", "dataset=digits"),
    "data_dir": ("elsewhere", "data-dir=elsewhere"),
    "device": ("cpu", "device=cpu"),
    "seed": ("7", "seed=7"),
    "repeats": ("3", "repeats=3"),
    "lr": ("0.05", "lr=0.05"),
    "optimizer": ("sgd", "optimizer=sgd"),
    "lr_scaling": ("sqrt", "lr-scaling=sqrt"),
    "lr_base_batch": ("256", "lr-base-batch=256"),
    "lr_warmup_epochs": ("0.5", "lr-warmup-epochs=0.5"),
    "target_accuracy": ("0.9", "target-accuracy=0.9"),
    "target_metric": ("0.3", "target-metric=0.3"),
    "train_subset": ("100", "train-subset=100"),
    "val_fraction": ("0.25", "val-fraction=0.25"),
    "inference_batch_size": ("128", "inference-batch-size=128"),
    "noise_scale": (None, "noise-scale"),
    "precision": ("bf16", "precision=bf16"),
    "keep_denormals": (None, "keep-denormals"),
    "drop_last": (None, "drop-last"),
    "no_co2": (None, "co2=off"),
    "co2_country": ("deu", "co2=DEU"),
}

PROJECT_VALUE = "project-value"
"""What the project's own options get on the command line: no batchprof option accepts it
(but ``--data-dir``), so a session that let it reach the plugin would end in a usage error."""

HEAVY_MODULES = ("torch", "torchvision", "codecarbon", "fvcore", "matplotlib", "sklearn")

MODULE_LISTER = """
import json
import sys


def pytest_unconfigure(config):
    with open("modules.json", "w") as out:
        json.dump(sorted(sys.modules), out)
"""
"""A conftest that records every module imported by the end of the session."""


# ---------------------------------------------------------------- helpers


def settings_line(result: pytest.RunResult) -> str:
    """The header line with every batchprof setting (there is exactly one)."""
    lines = [line for line in result.stdout.lines if line.startswith("batchprof: dataset=")]
    assert len(lines) == 1, result.stdout.lines
    return lines[0]


def shows(result: pytest.RunResult, fragment: str) -> bool:
    """Whether the settings line shows ``fragment`` as whole words (``epochs=3``)."""
    return f" {fragment} " in f" {settings_line(result)} "


def yielded_lines(result: pytest.RunResult) -> list[str]:
    """The header lines that name the short spellings left to the project (none or one)."""
    return [line for line in result.stdout.lines
            if line.startswith("batchprof: left to this project")]


def expected_yield_line(*shorts: str) -> str:
    """The header line that names ``shorts`` (in this order) as left to the project."""
    own = [short.replace("--", "--batchprof-", 1) for short in shorts]
    return (f"batchprof: left to this project: {', '.join(shorts)} "
            f"(batchprof's own: {', '.join(own)})")


def option_by_short(short: str) -> Option:
    """The option whose short spelling is ``short`` (``--seed``)."""
    return next(option for option in SHORT_OPTIONS if option.short_flag == short)


def in_options_order(*shorts: str) -> list[str]:
    """``shorts`` sorted as :data:`OPTIONS` lists them."""
    order = [option.short_flag for option in SHORT_OPTIONS]
    return sorted(shorts, key=order.index)


def add_option_source(name: str, dest: str, switch: bool = False) -> str:
    """A line of a ``pytest_addoption`` hook that defines ``name`` for the project."""
    kind = 'action="store_true", default=False' if switch else "default=None"
    return f'    parser.addoption("{name}", dest="{dest}", {kind}, help="the project\'s own")\n'


def hook_source(options: list[tuple[str, str]]) -> str:
    """A ``pytest_addoption`` hook defining each (name, dest) of ``options``, values taken."""
    body = "".join(add_option_source(name, dest) for name, dest in options)
    return "def pytest_addoption(parser):\n" + body


def dest_of(short: str) -> str:
    """The destination a project's ``--batch-sizes`` uses here: ``project_batch_sizes``."""
    return "project_" + short.removeprefix("--").replace("-", "_")


def project_values_test(expected: dict[str, object]) -> str:
    """A test that uses ``batch_size`` and checks what each project option received."""
    checks = "".join(f"    assert pytestconfig.getoption({dest!r}) == {value!r}\n"
                     for dest, value in expected.items())
    return "def test_project(batch_size, pytestconfig):\n" + checks


def assert_usage_error(result: pytest.RunResult, start: str, *fragments: str) -> str:
    """The session ended at start (exit 4) with one ``ERROR:`` line that begins with ``start``
    and holds every fragment, and no traceback."""
    stdout, stderr = result.stdout.str(), result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (stdout, stderr)
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.lines
    (line,) = errors
    assert line.startswith(start), (start, line)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "Traceback" not in stdout + stderr
    assert "test session starts" not in stdout
    return line


def imported(pytester: pytest.Pytester) -> set[str]:
    """The top-level heavy modules that the last subprocess session had imported."""
    modules = json.loads((pytester.path / "modules.json").read_text())
    (pytester.path / "modules.json").unlink()
    return {name.split(".")[0] for name in modules} & set(HEAVY_MODULES)


# ---------------------------------------------------------------- a conftest holds the name


def test_samples_cover_every_short_spelling() -> None:
    """The sample values below are kept by hand: one for each option with a short spelling."""
    assert set(SAMPLES) == {option.field for option in SHORT_OPTIONS}
    assert {option.field for option in SHORT_OPTIONS if option.switch} == {
        field for field, (value, _) in SAMPLES.items() if value is None}
    assert len(SHORT_OPTIONS) >= 20  # the registry was read, not an empty or partial list


@pytest.mark.parametrize("option", SHORT_OPTIONS, ids=[o.short_flag for o in SHORT_OPTIONS])
def test_conftest_option_of_the_same_name_wins(pytester: pytest.Pytester,
                                               option: Option) -> None:
    """The project's option takes its value; ``--batchprof-NAME`` still reaches the plugin."""
    short = option.short_flag
    assert short is not None
    value, shown = SAMPLES[option.field]
    pytester.makeconftest("def pytest_addoption(parser):\n"
                          + add_option_source(short, "project_value", option.switch))
    expected: object = True if option.switch else PROJECT_VALUE
    pytester.makepyfile(project_values_test({"project_value": expected}))
    own = [option.flag] if value is None else [option.flag, value]
    project = [short] if option.switch else [short, PROJECT_VALUE]
    result = pytester.runpytest(*NO_HYPOTHESIS, *project, *own)
    assert result.ret == pytest.ExitCode.OK, result.stdout.lines + result.stderr.lines
    result.assert_outcomes(passed=2 if option.field == "batch_sizes" else 1)
    assert shows(result, shown)  # the prefixed spelling still reaches the plugin
    assert yielded_lines(result) == [expected_yield_line(short)]


def test_every_short_name_held_by_the_project_at_once(pytester: pytest.Pytester) -> None:
    """Every short spelling yielded in one session: none of the project's values (invalid to
    batchprof) reaches the plugin, and the header names them all, in :data:`OPTIONS` order."""
    shorts = [option.short_flag for option in SHORT_OPTIONS]
    hook = "def pytest_addoption(parser):\n" + "".join(
        add_option_source(option.short_flag, dest_of(option.short_flag), option.switch)
        for option in reversed(SHORT_OPTIONS))  # defined in the other order: the header sorts
    pytester.makeconftest(hook)
    expected = {dest_of(option.short_flag): True if option.switch else PROJECT_VALUE
                for option in SHORT_OPTIONS}
    pytester.makepyfile(project_values_test(expected))
    args = [arg for option in SHORT_OPTIONS
            for arg in ([option.short_flag] if option.switch
                        else [option.short_flag, PROJECT_VALUE])]
    result = pytester.runpytest(*NO_HYPOTHESIS, *args)
    result.assert_outcomes(passed=1)
    assert yielded_lines(result) == [expected_yield_line(*shorts)]
    # none of the project's values reached the plugin: its settings are the defaults
    assert settings_line(result).startswith(
        "batchprof: dataset=mnist batch-sizes=64 epochs=2 optimizer=adam lr=0.001 seed=0 "
        "device=auto train-subset=all val-fraction=0.08333 inference-batch-size=training "
        "co2=USA data-dir=")
    for _, shown in SAMPLES.values():
        assert not shows(result, shown)
    assert f"data-dir={PROJECT_VALUE}" not in settings_line(result)  # a valid path to batchprof


# ---------------------------------------------------------------- another plugin holds it

PLUGIN_NAMES = ["--device", "--seed", "--lr", "--batch-sizes"]


@pytest.mark.parametrize("loading", ["dash-p", "pytest_plugins"])
@pytest.mark.parametrize("short", PLUGIN_NAMES)
def test_option_of_another_plugin_wins(pytester: pytest.Pytester, short: str,
                                       loading: str) -> None:
    """``-p otherplugin`` registers before pytest loads the ``batchprof`` entry point; a
    plugin in the root conftest's ``pytest_plugins`` registers after it."""
    option = option_by_short(short)
    value, shown = SAMPLES[option.field]
    assert value is not None
    pytester.makepyfile(otherplugin=hook_source([(short, "project_value")]),
                        test_project=project_values_test({"project_value": PROJECT_VALUE}))
    if loading == "dash-p":
        load = ["-p", "otherplugin"]
    else:
        load = []
        pytester.makeconftest('pytest_plugins = ["otherplugin"]\n')
    pytester.syspathinsert()
    result = pytester.runpytest(*NO_HYPOTHESIS, *load, short, PROJECT_VALUE, option.flag, value)
    result.assert_outcomes(passed=2 if option.field == "batch_sizes" else 1)
    assert shows(result, shown)
    assert yielded_lines(result) == [expected_yield_line(short)]


def test_names_held_by_plugins_and_conftest_together(pytester: pytest.Pytester) -> None:
    """Five names held by a ``-p`` plugin, a ``pytest_plugins`` plugin and the conftest (in
    pytest's anonymous group and in a group of its own): the header names each once, in
    :data:`OPTIONS` order."""
    holders = {"early": ["--lr", "--seed"], "late": ["--batch-sizes"], "conftest": ["--device"],
               "grouped": ["--optimizer"]}
    pytester.makepyfile(
        earlyplugin=hook_source([(name, dest_of(name)) for name in holders["early"]]),
        lateplugin=hook_source([(name, dest_of(name)) for name in holders["late"]]),
        test_project=project_values_test(
            {dest_of(name): PROJECT_VALUE for names in holders.values() for name in names}),
    )
    (grouped,) = holders["grouped"]
    pytester.makeconftest(
        'pytest_plugins = ["lateplugin"]\n\n\n'
        + hook_source([(name, dest_of(name)) for name in holders["conftest"]])
        + f'    parser.getgroup("project").addoption("{grouped}", dest="{dest_of(grouped)}")\n')
    pytester.syspathinsert()
    names = [name for names in holders.values() for name in names]
    project_args = [arg for name in names for arg in (name, PROJECT_VALUE)]
    result = pytester.runpytest(*NO_HYPOTHESIS, "-p", "earlyplugin", *project_args,
                                "--batchprof-lr", "0.05", "--epochs", "4",
                                "--batchprof-epochs", "3")  # --epochs is held by nobody
    result.assert_outcomes(passed=1)
    assert yielded_lines(result) == [expected_yield_line(*in_options_order(*names))]
    assert yielded_lines(result)[0].startswith(
        "batchprof: left to this project: --batch-sizes, --device, --seed, --lr, --optimizer (")
    assert shows(result, "lr=0.05")
    assert shows(result, "epochs=3")  # the later of two spellings of one option wins


# ---------------------------------------------------------------- nobody holds the name


def test_short_spelling_reaches_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest(*NO_HYPOTHESIS, "--epochs", "5", "--seed", "9",
                                "--noise-scale")
    result.assert_outcomes(passed=1)
    assert shows(result, "epochs=5")
    assert shows(result, "seed=9")
    assert shows(result, "noise-scale")
    assert yielded_lines(result) == []


@pytest.mark.parametrize(
    ("args", "epochs"),
    [(["--epochs", "5", "--batchprof-epochs", "3"], 3),
     (["--batchprof-epochs", "3", "--epochs", "5"], 5),
     (["--epochs=5", "--batchprof-epochs=3"], 3)],
    ids=["short-first", "prefixed-first", "equals"],
)
def test_the_later_of_two_spellings_wins(pytester: pytest.Pytester, args: list[str],
                                         epochs: int) -> None:
    """Both spellings are one option, so argparse's rule for a repeated option holds."""
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest(*NO_HYPOTHESIS, *args)
    result.assert_outcomes(passed=1)
    assert shows(result, f"epochs={epochs}")
    assert yielded_lines(result) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--batchprof-epochs", "2", "--epochs", "0"], "--epochs"),
     (["--epochs", "2", "--batchprof-epochs", "0"], "--batchprof-epochs"),
     (["--epochs=0"], "--epochs")],
    ids=["short-last", "prefixed-last", "equals"],
)
def test_error_names_the_spelling_of_the_value_used(pytester: pytest.Pytester,
                                                     args: list[str], named: str) -> None:
    pytester.makepyfile(TRIVIAL_TEST)
    assert_usage_error(pytester.runpytest(*NO_HYPOTHESIS, *args), f"ERROR: {named} is 0")


def test_a_conftest_loaded_later_may_define_a_short_name(pytester: pytest.Pytester) -> None:
    """A conftest below the rootdir's is not an initial one: pytest loads it while collecting,
    after the command line is parsed. Its ``--lr`` must not collide with anything of ours."""
    sub = pytester.mkdir("sub")
    (sub / "conftest.py").write_text(
        'def pytest_addoption(parser):\n    parser.addoption("--lr", default="project")\n')
    (sub / "test_late.py").write_text(
        "def test_late(pytestconfig):\n"
        "    assert pytestconfig.getoption('lr') == 'project'\n")
    result = pytester.runpytest(*NO_HYPOTHESIS, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_nothing_after_a_double_dash_is_rewritten(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest(*NO_HYPOTHESIS, "--epochs", "3", "--", "--epochs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # pytest's own verdict on the second one
    assert "unrecognized arguments: --epochs" in result.stderr.str()
    assert "--batchprof-epochs" not in result.stderr.str()


@pytest.mark.parametrize("flag", ["--epochs", "--batchprof-epochs"])
def test_error_names_the_spelling_used(pytester: pytest.Pytester, flag: str) -> None:
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest(*NO_HYPOTHESIS, flag, "0")
    assert_usage_error(result, f"ERROR: {flag} ", "(got '0')", "expected a whole number >= 1")


# ---------------------------------------------------------------- a yielded name's values


def test_bad_value_of_a_yielded_name_is_the_projects_business(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(hook_source([("--device", "project_device")]))
    pytester.makepyfile(project_values_test({"project_device": "anything"}))
    result = pytester.runpytest(*NO_HYPOTHESIS, "--device", "anything")
    result.assert_outcomes(passed=1)
    assert shows(result, "device=auto")
    assert yielded_lines(result) == [expected_yield_line("--device")]

    result = pytester.runpytest(*NO_HYPOTHESIS, "--device", "anything",
                                "--batchprof-device", "gpu")
    assert_usage_error(result, "ERROR: --batchprof-device ", "(got 'gpu')",
                       "expected auto, cpu, cuda, cuda:N or mps")


# ---------------------------------------------------------------- --help


def help_sections(text: str) -> dict[str, str]:
    """``pytest --help`` cut into its sections: title line -> the lines below it."""
    sections: dict[str, str] = {}
    for block in re.split(r"\n\s*\n", text):
        title, _, body = block.strip("\n").partition("\n")
        sections[title] = body
    return sections


def test_help_lists_a_yielded_name_once_in_the_projects_section(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(hook_source([("--device", "project_device")]))
    result = pytester.runpytest(*NO_HYPOTHESIS, "--help")
    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    name = re.compile(r"(?<![\w-])--device(?![\w-])")
    assert len(name.findall(text)) == 1, [line for line in text.splitlines()
                                         if name.search(line)]
    sections = help_sections(text)
    assert name.search(sections["Custom options:"])
    (batchprof,) = [body for title, body in sections.items() if title.startswith("batchprof: ")]
    listed = re.findall(r"^  (--[a-z0-9-]+)", batchprof, re.MULTILINE)
    assert listed == [option.flag for option in OPTIONS]  # no short spelling among them
    assert "--batchprof-device" in listed


def test_help_lists_no_short_spelling_when_none_is_held(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*NO_HYPOTHESIS, "--help")
    assert result.ret == pytest.ExitCode.OK
    listed = re.findall(r"^  (-[-\w]+(?:, --[-\w]+)?)", result.stdout.str(), re.MULTILINE)
    shorts = {option.short_flag for option in SHORT_OPTIONS}
    assert not shorts & {name for names in listed for name in names.split(", ")}


# ---------------------------------------------------------------- start-up cost (subprocess)


def test_unused_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    """A fresh process: one plain test, no batchprof fixture, marker or option."""
    pytester.makeconftest(MODULE_LISTER)
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess(*NO_HYPOTHESIS)
    result.assert_outcomes(passed=1)
    assert imported(pytester) == set()


def test_a_session_on_mnist_imports_only_what_it_uses(pytester: pytest.Pytester,
                                                       tmp_path: Path) -> None:
    """A fresh process trains a tiny MLP on generated MNIST files, without CO2 or report
    files: torch, and fvcore for the MACs, are the only heavy modules it imports; not
    torchvision (a second or more), since the plugin reads the IDX files itself."""
    from tests.test_data import write_idx_dataset

    write_idx_dataset(tmp_path / "data")
    pytester.makeconftest(MODULE_LISTER)
    pytester.makepyfile(
        "def test_train(trained_mlp):\n"
        "    assert trained_mlp(hidden=8).test_accuracy is not None\n")
    result = pytester.runpytest_subprocess(
        *NO_HYPOTHESIS, "--batchprof-dataset", "mnist", "--batchprof-data-dir",
        str(tmp_path / "data"), "--batch-sizes", "16", "--batchprof-epochs", "1",
        "--batchprof-no-co2", "--batchprof-no-report", "--batchprof-device", "cpu")
    result.assert_outcomes(passed=1)
    assert imported(pytester) == {"torch", "fvcore"}


PROJECT_FIXTURES = MODULE_LISTER + """

import pytest


@pytest.fixture
def dataset():
    return {"rows": [1, 2, 3]}


@pytest.fixture
def device():
    return "the project's device"
"""
"""A project's conftest with its own ``dataset`` and ``device`` fixtures (and the lister)."""


def test_project_fixtures_of_the_plugins_names_import_nothing_heavy(
        pytester: pytest.Pytester) -> None:
    """A fresh process runs only the project's test of its own ``dataset`` and ``device``:
    no data set is loaded (MNIST is absent here, so loading it would end the session), no
    torch is imported, and the line after collection says what was left to the project."""
    pytester.makeconftest(PROJECT_FIXTURES)
    pytester.makepyfile(
        "def test_x(dataset, device):\n"
        "    assert dataset == {'rows': [1, 2, 3]} and device == \"the project's device\"\n")
    result = pytester.runpytest_subprocess(*NO_HYPOTHESIS)
    result.assert_outcomes(passed=1)
    assert imported(pytester) == set()
    assert yielded_lines(result) == [
        "batchprof: left to this project: fixtures dataset, device "
        "(batchprof's own: batchprof_dataset, batchprof_device)"]


def test_options_and_batch_size_import_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(MODULE_LISTER)
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest_subprocess(*NO_HYPOTHESIS, "--batchprof-epochs", "3",
                                           "--batch-sizes", "4")
    result.assert_outcomes(passed=1)
    assert shows(result, "epochs=3")
    assert shows(result, "batch-sizes=4")
    assert imported(pytester) == set()


def test_bad_value_in_a_fresh_process_is_one_line(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(MODULE_LISTER)
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest_subprocess(*NO_HYPOTHESIS, "--batchprof-epochs", "0")
    assert_usage_error(result, "ERROR: --batchprof-epochs ", "(got '0')")
    assert imported(pytester) == set()  # pytest_unconfigure runs after a usage error too


def test_device_fixture_imports_torch(pytester: pytest.Pytester) -> None:
    """The check above can fail: a test that asks for the device brings torch in."""
    pytester.makeconftest(MODULE_LISTER)
    pytester.makepyfile("def test_device(device):\n    assert device.type == 'cpu'\n")
    result = pytester.runpytest_subprocess(*NO_HYPOTHESIS, "--batchprof-device", "cpu")
    result.assert_outcomes(passed=1)
    assert "torch" in imported(pytester)


LAZY_EXPORTS = dict(pytest_batchprof._EXPORTS)
"""Every public name and the module it comes from (the package's own table)."""

LAZY_PROBE = textwrap.dedent("""
    import importlib
    import json
    import sys

    heavy = {heavy!r}
    exports = {exports!r}
    import pytest_batchprof as package

    found = {{"heavy_on_import": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
              "bound_before": sorted(set(exports) & set(vars(package))),
              "all": list(package.__all__)}}
    found["right_objects"] = {{
        name: getattr(package, name) is getattr(importlib.import_module(module), name)
        and getattr(package, name).__name__ == name
        for name, module in exports.items()}}
    found["bound_after"] = sorted(set(exports) & set(vars(package)))
    found["in_dir"] = sorted(set(package.__all__) - set(dir(package)))
    try:
        package.no_such_name
    except AttributeError as error:
        found["unknown"] = str(error)
    star = {{}}
    exec("from pytest_batchprof import *", star)
    found["star"] = sorted(name for name in star if name != "__builtins__")
    print(json.dumps(found))
""")


def test_package_exports_are_lazy() -> None:
    """``import pytest_batchprof`` in a fresh interpreter (this one has torch already)."""
    probe = LAZY_PROBE.format(heavy=HEAVY_MODULES, exports=LAZY_EXPORTS)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["heavy_on_import"] == []
    assert found["bound_before"] == []  # nothing resolved before it is asked for
    assert sorted(found["all"]) == sorted([*LAZY_EXPORTS, "__version__"])
    assert len(found["all"]) == len(set(found["all"]))
    assert found["right_objects"] == dict.fromkeys(LAZY_EXPORTS, True)
    assert found["bound_after"] == sorted(LAZY_EXPORTS)  # cached after the first access
    assert found["in_dir"] == []
    assert found["unknown"] == "module 'pytest_batchprof' has no attribute 'no_such_name'"
    assert found["star"] == sorted([*LAZY_EXPORTS, "__version__"])


def test_short_spellings_in_addopts_and_the_environment_reach_the_plugin(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """``addopts`` and ``PYTEST_ADDOPTS`` join the command line before it is rewritten."""
    pytester.makeini("[pytest]\naddopts = --epochs 4\n")
    monkeypatch.setenv("PYTEST_ADDOPTS", "--seed=6")
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest(*NO_HYPOTHESIS)
    result.assert_outcomes(passed=1)
    assert shows(result, "epochs=4") and shows(result, "seed=6")
