"""Accuracy floors shared by the experiments, and the rule that relaxes them for quick runs.

The floors are set for the reference budget of the posts: 2 epochs of the
whole training split (110,000 samples on MNIST's 55,000-sample split). They
were tuned from real MNIST runs on this project's 2-core machine (see the
manual's results page), leaving about one point for seed noise.

A run that sees fewer training samples than that budget (``--train-subset``,
``--epochs 1``) has its floor lowered by :data:`RELAX_PP_PER_HALVING`
percentage points for every halving of the samples it saw, so CI's fast mode
(``--train-subset 5000 --epochs 1``, 4.5 halvings) still checks every run.
More samples than the budget never raise the floor.

It also registers the data sets of the ``pipelines`` study (``test_pipelines.py``),
built when a session first needs them: ``shapes`` and ``shapes-augmented``, the
generated images of ``shapes.py`` read by a DataLoader with two workers (the same
images, the second augmented on every read), and ``diabetes``, scikit-learn's bundled
regression set.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest

from pytest_batchprof import register_dataset

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


# ---------------------------------------------------------------- the pipelines study's data

PIPELINE_LOADER = {"num_workers": 2, "persistent_workers": True}
"""How the ``pipelines`` study's images are read: a DataLoader with two worker processes,
kept from one epoch to the next, as a CIFAR-10 training script reads its images."""


def shapes_split(part: str, augment: bool = False) -> Callable[[], object]:
    """A zero-argument callable that builds one split of the generated images of
    ``shapes.py`` (a ``Dataset``) when a session first needs them: a session that does
    not run the ``pipelines`` study never generates them."""
    def build() -> object:
        from shapes import Shapes  # this folder, on sys.path as the conftest's

        return Shapes(part, augment)
    return build


for _name, _augment in (("shapes", False), ("shapes-augmented", True)):
    register_dataset(_name, train=shapes_split("train", _augment), val=shapes_split("val"),
                     test=shapes_split("test"), num_classes=10, loader=PIPELINE_LOADER)

DIABETES_TEST, DIABETES_VAL = 90, 70
"""Samples of scikit-learn's 442-sample diabetes set held out for test and validation."""
DIABETES_SEED = 0


@functools.cache
def diabetes() -> dict[str, tuple[object, object]]:
    """scikit-learn's bundled diabetes regression set (10 features, disease progression a
    year on) in seeded train, val and test splits, features and target standardised with
    the training split's mean and standard deviation (an RMSE of 1 is the training
    targets' spread; predicting their mean scores about that)."""
    import torch
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(target, dtype=torch.float32)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIABETES_SEED))
    parts = {"test": order[:DIABETES_TEST],
             "val": order[DIABETES_TEST:DIABETES_TEST + DIABETES_VAL],
             "train": order[DIABETES_TEST + DIABETES_VAL:]}
    train = parts["train"]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    y_mean, y_std = y[train].mean(), y[train].std()
    return {part: ((x[index] - x_mean) / x_std, (y[index] - y_mean) / y_std)
            for part, index in parts.items()}


register_dataset("diabetes", train=lambda: diabetes()["train"], val=lambda: diabetes()["val"],
                 test=lambda: diabetes()["test"], task="regression")
