"""The learning-rate grid: the choice on the validation split (never the test split), the
edge flag, the option and the fixture keyword, and a real session's rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_batchprof.engine.training import TimeToTarget
from pytest_batchprof.plugin.options import OptionError, parse_lr_grid
from pytest_batchprof.runs.lr_grid import STEPS_TO_TARGET, VAL_ACCURACY, choose_lr
from tests.test_options import assert_usage_error


def fake_run(lr: float, val: float, test: float, steps: int | None = None,
             diverged: str | None = None, target: float | None = None) -> SimpleNamespace:
    """What :func:`choose_lr` may read of a run, plus a test accuracy it must not."""
    return SimpleNamespace(
        config=SimpleNamespace(lr=lr, higher_is_better=True), metric_name="accuracy",
        val_accuracy=val, val_metric=val, test_accuracy=test,
        history=[object()], diverged=diverged, out_of_memory=None,
        time_to_target=None if target is None else TimeToTarget(target, steps))


def test_the_choice_reads_validation_not_test():
    """lr 1e-3 is best on validation, 3e-3 on test: validation decides."""
    runs = {1e-3: [fake_run(1e-3, val=0.95, test=0.90)],
            3e-3: [fake_run(3e-3, val=0.93, test=0.99)],
            1e-2: [fake_run(1e-2, val=0.80, test=0.80)]}
    choice = choose_lr(runs, target=None)
    assert (choice.chosen, choice.criterion) == (1e-3, VAL_ACCURACY)
    assert choice.scores == {1e-3: 0.95, 3e-3: 0.93, 1e-2: 0.80}
    assert choice.note == "best lr is the grid's smallest: widen the grid"


@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6),
       st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6))
def test_test_accuracies_never_change_the_choice(vals: list[float], tests: list[float]):
    rates = [10.0 ** -(index + 1) for index in range(len(vals))]
    runs = {rate: [fake_run(rate, val, 0.5)] for rate, val in zip(rates, vals, strict=True)}
    shuffled = {rate: [fake_run(rate, val, test)]
                for rate, val, test in zip(rates, vals, tests, strict=False)}
    assert choose_lr(runs, None).chosen == choose_lr(shuffled, None).chosen


def test_seeds_are_averaged_and_a_diverged_seed_rules_its_rate_out():
    runs = {1e-3: [fake_run(1e-3, 0.90, 0.9), fake_run(1e-3, 0.92, 0.9)],
            3e-3: [fake_run(3e-3, 0.99, 0.9), fake_run(3e-3, 0.2, 0.9, diverged="nan")],
            1e-2: [fake_run(1e-2, 0.80, 0.9), fake_run(1e-2, 0.84, 0.9)]}
    choice = choose_lr(runs, None)
    assert choice.chosen == 1e-3
    assert choice.scores[3e-3] is None
    assert choice.scores[1e-3] == pytest.approx(0.91)


def test_with_a_target_the_fewest_steps_win_and_unreached_rates_are_out():
    runs = {1e-3: [fake_run(1e-3, 0.97, 0.9, steps=400, target=0.97)],
            3e-3: [fake_run(3e-3, 0.97, 0.9, steps=250, target=0.97)],
            1e-2: [fake_run(1e-2, 0.99, 0.9, steps=None, target=0.97)]}
    choice = choose_lr(runs, 0.97)
    assert (choice.chosen, choice.criterion) == (3e-3, STEPS_TO_TARGET)
    assert choice.scores == {1e-3: 400, 3e-3: 250, 1e-2: None}
    assert choice.note is None
    assert "chose lr=0.003 by steps to target" in choice.describe()


def test_the_largest_rate_is_flagged():
    runs = {1e-3: [fake_run(1e-3, 0.5, 0.9)], 1e-2: [fake_run(1e-2, 0.6, 0.9)]}
    choice = choose_lr(runs, None)
    assert choice.note == "best lr is the grid's largest: widen the grid"
    assert choice.summary(1e-2)["lr_grid_note"] == choice.note
    assert choice.summary(1e-3) == {"lr_grid": "0.001,0.01", "lr_chosen": False,
                                    "lr_grid_criterion": VAL_ACCURACY,
                                    "lr_grid_score": 0.5, "lr_grid_note": None}


def test_no_rate_reaching_the_target_falls_back_to_validation_accuracy():
    runs = {1e-3: [fake_run(1e-3, 0.91, 0.9, steps=None, target=0.99)],
            1e-2: [fake_run(1e-2, 0.93, 0.9, steps=None, target=0.99)]}
    choice = choose_lr(runs, 0.99)
    assert (choice.chosen, choice.criterion) == (1e-2, VAL_ACCURACY)


def test_every_rate_diverged_chooses_none():
    runs = {1e-3: [fake_run(1e-3, 0.1, 0.9, diverged="nan")],
            1e-2: [fake_run(1e-2, 0.1, 0.9, diverged="inf")]}
    choice = choose_lr(runs, None)
    assert choice.chosen is None and choice.note is None
    assert "no rate trained" in choice.describe()


@pytest.mark.parametrize(("text", "message"), [
    ("1e-3", "has one rate"), ("1e-3,,1e-2", "empty item"), ("1e-3,abc", "not a number"),
    ("1e-3,-1", "not a finite number above 0"), ("1e-3,0.001", "repeats 0.001"),
    ("1e-3,inf", "not a finite number above 0")])
def test_parse_lr_grid_rejects_with_reason(text: str, message: str):
    with pytest.raises(OptionError, match=message):
        parse_lr_grid(text)


def test_parse_lr_grid_sorts():
    assert parse_lr_grid(" 3e-3, 1e-4,1e-3 ") == (1e-4, 1e-3, 3e-3)


# ---------------------------------------------------------------- in a session

GRID_TEST = """
import pytest
from pytest_batchprof.experiment.models import mlp

