"""--repeats: seeds of one configuration, folded into mean ± 95% confidence interval.

The statistics are checked against scipy and by simulation, the folding and
the comparison on hand-made rows, and the whole path (fixture, marker, table,
per-seed section, JSON, plots, baseline) in real sessions on scikit-learn's
digits with tiny MLPs.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics

import pytest
from scipy import stats as scipy_stats

from pytest_batchprof.gating import Threshold, compare
from pytest_batchprof.reports.plots import build_figures
from pytest_batchprof.reports.seeds import aggregate_seeds, fold, group_seeds
from pytest_batchprof.reports.stats import (
    Interval,
    difference_interval,
    mean_interval,
    seed_label,
    t_quantile,
)
from pytest_batchprof.reports.storage import load_report
from pytest_batchprof.reports.summary import table_from_report
from pytest_batchprof.reports.tables import render_table, table_columns

DIGITS = ("-p", "no:cacheprovider", "--dataset", "digits", "--epochs", "1", "--no-co2",
          "--device", "cpu")


# ---------------------------------------------------------------- statistics


def test_mean_interval_is_student_t() -> None:
    spread = mean_interval([1.0, 2.0, 3.0])
    # mean 2, standard deviation 1, t(0.975, 2 df) = 4.3027
    assert spread.mean == 2.0 and spread.n == 3
    assert spread.half_width == pytest.approx(4.302652729749464 / math.sqrt(3))
    assert (spread.low, spread.high) == pytest.approx((2 - spread.half_width,
                                                       2 + spread.half_width))
    assert t_quantile(2) == pytest.approx(4.302652729749464)


def test_one_value_has_no_interval() -> None:
    spread = mean_interval([0.97])
    assert spread == Interval(0.97, None, 1)
    assert spread.low is None and spread.excludes_zero() is None
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_interval_covers_the_true_mean_95_percent_of_the_time() -> None:
    """With 3 seeds, t = 4.30; the normal 1.96 would cover only about 80%."""
    generator = random.Random(0)
    trials, covered = 4000, 0
    for _ in range(trials):
        spread = mean_interval([generator.gauss(0.97, 0.003) for _ in range(3)])
        covered += spread.low <= 0.97 <= spread.high
    assert 0.94 <= covered / trials <= 0.96


def test_welch_difference_matches_scipy() -> None:
    before, now = [0.961, 0.965, 0.958, 0.963], [0.970, 0.975, 0.962]
    difference = difference_interval(before, now)
    expected = scipy_stats.ttest_ind(now, before, equal_var=False).confidence_interval(0.95)
    assert difference.mean == pytest.approx(statistics.fmean(now) - statistics.fmean(before))
    assert (difference.low, difference.high) == pytest.approx(
        (expected.low, expected.high))
    assert difference.n == 7


def test_difference_with_one_seed_on_one_side_borrows_the_other_sides_spread() -> None:
    before, now = [0.96], [0.970, 0.975, 0.962]
    difference = difference_interval(before, now)
    error = statistics.stdev(now) * math.sqrt(1 / 1 + 1 / 3)
    assert difference.mean == pytest.approx(statistics.fmean(now) - 0.96)
    assert difference.half_width == pytest.approx(t_quantile(2) * error)
    assert difference_interval(now, before).half_width == pytest.approx(difference.half_width)


def test_difference_of_single_runs_has_no_interval() -> None:
    assert difference_interval([0.9], [0.8]).half_width is None


def test_a_difference_of_identical_seeds_is_exact() -> None:
    assert difference_interval([0.5, 0.5], [0.6, 0.6]) == Interval(pytest.approx(0.1), 0.0, 4)


@pytest.mark.parametrize(("seeds", "label"), [
    ([0, 1, 2], "0-2"), ([2, 0, 1], "0-2"), ([0, 1], "0, 1"), ([0, 5, 9], "0, 5, 9"),
    ([3], "3"), ([], "n/a"),
])
def test_seed_label(seeds: list[int], label: str) -> None:
    assert seed_label(seeds) == label


# ---------------------------------------------------------------- folding rows


def row(seed: int, **changes: object) -> dict[str, object]:
    """A hand-made summary row of 64-8-10 on digits at batch 32."""
    figures: dict[str, object] = {
        "model": "64-8-10", "dataset": "digits", "input_shape": [8, 8], "hidden": [8],
        "activation": "relu", "batch_size": 32, "epochs": 1, "lr": 0.001, "optimizer": "adam",
        "seed": seed, "device": "cpu", "train_subset": None, "val_fraction": 1 / 12,
        "train_seconds": 2.0 + seed, "train_accuracy": 0.8, "val_accuracy": 0.85,
        "test_accuracy": 0.90 + 0.01 * seed, "params": 610, "diverged": None,
        "outcome": "passed", "tests": [f"test_x.py::test_{seed}"], "history": [],
    }
    figures.update(changes)
    return figures


def test_fold_keeps_agreed_values_and_intervals_the_rest() -> None:
    folded = fold([row(0), row(1), row(2, outcome="failed")])
    assert folded["params"] == 610 and folded["model"] == "64-8-10"
    assert folded["train_accuracy"] == 0.8  # the seeds agree: no interval
    accuracy = folded["test_accuracy"]
    assert isinstance(accuracy, Interval)
    assert accuracy.mean == pytest.approx(0.91) and accuracy.n == 3
    assert accuracy.half_width == pytest.approx(t_quantile(2) * 0.01 / math.sqrt(3))
    assert folded["train_seconds"].mean == pytest.approx(3.0)
    assert (folded["seed"], folded["seeds"], folded["outcome"]) == ("0-2", "3", "failed")
    assert folded["tests"] == [f"test_x.py::test_{seed}" for seed in range(3)]
    assert "history" not in folded


def test_fold_counts_targets_not_reached_and_diverged_seeds() -> None:
    folded = fold([row(0, target_steps=120, target_reached=True),
                   row(1, target_steps="not reached", target_reached=False),
                   row(2, test_accuracy=None, diverged="loss became nan", target_reached=True)])
    assert folded["target_steps"] == "not reached by 1 of 3"
    assert folded["target_reached"] == "2 of 3"
    assert folded["seeds"] == "3 (1 diverged)"
    assert folded["test_accuracy"].n == 2  # the diverged seed has no test accuracy


def test_only_the_seed_groups_rows() -> None:
    rows = [row(0), row(0, batch_size=64), row(1), row(1, lr=0.01)]
    groups = group_seeds(rows)
    assert [[r["seed"] for r in group] for group in groups] == [[0, 1], [0], [1]]
    folded = aggregate_seeds(rows)
    assert [r["seed"] for r in folded] == ["0, 1", 0, 1]


def test_table_shows_mean_plus_minus_interval_and_a_seeds_column() -> None:
    rows = [row(0), row(1), row(2), row(0, batch_size=64, test_accuracy=0.95)]
    columns = table_columns(rows, None)
    assert columns[columns.index("epochs") + 1] == "seeds"
    lines = render_table(aggregate_seeds(rows), ["batch_size", "seeds", "train_seconds",
                                                 "test_accuracy", "params"]).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    half = t_quantile(2) * 1.0 / math.sqrt(3)
    assert cells[0] == ["batch", "seeds", "train time (s)", "test acc (%)", "params"]
    assert cells[2] == ["32", "3", f"3.0 ± {half:.1f}", f"91.0 ± {half:.1f}", "610"]
    assert cells[3] == ["64", "1", "2.0", "95.0", "610"]
    assert "seeds" not in table_columns([row(0), row(0, batch_size=64)], None)


def test_a_tiny_interval_keeps_two_significant_digits() -> None:
    rows = [row(seed, test_accuracy=0.9 + 0.00001 * seed) for seed in range(3)]
    (cell,) = [line for line in render_table(aggregate_seeds(rows), ["test_accuracy"])
               .splitlines()][2:]
    assert re.fullmatch(r"\| 90\.0 ± 0\.00\d+ +\|", cell), cell


# ---------------------------------------------------------------- gating on means


def test_threshold_checks_the_mean_of_the_seeds() -> None:
    seeds = [row(0, test_accuracy=0.89), row(1, test_accuracy=0.93)]  # mean 0.91
    assert Threshold(0.90).failures(seeds) == []
    (line,) = Threshold(0.92).failures(seeds)
    half = t_quantile(1) * statistics.stdev([0.89, 0.93]) / math.sqrt(2) * 100
    assert line == (f"64-8-10 on digits, batch 32, seeds 0, 1: mean test accuracy 91.00% "
                    f"± {half:.2f} pp (95% CI) is below 92.00% (seeds: 89.00%, 93.00%)")


def test_threshold_fails_a_configuration_with_a_diverged_seed() -> None:
    seeds = [row(0), row(1, test_accuracy=None, diverged="loss became nan")]
    (line,) = Threshold(0.5).failures(seeds)
    assert line.startswith("64-8-10 on digits, batch 32, seed 1: test accuracy n/a is below")


ENV = {"machine": "box", "cpu": "Some CPU", "device": "cpu", "torch": "2.5.0"}


def compared(now: list[dict[str, object]], before: list[dict[str, object]],
             fail_drop: float = 0.5):
    return compare(now, {"rows": before, "environment": ENV}, "base.json", fail_drop, None, ENV)


def seeds_at(accuracies: list[float]) -> list[dict[str, object]]:
    return [row(seed, test_accuracy=value) for seed, value in enumerate(accuracies)]


def test_comparison_of_means_within_the_noise() -> None:
    before, now = [0.90, 0.92, 0.91], [0.895, 0.905, 0.91]
    (entry,) = compared(seeds_at(now), seeds_at(before)).entries
    noise = difference_interval(before, now)
    assert (entry.baseline, entry.now) == pytest.approx((0.91, statistics.fmean(now)))
    assert entry.seeds() == "3, 3"
    assert entry.noise == noise and not noise.excludes_zero()
    assert entry.noise_text() == f"±{noise.half_width * 100:.2f} pp: within noise"
    assert entry.verdict == f"REGRESSION: -0.67 pp > 0.5 pp allowed (within noise, " \
                            f"±{noise.half_width * 100:.2f} pp)"
    assert entry.title == "64-8-10 on digits, batch 32, seeds 0-2"


def test_comparison_of_means_beyond_the_noise() -> None:
    comparison = compared(seeds_at([0.80, 0.801, 0.799]), seeds_at([0.90, 0.901, 0.899]))
    (entry,) = comparison.entries
    assert entry.noise_text().endswith("pp: beyond noise")
    assert entry.verdict == "REGRESSION: -10.00 pp > 0.5 pp allowed"
    assert comparison.regressions == [entry]
    improved = compared(seeds_at([0.95, 0.951, 0.949]), seeds_at([0.90, 0.901, 0.899]))
    assert improved.entries[0].verdict == "improved"


def test_a_single_seed_baseline_is_compared_with_the_mean_of_the_repeats() -> None:
    (entry,) = compared(seeds_at([0.90, 0.92, 0.91]), seeds_at([0.91])).entries
    assert entry.seeds() == "1, 3"
    assert entry.noise.half_width == pytest.approx(
        difference_interval([0.91], [0.90, 0.92, 0.91]).half_width)
    assert entry.verdict == "ok"
    cells = [cell.strip() for cell in
             compared(seeds_at([0.90, 0.92, 0.91]), seeds_at([0.91])).table().splitlines()[2]
             .strip("|").split("|")]
    assert cells[1:5] == ["1, 3", "91.00", f"91.00 ± {t_quantile(2) * 1 / math.sqrt(3):.2f}",
                          "+0.00 pp"]


def test_one_diverged_seed_is_a_regression() -> None:
    now = [*seeds_at([0.91, 0.91]), row(2, test_accuracy=None, diverged="nan")]
    (entry,) = compared(now, seeds_at([0.91, 0.91, 0.91])).entries
    assert entry.verdict == "REGRESSION: 1 of 3 seeds diverged"


# ---------------------------------------------------------------- plots


def test_plots_draw_the_interval_as_error_bars_and_bands() -> None:
    rows = []
    for batch_size, accuracies in ((16, [0.90, 0.92, 0.91]), (64, [0.93, 0.93, 0.96])):
        for seed, accuracy in enumerate(accuracies):
            rows.append(row(seed, batch_size=batch_size, test_accuracy=accuracy,
                            train_seconds=10.0 / batch_size * (1 + seed / 10),
                            history=[{"epoch": 1, "val_accuracy": accuracy - 0.01},
                                     {"epoch": 2, "val_accuracy": accuracy}]))
    figures = {name: figure for name, _, figure in build_figures(rows)}
    (axes,) = figures["accuracy"].axes
    (container,) = axes.containers
    (bars,) = container.lines[2]
    for (bottom, top), accuracies in zip(bars.get_segments(),
                                         ([0.90, 0.92, 0.91], [0.93, 0.93, 0.96]), strict=True):
        spread = mean_interval([100 * value for value in accuracies])
        assert (bottom[1], top[1]) == pytest.approx((spread.low, spread.high))
    (time_axes,) = figures["time"].axes
    assert len(time_axes.containers) == 1
    curves = figures["learning-curves"].axes[0]
    assert len(curves.collections) == 2  # a 95% band under each batch size's curve


# ---------------------------------------------------------------- sessions


REPEATED = """
    import pytest

    from pytest_batchprof.runs.repeats import RepeatedRun
    from pytest_batchprof.engine.training import Run

    @pytest.mark.min_accuracy(0.2)
    def test_repeats(trained_mlp, batch_size):
        run = trained_mlp(hidden=16)
        assert isinstance(run, RepeatedRun)
        assert run.seeds == (0, 1, 2)
        assert [one.config.seed for one in run.runs] == [0, 1, 2]
        accuracies = [one.test_accuracy for one in run.runs]
        assert run.test_accuracy == pytest.approx(sum(accuracies) / 3)
        spread = run.interval("test_accuracy")
        assert spread.n == 3 and spread.low <= run.test_accuracy <= spread.high
        assert "mean test acc" in repr(run) and "seeds 0-2" in repr(run)
        assert run.params == run.runs[0].params and run.predictor()().shape[0] == batch_size

    def test_explicit_repeats_and_seed(trained_mlp):
        run = trained_mlp(hidden=16, batch_size=16, seed=1, repeats=2)
        assert run.seeds == (1, 2)
        single = trained_mlp(hidden=16, batch_size=16, seed=1, repeats=1)
        assert isinstance(single, Run) and single is run.runs[0]  # trained once per session

    def test_bad_repeats(trained_mlp):
        with pytest.raises(ValueError, match="repeats=0 must be a whole number >= 1"):
            trained_mlp(hidden=16, repeats=0)
