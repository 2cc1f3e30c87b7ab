"""Tasks and metrics: a regression, a multilabel set and token ids, each scored by its
metric (RMSE, micro F1, perplexity) or the one a test gives (``metric=``), asserted by
``min_metric``/``max_metric``, stopped at by ``--batchprof-target-metric``, compared with a
baseline in its direction, and titled by its name in the reports.

The metrics themselves are torchmetrics', fed as torchmetrics takes them (checked here on
a few batches); the rest runs in real in-process sessions (``pytester``) on tiny generated
data sets and models, a few epochs on the CPU, where a seed gives the same figures every
time. torchmetrics is imported here, at the top, so that the inner sessions find it
imported (an in-process session that imported it first would import it again in the next).
"""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torchmetrics  # imported once, before any inner session (see the docstring)
import torchmetrics.classification
import torchmetrics.regression
import torchmetrics.text
from session_output import failure_section, summary_rows

import pytest_batchprof
from pytest_batchprof.experiment.tasks import TASK_BY_NAME, MetricSpec, run_metric
from pytest_batchprof.gating import Threshold
from pytest_batchprof.reports.critical_batch import fit_studies
from pytest_batchprof.reports.lr_grid import grid_section
from pytest_batchprof.reports.plots import build_figures, group_series
from pytest_batchprof.reports.tables import render_history, render_table, table_columns
from pytest_batchprof.runs.lr_grid import choose_lr

CPU = torch.device("cpu")

CONFTEST = """
    import torch

    import pytest_batchprof

    generator = torch.Generator().manual_seed(0)
    WEIGHTS = torch.linspace(-1, 1, 8)


    def linear(count):
        x = torch.randn(count, 8, generator=generator)
        return x, x @ WEIGHTS + 0.05 * torch.randn(count, generator=generator)


    def tags(count):
        x = torch.randn(count, 8, generator=generator)
        return x, (x[:, :3] > 0).float()


    def tokens(count):
        ids = torch.randint(0, 10, (count, 6), generator=generator)
        return ids, (ids + 1) % 10  # each token's next id: learnt by an embedding


    pytest_batchprof.register_dataset("lin", train=linear(320), test=linear(128),
                                      task="regression")
    pytest_batchprof.register_dataset("tags", train=tags(320), test=tags(128),
                                      task="multilabel")
    pytest_batchprof.register_dataset("tokens", train=tokens(320), test=tokens(128),
                                      task="tokens", num_classes=10)
    pytest_batchprof.register_dataset("floaty", train=linear(64), test=linear(32))
"""

MODELS = """
    from torch import nn


    def regressor():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


    def tagger():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


    class TokenNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 16)
            self.head = nn.Linear(16, 10)

        def forward(self, ids):
            return self.head(self.embed(ids))
"""

