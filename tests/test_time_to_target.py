"""Time-to-accuracy: --target-accuracy stops a run at its target and reports what it took."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine import training
from pytest_batchprof.engine.training import train
from pytest_batchprof.reports.plots import build_figures


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 800})


def test_a_reachable_target_stops_the_run(synthetic, monkeypatch, run_config) -> None:
    monkeypatch.setattr(training, "TARGET_CHECK_SAMPLES", 64)  # a check every 4 steps
    run = train(run_config(synthetic, target_accuracy=0.3, epochs=4), synthetic,
                torch.device("cpu"))
    reached = run.time_to_target
    assert reached is not None and reached.reached
    per_epoch = math.ceil(len(synthetic.train) / 16)
    assert reached.steps < per_epoch * 4 and reached.steps % 4 == 0
    assert reached.samples == reached.steps * 16  # no partial batch before the epoch's end
    assert reached.epochs == pytest.approx(reached.samples / len(synthetic.train))
    assert 0 < reached.seconds <= run.train_seconds
    assert run.history[-1].val_accuracy >= 0.3  # measured where the run stopped
    assert run.seconds_per_epoch == pytest.approx(run.train_seconds / reached.epochs)
    assert len(run.history) == math.ceil(reached.epochs)
    assert run.test_accuracy is not None
    summary = run.summary()
    assert summary["target_reached"] is True and summary["target_steps"] == reached.steps


def test_an_unreachable_target_runs_every_epoch_and_says_so(synthetic, run_config) -> None:
    run = train(run_config(synthetic, target_accuracy=0.9999, epochs=2), synthetic,
                torch.device("cpu"))
    assert len(run.history) == 2
    assert not run.time_to_target.reached
    summary = run.summary()
    assert summary["target_reached"] is False
    assert summary["target_steps"] == summary["target_seconds"] == "not reached"


def test_without_a_target_nothing_changes(synthetic, run_config) -> None:
    plain = train(run_config(synthetic, epochs=1), synthetic, torch.device("cpu"))
    assert plain.time_to_target is None and "target_steps" not in plain.summary()


TARGET_TEST = """
def test_run(trained_mlp, batch_size):
    trained_mlp(hidden=16, epochs=6)
"""


def test_table_and_plot_show_steps_to_target(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TARGET_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--dataset", "synthetic",
                                "--batch-sizes", "16,64", "--no-co2", "--device", "cpu",
                                "--target-accuracy", "0.3", "--batchprof-report", "out")
    result.assert_outcomes(passed=2)
    header = next(line for line in result.outlines if line.startswith("| model"))
    for label in ("steps to target", "samples to target", "epochs to target",
                  "time to target (s)"):
        assert label in header
    assert "target-accuracy=0.3" in result.stdout.str()
    assert list((pytester.path / "out").glob("batchprof-*-steps-to-target.png"))


def test_target_outside_zero_one_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TARGET_TEST)
    result = pytester.runpytest("--target-accuracy", "97")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --target-accuracy is 97, which is not below 1*"])


def test_steps_plot_is_log_log_with_perfect_scaling_lines() -> None:
    rows = [{"model": "64-16-10", "dataset": "digits", "batch_size": size, "seed": 0,
             "test_accuracy": 0.9, "train_seconds": 1.0, "target_steps": steps}
            for size, steps in ((16, 800), (64, 260), (256, 150))]
    rows.append({**rows[0], "batch_size": 1024, "target_steps": "not reached"})
    built = {name: figure for name, _, figure in build_figures(rows)}
    (axes,) = built["steps-to-target"].axes
    assert axes.get_yscale() == "log" and axes.get_xscale() == "log"
    measured, ideal = axes.get_lines()[:2]
    assert list(measured.get_xdata()) == [16, 64, 256]  # not reached: no point
    assert list(ideal.get_ydata()) == [800, 200, 50]