@pytest.mark.dataset("synthetic", size=800)
@pytest.mark.min_accuracy(0.7)
def test_grid(trained_model, batch_size):
    run = trained_model(mlp((32,)), batch_size=batch_size, epochs=2)
    assert run.lr_choice.chosen == run.config.lr
"""


def report(pytester: pytest.Pytester) -> dict[str, object]:
    return json.loads((pytester.path / "reports" / "latest.json").read_text())


def test_a_session_tunes_every_batch_size_and_keeps_every_run(pytester: pytest.Pytester):
    """lr 1e-4 is far too small for 2 epochs (below the 70% threshold): the threshold
    reads only the chosen runs, so the test passes; every run is in the JSON, the chosen
    ones marked."""
    pytester.makepyfile(GRID_TEST)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--batch-sizes", "16,64", "--batchprof-no-co2",
        "--batchprof-report=reports", "--batchprof-lr-grid", "1e-4,3e-3,1e-2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*lr-grid=0.0001,0.003,0.01*",
                                 "*batch 16: lr grid: chose lr=* by val accuracy on the "
                                 "validation split (0.0001: *"])
    rows = report(pytester)["rows"]
    assert len(rows) == 6
    assert sorted((row["batch_size"], row["lr"]) for row in rows) == [
        (16, 1e-4), (16, 3e-3), (16, 1e-2), (64, 1e-4), (64, 3e-3), (64, 1e-2)]
    for batch in (16, 64):
        mine = [row for row in rows if row["batch_size"] == batch]
        best = max(mine, key=lambda row: row["val_accuracy"])
        assert [row["lr"] for row in mine if row["lr_chosen"]] == [best["lr"]]
        assert {row["lr_grid"] for row in mine} == {"0.0001,0.003,0.01"}
    markdown = (pytester.path / "reports" / "latest.md").read_text()
    assert "## Learning-rate grid" in markdown


def test_the_fixture_keyword_tunes_without_the_option(pytester: pytest.Pytester):
    pytester.makepyfile("""
        import pytest
        from pytest_batchprof.experiment.models import mlp

        @pytest.mark.dataset("synthetic", size=400)
        def test_keyword(trained_model):
            run = trained_model(mlp((8,)), batch_size=32, epochs=1, lr_grid=[1e-3, 1e-2])
            assert run.lr_choice.grid == (1e-3, 1e-2)

        @pytest.mark.dataset("synthetic", size=400)
        def test_both(trained_model):
            with pytest.raises(ValueError, match="lr= and lr_grid= both given"):
                trained_model(mlp((8,)), lr=1e-3, lr_grid=[1e-3, 1e-2])
            with pytest.raises(ValueError, match="has one rate"):
                trained_model(mlp((8,)), lr_grid=[1e-3])
            with pytest.raises(ValueError, match="is not a list of numbers"):
                trained_model(mlp((8,)), lr_grid="1e-3,1e-2")
            with pytest.raises(ValueError, match="has 'fast', which is not a number"):
                trained_model(mlp((8,)), lr_grid=[1e-3, "fast"])
            with pytest.raises(ValueError, match="repeats 0.001"):
                trained_model(mlp((8,)), lr_grid=(1e-3, 0.001))
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--batchprof-no-co2",
                                          "--batchprof-no-report")
    result.assert_outcomes(passed=2)


def test_lr_grid_and_lr_scaling_together_are_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--batchprof-lr-grid", "1e-3,1e-2", "--lr-scaling", "linear")
    assert_usage_error(result, "--batchprof-lr-grid", "--lr-scaling linear",
                       "leave one of them out")


def test_a_bad_grid_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--batchprof-lr-grid", "1e-3")
    assert_usage_error(result, "--batchprof-lr-grid", "has one rate", "(got '1e-3')")
