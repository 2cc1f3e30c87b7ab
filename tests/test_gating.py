"""CI gates: the ``min_accuracy`` marker, a failing assertion's ``Run`` repr, and baselines.

Thresholds and ``compare()`` are tested on hand-made rows, where every figure
is exact; the rest in real in-process sessions (``pytester``) on scikit-learn's
digits with tiny MLPs and one epoch. The same seed gives the same accuracy on
the CPU, so a baseline saved by one session matches the next one exactly; a
saved baseline is kept in a module cache so that each test does not train it
again. Timings are never asserted on: the machine may be busy.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from session_output import failure_section

from pytest_batchprof import plugin
from pytest_batchprof.engine.training import Run, RunConfig
from pytest_batchprof.experiment.config import RUN_KEYS
from pytest_batchprof.gating import (
    EXPERIMENT_KEYS,
    NOISE_NOTE,
    Threshold,
    compare,
    same_entry,
)
from pytest_batchprof.reports.storage import ReportError, load_report, report_json

DIGITS = ("--dataset", "digits", "--epochs", "1", "--no-co2", "--device", "cpu")
QUIET = (*DIGITS, "--batchprof-no-report")
"""Most sessions need no report files (and skip drawing the plots)."""

MAIN = """
    import os

    import pytest

    @pytest.mark.parametrize("hidden", [32, 64])
    def test_train(trained_mlp, hidden):
        lr = os.environ.get(f"GATING_LR_{hidden}")  # makes one run worse on purpose
        run = trained_mlp(hidden=hidden, batch_size=16, lr=float(lr) if lr else None)
        assert run.test_accuracy >= 0  # the tests pass whatever the accuracy
"""
T32 = "64-32-10 on digits, batch 16, seed 0"
T64 = "64-64-10 on digits, batch 16, seed 0"
WEAK_LR = "0.00001"  # one epoch at this rate leaves a run near chance

COMPARED = re.compile(r"^-+ compared with baseline (.+?) -+$")
COMPARISON_HEADER = ["run", "seeds (baseline, now)", "baseline test acc (%)", "now test acc (%)",
                     "delta", "noise (95% CI of delta)", "train time", "verdict"]
NOT_SAVED = ("batchprof: baseline 'base' was not saved: the session had failures; a baseline "
             "records a passing session")


# ---------------------------------------------------------------- helpers


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session; an inner Ctrl-C must not stop this (outer) session."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args,
                              no_reraise_ctrlc=True)


@pytest.fixture(scope="module")
def baselines() -> dict[str | None, str]:
    """Baseline JSON texts saved by a session of ``MAIN``, by learning rate (None: default)."""
    return {}


def baseline_file(pytester: pytest.Pytester, name: str = "base") -> Path:
    return pytester.path / "reports" / "baselines" / f"{name}.json"


def saved_baseline(pytester: pytest.Pytester, baselines: dict[str | None, str],
                   name: str = "base", lr: str | None = None) -> Path:
    """``reports/baselines/NAME.json`` of ``MAIN`` at ``lr``, saved by a session once per module."""
    pytester.makepyfile(test_main=MAIN)
    path = baseline_file(pytester, name)
    if lr not in baselines:
        result = run(pytester, *QUIET, "--batchprof-save", name,
                     *(("--lr", lr) if lr else ()))
        result.assert_outcomes(passed=2)
        assert result.ret == pytest.ExitCode.OK
        assert f"baseline saved: {path}" in result.outlines
        baselines[lr] = path.read_text(encoding="utf-8")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(baselines[lr], encoding="utf-8")
    return path


def baseline_rows(path: Path) -> dict[str, dict[str, object]]:
    """The rows of a baseline file, by model name."""
    return {row["model"]: row for row in load_report(path)["rows"]}


def edit_baseline(path: Path, edit) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")


def comparison_table(result: pytest.RunResult) -> tuple[Path, dict[str, dict[str, str]]]:
    """The baseline named on the one ``compared with baseline`` separator, and the table
    under it: its cells by column header, by run title."""
    lines = result.outlines
    starts = [index for index, line in enumerate(lines) if COMPARED.match(line)]
    assert len(starts) == 1, result.stdout.str()
    table = []
    for line in lines[starts[0] + 1:]:
        if line.startswith("The baseline was measured"):  # the machine note, if any
            continue
        if not line.startswith("|"):
            break
        table.append(line)
    header, _rule, *body = table_cells("\n".join(table))
    assert header == COMPARISON_HEADER
    entries = {cells[0]: dict(zip(header, cells, strict=True)) for cells in body}
    assert len(entries) == len(body)  # one entry per run
    return Path(COMPARED.match(lines[starts[0]])[1]), entries


def table_cells(table: str) -> list[list[str]]:
    """The cells of a GitHub-flavoured table, line by line (the rule line included)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in table.splitlines()]


def regression_lines(result: pytest.RunResult) -> list[str]:
    """The red ``batchprof: RUN: REGRESSION ...`` lines after the comparison table."""
    return [line for line in result.outlines
            if line.startswith("batchprof: ") and ": REGRESSION" in line]


def assert_percent(cell: str, fraction: object) -> None:
    assert isinstance(fraction, float)
    assert cell == f"{fraction * 100:.2f}"


def delta_pp(cell: str) -> float:
    match = re.fullmatch(r"([+-]\d+\.\d\d) pp", cell)
    assert match, cell
    return float(match[1])


