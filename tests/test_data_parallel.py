"""Data-parallel runs: real 2-process gloo runs on the CPU against 1 process, the row, the
usage errors, a rank that fails, and a registered Dataset read by a DataLoader in each
process (its DistributedSampler share of every epoch)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
from session_output import assert_one_clean_error, failure_section, summary_rows

from pytest_batchprof.data.datasets import load_dataset, register_dataset
from pytest_batchprof.engine.parallel import train_data_parallel
from pytest_batchprof.engine.training import EpochRecord, Recipe, score
from pytest_batchprof.experiment.config import RunConfig
from pytest_batchprof.experiment.models import build_mlp

CPU = torch.device("cpu")


def figures(record: EpochRecord) -> tuple[float, ...]:
    """An epoch's results without its timings, which always differ."""
    return (record.train_loss, record.train_accuracy, record.val_loss, record.val_accuracy)

BASE = ("-p", "no:cacheprovider", "--no-co2", "--device", "cpu", "--epochs", "2",
        "--batchprof-no-report")

PAIR = """
import json, pathlib
import pytest


@pytest.mark.dataset("synthetic", size=3000)
@pytest.mark.parametrize("processes", [1, 2])
def test_run(trained_mlp, batch_size, processes):
    run = trained_mlp(hidden=64, data_parallel=processes)
    steps = {int(state["step"]) for state in run.optimizer.state_dict()["state"].values()}
    pathlib.Path(f"p{processes}.json").write_text(json.dumps({
        "steps": sorted(steps), "test_accuracy": run.test_accuracy,
        "train_loss": [record.train_loss for record in run.history],
        "val_loss": [record.val_loss for record in run.history],
        "processes": run.config.processes, "per_process_batch": run.config.per_process_batch}))
"""


def test_two_processes_take_the_same_steps_as_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PAIR)
    result = pytester.runpytest(*BASE, "--batch-sizes", "30")  # 2,750 samples: a short batch
    result.assert_outcomes(passed=2)
    one, two = (json.loads((pytester.path / f"p{n}.json").read_text()) for n in (1, 2))
    assert one["steps"] == two["steps"] == [2 * 92]  # ceil(2,750 / 30) steps an epoch, x2
    assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 0.01  # within the noise
    for key in ("train_loss", "val_loss"):  # the curves track each other
        assert two[key] == pytest.approx(one[key], rel=1e-4)
    assert (two["processes"], two["per_process_batch"]) == (2, 15)
    rows = {row["processes"]: row for row in summary_rows(result)}
    assert (rows["2"]["batch"], rows["2"]["batch / process"]) == ("30", "15")
    assert rows["1"]["batch / process"] == "30"
    assert rows["1"]["scaling efficiency (%)"] == "n/a"
    assert 0 < float(rows["2"]["scaling efficiency (%)"]) < 200  # against the 1-process run
    result.stdout.fnmatch_lines(["*training 64-64-10 on *, batch 30, *, cpu, 2 processes of "
                                 "batch 15"])


LIVE = """
import pytest


@pytest.mark.dataset("synthetic", size=600)
def test_run(trained_mlp):
    trained_mlp(hidden=16, batch_size=64, data_parallel=2)
"""


def test_every_epoch_line_of_rank_0_reaches_the_console_in_order(
        pytester: pytest.Pytester) -> None:
    """Rank 0's epoch lines come through a queue the test's process reads while it waits:
    each epoch's line, in order, before the run's closing line (not only the last epoch)."""
    pytester.makepyfile(LIVE)
    result = pytester.runpytest(*BASE)  # 2 epochs
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["batchprof: training 64-16-10 on *, 2 processes of batch 32",
                                 "  Epoch 01, Train acc=*", "  Epoch 02, Train acc=*",
                                 "  trained in *"], consecutive=True)


