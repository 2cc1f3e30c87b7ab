"""Measurements of trained models: parameters, FLOPs/MACs, sizes, latency, memory and CO2eq.

Closed formulas for an MLP with layer widths ``w0-w1-...-wn`` (one sample):

* params = sum(w_i * w_i+1 + w_i+1)
* MACs (fvcore) = sum(w_i * w_i+1); forward FLOPs (FlopCounterMode) = 2 x MACs
* backward FLOPs = 2 * w_i * w_i+1 for every Linear's weight gradient, plus the
  same for every Linear's input gradient except the first (the input needs none)
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import warnings
from typing import ClassVar

import codecarbon
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pytest_batchprof.experiment.models import build_mlp
from pytest_batchprof.measuring import metrics
from pytest_batchprof.measuring.carbon import Carbon, CarbonMeter
from pytest_batchprof.measuring.metrics import (
    LATENCY_MIN_REPEATS,
    PeakMemory,
    PeakMemoryMeter,
    count_flops,
    count_parameters,
    inference_carbon,
    inference_inputs,
    measure,
    measure_latency,
    model_sizes,
)

with warnings.catch_warnings():
    # Imported here, quietly, so that in-process pytester sessions find them loaded
    # instead of importing them afresh (and noisily) each time.
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis, parameter_count

    metrics.benchmark_timer()

HYPOTHESIS = settings(max_examples=25, deadline=None, database=None)
MB = 2**20
SIZE_OVERHEAD = 10_000
"""Bytes of ``torch.save`` bookkeeping (zip headers, pickled keys) besides raw tensor data."""

SUMMARY_KEYS = {
    "params", "trainable_params", "flops", "train_flops", "macs", "macs_by_layer",
    "flops_notes", "state_dict_bytes", "checkpoint_bytes", "latency_batch_size",
    "latency_median_s", "latency_iqr_s", "latency_min_s", "latency_repeats",
    "latency_single_batch_size", "latency_single_median_s", "train_samples_per_second",
    "peak_memory_bytes", "peak_memory_method", "train_energy_kwh", "train_co2eq_kg",
    "train_co2_note", "inference_per_1000_co2eq_kg", "inference_per_1000_co2_note",
}


def pairs(widths: tuple[int, ...]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(widths))


def expected_params(widths: tuple[int, ...]) -> int:
    return sum(n_in * n_out + n_out for n_in, n_out in pairs(widths))


def expected_macs(widths: tuple[int, ...]) -> int:
    return sum(n_in * n_out for n_in, n_out in pairs(widths))


def expected_backward_flops(widths: tuple[int, ...]) -> int:
    layers = pairs(widths)
    weight_grads = sum(2 * n_in * n_out for n_in, n_out in layers)
    input_grads = sum(2 * n_in * n_out for n_in, n_out in layers[1:])
    return weight_grads + input_grads


def session(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session on synthetic 8x8 data (64 inputs, 10 classes), one epoch of
    600 samples; hypothesis's plugin is off because it re-imports hypothesis in every
    inner session."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider",
                              "--dataset", "synthetic", "--epochs", "1",
                              "--train-subset", "600", *args)


def trained_steps(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                  steps: int = 1) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(inputs).float().sum().backward()
        optimizer.step()


# ---------------------------------------------------------------- params and FLOPs


@st.composite
def mlp_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Layer widths, and the shape of a one-sample input (a square image or flat)."""
    if draw(st.booleans()):
        side = draw(st.integers(1, 8))
        input_size, example = side * side, (1, side, side)
    else:
        input_size = draw(st.integers(1, 64))
        example = (1, input_size)
    hidden = draw(st.lists(st.integers(1, 64), max_size=3))
    classes = draw(st.integers(2, 12))
    return (input_size, *hidden, classes), example


