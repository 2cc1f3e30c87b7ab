"""Ensembles: runs that differ only in seed and lr, trained as one stacked model, must
give each member the figures of the run trained alone, within a stated tolerance."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine import ensemble as ensemble_module
from pytest_batchprof.engine import training
from pytest_batchprof.engine.ensemble import (
    Ensemble,
    MemberLoop,
    StackedMLP,
    VmappedModel,
    ensemble_obstacle,
    stacked_forward,
)
from pytest_batchprof.engine.training import Recipe, train
from pytest_batchprof.experiment.models import build_mlp


def report_rows(directory) -> list[dict[str, object]]:
    """Every row of the session's JSON report (one per run and seed)."""
    return json.loads((directory / "latest.json").read_text())["rows"]

ACCURACY_TOLERANCE = 0.001
"""Test accuracy of a member and of its run alone: within 0.1 percentage points."""
LOSS_TOLERANCE = 1e-4
"""Losses of a member and of its run alone, after an epoch: within 1e-4, relative."""
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 800})


def members(configs, data, recipe=None) -> list[MemberLoop]:
    return [MemberLoop(config, data, CPU, recipe or Recipe.of_mlp(config)) for config in configs]


def assert_same_run(member: training.Run, alone: training.Run) -> None:
    """The member's figures are the lone run's, within the stated tolerance."""
    assert member.diverged == alone.diverged
    assert len(member.history) == len(alone.history)
    for got, expected in zip(member.history, alone.history, strict=True):
        for name in ("train_loss", "val_loss"):
            assert math.isclose(getattr(got, name), getattr(expected, name),
                                rel_tol=LOSS_TOLERANCE), name
        for name in ("train_accuracy", "val_accuracy"):
            assert abs(getattr(got, name) - getattr(expected, name)) <= ACCURACY_TOLERANCE
    if alone.test_accuracy is None:
        assert member.test_accuracy is None
    else:
        assert abs(member.test_accuracy - alone.test_accuracy) <= ACCURACY_TOLERANCE
        assert math.isclose(member.test_loss, alone.test_loss, rel_tol=LOSS_TOLERANCE)
    if alone.time_to_target is not None:
        assert member.time_to_target.steps == alone.time_to_target.steps
        assert member.time_to_target.samples == alone.time_to_target.samples
    if alone.diverged is None:
        for got, expected in zip(member.model.state_dict().values(),
                                 alone.model.state_dict().values(), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)


def test_members_equal_their_runs_alone(synthetic, run_config):
    """Two seeds x two learning rates, one epoch: every member's losses, accuracies and
    weights are its lone run's (same initial weights, same batches), within tolerance."""
    configs = [run_config(synthetic, seed=seed, lr=lr, epochs=1)
               for seed in (0, 1) for lr in (1e-3, 3e-3)]
    runs = Ensemble(members(configs, synthetic), Recipe.of_mlp(configs[0])).run()
    for config, member in zip(configs, runs, strict=True):
        assert member.config == config
        assert member.ensemble == "one of 4"
        assert_same_run(member, train(config, synthetic, CPU))


def test_members_keep_their_own_optimizer_state(synthetic, run_config):
    """Each member ends with its own weights and Adam state (the checkpoint's size and
    the cache read them), as its run alone does."""
    configs = [run_config(synthetic, seed=seed, epochs=1) for seed in (0, 1)]
    runs = Ensemble(members(configs, synthetic), Recipe.of_mlp(configs[0])).run()
    alone = train(configs[1], synthetic, CPU)
    state, expected = runs[1].optimizer.state_dict(), alone.optimizer.state_dict()
    assert state["state"].keys() == expected["state"].keys()
    for key, value in expected["state"].items():
        torch.testing.assert_close(state["state"][key]["exp_avg"], value["exp_avg"],
                                   rtol=1e-3, atol=1e-5)
        assert float(state["state"][key]["step"]) == float(value["step"])
    parameters = [parameter.data_ptr() for run in runs for parameter in run.model.parameters()]
    assert len(set(parameters)) == len(parameters)  # no member's weights alias another's


