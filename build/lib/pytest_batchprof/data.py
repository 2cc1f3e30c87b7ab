"""Data sets as in-memory tensors: load once, split once, normalise once.

Training then batches by index slicing of these tensors, with no DataLoader and
no per-sample Python work. Every loader returns the raw training file and test
set as float images in [0, 1]; :func:`load_dataset` splits a validation set off
the training file with a fixed generator (so the split does not move with
``--seed``) and normalises all three splits with the training split's mean and
standard deviation.

Data sets:

* ``mnist``, ``fashion-mnist``, ``kmnist``: torchvision's classes, reading the
  raw IDX files under ``DATA_DIR/<Class>/raw/`` and downloading only when they
  are missing;
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, offline);
* ``synthetic``: generated class prototypes plus noise, learnable, any size.

torchvision is imported only when one of its data sets is loaded or an image is
cropped: importing it costs seconds, and the plugin loads in every pytest run.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pytest_batchprof.catalog import DATASET_NAMES
from pytest_batchprof.errors import one_line

SPLIT_SEED = 0
"""Seed of the train/validation (and, for digits, the test) split; fixed on purpose."""


class DatasetUnavailable(RuntimeError):
    """A data set that is neither on disk nor downloadable; the message says what to do."""


@dataclass(frozen=True)
class Split:
    """Images ``(N, H, W)`` as normalised float32 and their int64 labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def take(self, count: int) -> Split:
        return Split(self.x[:count], self.y[:count])


@dataclass(frozen=True)
class Dataset:
    """A data set ready for training: three splits on one device, and what they hold."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    source: str
    mean: float
    std: float

    @property
    def image_shape(self) -> tuple[int, int]:
        """Height and width of one image."""
        return (int(self.train.x.shape[1]), int(self.train.x.shape[2]))

    @property
    def input_size(self) -> int:
        """Features per sample once an image is flattened."""
        height, width = self.image_shape
        return height * width

    def to(self, device: torch.device) -> Dataset:
        """The same data set with every split on ``device``."""
        return replace(self, train=self.train.to(device), val=self.val.to(device),
                       test=self.test.to(device))

    def fingerprint(self) -> str:
        """SHA-256 of the name and every split's tensors (shape, dtype and raw bytes).

        A cached run is only as good as the data it was trained on: a changed
        file, split or normalisation changes this. It reads every byte (0.2-0.4 s
        for MNIST's 220 MB of float32 on one CPU core), so callers keep it.
        """
        digest = hashlib.sha256(f"{self.name}|{self.num_classes}".encode())
        for split_name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            for part, tensor in (("x", split.x), ("y", split.y)):
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"|{split_name}.{part}:{tuple(tensor.shape)}:{tensor.dtype}|".encode())
                digest.update(memoryview(flat.view(torch.uint8).numpy()))
        return digest.hexdigest()

    def with_train_subset(self, count: int | None) -> Dataset:
        """Keep the first ``count`` training samples (the split is already shuffled)."""
        if count is None:
            return self
        if count > len(self.train):
            raise ValueError(
                f"train subset of {count} is larger than the {len(self.train)} "
                f"training samples of {self.name}"
            )
        return replace(self, train=self.train.take(count))

    def cropped(self, shape: tuple[int, int]) -> Dataset:
        """Centre-crop every image to ``shape`` (e.g. MNIST's 20x20 digit box)."""
        if shape == self.image_shape:
            return self
        if shape[0] > self.image_shape[0] or shape[1] > self.image_shape[1]:
            raise ValueError(
                f"a {shape[0]}x{shape[1]} crop does not fit {self.name}'s "
                f"{self.image_shape[0]}x{self.image_shape[1]} images"
            )
        from torchvision.transforms.v2.functional import center_crop  # slow import: on use

        size = list(shape)
        return replace(
            self,
            train=Split(center_crop(self.train.x, size), self.train.y),
            val=Split(center_crop(self.val.x, size), self.val.y),
            test=Split(center_crop(self.test.x, size), self.test.y),
        )


@dataclass(frozen=True)
class RawData:
    """What a loader returns: the training file and the test set, images in [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str


Loader = Callable[..., RawData]


# ---------------------------------------------------------------- torchvision


def download(dataset_class: type, root: Path) -> None:
    """Fetch a torchvision data set's files into ``root`` (needs the network)."""
    dataset_class(str(root), train=True, download=True)
    dataset_class(str(root), train=False, download=True)


def _torchvision_loader(class_name: str, num_classes: int = 10) -> Loader:
    def load(data_dir: Path) -> RawData:
        import torchvision.datasets  # slow import (~2 s): only for the data sets that need it

        dataset_class = getattr(torchvision.datasets, class_name)
        raw_dir = data_dir / class_name / "raw"
        try:
            train = dataset_class(str(data_dir), train=True, download=False)
        except RuntimeError:
            try:
                download(dataset_class, data_dir)
            except Exception as error:  # any network or disk failure means the same to a user
                raise DatasetUnavailable(
                    f"{class_name} is not in {raw_dir} and could not be downloaded "
                    f"({one_line(error)}); put its raw files there, point "
                    f"--batchprof-data-dir (or BATCHPROF_DATA_DIR) at a directory that holds "
                    f"{class_name}/raw/, or run offline with --batchprof-dataset digits"
                ) from error
            train = dataset_class(str(data_dir), train=True, download=False)
        test = dataset_class(str(data_dir), train=False, download=False)
        return RawData(
            train_x=train.data.float().div_(255),
            train_y=train.targets.long(),
            test_x=test.data.float().div_(255),
            test_y=test.targets.long(),
            num_classes=num_classes,
            source=str(raw_dir),
        )

    return load


# ---------------------------------------------------------------- bundled / generated


def _load_digits(data_dir: Path, test_fraction: float = 0.2) -> RawData:
    """scikit-learn's 8x8 digits; a fixed fifth is the test set (digits has no official one)."""
    del data_dir  # shipped with scikit-learn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = round(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return RawData(images[train], labels[train], images[test], labels[test], 10,
                   "scikit-learn load_digits")


def _load_synthetic(
    data_dir: Path,
    size: int = 3000,
    test_size: int = 1000,
    image_size: int = 8,
    num_classes: int = 10,
    noise: float = 0.6,
    seed: int = 0,
) -> RawData:
    """Class prototypes plus Gaussian noise: learnable, fast, any size.

    ``size`` is the training file (before the validation split); a linear model
    separates the classes well, so a few epochs of an MLP reach high accuracy.
    """
    del data_dir
    if size < 2 or test_size < 1 or image_size < 1 or num_classes < 2 or noise < 0:
        raise ValueError(
            "synthetic needs size >= 2, test_size >= 1, image_size >= 1, "
            "num_classes >= 2 and noise >= 0"
        )
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, image_size, image_size, generator=generator)

    def sample(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (count,), generator=generator)
        images = prototypes[labels] + noise * torch.randn(
            count, image_size, image_size, generator=generator
        )
        return images.clamp_(0, 1), labels

    train_x, train_y = sample(size)
    test_x, test_y = sample(test_size)
    return RawData(train_x, train_y, test_x, test_y, num_classes,
                   f"synthetic(size={size}, image_size={image_size}, seed={seed})")


