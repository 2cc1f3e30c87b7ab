"""The critical batch size fitted to steps to target (McCandlish et al. 2018): the fit on
synthetic S(B) data, its bootstrap interval, the cases it declines, studies of rows, the
row figures, the report's section and the steps plot's fitted curve."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_batchprof.plugin.report import SummaryTables, _markdown
from pytest_batchprof.reports.critical_batch import (
    BOOTSTRAP_RESAMPLES,
    CriticalBatchFit,
    NoFit,
    UndeterminedFit,
    add_critical_batch_fit,
    critical_batch_section,
    fit_critical_batch,
    fit_pareto,
    fit_studies,
)
from pytest_batchprof.reports.plots import build_figures
from pytest_batchprof.reports.summary import summary_table
from pytest_batchprof.reports.tables import table_columns

B_CRIT, S_MIN = 500.0, 50.0
SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
FIT_KEYS = ("critical_batch_fit", "critical_batch_fit_low", "critical_batch_fit_high",
            "critical_batch_fit_s_min")


def pareto_steps(size: float, b_crit: float = B_CRIT, s_min: float = S_MIN) -> float:
    return s_min * (1 + b_crit / size)


def noisy_steps(seeds: int = 3, sigma: float = 0.1, data_seed: int = 0,
                b_crit: float = B_CRIT) -> dict[int, list[float]]:
    """Steps to target at every batch size of :data:`SIZES`, each seed's off the curve by
    a log-normal factor (the noise of steps to target is multiplicative)."""
    generator = np.random.default_rng(data_seed)
    return {size: [pareto_steps(size, b_crit) * math.exp(generator.normal(0, sigma))
                   for _ in range(seeds)] for size in SIZES}


def study_rows(steps: dict[int, list[float | str]] | None = None, model: str = "784-1024-10",
               target: float = 0.97, **setting: object) -> list[dict]:
    """The rows of a time-to-accuracy study with ``--lr-scaling linear`` and
    ``--noise-scale``: every seed its row, its steps rounded to whole steps (a string is
    a target not reached)."""
    rows = []
    for size, per_seed in (steps or noisy_steps()).items():
        for seed, value in enumerate(per_seed):
            reached = not isinstance(value, str)
            figure = round(value) if reached else value
            rows.append({
                "model": model, "dataset": "mnist", "batch_size": size, "seed": seed,
                "epochs": 10, "lr": 0.001 * size / 64, "optimizer": "adam",
                "target_accuracy": target, "target_reached": reached,
                "target_steps": figure, "target_samples": figure * size if reached else value,
                "test_accuracy": 0.972, "train_seconds": 2.0,
                "critical_batch": 800.0 + 100 * seed, "critical_batch_low": 500.0,
                "critical_batch_high": 2000.0, "outcome": "passed", "tests": [],
                **setting})
    return rows


@pytest.fixture(scope="module")
def noisy_fit() -> CriticalBatchFit:
    fit = fit_critical_batch(noisy_steps())
    assert isinstance(fit, CriticalBatchFit)
    return fit


# ---------------------------------------------------------------- the fit


def test_the_fit_recovers_b_crit_from_noisy_steps(noisy_fit: CriticalBatchFit) -> None:
    """Three seeds at each of nine batch sizes, each 10% (log-normal) off the curve."""
    assert noisy_fit.b_crit == pytest.approx(B_CRIT, rel=0.15)
    assert noisy_fit.s_min == pytest.approx(S_MIN, rel=0.15)
    assert noisy_fit.batch_sizes == SIZES
    assert (noisy_fit.points, noisy_fit.resamples) == (27, BOOTSTRAP_RESAMPLES)


def test_the_bootstrap_interval_contains_the_truth(noisy_fit: CriticalBatchFit) -> None:
    """A 95% interval misses the truth about once in 20 studies: of 20 noisy studies
    (200 resamples each), at least 17 intervals contain B_crit, and each its estimate."""
    assert noisy_fit.low is not None and noisy_fit.high is not None
    assert noisy_fit.low < B_CRIT < noisy_fit.high
    fits = [fit_critical_batch(noisy_steps(data_seed=seed), resamples=200)
            for seed in range(20)]
    assert all(isinstance(fit, CriticalBatchFit) and fit.resamples == 200 for fit in fits)
    assert all(fit.low < fit.b_crit < fit.high for fit in fits)
    assert sum(fit.low < B_CRIT < fit.high for fit in fits) >= 17
    assert all(fit.b_crit == pytest.approx(B_CRIT, rel=0.15) for fit in fits)


def test_e_min_is_s_min_times_b_crit(noisy_fit: CriticalBatchFit) -> None:
    assert noisy_fit.e_min == pytest.approx(noisy_fit.s_min * noisy_fit.b_crit)
    # E = S B on the fitted curve meets McCandlish's E = E_min (1 + B / B_crit)
    for size in SIZES:
        samples = pareto_steps(size, noisy_fit.b_crit, noisy_fit.s_min) * size
        assert samples == pytest.approx(noisy_fit.e_min * (1 + size / noisy_fit.b_crit))


def test_the_bootstrap_is_seeded_so_a_report_is_reproducible(
        noisy_fit: CriticalBatchFit) -> None:
    assert fit_critical_batch(noisy_steps()) == noisy_fit
    other = fit_critical_batch(noisy_steps(), seed=1)
    assert isinstance(other, CriticalBatchFit) and other.b_crit == noisy_fit.b_crit
    assert (other.low, other.high) != (noisy_fit.low, noisy_fit.high)


def test_describe_is_one_line_of_figures_and_what_they_rest_on(
        noisy_fit: CriticalBatchFit) -> None:
    line = noisy_fit.describe()
    assert "\n" not in line
    assert line.startswith(f"B_crit = {noisy_fit.b_crit:,.0f} samples (95% "
                           f"{noisy_fit.low:,.0f} to {noisy_fit.high:,.0f}), "
                           f"S_min = {noisy_fit.s_min:,.0f} steps, E_min = ")
    assert line.endswith("fitted to 27 runs at 9 batch sizes (16 to 4,096), "
                         "1,000 bootstrap resamples over seeds")


@settings(max_examples=40, deadline=None)
@given(b_crit=st.floats(min_value=24, max_value=3000),
       s_min=st.floats(min_value=5, max_value=1e5))
def test_noiseless_steps_give_b_crit_and_s_min_exactly(b_crit: float, s_min: float) -> None:
    """One seed per batch size: the exact curve, and no interval (nothing to resample)."""
    fit = fit_critical_batch({size: [pareto_steps(size, b_crit, s_min)] for size in SIZES})
    assert isinstance(fit, CriticalBatchFit)
    assert fit.b_crit == pytest.approx(b_crit, rel=1e-4)
    assert fit.s_min == pytest.approx(s_min, rel=1e-4)
    assert (fit.low, fit.high, fit.resamples) == (None, None, 0)
    assert "no interval: one seed per batch size" in fit.describe()


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(min_value=0.01, max_value=100))
def test_the_fit_scales_with_the_steps(scale: float) -> None:
    """Steps k times as many: S_min k times, B_crit the same (the fit is on log S)."""
    steps = noisy_steps(seeds=1)
    base, scaled = (fit_critical_batch({size: [factor * value for value in values]
                                        for size, values in steps.items()})
                    for factor in (1.0, scale))
    assert isinstance(base, CriticalBatchFit) and isinstance(scaled, CriticalBatchFit)
    assert scaled.b_crit == pytest.approx(base.b_crit, rel=1e-4)
    assert scaled.s_min == pytest.approx(scale * base.s_min, rel=1e-4)


# ---------------------------------------------------------------- what is not fitted


def test_two_batch_sizes_are_too_few() -> None:
    fit = fit_critical_batch({16: [800.0], 64: [260.0]})
    assert fit == NoFit("needs steps to target at 3 or more batch sizes; has 2")
    assert fit.describe() == ("no fit: needs steps to target at 3 or more batch sizes; "
                              "has 2")


def test_flat_steps_do_not_determine_b_crit() -> None:
    fit = fit_critical_batch({size: [300.0, 310.0] for size in (16, 64, 256, 1024)})
    assert isinstance(fit, NoFit)
    assert fit.reason.startswith("the steps to target do not fall as the batch grows "
                                 "(305 at batch 16, 305 at batch 1,024)")


def test_steps_that_level_off_below_the_smallest_batch_do_not_determine_b_crit() -> None:
    """Falling a little, but flat already at batch 16: B_crit is far below it."""
    fit = fit_critical_batch({size: [pareto_steps(size, b_crit=0.01)] for size in SIZES})
    assert isinstance(fit, NoFit)
    assert "B_crit lies below batch 16 and the fit cannot place it" in fit.reason


def test_perfect_scaling_throughout_does_not_determine_b_crit() -> None:
    fit = fit_critical_batch({size: [64_000 / size] for size in SIZES})
    assert isinstance(fit, NoFit)
    assert fit.reason == ("the steps halve with every doubling of the batch up to 4,096 "
                          "(perfect scaling), so B_crit lies above the batch sizes measured "
                          "and the fit cannot place it")
    with pytest.raises(UndeterminedFit) as raised:
        fit_pareto(list(SIZES), [64_000 / size for size in SIZES])
    assert raised.value.side == "upper"


def test_unreached_targets_are_left_out_and_said() -> None:
    steps = noisy_steps()
    steps[4096] = ["not reached", steps[4096][1], "not reached"]
    steps[2048] = ["not reached"] * 3
    (study,) = fit_studies(study_rows(steps), resamples=50)
    assert isinstance(study.fit, CriticalBatchFit)
    assert study.fit.batch_sizes == SIZES[:-2]
    assert study.fit.left_out == ("batch 2,048 left out: 3 of 3 seeds did not reach 97%",
                                  "batch 4,096 left out: 2 of 3 seeds did not reach 97%")
    assert study.fit.describe().endswith(
        "; batch 2,048 left out: 3 of 3 seeds did not reach 97%"
        "; batch 4,096 left out: 2 of 3 seeds did not reach 97%")


def test_too_few_reached_batch_sizes_give_the_reason_and_what_was_left_out() -> None:
    steps = {16: [1600.0], 64: [450.0], 256: ["not reached"]}
    rows = study_rows(steps, target=0.99)
    rows.append({**rows[0], "batch_size": 1024, "target_steps": None,
                 "target_reached": False, "out_of_memory": "out of memory"})
    (study,) = fit_studies(rows)
    assert study.fit == NoFit("needs steps to target at 3 or more batch sizes; has 2",
                              ("batch 256 left out: its run did not reach 99%",
                               "batch 1,024 left out: its run ran out of memory"))
    section = critical_batch_section([study])
    assert section is not None
    assert ("No fit: needs steps to target at 3 or more batch sizes; has 2." in section)
    assert ("Left out: batch 256 left out: its run did not reach 99%; batch 1,024 left out: "
            "its run ran out of memory." in section)
    assert add_critical_batch_fit(rows) and not any(key in row for row in rows
                                                     for key in FIT_KEYS)


# ---------------------------------------------------------------- studies of rows


def test_studies_are_configurations_but_for_batch_size_seed_and_lr() -> None:
    """Each model is its own study (each with lr scaled per batch size: still one study);
    rows without a target are in none."""
    small = study_rows(model="784-1024-10")
    big = study_rows(noisy_steps(b_crit=2000, data_seed=3), model="784-512-512-10")
    no_target = [{key: value for key, value in row.items()
                  if not key.startswith("target")} | {"epochs": 2} for row in small]
    studies = fit_studies([*small, *big, *no_target], resamples=50)
    assert [study.title for study in studies] == ["784-1024-10 on mnist, 10 epochs, to 97%",
                                                  "784-512-512-10 on mnist, 10 epochs, to 97%"]
    fits = [study.fit for study in studies]
    assert all(isinstance(fit, CriticalBatchFit) for fit in fits)
    assert fits[0].b_crit == pytest.approx(B_CRIT, rel=0.15)
    assert fits[1].b_crit == pytest.approx(2000, rel=0.15)
    assert [len(study.rows) for study in studies] == [27, 27]


def test_a_setting_that_tells_studies_apart_is_in_the_title() -> None:
    rows = [*study_rows(precision="fp32"), *study_rows(precision="bf16")]
    studies = fit_studies(rows, resamples=0)
    assert all(study.fit.interval() == "no interval: not resampled" for study in studies)
    titles = [study.title for study in studies]
    assert titles == ["784-1024-10 on mnist, 10 epochs, to 97%, precision fp32",
                      "784-1024-10 on mnist, 10 epochs, to 97%, precision bf16"]


def test_rows_a_learning_rate_grid_did_not_choose_play_no_part() -> None:
    """``lr_chosen`` False: neither fitted, nor given figures, nor in the B_simple median;
    a missing key is a chosen row, as is True."""
    chosen = study_rows()
    for row in chosen[::2]:
        row["lr_chosen"] = True
    others = [{**row, "lr": row["lr"] * 10, "lr_chosen": False, "target_steps": 7,
               "critical_batch": 1e6} for row in study_rows()]
    (alone,) = fit_studies(chosen, resamples=100)
    (with_grid,) = fit_studies([*others, *chosen], resamples=100)
    assert with_grid.fit == alone.fit
    assert with_grid.b_simple_median() == alone.b_simple_median() == 900.0
    add_critical_batch_fit([*others, *chosen], resamples=10)
    assert all("critical_batch_fit" in row for row in chosen)
    assert not any(key in row for row in others for key in (*FIT_KEYS, "critical_batch_ratio"))


# ---------------------------------------------------------------- rows, table, section


@pytest.fixture(scope="module")
def fitted_rows() -> list[dict]:
    """A study's rows with their fitted figures; one seed without a noise-scale estimate."""
    rows = study_rows()
    rows[0]["critical_batch"] = None
    add_critical_batch_fit(rows)
    return rows