@HYPOTHESIS
@given(mlp_shapes())
def test_params_flops_and_macs_match_the_closed_formulas(shape) -> None:
    widths, example = shape
    model = build_mlp(widths[0], widths[1:-1], widths[-1])

    params, trainable = count_parameters(model)
    assert params == trainable == expected_params(widths)
    assert parameter_count(model)[""] == params

    count = count_flops(model, torch.zeros(example))
    macs = expected_macs(widths)
    assert count.notes == ()
    assert count.macs == macs
    assert count.forward_flops == 2 * macs
    assert count.train_flops == 2 * macs + expected_backward_flops(widths)
    linears = {name: layer for name, layer in model.named_children()
               if isinstance(layer, nn.Linear)}
    assert count.macs_by_layer == {name: layer.in_features * layer.out_features
                                   for name, layer in linears.items()}
    assert sum(count.macs_by_layer.values()) == count.macs
    assert model.training  # count_flops restores the mode it found


@pytest.mark.parametrize("widths", [(64, 10), (784, 1024, 10), (9, 4, 7, 2), (5, 3, 3, 3, 4)])
def test_backward_formula_matches_a_real_backward_pass(widths) -> None:
    """The formula the other tests assert, checked against FlopCounterMode on loss.backward()."""
    model = build_mlp(widths[0], widths[1:-1], widths[-1])
    example = torch.zeros(1, widths[0])
    with FlopCounterMode(display=False) as counter:
        output = model(example)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        output.sum().backward()
    assert forward == 2 * expected_macs(widths)
    assert counter.get_total_flops() == expected_backward_flops(widths)
    assert count_flops(model, example).train_flops == forward + counter.get_total_flops()


@pytest.mark.parametrize(
    ("input_size", "hidden", "example", "params", "flops", "macs"),
    [
        (784, (1024,), (1, 28, 28), 814_090, 1_626_112, 813_056),
        (400, (1024, 1024), (1, 20, 20), 1_470_474, 2_936_832, 1_468_416),
    ],
    ids=["784-1024-10", "400-1024-1024-10"],
)
def test_the_posts_figures(input_size, hidden, example, params, flops, macs) -> None:
    model = build_mlp(input_size, hidden, 10)
    assert count_parameters(model) == (params, params)
    count = count_flops(model, torch.zeros(example))
    assert (count.forward_flops, count.macs) == (flops, macs)
    assert count.notes == ()


def test_freezing_a_layer_lowers_trainable_params_only() -> None:
    model = build_mlp(64, (32,), 10)
    total = expected_params((64, 32, 10))
    model[1].requires_grad_(False)
    assert count_parameters(model) == (total, total - (64 * 32 + 32))
    assert parameter_count(model)[""] == total


def test_shared_parameters_are_counted_once() -> None:
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    assert count_parameters(model) == (72, 72) == (parameter_count(model)[""],) * 2


def test_flops_are_counted_for_one_sample_only() -> None:
    with pytest.raises(ValueError, match="one sample; got a batch of 2"):
        count_flops(build_mlp(4, (), 2), torch.zeros(2, 4))


# ---------------------------------------------------------------- models the counters cannot handle


class StrayGradTensor(nn.Module):
    """A scale that requires grad but is no Parameter: fvcore's jit trace refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, 10)
        self.scale = torch.ones(10, requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(x)) * self.scale


class DictOutput(nn.Module):
    """Returns a dict, as many model zoos do: fvcore traces it, FlopCounterMode's pass fails."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.linear(self.flatten(x))}


def measured(model: nn.Module, train: bool):
    """``measure()`` as the session calls it, after an optional Adam step."""
    images = torch.randn(40, 8, 8)
    optimizer = torch.optim.Adam(model.parameters())
    if train:
        trained_steps(model, optimizer, images[:4])
    return measure(model, optimizer, images, 16, PeakMemory(123, "given"), None, None)


def test_fvcore_really_cannot_trace_the_stray_grad_model() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(StrayGradTensor(), torch.zeros(1, 8, 8))
        with pytest.raises(RuntimeError, match="Cannot insert a Tensor that requires grad"):
            analysis.total()