DATASETS: dict[str, Loader] = {
    "mnist": _torchvision_loader("MNIST"),
    "fashion-mnist": _torchvision_loader("FashionMNIST"),
    "kmnist": _torchvision_loader("KMNIST"),
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}
assert tuple(DATASETS) == DATASET_NAMES, "catalog.DATASET_NAMES must list DATASETS' keys"


# ---------------------------------------------------------------- assembly


def dataset_key(name: str, options: dict[str, object] | None = None) -> str:
    """A stable name for a data set and its loader options: ``synthetic(size=512)``."""
    if not options:
        return name
    inner = ", ".join(f"{key}={options[key]!r}" for key in sorted(options))
    return f"{name}({inner})"


def load_dataset(
    name: str,
    data_dir: Path,
    val_fraction: float,
    options: dict[str, object] | None = None,
) -> Dataset:
    """Load, split and normalise a data set on the CPU.

    Raises :class:`DatasetUnavailable` when its files are missing and cannot be
    fetched, and ``ValueError`` for an unknown name or bad options.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    loader = DATASETS[name]
    try:
        inspect.signature(loader).bind(data_dir, **(options or {}))
    except TypeError as error:
        raise ValueError(f"data set {name} does not take these options: {error}") from None
    try:
        raw = loader(data_dir, **(options or {}))
    except TypeError as error:  # e.g. size="500": a value of the wrong type
        raise ValueError(f"data set {name} got an option value of the wrong type: {error}") from (
            None)
    n_val = round(len(raw.train_y) * val_fraction)
    if not 1 <= n_val < len(raw.train_y):
        raise ValueError(
            f"a validation fraction of {val_fraction:g} leaves no usable split of "
            f"{len(raw.train_y)} training samples"
        )
    order = torch.randperm(len(raw.train_y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_index, train_index = order[:n_val], order[n_val:]
    train_x = raw.train_x[train_index]
    mean = train_x.mean().item()
    std = train_x.std().item() or 1.0

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return ((images - mean) / std).contiguous()

    return Dataset(
        name=dataset_key(name, options),
        train=Split(normalise(train_x), raw.train_y[train_index].contiguous()),
        val=Split(normalise(raw.train_x[val_index]), raw.train_y[val_index].contiguous()),
        test=Split(normalise(raw.test_x), raw.test_y.contiguous()),
        num_classes=raw.num_classes,
        source=raw.source,
        mean=mean,
        std=std,
    )


def crop_shape(input_size: int | tuple[int, int] | None, image_shape: tuple[int, int]) -> (
        tuple[int, int]):
    """Resolve ``input_size`` (400 -> 20x20, or an explicit (h, w)) to a crop shape."""
    if input_size is None:
        return image_shape
    if isinstance(input_size, int):
        if input_size < 1 or math.isqrt(input_size) ** 2 != input_size:
            raise ValueError(
                f"input_size={input_size} is not a square number of pixels; give e.g. 400 "
                f"(a 20x20 centre crop) or a (height, width) pair"
            )
        side = math.isqrt(input_size)
        return (side, side)
    height, width = input_size
    if height < 1 or width < 1:
        raise ValueError(f"input_size={input_size} must have a height and width of at least 1")
    return (int(height), int(width))
