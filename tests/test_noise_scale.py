"""The gradient noise scale estimator, on a problem whose true noise scale is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_batchprof.measuring import noise_scale

DIM, NOISE_SD, SAMPLES = 8, 2.0, 100_000


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((output.squeeze(-1) - target) ** 2).mean()


def regression(offset: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """Linear regression with x ~ N(0, I_d), y = w*.x + N(0, sd^2), weights w* + delta.

    The per-sample gradient is (delta.x - eps) x, so G = delta and
    tr(Sigma) = |delta|^2 (d + 1) + sd^2 d: B_simple = d + 1 + sd^2 d / |delta|^2.
    """
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, DIM, generator=generator)
    true_weights = torch.randn(DIM, generator=generator)
    y = x @ true_weights + NOISE_SD * torch.randn(SAMPLES, generator=generator)
    delta = torch.full((DIM,), offset / DIM ** 0.5)  # |delta| = offset
    model = nn.Linear(DIM, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((true_weights + delta).unsqueeze(0))
    truth = DIM + 1 + NOISE_SD ** 2 * DIM / offset ** 2 if offset else float("inf")
    return model, x, y, truth


@pytest.mark.parametrize("offset", [1.0, 0.5, 2.0])
def test_estimate_recovers_the_known_noise_scale(offset: float) -> None:
    model, x, y, truth = regression(offset)  # 41, 137 and 17 samples
    result = noise_scale.estimate(model, squared_error, x, y, small_batch=8, big_batch=512,
                                  pairs=400)
    assert result.b_simple == pytest.approx(truth, rel=0.15)
    assert result.low < truth < result.high
    assert result.gradient_sq == pytest.approx(offset ** 2, rel=0.15)


def test_estimate_is_seeded_and_leaves_the_model_alone() -> None:
    model, x, y, _ = regression(1.0)
    model.train()
    before = model.weight.detach().clone()
    first = noise_scale.estimate(model, squared_error, x, y, 8, 256, pairs=20, seed=3)
    again = noise_scale.estimate(model, squared_error, x, y, 8, 256, pairs=20, seed=3)
    assert first == again
    assert torch.equal(model.weight, before) and model.training
    assert model.weight.grad is None


def test_at_the_minimum_there_is_no_scale_to_report() -> None:
    model, x, y, _ = regression(0.0)
    result = noise_scale.estimate(model, squared_error, x, y, 8, 512, pairs=50)
    # |G|^2 is 0: its estimate is noise around 0, and so is anything divided by it
    assert result.b_simple is None or result.b_simple > 1000 or result.low is None


def test_batch_sizes_are_checked_and_capped() -> None:
    model, x, y, _ = regression(1.0)
    with pytest.raises(ValueError, match="small batch < big batch"):
        noise_scale.estimate(model, squared_error, x, y, 64, 64)
    capped = noise_scale.estimate(model, squared_error, x[:100], y[:100], 8, 1024, pairs=4)
    assert capped.big_batch == 100
    assert capped.summary()["critical_batch_pairs"] == "4 x (batch 8, batch 100)"


NOISE_TEST = """
def test_run(trained_mlp):
    run = trained_mlp(hidden=16)
    summary = run.summary()
    assert {expect_present}
"""


@pytest.mark.parametrize(("args", "present"), [(("--noise-scale",), True), ((), False)],
                         ids=["on", "off"])
def test_option_measures_every_run_and_the_table_shows_it(pytester: pytest.Pytester,
                                                          args: tuple[str, ...],
                                                          present: bool) -> None:
    check = ("summary['critical_batch'] > 0 and summary['critical_batch_low'] "
             "<= summary['critical_batch'] <= summary['critical_batch_high']"
             if present else "'critical_batch' not in summary")
    pytester.makepyfile(NOISE_TEST.format(expect_present=check))
    result = pytester.runpytest("-p", "no:cacheprovider", "--dataset", "synthetic",
                                "--epochs", "1", "--batch-sizes", "32", "--no-co2",
                                "--device", "cpu", "--batchprof-no-report", *args)
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert ("critical batch" in output) is present
    if present:
        result.stdout.fnmatch_lines(["*critical batch B_simple=* samples (95% * to *)*"])
