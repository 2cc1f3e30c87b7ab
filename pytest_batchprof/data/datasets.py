"""Data sets: the built-in ones as in-memory tensors (load once, split once, normalise
once), registered ones in memory or read by a DataLoader every epoch (:mod:`.loading`).

In memory, training batches by index slicing of the tensors, with no DataLoader and
no per-sample Python work. Every built-in loader returns the raw training file and
test set as float images in [0, 1]; :func:`load_dataset` splits a validation set off
the training file with a fixed generator (so the split does not move with
``--seed``) and normalises all three splits with the training split's mean and
standard deviation. A registered data set is kept as it was given (dtype and
values: integer token ids stay int64 for ``nn.Embedding``, uint8 images stay
uint8), unless it was registered with ``normalize=True``.

Data sets:

* ``mnist``, ``fashion-mnist``, ``kmnist``: the raw IDX files under
  ``DATA_DIR/<Class>/raw/`` (torchvision's layout), read as torchvision's classes read
  them; torchvision's classes download them when they are missing;
* ``cifar10``: torchvision's CIFAR10 (3x32x32 colour images), from
  ``DATA_DIR/cifar-10-batches-py/``, downloading only when missing;
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, offline);
* ``synthetic``: generated class prototypes plus noise, learnable, any size;
* any name given to :func:`register_dataset` (the user's tensors, arrays or
  ``torch.utils.data.Dataset``), split as the built-in ones are. A registration that
  fails is kept as a :class:`~.catalog.RegistrationFailure`: loading the name raises
  :class:`DatasetRegistrationError` with its one line, so only the tests that use it fail.

A sample is an image ``(H, W)``, an image with channels ``(C, H, W)``, or a
row of features ``(D,)`` (or of token ids ``(L,)``); every split holds
``(N, *sample)`` tensors.

torchvision is imported only when CIFAR-10 is loaded, an MNIST-like data set is
downloaded, or an image is cropped: importing it costs a second or more (it brings its
models, ops and transforms), and the plugin loads in every pytest run.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pytest_batchprof.data import catalog
from pytest_batchprof.data.catalog import (
    DATASET_NAMES,
    TASKS,
    LazyRegistration,
    RegistrationFailure,
)
from pytest_batchprof.data.description import DataDescription
from pytest_batchprof.data.loading import LoaderSplit, check_loader_options
from pytest_batchprof.errors import one_line

READ_MEMORY_SHARE = 0.5
"""A ``torch.utils.data.Dataset`` given to :func:`register_dataset` is read into memory
only when its tensors take at most this share of the memory available."""

SPLIT_SEED = 0
"""Seed of the train/validation (and, for digits, the test) split; fixed on purpose."""


class DatasetUnavailable(RuntimeError):
    """A data set that is neither on disk nor downloadable; the message says what to do."""


class DatasetRegistrationError(ValueError):
    """A registered data set whose registration failed (bad data or arguments), raised
    when it is first loaded; the one-line message names the call, the split and the fix.

    :func:`register_dataset` never raises for its data: a raise in a conftest.py is an
    ImportError that stops every test of the project, the unit tests too.
    """


@dataclass(frozen=True)
class Split:
    """Samples ``(N, *sample_shape)`` and their targets, in memory: normalised float32 for
    the built-in data sets, as given for a registered one. Training batches it by index
    slicing, with no DataLoader and no per-sample Python work."""

    x: torch.Tensor
    y: torch.Tensor

    in_memory = True

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def take(self, count: int) -> Split:
        return Split(self.x[:count], self.y[:count])

    def first(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``count`` samples as one ``(x, y)`` batch."""
        return self.x[:count], self.y[:count]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(side) for side in self.x.shape[1:])


AnySplit = Split | LoaderSplit
"""A split in memory (:class:`Split`) or read by a DataLoader every epoch
(:class:`~.loading.LoaderSplit`)."""