def test_untraceable_model_is_still_measured() -> None:
    result = measured(StrayGradTensor(), train=True)
    assert result.params == result.trainable_params == 64 * 10 + 10
    flops = result.flops
    assert flops.macs is None
    assert flops.macs_by_layer == {}
    assert len(flops.notes) == 1
    assert flops.notes[0].startswith("fvcore could not trace the model: RuntimeError: ")
    assert "\n" not in flops.notes[0]
    assert flops.forward_flops == 2 * 64 * 10  # the other counter is unaffected
    assert 650 * 4 <= result.state_dict_bytes < 650 * 4 + SIZE_OVERHEAD
    assert result.checkpoint_bytes >= 3 * 650 * 4
    assert result.latency.median > 0 and result.latency.batch_size == 16
    assert result.latency_single.median > 0 and result.latency_single.batch_size == 1
    assert result.peak_memory == PeakMemory(123, "given")
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    assert summary["macs"] is None
    assert summary["flops_notes"] == list(flops.notes)


def test_dict_output_model_is_measured_without_training_flops() -> None:
    result = measured(DictOutput(), train=False)
    flops = result.flops
    assert flops.train_flops is None
    assert len(flops.notes) == 1
    assert flops.notes[0].startswith("FlopCounterMode failed")
    assert "AttributeError: 'dict' object has no attribute 'float'" in flops.notes[0]
    assert flops.macs == 64 * 10  # fvcore still counts
    assert result.params == 650 and result.latency.median > 0
    assert result.summary()["train_flops"] is None


class InputGradient(nn.Module):
    """Returns the gradient of an energy with respect to its input: it needs autograd in
    its forward, so it fails in FlopCounterMode's no-grad forward pass (and fvcore's trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.energy = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.energy(x).sum(), x, create_graph=True)
        return grad


def test_model_failing_under_flop_counter_mode_gets_a_note() -> None:
    model = InputGradient()
    assert model(torch.randn(3, 8, 8)).shape == (3, 64)  # fine outside the counter
    count = count_flops(model, torch.zeros(1, 8, 8))
    assert (count.forward_flops, count.train_flops, count.macs) == (None, None, None)
    assert count.notes[0].startswith("FlopCounterMode failed: RuntimeError: ")
    assert count.notes[1].startswith("fvcore could not trace the model: ")
    assert all("\n" not in note for note in count.notes)
    assert model.training


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-model", "dict-output"])
def test_forward_flops_survive_a_failing_training_count(frozen: bool) -> None:
    # a frozen model has nothing to differentiate; a dict has no .float()
    model = build_mlp(64, (), 10).requires_grad_(False) if frozen else DictOutput()
    count = count_flops(model, torch.zeros(1, 8, 8))
    assert count.train_flops is None
    assert count.notes[0].startswith("FlopCounterMode failed (training FLOPs): ")
    assert count.forward_flops == 2 * 64 * 10


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("widths", [(4, 10), (64, 32, 16, 8, 10), (784, 1024, 10)])
def test_state_dict_and_checkpoint_sizes(widths) -> None:
    model = build_mlp(widths[0], widths[1:-1], widths[-1])
    params = expected_params(widths)
    inputs = torch.randn(3, widths[0])

    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    trained_steps(model, sgd, inputs)
    state, checkpoint = model_sizes(model, sgd)
    assert params * 4 <= state < params * 4 + SIZE_OVERHEAD
    assert state < checkpoint < state + 1_000  # plain SGD keeps no per-parameter state

    adam = torch.optim.Adam(model.parameters())
    assert model_sizes(model, adam)[1] < state + 1_000  # no state before its first step
    trained_steps(model, adam, inputs)
    state, checkpoint = model_sizes(model, adam)
    assert params * 4 <= state < params * 4 + SIZE_OVERHEAD
    # model + exp_avg + exp_avg_sq, plus a step count and bookkeeping per tensor
    assert params * 4 * 3 <= checkpoint < params * 4 * 3 + 2 * SIZE_OVERHEAD


# ---------------------------------------------------------------- latency


def test_latency_figures_are_sane_and_the_mode_is_restored() -> None:
    model = build_mlp(64, (16,), 10)
    inputs = inference_inputs(torch.randn(100, 8, 8), 64)
    latency = measure_latency(model, inputs)
    assert latency.batch_size == 64
    assert 0 < latency.minimum <= latency.median
    assert latency.iqr >= 0
    assert latency.repeats >= LATENCY_MIN_REPEATS
    assert latency.per_repeat >= 1
    assert model.training
    assert latency.describe().startswith(f"{latency.median * 1e6:.2f} us/sample at batch 64")


class SleepyModel(nn.Module):
    """Takes at least a millisecond per call, whatever the batch size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.001)
        return x


