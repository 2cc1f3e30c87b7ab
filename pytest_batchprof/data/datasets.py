"""Data sets as in-memory tensors: load once, split once, normalise once.

Training then batches by index slicing of these tensors, with no DataLoader and
no per-sample Python work. Every built-in loader returns the raw training file and
test set as float images in [0, 1]; :func:`load_dataset` splits a validation set off
the training file with a fixed generator (so the split does not move with
``--seed``) and normalises all three splits with the training split's mean and
standard deviation. A registered data set is kept as it was given (dtype and
values: integer token ids stay int64 for ``nn.Embedding``, uint8 images stay
uint8), unless it was registered with ``normalize=True``.

Data sets:

* ``mnist``, ``fashion-mnist``, ``kmnist``: torchvision's classes, reading the
  raw IDX files under ``DATA_DIR/<Class>/raw/`` and downloading only when they
  are missing;
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

from pytest_batchprof.data import catalog
from pytest_batchprof.data.catalog import DATASET_NAMES, LazyRegistration, RegistrationFailure
from pytest_batchprof.errors import one_line
from pytest_batchprof.experiment.models import DataDescription

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
    """Samples ``(N, *sample_shape)`` and their int64 labels: normalised float32 for the
    built-in data sets, as given for a registered one."""

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
    mean: float | None
    """The training split's mean the splits were standardised with; ``None`` for a
    registered data set kept as given."""
    std: float | None
    """... and its standard deviation; ``None`` as ``mean``."""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape: ``(H, W)``, ``(C, H, W)`` or ``(D,)``."""
        return tuple(int(side) for side in self.train.x.shape[1:])

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
        digest = hashlib.sha256(f"{self.name}|{self.num_classes}".encode())
        for split_name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
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
    "mnist": _torchvision_loader("MNIST"),
    "fashion-mnist": _torchvision_loader("FashionMNIST"),
    "kmnist": _torchvision_loader("KMNIST"),
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
    if raw.val_x is not None:
        train_x, train_y, val_x, val_y = raw.train_x, raw.train_y, raw.val_x, raw.val_y
    else:
        fraction = val_fraction if raw.val_fraction is None else raw.val_fraction
        n_val = round(len(raw.train_y) * fraction)
        if not 1 <= n_val < len(raw.train_y):
            raise ValueError(
                f"a validation fraction of {fraction:g} leaves no usable split of "
                f"{len(raw.train_y)} training samples"
            )
        order = torch.randperm(len(raw.train_y),
                               generator=torch.Generator().manual_seed(SPLIT_SEED))
        val_index, train_index = order[:n_val], order[n_val:]
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
        return ((samples - mean) / std).contiguous()

    return Dataset(
        name=dataset_key(name, options),
        train=Split(normalise(train_x), train_y.contiguous()),
        val=Split(normalise(val_x), val_y.contiguous()),
        test=Split(normalise(raw.test_x), raw.test_y.contiguous()),
        num_classes=raw.num_classes,
        source=raw.source,
        mean=mean,
        std=std,
    )


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
) -> None:
    """Make ``name`` a data set of ``--batchprof-dataset``, its ini twin and
    ``@pytest.mark.dataset(name)``; call it from a ``conftest.py`` that pytest loads
    at start (the rootdir's, or one on the command line's test paths).

    Each split is ``(x, y)``, as tensors, numpy arrays or nested lists, or a
    ``torch.utils.data.Dataset`` of ``(x, y)`` pairs, read once into memory. ``x``
    holds images ``(N, H, W)`` or ``(N, C, H, W)``, features ``(N, D)`` or token ids
    ``(N, L)``, and is kept as given: its dtype and values (integer ids stay integers
    for ``nn.Embedding``, uint8 images stay uint8 in 0-255, floats are not rescaled;
    a float64 array stays float64), the same in every split. ``normalize=True``
    standardises every split with the training split's mean and standard deviation
    instead, as the built-in data sets are (integer samples become float32). ``y``
    holds integer class indices (held as int64); ``num_classes`` defaults to the
    largest label plus one. Float targets are refused: cast them with ``y.long()`` if
    they are class indices (regression is not supported yet). Without ``val``, a
    validation set is split off ``train`` as for the built-in sets (``val_fraction``,
    default ``--batchprof-val-fraction``).

    A name that cannot name a data set (empty, with commas, a built-in one) raises
    ``ValueError`` here. Anything else that is wrong (the data, the other arguments)
    does not raise in the conftest, where it would stop every test of the project: the
    name is registered as failed, and each test that uses it fails with one line
    (:class:`DatasetRegistrationError`) while the rest of the session runs.

    A split may also be a zero-argument callable that returns it (``train=load_train``):
    the data set is then built when a test first needs it, not when the conftest is
    imported, and a session whose tests do not use it never builds it. A build that
    raises fails the tests that use the data set, with one line.

    Registering a name again replaces its data.
    """
    if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise ValueError(f"register_dataset(name={name!r}): give a non-empty name without "
                         f"spaces at its ends or commas")
    if name.lower() in DATASETS:
        raise ValueError(f"register_dataset({name!r}): {name.lower()} is a built-in data set; "
                         f"choose another name")
    splits = {"train": train, "test": test, "val": val}

    def build() -> RawData | RegistrationFailure:
        try:
            built = {part: _built(name, part, split) for part, split in splits.items()}
            return _registered(name, built["train"], built["test"], built["val"],
                               val_fraction, num_classes, normalize)
        except ValueError as error:
            return RegistrationFailure(str(error))  # one line, as every check's message

    lazy = any(_builds_later(split) for split in splits.values())
    catalog.REGISTERED[name] = LazyRegistration(build) if lazy else build()


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
                val_fraction: float | None, num_classes: int | None, normalize: bool) -> RawData:
    """The checked data of :func:`register_dataset`; ``ValueError`` with one line if unusable."""
    if val is not None and val_fraction is not None:
        raise ValueError(f"register_dataset({name!r}): give val or val_fraction, not both")
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, int)):
        raise ValueError(f"register_dataset({name!r}, num_classes={num_classes!r}): give a "
                         f"whole number of classes")
    if val_fraction is not None and (isinstance(val_fraction, bool)
                                     or not isinstance(val_fraction, int | float)
                                     or not 0 < val_fraction < 1):
        raise ValueError(f"register_dataset({name!r}, val_fraction={val_fraction!r}): give a "
                         f"fraction between 0 and 1")
    if not isinstance(normalize, bool):
        raise ValueError(f"register_dataset({name!r}, normalize={normalize!r}): give True "
                         f"(standardise as the built-in data sets) or False (keep as given)")
    train_x, train_y = _split_tensors(name, "train", train)
    test_x, test_y = _split_tensors(name, "test", test)
    val_x, val_y = _split_tensors(name, "val", val) if val is not None else (None, None)
    for part, x in (("test", test_x), ("val", val_x)):
        if x is None:
            continue
        if x.shape[1:] != train_x.shape[1:]:
            raise ValueError(f"register_dataset({name!r}): {part} samples have shape "
                             f"{tuple(x.shape[1:])}, train samples {tuple(train_x.shape[1:])}")
        if x.dtype != train_x.dtype:
            raise ValueError(f"register_dataset({name!r}): {part} samples are {x.dtype}, train "
                             f"samples {train_x.dtype}; give every split one dtype (the "
                             f"model sees them as given)")
    labels = [y for y in (train_y, test_y, val_y) if y is not None]
    largest = max(int(y.max()) for y in labels if len(y))
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"register_dataset({name!r}, num_classes={num_classes}): a label is "
                         f"{largest}; labels must be 0 to num_classes - 1")
    if num_classes < 2:
        raise ValueError(f"register_dataset({name!r}): every label is 0; a classifier needs "
                         f"at least two classes")
    kept = "normalised" if normalize else f"{str(train_x.dtype).removeprefix('torch.')} as given"
    return RawData(
        train_x, train_y, test_x, test_y, num_classes,
        source=f"registered ({len(train_y):,} train, {len(test_y):,} test samples of shape "
               f"{tuple(train_x.shape[1:])}, {kept})",
        val_x=val_x, val_y=val_y, val_fraction=val_fraction, normalize=normalize)