@dataclass(frozen=True)
class Dataset:
    """A data set ready for training: three splits on one device, and what they hold."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    source: str
    mean: float | None
    """The training split's mean the splits were standardised with; ``None`` for a
    registered data set kept as given."""
    std: float | None
    """... and its standard deviation; ``None`` as ``mean``."""
    task: str = "classification"
    """What the targets are (:data:`~pytest_batchprof.experiment.tasks.TASKS`); ``num_classes``
    counts the model's outputs per sample (per token for ``tokens``)."""
    val_note: str | None = None
    """Said in the row and the report when the validation split was cut from a training
    ``Dataset`` whose transforms it is then read with."""

    @property
    def in_memory(self) -> bool:
        """Whether every split is tensors in memory (else a DataLoader reads some)."""
        return all(split.in_memory for split in (self.train, self.val, self.test))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape: ``(H, W)``, ``(C, H, W)`` or ``(D,)`` (a DataLoader-fed
        split's first input, as collated)."""
        return self.train.sample_shape

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """Height and width of one image; ``None`` for flat features."""
        shape = self.sample_shape
        return shape[-2:] if len(shape) >= 2 else None

    @property
    def input_size(self) -> int:
        """Features per sample once flattened."""
        return math.prod(self.sample_shape)

    def description(self) -> DataDescription:
        """What a model factory is told of this data: sample shape and class count."""
        return DataDescription(self.sample_shape, self.num_classes)

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
        digest = hashlib.sha256(f"{self.name}|{self.num_classes}|{self.task}".encode())
        for split_name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if not split.in_memory:  # every sample read once, its random transforms seeded
                digest.update(f"|{split_name}:".encode())
                split.fingerprint(digest)
                continue
            for part, tensor in (("x", split.x), ("y", split.y)):
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"|{split_name}.{part}:{tuple(tensor.shape)}:{tensor.dtype}|".encode())
                digest.update(memoryview(flat.view(torch.uint8).numpy()))
        return digest.hexdigest()

    def with_train_subset(self, count: int | None) -> Dataset:
        """Keep the first ``count`` training samples (the split is already shuffled); a
        training split of at most ``count`` samples is used whole (``--batchprof-train-subset``
        is "at most N samples of each data set", and a session may use several)."""
        if count is None or count >= len(self.train):
            return self
        return replace(self, train=self.train.take(count))

    def cropped(self, shape: tuple[int, int]) -> Dataset:
        """Centre-crop every image to ``shape`` (e.g. MNIST's 20x20 digit box)."""
        if shape == self.image_shape:
            return self
        if not self.in_memory:
            raise ValueError(f"input_size={shape} crops images in memory, and a DataLoader reads "
                             f"{self.name}; crop in its transforms and leave input_size out")
        if self.image_shape is None:
            raise ValueError(f"input_size={shape} crops images, and {self.name} holds flat "
                             f"features of shape {self.sample_shape}; leave input_size out")
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
    """What a loader returns: the training file and the test set (a built-in loader's
    images in [0, 1]; a registered set's samples as given)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    """A validation set of its own (registered data sets); else one is split off train."""
    val_fraction: float | None = None
    """The data set's own validation fraction, instead of ``--batchprof-val-fraction``."""
    normalize: bool = True
    """Standardise the splits with the training split's mean and standard deviation (the
    built-in sets, and registered ones with ``normalize=True``); else keep them as given."""
    task: str = "classification"
    """What the targets hold (:data:`~.catalog.TASKS`)."""


Loader = Callable[..., RawData]


# ---------------------------------------------------------------- torchvision


def download(dataset_class: type, root: Path) -> None:
    """Fetch a torchvision data set's files into ``root`` (needs the network)."""
    dataset_class(str(root), train=True, download=True)
    dataset_class(str(root), train=False, download=True)


