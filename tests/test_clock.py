"""Timing on accelerators: CUDA events around a stretch of work, with one host wait at its
end (faked here: no GPU is needed), and the host clock elsewhere."""

from __future__ import annotations

import time

import pytest
import torch

from pytest_batchprof.experiment.models import build_mlp
from pytest_batchprof.hardware import clock
from pytest_batchprof.hardware.clock import CUDA_EVENTS, HOST_CLOCK, Stopwatch
from pytest_batchprof.measuring import metrics


class FakeEvent:
    """``torch.cuda.Event(enable_timing=True)`` on the host clock; counts the host waits."""

    waits = 0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at: float | None = None

    def record(self, stream: object = None) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        FakeEvent.waits += 1

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.at - self.at) * 1000  # milliseconds, as CUDA's


@pytest.fixture
def fake_cuda_events(monkeypatch: pytest.MonkeyPatch) -> type[FakeEvent]:
    FakeEvent.waits = 0
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)

    def no_device_sync(*args: object) -> None:
        raise AssertionError("a device-wide sync inside an event-timed stretch")

    monkeypatch.setattr(torch.cuda, "synchronize", no_device_sync)
    return FakeEvent


def test_on_cuda_a_stretch_is_timed_by_events_with_one_wait_at_its_end(
        fake_cuda_events: type[FakeEvent]) -> None:
    stopwatch = Stopwatch(torch.device("cuda", 0))
    assert stopwatch.name == CUDA_EVENTS
    stopwatch.start()
    time.sleep(0.02)
    seconds = stopwatch.stop()
    assert 0.015 <= seconds < 1.0  # seconds, not CUDA's milliseconds
    assert fake_cuda_events.waits == 1


def test_elsewhere_the_host_clock_after_a_device_sync() -> None:
    stopwatch = Stopwatch(torch.device("cpu"))
    assert stopwatch.name == HOST_CLOCK == clock.clock_name(torch.device("mps"))
    stopwatch.start()
    time.sleep(0.01)
    assert 0.005 <= stopwatch.stop() < 1.0


def test_latency_on_cuda_is_timed_in_event_blocks(fake_cuda_events: type[FakeEvent],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "clock_name", lambda device: CUDA_EVENTS)
    model = build_mlp(16, (8,), 4)
    latency = metrics._latency_by_cuda_events(model, torch.zeros(8, 4, 4), min_run_time=0.05)
    assert latency.clock == CUDA_EVENTS and latency.batch_size == 8
    assert latency.repeats >= metrics.LATENCY_MIN_REPEATS
    assert fake_cuda_events.waits == latency.repeats + 3  # one per block, warm-ups included
    assert 0 < latency.minimum <= latency.median
    assert model.training  # left as it was


def test_a_cpu_run_and_its_latency_name_their_clock(tmp_path, run_config) -> None:
    from pytest_batchprof.data.datasets import load_dataset
    from pytest_batchprof.engine.training import train

    data = load_dataset("synthetic", tmp_path, 0.1, {"size": 400})
    run = train(run_config(data, epochs=1), data, torch.device("cpu"))
    assert run.summary()["train_clock"] == HOST_CLOCK
    latency = metrics.measure_latency(run.model, data.test.x[:4], min_run_time=0.01)
    assert latency.clock == HOST_CLOCK