SESSION = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--batchprof-device", "cpu", "--batchprof-no-co2")
TITLE = re.compile(r"^regressor \(\d+\) on lin, batch 32, seed 0$")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session; an inner Ctrl-C must not stop this (outer) session."""
    return pytester.runpytest(*SESSION, *args, no_reraise_ctrlc=True)


def project(pytester: pytest.Pytester, tests: str) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(mymodels=MODELS, test_project=tests)


# ---------------------------------------------------------------- the metrics, fed


def test_the_task_metrics_are_fed_as_torchmetrics_takes_them() -> None:
    """A regression's (N, 1) outputs meet (N,) targets; multilabel logits that happen to
    lie within [0, 1] still go through a sigmoid (torchmetrics would read them as
    probabilities and threshold them at 0.5); token targets of int32 are taken as int64."""
    rmse = TASK_BY_NAME["regression"].default_metric(1, CPU)
    rmse.update(torch.ones(4, 1), torch.zeros(4, dtype=torch.float64))
    assert (rmse.name, rmse.higher_is_better, rmse.compute()) == ("rmse", False, 1.0)

    f1 = TASK_BY_NAME["multilabel"].default_metric(3, CPU)
    logits = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1]])  # every label > 0: all on
    f1.update(logits, torch.ones(2, 3))
    assert (f1.name, f1.higher_is_better, f1.compute()) == ("f1", True, 1.0)

    perplexity = TASK_BY_NAME["tokens"].default_metric(7, CPU)
    perplexity.update(torch.zeros(2, 5, 7), torch.randint(0, 7, (2, 5), dtype=torch.int32))
    assert perplexity.compute() == pytest.approx(7.0)  # uniform over 7 tokens

    mae = run_metric(torchmetrics.regression.MeanAbsoluteError(), TASK_BY_NAME["regression"],
                     1, CPU)
    mae.update(torch.full((4, 1), 2.0), torch.zeros(4))
    assert (mae.name, mae.higher_is_better, mae.compute()) == ("MeanAbsoluteError", False, 2.0)


def test_metric_is_exported_and_checks_its_arguments() -> None:
    spec = pytest_batchprof.metric("mae", lambda out, y: 0.0, higher_is_better=False)
    assert pytest_batchprof.MetricSpec is MetricSpec
    assert isinstance(spec, MetricSpec) and (spec.name, spec.higher_is_better) == ("mae", False)
    with pytest.raises(ValueError, match=r"higher_is_better=1\): give True or False"):
        pytest_batchprof.metric("mae", lambda out, y: 0.0, higher_is_better=1)
    with pytest.raises(ValueError, match="fn must be a callable"):
        pytest_batchprof.metric("mae", 3, higher_is_better=False)


# ---------------------------------------------------------------- sessions

TESTS = """
    import pytest
    import torch
    from torchmetrics.regression import MeanAbsoluteError

    import pytest_batchprof
    from mymodels import TokenNet, regressor, tagger


    def mae(outputs, targets):
        return (outputs.squeeze(1) - targets).abs().mean()


    @pytest.mark.dataset("lin")
    @pytest.mark.max_metric(0.6)
    def test_rmse_within(trained_model):
        run = trained_model(regressor, batch_size=32, epochs=5, lr=1e-2)
        assert run.metric_name == "rmse" and run.config.task == "regression"
        assert run.metric == run.test_metric and run.test_accuracy is None
        assert run.val_metric == run.history[-1].val_metric
        assert "test rmse 0." in repr(run) and "test acc" not in repr(run)


    @pytest.mark.dataset("lin")
    @pytest.mark.max_metric(0.01)
    def test_rmse_beyond(trained_model):
        trained_model(regressor, batch_size=32, epochs=5, lr=1e-2)


    @pytest.mark.dataset("lin")
    @pytest.mark.max_metric(0.6, split="train")
    def test_two_metrics_of_one_model(trained_model):
        library = trained_model(regressor, batch_size=32, epochs=5, lr=1e-2,
                                metric=MeanAbsoluteError())
        own = trained_model(regressor, batch_size=32, epochs=5, lr=1e-2,
                            metric=pytest_batchprof.metric("mae", mae, higher_is_better=False))
        assert (library.metric_name, own.metric_name) == ("MeanAbsoluteError", "mae")
        assert not library.config.higher_is_better and not own.config.higher_is_better
        assert library.metric == pytest.approx(own.metric, rel=1e-5)  # the same weights
        assert library.metric < 0.6


    @pytest.mark.dataset("tags")
    @pytest.mark.min_metric(0.8)
    def test_tags(trained_model):
        run = trained_model(tagger, batch_size=32, epochs=5, lr=1e-2)
        assert (run.metric_name, run.config.higher_is_better) == ("f1", True)
        assert 0 < run.metric <= 1


    @pytest.mark.dataset("tokens")
    @pytest.mark.max_metric(3.0)
    def test_tokens(trained_model):
        run = trained_model(TokenNet, batch_size=32, epochs=5, lr=3e-2)
        assert (run.metric_name, run.config.task) == ("perplexity", "tokens")
        assert run.metric >= 1


    @pytest.mark.dataset("floaty")
    def test_float_targets_without_task(trained_model):
        trained_model(regressor, batch_size=32)
