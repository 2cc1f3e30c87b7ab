"""``scheduler=``: the user's learning-rate schedule, stepped after every optimizer step.

At the engine: the rate of each step is the schedule's own sequence (OneCycleLR, StepLR,
CosineAnnealingLR, read off the optimizer as it steps), a warm-up multiplies it over its
steps, and a factory that returns no ``LRScheduler`` is refused. In real sessions
(``pytester``): the same through ``trained_model`` with ``--batchprof-lr-warmup-epochs``,
the row and the baseline carrying the schedule's name, a bad factory failing its test in
one line before training, and a data-parallel run stepping it in each process. And the
cache key: an edit of the schedule's source file changes it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from session_output import failure_section, summary_rows

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine.training import Recipe, train
from pytest_batchprof.experiment.models import build_mlp
from pytest_batchprof.reports.storage import load_report
from pytest_batchprof.runs.build import callables_code

LR = 0.05
BATCH = 32


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps the rate of its first parameter group at every step."""

    def __init__(self, parameters, lr: float = LR) -> None:
        super().__init__(parameters, lr=lr)
        self.rates: list[float] = []

    def step(self, closure=None):
        self.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


def one_cycle(optimizer, steps_per_epoch, epochs):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1,
                                               steps_per_epoch=steps_per_epoch, epochs=epochs)


def halve_every_epoch(optimizer, steps_per_epoch, epochs):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=steps_per_epoch, gamma=0.5)


def cosine(optimizer, steps_per_epoch, epochs):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * epochs)


SCHEDULES = {"one_cycle": one_cycle, "step": halve_every_epoch, "cosine": cosine}


def schedule_rates(make: Callable, lr: float, steps_per_epoch: int, epochs: int) -> list[float]:
    """The schedule's own rates, step by step, on an optimizer of its own."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    schedule = make(optimizer, steps_per_epoch, epochs)
    rates = []
    for _ in range(steps_per_epoch * epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 400})


def trained_rates(data, run_config, make: Callable, **changes: object) -> tuple[list[float], int]:
    """The rates a run with schedule ``make`` stepped at, and its steps per epoch."""
    config = run_config(data, hidden=(16,), batch_size=BATCH, lr=LR, optimizer="sgd",
                        scheduler=make.__name__, **changes)
    recipe = Recipe(lambda: build_mlp(64, (16,), 10), optimizer=RecordingSGD, scheduler=make)
    run = train(config, data, torch.device("cpu"), recipe=recipe)
    assert run.diverged is None
    return run.optimizer.rates, math.ceil(run.samples_per_epoch / BATCH)


@pytest.mark.parametrize("name", SCHEDULES)
def test_each_steps_rate_is_the_schedules_own(synthetic, run_config, name: str) -> None:
    make = SCHEDULES[name]
    rates, steps_per_epoch = trained_rates(synthetic, run_config, make)
    assert len(rates) == 2 * steps_per_epoch  # two epochs, every step
    assert rates == schedule_rates(make, LR, steps_per_epoch, 2)
    assert len(set(rates)) > 1  # it did move


@pytest.mark.parametrize("name", ["one_cycle", "step"])
def test_a_warm_up_multiplies_the_schedules_rate_over_its_steps(synthetic, run_config,
                                                                 name: str) -> None:
    """Over one warm-up epoch the rate is the schedule's times the ramp's factor, from
    ``lr_warmup_start / lr`` at the first step to 1; the schedule's own after it."""
    make = SCHEDULES[name]
    rates, steps_per_epoch = trained_rates(synthetic, run_config, make, lr_warmup_epochs=1.0,
                                           lr_warmup_start=LR / 4)
    plain = schedule_rates(make, LR, steps_per_epoch, 2)
    warmup = steps_per_epoch
    factors = [0.25 + 0.75 * (step - 1) / warmup if step <= warmup else 1.0
               for step in range(1, len(plain) + 1)]
    assert rates == pytest.approx([rate * factor for rate, factor in zip(plain, factors,
                                                                          strict=True)],
                                  rel=1e-12)
    assert rates[0] == pytest.approx(plain[0] / 4)
    assert rates[warmup:] == pytest.approx(plain[warmup:], rel=1e-12)


