"""The training engine and the models, called directly (no pytest session)."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine import training
from pytest_batchprof.engine.training import EpochRecord, evaluate, train
from pytest_batchprof.experiment.models import build_mlp, mlp_name, normalise_hidden


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 800})


def figures(record: EpochRecord) -> tuple[float, ...]:
    """An epoch's results without its timings, which always differ."""
    return (record.train_loss, record.train_accuracy, record.val_loss, record.val_accuracy)


def test_mlp_layers_and_name():
    model = build_mlp(784, (1024,), 10)
    linears = [layer for layer in model if isinstance(layer, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(784, 1024), (1024, 10)]
    assert sum(p.numel() for p in model.parameters()) == 814_090
    assert mlp_name(400, (1024, 1024), 10) == "400-1024-1024-10"
    assert model(torch.zeros(3, 28, 28)).shape == (3, 10)


def test_linear_activation_and_bad_arguments():
    model = build_mlp(784, (1,), 10, activation="linear")
    assert isinstance(model[2], torch.nn.Identity)
    with pytest.raises(ValueError, match="activation='swish'"):
        build_mlp(784, (8,), 10, activation="swish")
    assert normalise_hidden(64) == (64,)
    with pytest.raises(ValueError, match="hidden width"):
        normalise_hidden((64, 0))


def test_same_seed_same_weights_bit_for_bit(synthetic, run_config):
    first = train(run_config(synthetic), synthetic, torch.device("cpu"))
    second = train(run_config(synthetic), synthetic, torch.device("cpu"))
    assert [figures(r) for r in first.history] == [figures(r) for r in second.history]
    assert first.test_accuracy == second.test_accuracy
    for (name, a), (_, b) in zip(first.model.state_dict().items(),
                                 second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_other_seed_other_weights(synthetic, run_config):
    first = train(run_config(synthetic), synthetic, torch.device("cpu"))
    other = train(run_config(synthetic, seed=1), synthetic, torch.device("cpu"))
    assert not torch.equal(first.model[1].weight, other.model[1].weight)


def test_training_leaves_global_rng_alone(synthetic, run_config):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(run_config(synthetic, epochs=1), synthetic, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


class EpochObserver:
    """A :class:`~pytest_batchprof.engine.training.TrainingObserver` keeping the epoch records."""

    def __init__(self) -> None:
        self.epochs: list[EpochRecord] = []

    def on_progress(self, status) -> None:
        pass

    def on_epoch(self, config, record: EpochRecord) -> None:
        self.epochs.append(record)


def test_history_figures_are_consistent(synthetic, run_config):
    observer = EpochObserver()
    run = train(run_config(synthetic, epochs=3), synthetic, torch.device("cpu"), observer)
    assert observer.epochs == run.history
    assert [r.epoch for r in run.history] == [1, 2, 3]
    for record in run.history:
        assert 0 <= record.train_accuracy <= 1 and 0 <= record.val_accuracy <= 1
        assert record.train_loss > 0 and record.val_loss > 0
        assert record.train_seconds > 0 and record.eval_seconds > 0
    assert run.train_seconds == pytest.approx(sum(r.seconds for r in run.history))
    assert run.seconds_per_epoch == pytest.approx(run.train_seconds / 3)
    assert run.history[-1].val_loss < run.history[0].val_loss
    assert run.test_accuracy > 0.8
    loss, accuracy = evaluate(run.model, synthetic.test)
    assert (loss, accuracy) == (run.test_loss, run.test_accuracy)
    assert not run.model.training


def test_evaluate_does_not_depend_on_eval_batch_size(synthetic, run_config):
    run = train(run_config(synthetic, epochs=1), synthetic, torch.device("cpu"))
    big = evaluate(run.model, synthetic.test, batch_size=4096)
    small = evaluate(run.model, synthetic.test, batch_size=7)
    assert big[1] == small[1]
    assert big[0] == pytest.approx(small[0], rel=1e-5)


def test_epoch_line_matches_the_posts():
    record = EpochRecord(1, 0.0184, 0.9114, 0.0131, 0.9352, 1.0, 0.1)
    assert record.line() == (
        "Epoch 01, Train acc=0.911, Val acc=0.935, Train loss=0.018, Val loss=0.013"
    )


def test_divergence_is_reported_not_raised(synthetic, run_config):
    run = train(run_config(synthetic, optimizer="sgd", lr=1e12, epochs=3), synthetic,
                torch.device("cpu"))
    assert run.diverged is not None
    assert "training loss became nan in epoch" in run.diverged or "became inf" in run.diverged
    assert run.test_accuracy is None
    assert len(run.history) < 3
    assert "diverged" in repr(run)


def test_summary_is_plain_data(synthetic, run_config):
    run = train(run_config(synthetic, epochs=1), synthetic, torch.device("cpu"))
    summary = run.summary()
    text = json.dumps(summary)
    assert json.loads(text)["model"] == "64-32-10" == run.name
    assert summary["batch_size"] == 16
    assert len(summary["history"]) == 1
    assert math.isclose(summary["test_accuracy"], run.test_accuracy)


# ---------------------------------------------------------------- learning curve and observer


class ProgressObserver(EpochObserver):
    """Keeps every progress status as well."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list = []

    def on_progress(self, status) -> None:
        self.statuses.append(status)


def test_curve_points_change_nothing_the_run_learns(synthetic, run_config, monkeypatch):
    monkeypatch.setattr(training, "CURVE_EVERY_SAMPLES", math.inf)
    plain = train(run_config(synthetic, epochs=2), synthetic, torch.device("cpu"))
    monkeypatch.setattr(training, "CURVE_EVERY_SAMPLES", 100)
    curved = train(run_config(synthetic, epochs=2), synthetic, torch.device("cpu"))
    assert plain.curve == [] and len(curved.curve) == 14  # 720 samples an epoch
    assert [figures(r) for r in curved.history] == [figures(r) for r in plain.history]
    assert (curved.test_loss, curved.test_accuracy) == (plain.test_loss, plain.test_accuracy)
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, curved.model.state_dict()[name])


def test_curve_points_sit_where_the_samples_cross_each_spacing(synthetic, run_config,
                                                                monkeypatch):
    count = len(synthetic.train)
    assert count == 720
    monkeypatch.setattr(training, "CURVE_EVERY_SAMPLES", 360)  # mid-epoch and at its end
    monkeypatch.setattr(training, "CURVE_PROBE_SAMPLES", len(synthetic.val))  # all of it
    run = train(run_config(synthetic, epochs=3, batch_size=16), synthetic, torch.device("cpu"))
    assert [point.samples for point in run.curve] == [368, 720, 1088, 1440, 1808, 2160]
    assert [point.epoch for point in run.curve] == [samples / count for samples in (
        368, 720, 1088, 1440, 1808, 2160)]
    for point, record in zip(run.curve[1::2], run.history, strict=True):  # same weights, split
        assert (point.val_loss, point.val_accuracy) == (record.val_loss, record.val_accuracy)


def test_short_epochs_record_no_curve_between_them(synthetic, run_config):
    assert len(synthetic.train) < training.CURVE_EVERY_SAMPLES
    run = train(run_config(synthetic, epochs=2), synthetic, torch.device("cpu"))
    assert run.curve == [] and run.curve_seconds == 0
    assert run.summary()["curve"] == []


def test_measuring_the_curve_is_kept_out_of_training_times(synthetic, run_config,
                                                            monkeypatch):
    monkeypatch.setattr(training, "CURVE_EVERY_SAMPLES", 240)
    monkeypatch.setattr(training, "CURVE_PROBE_SAMPLES", 7)
    real_score = training.score

    def slow_probe(model, split, *args, **kwargs):
        if len(split) == 7:  # a curve point: make it cost 0.2 s
            time.sleep(0.2)
        return real_score(model, split, *args, **kwargs)

    monkeypatch.setattr(training, "score", slow_probe)
    started = time.perf_counter()
    run = train(run_config(synthetic, epochs=2, target_accuracy=0.9999), synthetic,
                torch.device("cpu"))
    wall = time.perf_counter() - started
    assert len(run.curve) == 6
    assert run.curve_seconds >= 6 * 0.2
    assert run.train_seconds == pytest.approx(sum(r.seconds for r in run.history))
    # the wall time holds both; counted in a training time, the 1.2 s would be there twice
    assert run.train_seconds + run.curve_seconds <= wall
    summary = json.loads(json.dumps(run.summary()))
    assert [point["samples"] for point in summary["curve"]] == [240, 480, 720, 960, 1200, 1440]


def test_observer_hears_progress_from_host_counters_without_syncing(synthetic, run_config,
                                                                     monkeypatch):
    syncs = []
    monkeypatch.setattr(training, "synchronize", lambda device: syncs.append(device))
    config = run_config(synthetic, epochs=2, batch_size=100)
    train(config, synthetic, torch.device("cpu"))
    without_observer = len(syncs)
    syncs.clear()
    monkeypatch.setattr(training, "PROGRESS_POLL_SECONDS", 0.0)  # every step
    observer = ProgressObserver()
    run = train(config, synthetic, torch.device("cpu"), observer)
    assert len(syncs) == without_observer  # progress costs the loop no device sync
    assert observer.epochs == run.history
    steps = math.ceil(len(synthetic.train) / 100)
    assert [(s.epoch, s.step) for s in observer.statuses] == [
        (epoch, step) for epoch in (1, 2) for step in range(1, steps + 1)]
    assert all(s.steps_per_epoch == steps and s.epochs == 2 for s in observer.statuses)
    assert all(s.total_samples == 2 * len(synthetic.train) for s in observer.statuses)
    done = [s.samples_done for s in observer.statuses]
    assert done == sorted(done) and done[-1] == 2 * len(synthetic.train)
    assert all(s.run_seconds > 0 for s in observer.statuses)
    assert not any(s.stops_early for s in observer.statuses)


def top_two_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A metric of the caller's: the target is among the two highest scores."""
    return (outputs.topk(2, dim=1).indices == targets[:, None]).any(dim=1).sum()


def test_the_loop_counts_accuracy_with_the_metric_it_is_given(synthetic, run_config) -> None:
    """Recipe.metric replaces the arg-max accuracy everywhere: the running training
    accuracy, validation, test; the model and its training do not change."""
    config = run_config(synthetic, epochs=1)
    plain = train(config, synthetic, torch.device("cpu"))
    recipe = training.Recipe(training.Recipe.of_mlp(config).build_model, metric=top_two_correct)
    top_two = train(config, synthetic, torch.device("cpu"), recipe=recipe)
    assert top_two.history[0].train_loss == plain.history[0].train_loss  # same training
    assert top_two.test_accuracy >= plain.test_accuracy
    assert top_two.test_accuracy == evaluate(top_two.model, synthetic.test,
                                             metric=top_two_correct)[1]
    assert top_two.history[0].train_accuracy > plain.history[0].train_accuracy


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30], ids=["batch-by-batch", "whole-epoch"])
def test_chunked_gathers_train_exactly_the_same_batches(synthetic, run_config, monkeypatch,
                                                         chunk_bytes: int) -> None:
    """How many samples are gathered at once changes nothing but speed: the batches, and so
    the weights and every figure, are the same bit for bit."""
    config = run_config(synthetic, epochs=2, batch_size=24)  # 24 does not divide the split
    reference = train(config, synthetic, torch.device("cpu"))
    monkeypatch.setattr(training, "GATHER_CHUNK_BYTES", chunk_bytes)
    chunked = train(config, synthetic, torch.device("cpu"))
    assert chunked.test_accuracy == reference.test_accuracy
    assert [r.val_loss for r in chunked.history] == [r.val_loss for r in reference.history]
    assert [r.train_accuracy for r in chunked.history] == [
        r.train_accuracy for r in reference.history]
    for mine, theirs in zip(chunked.model.parameters(), reference.model.parameters(),
                            strict=True):
        assert torch.equal(mine, theirs)


def test_drop_last_trains_each_epoch_on_its_whole_batches(synthetic, run_config) -> None:
    """With ``drop_last`` an epoch's last partial batch is dropped: fewer steps and samples
    per epoch, the running figures over the samples trained on."""
    available, batch = len(synthetic.train), 50
    assert available % batch  # a partial batch to drop
    config = run_config(synthetic, epochs=2, batch_size=batch, drop_last=True)
    assert training.epoch_samples(config, available) == available - available % batch
    assert training.last_batch(config, available) == 0
    assert training.last_batch(run_config(synthetic, batch_size=batch), available) == (
        available % batch)
    run = train(config, synthetic, torch.device("cpu"))
    steps = {int(state["step"]) for state in run.optimizer.state_dict()["state"].values()}
    assert steps == {2 * (available // batch)}
    assert run.samples_per_epoch == available - available % batch
    assert run.summary()["drop_last"] is True
    kept = train(run_config(synthetic, epochs=2, batch_size=batch), synthetic,
                 torch.device("cpu"))
    assert kept.samples_per_epoch == available
    assert kept.history[0].train_loss != run.history[0].train_loss


DROPOUT_TEST = """
import os

import torch
from torch import nn


class Dropped(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def test_run(trained_model):
    torch.rand(int(os.environ["DRAWS"]))  # the process's random state, moved on or not
    run = trained_model(Dropped, batch_size=32)
    print("FIGURES", [record.train_loss for record in run.history], run.test_accuracy)
"""


def test_dropout_draws_from_the_runs_seed_not_from_the_process(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model with dropout gives the same figures whatever the global random state was
    before it trained (what other tests drew, or the user's code), bit for bit on the CPU;
    and the run leaves that state as it found it."""
    pytester.makepyfile(DROPOUT_TEST)
    figures = []
    for draws in ("0", "7"):
        monkeypatch.setenv("DRAWS", draws)
        result = pytester.runpytest("--dataset", "synthetic", "--epochs", "2",
                                    "--batchprof-no-report", "--batchprof-no-co2", "-s",
                                    "-p", "no:randomly")
        result.assert_outcomes(passed=1)
        figures += [line for line in result.outlines if line.startswith("FIGURES")]
    assert len(figures) == 2 and figures[0] == figures[1]
    state = torch.random.get_rng_state()
    with training.run_randomness(3, torch.device("cpu")):
        torch.rand(5)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_warm_up_steps_only_the_optimizers_it_is_given(synthetic, monkeypatch) -> None:
    """The engine's warm-up steps Adam and SGD unless told otherwise; the session's trainer
    asks for none, since every run's own optimizer stepped when its experiment was built
    (check_recipe), before the trainer's warm-up."""
    from pytest_batchprof.runs.build import build_experiment
    from pytest_batchprof.runs.session import Trainer
    from pytest_batchprof.settings import Settings

    made: list[str] = []
    make = training.make_optimizer

    def recorded(name, parameters, lr):
        made.append(name)
        return make(name, parameters, lr)

    monkeypatch.setattr(training, "make_optimizer", recorded)
    cpu = torch.device("cpu")
    training.warm_up(cpu)
    assert made == ["adam", "sgd"]
    made.clear()
    training.warm_up(cpu, optimizers=())
    assert made == []
    experiment = build_experiment(Settings(epochs=1, no_co2=True), synthetic,
                                  lambda: build_mlp(64, (8,), 10), 16, cpu, optimizer="sgd",
                                  name="tiny")
    assert made == ["sgd"]  # the experiment's check stepped its own optimizer
    made.clear()
    trainer = Trainer(cpu, None, None)
    trainer.warm_up()
    assert made == [] and trainer.warmed_up
    run, _, _ = trainer(experiment)
    assert made == ["sgd"] and run.test_accuracy is not None  # the run's own optimizer
