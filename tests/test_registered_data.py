"""The user's data sets (``register_dataset``) and CIFAR-10, offline.

Registered data sets are checked at two levels: :func:`load_dataset` on what
``register_dataset`` stored (shapes, splits, the data kept as given or normalised
when asked, the checks of bad input, which fail at first use), and real pytest
sessions (``pytester``, in-process) whose conftest.py registers small learnable
sets and trains MLPs and CNNs on them. CIFAR-10 is tested on a tiny copy written in
torchvision's on-disk layout.

Registrations live in a process-global dict that in-process pytester sessions
share with this one, so the autouse ``forget_registrations`` fixture (in
``tests/conftest.py``, for every module) removes every name a test (or a conftest.py
of its inner session) registered.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from session_output import assert_one_clean_error, failure_section, summary_rows

from pytest_batchprof.data.datasets import (
    Dataset,
    DatasetRegistrationError,
    DatasetUnavailable,
    catalog,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from pytest_batchprof.plugin.options import _dataset_name

BUILT_IN = "mnist, fashion-mnist, kmnist, cifar10, digits, synthetic"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = [f"data_batch_{index}" for index in range(1, 6)]


# ---------------------------------------------------------------- helpers


def learnable(shape, classes, counts=(480, 120), seed=0, noise=0.3):
    """Class prototypes plus Gaussian noise, one ``(x, y)`` per count (train, test, ...),
    every class equally often; easy to learn, reproducible through a fixed generator."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, *shape, generator=generator)
    splits = []
    for count in counts:
        labels = (torch.arange(count) % classes)[torch.randperm(count, generator=generator)]
        x = prototypes[labels] + noise * torch.randn(count, *shape, generator=generator)
        splits.append((x, labels))
    return splits


def rows_of(split_x: torch.Tensor, data: Dataset, original: torch.Tensor) -> torch.Tensor:
    """Which rows of ``original`` (as registered) a split holds, in order; every sample of
    the split must match one of them to 1e-4 (once un-normalised, if it was normalised)."""
    restored = split_x if data.mean is None else split_x * data.std + data.mean
    restored = restored.reshape(len(split_x), -1)
    distances = torch.cdist(restored.double(), original.reshape(len(original), -1).double())
    nearest, index = distances.min(dim=1)
    assert nearest.max().item() < 1e-4
    return index


def assert_same_data(first: Dataset, second: Dataset) -> None:
    for split_name in ("train", "val", "test"):
        a, b = getattr(first, split_name), getattr(second, split_name)
        assert torch.equal(a.x, b.x), split_name
        assert torch.equal(a.y, b.y), split_name
    assert (first.mean, first.std, first.num_classes) == (second.mean, second.std,
                                                          second.num_classes)


def refusal(name: str, tmp_path: Path) -> str:
    """The one line loading a data set whose registration failed raises."""
    with pytest.raises(DatasetRegistrationError) as caught:
        load_dataset(name, tmp_path, 0.1)
    text = str(caught.value)
    assert "\n" not in text
    return text


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session without CO2 metering or report files (neither is tested here);
    hypothesis's plugin is off because it re-imports hypothesis in every inner session."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider",
                              "-p", "no:randomly", "--batchprof-no-co2", "--batchprof-no-report",
                              "--device", "cpu", *args)








# ---------------------------------------------------------------- tensors, arrays and lists


def test_flat_features_are_split_and_kept_as_given(tmp_path: Path) -> None:
    (x, y), (test_x, test_y) = learnable((6,), 4, counts=(200, 50))
    x, test_x = x * 3 + 5, test_x * 3 + 5  # far from mean 0, std 1: floats are kept as given
    register_dataset("flat", (x, y), (test_x, test_y))
    data = load_dataset("flat", tmp_path, 0.1)

    assert data.name == "flat"
    assert data.sample_shape == (6,)
    assert data.image_shape is None
    assert data.input_size == 6
    assert data.num_classes == 4
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 50)
    for split in (data.train, data.val, data.test):
        assert split.x.shape == (len(split), 6)
        assert (split.x.dtype, split.y.dtype) == (torch.float32, torch.int64)
    assert data.source.startswith("registered (200 train, 50 test samples of shape (6,), "
                                  "float32 as given")
    assert (data.mean, data.std) == (None, None)
    # train and val partition the registered training samples, each with its own label ...
    train_rows, val_rows = rows_of(data.train.x, data, x), rows_of(data.val.x, data, x)
    assert sorted(torch.cat([train_rows, val_rows]).tolist()) == list(range(200))
    assert torch.equal(data.train.x, x[train_rows])
    assert torch.equal(data.train.y, y[train_rows])
    assert torch.equal(data.val.y, y[val_rows])
    # ... and the test set is the registered one, in its order, untouched.
    assert torch.equal(data.test.x, test_x)
    assert torch.equal(data.test.y, test_y)


def test_normalize_standardises_with_the_training_splits_statistics(tmp_path: Path) -> None:
    (x, y), (test_x, test_y) = learnable((6,), 4, counts=(200, 50))
    x, test_x = x * 3 + 5, test_x * 3 + 5
    register_dataset("flat", (x, y), (test_x, test_y), normalize=True)
    data = load_dataset("flat", tmp_path, 0.1)

    assert data.source.endswith(", normalised)")
    train_rows = rows_of(data.train.x, data, x)
    assert data.mean == pytest.approx(x[train_rows].mean().item(), abs=1e-5)
    assert data.std == pytest.approx(x[train_rows].std().item(), rel=1e-5)
    assert abs(data.train.x.mean().item()) < 1e-4
    assert abs(data.train.x.std().item() - 1) < 1e-4
    # the test set keeps its order and is normalised with the same (train) statistics.
    torch.testing.assert_close(data.test.x, (test_x - data.mean) / data.std)
    assert torch.equal(data.test.y, test_y)
    assert abs(data.test.x.mean().item()) > 1e-3 or abs(data.test.x.std().item() - 1) > 1e-3