"""


def test_repeats_session_folds_seeds_in_the_table_and_keeps_them_in_the_files(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(REPEATED)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16,64", "--repeats", "3",
                                "--batchprof-report", "out")
    result.assert_outcomes(passed=4)
    output = result.stdout.str()
    assert " seed=0 repeats=3 device=" in output
    # each batch size's 3 seeds train as one ensemble; seeds 1-2 at 16 again: trained once
    assert output.count("batchprof: training 3 runs of 64-16-10") == 2
    assert output.count("(ensemble member)") == 6
    table = [line for line in result.outlines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[header.index("epochs") + 1] == "seeds"
    body = {cells[2]: cells for cells in ([cell.strip() for cell in line.strip("|").split("|")]
                                          for line in table[2:])}
    seeds = header.index("seeds")
    test_accuracy = header.index("test acc (%)")
    assert sorted(body) == ["16", "64"]
    assert body["16"][seeds] == body["64"][seeds] == "3"
    assert re.fullmatch(r"\d+\.\d ± \d+(\.\d+)?", body["64"][test_accuracy])

    (json_path,) = (pytester.path / "out").glob("batchprof-*.json")
    document = load_report(json_path)
    assert sorted((row["batch_size"], row["seed"]) for row in document["rows"]) == [
        (16, 0), (16, 1), (16, 2), (64, 0), (64, 1), (64, 2)]
    assert table_from_report(json_path).splitlines() == table
    markdown = json_path.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Per-seed runs" in markdown and "95% confidence interval" in markdown
    per_seed = markdown.split("## Per-seed runs")[1].split("##")[0]
    assert per_seed.count("| 64-16-10 ") == 6
    for row in document["rows"]:
        accuracy = f"{row['test_accuracy'] * 100:.1f}"
        assert accuracy in per_seed
    accuracies = [row["test_accuracy"] * 100 for row in document["rows"]
                  if row["batch_size"] == 64]
    spread = mean_interval(accuracies)
    assert body["64"][test_accuracy] == render_table(
        [{"test_accuracy": Interval(spread.mean / 100, spread.half_width / 100, 3)}],
        ["test_accuracy"]).splitlines()[2].strip("|").strip()
    assert json.loads(json_path.read_text())["columns"][header.index("seeds")] == "seeds"


def test_min_accuracy_marker_reads_the_mean(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.min_accuracy(0.999)
        def test_too_high(trained_mlp):
            trained_mlp(hidden=16, batch_size=16)
    """)
    result = pytester.runpytest(*DIGITS, "--repeats", "2", "--batchprof-no-report")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*64-16-10 on digits, batch 16, seeds 0, 1: mean test accuracy *% ± * pp (95% CI) is "
        "below 99.90% (seeds: *%, *%)"])


def test_baseline_of_repeats_compares_means_with_their_noise(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_run(trained_mlp):
            trained_mlp(hidden=16, batch_size=16)
    """)
    saved = pytester.runpytest(*DIGITS, "--repeats", "3", "--batchprof-save", "base",
                               "--batchprof-no-report")
    saved.assert_outcomes(passed=1)
    assert len(load_report(pytester.path / "reports" / "baselines" / "base.json")["rows"]) == 3
    again = pytester.runpytest(*DIGITS, "--repeats", "3", "--batchprof-compare", "base",
                               "--batchprof-no-report")
    assert again.ret == pytest.ExitCode.OK
    again.stdout.fnmatch_lines([
        "*| run *| seeds (baseline, now) *| noise (95% CI of delta) *",
        "*| 64-16-10 on digits, batch 16, seeds 0-2 | 3, 3 * | +0.00 pp | ±* pp: within noise "
        "*| * | ok *"])
    assert "which no row has" not in again.stdout.str()