def test_every_row_of_a_fitted_study_gets_the_fit_and_its_ratio_to_b_simple(
        fitted_rows: list[dict]) -> None:
    (study,) = fit_studies(fitted_rows)
    fit = study.fit
    assert isinstance(fit, CriticalBatchFit)
    for row in fitted_rows:
        assert [row[key] for key in FIT_KEYS] == [fit.b_crit, fit.low, fit.high, fit.s_min]
    assert "critical_batch_ratio" not in fitted_rows[0]
    for row in fitted_rows[1:]:
        assert row["critical_batch_ratio"] == pytest.approx(fit.b_crit / row["critical_batch"])


def test_the_folded_table_shows_the_fit_once_per_configuration(
        fitted_rows: list[dict]) -> None:
    """The fitted figures are the study's, equal across seeds: single numbers; the
    ratio differs with each seed's B_simple: mean ± interval."""
    columns = table_columns(fitted_rows)
    assert columns[columns.index("critical_batch"):][:7] == [
        "critical_batch", "critical_batch_low", "critical_batch_high", "critical_batch_fit",
        "critical_batch_fit_low", "critical_batch_fit_high", "critical_batch_ratio"]
    table = summary_table(fitted_rows, columns).splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[header.index("B_simple (noise scale)"):][:7] == [
        "B_simple (noise scale)", "B_simple 95% low", "B_simple 95% high", "B_crit (fit)",
        "B_crit 95% low", "B_crit 95% high", "B_crit / B_simple"]
    fit = fitted_rows[0]
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]  # batch 16
    at = header.index("B_crit (fit)")
    assert cells[at:at + 3] == [f"{fit['critical_batch_fit']:,.0f}",
                                f"{fit['critical_batch_fit_low']:,.0f}",
                                f"{fit['critical_batch_fit_high']:,.0f}"]
    assert cells[header.index("B_simple (noise scale)")] == "950 ± 635"  # seeds 1-2 have one
    assert " ± " in cells[header.index("B_crit / B_simple")]


