"""Seed 003's question on several processes: does accuracy fall as the batch grows, at a
fixed number of epochs, when the batch is spread over data-parallel processes?

The linear-bottleneck study of ``test_large_batch_linear.py`` (784-1-10, Adam,
200 epochs, the post's batch sizes scaled to the training set), each run
trained by ``DistributedDataParallel``: 2 processes of gloo on the CPU, or one
process per GPU where there are two or more. The global batch, and so the
number of optimizer steps, is the single-process study's; a session that runs
both studies shows the scaling efficiency of each pair::

    make bench ARGS="-m 'large_batch or large_batch_data_parallel'"
"""

from __future__ import annotations

import pytest
import torch
from test_large_batch_linear import (
    EPOCHS,
    MIN_FALL_PP,
    MIN_VAL_ACCURACY,
    POSTS_BATCH_SIZES,
    scaled_batch_size,
)

pytestmark = pytest.mark.large_batch_data_parallel

CPU_PROCESSES = 2


def study_processes(device: torch.device) -> int:
    """Processes of each run: every GPU (two or more), else 2 on the CPU."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count < 2:
            pytest.skip(f"data-parallel on CUDA needs two GPUs or more; this machine has "
                        f"{count}")
        return count
    return CPU_PROCESSES


def parallel_run(trained_mlp, dataset, settings, device, posts_batch: int):
    processes = study_processes(device)
    train_samples = settings.train_subset or len(dataset.train)
    batch = scaled_batch_size(posts_batch, train_samples)
    batch -= batch % processes  # the global batch divides among the processes
    return trained_mlp(hidden=(1,), activation="linear", epochs=EPOCHS, batch_size=batch,
                       data_parallel=processes)


@pytest.mark.parametrize("posts_batch", POSTS_BATCH_SIZES)
def test_linear_bottleneck_data_parallel(trained_mlp, dataset, batchprof_settings, device,
                                         posts_batch):
    run = parallel_run(trained_mlp, dataset, batchprof_settings, device, posts_batch)
    assert run.config.processes >= 2
    assert run.val_accuracy >= MIN_VAL_ACCURACY, run


def test_accuracy_falls_as_steps_per_epoch_fall_data_parallel(trained_mlp, dataset,
                                                              batchprof_settings, device):
    runs = [parallel_run(trained_mlp, dataset, batchprof_settings, device, batch)
            for batch in POSTS_BATCH_SIZES]
    smallest, largest = runs[0], runs[-1]
    fall_pp = (smallest.val_accuracy - largest.val_accuracy) * 100
    assert fall_pp >= MIN_FALL_PP, (
        f"val accuracy fell by {fall_pp:.1f} pp from {smallest!r} to {largest!r}")
