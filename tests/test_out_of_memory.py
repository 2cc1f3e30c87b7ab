"""Out of memory as a result: the memory budget, the device's error, the row, the baseline,
the cache and the plots."""

from __future__ import annotations

import json

import pytest
import torch
from session_output import assert_one_clean_error, failure_section, summary_rows

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine import memory
from pytest_batchprof.engine.memory import MemoryLimit, OutOfMemory
from pytest_batchprof.engine.training import Recipe, TrainingLoop
from pytest_batchprof.plugin.options import OptionError, parse_size
from pytest_batchprof.reports.plots import build_figures
from pytest_batchprof.settings import format_size

BUDGET = "200MB"
"""Between the peaks of the MLP's small batches (up to 90 MB here) and batch 32,768's (about
400 MB): the gap is wide, since RSS growth moves by tens of MB from one run to the next."""
BIG_BATCH = 32_768
BASE = ("-p", "no:cacheprovider", "--no-co2", "--device", "cpu", "--epochs", "1",
        "--batchprof-columns", "model,batch_size,test_accuracy,peak_memory_bytes,outcome")

BUDGET_TEST = """
import json, pathlib
import pytest

@pytest.mark.dataset("synthetic", size=40000)
def test_run(trained_mlp, batch_size):
    run = trained_mlp(hidden=1024)
    pathlib.Path(f"bs{batch_size}.json").write_text(json.dumps(
        [run.test_accuracy, [record["val_loss"] for record in run.summary()["history"]]]))
"""


def figures_of(pytester: pytest.Pytester, batch_size: int) -> list[object]:
    return json.loads((pytester.path / f"bs{batch_size}.json").read_text())


# ---------------------------------------------------------------- the options


@pytest.mark.parametrize(("text", "size"), [
    ("2GiB", 2 * 2**30), ("512MB", 512 * 10**6), ("1.5 GB", 1_500_000_000), ("64kib", 65_536),
    ("1024", 1024), ("3 TiB", 3 * 2**40)])
def test_sizes_in_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2G", "", "lots", "0", "-1MB", "1e9", "0.1B"])
def test_a_size_without_a_known_unit_or_below_a_byte_is_refused(text: str) -> None:
    with pytest.raises(OptionError):
        parse_size(text)


def test_sizes_print_in_the_unit_that_keeps_them_whole() -> None:
    assert [format_size(size) for size in (2 * 2**30, 512 * 10**6, 1024, 5000, 7)] == [
        "2 GiB", "512 MB", "1 KiB", "5 kB", "7 B"]
    assert format_size(12_345_678) == "11.77 MiB"


@pytest.mark.parametrize(("args", "named"), [
    (("--batchprof-memory-budget", "2G"), "--batchprof-memory-budget"),
    (("--batchprof-oom", "maybe"), "--batchprof-oom")])
def test_a_bad_value_is_one_usage_error_naming_the_option(pytester: pytest.Pytester,
                                                          args: tuple[str, ...],
                                                          named: str) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    line = assert_one_clean_error(pytester.runpytest("-p", "no:cacheprovider", *args))
    assert named in line and repr(args[1]) in line


def test_the_ini_twins_and_the_header(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbatchprof_memory_budget = 1.5GB\nbatchprof_oom = fail\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--device", "cpu")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["batchprof: *memory-budget=1500 MB oom=fail*"])


# ---------------------------------------------------------------- the budget


def test_a_batch_past_the_budget_is_an_out_of_memory_row_and_a_skip(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BUDGET_TEST)
    result = pytester.runpytest(*BASE, "--batch-sizes", f"512,{BIG_BATCH},128",
                                "--batchprof-memory-budget", BUDGET, "-rs",
                                "--batchprof-report", str(pytester.path / "reports"))
    result.assert_outcomes(passed=2, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        f"SKIPPED * batch {BIG_BATCH}, 1 epoch, *: out of memory at batch 32,768 (reached * MB; "
        f"passed the --batchprof-memory-budget of 200 MB, epoch 1 step 1)"])
    rows = {row["batch"]: row for row in summary_rows(result)}
    assert rows["512"]["outcome"] == rows["128"]["outcome"] == "passed"
    oom = rows["32,768"]
    assert oom["outcome"].startswith("out of memory at batch 32,768 (reached ")
    assert oom["test acc (%)"] == "n/a"
    (peak,) = [key for key in oom if key.startswith("peak memory (")]  # its unit follows the
    assert oom[peak] != "n/a"  # smallest peak of the table; the bytes are checked below
    report = json.loads((pytester.path / "reports" / "latest.json").read_text())
    (row,) = [row for row in report["rows"] if row["batch_size"] == BIG_BATCH]
    assert row["out_of_memory"] == row["outcome"] and row["peak_memory_bytes"] > 200e6
    assert row["test_accuracy"] is None

    # The run after the failed one trains as it does in a session without it.
    after_oom = figures_of(pytester, 128)
    alone = pytester.runpytest(*BASE, "--batch-sizes", "128", "--batchprof-no-report")
    alone.assert_outcomes(passed=1)
    assert figures_of(pytester, 128) == after_oom