"""


def test_regression_multilabel_and_tokens_are_scored_asserted_and_tabled(
        pytester: pytest.Pytester) -> None:
    project(pytester, TESTS)
    report = pytester.path / "report"
    result = run(pytester, "-rA", f"--batchprof-report={report}")
    result.assert_outcomes(passed=4, failed=2)

    (beyond,) = failure_section(result, "test_rmse_beyond")
    title, rest = beyond.split(": ", 1)
    assert TITLE.match(title), beyond
    assert re.fullmatch(r"test rmse 0\.\d+ is above 0\.01 \(train rmse 0\.\d+, val rmse "
                        r"0\.\d+, test rmse 0\.\d+, [\d.]+ s\)", rest), beyond

    (floaty,) = failure_section(result, "test_float_targets_without_task")[-1:]
    assert "task='regression'" in floaty, floaty

    rows = json.loads((report / "latest.json").read_text(encoding="utf-8"))["rows"]
    by_metric = {row["metric"]: row for row in rows}
    assert set(by_metric) == {"rmse", "MeanAbsoluteError", "mae", "f1", "perplexity"}
    rmse = by_metric["rmse"]
    assert (rmse["task"], rmse["higher_is_better"], rmse["test_accuracy"]) == (
        "regression", False, None)
    assert rmse["history"][-1]["val_metric"] == rmse["val_metric"]
    assert rmse["history"][-1]["train_accuracy"] is None  # no NaN in the JSON
    assert by_metric["perplexity"]["test_metric"] <= 3.0

    table = summary_rows(result)  # several metrics: one column, each cell names its own
    cells = {row["test metric"].split()[0] for row in table}
    assert cells == {"rmse", "MeanAbsoluteError", "mae", "f1", "perplexity"}
    assert "test acc (%)" not in table[0]  # no run counted accuracy
    markdown = (report / "latest.md").read_text(encoding="utf-8")
    assert "| epoch   | train rmse   | val rmse   |" in markdown
    assert "Test rmse vs batch size" in markdown and "Test f1 vs batch size" in markdown


def test_a_rising_rmse_fails_the_comparison_with_the_baseline(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved at 5 epochs; 1 epoch leaves the RMSE far higher: the regression caught."""
    project(pytester, """
        import os

        import pytest
        from mymodels import regressor


        @pytest.mark.dataset("lin")
        def test_fit(trained_model):
            trained_model(regressor, batch_size=32, epochs=int(os.environ["EPOCHS"]), lr=1e-2)
    """)
    monkeypatch.setenv("EPOCHS", "5")
    saved = run(pytester, "--batchprof-save", "ci", "--batchprof-no-report")
    saved.assert_outcomes(passed=1)
    same = run(pytester, "--batchprof-compare", "ci", "--batchprof-no-report")
    assert same.ret == pytest.ExitCode.OK
    monkeypatch.setenv("EPOCHS", "1")
    worse = run(pytester, "--batchprof-compare", "ci", "--batchprof-no-report",
                "--batchprof-fail-drop", "2")
    assert worse.ret == pytest.ExitCode.TESTS_FAILED
    (line,) = [line for line in worse.outlines if line.startswith("batchprof: regressor")]
    match = re.search(r": REGRESSION: rmse (\S+) -> (\S+) \(\+([\d.]+)% > 2% allowed\); "
                      r"epochs 5 -> 1$", line)
    assert match, line
    before, now, rise = (float(group) for group in match.groups())
    assert now > before and rise == pytest.approx((now / before - 1) * 100, abs=0.2)


def test_target_metric_stops_a_regression_run_early(pytester: pytest.Pytester) -> None:
    project(pytester, """
        import pytest
        from mymodels import regressor


        @pytest.mark.dataset("lin")
        def test_fit(trained_model):
            run = trained_model(regressor, batch_size=32, epochs=30, lr=1e-2)
            reached = run.time_to_target
            assert reached.reached and reached.metric == "rmse" and reached.target == 0.8
            assert len(run.history) < 30
            assert run.history[-1].val_metric <= 0.8
    """)
    report = pytester.path / "report"
    result = run(pytester, "--batchprof-target-metric", "0.8", f"--batchprof-report={report}")
    result.assert_outcomes(passed=1)
    (row,) = json.loads((report / "latest.json").read_text(encoding="utf-8"))["rows"]
    assert (row["target_metric"], row["target_metric_name"], row["target_reached"]) == (
        0.8, "rmse", True)
    assert row["target_accuracy"] is None
    assert isinstance(row["target_steps"], int)


def test_min_metric_and_max_metric_check_their_arguments(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marks="""
        import pytest

        @pytest.mark.max_metric("x")
        def test_text():
            pass

        @pytest.mark.min_metric(0.5, split="nope")
        def test_split():
            pass

        @pytest.mark.max_metric()
        def test_nothing():
            pass
    """)
    result = run(pytester, "-rA")
    assert failure_section(result, "test_text")[-1] == (
        "@pytest.mark.max_metric('x'): give a number in the metric's units, e.g. "
        "max_metric(0.5)")
    assert failure_section(result, "test_split")[-1] == (
        "@pytest.mark.min_metric(split='nope'): choose one of test, val, train")
    assert failure_section(result, "test_nothing")[-1] == (
        "@pytest.mark.max_metric takes one number and an optional split=, e.g. "
        "@pytest.mark.max_metric(0.5, split='val')")
    result.assert_outcomes(errors=3)


# ---------------------------------------------------------------- reports, on rows