def test_members_stop_at_their_target_while_the_others_go_on(synthetic, run_config,
                                                               monkeypatch):
    """With the target checked every 64 samples, the rates reach 80% at different steps:
    each member stops where its run alone stops, and the rest train on to theirs."""
    monkeypatch.setattr(training, "TARGET_CHECK_SAMPLES", 64)
    configs = [run_config(synthetic, seed=0, lr=lr, epochs=3, target_accuracy=0.8)
               for lr in (1e-3, 3e-3, 1e-2)]
    runs = Ensemble(members(configs, synthetic), Recipe.of_mlp(configs[0])).run()
    alone = [train(config, synthetic, CPU) for config in configs]
    steps = {run.time_to_target.steps for run in alone}
    assert len(steps) > 1  # the members stopped at different steps
    for member, lone in zip(runs, alone, strict=True):
        assert_same_run(member, lone)


def test_a_diverging_member_does_not_stop_the_others(synthetic, run_config):
    """SGD at lr 1e4 diverges in its first epoch; the members at sane rates train on and
    equal their runs alone."""
    configs = [run_config(synthetic, seed=0, lr=lr, epochs=2, optimizer="sgd")
               for lr in (0.05, 1e4, 0.1)]
    runs = Ensemble(members(configs, synthetic), Recipe.of_mlp(configs[0])).run()
    assert runs[1].diverged is not None and runs[1].test_accuracy is None
    assert runs[0].diverged is None and runs[2].diverged is None
    assert len(runs[0].history) == len(runs[2].history) == 2
    for config, member in zip(configs, runs, strict=True):
        assert_same_run(member, train(config, synthetic, CPU))


class TwoBranches(nn.Module):
    """Not a plain Sequential MLP: the ensemble runs it through torch.vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(64, 16), nn.Linear(64, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(torch.relu(self.left(x)) * torch.tanh(self.right(x)))


def test_any_model_without_buffers_trains_through_vmap(synthetic, run_config):
    recipe = Recipe(TwoBranches)
    configs = [run_config(synthetic, seed=seed, epochs=1, model="TwoBranches",
                          architecture="two") for seed in (0, 1)]
    loops = members(configs, synthetic, recipe)
    assert ensemble_obstacle(loops, recipe) is None
    assembled = Ensemble(loops, recipe)
    assert isinstance(assembled.forward, VmappedModel)
    runs = assembled.run()
    for config, member in zip(configs, runs, strict=True):
        assert_same_run(member, train(config, synthetic, CPU, recipe=recipe))


def test_plain_mlps_use_batched_matrix_products():
    assert isinstance(stacked_forward(build_mlp(64, (32, 16), 10, "gelu")), StackedMLP)
    assert isinstance(stacked_forward(build_mlp(64, (32,), 10, "linear")), StackedMLP)
    assert isinstance(stacked_forward(TwoBranches()), VmappedModel)
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
    assert isinstance(stacked_forward(no_bias), VmappedModel)


def test_stacked_mlp_equals_vmap(synthetic, run_config):
    """The batched-matmul forward and backward give vmap's outputs and gradients."""
    model = build_mlp(64, (32,), 10, "relu")
    stacked = {name: torch.stack([value.detach(), value.detach() * 0.5]).requires_grad_()
               for name, value in model.named_parameters()}
    x = torch.randn(2, 5, 8, 8)
    fast, generic = StackedMLP(model), VmappedModel(model)
    for value in stacked.values():
        value.grad = torch.zeros_like(value)
    fast(stacked, x).square().sum().backward()
    fast_grads = {name: value.grad.clone() for name, value in stacked.items()}
    for value in stacked.values():
        value.grad = None
    generic(stacked, x).square().sum().backward()
    for name, value in stacked.items():
        torch.testing.assert_close(fast_grads[name], value.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("change", "reason"), [
    ({"model": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8),
                                     nn.Linear(8, 10))}, "buffers"),
    ({"optimizer": lambda parameters: torch.optim.Adam(parameters)}, "custom optimizer"),
])
def test_obstacles_name_the_reason(synthetic, run_config, change, reason):
    recipe = Recipe(change.get("model", lambda: build_mlp(64, (16,), 10)),
                    optimizer=change.get("optimizer"))
    configs = [run_config(synthetic, seed=seed) for seed in (0, 1)]
    assert reason in ensemble_obstacle(members(configs, synthetic, recipe), recipe)