def test_latency_is_per_sample() -> None:
    images = torch.randn(10, 2)
    batch = measure_latency(SleepyModel(), inference_inputs(images, 64))
    single = measure_latency(SleepyModel(), inference_inputs(images, 1))
    assert (batch.batch_size, single.batch_size) == (64, 1)
    assert single.minimum >= 0.001  # one call per sample
    assert batch.minimum * 64 >= 0.001  # one call per 64 samples ...
    assert batch.median < 0.001  # ... reported per sample
    assert 32 < single.median / batch.median < 128


def test_inference_inputs_cycle_through_the_images() -> None:
    images = torch.arange(5 * 2 * 2, dtype=torch.float32).reshape(5, 2, 2)
    batch = inference_inputs(images, 12)
    assert batch.shape == (12, 2, 2)
    for row in range(12):
        assert torch.equal(batch[row], images[row % 5])
    assert torch.equal(inference_inputs(images, 3), images[:3])


@pytest.mark.parametrize("size", [0, -3])
def test_inference_batch_size_below_one_is_refused(size: int) -> None:
    message = f"inference batch size must be a whole number >= 1, got {size}"
    with pytest.raises(ValueError, match=message):
        inference_inputs(torch.zeros(4, 2, 2), size)


# ---------------------------------------------------------------- peak memory


RSS_PROBE = """
import json, sys, time
import torch
from pytest_batchprof.measuring import metrics
if sys.argv[1] == "sampled":
    metrics._reset_peak_rss = lambda: False
elif not metrics._reset_peak_rss():
    print(json.dumps(None)); sys.exit()
with metrics.PeakMemoryMeter(torch.device("cpu")) as meter:
    big = torch.ones(50 * 2**20 // 4)  # written, so its pages are resident
    big[-1].item()
    if sys.argv[2] == "freed":
        time.sleep(0.1)
        del big
print(json.dumps([meter.result.bytes, meter.result.method]))
"""


def measure_rss_in_a_fresh_process(method: str, case: str) -> tuple[int, str]:
    """Peak RSS growth of a 50 MB tensor, measured in a process of its own.

    RSS belongs to the whole process: in this one, threads that earlier
    in-process pytest sessions left behind may free memory during the block and
    hide the tensor's growth.
    """
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, method, case], capture_output=True,
                          text=True, check=True, timeout=120)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures is None:
        pytest.skip("this kernel keeps no resettable peak RSS")
    return figures[0], figures[1]


@pytest.mark.parametrize("method", ["kernel peak", "sampled"])
def test_peak_memory_sees_a_50_mb_tensor(method: str) -> None:
    grown, how = measure_rss_in_a_fresh_process(method, "kept")
    assert grown >= 40 * MB
    assert "RSS" in how
    assert ("VmHWM" in how) == (method == "kernel peak")


@pytest.mark.parametrize("method", ["kernel peak", "sampled"])
def test_peak_memory_samples_while_the_block_runs(method: str) -> None:
    """A tensor freed before the block ends still counts."""
    grown, _ = measure_rss_in_a_fresh_process(method, "freed")
    assert grown >= 40 * MB


def test_peak_memory_on_cuda_uses_the_allocator_statistics(monkeypatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 51_000)
    device = torch.device("cuda", 0)
    with PeakMemoryMeter(device) as meter:
        calls.append("block")
        assert meter.reached() == 50_000  # what a memory budget reads during the run
    assert calls == [("reset", device), "block"]
    assert meter.result == PeakMemory(50_000, "torch.cuda.max_memory_allocated growth")


# ---------------------------------------------------------------- CO2


class TaskData:
    def __init__(self, energy: float, emissions: float, duration: float = 2.5) -> None:
        self.energy_consumed = energy
        self.emissions = emissions
        self.duration = duration


class FakeTracker:
    """codecarbon's OfflineEmissionsTracker, minus the hardware."""

    created: ClassVar[list[FakeTracker]] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.tasks = 0
        self.stopped = 0
        FakeTracker.created.append(self)

    def start_task(self) -> None:
        self.tasks += 1

    def stop_task(self) -> TaskData | None:
        self.stopped += 1
        return TaskData(0.002, 0.001)