def unregister_dataset(name: str) -> None:
    """Forget a registered data set (tests that register one clean up with this)."""
    catalog.REGISTERED.pop(name, None)


def _split_tensors(name: str, part: str, split: SplitData) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's samples as given and its labels as int64, checked; ``ValueError`` naming
    the part."""
    where = f"register_dataset({name!r}) {part}"
    if isinstance(split, torch.utils.data.Dataset):
        x, y = _read_dataset(where, split)
    elif isinstance(split, tuple | list) and len(split) == 2:
        try:
            x, y = torch.as_tensor(split[0]), torch.as_tensor(split[1])
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{where}: cannot be made into tensors ({one_line(error)})") from (
                None)
    else:
        raise ValueError(f"{where}: give (x, y) or a torch.utils.data.Dataset of (x, y) pairs, "
                         f"not a {type(split).__name__}")
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"{where}: x has shape {tuple(x.shape)}; expected (N, D) features or "
                         f"token ids, (N, H, W) images or (N, C, H, W) images")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{where}: y has shape {tuple(y.shape)}; expected ({len(x)},), one "
                         f"class index per sample")
    if len(x) == 0:
        raise ValueError(f"{where}: has no samples")
    if not (x.is_floating_point() or x.dtype in _INTEGER_TYPES):
        raise ValueError(f"{where}: x holds {x.dtype} values; give real numbers (floats, or "
                         f"integers such as token ids)")
    if y.is_floating_point():
        raise ValueError(f"{where}: y holds {y.dtype} targets, and a classification data set "
                         f"needs integer class indices; if they are class indices, cast them "
                         f"with y.long() (regression targets are not supported yet)")
    if y.dtype not in _INTEGER_TYPES:
        raise ValueError(f"{where}: y holds {y.dtype} values; give integer class indices")
    y = y.long()  # the loss takes int64 class indices; the values are unchanged
    if int(y.min()) < 0:
        raise ValueError(f"{where}: a label is {int(y.min())}; labels must be 0 or more")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{where}: x holds NaN or infinite values")
    return x.contiguous(), y.contiguous()


def _read_dataset(where: str, dataset: torch.utils.data.Dataset) -> (
        tuple[torch.Tensor, torch.Tensor]):
    """Read every ``(x, y)`` of a map-style dataset into two tensors, if they fit in memory."""
    import psutil

    try:
        count = len(dataset)
    except TypeError:
        raise ValueError(f"{where}: the dataset has no len(); give a map-style "
                         f"torch.utils.data.Dataset, or tensors") from None
    if count == 0:
        raise ValueError(f"{where}: the dataset is empty")

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
        if y.numel() != 1 or not (y.dtype.is_floating_point or y.dtype in _INTEGER_TYPES):
            raise ValueError(f"{where}: item {index} has the label {item[1]!r}; give one class "
                             f"index per sample")
        return x, y

    first_x, _ = pair(0)
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
        x, y = pair(index)
        if x.shape != first_x.shape:
            raise ValueError(f"{where}: item {index} has shape {tuple(x.shape)}, item 0 "
                             f"{tuple(first_x.shape)}; every sample must have one shape")
        if x.dtype != first_x.dtype:
            raise ValueError(f"{where}: item {index} is {x.dtype}, item 0 {first_x.dtype}; "
                             f"every sample must have one dtype")
        xs.append(x)
        ys.append(y.reshape(()))
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
