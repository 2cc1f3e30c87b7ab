"""The largest batch that fits: the search, its margin and cap, and --batchprof-find-max-batch
in real sessions (under a CPU budget, and against a model that raises CUDA's error)."""

from __future__ import annotations

import json
import re

import pytest
from session_output import assert_one_clean_error, summary_rows

from pytest_batchprof.engine.memory import MaxBatch, MemoryLimit, Probe
from pytest_batchprof.runs.max_batch import search

BASE = ("-p", "no:cacheprovider", "--no-co2", "--device", "cpu", "--epochs", "1",
        "--batchprof-no-report")


def linear_memory(fixed: int, per_sample: int, limit: int):
    """A probe whose peak grows linearly with the batch, as activations do."""
    def fits(size: int) -> Probe:
        peak = fixed + per_sample * size
        return Probe(size, peak <= limit, peak)

    return fits


# ---------------------------------------------------------------- the search


@pytest.mark.parametrize(("fixed", "per_sample", "limit"), [
    (1000, 37, 100_000), (0, 1, 4096), (50, 3, 10_000), (0, 1000, 999_999)])
def test_the_search_finds_the_limit_to_within_its_resolution(fixed: int, per_sample: int,
                                                             limit: int) -> None:
    truth = (limit - fixed) // per_sample  # the largest batch whose peak is within the limit
    fitted, failed, probes = search(linear_memory(fixed, per_sample, limit), cap=10**9)
    assert truth * 0.99 <= fitted <= truth < failed
    assert failed - fitted <= max(1, int(fitted * 0.01))
    doublings = [probe.batch_size for probe in probes][:truth.bit_length() + 1]
    assert doublings == [2**power for power in range(truth.bit_length() + 1)]
    assert len(probes) <= 2 * truth.bit_length() + 2  # doubling, then bisection


def test_the_cap_bounds_the_search() -> None:
    fitted, failed, probes = search(linear_memory(0, 1, 10**9), cap=1000)
    assert (fitted, failed) == (1000, None)  # everything fits: the cap is the answer
    assert [probe.batch_size for probe in probes][-1] == 1000
    fitted, failed, _ = search(linear_memory(0, 1, 700), cap=1000)
    assert fitted <= 700 < failed <= 1000
    fitted, failed, _ = search(linear_memory(0, 1, 1024), cap=1024)
    assert (fitted, failed) == (1024, None)


def test_when_nothing_fits_the_answer_is_zero() -> None:
    fitted, failed, probes = search(linear_memory(500, 1, 100), cap=64)
    assert (fitted, failed, len(probes)) == (0, 1, 1)


def test_the_answer_is_the_largest_fit_less_the_margin() -> None:
    limit = MemoryLimit(2**30, "the --batchprof-memory-budget of 1 GiB")
    found = MaxBatch(14_630, 16_256, 16_384, 36_666, 0.1, limit, (Probe(1, True, 10),))
    assert found.describe() == (
        "largest batch that fits the --batchprof-memory-budget of 1 GiB: 14,630 (16,256 fits, "
        "16,384 does not; 10% margin; 1 probes)")
    assert found.summary() == {"max_batch_size": 14_630, "max_batch_fits": 16_256,
                               "max_batch_fails": 16_384,
                               "max_batch_limit": "the --batchprof-memory-budget of 1 GiB"}
    nothing = MaxBatch(0, 0, 1, 10, 0.1, limit, ())
    assert nothing.describe() == ("no batch size fits the --batchprof-memory-budget of 1 GiB, "
                                  "not even 1")


# ---------------------------------------------------------------- sessions

INJECTED = """
import json, pathlib
import pytest
import torch
from torch import nn


class RunsOutAt1000(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        if self.training and len(x) >= 1000:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB.")
        return self.layers(x)


@pytest.mark.dataset("synthetic", size=4000)
def test_run(trained_model, batch_size):
    run = trained_model(RunsOutAt1000)
    pathlib.Path("found.json").write_text(json.dumps(run.summary()["max_batch_size"]))
"""


def test_the_finder_stops_at_the_devices_out_of_memory_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(INJECTED)
    result = pytester.runpytest(*BASE, "--batch-sizes", "32,64", "--batchprof-find-max-batch",
                                "--batchprof-memory-budget", "4GiB")
    result.assert_outcomes(passed=2)
    output = result.stdout.str()
    assert output.count("finding the largest batch of RunsOutAt1000") == 1  # once per model
    match = re.search(r"largest batch that fits the --batchprof-memory-budget of 4 GiB: "
                      r"([\d,]+) \(([\d,]+) fits, ([\d,]+) does not; 10% margin; (\d+) probes\)",
                      output)
    assert match, output
    answer, fitted, failed = (int(group.replace(",", "")) for group in match.groups()[:3])
    assert 990 <= fitted <= 999 < 1000 == failed  # within 1% of the true limit
    assert answer == int(fitted * 0.9)
    assert json.loads((pytester.path / "found.json").read_text()) == answer
    assert {row["max batch"] for row in summary_rows(result)} == {f"{answer:,}"}


BUDGETED = """
import pytest


@pytest.mark.dataset("synthetic", size=40000)
def test_run(trained_mlp, batch_size):
    trained_mlp(hidden=1024)
"""


def test_the_answer_under_a_cpu_budget_trains_within_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BUDGETED)
    budget = ("--batchprof-memory-budget", "200MB")
    found = pytester.runpytest(*BASE, *budget, "--batch-sizes", "16",
                               "--batchprof-find-max-batch", "--batchprof-max-batch-margin",
                               "0.2")
    found.assert_outcomes(passed=1)
    match = re.search(r"200 MB: ([\d,]+) \(([\d,]+) fits, ([\d,]+) does not; 20% margin",
                      found.stdout.str())
    assert match, found.stdout.str()
    answer, fitted, failed = (int(group.replace(",", "")) for group in match.groups())
    assert answer == int(fitted * 0.8) and fitted < failed
    at_answer = pytester.runpytest(*BASE, *budget, "--batch-sizes", str(answer))
    at_answer.assert_outcomes(passed=1)  # the margin keeps it within the budget
    past = pytester.runpytest(*BASE, *budget, "--batch-sizes", str(2 * failed))
    past.assert_outcomes(skipped=1)


def test_the_cap_option_and_the_header(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(INJECTED)
    result = pytester.runpytest(*BASE, "--batch-sizes", "32", "--batchprof-find-max-batch",
                                "--batchprof-memory-budget", "4GiB",
                                "--batchprof-max-batch-cap", "300")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "batchprof: * find-max-batch (margin 10%, cap 300)*",
        "*largest batch that fits the --batchprof-memory-budget of 4 GiB: 270 (300 fits, "
        "every size up to the cap of 300 does; 10% margin; 10 probes)*"])


@pytest.mark.parametrize(("args", "words"), [
    (("--batchprof-find-max-batch",),
     "--batchprof-find-max-batch needs a memory limit, and cpu has none of its own: give "
     "--batchprof-memory-budget SIZE"),
    (("--batchprof-find-max-batch", "--batchprof-memory-budget", "1GB",
      "--batchprof-max-batch-margin", "1.5"), "--batchprof-max-batch-margin is 1.5"),
    (("--batchprof-max-batch-cap", "0"), "--batchprof-max-batch-cap is 0"),
])
def test_bad_finder_settings_are_one_usage_error(pytester: pytest.Pytester,
                                                 args: tuple[str, ...], words: str) -> None:
    pytester.makepyfile(INJECTED)
    line = assert_one_clean_error(pytester.runpytest(*BASE, *args))
    assert words in line
