"""Data-parallel runs: one configuration trained by N processes with torch.distributed.

The processes are forked from the test's process (``torch.multiprocessing.start_processes``
with the ``fork`` start method), so each inherits the data set already in memory, the
model factory and the loss, with nothing to pickle, and meets the others through a
c10d TCP rendezvous on a free local port. They train with ``DistributedDataParallel``:
gloo on the CPU (each process on its share of the cores), NCCL on CUDA (one device per
process). ``batch_size`` stays the global batch: every process walks the same seeded
permutation of tensors in memory and takes its slice of each global batch (the role of
``DistributedSampler``), and the loss of a slice is weighted so that the averaged gradient
is that of the global batch's mean loss, the last short batch included; a split a
DataLoader reads is given to each process by a ``DistributedSampler``, reshuffled every
epoch. Validation and test are sharded and their sums all-reduced. With
``sync_batchnorm=True`` each process's BatchNorm layers normalise with the global batch's
statistics (:mod:`.batchnorm`). Rank 0 tells its progress and each epoch's figures, as they
come, through a queue the parent reads while it waits (so the console shows every epoch
line live, as for a run in the test's process), and hands the trained weights and
figures back through a file; the parent rebuilds the
:class:`~pytest_batchprof.engine.training.Run`.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from pytest_batchprof.engine.launch import launched_rank

if TYPE_CHECKING:
    from multiprocessing.queues import SimpleQueue

    from pytest_batchprof.data.datasets import Dataset
    from pytest_batchprof.engine.status import TrainingStatus
    from pytest_batchprof.engine.training import EpochRecord, Recipe, Run, TrainingObserver
    from pytest_batchprof.experiment.config import RunConfig

COLLECTIVE_TIMEOUT_SECONDS = 30.0
"""How long a collective (or the rendezvous) waits for a process that has stopped: a failed
rank ends the others within this bound instead of hanging the test."""


FAILURE_GRACE_SECONDS = 2.0
"""When a process fails, how long the others get to stop by themselves before SIGTERM."""
JOIN_POLL_SECONDS = 0.5
"""How often the test's process looks up from waiting (so that Ctrl-C reaches it)."""


class DataParallelError(RuntimeError):
    """A process of a data-parallel run failed; the message names its rank and its error."""


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel run."""

    rank: int
    world: int

    def bounds(self, size: int) -> tuple[int, int]:
        """This rank's slice ``[low, high)`` of a batch of ``size`` samples (the sizes of the
        ranks' slices differ by at most one)."""
        return self.rank * size // self.world, (self.rank + 1) * size // self.world

    def sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The sums of ``tensors`` over all ranks (one all-reduce)."""
        flat = torch.stack([tensor.double() for tensor in tensors])
        dist.all_reduce(flat)
        return list(flat)

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank (so that every rank decides alike)."""
        value = torch.tensor(1.0 if flag else 0.0, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())


def join_launched_group(device: torch.device) -> Shard:
    """Join the process group torchrun set up (``env://``): gloo on the CPU, NCCL on CUDA,
    with one device per local rank; this process's shard of every run."""
    rank, world = launched_rank()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))
    return Shard(rank, world)


def free_port() -> int:
    """A TCP port nothing listens on now, for the rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Relay:
    """Rank 0's observer: what its loop tells, put on the queue the parent reads."""

    def __init__(self, queue: SimpleQueue) -> None:
        self.queue = queue

    def on_progress(self, status: TrainingStatus) -> None:
        self.queue.put(("progress", status))

    def on_epoch(self, config: RunConfig, record: EpochRecord) -> None:
        self.queue.put(("epoch", record))


def _relay(queue: SimpleQueue, config: RunConfig, observer: TrainingObserver | None) -> None:
    """Hand what rank 0 has told so far to ``observer``, in its order."""
    while not queue.empty():
        kind, message = queue.get()
        if observer is None:
            continue
        if kind == "epoch":
            observer.on_epoch(config, message)
        else:
            observer.on_progress(message)


def train_data_parallel(config: RunConfig, data: Dataset, device: torch.device,
                        recipe: Recipe, observer: TrainingObserver | None = None) -> Run:
    """Train ``config`` in ``config.processes`` processes; the run as rank 0 finished it.
    ``observer`` hears rank 0's progress and epochs while the processes train."""
    import multiprocessing

    import torch.multiprocessing as mp

    from pytest_batchprof.engine.training import Run, initial_model, measured_inputs

    queue = multiprocessing.get_context("fork").SimpleQueue()  # no feeder thread to flush
    with tempfile.TemporaryDirectory(prefix="batchprof-ddp-") as folder:
        result = Path(folder) / "rank0.pt"
        context = mp.start_processes(
            _worker, args=(config, data, device, recipe, free_port(), result, queue),
            nprocs=config.processes, join=False, start_method="fork")
        try:
            _join(context, lambda: _relay(queue, config, observer))
            _relay(queue, config, observer)  # what rank 0 said last, before it ended
        except mp.ProcessRaisedException as error:
            raise DataParallelError(
                f"rank {error.error_index} of {config.processes} failed: "
                f"{_last_line(str(error))}") from None
        except mp.ProcessExitedException as error:
            raise DataParallelError(
                f"rank {error.error_index} of {config.processes} died with exit code "
                f"{error.exit_code}") from None
        figures = torch.load(result, weights_only=False)
    model, optimizer = initial_model(config, device, recipe)
    model.load_state_dict(figures.pop("model"))
    optimizer.load_state_dict(figures.pop("optimizer"))
    model.eval()
    measured, call = measured_inputs(data.test, recipe)
    return Run(config=config, model=model, optimizer=optimizer, test_images=measured,
               call=call, val_note=data.val_note, **figures)


def _join(context, poll: Callable[[], None] = lambda: None) -> None:
    """Wait for every process, calling ``poll`` every :data:`JOIN_POLL_SECONDS`; when one
    fails, the others are stopped (after :data:`FAILURE_GRACE_SECONDS`) and its error
    raised; on Ctrl-C, or any error of the waiting process itself, every process is killed
    before it propagates."""
    try:
        while not context.join(timeout=JOIN_POLL_SECONDS, grace_period=FAILURE_GRACE_SECONDS):
            poll()
    except BaseException:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
        raise


def _worker(rank: int, config: RunConfig, data: Dataset, device: torch.device,
            recipe: Recipe, port: int, result: Path, queue: SimpleQueue) -> None:
    from pytest_batchprof.engine.training import TrainingLoop

    world = config.processes
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or world) // world))
        backend = "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))
    try:
        loop = TrainingLoop(config, data.to(device), device, recipe,
                            _Relay(queue) if rank == 0 else None, shard=Shard(rank, world))
        run = loop.run()
        if rank == 0:
            torch.save({
                "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "samples_per_epoch": run.samples_per_epoch, "history": run.history,
                "train_seconds": run.train_seconds, "test_loss": run.test_loss,
                "test_accuracy": run.test_accuracy, "test_metric": run.test_metric,
                "diverged": run.diverged,
                "time_to_target": run.time_to_target, "curve": run.curve,
                "curve_seconds": run.curve_seconds, "clock": run.clock,
            }, result)
    finally:
        dist.destroy_process_group()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