class BrokenTracker(FakeTracker):
    def __init__(self, **kwargs) -> None:
        raise RuntimeError("no power meter here\nand a second line")


class FailingStopTracker(FakeTracker):
    def stop_task(self) -> None:
        super().stop_task()
        raise OSError("RAPL is not readable")


class FailingStartTracker(FakeTracker):
    def start_task(self) -> None:
        raise ValueError("a task is already running")


class NoEnergyTracker(FakeTracker):
    def stop_task(self) -> TaskData:
        super().stop_task()
        return TaskData(0.0, 0.0, duration=1.5)


class NoDataTracker(FakeTracker):
    def stop_task(self) -> None:
        super().stop_task()


@pytest.fixture
def fake_trackers(monkeypatch: pytest.MonkeyPatch) -> list[FakeTracker]:
    created: ClassVar[list[FakeTracker]] = []
    monkeypatch.setattr(FakeTracker, "created", created)
    return created


def measure_once(monkeypatch, tracker_class: type) -> Carbon:
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", tracker_class)
    meter = CarbonMeter("FRA")
    ran = []
    with meter.measure() as result:
        ran.append(True)
    assert ran == [True]
    (carbon,) = result
    return carbon


def test_carbon_meter_with_a_working_tracker(monkeypatch, fake_trackers) -> None:
    carbon = measure_once(monkeypatch, FakeTracker)
    assert carbon == Carbon(0.002, 0.001, 2.5, None)
    (tracker,) = fake_trackers
    assert tracker.kwargs["country_iso_code"] == "FRA"
    assert tracker.kwargs["save_to_file"] is False  # no emissions.csv
    assert (tracker.tasks, tracker.stopped) == (1, 1)


@pytest.mark.parametrize(
    ("tracker_class", "note", "seconds"),
    [
        (BrokenTracker, "codecarbon failed to start: RuntimeError: no power meter here", None),
        (FailingStartTracker, "codecarbon failed: ValueError: a task is already running", None),
        (FailingStopTracker, "codecarbon failed: OSError: RAPL is not readable", None),
        (NoEnergyTracker, "codecarbon could not estimate the power of this machine", 1.5),
        (NoDataTracker, "codecarbon returned no measurement", None),
    ],
    ids=["constructor-raises", "start-raises", "stop-raises", "zero-energy", "no-data"],
)
def test_carbon_meter_failures_become_a_one_line_note(
        monkeypatch, fake_trackers, tracker_class, note, seconds) -> None:
    carbon = measure_once(monkeypatch, tracker_class)
    assert carbon == Carbon(None, None, seconds, note)
    assert "\n" not in carbon.note
    assert carbon.scaled(1000) == carbon


def test_a_tracker_that_fails_to_start_is_tried_once(monkeypatch) -> None:
    attempts = []

    class Counting(BrokenTracker):
        def __init__(self, **kwargs) -> None:
            attempts.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Counting)
    meter = CarbonMeter()
    meter.prepare()
    for _ in range(2):
        with meter.measure() as result:
            pass
        assert result[0].note.startswith("codecarbon failed to start")
    assert len(attempts) == 1


def test_an_error_in_the_measured_block_propagates_and_stops_the_task(
        monkeypatch, fake_trackers) -> None:
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", FakeTracker)
    meter = CarbonMeter()
    with pytest.raises(KeyError, match="from the block"), meter.measure():
        raise KeyError("from the block")
    assert fake_trackers[0].stopped == 1


def test_carbon_scaled_multiplies_both_figures() -> None:
    carbon = Carbon(0.002, 0.0005, 3.0, "a note")
    scaled = carbon.scaled(250)
    assert scaled.energy_kwh == pytest.approx(0.5)
    assert scaled.co2eq_kg == pytest.approx(0.125)
    assert (scaled.seconds, scaled.note) == (3.0, "a note")