def test_runs_that_differ_in_more_than_seed_and_lr_are_no_ensemble(synthetic, run_config):
    configs = [run_config(synthetic, batch_size=16), run_config(synthetic, batch_size=32)]
    assert "more than seed and learning rate" in ensemble_obstacle(
        members(configs, synthetic), Recipe.of_mlp(configs[0]))


def test_a_model_vmap_cannot_run_falls_back(synthetic, run_config):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.layer(x.flatten(1))
            return out if out.sum().item() > -1e9 else -out  # data-dependent: vmap refuses

    recipe = Recipe(Branchy)
    configs = [run_config(synthetic, seed=seed) for seed in (0, 1)]
    assert "torch.vmap cannot run" in ensemble_obstacle(members(configs, synthetic, recipe),
                                                        recipe)


def test_time_is_split_fairly(synthetic, run_config):
    """Members that train alike get equal shares, and the shares add up to the
    ensemble's time (its evaluations included), not to members x that time."""
    configs = [run_config(synthetic, seed=seed, epochs=2) for seed in (0, 1, 2)]
    started = __import__("time").perf_counter()
    runs = Ensemble(members(configs, synthetic), Recipe.of_mlp(configs[0])).run()
    wall = __import__("time").perf_counter() - started
    assert sum(run.train_seconds for run in runs) <= wall
    shares = [sum(record.train_seconds for record in run.history) for run in runs]
    assert max(shares) - min(shares) <= 0.5 * max(shares)


# ---------------------------------------------------------------- in a session

TEST_FILE = """
import pytest
from pytest_batchprof.experiment.models import mlp

@pytest.mark.dataset("synthetic", size=800)
def test_seeds(trained_model):
    run = trained_model(mlp((32,)), batch_size=16, epochs=1)
    assert len(run.runs) == 3
"""


def run_session(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(TEST_FILE)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--repeats", "3",
                                        "--batchprof-no-co2", "--batchprof-report=reports",
                                        *args)


def test_repeats_train_as_one_ensemble_in_a_session(pytester: pytest.Pytester):
    together = run_session(pytester)
    together.assert_outcomes(passed=1)
    together.stdout.fnmatch_lines(["*ensembles=on*",
                                   "*training 3 runs of 64-32-10 on synthetic(size=800), "
                                   "batch 16, 1 epoch, adam, cpu as one ensemble (seeds 0, 1, 2)*"])
    rows = report_rows(pytester.path / "reports")
    assert [row["ensemble"] for row in rows] == ["one of 3"] * 3
    markdown = (pytester.path / "reports" / "latest.md").read_text()
    assert "trained together as one stacked ensemble (one of 3;" in markdown
    assert "each run's training time is its share" in markdown
    apart = run_session(pytester, "--batchprof-no-ensemble")
    apart.assert_outcomes(passed=1)
    apart.stdout.fnmatch_lines(["*ensembles=off*"])
    assert "as one ensemble" not in apart.stdout.str()
    alone = report_rows(pytester.path / "reports")
    assert [row["ensemble"] for row in alone] == [
        "trained alone: --batchprof-no-ensemble"] * 3
    for member, lone in zip(rows, alone, strict=True):
        assert abs(member["test_accuracy"] - lone["test_accuracy"]) <= ACCURACY_TOLERANCE
        assert math.isclose(member["test_loss"], lone["test_loss"], rel_tol=LOSS_TOLERANCE)


def test_an_ensemble_that_runs_out_of_memory_trains_one_at_a_time(pytester: pytest.Pytester,
                                                                   monkeypatch):
    def out_of_memory(self):
        raise ensemble_module.EnsembleOutOfMemory("the 3 stacked runs ran out of memory "
                                                  "(injected)")

    monkeypatch.setattr(ensemble_module.Ensemble, "run", out_of_memory)
    result = run_session(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*64-32-10's runs that differ only in seed and lr train one "
                                 "at a time: the 3 stacked runs ran out of memory (injected)*"])
    assert [row["ensemble"] for row in report_rows(pytester.path / "reports")] == [
        "trained alone: the 3 stacked runs ran out of memory (injected)"] * 3


