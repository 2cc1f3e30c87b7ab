"""Splits a DataLoader reads every epoch: the user's ``Dataset`` with its transforms.

At the engine: a training split registered as a ``Dataset`` is read through a DataLoader
on every epoch (its ``__getitem__`` counted), reshuffled from a generator seeded by the
run's seed, so a rerun repeats bit for bit with ``num_workers=0`` and with workers; an
``in_memory=True`` registration reads it once. In real sessions (``pytester``): an
augmenting Dataset with 0 and 2 workers, the row's feed, and the note on a validation split
cut from the training Dataset.
"""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch

from pytest_batchprof.data.datasets import (
    VAL_CUT_NOTE,
    DatasetRegistrationError,
    load_dataset,
    register_dataset,
)
from pytest_batchprof.engine.training import Recipe, train
from pytest_batchprof.experiment.config import RunConfig
from pytest_batchprof.experiment.models import build_mlp

CLASSES = 3
FEATURES = 6


class CountedFlips(torch.utils.data.Dataset):
    """Learnable features whose sign pattern a random flip of the last two features
    changes on every read (an augmentation), each read counted in shared memory (so that
    DataLoader worker processes count too)."""

    def __init__(self, count: int, seed: int, reads: multiprocessing.Value | None = None):
        prototypes = torch.randn(CLASSES, FEATURES,
                                 generator=torch.Generator().manual_seed(99)) * 2
        generator = torch.Generator().manual_seed(seed)
        self.y = torch.arange(count) % CLASSES
        self.x = prototypes[self.y] + 0.3 * torch.randn(count, FEATURES, generator=generator)
        self.reads = reads
        self.targets = self.y  # declares its classes, as torchvision's data sets do

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reads is not None:
            with self.reads.get_lock():
                self.reads.value += 1
        x = self.x[index].clone()
        if torch.rand(()) < 0.5:  # drawn from the run's seeded random state (or a worker's)
            x[-2:] = x[-2:].flip(0)
        return x, self.y[index]


@pytest.fixture
def reads() -> multiprocessing.Value:
    return multiprocessing.Value("i", 0)


def config(**changes: object) -> RunConfig:
    values = dict(dataset="flips", input_shape=(FEATURES,), hidden=(16,), num_classes=CLASSES,
                  activation="relu", batch_size=16, epochs=2, lr=1e-2, optimizer="adam",
                  seed=0, device="cpu", train_subset=None, val_fraction=0.2,
                  data_feed="DataLoader")
    values.update(changes)
    return RunConfig(**values)


def register(name: str, reads: multiprocessing.Value, **options: object) -> None:
    register_dataset(name, train=CountedFlips(160, 0, reads), test=CountedFlips(60, 1),
                     val=CountedFlips(40, 2), **options)


def trained(name: str, run_config: RunConfig):
    data = load_dataset(name, None, 0.2)
    recipe = Recipe(lambda: build_mlp(FEATURES, (16,), CLASSES))
    return data, train(run_config, data, torch.device("cpu"), recipe=recipe)


def figures(run) -> list[tuple[float, ...]]:
    return [(record.train_loss, record.train_accuracy, record.val_loss, record.val_accuracy)
            for record in run.history] + [(run.test_loss, run.test_accuracy)]


def test_a_dataset_is_read_every_epoch_and_a_rerun_repeats_bit_for_bit(reads) -> None:
    """Every training sample is read once per epoch (its transform drawn anew), and the
    same seed gives the same figures; another seed another order."""
    register("flips", reads)
    data, first = trained("flips", config())
    assert not data.train.in_memory and data.val_note is None
    before = reads.value
    _, second = trained("flips", config())
    assert reads.value - before >= 2 * 160  # two epochs of every training sample
    assert figures(first) == figures(second)
    _, other = trained("flips", config(seed=1))
    assert figures(other) != figures(first)
    assert first.test_accuracy > 0.8


def test_workers_repeat_bit_for_bit_and_read_every_epoch(reads) -> None:
    """With 2 workers, torch seeds each worker from the run's generator: the reads happen
    in the workers, every epoch, and a rerun repeats."""
    register("flips", reads, loader={"num_workers": 2, "persistent_workers": True})
    _, first = trained("flips", config(data_feed="DataLoader, 2 workers"))
    assert reads.value >= 2 * 160
    _, second = trained("flips", config(data_feed="DataLoader, 2 workers"))
    assert figures(first) == figures(second)


def test_in_memory_reads_the_dataset_once(reads) -> None:
    """``in_memory=True`` reads each item once, at registration's first use; training
    slices the tensors, with no read."""
    register("flips", reads, in_memory=True)
    data = load_dataset("flips", None, 0.2)
    assert data.train.in_memory
    read_once = reads.value
    assert read_once == 160
    train(config(data_feed="in memory"), data, torch.device("cpu"),
          recipe=Recipe(lambda: build_mlp(FEATURES, (16,), CLASSES)))
    assert reads.value == read_once


def test_a_validation_split_cut_from_a_training_dataset_is_said(reads) -> None:
    register_dataset("flips", train=CountedFlips(200, 0, reads), test=CountedFlips(60, 1))
    data = load_dataset("flips", None, 0.2)
    assert data.val_note == VAL_CUT_NOTE
    assert (len(data.train), len(data.val)) == (160, 40)