def test_a_schedule_that_is_no_lr_scheduler_is_refused(synthetic, run_config) -> None:
    def not_a_schedule(optimizer, steps_per_epoch, epochs):
        return {"lr": 0.1}

    recipe = Recipe(lambda: build_mlp(64, (16,), 10), scheduler=not_a_schedule)
    with pytest.raises(TypeError, match=r"scheduler= returned a dict; it must return a "
                                         r"torch\.optim\.lr_scheduler\.LRScheduler"):
        train(run_config(synthetic, hidden=(16,)), synthetic, torch.device("cpu"), recipe=recipe)


# ---------------------------------------------------------------- sessions

BASE = ("-p", "no:cacheprovider", "-p", "no:randomly", "--no-co2", "--device", "cpu",
        "--epochs", "2")

SESSION = """
import json, math, pathlib
import pytest
import torch
from torch import nn


class Recording(torch.optim.SGD):
    def __init__(self, parameters):
        super().__init__(parameters, lr=0.05)
        self.rates = []

    def step(self, closure=None):
        self.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


def one_cycle(optimizer, steps_per_epoch, epochs):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1,
                                               steps_per_epoch=steps_per_epoch, epochs=epochs)


def halve_every_epoch(optimizer, steps_per_epoch, epochs):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=steps_per_epoch, gamma=0.5)


def not_a_schedule(optimizer, steps_per_epoch, epochs):
    return {"lr": 0.1}


def own_rates(make, lr, steps_per_epoch, epochs):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    schedule = make(optimizer, steps_per_epoch, epochs)
    rates = []
    for _ in range(steps_per_epoch * epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.dataset("synthetic", size=600)
def test_one_cycle(trained_model):
    run = trained_model(Net, batch_size=32, optimizer=Recording, scheduler=one_cycle)
    steps_per_epoch = math.ceil(run.samples_per_epoch / 32)
    pathlib.Path("one_cycle.json").write_text(json.dumps({
        "rates": run.optimizer.rates, "lr": run.config.lr,
        "own": own_rates(one_cycle, run.config.lr, steps_per_epoch, 2),
        "scheduler": run.config.scheduler}))


@pytest.mark.dataset("synthetic", size=600)
@pytest.mark.parametrize("processes", [1, 2])
def test_parallel(trained_model, processes):
    run = trained_model(Net, batch_size=32, optimizer="adam", lr=0.01,
                        scheduler=halve_every_epoch, data_parallel=processes)
    steps = {int(state["step"]) for state in run.optimizer.state_dict()["state"].values()}
    pathlib.Path(f"parallel{processes}.json").write_text(json.dumps({
        "last_rate": run.optimizer.param_groups[0]["lr"], "steps": sorted(steps),
        "train_loss": [record.train_loss for record in run.history]}))


@pytest.mark.dataset("synthetic", size=600)
def test_not_a_schedule(trained_model):
    trained_model(Net, batch_size=32, scheduler=not_a_schedule)
"""


def test_a_session_steps_the_schedule_and_its_row_and_baseline_name_it(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lr=SESSION)
    result = pytester.runpytest(*BASE, "-k", "one_cycle", "--batchprof-save", "ci",
                                "--batchprof-report", "report")
    result.assert_outcomes(passed=1)
    one = json.loads((pytester.path / "one_cycle.json").read_text())
    assert one["rates"] == one["own"] and len(one["rates"]) == 2 * 18  # ceil(550 / 32) x 2
    assert one["scheduler"] == "one_cycle"
    result.stdout.fnmatch_lines(["batchprof: training Net * on synthetic(size=600), batch 32, "
                                 "2 epochs, Recording lr=*, seed 0, cpu, scheduler one_cycle"])
    rows = json.loads((pytester.path / "report" / "latest.json").read_text())["rows"]
    assert [row["scheduler"] for row in rows] == ["one_cycle"]
    baseline = load_report(pytester.path / "report" / "baselines" / "ci.json")
    assert [row["scheduler"] for row in baseline["rows"]] == ["one_cycle"]
    assert [row["model"] for row in summary_rows(result)] == [rows[0]["model"]]