def test_oom_fail_fails_the_test_and_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BUDGET_TEST)
    result = pytester.runpytest(*BASE, "--batch-sizes", f"512,{BIG_BATCH}",
                                "--batchprof-memory-budget", BUDGET, "--batchprof-oom", "fail",
                                "--batchprof-no-report")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    (line,) = failure_section(result, f"test_run[bs{BIG_BATCH}]")
    assert line.endswith(": out of memory at batch 32,768 (reached " + line.split("reached ")[1])
    assert "Traceback" not in result.stdout.str()
    assert summary_rows(result)[-1]["outcome"].startswith("out of memory at batch 32,768")


def test_out_of_memory_where_the_baseline_fitted_is_a_regression(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BUDGET_TEST)
    common = (*BASE, "--batch-sizes", f"512,{BIG_BATCH}",
              "--batchprof-report", str(pytester.path / "reports"))
    pytester.runpytest(*common, "--batchprof-save", "fits").assert_outcomes(passed=2)
    result = pytester.runpytest(*common, "--batchprof-memory-budget", BUDGET,
                                "--batchprof-compare", "fits")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        f"batchprof: *batch {BIG_BATCH}*: REGRESSION: out of memory at batch 32,768 *; "
        f"it fitted in the baseline"])
    again = pytester.runpytest(*common, "--batchprof-memory-budget", BUDGET,
                               "--batchprof-save", "tight")
    again.assert_outcomes(passed=1, skipped=1)
    same = pytester.runpytest(*common, "--batchprof-memory-budget", BUDGET,
                              "--batchprof-compare", "tight")
    assert same.ret == pytest.ExitCode.OK  # out of memory in both: no regression
    same.stdout.fnmatch_lines(["*out of memory, as in the baseline*"])


def test_a_cached_run_whose_recorded_peak_passes_the_budget_is_out_of_memory(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(BUDGET_TEST)
    common = (*BASE, "--batch-sizes", f"512,{BIG_BATCH}", "--batchprof-no-report",
              f"--batchprof-cache={pytester.path / 'runs'}")
    pytester.runpytest(*common).assert_outcomes(passed=2)
    result = pytester.runpytest(*common, "--batchprof-memory-budget", BUDGET)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*loaded * batch 32768, * from the cache*",
                                 "*out of memory at batch 32,768 (reached * MB; its recorded "
                                 "peak passes the --batchprof-memory-budget of 200 MB)*"])
    assert summary_rows(result)[-1]["test acc (%)"] == "n/a"  # as when it runs out afresh


# ---------------------------------------------------------------- the device's own error


INJECTED_TEST = """
import json, pathlib
import pytest
import torch
from torch import nn


class RunsOutAtLargeBatches(nn.Module):
    \"\"\"Raises what the CUDA allocator raises, for training batches of 1,000 or more.\"\"\"

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        if self.training and len(x) >= 1000:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                "of 79.10 GiB of which 1.06 GiB is free.")
        return self.layers(x)


@pytest.mark.dataset("synthetic", size=4000)
def test_run(trained_model, batch_size):
    run = trained_model(RunsOutAtLargeBatches)
    pathlib.Path(f"bs{batch_size}.json").write_text(json.dumps(
        [run.test_accuracy, [record["val_loss"] for record in run.summary()["history"]]]))
"""


@pytest.mark.parametrize(("args", "outcomes"), [((), {"skipped": 1}),
                                                (("--batchprof-oom", "fail"), {"failed": 1})],
                         ids=["skip", "fail"])
def test_an_injected_cuda_out_of_memory_error_is_a_row_too(pytester: pytest.Pytester,
                                                           args: tuple[str, ...],
                                                           outcomes: dict[str, int]) -> None:
    pytester.makepyfile(INJECTED_TEST)
    result = pytester.runpytest(*BASE, "--batch-sizes", "32,2048,64", "--batchprof-no-report",
                                *args)
    result.assert_outcomes(passed=2, **outcomes)
    rows = {row["batch"]: row for row in summary_rows(result)}
    assert rows["2,048"]["outcome"] == (
        "out of memory at batch 2,048 (reached " + rows["2,048"]["outcome"].split("reached ")[1])
    assert "the device: CUDA out of memory. Tried to allocate 2.00 GiB." in rows["2,048"][
        "outcome"]
    assert rows["2,048"]["outcome"].endswith("epoch 1 step 1)")
    after = figures_of(pytester, 64)
    pytester.runpytest(*BASE, "--batch-sizes", "64", "--batchprof-no-report").assert_outcomes(
        passed=1)
    assert figures_of(pytester, 64) == after  # nothing of the failed run leaks into the next