def test_normalize_makes_integer_samples_float32(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (100, 3, 4), generator=generator, dtype=torch.uint8)
    register_dataset("bytes", (x, torch.arange(100) % 2), (x[:10], torch.arange(10) % 2),
                     normalize=True, val_fraction=0.5)
    data = load_dataset("bytes", tmp_path, 0.1)
    assert data.train.x.dtype == torch.float32
    train_rows = rows_of(data.train.x, data, x.float())
    assert data.mean == pytest.approx(x[train_rows].float().mean().item(), rel=1e-6)
    torch.testing.assert_close(data.test.x, (x[:10].float() - data.mean) / data.std)


def test_num_classes_is_the_largest_label_of_any_split_plus_one(tmp_path: Path) -> None:
    (x, y), (test_x, _) = learnable((3,), 3, counts=(30, 6))
    test_y = torch.tensor([0, 1, 2, 3, 4, 0])  # the test set has classes train lacks
    register_dataset("open", (x, y), (test_x, test_y))
    assert load_dataset("open", tmp_path, 0.1).num_classes == 5
    register_dataset("given", (x, y), (test_x, test_y), num_classes=9)
    assert load_dataset("given", tmp_path, 0.1).num_classes == 9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_float_targets_are_refused_at_first_use_never_made_classes(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    """Whole-number floats (a regression target such as 25 to 346) are not class indices."""
    (x, _), (test_x, test_y) = learnable((3,), 3, counts=(30, 6))
    targets = torch.linspace(25, 346, 30).round().to(dtype)
    register_dataset("floaty", (x, targets), (test_x, test_y))  # no raise in the conftest
    assert "floaty" in catalog.dataset_names()
    assert refusal("floaty", tmp_path) == (
        f"register_dataset('floaty') train: y holds {dtype} targets, and a classification "
        f"data set needs integer class indices; pass task='regression' (or 'multilabel' for 0/1 "
        f"labels per class), or cast class indices with y.long()")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_integer_labels_of_any_width_are_held_as_int64(tmp_path: Path,
                                                       dtype: torch.dtype) -> None:
    (x, y), (test_x, test_y) = learnable((3,), 3, counts=(30, 6))
    register_dataset("narrow", (x, y.to(dtype)), (test_x, test_y.to(dtype)))
    data = load_dataset("narrow", tmp_path, 0.1)
    assert data.test.y.dtype == torch.int64
    assert torch.equal(data.test.y, test_y)


def test_uint8_images_are_kept_unscaled(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (300, 7, 9), generator=generator, dtype=torch.uint8)
    test_x = torch.randint(0, 256, (40, 7, 9), generator=generator, dtype=torch.uint8)
    y, test_y = torch.arange(300) % 3, torch.arange(40) % 3
    register_dataset("grey", (x, y), (test_x, test_y))
    data = load_dataset("grey", tmp_path, 0.1)

    assert (data.sample_shape, data.image_shape, data.input_size) == ((7, 9), (7, 9), 63)
    assert (len(data.train), len(data.val), len(data.test)) == (270, 30, 40)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.uint8
    train_rows = rows_of(data.train.x, data, x)
    assert torch.equal(data.train.x, x[train_rows])
    assert torch.equal(data.test.x, test_x)


def test_token_ids_stay_int64(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 1000, (60, 12), generator=generator)
    register_dataset("tokens", (tokens, torch.arange(60) % 2), (tokens[:8], torch.arange(8) % 2))
    data = load_dataset("tokens", tmp_path, 0.1)
    assert data.sample_shape == (12,)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.int64
    assert torch.equal(data.test.x, tokens[:8])
    assert data.fingerprint() == load_dataset("tokens", tmp_path, 0.1).fingerprint()


def test_images_with_channels_keep_their_shape(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (100, 3, 5, 6), generator=generator, dtype=torch.uint8)
    test_x = torch.randint(0, 256, (20, 3, 5, 6), generator=generator, dtype=torch.uint8)
    register_dataset("colour", (x, torch.arange(100) % 2), (test_x, torch.arange(20) % 2))
    data = load_dataset("colour", tmp_path, 0.1)

    assert data.sample_shape == (3, 5, 6)
    assert data.image_shape == (5, 6)
    assert data.input_size == 90
    for split in (data.train, data.val, data.test):
        assert split.x.shape == (len(split), 3, 5, 6)
    assert torch.equal(data.test.x, test_x)


def test_numpy_arrays_and_nested_lists_give_the_same_data_set_as_tensors(tmp_path: Path) -> None:
    (x, y), (test_x, test_y) = learnable((2, 4, 4), 3, counts=(60, 15))
    register_dataset("tensors", (x, y), (test_x, test_y))
    register_dataset("arrays", (x.numpy(), y.numpy()), (test_x.numpy(), test_y.numpy()))
    register_dataset("lists", [x.tolist(), y.tolist()], [test_x.tolist(), test_y.tolist()])
    register_dataset("narrow-labels", (x.numpy(), y.numpy().astype(np.int32)),
                     (test_x.numpy(), test_y.numpy().astype(np.uint8)))
    expected = load_dataset("tensors", tmp_path, 0.1)
    for name in ("arrays", "lists", "narrow-labels"):
        data = load_dataset(name, tmp_path, 0.1)
        assert data.name == name
        assert_same_data(data, expected)


def test_float64_arrays_stay_float64(tmp_path: Path) -> None:
    (x, y), (test_x, test_y) = learnable((5,), 3, counts=(60, 15))
    register_dataset("doubles", (x.double().numpy(), y.numpy()),
                     (test_x.double().numpy(), test_y.numpy()))
    data = load_dataset("doubles", tmp_path, 0.1)
    assert data.test.x.dtype == torch.float64
    assert torch.equal(data.test.x, test_x.double())


def test_splits_of_different_dtypes_are_refused(tmp_path: Path) -> None:
    (x, y), (test_x, test_y) = learnable((5,), 3, counts=(60, 15))
    register_dataset("mixed", (x, y), (test_x.double().numpy(), test_y.numpy()))
    assert refusal("mixed", tmp_path) == (
        "register_dataset('mixed'): test samples are torch.float64, train samples "
        "torch.float32; give every split one dtype (the model sees them as given)")


def test_uint8_numpy_images_are_kept_as_tensors_are(tmp_path: Path) -> None:
    images = np.random.default_rng(3).integers(0, 256, size=(50, 4, 4), dtype=np.uint8)
    labels = np.arange(50) % 2
    register_dataset("tensor-bytes", (torch.from_numpy(images), torch.from_numpy(labels)),
                     (torch.from_numpy(images[:10]), torch.from_numpy(labels[:10])))
    register_dataset("array-bytes", (images, labels), (images[:10], labels[:10]))
    data = load_dataset("array-bytes", tmp_path, 0.1)
    assert_same_data(data, load_dataset("tensor-bytes", tmp_path, 0.1))
    assert data.test.x.dtype == torch.uint8


def test_a_given_validation_set_is_used_as_it_is(tmp_path: Path) -> None:
    (x, y), (val_x, val_y), (test_x, test_y) = learnable((5,), 3, counts=(90, 30, 20))
    register_dataset("with-val", (x, y), (test_x, test_y), val=(val_x, val_y))
    data = load_dataset("with-val", tmp_path, 0.1)

    assert (len(data.train), len(data.val), len(data.test)) == (90, 30, 20)
    assert torch.equal(data.train.x, x)
    assert torch.equal(data.val.x, val_x)
    assert torch.equal(data.train.y, y)
    assert torch.equal(data.val.y, val_y)
    register_dataset("normalised-val", (x, y), (test_x, test_y), val=(val_x, val_y),
                     normalize=True)
    data = load_dataset("normalised-val", tmp_path, 0.1)
    assert data.mean == pytest.approx(x.mean().item(), abs=1e-6)  # all of train, no split
    torch.testing.assert_close(data.train.x, (x - data.mean) / data.std)
    torch.testing.assert_close(data.val.x, (val_x - data.mean) / data.std)


@pytest.mark.parametrize("session_fraction", [0.1, 0.5])
def test_a_registered_val_fraction_overrides_the_sessions(
    tmp_path: Path, session_fraction: float
) -> None:
    (x, y), test = learnable((5,), 3, counts=(200, 20))
    register_dataset("quarter", (x, y), test, val_fraction=0.25)
    data = load_dataset("quarter", tmp_path, session_fraction)
    assert (len(data.train), len(data.val)) == (150, 50)


def test_registering_a_name_again_replaces_its_data(tmp_path: Path) -> None:
    first_train, first_test = learnable((4,), 2, counts=(40, 10))
    second_train, second_test = learnable((6,), 3, counts=(60, 12), seed=1)
    register_dataset("again", first_train, first_test)
    assert load_dataset("again", tmp_path, 0.1).sample_shape == (4,)
    register_dataset("again", second_train, second_test)
    data = load_dataset("again", tmp_path, 0.1)
    assert data.sample_shape == (6,)
    assert data.num_classes == 3
    assert (len(data.train) + len(data.val), len(data.test)) == (60, 12)
    assert catalog.dataset_names().count("again") == 1


def test_registered_names_follow_the_built_in_ones_until_unregistered() -> None:
    train, test = learnable((2,), 2, counts=(10, 4))
    register_dataset("later", train, test)
    register_dataset("latest", train, test)
    assert catalog.dataset_names() == (*BUILT_IN.split(", "), "later", "latest")
    unregister_dataset("later")
    unregister_dataset("never-registered")  # no error
    assert catalog.dataset_names() == (*BUILT_IN.split(", "), "latest")


def test_a_registered_set_takes_no_options(tmp_path: Path) -> None:
    register_dataset("plain", *learnable((2,), 2, counts=(10, 4)))
    with pytest.raises(ValueError, match=r"data set plain was registered with its data and "
                                         r"takes no options \(got size\)"):
        load_dataset("plain", tmp_path, 0.1, {"size": 3})


# ---------------------------------------------------------------- torch.utils.data.Dataset


class Pairs(torch.utils.data.Dataset):
    """A map-style dataset of ``(x, y)`` pairs, y a plain int; counts the items read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, length: int | None = None) -> None:
        self.x, self.y = x, y
        self.length = len(y) if length is None else length
        self.reads = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        self.reads += 1
        return self.x[index % len(self.x)], int(self.y[index % len(self.y)])


def test_a_torch_dataset_is_read_into_the_same_tensors(tmp_path: Path) -> None:
    (x, y), (test_x, test_y) = learnable((3, 4, 4), 3, counts=(90, 21))
    register_dataset("direct", (x, y), (test_x, test_y))
    register_dataset("custom", Pairs(x, y), Pairs(test_x, test_y), in_memory=True)
    register_dataset("tensor-dataset", torch.utils.data.TensorDataset(x, y),
                     torch.utils.data.TensorDataset(test_x, test_y), in_memory=True)
    register_dataset("mixed", torch.utils.data.TensorDataset(x, y), (test_x, test_y),
                     val=Pairs(test_x[:9], test_y[:9]), in_memory=True)
    expected = load_dataset("direct", tmp_path, 0.1)
    for name in ("custom", "tensor-dataset"):
        assert_same_data(load_dataset(name, tmp_path, 0.1), expected)
    mixed = load_dataset("mixed", tmp_path, 0.1)
    assert (len(mixed.train), len(mixed.val)) == (90, 9)


def test_a_torch_dataset_of_uint8_images_is_kept_unscaled(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (40, 6, 6), generator=generator, dtype=torch.uint8)
    y = torch.arange(40) % 2
    register_dataset("bytes", (x, y), (x[:8], y[:8]))
    register_dataset("byte-dataset", torch.utils.data.TensorDataset(x, y),
                     torch.utils.data.TensorDataset(x[:8], y[:8]), in_memory=True)
    data = load_dataset("byte-dataset", tmp_path, 0.1)
    assert_same_data(data, load_dataset("bytes", tmp_path, 0.1))
    assert data.train.x.dtype == torch.uint8


class Unpaired(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.zeros(3)


class Triples(Unpaired):
    def __getitem__(self, index: int):
        return torch.zeros(3), 0, "extra"


class Lengthless(torch.utils.data.Dataset):
    def __getitem__(self, index: int):
        return torch.zeros(3), 0


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(3), 0


class Ragged(Unpaired):
    def __getitem__(self, index: int):
        return torch.zeros(5 if index == 2 else 3), index % 2


class Empty(Unpaired):
    def __len__(self) -> int:
        return 0


class Broken(Unpaired):
    def __getitem__(self, index: int):
        raise FileNotFoundError(f"image-{index}.png")


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (Unpaired(), "item 0 is a Tensor; the dataset must give (x, y) pairs"),
        (Triples(), "item 0 is a tuple; the dataset must give (x, y) pairs"),
        (Lengthless(), "the dataset has no len(); give a map-style torch.utils.data.Dataset"),
        (Stream(), "the dataset has no len()"),
        (Ragged(), "item 2 has shape (5,), item 0 (3,); every sample must have one shape"),
        (Empty(), "the dataset is empty"),
        (Broken(), "reading item 0 failed (FileNotFoundError: image-0.png)"),
    ],
    ids=["not-pairs", "triples", "no-len", "iterable", "ragged", "empty", "broken"],
)
@pytest.mark.parametrize("part", ["train", "test"])
def test_a_bad_torch_dataset_fails_at_first_use_naming_its_split(
    split: torch.utils.data.Dataset, message: str, part: str, tmp_path: Path
) -> None:
    good = (torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
    splits = {"train": good, "test": good, part: split}
    register_dataset("name", splits["train"], splits["test"], in_memory=True)
    text = refusal("name", tmp_path)
    assert text.startswith(f"register_dataset('name') {part}: {message}"), text


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (Unpaired(), "item 0 is a Tensor; the dataset must give (x, y) pairs, (x1, ..., y) "
                     "tuples or mappings with 'labels'"),
        (Lengthless(), "the dataset has no len(); give a map-style torch.utils.data.Dataset"),
        (Empty(), "the dataset is empty"),
        (Broken(), "reading item 0 failed (FileNotFoundError: image-0.png)"),
    ],
    ids=["not-pairs", "no-len", "empty", "broken"],
)
def test_a_bad_dataset_read_by_a_dataloader_fails_at_first_use(
    split: torch.utils.data.Dataset, message: str, tmp_path: Path
) -> None:
    """A DataLoader-fed Dataset (the default) is checked on its first item at first use."""
    register_dataset("name", split, (torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])),
                     num_classes=2)
    text = refusal("name", tmp_path)
    assert text.startswith(f"register_dataset('name') train: {message}"), text


def test_a_dataloader_fed_dataset_declares_its_classes(tmp_path: Path) -> None:
    """Counting the classes of a Dataset a DataLoader reads would read every sample: it
    declares them (``classes``, ``targets``) or ``num_classes=`` gives them."""
    (x, y), (test_x, test_y) = learnable((3,), 3, counts=(30, 9))
    register_dataset("undeclared", Pairs(x, y), Pairs(test_x, test_y))
    assert "pass num_classes=" in refusal("undeclared", tmp_path)
    register_dataset("given", Pairs(x, y), Pairs(test_x, test_y), num_classes=3)
    assert load_dataset("given", tmp_path, 0.1).num_classes == 3
    declared = Pairs(x, y)
    declared.targets = y.tolist()
    register_dataset("targets", declared, Pairs(test_x, test_y))
    assert load_dataset("targets", tmp_path, 0.1).num_classes == 3


def test_a_torch_dataset_too_large_for_memory_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import psutil  # _read_dataset imports it on use, so the patched function is what it calls

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2**30))
    huge = Pairs(torch.zeros(1, 3, 32, 32), torch.zeros(1), length=1_000_000)  # 11.4 GiB
    register_dataset("huge", huge, (torch.zeros(2, 3, 32, 32), torch.tensor([0, 1])),
                     in_memory=True)
    assert huge.reads <= 2  # it looked at one sample, not all of them
    message = refusal("huge", tmp_path)
    assert message.startswith("register_dataset('huge') train: 1,000,000 samples of shape "
                              "(3, 32, 32) take 11.4 GiB as float32")
    assert "1.0 GiB of memory available" in message


@pytest.mark.parametrize(
    "item",
    [
        pytest.param(lambda index: (torch.zeros(3), torch.tensor([1.0, 0.0])), id="one-hot"),
        pytest.param(lambda index: (torch.zeros(3), "cat"), id="string-label"),
        pytest.param(lambda index: (object(), 0), id="object-sample"),
        # what a torchvision data set gives without a transform
        pytest.param(lambda index: (Image.fromarray(np.zeros((4, 4), np.uint8)), 0),
                     id="pil-image"),
    ],
)
def test_a_torch_dataset_of_unusable_items_fails_at_first_use(item, tmp_path: Path) -> None:
    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int):
            return item(index)

    register_dataset("name", Items(), (torch.zeros(2, 3), torch.tensor([0, 1])))
    assert refusal("name", tmp_path).startswith("register_dataset('name') train: ")


# ---------------------------------------------------------------- bad input


def _good() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _with_nan() -> torch.Tensor:
    x = torch.rand(8, 3)
    x[5, 1] = float("nan")
    return x


BAD_NAMES = [
    ("built-in", "mnist",
     "register_dataset('mnist'): mnist is a built-in data set; choose another name"),
    ("empty-name", "", "register_dataset(name=''): give a non-empty name"),
    ("comma", "a,b", "register_dataset(name='a,b'): give a non-empty name"),
    ("padded-name", " toy", "register_dataset(name=' toy'): give a non-empty name"),
    ("not-a-name", 3, "register_dataset(name=3): give a non-empty name"),
]


@pytest.mark.parametrize(("name", "message"), [case[1:] for case in BAD_NAMES],
                         ids=[case[0] for case in BAD_NAMES])
def test_a_name_that_cannot_name_a_data_set_raises_at_once(name: object, message: str) -> None:
    """No test can ask for such a name, so there is no test to fail instead."""
    before = dict(catalog.REGISTERED)
    with pytest.raises(ValueError) as caught:
        register_dataset(name, _good(), _good())
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text
    assert before == catalog.REGISTERED  # nothing registered


BAD_INPUT = [
    ("x-5d", dict(train=(torch.zeros(8, 1, 2, 2, 2), _good()[1])),
     "register_dataset('bad') train: x has shape (8, 1, 2, 2, 2); expected (N, D) features"),
    ("x-1d", dict(test=(torch.zeros(8), _good()[1])),
     "register_dataset('bad') test: x has shape (8,); expected (N, D) features"),
    ("y-2d", dict(train=(torch.zeros(8, 3), torch.zeros(8, 1, dtype=torch.long))),
     "register_dataset('bad') train: y has shape (8, 1); a classification data set needs one "
     "class index per sample (N,)"),
    ("y-length", dict(test=(torch.zeros(8, 3), torch.zeros(7, dtype=torch.long))),
     "register_dataset('bad') test: y has shape (7,); expected 8 targets, one per sample"),
    ("no-samples", dict(train=(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))),
     "register_dataset('bad') train: has no samples"),
    ("negative-label", dict(train=(torch.zeros(8, 3), torch.tensor([0, 1, -1, 0, 1, 2, 0, 1]))),
     "register_dataset('bad') train: a label is -1; labels must be 0 or more"),
    ("fractional-labels", dict(train=(torch.zeros(8, 3), torch.linspace(0, 2, 8))),
     "register_dataset('bad') train: y holds torch.float32 targets, and a classification "
     "data set needs integer class indices; pass task='regression' (or 'multilabel' for 0/1 "
     "labels per class), or cast class indices with y.long()"),
    ("bool-labels", dict(test=(torch.zeros(8, 3), torch.arange(8) % 2 == 0)),
     "register_dataset('bad') test: y holds torch.bool values; give integer class indices"),
    ("bool-samples", dict(train=(torch.zeros(8, 3, dtype=torch.bool), _good()[1])),
     "register_dataset('bad') train: x holds torch.bool values; give real numbers"),
    ("normalize-not-bool", dict(normalize="yes"),
     "register_dataset('bad', normalize='yes'): give True (standardise as the built-in data "
     "sets) or False (keep as given)"),
    ("nan", dict(train=(_with_nan(), _good()[1])),
     "register_dataset('bad') train: x holds NaN or infinite values"),
    ("inf", dict(val=(torch.full((8, 3), float("inf")), _good()[1])),
     "register_dataset('bad') val: x holds NaN or infinite values"),
    ("ragged-lists", dict(train=([[0.0, 1.0], [2.0]], [0, 1])),
     "register_dataset('bad') train: cannot be made into tensors (ValueError: "),
    ("test-shape", dict(test=(torch.zeros(8, 4), _good()[1])),
     "register_dataset('bad'): test samples have shape (4,), train samples (3,)"),
    ("val-shape", dict(val=(torch.zeros(8, 3, 1), _good()[1])),
     "register_dataset('bad'): val samples have shape (3, 1), train samples (3,)"),
    ("label-too-large", dict(num_classes=2),
     "register_dataset('bad', num_classes=2): a label is 2; labels must be 0 to num_classes - 1"),
    ("one-class", dict(train=(torch.zeros(8, 3), torch.zeros(8, dtype=torch.long)),
                       test=(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))),
     "register_dataset('bad'): every label is 0; a classifier needs at least two classes"),
    ("val-and-fraction", dict(val=_good(), val_fraction=0.2),
     "register_dataset('bad'): give val or val_fraction, not both"),
    ("fraction-too-large", dict(val_fraction=1.5),
     "register_dataset('bad', val_fraction=1.5): give a fraction between 0 and 1"),
    ("fraction-zero", dict(val_fraction=0),
     "register_dataset('bad', val_fraction=0): give a fraction between 0 and 1"),
    ("dict-split", dict(train={"x": torch.zeros(8, 3), "y": _good()[1]}),
     "register_dataset('bad') train: give (x, y) or a torch.utils.data.Dataset of (x, y) pairs, "
     "not a dict"),
    ("triple-split", dict(test=(*_good(), None)),
     "register_dataset('bad') test: give (x, y) or a torch.utils.data.Dataset of (x, y) pairs, "
     "not a tuple"),
]


@pytest.mark.parametrize(("changes", "message"), [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_input_fails_at_first_use_with_one_line(
    changes: dict[str, object], message: str, tmp_path: Path
) -> None:
    arguments: dict[str, object] = dict(name="bad", train=_good(), test=_good())
    arguments.update(changes)
    register_dataset(**arguments)  # never raises in a conftest: that would stop every test
    assert "bad" in catalog.dataset_names()  # the option and the marker still know the name
    text = refusal("bad", tmp_path)
    assert text.startswith(message), text
    assert isinstance(DatasetRegistrationError(text), ValueError)


def test_registering_a_failed_name_again_with_good_data_replaces_the_failure(
        tmp_path: Path) -> None:
    register_dataset("again", (torch.zeros(8, 3), torch.zeros(8)), _good())
    refusal("again", tmp_path)
    register_dataset("again", _good(), _good())
    assert load_dataset("again", tmp_path, 0.1).num_classes == 3


@pytest.mark.parametrize("changes", [dict(num_classes=3.5), dict(num_classes="3"),
                                     dict(val_fraction="0.2")],
                         ids=["float-classes", "str-classes", "str-fraction"])
def test_wrongly_typed_numbers_fail_at_first_use(changes: dict[str, object],
                                                 tmp_path: Path) -> None:
    argument = next(iter(changes))
    register_dataset("bad", _good(), _good(), **changes)
    assert refusal("bad", tmp_path).startswith(f"register_dataset('bad', {argument}=")


def test_a_built_in_name_in_another_case_cannot_mean_two_data_sets() -> None:
    try:
        register_dataset("MNIST", *learnable((2,), 2, counts=(10, 4)))
    except ValueError:
        return  # refused, as the lower-case name is: one name, one data set
    # Or, if it is allowed, the option must select it as the marker does.
    assert _dataset_name("MNIST") == "MNIST"


# ---------------------------------------------------------------- sessions


CONFTEST = (
    "import torch\n\nimport pytest_batchprof\n\n\n" + inspect.getsource(learnable) + """

(FLAT_X, FLAT_Y), FLAT_TEST = learnable((12,), 4, counts=(480, 120), seed=0)
pytest_batchprof.register_dataset("toy-flat", (FLAT_X, FLAT_Y), FLAT_TEST, num_classes=5)
NCHW_TRAIN, NCHW_TEST = learnable((3, 8, 8), 4, counts=(480, 120), seed=1)
pytest_batchprof.register_dataset("toy-nchw", NCHW_TRAIN, NCHW_TEST)
"""
)


@pytest.fixture
def registering_conftest(pytester: pytest.Pytester) -> pytest.Pytester:
    """An inner project whose conftest.py registers toy-flat (12 features, 4 classes used of
    num_classes=5) and toy-nchw (3x8x8 images, 4 classes)."""
    pytester.makeconftest(CONFTEST)
    return pytester


def test_registered_sets_train_mlps_and_cnns_into_the_summary(
    registering_conftest: pytest.Pytester,
) -> None:
    registering_conftest.makepyfile(
        """
        import pytest

        import pytest_batchprof

        def test_mlp_on_images(trained_model, batch_size, dataset):
            run = trained_model(pytest_batchprof.mlp(32), lr=0.01)
            assert (dataset.name, dataset.sample_shape) == ("toy-nchw", (3, 8, 8))
            assert (run.name, run.config.dataset) == ("192-32-4", "toy-nchw")
            assert len(run.history) == 2
            assert run.test_accuracy >= 0.8, run.test_accuracy

        def test_cnn_on_images(trained_model, batch_size):
            run = trained_model(pytest_batchprof.cnn(channels=(4,), hidden=(16,)), lr=0.01)
            assert run.name.startswith("c4-16-4")
            assert run.test_accuracy >= 0.8, run.test_accuracy

        @pytest.mark.dataset("toy-flat")
        def test_mlp_on_features(trained_model, batch_size, dataset):
            run = trained_model(pytest_batchprof.mlp(32), lr=0.01)
            assert (dataset.name, dataset.sample_shape, dataset.image_shape) == (
                "toy-flat", (12,), None)
            assert dataset.num_classes == 5
            assert run.name == "12-32-5"
            assert run.test_accuracy >= 0.8, run.test_accuracy
        """
    )
    result = run(registering_conftest, "--dataset", "toy-nchw", "--batch-sizes", "16,64",
                 "--epochs", "2")
    result.assert_outcomes(passed=6)
    rows = summary_rows(result)
    seen = {(row["model"].split(" ")[0], row["data set"], row["batch"]) for row in rows}
    assert seen == {
        (model, data_set, batch)
        for model, data_set in (("192-32-4", "toy-nchw"), ("c4-16-4", "toy-nchw"),
                                ("12-32-5", "toy-flat"))
        for batch in ("16", "64")
    }, rows


PICKED = """
    import json
    from pathlib import Path

    {marker}
    def test_pick(dataset, trained_mlp):
        run = trained_mlp(hidden=8)
        Path("picked.json").write_text(json.dumps({{
            "dataset": dataset.name, "run": run.config.dataset, "train": len(dataset.train),
            "shape": list(dataset.sample_shape), "model": run.name,
        }}))
"""


@pytest.mark.parametrize(
    ("args", "ini", "marker"),
    [
        (["--dataset", "toy-flat"], None, ""),
        (["--batchprof-dataset", "toy-flat"], None, ""),
        ([], "[pytest]\nbatchprof_dataset = toy-flat\n", ""),
        # --dataset mnist is absent (empty data dir): the marker's data set replaces it.
        (["--dataset", "mnist"], None, "import pytest\n@pytest.mark.dataset('toy-flat')"),
    ],
    ids=["short-option", "long-option", "ini", "marker"],
)
def test_every_spelling_selects_the_registered_set(
    registering_conftest: pytest.Pytester, args: list[str], ini: str | None, marker: str
) -> None:
    if ini is not None:
        registering_conftest.makeini(ini)
    registering_conftest.makepyfile(PICKED.format(marker=marker.replace("\n", "\n    ")))
    result = run(registering_conftest, *args, "--batch-sizes", "16", "--epochs", "1")
    result.assert_outcomes(passed=1)
    picked = json.loads((registering_conftest.path / "picked.json").read_text())
    assert picked == {"dataset": "toy-flat", "run": "toy-flat", "train": 480 - 40,
                      "shape": [12], "model": "12-8-5"}


def test_an_unknown_data_set_lists_the_registered_ones(
    registering_conftest: pytest.Pytester,
) -> None:
    registering_conftest.makepyfile(
        """
        def test_x(dataset):
            pass
        """
    )
    line = assert_one_clean_error(run(registering_conftest, "--dataset", "unknown"))
    assert line.startswith("ERROR: --dataset ")
    assert "'unknown'" in line
    assert f"{BUILT_IN}, toy-flat, toy-nchw" in line
    assert "register_dataset" in line


def test_options_of_a_registered_set_are_a_usage_error(
    registering_conftest: pytest.Pytester,
) -> None:
    registering_conftest.makepyfile(
        test_marker="""
        from pathlib import Path

        import pytest

        @pytest.mark.dataset("toy-flat", size=3)
        def test_x(dataset):
            Path("ran-x").touch()
        """
    )
    line = assert_one_clean_error(run(registering_conftest, "--dataset", "toy-nchw"))
    assert fnmatch.fnmatchcase(
        line, "ERROR: data set toy-flat was registered with its data and takes no options "
              "(got size)*"), line
    assert not list(registering_conftest.path.glob("ran-*"))


# ---------------------------------------------------------------- CIFAR-10


def write_cifar(root: Path, per_batch: int = 40, test_count: int = 50, seed: int = 0) -> (
        dict[str, np.ndarray]):
    """A tiny CIFAR-10 in torchvision's layout ``root/cifar-10-batches-py/``: pickled dicts
    whose ``data`` is uint8 (N, 3072), each row 1024 red, then 1024 green, then 1024 blue
    bytes of a 32x32 image (row-major), and ``labels`` a list of ints; plus ``batches.meta``.

    Class k is a bright 8x8 square at place k of a 4x4 grid, in colour channel k % 3, over
    dim noise: learnable. Returns the arrays: ``train_data`` / ``train_labels`` in file order
    (batch 1 to 5), ``test_data`` / ``test_labels``.
    """
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True)

    def batch(file_name: str, count: int) -> tuple[np.ndarray, list[int]]:
        labels = [int(label) for label in rng.permutation(np.arange(count) % 10)]
        images = rng.integers(0, 60, size=(count, 3, 32, 32))
        for image, label in zip(images, labels, strict=True):
            row, col = divmod(label, 4)
            image[label % 3, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 180
        data = images.astype(np.uint8).reshape(count, 3072)
        with open(folder / file_name, "wb") as file:
            pickle.dump({"batch_label": file_name, "labels": labels, "data": data,
                         "filenames": [f"{file_name}-{index}.png" for index in range(count)]},
                        file)
        return data, labels

    written = [batch(file_name, per_batch) for file_name in CIFAR_TRAIN_FILES]
    test_data, test_labels = batch("test_batch", test_count)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"],
                     "num_cases_per_batch": per_batch, "num_vis": 3072}, file)
    return {
        "train_data": np.concatenate([data for data, _ in written]),
        "train_labels": np.array([label for _, labels in written for label in labels]),
        "test_data": test_data,
        "test_labels": np.array(test_labels),
    }


@pytest.fixture
def cifar_checks_files_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks every CIFAR-10 file against the real one's MD5, which generated files
    cannot pass; both CIFAR10._check_integrity and CIFAR10._load_meta (batches.meta) call
    cifar.check_integrity, so that is replaced by "the file exists"."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))


@pytest.mark.usefixtures("cifar_checks_files_exist")
def test_cifar10_loads_colour_images_in_channel_first_order(hermetic: Path) -> None:
    written = write_cifar(hermetic)
    data = load_dataset("cifar10", hermetic, 0.1)

    assert data.name == "cifar10"
    assert data.source == str(hermetic / CIFAR_FOLDER)
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 50)
    assert data.sample_shape == (3, 32, 32)
    assert data.image_shape == (32, 32)
    assert data.num_classes == 10
    for split in (data.train, data.val, data.test):
        assert split.x.shape == (len(split), 3, 32, 32)
        assert (split.x.dtype, split.y.dtype) == (torch.float32, torch.int64)
    assert 0 <= data.mean <= 1
    assert abs(data.train.x.mean().item()) < 1e-4

    # One pixel: test image 7, green (the second 1024 bytes of its row), row 5, column 19.
    byte = int(written["test_data"][7, 1024 + 5 * 32 + 19])
    assert data.test.x[7, 1, 5, 19].item() == pytest.approx((byte / 255 - data.mean) / data.std,
                                                            abs=1e-5)
    # Every pixel of the test set, which keeps the file's order, and its labels.
    expected = torch.from_numpy(written["test_data"]).float().div(255).reshape(50, 3, 32, 32)
    torch.testing.assert_close(data.test.x * data.std + data.mean, expected, rtol=0, atol=1e-5)
    assert torch.equal(data.test.y, torch.from_numpy(written["test_labels"]).long())
    # train + val are the five training batches, every image with its own label.
    images = torch.from_numpy(written["train_data"]).float().div(255).reshape(200, 3, 32, 32)
    train_rows, val_rows = rows_of(data.train.x, data, images), rows_of(data.val.x, data, images)
    assert sorted(torch.cat([train_rows, val_rows]).tolist()) == list(range(200))
    labels = torch.from_numpy(written["train_labels"]).long()
    assert torch.equal(data.train.y, labels[train_rows])
    assert torch.equal(data.val.y, labels[val_rows])


@pytest.mark.usefixtures("cifar_checks_files_exist")
def test_cifar10_session_trains_a_lenet(pytester: pytest.Pytester, hermetic: Path) -> None:
    write_cifar(hermetic)
    pytester.makepyfile(
        """
        import pytest_batchprof

        def test_lenet(trained_model, dataset):
            run = trained_model(pytest_batchprof.cnn())
            assert dataset.name == "cifar10"
            assert dataset.sample_shape == (3, 32, 32)
            assert run.config.dataset == "cifar10"
            assert run.name.startswith("c6-c16-120-84-10")
            assert len(run.history) == 1
            assert run.test_accuracy is not None
        """
    )
    result = run(pytester, "--dataset", "cifar10", "--batchprof-data-dir", str(hermetic),
                 "--batch-sizes", "16", "--epochs", "1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["batchprof: training c6-c16-120-84-10* on cifar10, batch 16, "
                                 "1 epoch, *"])
    assert [row["data set"] for row in summary_rows(result)] == ["cifar10"]


@pytest.mark.parametrize("present", [[], ["data_batch_1", "test_batch", "batches.meta"]],
                         ids=["empty", "partial"])
@pytest.mark.usefixtures("cifar_checks_files_exist")
def test_missing_cifar10_files_are_unavailable_without_downloads(
    hermetic: Path, present: list[str]
) -> None:
    folder = hermetic / CIFAR_FOLDER
    if present:
        write_cifar(hermetic, per_batch=2, test_count=2)
        for path in folder.iterdir():
            if path.name not in present:
                path.unlink()
    with pytest.raises(DatasetUnavailable) as caught:
        load_dataset("cifar10", hermetic, 0.1)
    message = str(caught.value)
    assert message.startswith(f"CIFAR10 is not in {folder} and could not be downloaded "
                              f"(OSError: downloads are disabled in the test suite)")
    assert f"holds {CIFAR_FOLDER}/" in message
    assert "\n" not in message


def test_missing_cifar10_stops_the_session_once(pytester: pytest.Pytester, hermetic: Path) -> None:
    pytester.makepyfile(
        """
        from pathlib import Path

        def test_a(dataset):
            Path("ran-a").touch()
        """
    )
    line = assert_one_clean_error(run(pytester, "--dataset", "cifar10", "--batchprof-data-dir",
                                      str(hermetic)))
    assert line.startswith(f"ERROR: CIFAR10 is not in {hermetic / CIFAR_FOLDER}")
    assert not list(pytester.path.glob("ran-*"))


# ---------------------------------------------------------------- built on first use


LAZY_CONFTEST = """
import torch
import pytest_batchprof

BUILT = []


def features(count, seed):
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % 2
    return torch.randn(count, 4, generator=generator) + 2 * y[:, None], y


def train():
    BUILT.append("train")
    return features(200, 0)


def broken():
    raise OSError("the share is not mounted")


pytest_batchprof.register_dataset("lazy", train=train, test=lambda: features(40, 1))
pytest_batchprof.register_dataset("unreachable", train=broken, test=features(40, 1))
"""

LAZY_TESTS = """
import pytest
import conftest


def test_nothing_built():
    assert conftest.BUILT == []  # importing the conftest built nothing


def test_unit():
    pass


@pytest.mark.dataset("lazy")
def test_lazy(trained_mlp):
    run = trained_mlp(hidden=8, batch_size=20)
    assert run.test_accuracy > 0.6


@pytest.mark.dataset("lazy")
def test_lazy_again(trained_mlp):
    trained_mlp(hidden=8, batch_size=40)
    assert conftest.BUILT == ["train"]  # built once, when a test first needed it


@pytest.mark.dataset("unreachable")
def test_unreachable(trained_mlp):
    trained_mlp(hidden=8, batch_size=20)
"""


def test_a_split_given_as_a_callable_is_built_on_first_use(pytester: pytest.Pytester) -> None:
    """A zero-argument callable in place of a split is called once, when the session first
    needs the data set (after collection, as every data set its selected tests use), and
    never in a session whose tests do not use it, nor by importing the conftest; a build that
    raises fails the tests of that data set with one line while the rest run."""
    pytester.makeconftest(LAZY_CONFTEST)
    pytester.makepyfile(test_lazy=LAZY_TESTS)
    result = run(pytester, "--epochs", "1", "-k", "not nothing_built")
    result.assert_outcomes(passed=3, failed=1)
    assert failure_section(result, "test_unreachable") == [
        "register_dataset('unreachable') train: building it failed: OSError: the share is not "
        "mounted"]
    unused = run(pytester, "--epochs", "1", "-k", "unit or nothing_built")
    unused.assert_outcomes(passed=2)


OWN_DATA_TESTS = """
from pathlib import Path

from torch import nn


def test_own(trained_model):
    Path("ran-own").touch()
    run = trained_model(lambda: nn.Linear(4, 2), dataset="lazy", batch_size=20, epochs=1)
    assert run.config.dataset == "lazy"
"""


def test_a_test_training_on_its_own_data_set_needs_no_default_one(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A test that passes ``dataset=`` to ``trained_model`` is not stopped for want of the
    session's default data set (MNIST, absent from an empty data directory): nothing loads
    it on a guess. Chosen with ``--dataset``, the session's data set is loaded before the
    tests, and a missing one stops the session once, as for a test that uses it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    pytester.makeconftest(LAZY_CONFTEST)
    pytester.makepyfile(test_own=OWN_DATA_TESTS)
    result = run(pytester, "--batchprof-data-dir", str(empty))
    result.assert_outcomes(passed=1)
    assert [row["data set"] for row in summary_rows(result)] == ["lazy"]
    (pytester.path / "ran-own").unlink()

    chosen = run(pytester, "--dataset", "mnist", "--batchprof-data-dir", str(empty))
    assert assert_one_clean_error(chosen).startswith(f"ERROR: MNIST is not in {empty}")
    assert not list(pytester.path.glob("ran-*"))