@pytest.mark.parametrize(("options", "message"), [
    ({"batch_size": 8}, "loader={'batch_size': ...} is the run's to set"),
    ({"shuffle": True}, "loader={'shuffle': ...} is the run's to set"),
    ({"workers": 2}, "loader={'workers': ...} is not a DataLoader argument"),
    ({"num_workers": -1}, "must be a whole number >= 0"),
])
def test_bad_loader_arguments_fail_the_data_set_in_one_line(options, message) -> None:
    register_dataset("flips", train=CountedFlips(50, 0), test=CountedFlips(20, 1),
                     loader=options)
    with pytest.raises(DatasetRegistrationError, match=message.replace("[", r"\[")
                       .replace("{", r"\{").replace("(", r"\(")):
        load_dataset("flips", None, 0.2)


def test_normalize_is_refused_for_a_loader_fed_set() -> None:
    register_dataset("flips", train=CountedFlips(50, 0), test=CountedFlips(20, 1),
                     normalize=True)
    with pytest.raises(DatasetRegistrationError, match="normalise in its transforms"):
        load_dataset("flips", None, 0.2)


# ---------------------------------------------------------------- sessions

CONFTEST = """
import multiprocessing

import torch
import pytest_batchprof

READS = multiprocessing.Value("i", 0)


class Flips(torch.utils.data.Dataset):
    def __init__(self, count, seed, reads=None):
        prototypes = torch.randn(3, 6, generator=torch.Generator().manual_seed(99)) * 2
        generator = torch.Generator().manual_seed(seed)
        self.y = torch.arange(count) % 3
        self.x = prototypes[self.y] + 0.3 * torch.randn(count, 6, generator=generator)
        self.reads = reads
        self.targets = self.y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        if self.reads is not None:
            with self.reads.get_lock():
                self.reads.value += 1
        x = self.x[index].clone()
        if torch.rand(()) < 0.5:
            x[-2:] = x[-2:].flip(0)
        return x, self.y[index]


pytest_batchprof.register_dataset("flips", train=Flips(160, 0, READS), test=Flips(60, 1),
                                  val=Flips(40, 2))
pytest_batchprof.register_dataset("flips2", train=Flips(160, 0, READS), test=Flips(60, 1),
                                  val=Flips(40, 2), loader={"num_workers": 2})
pytest_batchprof.register_dataset("cut", train=Flips(200, 0), test=Flips(60, 1))
"""

TESTS = """
import pytest
import conftest


@pytest.mark.dataset("flips")
def test_no_workers(trained_mlp):
    before = conftest.READS.value
    run = trained_mlp(hidden=16, batch_size=16, epochs=2, lr=1e-2)
    assert conftest.READS.value - before >= 320
    assert run.config.data_feed == "DataLoader"
    assert run.test_accuracy > 0.8


@pytest.mark.dataset("flips2")
def test_two_workers(trained_mlp):
    before = conftest.READS.value
    run = trained_mlp(hidden=16, batch_size=16, epochs=2, lr=1e-2)
    assert conftest.READS.value - before >= 320
    assert run.config.data_feed == "DataLoader, 2 workers"
    assert run.test_accuracy > 0.8


@pytest.mark.dataset("cut")
def test_cut(trained_mlp):
    trained_mlp(hidden=16, batch_size=16, epochs=1)
"""


def test_sessions_train_augmenting_datasets_with_and_without_workers(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_flips=TESTS)
    report = pytester.path / "report"
    result = pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider",
                                "-p", "no:randomly", "--batchprof-no-co2", "--device", "cpu",
                                f"--batchprof-report={report}")
    result.assert_outcomes(passed=3)
    rows = json.loads((report / "latest.json").read_text())["rows"]
    feeds = {row["dataset"]: row["data_feed"] for row in rows}
    assert feeds == {"flips": "DataLoader", "flips2": "DataLoader, 2 workers",
                     "cut": "DataLoader"}
    cut = next(row for row in rows if row["dataset"] == "cut")
    assert cut["val_note"] == VAL_CUT_NOTE
    assert VAL_CUT_NOTE in (report / "latest.md").read_text()


def test_a_run_scores_each_split_through_one_dataloader(reads, monkeypatch) -> None:
    """Validation after every epoch and the test pass read through one DataLoader per split
    and run (its persistent workers started once), not a new one at every pass."""
    from pytest_batchprof.data.loading import EVAL_LOADER_BATCH, LoaderSplit

    made = []
    real_loader = LoaderSplit.loader

    def counted(self, batch_size, **options):
        if batch_size == EVAL_LOADER_BATCH:
            made.append(len(self))
        return real_loader(self, batch_size, **options)

    monkeypatch.setattr(LoaderSplit, "loader", counted)
    register("flips", reads, loader={"num_workers": 2, "persistent_workers": True})
    _, run = trained("flips", config(epochs=3, data_feed="DataLoader, 2 workers"))
    assert len(run.history) == 3
    assert sorted(made) == [40, 60]  # the validation split's (3 passes) and the test split's


def test_a_run_ends_its_persistent_workers_when_it_ends(reads) -> None:
    """``persistent_workers=True`` keeps a DataLoader's workers between passes: the run ends
    them as it ends, so that no worker process outlives it (left to a later garbage
    collection, each took seconds to stop)."""
    import psutil

    register("flips", reads, loader={"num_workers": 2, "persistent_workers": True})
    before = {child.pid for child in psutil.Process().children()}
    _, run = trained("flips", config(data_feed="DataLoader, 2 workers"))
    assert run.test_accuracy > 0.8
    assert {child.pid for child in psutil.Process().children()} <= before