def test_the_markdown_section_gives_the_fit_beside_b_simple_and_what_they_mean(
        fitted_rows: list[dict]) -> None:
    studies = fit_studies(fitted_rows)
    fit = studies[0].fit
    assert isinstance(fit, CriticalBatchFit)
    section = critical_batch_section(studies)
    assert section is not None
    assert section.startswith("## Critical batch size, fitted\n")
    assert "Below B_crit, doubling the batch nearly halves the steps; above it, it mostly " \
           "doubles the samples." in section
    assert "(1,000 resamples, each batch size's seeds drawn with replacement)" in section
    assert "### 784-1024-10 on mnist, 10 epochs, to 97%" in section
    median = 900.0  # seeds 1 and 2 at every batch size: 900 and 1,000, seed 0 at 16: none
    for line in (
        f"- B_crit (fit): {fit.b_crit:,.0f} samples (95% {fit.low:,.0f} to {fit.high:,.0f})",
        f"- S_min: {fit.s_min:,.0f} steps",
        f"- E_min = S_min x B_crit: {fit.e_min:,.0f} samples",
        "- fitted to: 27 runs at 9 batch sizes (16, 32, 64, 128, 256, 512, 1,024, 2,048, "
        "4,096)",
        "- B_simple (noise scale): median 900 samples over 26 runs",
        f"- B_crit / B_simple: {fit.b_crit / median:.2f}",
    ):
        assert line in section.splitlines()
    assert critical_batch_section([]) is None