def test_settings_that_keep_runs_apart_are_in_the_header(pytester: pytest.Pytester):
    result = run_session(pytester, "--batchprof-memory-budget", "20GB")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ensembles=off (each run's peak is checked against the "
                                 "memory budget alone)*"])


def test_one_status_line_for_the_ensemble_and_every_members_epoch_lines(synthetic,
                                                                         monkeypatch):
    """The members advance together: only the first still training draws the status
    line; every member prints its own epoch lines, named by seed and lr."""
    from pytest_batchprof.runs.build import build_experiment
    from pytest_batchprof.runs.session import Trainer
    from pytest_batchprof.settings import Settings
    from tests.test_progress import FakeConsole

    monkeypatch.setattr(training, "PROGRESS_POLL_SECONDS", 0.0)
    monkeypatch.setattr("pytest_batchprof.runs.progress.SHOW_AFTER_SECONDS", 0.0)
    monkeypatch.setattr("pytest_batchprof.runs.progress.REDRAW_SECONDS", 0.0)
    console = FakeConsole(is_terminal=True, verbose=True)
    settings = Settings(epochs=2, no_co2=True)
    experiments = [build_experiment(settings, synthetic, lambda: build_mlp(64, (8,), 10), 16,
                                    CPU, seed=seed, lr=lr, name="tiny")
                   for seed, lr in ((0, 1e-3), (1, 1e-2))]
    trained = Trainer(CPU, console, None, ()).ensemble(experiments)
    assert not isinstance(trained, str) and len(trained) == 2
    assert console.statuses and all(status.startswith("  seed 0, lr 0.001: ")
                                    for status in console.statuses)
    epoch_lines = [line for line in console.lines if "Epoch" in line]
    assert len(epoch_lines) == 4
    assert {line.split(": Epoch")[0] for line in epoch_lines} == {"  seed 0, lr 0.001",
                                                                   "  seed 1, lr 0.01"}


def test_cached_members_keep_their_ensemble_and_figures(pytester: pytest.Pytester):
    first = run_session(pytester, "--batchprof-cache", "cache")
    first.assert_outcomes(passed=1)
    trained = report_rows(pytester.path / "reports")
    again = run_session(pytester, "--batchprof-cache", "cache")
    again.assert_outcomes(passed=1)
    assert again.stdout.str().count("from the cache") == 3
    assert "as one ensemble" not in again.stdout.str()
    loaded = report_rows(pytester.path / "reports")
    for before, after in zip(trained, loaded, strict=True):
        assert after["ensemble"] == before["ensemble"] == "one of 3"
        for key in ("test_accuracy", "train_seconds", "val_accuracy"):
            assert after[key] == before[key]


def test_a_model_with_buffers_trains_alone_and_the_report_says_why(pytester: pytest.Pytester):
    pytester.makepyfile("""
        import pytest
        from torch import nn

        def normed(data):
            return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, 16),
                                 nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, data.num_classes))

        @pytest.mark.dataset("synthetic", size=400)
        def test_normed(trained_model):
            trained_model(normed, batch_size=32, epochs=1, repeats=2)
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--batchprof-no-co2",
                                          "--batchprof-report=reports")
    result.assert_outcomes(passed=1)
    reason = ("the model has buffers (such as batch-norm running statistics), which the "
              "stacked members cannot keep apart")
    result.stdout.fnmatch_lines([f"*runs that differ only in seed and lr train one at a time: "
                                 f"{reason}*"])
    rows = report_rows(pytester.path / "reports")
    assert [row["ensemble"] for row in rows] == [f"trained alone: {reason}"] * 2
    markdown = (pytester.path / "reports" / "latest.md").read_text()
    assert (f"Runs that differ only in seed and learning rate were trained one at a time: "
            f"{reason}." in markdown)