def test_inference_carbon_is_per_1000_inferences(monkeypatch, fake_trackers) -> None:
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", FakeTracker)
    model = build_mlp(4, (4,), 2)
    inputs = torch.zeros(8, 4)
    carbon = inference_carbon(CarbonMeter(), model, inputs, seconds=0.02)
    inferences = 1000 * 0.002 / carbon.energy_kwh  # the fake's kWh, spread over them
    assert inferences >= 8
    assert inferences == pytest.approx(round(inferences / 8) * 8)  # whole batches of 8
    assert carbon.co2eq_kg == pytest.approx(0.001 * 1000 / inferences)
    assert model.training


BROKEN_CO2_TEST = """
    import json
    from pathlib import Path

    def test_run(trained_mlp):
        run = trained_mlp(hidden=8)
        carbon = run.measurements.train_carbon
        assert carbon.co2eq_kg is None and carbon.energy_kwh is None and carbon.note
        assert run.measurements.inference_carbon_per_1000.co2eq_kg is None
        Path("summary.json").write_text(json.dumps(run.summary(), allow_nan=False))
"""


@pytest.mark.parametrize(
    ("tracker_class", "note"),
    [(BrokenTracker, "codecarbon failed to start: RuntimeError: no power meter here"),
     (FailingStopTracker, "codecarbon failed: OSError: RAPL is not readable")],
    ids=["constructor-raises", "stop-raises"],
)
def test_broken_codecarbon_does_not_fail_the_session(
        pytester: pytest.Pytester, monkeypatch, tracker_class, note) -> None:
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", tracker_class)
    pytester.makepyfile(BROKEN_CO2_TEST)
    result = session(pytester)
    result.assert_outcomes(passed=1)
    summary = json.loads((pytester.path / "summary.json").read_text())
    assert summary["train_co2eq_kg"] is None and summary["train_energy_kwh"] is None
    assert summary["train_co2_note"] == note
    assert summary["inference_per_1000_co2_note"] == note
    assert summary["params"] == expected_params((64, 8, 10))


def test_real_tracker_gives_figures_or_a_note_quietly(
        pytester: pytest.Pytester, capfd: pytest.CaptureFixture[str]) -> None:
    pytester.makepyfile(
        """
        import json
        from pathlib import Path

        from pytest_batchprof.plugin import SESSION_KEY

        def test_run(trained_mlp, pytestconfig):
            assert pytestconfig.stash[SESSION_KEY].carbon.country == "FRA"
            run = trained_mlp(hidden=8)
            Path("summary.json").write_text(json.dumps(run.summary(), allow_nan=False))
        """
    )
    result = session(pytester, "--co2-country", "FRA")
    result.assert_outcomes(passed=1)
    summary = json.loads((pytester.path / "summary.json").read_text())
    for prefix in ("train", "inference_per_1000"):
        figures = summary[f"{prefix}_co2eq_kg"], summary[f"{prefix}_energy_kwh"]
        note = summary[f"{prefix}_co2_note"]
        if note is None:
            assert all(isinstance(value, float) and value > 0 for value in figures), summary
        else:
            assert figures == (None, None) and "\n" not in note
    assert not list(pytester.path.rglob("emissions*.csv"))
    captured = capfd.readouterr()
    output = "\n".join([*result.outlines, *result.errlines, captured.out, captured.err])
    assert "codecarbon" not in output.lower()


# ---------------------------------------------------------------- trained runs


RUN_TEST = """
    import json
    from pathlib import Path

    import pytest

    from pytest_batchprof.plugin import SESSION_KEY

    def test_trained(trained_mlp, batch_size):
        run = trained_mlp(hidden=(16, 8))
        measurements = run.measurements
        assert run.params == measurements.params
        assert run.flops == measurements.flops.forward_flops
        assert run.latency is measurements.latency
        assert measurements.train_carbon is None
        assert measurements.inference_carbon_per_1000 is None
        out = run.predictor()()
        assert out.shape == (measurements.latency.batch_size, 10)
        assert run.predictor(3)().shape == (3, 10)
        Path("summary.json").write_text(json.dumps(run.summary(), allow_nan=False))

    def test_diverged(trained_mlp, pytestconfig):
        with pytest.raises(pytest.fail.Exception, match="diverged"):
            trained_mlp(hidden=16, optimizer="sgd", lr=1e12)
        (run,) = [run for run in pytestconfig.stash[SESSION_KEY].runs.values()
                  if run.diverged]
        assert run.measurements is None
        assert run.params is None and run.flops is None and run.latency is None
        assert "params" not in run.summary()
"""