def assert_one_clean_error(result: pytest.RunResult, *fragments: str) -> str:
    """Exit code 4, a single ``ERROR:`` line holding every fragment, no traceback, no test."""
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    errors = [line for line in result.outlines + result.errlines if line.startswith("ERROR")]
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Traceback" not in output
    assert "test session starts" not in output  # ended before collection
    assert "batchprof: training" not in output
    return errors[0]



def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """``{test name: PASSED | FAILED | ERROR}`` from the ``-rA`` short summary."""
    found = {}
    for line in result.outlines:
        match = re.match(r"^(PASSED|FAILED|ERROR) \S+::(\w+)", line)
        if match:
            found[match[2]] = match[1]
    return found


def row(**changes: object) -> dict[str, object]:
    """A hand-made summary row of a run of 64-8-10 on digits."""
    figures: dict[str, object] = {
        "model": "64-8-10", "dataset": "digits", "input_shape": [8, 8], "hidden": [8],
        "num_classes": 10, "activation": "relu", "batch_size": 32, "epochs": 1, "lr": 0.001,
        "optimizer": "adam", "seed": 0, "device": "cpu", "train_subset": None,
        "val_fraction": 1 / 12, "train_seconds": 2.0, "train_accuracy": 0.8,
        "val_accuracy": 0.85, "test_accuracy": 0.9, "diverged": None,
        "flush_denormals": True, "lr_warmup_epochs": 0.0, "lr_warmup_start": None,
        "target_accuracy": None, "architecture": "0123456789abcdef", "loss": "cross_entropy",
        "precision": "fp32", "processes": 1, "model_id": None, "code": None,
        "tests": ["test_a.py::test_train"],
    }
    figures.update(changes)
    return figures


ENV = {"machine": "box", "cpu": "Some CPU", "device": "cpu", "torch": "2.5.0"}
TITLE = "64-8-10 on digits, batch 32, seed 0"


def compared(now: list[dict[str, object]], before: list[dict[str, object]],
             fail_drop: float = 0.5, fail_slowdown: float | None = None,
             old_environment: dict[str, object] | None = None):
    baseline = {"rows": before, "environment": ENV if old_environment is None
                else old_environment}
    return compare(now, baseline, Path("reports/baselines/base.json"), fail_drop,
                   fail_slowdown, ENV)


# ---------------------------------------------------------------- save, then compare


def test_save_then_compare_unchanged(pytester: pytest.Pytester,
                                     baselines: dict[str | None, str]) -> None:
    pytester.makepyfile(test_main=MAIN)
    saved = run(pytester, *QUIET, "--batchprof-save", "base")
    saved.assert_outcomes(passed=2)
    assert saved.ret == pytest.ExitCode.OK
    path = baseline_file(pytester)  # reports/ under the rootdir by default
    assert f"baseline saved: {path}" in saved.outlines
    document = load_report(path)
    assert document["partial"] is False
    assert [row["model"] for row in document["rows"]] == ["64-32-10", "64-64-10"]
    text = path.read_text(encoding="utf-8")
    baselines.setdefault(None, text)

    again = run(pytester, *QUIET, "--batchprof-compare", "base")
    again.assert_outcomes(passed=2)
    assert again.ret == pytest.ExitCode.OK
    shown, table = comparison_table(again)
    assert shown == path
    assert list(table) == [T32, T64]
    old = baseline_rows(path)
    for title, model in ((T32, "64-32-10"), (T64, "64-64-10")):
        entry = table[title]
        assert entry["verdict"] == "ok"
        assert entry["delta"] == "+0.00 pp"  # same seed, same accuracy
        assert_percent(entry["baseline test acc (%)"], old[model]["test_accuracy"])
        assert entry["now test acc (%)"] == entry["baseline test acc (%)"]
        assert re.fullmatch(r"[+-]\d+%", entry["train time"])  # shown, never judged
    assert regression_lines(again) == []
    assert "not comparable" not in again.stdout.str()  # same machine and torch
    assert "baseline saved" not in again.stdout.str()
    assert path.read_text(encoding="utf-8") == text  # comparing does not rewrite it