def _torchvision_loader(class_name: str, num_classes: int = 10,
                        folder: str | None = None) -> Loader:
    """A loader of a torchvision data set class whose files are under ``DATA_DIR/folder``
    (default ``<Class>/raw``, the MNIST family's layout)."""
    folder = folder or f"{class_name}/raw"

    def load(data_dir: Path) -> RawData:
        import torchvision.datasets  # slow import (~2 s): only for the data sets that need it

        dataset_class = getattr(torchvision.datasets, class_name)
        raw_dir = data_dir / folder
        try:
            train = dataset_class(str(data_dir), train=True, download=False)
        except RuntimeError:
            try:
                download(dataset_class, data_dir)
            except Exception as error:  # any network or disk failure means the same to a user
                raise DatasetUnavailable(
                    f"{class_name} is not in {raw_dir} and could not be downloaded "
                    f"({one_line(error)}); put its files there, point "
                    f"--batchprof-data-dir (or BATCHPROF_DATA_DIR) at a directory that holds "
                    f"{folder}/, or run offline with --batchprof-dataset digits"
                ) from error
            train = dataset_class(str(data_dir), train=True, download=False)
        test = dataset_class(str(data_dir), train=False, download=False)
        train_x, test_x = _images(train.data), _images(test.data)
        return RawData(
            train_x=train_x,
            train_y=torch.as_tensor(train.targets).long(),
            test_x=test_x,
            test_y=torch.as_tensor(test.targets).long(),
            num_classes=num_classes,
            source=str(raw_dir),
        )

    return load


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""The MNIST family's training and test images and labels, uncompressed, as torchvision's
classes keep them under ``<Class>/raw/``."""

IDX_UNSIGNED_BYTE = 0x08
"""The IDX header's type code of unsigned bytes, the MNIST family's only one."""


def _idx_loader(class_name: str, num_classes: int = 10) -> Loader:
    """A loader of an MNIST-like data set: its :data:`IDX_FILES` under
    ``DATA_DIR/<class_name>/raw/`` read here (:func:`read_idx`), the same bytes torchvision's
    class reads, without importing torchvision (a second or more of every session that
    trains on MNIST); torchvision's class when a file is missing, to download it."""
    download_and_load = _torchvision_loader(class_name, num_classes)

    def load(data_dir: Path) -> RawData:
        raw_dir = data_dir / class_name / "raw"
        paths = [raw_dir / name for name in IDX_FILES]
        if not all(path.is_file() for path in paths):
            return download_and_load(data_dir)
        train_x, train_y, test_x, test_y = (read_idx(path) for path in paths)
        return RawData(train_x=_images(train_x), train_y=train_y.long(),
                       test_x=_images(test_x), test_y=test_y.long(),
                       num_classes=num_classes, source=str(raw_dir))

    return load


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (big-endian header: two zero bytes, the type code
    :data:`IDX_UNSIGNED_BYTE`, the number of dimensions, one 32-bit size per dimension;
    then the data) as a uint8 tensor of the header's shape; ``ValueError`` naming the file
    when it is not one, or is cut short."""
    buffer = bytearray(path.stat().st_size)
    with path.open("rb") as file:
        read = file.readinto(buffer)
    if read < 4 or buffer[:3] != bytes((0, 0, IDX_UNSIGNED_BYTE)):
        raise ValueError(f"{path} is not an IDX file of unsigned bytes; delete it to "
                         f"download it again")
    header = 4 + 4 * buffer[3]
    shape = struct.unpack_from(f">{buffer[3]}I", buffer, 4) if read >= header else None
    if shape is None or read - header != math.prod(shape):
        raise ValueError(f"{path} holds {max(read - header, 0)} bytes of data where its "
                         f"header announces {math.prod(shape or (0,))}; delete it to "
                         f"download it again")
    return torch.frombuffer(buffer, dtype=torch.uint8, offset=header).reshape(shape)


def _images(data: object) -> torch.Tensor:
    """torchvision's stored images as floats in [0, 1]: ``(N, H, W)`` stays, ``(N, H, W, C)``
    (CIFAR's numpy layout) becomes ``(N, C, H, W)``."""
    images = torch.as_tensor(data)
    if images.dim() == 4:
        images = images.permute(0, 3, 1, 2)
    return images.float().div_(255).contiguous()


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
    "mnist": _idx_loader("MNIST"),
    "fashion-mnist": _idx_loader("FashionMNIST"),
    "kmnist": _idx_loader("KMNIST"),
    "cifar10": _torchvision_loader("CIFAR10", folder="cifar-10-batches-py"),
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
    """Load, split and normalise (unless registered as given) a data set on the CPU.

    Raises :class:`DatasetUnavailable` when its files are missing and cannot be
    fetched, :class:`DatasetRegistrationError` for a registration that failed, and
    ``ValueError`` for an unknown name or bad options.
    """
    if name in catalog.REGISTERED:
        raw = catalog.REGISTERED[name]
        if isinstance(raw, LazyRegistration):  # built now, once: the entry becomes its data
            raw = catalog.REGISTERED[name] = raw.build()
        if isinstance(raw, RegistrationFailure):
            raise DatasetRegistrationError(raw.message)
        if options:
            raise ValueError(f"data set {name} was registered with its data and takes no "
                             f"options (got {', '.join(sorted(options))})")
    elif name in DATASETS:
        raw = _call_loader(name, data_dir, options or {})
    else:
        names = ", ".join(catalog.dataset_names())
        raise ValueError(f"unknown data set {name!r}; choose one of {names}, or register "
                         f"it with pytest_batchprof.register_dataset from a conftest.py")
    if isinstance(raw, RawLoaderData):
        return _loader_dataset(name, raw, val_fraction)
    if raw.val_x is not None:
        train_x, train_y, val_x, val_y = raw.train_x, raw.train_y, raw.val_x, raw.val_y
    else:
        val_index, train_index = _validation_cut(
            len(raw.train_y), val_fraction if raw.val_fraction is None else raw.val_fraction)
        train_x, train_y = raw.train_x[train_index], raw.train_y[train_index]
        val_x, val_y = raw.train_x[val_index], raw.train_y[val_index]
    mean = std = None
    if raw.normalize:
        as_float = train_x if train_x.is_floating_point() else train_x.float()
        mean = as_float.mean().item()
        std = as_float.std().item() or 1.0

    def normalise(samples: torch.Tensor) -> torch.Tensor:
        if mean is None:
            return samples.contiguous()
        if not samples.is_floating_point():
            samples = samples.float()
        return (samples - mean).div_(std).contiguous()  # in the subtraction's new tensor

    return Dataset(
        name=dataset_key(name, options),
        train=Split(normalise(train_x), train_y.contiguous()),
        val=Split(normalise(val_x), val_y.contiguous()),
        test=Split(normalise(raw.test_x), raw.test_y.contiguous()),
        num_classes=raw.num_classes,
        source=raw.source,
        mean=mean,
        std=std,
        task=raw.task,
    )


def _validation_cut(count: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation and training positions of a training file of ``count`` samples: a
    fixed permutation (:data:`SPLIT_SEED`), its first ``fraction`` for validation."""
    n_val = round(count * fraction)
    if not 1 <= n_val < count:
        raise ValueError(f"a validation fraction of {fraction:g} leaves no usable split of "
                         f"{count} training samples")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[:n_val], order[n_val:]


VAL_CUT_NOTE = ("validation split cut from the training Dataset, read with its training "
                "transforms; register val= to score it without them")
"""What rows and reports say of a validation split cut from a DataLoader-fed training set."""


def _loader_dataset(name: str, raw: RawLoaderData, val_fraction: float) -> Dataset:
    """A registered data set a DataLoader reads: its validation split the one given, or
    cut from the training Dataset (and said so)."""
    train, val, note = raw.train, raw.val, None
    if val is None:
        val_index, train_index = _validation_cut(
            len(train), val_fraction if raw.val_fraction is None else raw.val_fraction)
        train, val = train.subset(train_index.tolist()), train.subset(val_index.tolist())
        if not isinstance(raw.train.dataset, torch.utils.data.TensorDataset):
            note = VAL_CUT_NOTE
    return Dataset(name=name, train=train, val=val, test=raw.test,
                   num_classes=raw.num_classes, source=raw.source, mean=None, std=None,
                   task=raw.task, val_note=note)


def _call_loader(name: str, data_dir: Path, options: dict[str, object]) -> RawData:
    loader = DATASETS[name]
    try:
        inspect.signature(loader).bind(data_dir, **options)
    except TypeError as error:
        raise ValueError(f"data set {name} does not take these options: {error}") from None
    try:
        return loader(data_dir, **options)
    except TypeError as error:  # e.g. size="500": a value of the wrong type
        raise ValueError(f"data set {name} got an option value of the wrong type: {error}") from (
            None)


# ---------------------------------------------------------------- the user's data sets


_INTEGER_TYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

SplitData = object
"""``(x, y)`` (tensors, arrays or lists), a ``torch.utils.data.Dataset`` of ``(x, y)``, or a
zero-argument callable returning either (the data set is then built on first use)."""


def register_dataset(
    name: str,
    train: SplitData,
    test: SplitData,
    val: SplitData | None = None,
    val_fraction: float | None = None,
    num_classes: int | None = None,
    normalize: bool = False,
    task: str | None = None,
    loader: dict[str, object] | None = None,
    in_memory: bool | None = None,
) -> None:
    """Make ``name`` a data set of ``--batchprof-dataset``, its ini twin and
    ``@pytest.mark.dataset(name)``; call it from a ``conftest.py`` that pytest loads
    at start (the rootdir's, or one on the command line's test paths).

    Each split is ``(x, y)``, as tensors, numpy arrays or nested lists, or a map-style
    ``torch.utils.data.Dataset``, or a zero-argument callable returning either (the data
    set is then built when a test first needs it, not when the conftest is imported).

    **How it is read.** A ``Dataset`` is read through a ``DataLoader`` every epoch, as in
    the user's own loop, so its transforms apply on every read; ``loader={...}`` passes
    DataLoader arguments (``num_workers``, ``pin_memory``, ``persistent_workers``,
    ``prefetch_factor``, ``collate_fn``), while the run owns the batch size, a shuffle
    seeded by its seed, ``drop_last`` and the sampler. Its items may be ``(x, y)``,
    ``(x1, x2, ..., y)`` or mappings with a ``labels`` key. ``in_memory=True`` reads a
    ``Dataset`` of ``(x, y)`` pairs once into tensors instead (faster; a random transform
    is then drawn once and frozen). Tensors are kept in memory by default
    (``in_memory=False`` feeds them through a DataLoader too).

    **What it holds.** In memory, ``x`` is kept as given: its dtype and values (integer
    ids stay integers for ``nn.Embedding``, uint8 images stay uint8 in 0-255; floats are
    not rescaled), the same in every split; ``normalize=True`` standardises every split
    with the training split's mean and standard deviation instead, as the built-in sets
    are. ``task`` says what ``y`` holds (see
    :mod:`pytest_batchprof.experiment.tasks`): ``classification``, integer class indices
    ``(N,)`` (the default for integer targets; ``num_classes`` defaults to the largest
    label plus one); ``regression``, floats ``(N,)`` or ``(N, K)``; ``multilabel``, 0/1
    ``(N, C)``; ``tokens``, integer ids ``(N, L)`` (``num_classes`` the vocabulary). Float
    targets need ``task=``. Without ``val``, a validation set is split off ``train`` as for
    the built-in sets (``val_fraction``, default ``--batchprof-val-fraction``); cut from a
    ``Dataset``, it is read with its training transforms, and rows and reports say so.

    A name that cannot name a data set (empty, with commas, a built-in one) raises
    ``ValueError`` here. Anything else that is wrong (the data, the other arguments)
    does not raise in the conftest, where it would stop every test of the project: the
    name is registered as failed, and each test that uses it fails with one line
    (:class:`DatasetRegistrationError`) while the rest of the session runs; so does a
    lazy split whose build raises.

    Registering a name again replaces its data.
    """
    if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise ValueError(f"register_dataset(name={name!r}): give a non-empty name without "
                         f"spaces at its ends or commas")
    if name.lower() in DATASETS:
        raise ValueError(f"register_dataset({name!r}): {name.lower()} is a built-in data set; "
                         f"choose another name")
    splits = {"train": train, "test": test, "val": val}
    reading = Reading(task, loader, in_memory, val_fraction, num_classes, normalize)

    def build() -> RawData | RawLoaderData | RegistrationFailure:
        try:
            built = {part: _built(name, part, split) for part, split in splits.items()}
            return _registered(name, built["train"], built["test"], built["val"], reading)
        except ValueError as error:
            return RegistrationFailure(str(error))  # one line, as every check's message

    lazy = any(_builds_later(split) for split in splits.values())
    catalog.REGISTERED[name] = LazyRegistration(build) if lazy else build()


@dataclass(frozen=True)
class Reading:
    """How :func:`register_dataset` was asked to read and interpret a data set (its
    arguments besides the splits)."""

    task: str | None
    loader: object
    in_memory: bool | None
    val_fraction: float | None
    num_classes: int | None
    normalize: bool


@dataclass(frozen=True)
class RawLoaderData:
    """A registered data set a DataLoader reads every epoch: its splits as given."""

    train: LoaderSplit
    test: LoaderSplit
    num_classes: int
    source: str
    task: str
    val: LoaderSplit | None = None
    val_fraction: float | None = None


def _builds_later(split: object) -> bool:
    """Whether a split is a zero-argument callable that makes it (built on first use),
    rather than the data itself."""
    return callable(split) and not isinstance(split, torch.utils.data.Dataset)


def _built(name: str, part: str, split: object) -> object:
    """A split as given, or what its callable returns; ``ValueError`` with one line if that
    fails (the user's code: any exception)."""
    if not _builds_later(split):
        return split
    try:
        return split()
    except Exception as error:
        raise ValueError(f"register_dataset({name!r}) {part}: building it failed: "
                         f"{one_line(error)}") from None


def _registered(name: str, train: SplitData, test: SplitData, val: SplitData | None,
                reading: Reading) -> RawData | RawLoaderData:
    """The checked data of :func:`register_dataset`; ``ValueError`` with one line if unusable."""
    where = f"register_dataset({name!r}"
    val_fraction, num_classes, normalize = (reading.val_fraction, reading.num_classes,
                                            reading.normalize)
    if val is not None and val_fraction is not None:
        raise ValueError(f"{where}): give val or val_fraction, not both")
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"{where}, num_classes={num_classes!r}): give a whole number of "
                         f"classes (outputs per sample)")
    if val_fraction is not None and (isinstance(val_fraction, bool)
                                     or not isinstance(val_fraction, int | float)
                                     or not 0 < val_fraction < 1):
        raise ValueError(f"{where}, val_fraction={val_fraction!r}): give a fraction between 0 "
                         f"and 1")
    if not isinstance(normalize, bool):
        raise ValueError(f"{where}, normalize={normalize!r}): give True (standardise as the "
                         f"built-in data sets) or False (keep as given)")
    if reading.task is not None and reading.task not in TASKS:
        raise ValueError(f"{where}, task={reading.task!r}): give one of {', '.join(TASKS)}")
    if reading.in_memory is not None and not isinstance(reading.in_memory, bool):
        raise ValueError(f"{where}, in_memory={reading.in_memory!r}): give True (read once "
                         f"into tensors) or False (a DataLoader every epoch)")
    options = check_loader_options(f"{where})", reading.loader)
    given = [split for split in (train, test, val) if split is not None]
    fed = (reading.in_memory is False
           or (reading.in_memory is None
               and any(isinstance(split, torch.utils.data.Dataset) for split in given)))
    if fed:
        if normalize:
            raise ValueError(f"{where}, normalize=True): a DataLoader reads this data set; "
                             f"normalise in its transforms, or pass in_memory=True")
        return _registered_loader(name, train, test, val, reading, options)
    if options:
        raise ValueError(f"{where}, loader=...): the data set is read once into memory; "
                         f"drop loader, or pass in_memory=False to read it through a DataLoader")
    task = reading.task
    train_x, train_y = _split_tensors(name, "train", train, task)
    task = task or _task_of(train_y)
    test_x, test_y = _split_tensors(name, "test", test, task)
    val_x, val_y = _split_tensors(name, "val", val, task) if val is not None else (None, None)
    for part, x, y in (("test", test_x, test_y), ("val", val_x, val_y)):
        if x is None:
            continue
        if x.shape[1:] != train_x.shape[1:]:
            raise ValueError(f"{where}): {part} samples have shape {tuple(x.shape[1:])}, "
                             f"train samples {tuple(train_x.shape[1:])}")
        if x.dtype != train_x.dtype:
            raise ValueError(f"{where}): {part} samples are {x.dtype}, train samples "
                             f"{train_x.dtype}; give every split one dtype (the model sees "
                             f"them as given)")
        if task != "tokens" and y.shape[1:] != train_y.shape[1:]:
            raise ValueError(f"{where}): {part} targets have shape {tuple(y.shape[1:])} per "
                             f"sample, train targets {tuple(train_y.shape[1:])}")
    labels = [y for y in (train_y, test_y, val_y) if y is not None]
    num_classes = _outputs(where, task, labels, num_classes)
    kept = "normalised" if normalize else f"{str(train_x.dtype).removeprefix('torch.')} as given"
    return RawData(
        train_x, train_y, test_x, test_y, num_classes,
        source=f"registered ({len(train_y):,} train, {len(test_y):,} test samples of shape "
               f"{tuple(train_x.shape[1:])}, {kept}{_task_words(task)})",
        val_x=val_x, val_y=val_y, val_fraction=val_fraction, normalize=normalize, task=task)


def _task_words(task: str) -> str:
    return "" if task == "classification" else f", {task}"


def _task_of(y: torch.Tensor) -> str:
    """The task when ``task=`` is not given: classification (integer targets; float ones
    are refused there, with a line naming ``task=``)."""
    return "classification"


def _outputs(where: str, task: str, labels: list[torch.Tensor], given: int | None) -> int:
    """The model's outputs per sample (per token): ``given``, checked, or what the targets
    say (the largest class index plus one, the targets' width)."""
    if task in ("regression", "multilabel"):
        width = 1 if labels[0].dim() == 1 else int(labels[0].shape[1])
        if given is not None and given != width:
            raise ValueError(f"{where}, num_classes={given}): the targets hold {width} values "
                             f"per sample; leave num_classes out")
        return width
    largest = max(int(y[y != IGNORED_TARGET].max()) for y in labels
                  if (y != IGNORED_TARGET).any())
    if given is None:
        given = largest + 1
    elif largest >= given:
        raise ValueError(f"{where}, num_classes={given}): a label is {largest}; labels must be "
                         f"0 to num_classes - 1")
    if task == "classification" and given < 2:
        raise ValueError(f"{where}): every label is 0; a classifier needs at least two classes")
    return given


IGNORED_TARGET = -100
"""A token target left out of the loss and the metric (torch's ``ignore_index`` default)."""


def _registered_loader(name: str, train: SplitData, test: SplitData, val: SplitData | None,
                       reading: Reading, options: dict[str, object]) -> RawLoaderData:
    """A data set a DataLoader reads: every split a map-style Dataset (tensors wrapped in a
    ``TensorDataset``), its first item checked, its outputs per sample counted."""
    where = f"register_dataset({name!r}"
    parts = {"train": train, "test": test, "val": val}
    fed: dict[str, LoaderSplit] = {}
    firsts: dict[str, torch.Tensor] = {}
    for part, split in parts.items():
        if split is None:
            continue
        dataset = _as_dataset(f"{where}) {part}", split)
        fed[part] = LoaderSplit(dataset, options)
        firsts[part] = _first_targets(f"{where}) {part}", fed[part])
    task = reading.task or _task_of(firsts["train"])
    for part, targets in firsts.items():
        _check_targets(f"{where}) {part}", targets, task)
    num_classes = reading.num_classes
    if task in ("regression", "multilabel"):
        num_classes = _outputs(where, task, [firsts["train"]], num_classes)
    elif num_classes is None:
        num_classes = _declared_classes(fed["train"].dataset)
        if num_classes is None:
            raise ValueError(
                f"{where}): a DataLoader reads its Dataset, which declares no classes; pass "
                f"num_classes= (or give the Dataset a `classes` list or a `targets` sequence, "
                f"as torchvision's have), so that its {len(fed['train']):,} samples need not be "
                f"read to count them")
    elif num_classes < 2 and task == "classification":
        raise ValueError(f"{where}, num_classes={num_classes}): a classifier needs at least two "
                         f"classes")
    workers = fed["train"].workers
    return RawLoaderData(
        fed["train"], fed["test"], num_classes,
        source=f"registered ({len(fed['train']):,} train, {len(fed['test']):,} test samples, "
               f"read by a DataLoader every epoch"
               f"{f' with {workers} workers' if workers else ''}{_task_words(task)})",
        task=task, val=fed.get("val"), val_fraction=reading.val_fraction)


def _dataset_length(where: str, dataset: torch.utils.data.Dataset) -> int:
    """A map-style dataset's length; ``ValueError`` for one without ``len()`` or empty."""
    try:
        count = len(dataset)
    except TypeError:
        raise ValueError(f"{where}: the dataset has no len(); give a map-style "
                         f"torch.utils.data.Dataset, or tensors") from None
    if count == 0:
        raise ValueError(f"{where}: the dataset is empty")
    return count


def _pair_tensors(where: str, split: tuple | list) -> tuple[torch.Tensor, torch.Tensor]:
    """A split given as ``(x, y)`` (tensors, arrays, lists) as two tensors; ``ValueError``
    naming the split when they cannot be made."""
    try:
        return torch.as_tensor(split[0]), torch.as_tensor(split[1])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{where}: cannot be made into tensors ({one_line(error)})") from None


def _as_dataset(where: str, split: SplitData) -> torch.utils.data.Dataset:
    if isinstance(split, torch.utils.data.Dataset):
        _dataset_length(where, split)
        return split
    if isinstance(split, tuple | list) and len(split) == 2:
        x, y = _pair_tensors(where, split)
        if len(x) != len(y) or not len(x):
            raise ValueError(f"{where}: x holds {len(x)} samples and y {len(y)}; give as many, "
                             f"at least one")
        return torch.utils.data.TensorDataset(x, y)
    raise ValueError(f"{where}: give (x, y) or a torch.utils.data.Dataset, not a "
                     f"{type(split).__name__}")


def _first_targets(where: str, split: LoaderSplit) -> torch.Tensor:
    """The targets of the split's first item, read as the DataLoader collates them (a
    batch of one); ``ValueError`` naming the split when it cannot be read or taken apart."""
    from pytest_batchprof.data.batches import BatchError, split_batch

    try:
        item = split.dataset[0]
    except Exception as error:  # the user's __getitem__: any failure is this split's
        raise ValueError(f"{where}: reading item 0 failed ({one_line(error)})") from None
    if not isinstance(item, tuple | list | Mapping) or (
            not isinstance(item, Mapping) and len(item) < 2):
        raise ValueError(f"{where}: item 0 is a {type(item).__name__}; the dataset must give "
                         f"(x, y) pairs, (x1, ..., y) tuples or mappings with 'labels'")
    collate = split.options.get("collate_fn") or torch.utils.data.default_collate
    try:
        batch = collate([item])  # item 0 as a batch of one, as the DataLoader collates it
    except Exception as error:  # the user's item or collate_fn: any failure
        raise ValueError(f"{where}: item 0 does not collate into tensors ({one_line(error)}); "
                         f"give the dataset a transform that returns tensors, e.g. "
                         f"torchvision.transforms.v2.ToImage(), or a collate_fn in loader="
                         ) from None
    try:
        _, targets = split_batch(batch)
    except BatchError as error:
        raise ValueError(f"{where}: {error}") from None
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"{where}: item 0's target is a {type(targets).__name__}; give "
                         f"numbers or tensors")
    return targets


def _declared_classes(dataset: torch.utils.data.Dataset) -> int | None:
    """The class count a dataset declares, if it does: torchvision's ``classes`` list, or
    the largest of its ``targets`` (a ``TensorDataset``'s last tensor) plus one (a
    ``Subset`` asks the dataset it cuts)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, list | tuple) and len(classes) >= 2:
        return len(classes)
    targets = getattr(dataset, "targets", None)
    if targets is None and isinstance(dataset, torch.utils.data.TensorDataset):
        targets = dataset.tensors[-1]  # its targets are in memory: no item is read
    if targets is None:
        return None
    try:
        largest = int(torch.as_tensor(targets).max())
    except (TypeError, ValueError, RuntimeError):
        return None
    return largest + 1 if largest >= 1 else None


def unregister_dataset(name: str) -> None:
    """Forget a registered data set (tests that register one clean up with this)."""
    catalog.REGISTERED.pop(name, None)


def _split_tensors(name: str, part: str, split: SplitData, task: str | None) -> (
        tuple[torch.Tensor, torch.Tensor]):
    """One split's samples as given and its targets as the task takes them, checked;
    ``ValueError`` naming the part."""
    where = f"register_dataset({name!r}) {part}"
    if isinstance(split, torch.utils.data.Dataset):
        x, y = _read_dataset(where, split)
    elif isinstance(split, tuple | list) and len(split) == 2:
        x, y = _pair_tensors(where, split)
    else:
        raise ValueError(f"{where}: give (x, y) or a torch.utils.data.Dataset of (x, y) pairs, "
                         f"not a {type(split).__name__}")
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"{where}: x has shape {tuple(x.shape)}; expected (N, D) features or "
                         f"token ids, (N, H, W) images or (N, C, H, W) images")
    if len(y) != len(x):
        raise ValueError(f"{where}: y has shape {tuple(y.shape)}; expected {len(x)} targets, "
                         f"one per sample")
    if len(x) == 0:
        raise ValueError(f"{where}: has no samples")
    if not (x.is_floating_point() or x.dtype in _INTEGER_TYPES):
        raise ValueError(f"{where}: x holds {x.dtype} values; give real numbers (floats, or "
                         f"integers such as token ids)")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{where}: x holds NaN or infinite values")
    y = _check_targets(where, y, task or _task_of(y))
    return x.contiguous(), y.contiguous()


def _check_targets(where: str, y: torch.Tensor, task: str) -> torch.Tensor:
    """``y`` (a batch of targets) as ``task`` takes them: int64 class indices or token ids,
    float32 regression targets or 0/1 labels; ``ValueError`` with one line otherwise."""
    shape = tuple(y.shape)
    if task in ("classification", "tokens"):
        if y.is_floating_point():
            raise ValueError(
                f"{where}: y holds {y.dtype} targets, and a {task} data set needs integer "
                f"class indices; pass task='regression' (or 'multilabel' for 0/1 labels per "
                f"class), or cast class indices with y.long()")
        if y.dtype not in _INTEGER_TYPES:
            raise ValueError(f"{where}: y holds {y.dtype} values; give integer class indices")
        wanted = 1 if task == "classification" else 2
        if y.dim() != wanted:
            raise ValueError(
                f"{where}: y has shape {shape}; a {task} data set needs "
                + ("one class index per sample (N,)" if task == "classification" else
                   "one class index per token (N, L)"))
        y = y.long()  # the loss takes int64 class indices; the values are unchanged
        low = int(y.min())
        if low < 0 and not (task == "tokens" and low == IGNORED_TARGET
                            and int(y[y != IGNORED_TARGET].min(initial=0)) >= 0):
            raise ValueError(f"{where}: a label is {low}; labels must be 0 or more"
                             + (f" ({IGNORED_TARGET} for a token left out)"
                                if task == "tokens" else ""))
        return y
    if not (y.is_floating_point() or y.dtype in _INTEGER_TYPES or y.dtype == torch.bool):
        raise ValueError(f"{where}: y holds {y.dtype} values; give real numbers")
    y = y.float() if not y.is_floating_point() else y
    if not torch.isfinite(y).all():
        raise ValueError(f"{where}: y holds NaN or infinite targets")
    if task == "regression":
        if y.dim() not in (1, 2):
            raise ValueError(f"{where}: y has shape {shape}; a regression data set needs one "
                             f"value (N,) or K values (N, K) per sample")
        return y
    if y.dim() != 2 or not ((y == 0) | (y == 1)).all():
        raise ValueError(f"{where}: y of shape {shape} must hold 0 or 1 per sample and class "
                         f"(N, C) for a multilabel data set")
    return y


def _read_dataset(where: str, dataset: torch.utils.data.Dataset) -> (
        tuple[torch.Tensor, torch.Tensor]):
    """Read every ``(x, y)`` of a map-style dataset into two tensors, if they fit in memory."""
    import psutil

    count = _dataset_length(where, dataset)

    def pair(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            item = dataset[index]
        except Exception as error:  # the user's __getitem__: any failure is this split's
            raise ValueError(f"{where}: reading item {index} failed ({one_line(error)})") from (
                None)
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"{where}: item {index} is a {type(item).__name__}; the dataset "
                             f"must give (x, y) pairs")
        try:
            x, y = torch.as_tensor(item[0]), torch.as_tensor(item[1])
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{where}: item {index} cannot be made into tensors ({one_line(error)}); give "
                f"the dataset a transform that returns tensors, e.g. "
                f"torchvision.transforms.v2.PILToTensor()") from None
        if not (y.dtype.is_floating_point or y.dtype in _INTEGER_TYPES or y.dtype == torch.bool):
            raise ValueError(f"{where}: item {index} has the target {item[1]!r}; give numbers")
        return x, y

    first_x, first_y = pair(0)
    needed = count * first_x.numel() * first_x.element_size()  # held as given
    available = psutil.virtual_memory().available
    if needed > READ_MEMORY_SHARE * available:
        raise ValueError(
            f"{where}: {count:,} samples of shape {tuple(first_x.shape)} take "
            f"{needed / 2**30:.1f} GiB as {str(first_x.dtype).removeprefix('torch.')}, more "
            f"than half of the {available / 2**30:.1f} GiB of memory available; register a "
            f"subset (torch.utils.data.Subset) or train it with your own loop and "
            f"pytest_batchprof.record")
    xs, ys = [], []
    for index in range(count):
        x, y = (first_x, first_y) if index == 0 else pair(index)  # item 0 read once
        if x.shape != first_x.shape:
            raise ValueError(f"{where}: item {index} has shape {tuple(x.shape)}, item 0 "
                             f"{tuple(first_x.shape)}; every sample must have one shape")
        if x.dtype != first_x.dtype:
            raise ValueError(f"{where}: item {index} is {x.dtype}, item 0 {first_x.dtype}; "
                             f"every sample must have one dtype")
        xs.append(x)
        ys.append(y.reshape(()) if y.numel() == 1 else y)
    return torch.stack(xs), torch.stack(ys)


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
