"""Flushing denormals on every torch thread while the engine trains on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine.training import RunConfig, train
from pytest_batchprof.hardware import denormals
from pytest_batchprof.hardware.denormals import denormals_flushed, flush_state, set_flush

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False),
                                reason="this CPU cannot flush denormals")

ADAM_DECAY_STEPS = 900
"""Steps of zero gradient after which 0.1 x 0.9^steps is a float32 denormal (about 1e-42)."""


@pytest.fixture(autouse=True)
def flushing_off_around_each_test():
    set_flush(False)
    yield
    set_flush(False)


def adam_average_after_zero_gradients() -> float:
    """Adam's running average of a weight whose gradient was 1 once, then 0 for 900 steps."""
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([weight], lr=1e-3, fused=True)
    weight.grad = torch.ones(4)
    optimizer.step()
    weight.grad = torch.zeros(4)
    for _ in range(ADAM_DECAY_STEPS):
        optimizer.step()
    return float(optimizer.state[weight]["exp_avg"][0])


def test_adam_state_decays_into_denormals_unless_flushed() -> None:
    kept = adam_average_after_zero_gradients()
    assert 0 < kept < torch.finfo(torch.float32).tiny  # a denormal: the slow case
    with denormals_flushed():
        assert adam_average_after_zero_gradients() == 0.0


def test_flushing_reaches_every_thread_and_is_undone() -> None:
    assert flush_state() == "off"
    with denormals_flushed():
        state = flush_state()
        assert state == "on"
        assert flush_state() == "on"  # the probe is split across torch's threads
    assert flush_state() == "off"


def test_another_openmp_runtime_in_the_process_is_not_taken_for_torchs() -> None:
    import sklearn.datasets  # noqa: F401  (scikit-learn's wheels bring their own libgomp)

    maps = Path("/proc/self/maps")
    runtimes = {line.split()[-1] for line in maps.read_text().splitlines()
                if "libgomp" in line} if maps.exists() else set()
    if len(runtimes) < 2:
        pytest.skip("scikit-learn shares torch's OpenMP runtime here")
    with denormals_flushed():
        state = flush_state()
        assert state == "on"


def test_flushing_that_was_on_stays_on() -> None:
    set_flush(True)
    assert flush_state() == "on"
    with denormals_flushed():
        state = flush_state()
        assert state == "on"
    assert flush_state() == "on"


def test_disabled_block_changes_nothing() -> None:
    with denormals_flushed(enabled=False):
        state = flush_state()
        assert state == "off"
        assert flush_state() == "off"


def test_without_an_openmp_runtime_only_the_calling_thread_flushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(denormals, "_openmp_library", lambda: None)
    expected = "on" if torch.get_num_threads() == 1 else "partial"
    with denormals_flushed():
        state = flush_state()
        assert state == expected
    assert flush_state() == "off"


def test_probe_reads_a_partial_state(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: there is no other thread to differ")
    monkeypatch.setattr(denormals, "_openmp_library", lambda: None)
    set_flush(True)
    assert flush_state() == "partial"
    monkeypatch.undo()
    set_flush(True)
    assert flush_state() == "on"


@pytest.mark.parametrize("flush", [True, False], ids=["flush", "keep"])
def test_training_leaves_the_process_as_it_found_it(tmp_path, flush: bool) -> None:
    data = load_dataset("synthetic", tmp_path, 0.1, {"size": 200})
    config = RunConfig(dataset=data.name, input_shape=data.image_shape, hidden=(16,),
                       num_classes=data.num_classes, activation="relu", batch_size=16,
                       epochs=1, lr=1e-3, optimizer="adam", seed=0, device="cpu",
                       train_subset=None, val_fraction=0.1, flush_denormals=flush)
    run = train(config, data, torch.device("cpu"))
    assert run.test_accuracy is not None
    assert flush_state() == "off"


FLUSH_FLAG_TEST = """
def test_flag(trained_mlp):
    assert trained_mlp(hidden=8).summary()["flush_denormals"] is {expected}
"""


@pytest.mark.parametrize(("args", "ini", "expected"), [
    ((), "", True),
    (("--keep-denormals",), "", False),
    ((), "batchprof_keep_denormals = true", False),
], ids=["default-flush", "flag", "ini"])
def test_keep_denormals_option_reaches_the_run(pytester: pytest.Pytester, args: tuple[str, ...],
                                                ini: str, expected: bool) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(FLUSH_FLAG_TEST.format(expected=expected))
    result = pytester.runpytest("-p", "no:cacheprovider", "--dataset", "synthetic",
                                "--epochs", "1", "--batch-sizes", "32", "--no-co2",
                                "--batchprof-no-report", "--device", "cpu", *args)
    result.assert_outcomes(passed=1)
