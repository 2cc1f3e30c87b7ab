"""Options, their ini twins, validation, ``--help``, parametrization and the report header.

Nothing here trains a model: the inner sessions run trivial tests that only ask
for ``batch_size``, so no data set is ever loaded.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_batchprof.hardware import devices
from pytest_batchprof.hardware.devices import Accelerators
from pytest_batchprof.plugin.options import OPTIONS, OptionError, parse_batch_sizes
from pytest_batchprof.settings import Settings, flag_of

TRIVIAL_TEST = """
def test_bs(batch_size):
    assert isinstance(batch_size, int) and batch_size >= 1
"""

HYPOTHESIS = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------- helpers


def assert_usage_error(result: pytest.RunResult, *fragments: str) -> str:
    """The session ended at start with one ``ERROR:`` line holding every fragment."""
    stdout, stderr = result.stdout.str(), result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (stdout, stderr)
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.lines
    (line,) = errors
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "Traceback" not in stdout
    assert "Traceback" not in stderr
    assert "test session starts" not in stdout  # ended before any test was collected
    return line


def header_line(result: pytest.RunResult) -> str:
    lines = [line for line in result.stdout.lines if line.startswith("batchprof: ")]
    assert len(lines) == 1, result.stdout.lines
    return lines[0]


def collected_ids(result: pytest.RunResult) -> list[str]:
    """Node ids printed by ``--collect-only -q``."""
    return [line for line in result.stdout.lines if "::" in line]


def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.Accelerators, "probe",
                        classmethod(lambda cls: Accelerators(0, False)))


# ---------------------------------------------------------------- parse_batch_sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64", (64,)),
        ("1, 16,64", (1, 16, 64)),
        (" 8 ", (8,)),
        ("64,1", (64, 1)),  # order is kept, not sorted
        ("1,2,3,4,5,6,7,8", (1, 2, 3, 4, 5, 6, 7, 8)),
    ],
)
def test_parse_batch_sizes_examples(text: str, expected: tuple[int, ...]) -> None:
    assert parse_batch_sizes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("1,,2", "has an empty item"),
        ("1,", "has an empty item"),
        ("0", "'0', which is below 1"),
        ("-3", "'-3', which is below 1"),
        ("abc", "'abc', which is not a whole number"),
        ("1.5", "'1.5', which is not a whole number"),
        ("1_6", "'1_6', which is not a whole number"),
        ("\uff11\uff16", "which is not a whole number"),  # full-width digits
        ("16,16", "repeats 16"),
    ],
)
def test_parse_batch_sizes_rejects_with_reason(text: str, message: str) -> None:
    with pytest.raises(OptionError, match=re.escape(message)):
        parse_batch_sizes(text)


sizes_lists = st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=8,
                       unique=True)
padding = st.text(alphabet=" ", max_size=3)


@HYPOTHESIS
@given(sizes_lists)
def test_parse_batch_sizes_round_trips(sizes: list[int]) -> None:
    assert parse_batch_sizes(",".join(map(str, sizes))) == tuple(sizes)


@HYPOTHESIS
@given(sizes_lists, st.data())
def test_parse_batch_sizes_allows_spaces_around_items(sizes: list[int],
                                                      data: st.DataObject) -> None:
    items = [data.draw(padding) + str(size) + data.draw(padding) for size in sizes]
    assert parse_batch_sizes(",".join(items)) == tuple(sizes)


bad_tokens = st.one_of(
    st.just("0"),
    st.integers(max_value=0).map(str),
    st.just(""),
    padding,  # whitespace only: an empty item
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ", min_size=1, max_size=5),
    st.floats().map(str),  # "1.5", "2.0", "1e-05", "inf", "nan", ...
    st.sampled_from(["1.5", "0x10", "1e3", "3 4", "x1"]),
)


@HYPOTHESIS
@given(st.lists(st.integers(min_value=1, max_value=10**6), max_size=5, unique=True),
       bad_tokens, st.data())
def test_parse_batch_sizes_rejects_any_bad_token(good: list[int], bad: str,
                                                 data: st.DataObject) -> None:
    items = [str(size) for size in good]
    items.insert(data.draw(st.integers(0, len(items))), bad)
    with pytest.raises(OptionError):
        parse_batch_sizes(",".join(items))


@HYPOTHESIS
@given(sizes_lists, st.data())
def test_parse_batch_sizes_rejects_repeats(sizes: list[int], data: st.DataObject) -> None:
    repeated = data.draw(st.sampled_from(sizes))
    items = [str(size) for size in sizes]
    items.insert(data.draw(st.integers(0, len(items))), str(repeated))
    with pytest.raises(OptionError, match=f"repeats {repeated}"):
        parse_batch_sizes(",".join(items))


def test_every_setting_has_an_option_and_flag_of_spells_it() -> None:
    """:func:`flag_of`, which the layers below the plugin name options with, spells every
    setting as the plugin registers it; a name that is no setting is refused."""
    assert {field.name for field in dataclasses.fields(Settings)} == {
        option.field for option in OPTIONS}
    assert [flag_of(option.field) for option in OPTIONS] == [option.flag for option in OPTIONS]
    with pytest.raises(ValueError, match=r"flag_of\('epoch'\): not a field of Settings"):
        flag_of("epoch")


# ---------------------------------------------------------------- bad command-line values

BAD_CLI = [
    # args, the flag, the bad value as shown, what is expected
    (["--batch-sizes", "0"], "--batch-sizes", "(got '0')",
     "expected a comma-separated list of whole numbers >= 1"),
    (["--batch-sizes=-3"], "--batch-sizes", "(got '-3')",
     "expected a comma-separated list of whole numbers >= 1"),
    (["--batch-sizes", "1,,2"], "--batch-sizes", "(got '1,,2')",
     "expected a comma-separated list of whole numbers >= 1"),
    (["--batch-sizes", "abc"], "--batch-sizes", "(got 'abc')",
     "expected a comma-separated list of whole numbers >= 1"),
    (["--batch-sizes", ""], "--batch-sizes", "(got '')",
     "expected a comma-separated list of whole numbers >= 1"),
    (["--batch-sizes", "0,abc"], "--batch-sizes", "(got '0,abc')",
     "expected a comma-separated list of whole numbers >= 1"),
    (["--epochs", "0"], "--epochs", "(got '0')", "expected a whole number >= 1"),
    (["--lr=-1"], "--lr", "(got '-1')", "expected a finite number above 0"),
    (["--lr", "nan"], "--lr", "(got 'nan')", "expected a finite number above 0"),
    (["--dataset", "nope"], "--dataset", "(got 'nope')", "expected one of mnist"),
    (["--device", "gpu"], "--device", "(got 'gpu')",
     "expected auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cuda"], "--device", "(got 'cuda')",
     "expected auto, cpu or a device this machine has"),
    (["--train-subset", "0"], "--train-subset", "(got '0')", "expected a whole number >= 1"),
    (["--val-fraction", "1.5"], "--val-fraction", "(got '1.5')",
     "expected a number above 0 and below 1"),
    (["--seed=-1"], "--seed", "(got '-1')", "expected a whole number >= 0"),
    (["--repeats", "0"], "--repeats", "(got '0')", "expected a whole number >= 1"),
    (["--repeats", "three"], "--repeats", "(got 'three')", "expected a whole number >= 1"),
    (["--optimizer", "rmsprop"], "--optimizer", "(got 'rmsprop')", "expected adam or sgd"),
    (["--inference-batch-size", "0"], "--inference-batch-size", "(got '0')",
     "expected a whole number >= 1"),
    (["--inference-batch-size=-2"], "--inference-batch-size", "(got '-2')",
     "expected a whole number >= 1"),
    (["--co2-country", "Atlantis"], "--co2-country", "(got 'Atlantis')",
     "expected an ISO 3166 alpha-3 country code"),
]


@pytest.mark.parametrize(
    ("args", "flag", "value", "expected"),
    [pytest.param(*case, id=" ".join(case[0]) or "empty") for case in BAD_CLI],
)
def test_bad_command_line_value_is_one_line_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
    args: list[str], flag: str, value: str, expected: str,
) -> None:
    no_accelerators(monkeypatch)  # so --device cuda is refused on a GPU machine too
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest("--dataset", "synthetic", *args)
    line = assert_usage_error(result, flag, value, expected)
    assert line.startswith(f"ERROR: {flag} ")


def test_bad_dataset_error_lists_the_data_sets(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest("--dataset", "nope")
    assert_usage_error(result, "--dataset", "'nope'", "mnist", "digits", "synthetic")


# ---------------------------------------------------------------- ini twins

GOOD_INI = [
    # ini key, value, what the header then shows
    ("batchprof_batch_sizes", "2, 8", "batch-sizes=2,8"),
    ("batchprof_epochs", "3", "epochs=3"),
    ("batchprof_dataset", "digits", "dataset=digits"),
    ("batchprof_seed", "7", "seed=7"),
    ("batchprof_repeats", "5", "repeats=5"),
    ("batchprof_lr", "0.05", "lr=0.05"),
    ("batchprof_optimizer", "sgd", "optimizer=sgd"),
    ("batchprof_train_subset", "100", "train-subset=100"),
    ("batchprof_val_fraction", "0.25", "val-fraction=0.25"),
    ("batchprof_device", "cpu", "device=cpu"),
    ("batchprof_inference_batch_size", "128", "inference-batch-size=128"),
    ("batchprof_no_co2", "true", "co2=off"),
    ("batchprof_keep_denormals", "true", "keep-denormals"),
    ("batchprof_drop_last", "true", "drop-last"),
    ("batchprof_noise_scale", "true", "noise-scale"),
    ("batchprof_lr_scaling", "sqrt", "lr-scaling=sqrt"),
    ("batchprof_lr_base_batch", "256", "lr-base-batch=256"),
    ("batchprof_lr_warmup_epochs", "0.5", "lr-warmup-epochs=0.5"),
    ("batchprof_co2_country", "deu", "co2=DEU"),
]


@pytest.mark.parametrize(("key", "value", "shown"), GOOD_INI, ids=[c[0] for c in GOOD_INI])
def test_ini_value_shows_in_header(pytester: pytest.Pytester, key: str, value: str,
                                   shown: str) -> None:
    pytester.makeini(f"[pytest]\n{key} = {value}\n")
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.OK
    assert f" {shown} " in header_line(result) + " "


def test_ini_data_dir_shows_in_header(pytester: pytest.Pytester, tmp_path: Path) -> None:
    target = tmp_path / "somewhere"
    pytester.makeini(f"[pytest]\nbatchprof_data_dir = {target}\n")
    pytester.makepyfile(TRIVIAL_TEST)
    assert f" data-dir={target} " in header_line(pytester.runpytest())


def test_ini_batch_sizes_parametrize(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbatchprof_batch_sizes = 2, 8\n")
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest("--collect-only", "-q")
    assert collected_ids(result) == ["test_ini_batch_sizes_parametrize.py::test_bs[bs2]",
                                     "test_ini_batch_sizes_parametrize.py::test_bs[bs8]"]


def test_ini_in_pyproject_toml(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nbatchprof_epochs = "4"\nbatchprof_optimizer = "sgd"\n'
    )
    pytester.makepyfile(TRIVIAL_TEST)
    header = header_line(pytester.runpytest())
    assert " epochs=4 " in header
    assert " optimizer=sgd " in header


def test_toml_array_of_batch_sizes(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\nbatchprof_batch_sizes = [2, 8]\n")
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest("--collect-only", "-q", "-W", "ignore::DeprecationWarning")
    assert [i.rsplit("::", 1)[1] for i in collected_ids(result)] == ["test_bs[bs2]",
                                                                     "test_bs[bs8]"]


def test_native_toml_types_in_pyproject(pytester: pytest.Pytester) -> None:
    """pytest 9's native ``[tool.pytest]`` table keeps TOML's types: whole numbers, booleans,
    floats and arrays are taken as the ini file's text would be."""
    pytester.makepyprojecttoml(
        "[tool.pytest]\nbatchprof_epochs = 1\nbatchprof_no_co2 = true\nbatchprof_lr = 0.01\n"
        "batchprof_batch_sizes = [8, 16]\nbatchprof_keep_denormals = false\n"
        "batchprof_fail_drop = 2\n")
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest("-v", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    header = header_line(result) + " "
    for shown in (" batch-sizes=8,16 ", " epochs=1 ", " lr=0.01 ", " co2=off "):
        assert shown in header, header
    assert "keep-denormals" not in header
    result.stdout.fnmatch_lines(["*::test_bs[[]bs8[]] PASSED*", "*::test_bs[[]bs16[]] PASSED*"])


def test_a_native_toml_value_of_the_wrong_kind_is_one_usage_error(
        pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest]\nbatchprof_epochs = 1.5\n")
    pytester.makepyfile(TRIVIAL_TEST)
    assert_usage_error(pytester.runpytest(),
                       "batchprof_epochs (ini) has '1.5', which is not a whole number")


BAD_INI = [
    ("batchprof_batch_sizes", "1,1", "expected a comma-separated list"),
    ("batchprof_epochs", "0", "expected a whole number >= 1"),
    ("batchprof_dataset", "nope", "expected one of"),
    ("batchprof_seed", "-1", "expected a whole number >= 0"),
    ("batchprof_repeats", "0", "expected a whole number >= 1"),
    ("batchprof_lr", "nan", "expected a finite number above 0"),
    ("batchprof_optimizer", "rmsprop", "expected adam or sgd"),
    ("batchprof_train_subset", "x", "expected a whole number >= 1"),
    ("batchprof_val_fraction", "0", "expected a number above 0 and below 1"),
    ("batchprof_device", "gpu", "expected auto, cpu, cuda, cuda:N or mps"),
    ("batchprof_inference_batch_size", "0", "expected a whole number >= 1"),
    ("batchprof_no_co2", "maybe", "expected true or false"),
    ("batchprof_keep_denormals", "sometimes", "expected true or false"),
    ("batchprof_lr_scaling", "cubic", "expected none, linear or sqrt"),
    ("batchprof_lr_base_batch", "0", "expected a whole number >= 1"),
    ("batchprof_lr_warmup_epochs", "-1", "expected a number of epochs >= 0"),
    ("batchprof_co2_country", "XYZ", "expected an ISO 3166 alpha-3 country code"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_INI, ids=[c[0] for c in BAD_INI])
def test_bad_ini_value_is_usage_error_naming_the_key(pytester: pytest.Pytester, key: str,
                                                     value: str, expected: str) -> None:
    pytester.makeini(f"[pytest]\n{key} = {value}\n")
    pytester.makepyfile(TRIVIAL_TEST)
    line = assert_usage_error(pytester.runpytest(), key, f"(got {value!r})", expected)
    assert line.startswith(f"ERROR: {key} (ini) ")
    assert "--" not in line.split(";")[0]  # names the ini key, not the flag


def test_unavailable_ini_device_names_the_ini_key(pytester: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    no_accelerators(monkeypatch)
    pytester.makeini("[pytest]\nbatchprof_device = cuda\n")
    pytester.makepyfile(TRIVIAL_TEST)
    line = assert_usage_error(pytester.runpytest(), "batchprof_device", "(got 'cuda')",
                              "expected auto, cpu or a device this machine has")
    assert line.startswith("ERROR: batchprof_device (ini) cuda is not available here")


def test_command_line_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nbatchprof_epochs = 3\nbatchprof_batch_sizes = 2,8\nbatchprof_lr = 0.5\n"
    )
    pytester.makepyfile(TRIVIAL_TEST)
    header = header_line(pytester.runpytest("--epochs", "5", "--batch-sizes", "4"))
    assert " epochs=5 " in header
    assert " batch-sizes=4 " in header
    assert " lr=0.5 " in header  # not overridden, so the ini still counts
    result = pytester.runpytest("--batch-sizes", "4", "--collect-only", "-q")
    assert [i.rsplit("::", 1)[1] for i in collected_ids(result)] == ["test_bs[bs4]"]


def test_good_command_line_overrides_bad_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbatchprof_epochs = 0\n")
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest("--epochs", "2")
    assert result.ret == pytest.ExitCode.OK
    assert " epochs=2 " in header_line(result)


def test_ini_relative_data_dir_is_resolved_against_ini_directory(
    pytester: pytest.Pytester,
) -> None:
    project = pytester.mkdir("project")
    (project / "tox.ini").write_text("[pytest]\nbatchprof_data_dir = data/sets\n")
    (project / "test_bs.py").write_text(TRIVIAL_TEST)
    result = pytester.runpytest("project/test_bs.py")  # the cwd is pytester.path, not project
    assert result.ret == pytest.ExitCode.OK
    assert f" data-dir={project / 'data' / 'sets'} " in header_line(result)


def test_command_line_relative_data_dir_is_not_moved_to_ini_directory(
    pytester: pytest.Pytester,
) -> None:
    project = pytester.mkdir("project")
    (project / "tox.ini").write_text("[pytest]\nbatchprof_data_dir = from-ini\n")
    (project / "test_bs.py").write_text(TRIVIAL_TEST)
    header = header_line(pytester.runpytest("project/test_bs.py", "--data-dir", "cli-dir"))
    assert " data-dir=cli-dir " in header
    assert "from-ini" not in header


def test_env_is_default_data_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    env_dir = tmp_path / "from-env"
    monkeypatch.setenv("BATCHPROF_DATA_DIR", str(env_dir))
    pytester.makepyfile(TRIVIAL_TEST)
    assert f" data-dir={env_dir} " in header_line(pytester.runpytest())


def test_ini_and_command_line_beat_env_data_dir(pytester: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("BATCHPROF_DATA_DIR", str(tmp_path / "from-env"))
    pytester.makeini(f"[pytest]\nbatchprof_data_dir = {tmp_path / 'from-ini'}\n")
    pytester.makepyfile(TRIVIAL_TEST)
    header = header_line(pytester.runpytest())
    assert f" data-dir={tmp_path / 'from-ini'} " in header
    header = header_line(pytester.runpytest("--data-dir", str(tmp_path / "from-cli")))
    assert f" data-dir={tmp_path / 'from-cli'} " in header
    assert "from-env" not in header


def test_without_env_data_dir_defaults_to_user_cache(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHPROF_DATA_DIR")
    pytester.makepyfile(TRIVIAL_TEST)
    expected = Path("~/.cache/pytest-batchprof").expanduser()
    assert f" data-dir={expected} " in header_line(pytester.runpytest())


# ---------------------------------------------------------------- --help

SHORT_FLAGS = ["--batch-sizes", "--epochs", "--dataset", "--data-dir", "--device", "--seed",
               "--repeats", "--lr", "--optimizer", "--lr-scaling", "--lr-base-batch",
               "--lr-warmup-epochs", "--target-accuracy", "--target-metric", "--train-subset",
               "--drop-last",
               "--val-fraction",
               "--inference-batch-size", "--noise-scale", "--precision", "--keep-denormals",
               "--no-co2", "--co2-country"]
"""The experiments' options: each is also ``--batchprof-NAME``."""
FLAGS = [flag.replace("--", "--batchprof-", 1) for flag in SHORT_FLAGS] + [
    "--batchprof-report", "--batchprof-no-report", "--batchprof-columns", "--batchprof-save",
    "--batchprof-compare", "--batchprof-fail-drop", "--batchprof-fail-slowdown",
    "--batchprof-fail-missing", "--batchprof-cache", "--batchprof-cache-clear",
    "--batchprof-memory-budget",
    "--batchprof-oom", "--batchprof-data-parallel", "--batchprof-find-max-batch",
    "--batchprof-max-batch-margin", "--batchprof-max-batch-cap", "--batchprof-lr-grid",
    "--batchprof-no-ensemble"]
INI_KEYS = [flag[2:].replace("-", "_") for flag in FLAGS]


def test_help_lists_every_option_in_batchprof_group_with_ini_twin(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    group = re.search(r"^batchprof: .*?:\n(.*?)\n\n", text, re.MULTILINE | re.DOTALL)
    assert group, text
    group_flags = re.findall(r"^  (--[a-z0-9-]+)(?:=|\s|$)", group.group(1), re.MULTILINE)
    assert group_flags == FLAGS  # the short spellings work but are not listed twice

    ini_start = text.index("[pytest] configuration options")
    ini_section = text[ini_start:text.index("\nEnvironment variables:", ini_start)]
    ini_keys = re.findall(r"^  (batchprof_[a-z0-9_]+)", ini_section, re.MULTILINE)
    assert ini_keys == INI_KEYS


def test_help_shows_every_option_as_written(pytester: pytest.Pytester) -> None:
    """argparse formats help text with ``%``: an option's own ``%`` must come out as it is,
    not as argparse's dict of the option or a formatting error."""
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    group = text[text.index("batchprof: batch-size"):text.index("[pytest] configuration")]
    assert "%(" not in group and "{'" not in group
    assert ("--batchprof-fail-slowdown=PCT with --batchprof-compare: fail when a run trained "
            "more than PCT% slower") in " ".join(group.split())  # however the lines wrap


# ---------------------------------------------------------------- parametrization


def test_batch_sizes_parametrize_with_bs_ids(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one=TRIVIAL_TEST)
    result = pytester.runpytest("--batch-sizes", "1,16,64", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert collected_ids(result) == ["test_one.py::test_bs[bs1]", "test_one.py::test_bs[bs16]",
                                     "test_one.py::test_bs[bs64]"]
    result.stdout.fnmatch_lines(["3 tests collected*"])


def test_default_batch_size_is_64_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one=TRIVIAL_TEST)
    result = pytester.runpytest("--collect-only", "-q")
    assert collected_ids(result) == ["test_one.py::test_bs[bs64]"]


def test_batch_size_fixture_value_matches_its_id(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="""
        def test_bs(batch_size, request):
            assert type(batch_size) is int
            assert request.node.callspec.id == f"bs{batch_size}"
    """)
    result = pytester.runpytest("--batch-sizes", "1, 16,64")
    result.assert_outcomes(passed=3)


EXPLICIT = {
    "string": ('@pytest.mark.parametrize("batch_size", [3, 5])', ["[3]", "[5]"]),
    "string-with-other": ('@pytest.mark.parametrize("batch_size,other", [(3, "a"), (5, "b")])',
                          ["[3-a]", "[5-b]"]),
    "string-spaces": ('@pytest.mark.parametrize("other, batch_size", [("a", 3), ("b", 5)])',
                      ["[a-3]", "[b-5]"]),
    "list": ('@pytest.mark.parametrize(["batch_size", "other"], [(3, "a"), (5, "b")])',
             ["[3-a]", "[5-b]"]),
    "tuple": ('@pytest.mark.parametrize(("other", "batch_size"), [("a", 3), ("b", 5)])',
              ["[a-3]", "[b-5]"]),
    "keywords": ('@pytest.mark.parametrize(argnames="batch_size", argvalues=[3, 5])',
                 ["[3]", "[5]"]),
}


@pytest.mark.parametrize(("decorator", "ids"), EXPLICIT.values(), ids=EXPLICIT.keys())
def test_explicit_parametrize_wins(pytester: pytest.Pytester, decorator: str,
                                   ids: list[str]) -> None:
    other = ", other" if "other" in decorator else ""
    pytester.makepyfile(test_one=f"""
        import pytest

        {decorator}
        def test_bs(batch_size{other}):
            assert batch_size in (3, 5)
    """)
    result = pytester.runpytest("--batch-sizes", "1,16", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert collected_ids(result) == [f"test_one.py::test_bs{id_}" for id_ in ids]
    result = pytester.runpytest("--batch-sizes", "1,16")
    result.assert_outcomes(passed=2)


def test_explicit_parametrize_on_class_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="""
        import pytest

        @pytest.mark.parametrize("batch_size", [7])
        class TestIt:
            def test_bs(self, batch_size):
                assert batch_size == 7
    """)
    result = pytester.runpytest("--collect-only", "-q")
    assert collected_ids(result) == ["test_one.py::TestIt::test_bs[7]"]


def test_fixture_using_batch_size_parametrizes_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="""
        import pytest

        @pytest.fixture
        def batches(batch_size):
            return [batch_size] * 2

        def test_batches(batches):
            assert batches[0] in (1, 16)
    """)
    result = pytester.runpytest("--batch-sizes", "1,16", "--collect-only", "-q")
    assert collected_ids(result) == ["test_one.py::test_batches[bs1]",
                                     "test_one.py::test_batches[bs16]"]
    pytester.runpytest("--batch-sizes", "1,16").assert_outcomes(passed=2)


def test_test_without_batch_size_is_not_parametrized(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="""
        def test_plain():
            pass

        def test_bs(batch_size):
            pass
    """)
    result = pytester.runpytest("--batch-sizes", "1,16", "--collect-only", "-q")
    assert collected_ids(result) == ["test_one.py::test_plain", "test_one.py::test_bs[bs1]",
                                     "test_one.py::test_bs[bs16]"]


# ---------------------------------------------------------------- report header


def test_header_shows_command_line_settings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest("--dataset", "synthetic", "--batch-sizes", "1,16")
    assert result.ret == pytest.ExitCode.OK
    assert header_line(result).startswith("batchprof: dataset=synthetic batch-sizes=1,16 ")


def test_header_shows_every_setting_and_the_device(pytester: pytest.Pytester,
                                                   tmp_path: Path) -> None:
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest(
        "--dataset", "SYNTHETIC", "--batch-sizes", " 1, 16", "--epochs", "3",
        "--optimizer", "sgd", "--lr", "0.01", "--seed", "5", "--device", "cpu",
        "--train-subset", "200", "--val-fraction", "0.2", "--data-dir", str(tmp_path),
        "--inference-batch-size", "256", "--co2-country", "fra",
    )
    assert result.ret == pytest.ExitCode.OK
    assert header_line(result) == (
        "batchprof: dataset=synthetic batch-sizes=1,16 epochs=3 optimizer=sgd lr=0.01 seed=5 "
        "device=cpu train-subset=200 val-fraction=0.2 inference-batch-size=256 co2=FRA "
        f"data-dir={tmp_path} (cpu)"
    )
    assert " co2=off " in header_line(pytester.runpytest("--no-co2"))
    assert " keep-denormals " in header_line(pytester.runpytest("--keep-denormals"))
    assert " seed=5 repeats=3 device=" in header_line(pytester.runpytest("--seed=5",
                                                                         "--repeats=3"))


def test_header_defaults(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                         hermetic: Path) -> None:
    no_accelerators(monkeypatch)
    pytester.makepyfile(TRIVIAL_TEST)
    result = pytester.runpytest()
    assert header_line(result) == (
        "batchprof: dataset=mnist batch-sizes=64 epochs=2 optimizer=adam lr=0.001 seed=0 "
        "device=auto train-subset=all val-fraction=0.08333 inference-batch-size=training "
        f"co2=USA data-dir={hermetic} (chosen when a test first needs it)"
    )
