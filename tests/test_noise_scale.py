"""The gradient noise scale estimator, on a problem whose true noise scale is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine.steps import NoiseScaleEstimate
from pytest_batchprof.engine.training import Recipe, train
from pytest_batchprof.measuring import noise_scale
from pytest_batchprof.runs import session
from pytest_batchprof.runs.build import Experiment

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


# ---------------------------------------------------------------- the loop step


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 800})


def test_the_loop_step_estimates_at_the_trained_weights_with_the_runs_loss_and_seed(
        synthetic, run_config) -> None:
    config = run_config(synthetic, epochs=1, seed=3)
    run = train(config, synthetic, torch.device("cpu"), extra_steps=(NoiseScaleEstimate,))
    assert run.noise_scale is not None and run.noise_scale.b_simple is not None
    afterwards = noise_scale.estimate(run.model, F.cross_entropy, synthetic.train.x,
                                      synthetic.train.y, seed=3)
    assert run.noise_scale == afterwards  # same weights, same draws: the same figures
    assert train(config, synthetic, torch.device("cpu")).noise_scale is None  # not asked


def test_the_loop_step_leaves_a_diverged_run_alone(synthetic, run_config) -> None:
    run = train(run_config(synthetic, lr=1e12, optimizer="sgd", epochs=1), synthetic,
                torch.device("cpu"), extra_steps=(NoiseScaleEstimate,))
    assert run.diverged is not None and run.noise_scale is None


def test_the_estimate_is_outside_the_meters_of_training(synthetic, run_config,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its gradients are not the run's: the peak memory and CO2 of training must not see
    them, nor its clock."""
    events: list[str] = []

    class Meter:
        result = None

        def __init__(self, device) -> None:
            pass

        def __enter__(self):
            events.append("meter on")
            return self

        def __exit__(self, *exc_info) -> None:
            events.append("meter off")

        def reached(self) -> int:
            return 0

    real_estimate = noise_scale.estimate

    def estimate(*args, **kwargs):
        events.append("estimate")
        return real_estimate(*args, **kwargs)

    monkeypatch.setattr(session, "PeakMemoryMeter", Meter)
    monkeypatch.setattr(noise_scale, "estimate", estimate)
    config = run_config(synthetic, epochs=1)
    trainer = session.Trainer(torch.device("cpu"), None, None, (NoiseScaleEstimate,))
    experiment = Experiment(config, Recipe.of_mlp(config), synthetic)
    run, _, _ = trainer(experiment)
    assert events == ["meter on", "meter off", "estimate"]
    assert run.noise_scale is not None


CACHED_NOISE_TEST = """
import json, pathlib

def test_run(trained_mlp):
    run = trained_mlp(hidden=16)
    pathlib.Path("estimate.json").write_text(json.dumps(
        [run.noise_scale.b_simple, run.noise_scale.low, run.noise_scale.high]))
"""


def test_a_cache_hit_is_estimated_at_its_trained_weights_as_when_it_trained(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CACHED_NOISE_TEST)
    args = ("-p", "no:cacheprovider", "--dataset", "synthetic", "--epochs", "1",
            "--batch-sizes", "32", "--no-co2", "--device", "cpu", "--batchprof-no-report",
            "--noise-scale", f"--batchprof-cache={pytester.path / 'runs'}")
    trained = pytester.runpytest(*args)
    trained.assert_outcomes(passed=1)
    fresh = (pytester.path / "estimate.json").read_text()
    loaded = pytester.runpytest(*args)
    loaded.assert_outcomes(passed=1)
    loaded.stdout.fnmatch_lines(["*loaded * from the cache*",
                                 "*critical batch B_simple=* samples (95% * to *)*"])
    assert (pytester.path / "estimate.json").read_text() == fresh