def test_the_mps_error_is_recognised_and_other_errors_are_not() -> None:
    assert memory.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert not memory.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert memory.cause_of(torch.OutOfMemoryError("CUDA out of memory.\nmore")) == (
        "the device: CUDA out of memory.")


@pytest.mark.parametrize("kind", ["cuda", "mps", "cpu"])
def test_release_empties_the_device_cache(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    emptied: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append("cuda"))
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: emptied.append("mps"))
    memory.release_device_memory(torch.device(kind))
    assert emptied == ([] if kind == "cpu" else [kind])


def test_the_default_limit_on_cuda_is_the_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_batchprof.runs.session import memory_limit
    from pytest_batchprof.settings import Settings

    class Properties:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    assert memory_limit(Settings(), torch.device("cuda", 0)) == MemoryLimit(
        80 * 2**30, "the memory of cuda:0")
    assert memory_limit(Settings(), torch.device("cpu")) is None
    assert memory_limit(Settings(memory_budget=2**30), torch.device("cuda", 0)) == MemoryLimit(
        2**30, "the --batchprof-memory-budget of 1 GiB")


# ---------------------------------------------------------------- the loop's checks


class CountingMeter:
    """A meter whose peak grows by a fixed amount at every reading."""

    def __init__(self, step_bytes: int) -> None:
        self.readings = 0
        self.step_bytes = step_bytes

    def reached(self) -> int:
        self.readings += 1
        return self.readings * self.step_bytes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 800})


def test_the_limit_is_read_after_steps_1_2_4_to_64_and_every_epoch(synthetic,
                                                                   run_config) -> None:
    config = run_config(synthetic, batch_size=4, epochs=2)  # 180 steps an epoch
    meter = CountingMeter(1)
    loop = TrainingLoop(config, synthetic, torch.device("cpu"), Recipe.of_mlp(config),
                        memory=meter, memory_limit=MemoryLimit(10**9, "a test's limit"))
    run = loop.run()
    assert run.out_of_memory is None and len(run.history) == 2
    assert meter.readings == 7 + 2  # steps 1, 2, 4, 8, 16, 32, 64; two epoch ends


def test_passing_the_limit_ends_the_run_with_what_it_reached(synthetic, run_config) -> None:
    config = run_config(synthetic, batch_size=4, epochs=2)
    loop = TrainingLoop(config, synthetic, torch.device("cpu"), Recipe.of_mlp(config),
                        memory=CountingMeter(300), memory_limit=MemoryLimit(1000, "1 kB"))
    run = loop.run()
    assert run.out_of_memory == OutOfMemory(4, 1200, "passed 1 kB", epoch=1, step=8)
    assert run.test_accuracy is None and run.history == [] and run.measurements is None
    assert all(parameter.grad is None for parameter in run.model.parameters())
    assert not run.optimizer.state and not any(loop.pending)
    assert "out of memory at batch 4 (reached 1.2 kB; passed 1 kB, epoch 1 step 8)" in repr(run)


def test_without_a_meter_or_a_limit_nothing_is_read(synthetic, run_config) -> None:
    config = run_config(synthetic, batch_size=4, epochs=1)
    meter = CountingMeter(1)
    TrainingLoop(config, synthetic, torch.device("cpu"), Recipe.of_mlp(config),
                 memory=meter).run()
    assert meter.readings == 0


# ---------------------------------------------------------------- the plot


def test_the_plots_cross_the_batch_that_ran_out() -> None:
    fitted = {"model": "64-32-10", "dataset": "synthetic", "epochs": 1, "seed": 0,
              "train_seconds": 1.0, "history": [], "curve": []}
    rows = [{**fitted, "batch_size": 16, "test_accuracy": 0.9},
            {**fitted, "batch_size": 64, "test_accuracy": 0.91},
            {**fitted, "batch_size": 4096, "test_accuracy": None, "train_seconds": 0.0,
             "out_of_memory": "out of memory at batch 4,096 (...)"}]
    figures = dict((name, figure) for name, _, figure in build_figures(rows))
    for name in ("accuracy", "time"):
        (axes,) = figures[name].axes
        crosses = [line for line in axes.get_lines()
                   if line.get_label() == "64-32-10: out of memory"]
        assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [4096], name
        assert axes.get_xlim()[0] < 4096 < axes.get_xlim()[1]


def test_rows_that_all_fitted_have_no_cross() -> None:
    rows = [{"model": "m", "dataset": "d", "epochs": 1, "seed": 0, "batch_size": 16,
             "test_accuracy": 0.9, "train_seconds": 1.0, "history": [], "curve": []}]
    figures = dict((name, figure) for name, _, figure in build_figures(rows))
    (axes,) = figures["accuracy"].axes
    assert not [line for line in axes.get_lines() if "out of memory" in str(line.get_label())]
