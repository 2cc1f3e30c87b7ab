"""On a real CUDA device: its out-of-memory error, the budget read from the allocator, TF32,
mixed precision and the CUDA-event clock. Skipped without a GPU (the same branches are
tested with fakes in test_out_of_memory, test_precision and test_clock)."""

from __future__ import annotations

import json

import pytest
import torch
from session_output import summary_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BASE = ("-p", "no:cacheprovider", "--no-co2", "--device", "cuda", "--epochs", "1",
        "--batchprof-no-report")

GPU_TEST = """
import json, pathlib
import pytest
import torch
from torch import nn


class AsksForATerabyte(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        if self.training and len(x) >= 1000:
            torch.empty(1 << 40, dtype=torch.uint8, device=x.device)  # the allocator refuses
        return self.layers(x)


@pytest.mark.dataset("synthetic", size=20000)
def test_run(trained_model, batch_size):
    run = trained_model(AsksForATerabyte)
    pathlib.Path(f"bs{batch_size}.json").write_text(json.dumps(run.summary(), default=str))
"""


def test_the_devices_own_out_of_memory_error_is_a_row(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GPU_TEST)
    result = pytester.runpytest(*BASE, "--batch-sizes", "64,4096,128")
    result.assert_outcomes(passed=2, skipped=1)
    rows = {row["batch"]: row for row in summary_rows(result)}
    assert rows["4,096"]["outcome"].startswith("out of memory at batch 4,096 (reached ")
    assert "the device: CUDA out of memory" in rows["4,096"]["outcome"]
    after = json.loads((pytester.path / "bs128.json").read_text())
    assert after["train_clock"] == "CUDA events" and after["latency_clock"] == "CUDA events"


MLP_TEST = """
import json, pathlib
import pytest


@pytest.mark.dataset("synthetic", size=40000)
def test_run(trained_mlp, batch_size):
    run = trained_mlp(hidden=4096)
    pathlib.Path(f"bs{batch_size}.json").write_text(json.dumps(run.summary(), default=str))
"""


def test_the_budget_reads_the_allocator_peak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MLP_TEST)
    result = pytester.runpytest(*BASE, "--batch-sizes", "64,32768",
                                "--batchprof-memory-budget", "200MB")
    result.assert_outcomes(passed=1, skipped=1)
    oom = summary_rows(result)[-1]["outcome"]
    assert "passed the --batchprof-memory-budget of 200 MB" in oom


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_each_precision_trains_on_cuda(pytester: pytest.Pytester, precision: str) -> None:
    from pytest_batchprof.hardware.precision import unsupported

    reason = unsupported(precision, torch.device("cuda"))
    if reason is not None:
        pytest.skip(reason)
    pytester.makepyfile(MLP_TEST)
    result = pytester.runpytest(*BASE, "--batch-sizes", "256", "--precision", precision)
    result.assert_outcomes(passed=1)
    figures = json.loads((pytester.path / "bs256.json").read_text())
    assert figures["precision"] == precision and figures["test_accuracy"] > 0.5
    if precision == "tf32":
        assert not torch.backends.cuda.matmul.allow_tf32  # torch's default, restored


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_data_parallel_run_on_two_gpus_over_nccl(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MLP_TEST)
    result = pytester.runpytest(*BASE, "--batch-sizes", "512", "--batchprof-data-parallel", "2")
    result.assert_outcomes(passed=1)
    figures = json.loads((pytester.path / "bs512.json").read_text())
    assert (figures["processes"], figures["per_process_batch"]) == (2, 256)
    assert figures["train_clock"] == "CUDA events" and figures["test_accuracy"] > 0.5
