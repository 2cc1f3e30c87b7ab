"""Baseline entries as the user names them: a changed model is caught, a missing entry fails.

Each session test is a project as a user has one: a conftest.py that registers a small
learnable data set, a model made of helper classes in its own module (``mymodels.py``),
and tests that train it with ``trained_model``. A first session saves the baseline
``ci``; then the project changes (the model's code, the learning rate in the test, the
model's width, a new test) and a second session compares with ``ci``: the run keeps its
entry, the comparison says what changed, and the run is judged as usual. Sessions run
in-process (pytester) on the CPU, where a seed gives the same figures every time; the
first session's baseline is saved once per module and written into each test's project.

The entry's key and what is compared beside it are also tested on hand-made rows
(``compare`` itself), and on rows of the committed ``reports/baselines/ci-fast.json``,
written before model ids and code fingerprints existed
(``tests/data/baseline-before-model-ids.json``: six of its rows, their per-epoch series
cut short).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from inner_projects import blobs_conftest
from session_output import assert_one_clean_error, failure_section

from pytest_batchprof import cnn, mlp
from pytest_batchprof.data.description import DataDescription
from pytest_batchprof.experiment.config import (
    COMPARED_KEYS,
    EXPERIMENT_KEYS,
    FINGERPRINT_SAID,
    MODEL_ID_KEY,
    RunConfig,
)
from pytest_batchprof.experiment.models import prepare_model
from pytest_batchprof.gating import NEW, NOT_RUN, compare, missing_entries, same_entry
from pytest_batchprof.reports.storage import load_report

OLD_BASELINE = Path(__file__).parent / "data" / "baseline-before-model-ids.json"
COMMITTED_BASELINE = Path(__file__).parents[1] / "reports" / "baselines" / "ci-fast.json"

CONFTEST = blobs_conftest(train=480, test=240)

MODELS = """
    import torch
    from torch import nn

    DROPOUT = 0.0
    WIDTH = 32


    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.linear = nn.Linear(width, width)
            self.drop = nn.Dropout(DROPOUT)

        def forward(self, x):
            return self.drop(torch.relu(self.linear(x)))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(16, WIDTH)
            self.block = Block(WIDTH)
            self.head = nn.Linear(WIDTH, 4)

        def forward(self, x):
            return self.head(self.block(self.stem(x)))
"""

TESTS = """
    from mymodels import Net


    def test_net(trained_model):
        run = trained_model(Net, batch_size=16, epochs=2)
        assert run.test_accuracy > 0.5


    def test_small_batch(trained_model):
        run = trained_model(Net, batch_size=8, epochs=2)
        assert run.test_accuracy > 0.5
"""

NEW_TEST = """

    def test_new(trained_model):
        run = trained_model(Net, batch_size=32, epochs=2)
        assert run.test_accuracy > 0.5
"""

SESSION = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--batchprof-dataset", "blobs", "--batchprof-device", "cpu", "--batchprof-no-co2",
           "--batchprof-no-report")
NET = re.compile(r"^Net \([\d,]+\) on blobs, batch 16, seed 0$")
SMALL = re.compile(r"^Net \([\d,]+\) on blobs, batch 8, seed 0$")
COMPARED = re.compile(r"^-+ compared with baseline (.+?) -+$")


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def saved() -> dict[str, str]:
    """The baseline ``ci`` of the unchanged project, saved by the module's first session."""
    return {}


def project(pytester: pytest.Pytester, saved: dict[str, str], tests: str = TESTS) -> Path:
    """The project, unchanged, and its baseline ``ci`` (saved by a session the first time)."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(mymodels=MODELS, test_main=TESTS)
    path = pytester.path / "reports" / "baselines" / "ci.json"
    if "ci" not in saved:
        first = run(pytester, "--batchprof-save", "ci")
        first.assert_outcomes(passed=2)
        assert f"baseline saved: {path}" in first.outlines
        saved["ci"] = path.read_text(encoding="utf-8")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(saved["ci"], encoding="utf-8")
    pytester.makepyfile(test_main=tests)
    return path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session on the project's data set; an inner Ctrl-C must not stop this
    (outer) session."""
    return pytester.runpytest(*SESSION, *args, no_reraise_ctrlc=True)