def regression_row(batch_size: int, rmse: float, **changes: object) -> dict[str, object]:
    return {"model": "net (161)", "dataset": "lin", "batch_size": batch_size, "epochs": 5,
            "seed": 0, "lr": 0.01, "task": "regression", "metric": "rmse",
            "higher_is_better": False, "train_accuracy": None, "val_accuracy": None,
            "test_accuracy": None, "train_metric": rmse, "val_metric": rmse,
            "test_metric": rmse, "train_seconds": 1.0,
            "history": [{"epoch": 1, "train_loss": 0.5, "train_accuracy": None,
                         "val_loss": 0.4, "val_accuracy": None, "train_seconds": 0.5,
                         "eval_seconds": 0.1, "train_metric": rmse + 0.1,
                         "val_metric": rmse}],
            **changes}


def test_tables_and_plots_title_the_metric_by_its_name() -> None:
    rows = [regression_row(16, 0.31), regression_row(32, 0.42)]
    columns = table_columns(rows, standard_keys=rows[0])
    assert "test_accuracy" not in columns and "test_metric" in columns
    header = render_table(rows, columns).splitlines()[0]
    assert "| train rmse " in header and "| test rmse " in header
    assert render_history(rows[0]).splitlines()[0].split("|")[2:4] == [
        " train rmse   ", " val rmse   "]
    (series,) = group_series(rows)
    assert (series.metric, series.accuracy) == ("rmse", {16: 0.31, 32: 0.42})
    assert series.curves == {16: [(1, 0.31)], 32: [(1, 0.42)]}
    names = {name: title for name, title, _ in build_figures(rows)}
    assert names["rmse"] == "Test rmse vs batch size"
    assert "accuracy" not in names


def test_metric_thresholds_read_the_metric_in_their_direction() -> None:
    """``max_metric`` bounds from above, ``min_metric`` from below, both on the row's own
    metric; the seeds of one configuration by their mean; ``min_accuracy`` on a run that
    counts no accuracy says which marker to use instead."""
    rows = [regression_row(16, 0.3)]
    assert Threshold(0.3, marker="max_metric").failures(rows) == []  # at the bound passes
    assert Threshold(0.25, "val", "max_metric").failures(rows) == [
        "net (161) on lin, batch 16, seed 0: val rmse 0.3 is above 0.25 (train rmse 0.3, "
        "val rmse 0.3, test rmse 0.3, 1.0 s)"]
    assert Threshold(0.35, marker="min_metric").failures(rows)[0].startswith(
        "net (161) on lin, batch 16, seed 0: test rmse 0.3 is below 0.35")
    seeds = [regression_row(16, 0.3), regression_row(16, 0.5, seed=1)]
    (line,) = Threshold(0.35, marker="max_metric").failures(seeds)
    assert line.startswith("net (161) on lin, batch 16, seeds 0, 1: mean test rmse 0.4 ± ")
    assert line.endswith(" (95% CI) is above 0.35 (seeds: 0.3, 0.5)")
    assert Threshold(0.9).failures(rows) == [
        "net (161) on lin, batch 16, seed 0: counts no accuracy for min_accuracy to check "
        "(it is scored by rmse); use @pytest.mark.max_metric(...) instead"]


def test_the_critical_batch_fit_titles_a_metric_target_by_its_name() -> None:
    rows = [regression_row(size, 0.3, target_metric=0.3, target_metric_name="rmse",
                           target_reached=True, target_steps=round(100 * (1 + 64 / size)))
            for size in (16, 32, 64, 128)]
    (study,) = fit_studies(rows, resamples=10)
    assert study.title == "net (161) on lin, 5 epochs, to rmse 0.3"
    assert study.fit.b_crit == pytest.approx(64, rel=0.05)


def fake_run(lr: float, val: float) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(lr=lr, higher_is_better=False),
                           metric_name="rmse", val_metric=val, val_accuracy=math.nan,
                           history=[object()], diverged=None, out_of_memory=None,
                           time_to_target=None)


def test_the_lr_grid_chooses_the_lowest_rmse_and_says_so() -> None:
    choice = choose_lr({1e-3: [fake_run(1e-3, 0.6)], 1e-2: [fake_run(1e-2, 0.3)],
                        1e-1: [fake_run(1e-1, 0.9)]}, target=None)
    assert (choice.chosen, choice.criterion) == (1e-2, "val rmse")
    assert "chose lr=0.01 by val rmse on the validation split (0.001: 0.6, 0.01: 0.3" in (
        choice.describe())
    rows = [regression_row(16, score, lr=lr, **choice.summary(lr))
            for lr, score in ((1e-3, 0.6), (1e-2, 0.3), (1e-1, 0.9))]
    section = grid_section(rows)
    assert "**0.3** ★" in section
    assert "Cells: final val rmse (lower is better)" in section
    assert "Chosen on the validation split by the lowest final val rmse" in section