def test_the_warm_up_option_composes_with_the_schedule(pytester: pytest.Pytester) -> None:
    """Batch 32 over a base batch of 16: the scaled lr is twice the option's, and the
    warm-up starts the schedule's rate at half."""
    pytester.makepyfile(test_lr=SESSION)
    result = pytester.runpytest(*BASE, "-k", "one_cycle", "--batchprof-no-report",
                                "--batchprof-lr-warmup-epochs", "1",
                                "--batchprof-lr-scaling", "linear",
                                "--batchprof-lr-base-batch", "16")
    result.assert_outcomes(passed=1)
    one = json.loads((pytester.path / "one_cycle.json").read_text())
    steps = len(one["own"]) // 2  # one epoch of warm-up
    factors = [0.5 + 0.5 * step / steps if step < steps else 1.0 for step in range(2 * steps)]
    assert one["rates"] == pytest.approx(
        [rate * factor for rate, factor in zip(one["own"], factors, strict=True)], rel=1e-12)


def test_a_data_parallel_run_steps_the_schedule_and_a_bad_one_fails_in_one_line(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lr=SESSION)
    result = pytester.runpytest(*BASE, "-k", "parallel or not_a_schedule",
                                "--batchprof-no-report")
    result.assert_outcomes(passed=2, failed=1)
    (line,) = failure_section(result, "test_not_a_schedule")
    assert line.startswith("model Net (")
    assert line.endswith("scheduler=not_a_schedule returned a dict; it must return a "
                         "torch.optim.lr_scheduler.LRScheduler of the optimizer it is given")
    assert len([line for line in result.outlines  # the bad one trained nothing
                if line.startswith("batchprof: training")]) == 2
    one, two = (json.loads((pytester.path / f"parallel{n}.json").read_text()) for n in (1, 2))
    assert one["steps"] == two["steps"] == [2 * 18]
    assert one["last_rate"] == two["last_rate"] == 0.01 / 4  # halved after each epoch
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)


# ---------------------------------------------------------------- the cache key

SCHEDULE_MODULE = """
import torch


def schedule(optimizer, steps_per_epoch, epochs):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=steps_per_epoch, gamma=0.5)
"""


def test_the_cache_key_follows_the_schedules_code(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule's source file is part of the run's code; a lambda is not cached."""
    module = tmp_path / "myschedules.py"
    monkeypatch.syspath_prepend(str(tmp_path))

    def fingerprint() -> str | None:
        sys.modules.pop("myschedules", None)
        import myschedules

        code = callables_code(None, "adam", scheduler=myschedules.schedule)
        assert code.reason is None
        return code.fingerprint()

    module.write_text(textwrap.dedent(SCHEDULE_MODULE))
    original = fingerprint()
    assert original is not None and original != callables_code(None, "adam").fingerprint()
    module.write_text(textwrap.dedent(SCHEDULE_MODULE).replace("gamma=0.5", "gamma=0.25"))
    status = module.stat()
    os.utime(module, ns=(status.st_atime_ns, status.st_mtime_ns + 2_000_000_000))
    assert fingerprint() not in (original, None)
    sys.modules.pop("myschedules", None)
    lambda_code = callables_code(None, "adam", scheduler=lambda optimizer, steps, epochs: None)
    assert lambda_code.reason is not None and lambda_code.reason.startswith("its scheduler ")