def edit(pytester: pytest.Pytester, name: str, old: str, new: str) -> None:
    """Change ``old`` into ``new`` in the project's file ``name``, as the user would, and drop
    the compiled modules, so that the next session reads the new source."""
    path = pytester.path / name
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, (old, text)
    path.write_text(text.replace(old, new), encoding="utf-8")
    shutil.rmtree(pytester.path / "__pycache__", ignore_errors=True)


def comparison(result: pytest.RunResult) -> dict[str, dict[str, str]]:
    """The comparison table under the ``compared with baseline`` separator: its cells by
    column header, by run title."""
    lines = result.outlines
    start = next(index for index, line in enumerate(lines) if COMPARED.match(line))
    table = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, _rule, *body = table
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in body}


def entry(table: dict[str, dict[str, str]], title: re.Pattern[str]) -> dict[str, str]:
    """The one entry whose run title matches ``title``."""
    (found,) = [cells for name, cells in table.items() if title.match(name)]
    return found


def saved_rows(path: Path) -> dict[int, dict[str, object]]:
    """A baseline's rows, by batch size."""
    return {row["batch_size"]: row for row in load_report(path)["rows"]}


# ---------------------------------------------------------------- the gate, in sessions


def test_a_changed_model_keeps_its_entry_and_regresses(
        pytester: pytest.Pytester, saved: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's headline: an edit of a helper class of the model that costs accuracy is
    the same run, said to have changed, judged, and failed; the step summary says so."""
    path = project(pytester, saved)
    before = saved_rows(path)[16]
    assert before[MODEL_ID_KEY] == "Net"
    step_summary = pytester.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    edit(pytester, "mymodels.py", "DROPOUT = 0.0", "DROPOUT = 0.95")

    result = run(pytester, "test_main.py::test_net", "--batchprof-compare", "ci",
                 "--batchprof-fail-drop", "2")
    result.assert_outcomes(passed=1)  # the test's own assertion holds ...
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # ... and the gate fails the session
    table = comparison(result)
    assert len(table) == 2  # the run and the entry this session did not run, no "new"
    net = entry(table, NET)
    drop = -float(net["delta"].removesuffix(" pp"))
    assert drop > 2
    assert net["verdict"] == (f"REGRESSION: {net['delta']} > 2 pp allowed; "
                              f"architecture changed since the baseline; "
                              f"model code changed since the baseline")
    assert float(net["baseline test acc (%)"]) == pytest.approx(before["test_accuracy"] * 100,
                                                                abs=0.006)
    assert entry(table, SMALL)["verdict"] == NOT_RUN  # listed, not failed
    title = next(name for name in table if NET.match(name))
    assert [line for line in result.outlines if "REGRESSION" in line
            and line.startswith("batchprof: ")] == [f"batchprof: {title}: {net['verdict']}"]

    summary = step_summary.read_text(encoding="utf-8")
    assert summary.startswith("## pytest-batchprof\n\n| model")
    assert "\n## Comparison with the baseline\n" in summary
    assert net["verdict"] in summary
    assert ("**REGRESSION**: 1 run regressed against the baseline; the session fails.\n\n"
            f"- {title}: {net['verdict']}\n") in summary


def test_an_edit_of_the_model_body_alone_is_a_code_change(
        pytester: pytest.Pytester, saved: dict[str, str]) -> None:
    """``x = x.detach()`` in a helper's forward leaves the structure as it was: only the code
    fingerprint tells; an ample allowance judges the run ``ok`` or ``improved``."""
    project(pytester, saved)
    edit(pytester, "mymodels.py", "        return self.drop(",
         "        x = x.detach()\n        return self.drop(")
    result = run(pytester, "test_main.py::test_net", "--batchprof-compare", "ci",
                 "--batchprof-fail-drop", "100")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    verdict = entry(comparison(result), NET)["verdict"]
    assert re.fullmatch(r"(ok|improved); model code changed since the baseline", verdict)


def test_a_new_learning_rate_is_said(pytester: pytest.Pytester, saved: dict[str, str]) -> None:
    project(pytester, saved)
    edit(pytester, "test_main.py", "batch_size=16, epochs=2)", "batch_size=16, epochs=2, lr=0.01)")
    result = run(pytester, "test_main.py::test_net", "--batchprof-compare", "ci",
                 "--batchprof-fail-drop", "100")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    table = comparison(result)
    assert len(table) == 2
    assert re.fullmatch(r"(ok|improved); lr 0\.001 -> 0\.01", entry(table, NET)["verdict"])
    assert entry(table, SMALL)["verdict"] == NOT_RUN


def test_a_wider_model_says_its_parameter_count(pytester: pytest.Pytester,
                                                saved: dict[str, str]) -> None:
    path = project(pytester, saved)
    before = saved_rows(path)[16]["params"]
    edit(pytester, "mymodels.py", "WIDTH = 32", "WIDTH = 48")
    result = run(pytester, "test_main.py::test_net", "--batchprof-compare", "ci",
                 "--batchprof-fail-drop", "100")
    result.assert_outcomes(passed=1)
    table = comparison(result)
    (title,) = [name for name in table if NET.match(name)]
    now = int(re.search(r"\(([\d,]+)\)", title)[1].replace(",", ""))
    assert now == 16 * 48 + 48 + 48 * 48 + 48 + 48 * 4 + 4 != before
    assert table[title]["verdict"].endswith(
        f"; architecture changed since the baseline; model code changed since the baseline; "
        f"params {before:,} -> {now:,}")


def test_fail_missing_fails_a_new_test_and_lists_entries_not_run(
        pytester: pytest.Pytester, saved: dict[str, str]) -> None:
    path = project(pytester, saved, TESTS + NEW_TEST)
    result = run(pytester, "-k", "not small", "--batchprof-compare", "ci",
                 "--batchprof-fail-missing", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    (line,) = failure_section(result, "test_new")
    assert re.fullmatch(
        rf"Net \([\d,]+\) on blobs, batch 32, seed 0: no entry in baseline {re.escape(str(path))}"
        rf"; record it by running the tests with --batchprof-save ci", line), line
    table = comparison(result)
    assert entry(table, re.compile(r"^Net .* batch 32, seed 0$"))["verdict"] == NEW
    assert entry(table, NET)["verdict"] == "ok"
    assert entry(table, SMALL)["verdict"] == NOT_RUN  # only in the baseline: never a failure

    # every test that runs has its entry: the session passes (the ini twin says the same)
    pytester.makeini("""
        [pytest]
        batchprof_compare = ci
        batchprof_fail_missing = true
    """)
    passing = run(pytester, "test_main.py::test_net")
    passing.assert_outcomes(passed=1)
    assert passing.ret == pytest.ExitCode.OK
    assert [cells["verdict"] for cells in comparison(passing).values()] == ["ok", NOT_RUN]


def test_fail_missing_needs_a_baseline(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_main="def test_nothing():\n    pass\n")
    line = assert_one_clean_error(run(pytester, "--batchprof-fail-missing"))
    assert line == ("ERROR: --batchprof-fail-missing needs --batchprof-compare NAME (or "
                    "batchprof_compare in the ini file): there is no baseline to miss an "
                    "entry in")


def test_a_baseline_in_the_old_layout_still_matches(pytester: pytest.Pytester,
                                                    saved: dict[str, str]) -> None:
    """A baseline written before model ids and code fingerprints (the layout of
    ``OLD_BASELINE``, once the committed ci-fast.json, whose architecture fingerprints
    were computed another way) compares ``ok`` with today's runs of the same project."""
    path = project(pytester, saved)
    old_keys = set(load_report(OLD_BASELINE)["rows"][0])
    document = json.loads(path.read_text(encoding="utf-8"))
    for index, row in enumerate(document["rows"]):
        document["rows"][index] = {key: value for key, value in row.items() if key in old_keys}
        document["rows"][index]["architecture"] = "0123456789abcdef"  # the old scheme's
    assert MODEL_ID_KEY not in document["rows"][0] and "code" not in document["rows"][0]
    path.write_text(json.dumps(document), encoding="utf-8")

    result = run(pytester, "test_main.py::test_net", "--batchprof-compare", "ci",
                 "--batchprof-fail-missing")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    net = entry(comparison(result), NET)
    assert (net["verdict"], net["delta"]) == ("ok", "+0.00 pp")


# ---------------------------------------------------------------- the key, on rows


def row(**changes: object) -> dict[str, object]:
    """A hand-made row of today's layout: ``Net`` on digits in ``test_a.py::test_net``."""
    figures: dict[str, object] = {
        **{item.name: item.default for item in dataclasses.fields(RunConfig)
           if item.default is not dataclasses.MISSING},
        "model": "Net (610)", MODEL_ID_KEY: "Net", "dataset": "digits", "input_shape": [8, 8],
        "hidden": None, "num_classes": 10, "activation": None, "batch_size": 32, "epochs": 1,
        "lr": 0.001, "optimizer": "adam", "seed": 0, "device": "cpu", "train_subset": None,
        "val_fraction": 1 / 12, "architecture": "0123456789abcdef", "code": "fedcba9876543210",
        "params": 610, "test_accuracy": 0.9, "train_seconds": 2.0,
        "tests": ["test_a.py::test_net"],
    }
    figures.update(changes)
    return figures


def compared(now: list[dict[str, object]], before: list[dict[str, object]],
             fail_drop: float = 0.5):
    environment = {"machine": "box"}
    return compare(now, {"rows": before, "environment": environment},
                   Path("reports/baselines/ci.json"), fail_drop, None, environment)


CHANGED = {  # a value of each compared key other than row()'s, and how the change is said
    "input_shape": ([6, 6], "input shape (8, 8) -> (6, 6)"),
    "hidden": ([16], "hidden none -> (16)"),
    "num_classes": (9, "num classes 10 -> 9"),
    "activation": ("gelu", "activation none -> gelu"),
    "epochs": (2, "epochs 1 -> 2"),
    "lr": (0.01, "lr 0.001 -> 0.01"),
    "optimizer": ("sgd", "optimizer adam -> sgd"),
    "train_subset": (5000, "train subset none -> 5,000"),
    "val_fraction": (0.2, "val fraction 0.0833333 -> 0.2"),
    "flush_denormals": (False, "flush denormals on -> off"),
    "drop_last": (True, "drop last off -> on"),
    "lr_warmup_epochs": (1.0, "lr warmup epochs 0 -> 1"),
    "lr_warmup_start": (0.001, "lr warmup start none -> 0.001"),
    "target_accuracy": (0.97, "target accuracy none -> 0.97"),
    "architecture": ("1111111111111111", "architecture changed since the baseline"),
    "loss": ("my_loss", "loss cross_entropy -> my_loss"),
    "precision": ("bf16", "precision fp32 -> bf16"),
    "code": ("3333333333333333", "model code changed since the baseline"),
    "trainer": ("own loop (test_a.py::test_net)", "trainer batchprof -> own loop "
                                                  "(test_a.py::test_net)"),
    "params": (75018, "params 610 -> 75,018"),
    "task": ("multilabel", "task classification -> multilabel"),
    "metric": ("f1", "metric accuracy -> f1"),
    "higher_is_better": (False, "direction higher is better -> lower is better"),
    "target_metric": (0.3, "target metric none -> 0.3"),
    "data_feed": ("DataLoader, 2 workers", "data feed in memory -> DataLoader, 2 workers"),
    "forward": ("my_forward", "forward none -> my_forward"),
    "scheduler": ("cosine", "scheduler none -> cosine"),
    "sync_batchnorm": (True, "sync BatchNorm off -> on"),
}


def test_every_compared_key_has_a_change_to_say() -> None:
    """The declaration is the list: every compared key, and nothing that names the entry."""
    assert set(CHANGED) == set(COMPARED_KEYS)
    assert not set(COMPARED_KEYS) & set(EXPERIMENT_KEYS)
    assert set(FINGERPRINT_SAID) == {"architecture", "code"}
    assert set(EXPERIMENT_KEYS) == {"dataset", "batch_size", "processes", MODEL_ID_KEY}


@pytest.mark.parametrize("key", [key for key in COMPARED_KEYS if key != "metric"])
def test_a_compared_change_is_said_and_judged(key: str) -> None:
    """Accuracy is judged in its direction whatever else changed (a ``higher_is_better``
    that says otherwise included: accuracy's is always up)."""
    value, said = CHANGED[key]
    worse = compared([row(**{key: value}, test_accuracy=0.8)], [row()])
    (entry_,) = worse.entries
    assert entry_.changes == (said,)
    assert entry_.verdict == f"REGRESSION: -10.00 pp > 0.5 pp allowed; {said}"
    assert worse.regressions == [entry_]
    (same,) = compared([row(**{key: value})], [row()]).entries
    assert same.verdict == f"ok; {said}"


def test_a_run_scored_by_another_metric_is_not_compared_with_its_entry() -> None:
    """An accuracy of 90% and an F1 of 0.5 do not compare: the run is neither failed nor
    passed on them, and the change of metric is said."""
    (entry_,) = compared([row(metric="f1", test_metric=0.5)], [row()]).entries
    assert entry_.verdict == ("not compared: scored by another metric than in the baseline; "
                              "metric accuracy -> f1")
    assert (entry_.baseline, entry_.now, entry_.change) == (None, 0.5, None)


def test_a_row_written_before_tasks_and_metrics_reads_as_their_defaults() -> None:
    """A baseline row without task, metric, data_feed... is a classification run scored by
    accuracy, fed from memory: today's such run matches it with no change said; a run
    that differs from those defaults says so."""
    old = {key: value for key, value in row().items() if key not in (
        "task", "metric", "higher_is_better", "target_metric", "data_feed", "forward",
        "scheduler", "sync_batchnorm")}
    assert [item.verdict for item in compared([row()], [old]).entries] == ["ok"]
    (moved,) = compared([row(data_feed="DataLoader", scheduler="cosine")], [old]).entries
    assert moved.verdict == "ok; data feed in memory -> DataLoader; scheduler none -> cosine"


def metric_row(metric: str, value: float | None, higher_is_better: bool,
               **changes: object) -> dict[str, object]:
    """A row of a run scored by ``metric`` (no accuracy counted): a regression's RMSE, a
    multilabel set's F1."""
    task = "multilabel" if higher_is_better else "regression"
    return row(task=task, metric=metric, higher_is_better=higher_is_better,
               test_accuracy=None, test_metric=value, **changes)


def test_a_rising_rmse_is_the_regression_in_percent_of_the_baseline() -> None:
    before = [metric_row("rmse", 0.52, False)]
    (worse,) = compared([metric_row("rmse", 0.61, False)], before, fail_drop=2).entries
    assert worse.verdict == "REGRESSION: rmse 0.52 -> 0.61 (+17.3% > 2% allowed)"
    assert (worse.change, worse.drop_pp) == ("+17.3%", None)
    (slightly,) = compared([metric_row("rmse", 0.53, False)], before, fail_drop=2).entries
    assert slightly.verdict == "ok"  # +1.9%: within the 2% allowed
    (better,) = compared([metric_row("rmse", 0.40, False)], before, fail_drop=2).entries
    assert better.verdict == "improved"


def test_a_falling_f1_is_the_regression_and_a_rising_one_improved() -> None:
    before = [metric_row("f1", 0.80, True)]
    (worse,) = compared([metric_row("f1", 0.70, True)], before, fail_drop=5).entries
    assert worse.verdict == "REGRESSION: f1 0.8 -> 0.7 (-12.5% > 5% allowed)"
    (better,) = compared([metric_row("f1", 0.90, True)], before, fail_drop=5).entries
    assert better.verdict == "improved"
    (diverged,) = compared([metric_row("f1", None, True, diverged="nan")], before).entries
    assert diverged.verdict == "REGRESSION: no test f1 (diverged)"


def test_a_comparison_of_metrics_titles_its_table_by_score() -> None:
    comparison_ = compared([metric_row("rmse", 0.61, False), row(batch_size=64)],
                           [metric_row("rmse", 0.52, False), row(batch_size=64)])
    table = comparison_.table()
    assert "| baseline test score " in table and "now test score" in table
    assert "rmse 0.52 " in table and "rmse 0.61 " in table and "+17.3%" in table
    assert "accuracy 90.00%" in table
    assert "percent of the baseline's value" in comparison_.markdown()


def test_changes_are_said_fingerprints_first_then_params() -> None:
    (entry_,) = compared([row(lr=0.01, params=700, code="3" * 16, architecture="1" * 16)],
                         [row()]).entries
    assert entry_.changes == ("architecture changed since the baseline",
                              "model code changed since the baseline", "params 610 -> 700",
                              "lr 0.001 -> 0.01")


@pytest.mark.parametrize(("key", "value"), [
    ("dataset", "synthetic"), ("batch_size", 64), ("processes", 2), (MODEL_ID_KEY, "Other"),
    ("tests", ["test_a.py::test_other"]),
])
def test_another_key_is_another_entry(key: str, value: object) -> None:
    comparison_ = compared([row(**{key: value})], [row()])
    assert [item.verdict for item in comparison_.entries] == [NEW, NOT_RUN]
    assert comparison_.regressions == []


def test_a_run_shared_by_tests_matches_by_any_of_them() -> None:
    shared = row(tests=["test_a.py::test_other", "test_a.py::test_net"])
    assert [item.verdict for item in compared([shared], [row()]).entries] == ["ok"]


@pytest.mark.parametrize(("old", "now", "same"), [
    ("test_a.py::test_net", "project/test_a.py::test_net", True),
    ("project/test_a.py::test_net", "test_a.py::test_net", True),
    ("a/test_a.py::test_net", "b/test_a.py::test_net", False),
    ("test_a.py::test_net", "xtest_a.py::test_net", False),
    ("test_a.py::test_net", "test_a.py::test_net[bs16]", False),
], ids=["rootdir-above", "rootdir-below", "other-folder", "other-file", "other-parameter"])
def test_a_test_named_from_another_rootdir_keeps_its_entry(old: str, now: str,
                                                           same: bool) -> None:
    """Without an ini file, pytest's rootdir (and so every node id) moves with the paths on
    the command line (``--batchprof-report /tmp/out`` once it exists): the same test named
    from a rootdir above or below matches; another test does not."""
    verdicts = [item.verdict for item in compared([row(tests=[now])], [row(tests=[old])]).entries]
    assert verdicts == (["ok"] if same else [NEW, NOT_RUN])


def test_mlps_are_named_by_their_widths() -> None:
    """An MLP has no model id: its hidden widths name it, as the table does."""
    def mlp_row(hidden: list[int], **changes: object) -> dict[str, object]:
        return row(**{MODEL_ID_KEY: None, "model": f"64-{hidden[0]}-10", "hidden": hidden,
                      "activation": "relu", **changes})

    assert [item.verdict for item in compared([mlp_row([8])], [mlp_row([8])]).entries] == ["ok"]
    assert [item.verdict for item in compared([mlp_row([16])], [mlp_row([8])]).entries] == [
        NEW, NOT_RUN]
    (gelu,) = compared([mlp_row([8], activation="gelu")], [mlp_row([8])]).entries
    assert gelu.verdict == "ok; activation relu -> gelu"
    named = compared([mlp_row([16], **{MODEL_ID_KEY: "small"})],
                     [mlp_row([8], **{MODEL_ID_KEY: "small"})]).entries
    assert [item.verdict for item in named] == ["ok; hidden (8) -> (16)"]


def test_the_same_recipe_is_preferred_then_the_closest_entry_left() -> None:
    """A learning-rate sweep in one test: each lr keeps its own entry; a new lr takes the
    entry no other run took, and says how its lr moved."""
    before = [row(lr=0.001, test_accuracy=0.9), row(lr=0.1, test_accuracy=0.5)]
    same = compared([row(lr=0.1, test_accuracy=0.5), row(lr=0.001, test_accuracy=0.9)], before)
    assert [item.verdict for item in same.entries] == ["ok", "ok"]
    moved = compared([row(lr=0.001, test_accuracy=0.9), row(lr=0.03, test_accuracy=0.6)],
                     before)
    assert [item.verdict for item in moved.entries] == ["ok", "improved; lr 0.1 -> 0.03"]


def test_missing_entries_name_the_run_and_how_to_record_it(tmp_path: Path) -> None:
    baseline = {"rows": [row()]}
    directory = tmp_path / "reports" / "baselines"
    path = directory / "ci.json"
    assert missing_entries([row()], baseline, path, directory) == []
    assert missing_entries([row(batch_size=64), row(batch_size=64, seed=1)], baseline, path,
                           directory) == [
        f"Net (610) on digits, batch 64, seeds 0, 1: no entry in baseline {path}; record it by "
        f"running the tests with --batchprof-save ci"]
    elsewhere = tmp_path / "ci-fast.json"
    assert missing_entries([row(batch_size=64)], baseline, elsewhere, directory) == [
        f"Net (610) on digits, batch 64, seed 0: no entry in baseline {elsewhere}; record it "
        f"by running the tests with --batchprof-save ci-fast (it writes "
        f"{directory / 'ci-fast.json'}; copy that file to {elsewhere})"]


# ---------------------------------------------------------------- baselines of old versions


def todays_row(old: dict[str, object]) -> dict[str, object]:
    """The row today's code writes for the run an old baseline row measured: its model
    prepared by today's :func:`prepare_model` (model id, architecture, parameters), the
    settings added since at their defaults, the same figures and tests."""
    hidden = old["hidden"]
    factory = (mlp(tuple(hidden), old["activation"]) if hidden is not None else
               cnn(*[tuple(int(part.removeprefix("c")) for part in group)
                     for group in _cnn_layers(str(old["model"]))]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        prepared = prepare_model(factory, DataDescription(tuple(old["input_shape"]), 10))
    added = {item.name: item.default for item in dataclasses.fields(RunConfig)
             if item.name not in old and item.default is not dataclasses.MISSING}
    return {**old, **added, MODEL_ID_KEY: prepared.model_id, "model": prepared.name,
            "architecture": prepared.architecture, "params": prepared.params,
            "code": "fedcba9876543210"}  # no row of the old layout has a code to compare


def _cnn_layers(name: str) -> tuple[list[str], list[str]]:
    """``c6-c16-120-84-10`` -> (``c6``, ``c16``), (``120``, ``84``): channels and widths."""
    parts = name.split("-")[:-1]
    return [part for part in parts if part.startswith("c")], [
        part for part in parts if not part.startswith("c")]


def test_the_committed_baseline_is_in_todays_layout() -> None:
    """Every row of the committed ci-fast.json has a model id and the code fingerprints
    (re-recorded in today's layout, so that CI compares them too)."""
    rows = load_report(COMMITTED_BASELINE)["rows"]
    assert rows and all(MODEL_ID_KEY in row_ and "code" in row_ for row_ in rows)


def test_old_rows_of_a_baseline_in_the_old_layout_match_todays_runs() -> None:
    """The rows of the committed ci-fast.json as the layout before model ids wrote them
    (``OLD_BASELINE``) pair with today's rows of the same runs and compare ``ok``."""
    document = load_report(OLD_BASELINE)
    old_rows = document["rows"]
    assert {row_[MODEL_ID_KEY] for row_ in map(todays_row, old_rows)} == {
        None, "c6-c16-120-84-10", "c16-c32-1000-10"}
    for old in old_rows:
        assert MODEL_ID_KEY not in old and "code" not in old and old["tests"]

    now = [todays_row(old) for old in old_rows]
    result = compare(now, document, OLD_BASELINE, 2.0, None, document["environment"])
    assert [(item.title, item.verdict) for item in result.entries] == [
        (item.title, "ok") for item in result.entries]
    assert len(result.entries) == len(old_rows)
    assert all(same_entry(old, new) for old, new in zip(old_rows, now, strict=True))

    # without their node ids, the rest of the key still pairs them
    untested = {**document, "rows": [{**old, "tests": []} for old in old_rows]}
    again = compare(now, untested, OLD_BASELINE, 2.0, None, document["environment"])
    assert [item.verdict for item in again.entries] == ["ok"] * len(old_rows)
    # a run of another test is another entry, old layout or not
    moved = [{**new, "tests": ["test_elsewhere.py::test_it"]} for new in now]
    assert {item.verdict for item in compare(moved, document, OLD_BASELINE, 2.0, None,
                                             {}).entries} == {NEW, NOT_RUN}


def test_old_rows_compare_what_they_have() -> None:
    """A compared setting the old row lacks is not compared; nor are its fingerprints when it
    lacks one of them (computed another way); what it has is."""
    old = {key: value for key, value in row().items()
           if key not in (MODEL_ID_KEY, "code", "drop_last")}
    old["model"] = "Net (610)"
    now = row(architecture="1" * 16, drop_last=True)
    assert [item.verdict for item in compared([now], [old]).entries] == ["ok"]
    (changed,) = compared([row(epochs=3, params=700)], [old]).entries
    assert changed.verdict == "ok; params 610 -> 700; epochs 1 -> 3"
    renamed = compared([row(model="Net (700)")], [old]).entries  # the name was the model's key
    assert [item.verdict for item in renamed] == [NEW, NOT_RUN]
