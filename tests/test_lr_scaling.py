"""Learning rate when the batch size changes: --lr-scaling, --lr-base-batch, --lr-warmup-epochs."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine.training import scaled_lr, train, warmup_lr


@pytest.mark.parametrize(("rule", "batch", "expected"), [
    ("none", 256, 1e-3), ("linear", 256, 4e-3), ("linear", 16, 2.5e-4),
    ("sqrt", 256, 2e-3), ("sqrt", 16, 5e-4), ("linear", 64, 1e-3), ("sqrt", 64, 1e-3),
])
def test_scaled_lr(rule: str, batch: int, expected: float) -> None:
    assert scaled_lr(1e-3, batch, 64, rule) == pytest.approx(expected)


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="cubic"):
        scaled_lr(1e-3, 64, 64, "cubic")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 400})


SMALL_FAST = {"hidden": (16,), "batch_size": 20, "lr": 4e-3}
"""A 16-unit MLP at batch 20: 18 steps an epoch on 360 training samples."""


def test_warmup_ramps_linearly_from_the_unscaled_lr(synthetic, run_config) -> None:
    ramp = run_config(synthetic, **SMALL_FAST, lr_warmup_epochs=1.0, lr_warmup_start=1e-3)
    steps = [warmup_lr(ramp, step, 18) for step in range(1, 21)]
    assert steps[0] == pytest.approx(1e-3)
    assert steps[9] == pytest.approx(1e-3 + 3e-3 * 9 / 18)
    assert steps[18:] == [4e-3, 4e-3]  # step 19 on: the run's lr
    assert all(later > earlier for earlier, later in itertools.pairwise(steps[:19]))


def test_warmup_changes_training_and_ends_at_the_runs_lr(synthetic, run_config) -> None:
    plain = train(run_config(synthetic, **SMALL_FAST), synthetic, torch.device("cpu"))
    warm = train(run_config(synthetic, **SMALL_FAST, lr_warmup_epochs=1.0,
                            lr_warmup_start=1e-3), synthetic,
                 torch.device("cpu"))
    assert [group["lr"] for group in warm.optimizer.param_groups] == [4e-3]
    assert warm.history[0].train_loss != plain.history[0].train_loss
    again = train(dataclasses.replace(warm.config), synthetic, torch.device("cpu"))
    assert again.history[-1].val_accuracy == warm.history[-1].val_accuracy  # reproducible


LR_TEST = """
import math

def test_lr(trained_mlp, batch_size):
    run = trained_mlp(hidden=8)
    expected = 1e-3 * {factor}
    assert math.isclose(run.config.lr, expected), run.config.lr
    assert run.config.lr_warmup_epochs == {warmup}
"""


@pytest.mark.parametrize(("args", "factor", "warmup"), [
    (("--lr-scaling", "linear", "--lr-base-batch", "16"), "batch_size / 16", 0.0),
    (("--lr-scaling", "sqrt", "--lr-base-batch", "16"), "math.sqrt(batch_size / 16)", 0.0),
    (("--lr-warmup-epochs", "0.5"), "1", 0.5),
], ids=["linear", "sqrt", "warmup-only"])
def test_options_reach_every_run(pytester: pytest.Pytester, args, factor, warmup) -> None:
    pytester.makepyfile(LR_TEST.format(factor=factor, warmup=warmup))
    result = pytester.runpytest("-p", "no:cacheprovider", "--dataset", "synthetic",
                                "--epochs", "1", "--batch-sizes", "16,64", "--no-co2",
                                "--device", "cpu", *args)
    result.assert_outcomes(passed=2)


def test_table_shows_the_lr_each_run_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LR_TEST.format(factor="batch_size / 16", warmup=1.0))
    result = pytester.runpytest("-p", "no:cacheprovider", "--dataset", "synthetic",
                                "--epochs", "1", "--batch-sizes", "16,64", "--no-co2",
                                "--device", "cpu", "--lr-scaling", "linear",
                                "--lr-base-batch", "16", "--lr-warmup-epochs", "1",
                                "--batchprof-no-report")
    result.assert_outcomes(passed=2)
    header = next(line for line in result.outlines if line.startswith("| model"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns[columns.index("epochs") + 1] == "lr"
    rows = [line for line in result.outlines if line.startswith("| 64-8-10")]
    lrs = [[cell.strip() for cell in line.strip("|").split("|")][columns.index("lr")]
           for line in rows]
    assert lrs == ["0.001", "0.004"]
    assert "lr-scaling=linear lr-base-batch=16 lr-warmup-epochs=1" in result.stdout.str()