@pytest.mark.parametrize(("args", "words"), [
    (("--batchprof-data-parallel", "0"), "--batchprof-data-parallel is 0, which is below 1"),
    (("--batchprof-data-parallel", "2", "--batch-sizes", "16,33"),
     "--batch-sizes has 33, which does not divide by --batchprof-data-parallel 2"),
])
def test_a_bad_process_count_or_batch_is_one_usage_error(pytester: pytest.Pytester,
                                                         args: tuple[str, ...],
                                                         words: str) -> None:
    pytester.makepyfile(PAIR)
    assert words in assert_one_clean_error(pytester.runpytest(*BASE, *args))


FAILING_RANK = """
import pytest
import torch
import torch.distributed as dist
from torch import nn


class FailsOnRank1(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError("rank 1 ran into a wall")
        return self.layers(x)


@pytest.mark.dataset("synthetic", size=1000)
def test_run(trained_model):
    trained_model(FailsOnRank1, batch_size=32, data_parallel=2)


@pytest.mark.dataset("synthetic", size=1000)
def test_after(trained_model):
    assert trained_model(FailsOnRank1, batch_size=64).test_accuracy > 0
"""


def test_a_failing_rank_fails_its_test_naming_it_and_leaves_no_process(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(FAILING_RANK)
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    result = pytester.runpytest(*BASE)
    elapsed = time.monotonic() - started
    result.assert_outcomes(passed=1, failed=1)  # the session goes on
    (line,) = failure_section(result, "test_run")
    assert line == "rank 1 of 2 failed: RuntimeError: rank 1 ran into a wall"
    assert elapsed < 60  # bounded: the other rank does not wait out its collectives
    time.sleep(0.5)
    left = [child for child in psutil.Process().children(recursive=True)
            if child.pid not in before and child.is_running()
            and child.status() != psutil.STATUS_ZOMBIE]
    assert left == []


DYING_RANK = """
import os, signal
import pytest
import torch.distributed as dist
from torch import nn


class KilledOnRank1(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.layers(x)


@pytest.mark.dataset("synthetic", size=1000)
def test_run(trained_model):
    trained_model(KilledOnRank1, batch_size=32, data_parallel=2)
"""


def test_a_rank_that_dies_fails_its_test_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(DYING_RANK)
    started = time.monotonic()
    result = pytester.runpytest(*BASE)
    result.assert_outcomes(failed=1)
    assert failure_section(result, "test_run") == ["rank 1 of 2 died with exit code -9"]
    assert time.monotonic() - started < 60


def test_ctrl_c_while_waiting_kills_every_process() -> None:
    import multiprocessing

    from pytest_batchprof.engine import parallel

    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=time.sleep, args=(60,)) for _ in range(2)]
    for process in processes:
        process.start()

    class Interrupted:
        def __init__(self) -> None:
            self.processes = processes

        def join(self, timeout: float | None = None, grace_period: float | None = None) -> bool:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        parallel._join(Interrupted())
    assert not any(process.is_alive() for process in processes)


def test_scaling_efficiency_is_the_throughput_over_n_times_one_process() -> None:
    from pytest_batchprof.reports.tables import add_scaling_efficiency

    one = {"model": "m", "batch_size": 64, "seed": 0, "processes": 1,
           "train_samples_per_second": 1000.0}
    rows = [one, {**one, "processes": 2, "train_samples_per_second": 1500.0},
            {**one, "processes": 4, "batch_size": 128, "train_samples_per_second": 1.0}]
    add_scaling_efficiency(rows)
    assert rows[1]["scaling_efficiency"] == 0.75
    assert "scaling_efficiency" not in rows[0]
    assert "scaling_efficiency" not in rows[2]  # no single-process run of batch 128


TORCHRUN = """
import json, os, pathlib
import pytest


@pytest.mark.dataset("synthetic", size=3000)
def test_run(trained_mlp, batch_size):
    run = trained_mlp(hidden=64)
    steps = {int(state["step"]) for state in run.optimizer.state_dict()["state"].values()}
    pathlib.Path(f"rank{os.environ['RANK']}.json").write_text(json.dumps({
        "processes": run.config.processes, "test_accuracy": run.test_accuracy,
        "steps": sorted(steps)}))
"""