def test_worse_run_fails_the_session_though_its_tests_pass(
        pytester: pytest.Pytester, baselines: dict[str | None, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved_baseline(pytester, baselines)
    before = baseline_rows(path)["64-64-10"]["test_accuracy"]
    monkeypatch.setenv("GATING_LR_64", WEAK_LR)  # only 64-64-10 gets worse

    worse = run(pytester, *DIGITS, "--batchprof-compare", "base")  # with the report files
    worse.assert_outcomes(passed=2)
    assert worse.ret == pytest.ExitCode.TESTS_FAILED
    _, table = comparison_table(worse)
    assert table[T32]["verdict"] == "ok"
    entry = table[T64]
    assert_percent(entry["baseline test acc (%)"], before)
    drop = -delta_pp(entry["delta"])
    assert drop > 0.5
    assert drop == pytest.approx(float(entry["baseline test acc (%)"])
                                 - float(entry["now test acc (%)"]), abs=0.011)
    verdict = f"REGRESSION: {entry['delta']} > 0.5 pp allowed; lr 0.001 -> 1e-05"
    assert entry["verdict"] == verdict
    assert regression_lines(worse) == [f"batchprof: {T64}: {verdict}"]  # not 64-32-10

    markdown = (pytester.path / "reports" / "latest.md").read_text(encoding="utf-8")
    assert "\n## Comparison with the baseline\n" in markdown
    assert f"Baseline: `{path}`" in markdown
    assert verdict in markdown
    assert T32 in markdown.split("## Comparison with the baseline", 1)[1]

    # The same comparison passes with a looser gate; a baseline is also found by its path.
    elsewhere = pytester.mkdir("elsewhere") / "base.json"
    elsewhere.write_bytes(path.read_bytes())
    path.write_text("not the baseline of this comparison", encoding="utf-8")
    lenient = run(pytester, *QUIET, "--batchprof-compare", str(elsewhere),
                  "--batchprof-fail-drop", "100")
    lenient.assert_outcomes(passed=2)
    assert lenient.ret == pytest.ExitCode.OK
    shown, table = comparison_table(lenient)
    assert shown == elsewhere
    assert table[T64]["delta"] == entry["delta"]
    assert [entry["verdict"] for entry in table.values()] == ["ok", "ok; lr 0.001 -> 1e-05"]
    assert regression_lines(lenient) == []


def test_improvement_passes(pytester: pytest.Pytester,
                            baselines: dict[str | None, str]) -> None:
    path = saved_baseline(pytester, baselines, name="weak", lr=WEAK_LR)
    better = run(pytester, *QUIET, "--batchprof-compare", "weak")
    better.assert_outcomes(passed=2)
    assert better.ret == pytest.ExitCode.OK
    shown, table = comparison_table(better)
    assert shown == path
    assert list(table) == [T32, T64]
    for entry in table.values():
        assert entry["verdict"] == f"improved; lr {float(WEAK_LR):g} -> 0.001"
        assert delta_pp(entry["delta"]) > 0
        assert entry["delta"].startswith("+")
    assert regression_lines(better) == []
    assert "REGRESSION" not in better.stdout.str()


def test_fail_slowdown_and_the_machine_note(pytester: pytest.Pytester,
                                           baselines: dict[str | None, str]) -> None:
    path = saved_baseline(pytester, baselines)

    def times(document: dict) -> None:  # 64-64-10 was "instant", 64-32-10 took ages
        for old in document["rows"]:
            old["train_seconds"] = 1e-6 if old["model"] == "64-64-10" else 1e6

    edit_baseline(path, times)
    slower = run(pytester, *QUIET, "--batchprof-compare", "base",
                 "--batchprof-fail-slowdown", "0")
    slower.assert_outcomes(passed=2)
    assert slower.ret == pytest.ExitCode.TESTS_FAILED
    _, table = comparison_table(slower)
    assert table[T32]["verdict"] == "ok"  # faster than its baseline
    assert table[T32]["train time"].startswith("-")
    assert fnmatch.fnmatchcase(table[T64]["verdict"],
                               "REGRESSION: training *% slower > 0% allowed")
    assert table[T64]["train time"].startswith("+")
    lines = regression_lines(slower)
    assert len(lines) == 1
    assert fnmatch.fnmatchcase(lines[0], f"batchprof: {T64}: REGRESSION: training *% slower*")
    assert "not comparable" not in slower.stdout.str()

    def elsewhere(document: dict) -> None:
        document["environment"].update(cpu="Imaginary CPU", torch="0.0.1")

    edit_baseline(path, elsewhere)
    ungated = run(pytester, *QUIET, "--batchprof-compare", "base")  # no --batchprof-fail-slowdown
    ungated.assert_outcomes(passed=2)
    assert ungated.ret == pytest.ExitCode.OK
    _, table = comparison_table(ungated)
    assert [entry["verdict"] for entry in table.values()] == ["ok", "ok"]
    assert "slower" not in ungated.stdout.str()
    notes = [line for line in ungated.outlines if "not comparable" in line]
    assert len(notes) == 1
    assert fnmatch.fnmatchcase(
        notes[0], "The baseline was measured on another machine or software (cpu 'Imaginary "
                  "CPU' -> '*'; torch '0.0.1' -> '*'): training times are not comparable.")


def test_configuration_on_one_side_only_is_listed(pytester: pytest.Pytester,
                                                  baselines: dict[str | None, str]) -> None:
    path = saved_baseline(pytester, baselines)

    def change(document: dict) -> None:
        for old in document["rows"]:
            if old["model"] == "64-32-10":  # an experiment this session does not run
                old.update(model="64-48-10", hidden=[48])
            else:  # another recipe of the same experiment: still the same entry, said
                old.update(lr=0.1, optimizer="sgd", device="cuda:0")

    edit_baseline(path, change)
    result = run(pytester, *QUIET, "--batchprof-compare", "base")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    _, table = comparison_table(result)
    gone = "64-48-10 on digits, batch 16, seed 0"
    assert list(table) == [T32, T64, gone]
    assert table[T32]["verdict"] == "new (not in baseline)"
    assert table[T32]["baseline test acc (%)"] == "n/a"
    assert table[T32]["delta"] == "n/a"
    assert table[T64]["verdict"] == "ok; lr 0.1 -> 0.001; optimizer sgd -> adam"
    assert table[T64]["delta"] == "+0.00 pp"
    assert table[gone]["verdict"] == "not run (only in baseline)"
    assert table[gone]["now test acc (%)"] == "n/a"
    assert regression_lines(result) == []


# ---------------------------------------------------------------- bad baselines and options


def _missing_name(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    return "nope", baseline_file(pytester, "nope"), "cannot be read (No such file or directory)"


def _missing_path(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.path / "nowhere" / "base.json"
    return str(path), path, "cannot be read (No such file or directory)"


def _unreadable(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    path = pytester.path / "locked.json"
    path.write_text(real(), encoding="utf-8")
    path.chmod(0)
    return str(path), path, "cannot be read (Permission denied)"


def _directory(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.mkdir("folder.json")  # unreadable as a file, even for root
    return str(path), path, "cannot be read"


def _truncated(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.path / "truncated.json"
    text = real()
    path.write_text(text[:len(text) // 2], encoding="utf-8")
    return str(path), path, "not valid JSON"


def _not_utf8(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00{")
    return str(path), path, "not valid JSON"


def _other_schema(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.path / "other.json"
    path.write_text(json.dumps({"schema": "pytest-benchmark", "schema_version": 1,
                                "rows": [], "columns": []}), encoding="utf-8")
    return str(path), path, "not a pytest-batchprof report (no schema 'pytest-batchprof/report')"


def _other_version(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.path / "future.json"
    document = json.loads(real())
    document["schema_version"] = 2
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path), path, "schema version 2; this pytest-batchprof reads version 1"


def _a_list(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.path / "list.json"
    path.write_text(json.dumps([json.loads(real())]), encoding="utf-8")
    return str(path), path, "not a pytest-batchprof report"


def _no_rows(pytester: pytest.Pytester, real) -> tuple[str, Path, str]:
    path = pytester.path / "empty.json"
    document = json.loads(real())
    del document["rows"]
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path), path, "has no rows or columns"


@pytest.mark.parametrize("make", [
    _missing_name, _missing_path, _unreadable, _directory, _truncated, _not_utf8, _other_schema,
    _other_version, _a_list, _no_rows,
], ids=lambda make: make.__name__.strip("_"))
def test_bad_baseline_ends_the_session_at_once(pytester: pytest.Pytester,
                                               baselines: dict[str | None, str],
                                               make) -> None:
    def real() -> str:
        return saved_baseline(pytester, baselines).read_text(encoding="utf-8")

    argument, path, problem = make(pytester, real)
    pytester.makepyfile(test_main=MAIN)
    try:
        result = run(pytester, *QUIET, "--batchprof-compare", argument)
    finally:
        if path.exists():
            path.chmod(0o755 if path.is_dir() else 0o644)
    line = assert_one_clean_error(result, f"--batchprof-compare: baseline {path}: {problem}")
    assert line.startswith("ERROR: --batchprof-compare: baseline ")


def test_ini_compare_names_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        batchprof_compare = nope
    """)
    pytester.makepyfile(test_main=MAIN)
    result = run(pytester, *QUIET)
    assert_one_clean_error(result, f"ERROR: batchprof_compare (ini): baseline "
                                   f"{baseline_file(pytester, 'nope')}: cannot be read")


@pytest.mark.parametrize(("option", "value", "problem"), [
    ("--batchprof-save", "bad/name", "is 'bad/name', which is not a baseline name"),
    ("--batchprof-save", "base.json", "is 'base.json', which is not a baseline name"),
    ("--batchprof-save", "", "is '', which is not a baseline name"),
    ("--batchprof-fail-drop", "-1", "is -1, which is not a finite number >= 0"),
    ("--batchprof-fail-drop", "inf", "is inf, which is not a finite number >= 0"),
    ("--batchprof-fail-slowdown", "fast", "is 'fast', which is not a number"),
])
def test_bad_gating_options_are_usage_errors(pytester: pytest.Pytester, option: str, value: str,
                                             problem: str) -> None:
    pytester.makepyfile(test_main=MAIN)
    result = run(pytester, *QUIET, option, value)
    assert_one_clean_error(result, f"ERROR: {option} {problem}; expected ")
    assert not (pytester.path / "reports").exists()


# ---------------------------------------------------------------- partial and empty sessions


def test_partial_session_does_not_save_the_baseline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_main=MAIN, test_fails="""
        def test_fails(trained_mlp):
            trained_mlp(hidden=32, batch_size=16)
            assert False, "deliberately"
    """)
    path = baseline_file(pytester)
    path.parent.mkdir(parents=True)
    path.write_text("the previous baseline\n", encoding="utf-8")
    result = run(pytester, *QUIET, "--batchprof-save", "base")
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert NOT_SAVED in result.outlines
    assert "baseline saved" not in result.stdout.str()
    assert path.read_text(encoding="utf-8") == "the previous baseline\n"  # kept as it was
    assert os.listdir(path.parent) == ["base.json"]  # and no temporary file left


def minimal_baseline(pytester: pytest.Pytester) -> Path:
    """A valid baseline file with one hand-made row (no session needed)."""
    path = baseline_file(pytester)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_json([row()], ["model"], dict(ENV), False), encoding="utf-8")
    return path


def test_comparison_that_trains_nothing_fails(pytester: pytest.Pytester) -> None:
    path = minimal_baseline(pytester)
    pytester.makepyfile(test_plain="""
        def test_plain():
            pass
    """)
    result = run(pytester, *QUIET, "--batchprof-compare", "base")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # no silent pass
    assert (f"batchprof: no run was trained, so nothing was compared with the baseline {path}"
            in result.outlines)
    assert not any(COMPARED.match(line) for line in result.outlines)


def test_collect_only_with_a_baseline_is_not_a_failure(pytester: pytest.Pytester) -> None:
    minimal_baseline(pytester)
    pytester.makepyfile(test_main=MAIN)
    result = run(pytester, *QUIET, "--batchprof-compare", "base", "--collect-only", "-q")
    assert "batchprof: training" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("change", [{"rows": [1]}, {"rows": [["model"]]},
                                    {"environment": "box"}])
def test_baseline_rows_and_environment_must_be_objects(tmp_path: Path,
                                                       change: dict[str, object]) -> None:
    document = json.loads(report_json([row()], ["model"], dict(ENV), False))
    document.update(change)
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    try:
        load_report(path)
    except ReportError as error:
        assert str(path) in str(error)
        return
    raise AssertionError("load_report accepted it; compare() would raise AttributeError")


# ---------------------------------------------------------------- min_accuracy in sessions


def test_plain_assertion_and_min_accuracy_marker(pytester: pytest.Pytester,
                                                 baselines: dict[str | None, str]) -> None:
    old = baseline_rows(saved_baseline(pytester, baselines))  # this session's exact figures
    r32, r64 = old["64-32-10"], old["64-64-10"]
    accuracy = {split: r64[f"{split}_accuracy"] for split in ("train", "val", "test")}
    for split in ("train", "val"):
        assert not math.isclose(accuracy[split], accuracy["test"]), accuracy
    val_test = (accuracy["val"] + accuracy["test"]) / 2
    train_test = (accuracy["train"] + accuracy["test"]) / 2
    between_runs = (r32["test_accuracy"] + r64["test_accuracy"]) / 2
    pytester.makepyfile(test_marker=f"""
        import pytest

        def test_plain_assert(trained_mlp):
            run = trained_mlp(hidden=32, batch_size=16)
            assert run.test_accuracy >= 0.99

        @pytest.mark.min_accuracy(0.5)
        def test_good_run(trained_mlp):
            trained_mlp(hidden=64, batch_size=16)

        @pytest.mark.min_accuracy(0.999)
        def test_both_runs_below(trained_mlp):
            trained_mlp(hidden=64, batch_size=16)
            trained_mlp(hidden=32, batch_size=16)

        @pytest.mark.min_accuracy({between_runs!r})
        def test_second_run_below(trained_mlp):
            trained_mlp(hidden=64, batch_size=16)
            trained_mlp(hidden=32, batch_size=16)

        @pytest.mark.min_accuracy({val_test!r}, split="val")
        def test_val_split(trained_mlp):
            trained_mlp(hidden=64, batch_size=16)

        @pytest.mark.min_accuracy({val_test!r}, split="test")
        def test_test_split(trained_mlp):
            trained_mlp(hidden=64, batch_size=16)

        @pytest.mark.min_accuracy({val_test!r})
        def test_default_split(trained_mlp):
            trained_mlp(hidden=64, batch_size=16)

        @pytest.mark.min_accuracy({train_test!r}, split="train")
        def test_train_split(trained_mlp):
            trained_mlp(hidden=64, batch_size=16)
    """)
    result = run(pytester, "test_marker.py", *QUIET, "-rA")
    split_tests = {  # test: (split checked, threshold); each threshold straddles two splits
        "test_val_split": ("val", val_test),
        "test_test_split": ("test", val_test),
        "test_default_split": ("test", val_test),
        "test_train_split": ("train", train_test),
    }
    below = {test: accuracy[split] < minimum for test, (split, minimum) in split_tests.items()}
    assert below["test_val_split"] != below["test_test_split"]
    assert outcomes(result) == {
        "test_plain_assert": "FAILED",
        "test_good_run": "PASSED",
        "test_both_runs_below": "FAILED",
        "test_second_run_below": "FAILED",
        **{test: "FAILED" if fails else "PASSED" for test, fails in below.items()},
    }
    assert result.ret == pytest.ExitCode.TESTS_FAILED

    # A plain assertion names the run and its figures.
    result.stdout.fnmatch_lines([
        ">       assert run.test_accuracy >= 0.99",
        f"E       assert {r32['test_accuracy']!r} >= 0.99",
        f"E        +  where {r32['test_accuracy']!r} = <Run 64-32-10 on digits, batch 16, "
        f"1 epoch, adam lr=0.001, seed 0, cpu: test acc {r32['test_accuracy']:.2%}, "
        f"val acc {r32['val_accuracy']:.2%}, train acc {r32['train_accuracy']:.2%}, "
        f"* s>.test_accuracy",
    ])

    # The marker: one line per run below the threshold, with its figures, no traceback.
    def line(title: str, figures: dict[str, object], split: str, minimum: float) -> str:
        return (f"{title}: {split} accuracy {figures[f'{split}_accuracy']:.2%} is below "
                f"{minimum:.2%} (train {figures['train_accuracy']:.2%}, "
                f"val {figures['val_accuracy']:.2%}, test {figures['test_accuracy']:.2%}, * s)")

    def assert_section(test: str, patterns: list[str]) -> None:
        section = failure_section(result, test)
        assert len(section) == len(patterns), section
        for printed, pattern in zip(section, patterns, strict=True):
            assert fnmatch.fnmatchcase(printed, pattern), (printed, pattern)

    assert_section("test_both_runs_below", [line(T64, r64, "test", 0.999),
                                            line(T32, r32, "test", 0.999)])
    assert_section("test_second_run_below", [line(T32, r32, "test", between_runs)])
    for test, (split, minimum) in split_tests.items():
        if below[test]:
            assert_section(test, [line(T64, r64, split, minimum)])
    output = result.stdout.str()
    assert "Traceback" not in output
    assert output.count("def test_") == 1  # the source of test_plain_assert, no other


def test_min_accuracy_bad_arguments_and_no_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marker="""
        import pytest

        @pytest.mark.min_accuracy(1.5)
        def test_above_one():
            pass

        @pytest.mark.min_accuracy(0)
        def test_zero():
            pass

        @pytest.mark.min_accuracy("x")
        def test_text():
            pass

        @pytest.mark.min_accuracy(0.5, split="nope")
        def test_unknown_split():
            pass

        @pytest.mark.min_accuracy(0.5, 0.6)
        def test_two_fractions():
            pass

        @pytest.mark.min_accuracy(0.5)
        def test_trains_nothing(dataset):
            assert dataset.name == "digits"
    """)
    result = run(pytester, *QUIET, "-rA")
    expected = {
        "test_above_one": "@pytest.mark.min_accuracy(1.5): give a fraction above 0 and at most "
                          "1, e.g. 0.96 for 96%",
        "test_zero": "@pytest.mark.min_accuracy(0): give a fraction above 0 and at most 1, "
                     "e.g. 0.96 for 96%",
        "test_text": "@pytest.mark.min_accuracy('x'): give a fraction above 0 and at most 1, "
                     "e.g. 0.96 for 96%",
        "test_unknown_split": "@pytest.mark.min_accuracy(split='nope'): choose one of test, "
                              "val, train",
        "test_two_fractions": "@pytest.mark.min_accuracy takes one fraction and an optional "
                              "split=, e.g. @pytest.mark.min_accuracy(0.96, split='val')",
        "test_trains_nothing": "@pytest.mark.min_accuracy: the test trained no run to check "
                               "(use trained_model, trained_mlp or "
                               "pytest_batchprof.record)",
    }
    # bad arguments are rejected at setup, before the test could train anything
    assert outcomes(result) == {**dict.fromkeys(expected, "ERROR"),
                                "test_trains_nothing": "FAILED"}
    for test, message in expected.items():
        section = failure_section(result, test)
        assert section[-1] == message, section
        assert not any(printed.startswith((">", "E ")) for printed in section), section
    assert "Traceback" not in result.stdout.str()
    assert "batchprof: training" not in result.stdout.str()


def test_bad_marker_failure_is_not_chained() -> None:
    item = SimpleNamespace(get_closest_marker=lambda name: pytest.mark.min_accuracy(0.5, 0.6).mark,
                           stash=pytest.Stash())
    with pytest.raises(pytest.fail.Exception) as info:
        plugin.pytest_runtest_setup(item)
    assert info.value.msg.startswith("@pytest.mark.min_accuracy takes one fraction")
    assert not info.value.pytrace
    assert info.value.__context__ is None or info.value.__suppress_context__


# ---------------------------------------------------------------- Threshold


@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    ((0.96,), {}, Threshold(0.96, "test")),
    ((1,), {}, Threshold(1.0, "test")),
    ((0.5,), {"split": "val"}, Threshold(0.5, "val")),
    ((1e-9,), {"split": "train"}, Threshold(1e-9, "train")),
])
def test_threshold_from_marker(args: tuple, kwargs: dict, expected: Threshold) -> None:
    threshold = Threshold.from_marker(args, kwargs)
    assert threshold == expected
    assert isinstance(threshold.bound, float)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((1.5,), {}, "min_accuracy(1.5): give a fraction above 0 and at most 1, e.g. 0.96 for 96%"),
    ((0,), {}, "min_accuracy(0): give a fraction above 0"),
    ((-0.1,), {}, "min_accuracy(-0.1): give a fraction above 0"),
    ((math.nan,), {}, "min_accuracy(nan): give a fraction above 0"),
    (("x",), {}, "min_accuracy('x'): give a fraction above 0"),
    ((None,), {}, "min_accuracy(None): give a fraction above 0"),
    ((0.5,), {"split": "nope"}, "min_accuracy(split='nope'): choose one of test, val, train"),
    ((0.5, 0.6), {}, "min_accuracy takes one fraction and an optional split="),
    ((), {}, "min_accuracy takes one fraction and an optional split="),
    ((0.5,), {"splits": "val"}, "min_accuracy takes one fraction and an optional split="),
])
def test_threshold_rejects_bad_arguments(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Threshold.from_marker(args, kwargs)


def test_threshold_failures_are_exact() -> None:
    at = row(test_accuracy=0.9)
    below = row(model="64-16-10", test_accuracy=0.8999)
    assert Threshold(0.9).failures([at]) == []  # at the minimum passes
    assert Threshold(0.9).failures([at, below]) == [
        "64-16-10 on digits, batch 32, seed 0: test accuracy 89.99% is below 90.00% "
        "(train 80.00%, val 85.00%, test 89.99%, 2.0 s)"]
    assert Threshold(0.95).failures([at, below]) == [
        f"{TITLE}: test accuracy 90.00% is below 95.00% (train 80.00%, val 85.00%, "
        f"test 90.00%, 2.0 s)",
        "64-16-10 on digits, batch 32, seed 0: test accuracy 89.99% is below 95.00% "
        "(train 80.00%, val 85.00%, test 89.99%, 2.0 s)"]


def test_threshold_checks_the_chosen_split() -> None:
    rows = [row(train_accuracy=0.7, val_accuracy=0.95, test_accuracy=0.85)]
    assert Threshold(0.9, "val").failures(rows) == []
    assert Threshold(0.9, "test").failures(rows) == [
        f"{TITLE}: test accuracy 85.00% is below 90.00% (train 70.00%, val 95.00%, "
        f"test 85.00%, 2.0 s)"]
    assert Threshold(0.9, "train").failures(rows) == [
        f"{TITLE}: train accuracy 70.00% is below 90.00% (train 70.00%, val 95.00%, "
        f"test 85.00%, 2.0 s)"]
    assert Threshold(0.96, "val").failures(rows)[0].startswith(
        f"{TITLE}: val accuracy 95.00% is below 96.00%")


def test_diverged_run_is_below_any_threshold() -> None:
    reason = "training loss became nan in epoch 1 (lr=10, adam)"
    diverged = row(train_accuracy=None, val_accuracy=None, test_accuracy=None, diverged=reason)
    assert Threshold(1e-9).failures([diverged]) == [
        f"{TITLE}: test accuracy n/a is below 0.00% (train n/a, val n/a, test n/a, 2.0 s, "
        f"diverged: {reason})"]
    assert len(Threshold(1e-9, "val").failures([diverged])) == 1


# ---------------------------------------------------------------- compare()


@pytest.mark.parametrize(("recipe", "said"), [
    ({"lr": 0.1}, "; lr 0.001 -> 0.1"), ({"optimizer": "sgd"}, "; optimizer adam -> sgd"),
    ({"device": "cuda:0"}, ""), ({"precision": "bf16"}, "; precision fp32 -> bf16"),
    ({"lr": 1e-5, "optimizer": "sgd", "device": "mps"},
     "; lr 0.001 -> 1e-05; optimizer adam -> sgd"),
])
def test_recipe_changes_match_the_same_baseline_entry(recipe: dict[str, object],
                                                      said: str) -> None:
    """A recipe's change keeps the entry and is said; the device is the machine's (the
    comparison's machine note speaks of it), not the run's."""
    comparison = compared([row(test_accuracy=0.92, **recipe)], [row()])
    assert len(comparison.entries) == 1
    (entry,) = comparison.entries
    title = TITLE.replace(", seed", ", bf16, seed") if "precision" in recipe else TITLE
    assert (entry.title, entry.baseline, entry.now) == (title, 0.9, 0.92)
    assert entry.verdict == "improved" + said
    assert same_entry(row(), row(**recipe))


@pytest.mark.parametrize("key", [*EXPERIMENT_KEYS, "tests"])
def test_experiment_changes_do_not_match(key: str) -> None:
    other = {"dataset": "synthetic", "batch_size": 33, "processes": 2, "model_id": "Net",
             "tests": ["test_a.py::test_other"]}[key]
    comparison = compared([row(**{key: other})], [row()])
    assert [entry.verdict for entry in comparison.entries] == [
        "new (not in baseline)", "not run (only in baseline)"]
    new, gone = comparison.entries
    assert (new.baseline, new.now) == (None, 0.9)
    assert (gone.baseline, gone.now) == (0.9, None)
    assert comparison.regressions == []


@pytest.mark.parametrize("missing", [("architecture",), ("loss",), ("precision",),
                                     ("model_id", "code"), ("tests",), ("processes",),
                                     ("architecture", "loss", "lr_warmup_start")])
def test_a_baseline_recorded_before_a_setting_existed_still_matches(
        missing: tuple[str, ...]) -> None:
    """Baselines saved by an older version lack the settings added since (the model's
    architecture fingerprint, the loss, its id, the node ids): those settings are not
    compared, the rest are."""
    old = {key: value for key, value in row().items() if key not in missing}
    comparison = compared([row(loss="smooth")], [old])
    said = [] if "loss" in missing else ["loss cross_entropy -> smooth"]
    assert [(entry.title, entry.verdict) for entry in comparison.entries] == [
        (TITLE, "; ".join(["ok", *said]))]
    assert compared([row(batch_size=64)], [old]).entries[0].verdict == "new (not in baseline)"


def test_runs_that_differ_only_in_the_warm_up_start_are_two_runs() -> None:
    """Every RunConfig field is part of a run's key (lr_warmup_start once was not, and two
    such runs merged into one report row)."""
    from pytest_batchprof.reports.tables import run_key

    assert run_key(row(lr_warmup_start=1e-3)) != run_key(row(lr_warmup_start=1e-4))
    assert set(RUN_KEYS) == {field.name for field in dataclasses.fields(RunConfig)}


def test_tuples_of_a_run_match_lists_of_a_json_baseline() -> None:
    now = row(input_shape=(8, 8), hidden=(8,))  # Run.summary() has tuples, JSON lists
    comparison = compared([now], [row()])
    assert [entry.verdict for entry in comparison.entries] == ["ok"]


@pytest.mark.parametrize(("before", "now", "fail_drop", "verdict"), [
    (0.75, 0.5, 25.0, "ok"),  # exactly at the threshold (exact in binary)
    (0.75, 0.5 - 1e-9, 25.0, "REGRESSION: -25.00 pp > 25 pp allowed"),  # just above it
    (0.5, 0.5, 0.0, "ok"),
    (0.5, 0.49, 0.0, "REGRESSION: -1.00 pp > 0 pp allowed"),
    (0.9, 0.6, 50.0, "ok"),
    (0.9, 0.9 + 1e-9, 0.5, "improved"),
    (0.5, 0.625, 0.5, "improved"),
])
def test_drop_threshold(before: float, now: float, fail_drop: float, verdict: str) -> None:
    comparison = compared([row(test_accuracy=now)], [row(test_accuracy=before)], fail_drop)
    (entry,) = comparison.entries
    assert entry.verdict == verdict
    assert (entry in comparison.regressions) == verdict.startswith("REGRESSION")
    assert entry.drop_pp == pytest.approx((before - now) * 100)


@pytest.mark.parametrize(("before", "now"), [(0.9, 0.895), (0.912, 0.907), (0.6, 0.595)])
def test_drop_of_exactly_the_allowed_decimal_is_ok(before: float, now: float) -> None:
    (entry,) = compared([row(test_accuracy=now)], [row(test_accuracy=before)], 0.5).entries
    assert entry.verdict == "ok"


def test_diverged_now_is_a_regression() -> None:
    comparison = compared([row(test_accuracy=None, diverged="loss became nan")], [row()],
                          fail_drop=100)
    (entry,) = comparison.entries
    assert entry.verdict == "REGRESSION: no test accuracy (diverged)"
    assert comparison.regressions == [entry]
    assert entry.drop_pp is None
    assert table_cells(comparison.table())[2] == [
        TITLE, "1, 0", "90.00", "n/a", "n/a", "n/a", "+0%",
        "REGRESSION: no test accuracy (diverged)"]


def test_diverged_baseline_is_no_regression() -> None:
    comparison = compared([row()], [row(test_accuracy=None)])
    assert [entry.verdict for entry in comparison.entries] == ["ok"]
    assert comparison.regressions == []


@pytest.mark.parametrize(("old_seconds", "seconds", "fail_slowdown", "verdict"), [
    (1.0, 100.0, None, "ok"),  # not gated by default
    (2.0, 3.0, 50.0, "ok"),  # exactly 50 % slower
    (2.0, 3.2, 50.0, "REGRESSION: training 60% slower > 50% allowed"),
    (2.0, 1.0, 0.0, "ok"),  # faster
    (None, 5.0, 0.0, "ok"),  # no time to compare with
    (0.0, 5.0, 0.0, "ok"),
])
def test_slowdown_threshold(old_seconds: float | None, seconds: float,
                            fail_slowdown: float | None, verdict: str) -> None:
    comparison = compared([row(train_seconds=seconds)], [row(train_seconds=old_seconds)],
                          fail_slowdown=fail_slowdown)
    (entry,) = comparison.entries
    assert entry.verdict == verdict
    assert bool(comparison.regressions) == verdict.startswith("REGRESSION")


def test_regressions_come_first_in_a_verdict() -> None:
    both = compared([row(test_accuracy=0.8, train_seconds=4.0)], [row()], fail_slowdown=0)
    assert both.entries[0].verdict == ("REGRESSION: -10.00 pp > 0.5 pp allowed; "
                                       "REGRESSION: training 100% slower > 0% allowed")
    slower_but_better = compared([row(test_accuracy=0.95, train_seconds=4.0)], [row()],
                                 fail_slowdown=0)
    assert slower_but_better.entries[0].verdict == ("REGRESSION: training 100% slower > 0% "
                                                    "allowed; improved")


def test_machine_note_and_markdown() -> None:
    same = compared([row()], [row()])
    assert same.machine_note is None
    assert "measured on another machine" not in same.markdown()

    other = compared([row()], [row()], old_environment={**ENV, "cpu": "Old CPU",
                                                        "torch": "2.0.0"})
    note = ("The baseline was measured on another machine or software (cpu 'Old CPU' -> "
            "'Some CPU'; torch '2.0.0' -> '2.5.0'): training times are not comparable.")
    assert other.machine_note == note
    markdown = other.markdown()
    assert markdown.startswith("## Comparison with the baseline\n\n"
                               "Baseline: `reports/baselines/base.json`\n\n" + NOISE_NOTE
                               + "\n\n" + note + "\n\n")
    assert other.table() in markdown
    assert compared([row()], [row()], old_environment={}).machine_note.startswith(
        "The baseline was measured on another machine or software (machine None -> 'box';")


def test_entries_list_the_session_then_the_baseline_only_runs() -> None:
    now = [row(model="64-4-10", hidden=[4]), row()]
    before = [row(model="64-2-10", hidden=[2]), row(test_accuracy=0.5)]
    comparison = compared(now, before)
    assert [(entry.title.split()[0], entry.verdict) for entry in comparison.entries] == [
        ("64-4-10", "new (not in baseline)"), ("64-8-10", "improved"),
        ("64-2-10", "not run (only in baseline)")]
    header, _rule, new, improved, gone = table_cells(comparison.table())
    assert header == COMPARISON_HEADER
    assert new == ["64-4-10 on digits, batch 32, seed 0", "0, 1", "n/a", "90.00", "n/a", "n/a",
                   "n/a", "new (not in baseline)"]
    assert improved == [TITLE, "1, 1", "50.00", "90.00", "+40.00 pp", "unknown (1 seed each)",
                        "+0%", "improved"]
    assert gone == ["64-2-10 on digits, batch 32, seed 0", "1, 0", "90.00", "n/a", "n/a", "n/a",
                    "n/a", "not run (only in baseline)"]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_learning_rate_sweep_compares_each_run_with_its_own(order: tuple[int, int]) -> None:
    sweep = [row(lr=1e-3, test_accuracy=0.9), row(lr=1e-5, test_accuracy=0.1)]
    rows = [sweep[index] for index in order]
    comparison = compared(rows, rows)  # nothing changed
    assert [entry.verdict for entry in comparison.entries] == ["ok", "ok"]


def test_run_repr_of_a_diverged_run() -> None:
    config = RunConfig("digits", (8, 8), (8,), 10, "relu", 32, 1, 10.0, "adam", 3, "cpu",
                       None, 1 / 12)
    model = torch.nn.Linear(64, 10)
    run = Run(config, model, torch.optim.Adam(model.parameters()), 1000, torch.zeros(1, 8, 8),
              train_seconds=0.25, diverged="training loss became nan in epoch 1")
    assert repr(run) == ("<Run 64-8-10 on digits, batch 32, 1 epoch, adam lr=10, seed 3, cpu: "
                         "test acc n/a, val acc n/a, train acc n/a, 0.25 s, "
                         "diverged: training loss became nan in epoch 1>")