def test_the_session_report_fits_once_and_adds_the_section() -> None:
    """Through the summary's own entry points: the rows get the figures before the hooks
    run (so they are standard, not hook-added, keys) and the markdown gets the section."""
    config = SimpleNamespace(hook=SimpleNamespace(pytest_batchprof_summary=lambda **_: None,
                                                  pytest_batchprof_markdown=lambda **_: None))
    tables = SummaryTables.build(config, SimpleNamespace(columns=None), study_rows())
    (study,) = tables.critical_batch
    assert isinstance(study.fit, CriticalBatchFit)
    assert all(row["critical_batch_fit"] == study.fit.b_crit for row in tables.rows)
    assert "critical_batch_fit_s_min" not in tables.columns  # declared, not a default
    assert "| B_crit (fit)" in tables.table
    markdown = _markdown(config, tables, {}, [], False, None)
    assert markdown.count("## Critical batch size, fitted") == 1
    assert markdown.index("## Per-seed runs") < markdown.index("## Critical batch size")


# ---------------------------------------------------------------- the steps plot


def test_the_steps_plot_draws_the_fitted_curve_and_marks_b_crit(
        fitted_rows: list[dict]) -> None:
    built = {name: figure for name, _, figure in build_figures(fitted_rows)}
    (axes,) = built["steps-to-target"].axes
    fit = fitted_rows[0]
    b_crit, s_min = fit["critical_batch_fit"], fit["critical_batch_fit_s_min"]
    label = f"fit: B_crit = {b_crit:,.0f}"
    (curve,) = [line for line in axes.get_lines() if line.get_label() == label]
    x, y = curve.get_xdata(), curve.get_ydata()
    assert curve.get_linestyle() == "-."
    assert (x[0], x[-1]) == pytest.approx((16, 4096)) and len(x) > len(SIZES)
    assert list(y) == pytest.approx([s_min * (1 + b_crit / size) for size in x])
    measured = axes.get_lines()[0]
    assert curve.get_color() == measured.get_color()
    (marker,) = [line for line in axes.get_lines() if line.get_linestyle() == ":"]
    assert list(marker.get_xdata()) == [b_crit, b_crit]
    assert marker.get_color() == measured.get_color()
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert sorted(legend) == sorted(["784-1024-10", label, "perfect scaling"])


def test_a_series_of_rows_without_one_shared_fit_has_no_curve(
        fitted_rows: list[dict]) -> None:
    rows = [dict(row) for row in fitted_rows]
    rows[0]["critical_batch_fit"] = 1.0  # another study's fit on one of the series' runs
    built = {name: figure for name, _, figure in build_figures(rows)}
    (axes,) = built["steps-to-target"].axes
    assert not [line for line in axes.get_lines()
                if line.get_label().startswith("fit:") or line.get_linestyle() == ":"]
