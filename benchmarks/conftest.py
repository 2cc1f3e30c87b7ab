"""Accuracy floors shared by the experiments, and the rule that relaxes them for quick runs.

The floors are set for the reference budget of the posts: 2 epochs of the
whole training split (110,000 samples on MNIST's 55,000-sample split). They
were tuned from real MNIST runs on this project's 2-core machine (see the
README's Results), leaving about one point for seed noise.

A run that sees fewer training samples than that budget (``--train-subset``,
``--epochs 1``) has its floor lowered by :data:`RELAX_PP_PER_HALVING`
percentage points for every halving of the samples it saw, so CI's fast mode
(``--train-subset 5000 --epochs 1``, 4.5 halvings) still checks every run.
More samples than the budget never raise the floor.
"""

from __future__ import annotations

import math

import pytest

SMALL_BATCH = 16
"""Batches below this get the small-batch floor: noisier steps, as the posts' batch 1."""

FLOORS = {
    # data set: (floor below batch 16, floor from batch 16), test accuracy
    "mnist": (0.90, 0.95),
    "fashion-mnist": (0.78, 0.83),
    "kmnist": (0.80, 0.85),
    # CIFAR-10 is much harder for these small models (MLPs reach about half its test set in
    # two epochs): a floor that catches a broken run, not a tuned one.
    "cifar10": (0.25, 0.30),
    "digits": (0.80, 0.85),
    "synthetic": (0.80, 0.85),
}

REFERENCE_EPOCHS = 2
RELAX_PP_PER_HALVING = 2.0


def floor_for(data_name: str, batch_size: int, samples_seen: int, full_train: int,
              relax_pp_per_halving: float = RELAX_PP_PER_HALVING) -> float:
    """Test accuracy a run must reach: the data set's floor, less the quick-run relaxation."""
    small, large = FLOORS[data_name]
    floor = small if batch_size < SMALL_BATCH else large
    reference = REFERENCE_EPOCHS * full_train
    halvings = max(0.0, math.log2(reference / samples_seen))
    return floor - relax_pp_per_halving * halvings / 100


@pytest.fixture
def accuracy_floor(dataset):
    """``accuracy_floor(run)``: the test accuracy ``run`` must reach (see the module docstring);
    a study whose models start slower than the MLPs passes its own ``relax_pp_per_halving``."""
    def floor(run, relax_pp_per_halving: float = RELAX_PP_PER_HALVING) -> float:
        return floor_for(dataset.name, run.config.batch_size,
                         run.samples_per_epoch * run.config.epochs, len(dataset.train),
                         relax_pp_per_halving)
    return floor
