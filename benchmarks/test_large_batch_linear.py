"""Seed 003, "Better / faster result with smaller batch size": large batches, fixed epochs.

A 784-1-10 MLP with a linear bottleneck (one hidden unit, no activation),
Adam, trained for a fixed budget of 200 epochs at the post's batch sizes of
1,000 to 20,000. At a fixed number of epochs a larger batch means fewer
optimizer steps: 55 a epoch at batch 1,000, 3 at batch 20,000. The post saw
validation accuracy fall from 52.7% to 22.8% on FashionMNIST, and read it as
an effect of the batch size; it is an effect of the number of steps.

The batch sizes are the post's, scaled by (training samples / 55,000) so that
every point keeps its steps per epoch on a smaller training set: unchanged on
the full MNIST split, a tenth of them with ``--train-subset 5500``. The study
ignores ``--batch-sizes`` and ``--epochs``::

    make bench ARGS="-m large_batch"
    make bench ARGS="-m large_batch --dataset fashion-mnist"   # the post's data set
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.large_batch

POSTS_BATCH_SIZES = (1000, 2000, 5000, 10000, 20000)
POSTS_TRAIN_SAMPLES = 55_000
"""The training split the post's batch sizes are taken relative to (ours of MNIST's 60,000)."""
EPOCHS = 200
MIN_VAL_ACCURACY = 0.15
"""Every point must beat chance (10%) clearly; the bottleneck caps accuracy far below an MLP's."""
MIN_FALL_PP = 10.0
"""Validation accuracy at the smallest batch must exceed that at the largest by this much."""


def scaled_batch_size(posts_batch: int, train_samples: int) -> int:
    """The post's batch size with its steps per epoch kept on ``train_samples``."""
    return max(1, round(posts_batch * train_samples / POSTS_TRAIN_SAMPLES))


def linear_run(trained_mlp, dataset, settings, posts_batch: int):
    train_samples = settings.train_subset or len(dataset.train)
    return trained_mlp(hidden=(1,), activation="linear", epochs=EPOCHS,
                       batch_size=scaled_batch_size(posts_batch, train_samples))


@pytest.mark.parametrize("posts_batch", POSTS_BATCH_SIZES)
def test_linear_bottleneck(trained_mlp, dataset, batchprof_settings, posts_batch):
    run = linear_run(trained_mlp, dataset, batchprof_settings, posts_batch)
    assert run.val_accuracy >= MIN_VAL_ACCURACY, run


def test_accuracy_falls_as_steps_per_epoch_fall(trained_mlp, dataset, batchprof_settings):
    runs = [linear_run(trained_mlp, dataset, batchprof_settings, batch)
            for batch in POSTS_BATCH_SIZES]
    smallest, largest = runs[0], runs[-1]
    fall_pp = (smallest.val_accuracy - largest.val_accuracy) * 100
    assert fall_pp >= MIN_FALL_PP, (
        f"val accuracy fell by {fall_pp:.1f} pp from {smallest!r} to {largest!r}")