@pytest.mark.parametrize("inference_batch", [None, 7], ids=["default", "inference-batch-7"])
def test_trained_run_is_measured(pytester: pytest.Pytester, inference_batch) -> None:
    pytester.makepyfile(RUN_TEST)
    if inference_batch is None:
        result = session(pytester, "--batch-sizes", "24", "--no-co2")
        result.assert_outcomes(passed=2)
    else:  # the diverged run is the same either way: once is enough
        result = session(pytester, "--batch-sizes", "24", "--no-co2", "-k", "not test_diverged",
                         "--inference-batch-size", str(inference_batch))
        result.assert_outcomes(passed=1, deselected=1)

    summary = json.loads((pytester.path / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    widths = (64, 16, 8, 10)
    assert summary["params"] == summary["trainable_params"] == expected_params(widths)
    assert summary["macs"] == expected_macs(widths)
    assert summary["flops"] == 2 * expected_macs(widths)
    assert summary["train_flops"] == summary["flops"] + expected_backward_flops(widths)
    assert summary["flops_notes"] == []
    assert summary["state_dict_bytes"] >= 4 * summary["params"]
    assert summary["checkpoint_bytes"] >= 3 * 4 * summary["params"]  # adam
    assert summary["batch_size"] == 24
    assert summary["latency_batch_size"] == (inference_batch or 24)
    assert summary["latency_single_batch_size"] == 1
    assert summary["latency_median_s"] > 0 and summary["latency_single_median_s"] > 0
    assert summary["latency_repeats"] >= LATENCY_MIN_REPEATS
    assert summary["train_samples_per_second"] > 0
    assert isinstance(summary["peak_memory_bytes"], int) and summary["peak_memory_bytes"] >= 0
    assert "RSS" in summary["peak_memory_method"]
    assert summary["train_co2eq_kg"] is None and summary["train_energy_kwh"] is None
    assert summary["train_co2_note"] == "off (--batchprof-no-co2)"
    assert summary["inference_per_1000_co2_note"] == "off (--batchprof-no-co2)"


# ---------------------------------------------------------------- pytest-benchmark


BENCHMARK_TEST = """
    def test_training_in_benchmark(benchmark, trained_mlp):
        run = benchmark(trained_mlp, hidden=16, batch_size=32)
        assert run.params == 64 * 16 + 16 + 16 * 10 + 10

    def test_inference_in_benchmark(benchmark, trained_mlp):
        run = trained_mlp(hidden=16, batch_size=32)
        output = benchmark(run.predictor())
        assert output.shape == (32, 10)
"""


def test_benchmark_records_the_figures_and_times_inference(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BENCHMARK_TEST)
    path = pytester.path / "bench.json"
    result = session(pytester, "--no-co2", f"--benchmark-json={path}",
                     "--benchmark-max-time=0.05")
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("batchprof: training") == 1

    benchmarks = {bench["name"]: bench for bench in json.loads(path.read_text())["benchmarks"]}
    training = benchmarks["test_training_in_benchmark"]
    (figures,) = training["extra_info"]["batchprof"]
    assert figures["model"] == "64-16-10"
    assert figures["params"] == expected_params((64, 16, 10))
    assert figures["flops"] == 2 * expected_macs((64, 16, 10))
    assert figures["macs"] == expected_macs((64, 16, 10))
    assert "history" not in figures
    inference = benchmarks["test_inference_in_benchmark"]
    assert inference["stats"]["rounds"] > 1
    assert inference["extra_info"]["batchprof"] == [figures]


def test_benchmark_disabled_still_runs_the_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BENCHMARK_TEST)
    result = session(pytester, "--no-co2", "--benchmark-disable")
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("batchprof: training") == 1



def test_failed_start_does_not_chain_to_the_callers_errors(monkeypatch) -> None:
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", FailingStartTracker)
    meter = CarbonMeter("FRA")
    with pytest.raises(KeyError) as raised, meter.measure():
        raise KeyError("the user's own error")
    assert raised.value.__context__ is None