def test_two_nodes_under_torchrun_train_each_run_together_and_write_one_report(
        pytester: pytest.Pytester) -> None:
    """Two "nodes" of one process each on localhost, each launched by its own torchrun, as
    on two machines: one data-parallel run per test, one report (rank 0's)."""
    import subprocess
    import sys

    from pytest_batchprof.engine.parallel import free_port

    pytester.makepyfile(TORCHRUN)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "batchprof-test",
               "-m", "pytest", "-p", "no:cacheprovider", "--no-co2", "--device", "cpu",
               "--epochs", "2", "--batch-sizes", "30", "--batchprof-report", "reports"]
    nodes = [subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    ranks = [json.loads((pytester.path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]  # one run, the same weights in both processes
    assert ranks[0]["processes"] == 2 and ranks[0]["steps"] == [2 * 92]
    reports = sorted(path.name for path in (pytester.path / "reports").glob("*.json"))
    assert len(reports) == 2 and "latest.json" in reports  # one report and its latest copy
    (row,) = json.loads((pytester.path / "reports" / "latest.json").read_text())["rows"]
    assert (row["processes"], row["per_process_batch"]) == (2, 15)


def test_the_launcher_is_read_from_torchruns_environment() -> None:
    from pytest_batchprof.engine.launch import launched_rank

    environ = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0",
               "MASTER_PORT": "29500"}
    assert launched_rank(environ) == (3, 4)
    assert launched_rank({**environ, "WORLD_SIZE": "1"}) is None  # one process: plain
    assert launched_rank({key: value for key, value in environ.items()
                          if key != "MASTER_PORT"}) is None
    assert launched_rank({}) is None


@pytest.mark.parametrize(("args", "words"), [
    (("--batchprof-data-parallel", "2"), "under torchrun each of its 2 pytest processes is "
                                         "already one rank: leave it out"),
    (("--batch-sizes", "31"), "--batch-sizes has 31, which does not divide by torchrun's 2 "
                              "processes"),
])
def test_under_torchrun_bad_settings_are_one_usage_error(pytester: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         args: tuple[str, ...],
                                                         words: str) -> None:
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(TORCHRUN)
    assert words in assert_one_clean_error(pytester.runpytest(*BASE, *args))


# ---------------------------------------------------------------- DataLoader-fed runs

class LoggedFeatures(torch.utils.data.Dataset):
    """Learnable features of 3 classes; in a process of a data-parallel run, every read
    appends its index to that rank's log (``rank0.txt``, ``rank1.txt``)."""

    def __init__(self, count: int, seed: int, logs: Path | None = None) -> None:
        prototypes = torch.randn(3, 6, generator=torch.Generator().manual_seed(99)) * 2
        self.y = torch.arange(count) % 3
        self.x = prototypes[self.y] + 0.3 * torch.randn(
            count, 6, generator=torch.Generator().manual_seed(seed))
        self.logs = logs

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.logs is not None and dist.is_initialized():
            with (self.logs / f"rank{dist.get_rank()}.txt").open("a") as log:
                log.write(f"{index}\n")
        return self.x[index], self.y[index]


def loader_config(**changes: object) -> RunConfig:
    values = dict(dataset="logged", input_shape=(6,), hidden=(16,), num_classes=3,
                  activation="relu", batch_size=16, epochs=2, lr=1e-2, optimizer="adam",
                  seed=0, device="cpu", train_subset=None, val_fraction=0.2,
                  data_feed="DataLoader", processes=2)
    values.update(changes)
    return RunConfig(**values)


def test_a_loader_fed_run_shares_every_epoch_among_the_processes_and_repeats(
        tmp_path: Path) -> None:
    """Each process reads its DistributedSampler share of every epoch (the shares make the
    whole split, reshuffled each epoch); a rerun repeats bit for bit with ``num_workers=0``;
    validation and test are sharded, and their figures are those of the whole splits."""
    register_dataset("logged", train=LoggedFeatures(160, 0, tmp_path),
                     test=LoggedFeatures(60, 1), val=LoggedFeatures(40, 2), num_classes=3)
    data = load_dataset("logged", None, 0.2)
    assert not data.train.in_memory
    recipe = Recipe(lambda: build_mlp(6, (16,), 3))
    run = train_data_parallel(loader_config(), data, CPU, recipe)
    reads = {rank: [int(index) for index in (tmp_path / f"rank{rank}.txt").read_text().split()]
             for rank in (0, 1)}
    assert [len(indices) for indices in reads.values()] == [2 * 80, 2 * 80]
    epochs = [[reads[rank][epoch * 80:(epoch + 1) * 80] for rank in (0, 1)] for epoch in (0, 1)]
    for first, second in epochs:
        assert sorted(first + second) == list(range(160))  # disjoint shares of the whole
    assert epochs[0][0] != epochs[1][0]  # reshuffled for the second epoch
    assert run.test_accuracy > 0.8

    for log in tmp_path.glob("rank*.txt"):
        log.unlink()
    again = train_data_parallel(loader_config(), data, CPU, recipe)
    assert [int(index) for index in (tmp_path / "rank0.txt").read_text().split()] == reads[0]
    assert [figures(record) for record in again.history] == [
        figures(record) for record in run.history]
    assert (again.test_loss, again.test_accuracy) == (run.test_loss, run.test_accuracy)
    for (name, first), (_, second) in zip(run.model.state_dict().items(),
                                          again.model.state_dict().items(), strict=True):
        assert torch.equal(first, second), name

    test = score(run.model, data.test, recipe, CPU)
    val = score(run.model, data.val, recipe, CPU)
    assert (test.count, val.count) == (60, 40)
    assert (run.test_loss, run.test_accuracy) == pytest.approx((test.loss, test.accuracy),
                                                               rel=1e-6)
    last = run.history[-1]
    assert (last.val_loss, last.val_accuracy) == pytest.approx((val.loss, val.accuracy),
                                                               rel=1e-6)
    assert torch.equal(run.test_images, data.test.first(60)[0])  # what inference is timed on
    assert run.predictor(8)().shape == (8, 3)


LOADER_CONFTEST = """
import torch
import pytest_batchprof


class Features(torch.utils.data.Dataset):
    def __init__(self, count, seed):
        prototypes = torch.randn(3, 6, generator=torch.Generator().manual_seed(99)) * 2
        self.y = torch.arange(count) % 3
        self.x = prototypes[self.y] + 0.3 * torch.randn(
            count, 6, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


pytest_batchprof.register_dataset("features", train=Features(160, 0), test=Features(60, 1),
                                  val=Features(40, 2), num_classes=3)
"""

LOADER_TEST = """
import pytest


@pytest.mark.dataset("features")
def test_run(trained_mlp):
    run = trained_mlp(hidden=16, batch_size=16, lr=1e-2, data_parallel=2)
    assert run.config.data_feed == "DataLoader" and run.test_accuracy > 0.8
"""


def test_a_session_trains_a_loader_fed_set_in_two_processes(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(LOADER_CONFTEST)
    pytester.makepyfile(test_features=LOADER_TEST)
    result = pytester.runpytest(*BASE[:-1], "--batchprof-report", "report")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["batchprof: training 6-16-3 on features, batch 16, *, "
                                 "2 processes of batch 8, DataLoader"])
    (row,) = json.loads((pytester.path / "report" / "latest.json").read_text())["rows"]
    assert (row["processes"], row["data_feed"]) == (2, "DataLoader")
    assert row["latency_median_s"] > 0 and row["flops"] > 0  # measured on the test's inputs
