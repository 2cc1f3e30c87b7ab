"""Data sets: IDX files in torchvision's layout, digits, synthetic, and the session errors.

The MNIST-like data sets are tested on tiny generated IDX files (the real ones
are never read here), so every test is offline and fast. Sessions run
in-process with ``pytester``; the autouse ``hermetic`` fixture of the conftest
makes ``BATCHPROF_DATA_DIR`` an empty directory and downloads fail.
"""

from __future__ import annotations

import fnmatch
import json
import re
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from session_output import assert_one_clean_error, failure_section, summary_rows

from pytest_batchprof.data.datasets import DATASETS, Dataset, crop_shape, load_dataset
from pytest_batchprof.runs import session as session_module

IDX_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
N_TRAIN, N_TEST = 240, 60
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
CHOICES = "mnist, fashion-mnist, kmnist, cifar10, digits, synthetic"


# ---------------------------------------------------------------- helpers


@dataclass(frozen=True)
class IdxFiles:
    """What :func:`write_idx_dataset` wrote: uint8 images (N, 28, 28) and labels (N,)."""

    raw_dir: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """One IDX file: big-endian magic, one big-endian int32 per dimension, then uint8 data."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def learnable_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dim noise, plus a bright 7x7 block whose place (on a 4x4 grid) is the class."""
    images = rng.integers(0, 80, size=(len(labels), 28, 28))
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 4)
        image[row * 7:(row + 1) * 7, col * 7:(col + 1) * 7] += 150
    return images.astype(np.uint8)


def write_idx_dataset(root: Path, class_name: str = "MNIST", seed: int = 0) -> IdxFiles:
    """A tiny MNIST-like data set in torchvision's layout ``root/<class_name>/raw/``."""
    rng = np.random.default_rng(seed)
    raw_dir = root / class_name / "raw"
    raw_dir.mkdir(parents=True)
    arrays = []
    for prefix, count in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
        images = learnable_images(labels, rng)
        write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", images, IMAGE_MAGIC)
        write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", labels, LABEL_MAGIC)
        arrays += [images, labels]
    return IdxFiles(raw_dir, *arrays)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session; hypothesis's plugin is off because it re-imports hypothesis
    (seconds) in every inner session, and it plays no part here."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)




def denormalised(data: Dataset, images: torch.Tensor) -> torch.Tensor:
    return images * data.std + data.mean


def sample_counter(data: Dataset, splits: tuple[str, ...], scale: float) -> Counter:
    """The multiset of (pixels as whole numbers, label) over ``splits``, pixels * ``scale``."""
    counter: Counter = Counter()
    for split_name in splits:
        split = getattr(data, split_name)
        pixels = torch.round(denormalised(data, split.x) * scale).to(torch.int64)
        for image, label in zip(pixels, split.y, strict=True):
            counter[(tuple(image.flatten().tolist()), int(label))] += 1
    return counter


def assert_same_data(first: Dataset, second: Dataset) -> None:
    for split_name in ("train", "val", "test"):
        a, b = getattr(first, split_name), getattr(second, split_name)
        assert torch.equal(a.x, b.x), split_name
        assert torch.equal(a.y, b.y), split_name
    assert (first.mean, first.std) == (second.mean, second.std)


# ---------------------------------------------------------------- IDX data sets


@pytest.mark.parametrize("name", IDX_CLASSES)
def test_idx_data_set_loads_splits_and_normalises(tmp_path: Path, name: str) -> None:
    files = write_idx_dataset(tmp_path, IDX_CLASSES[name])
    data = load_dataset(name, tmp_path, 1 / 12)

    n_val = round(N_TRAIN / 12)
    assert (len(data.train), len(data.val), len(data.test)) == (N_TRAIN - n_val, n_val, N_TEST)
    for split in (data.train, data.val, data.test):
        assert split.x.shape == (len(split), 28, 28)
        assert split.x.dtype == torch.float32
        assert split.y.shape == (len(split),)
        assert split.y.dtype == torch.int64
    assert data.name == name
    assert data.num_classes == 10
    assert data.image_shape == (28, 28)
    assert data.input_size == 784
    assert data.source == str(files.raw_dir)

    # Normalised with the training split's statistics ...
    assert abs(data.train.x.mean().item()) < 1e-4
    assert abs(data.train.x.std().item() - 1) < 1e-3
    assert data.std > 0
    # ... of pixels that are the file's bytes / 255: the test set keeps the file's order,
    torch.testing.assert_close(
        denormalised(data, data.test.x),
        torch.from_numpy(files.test_images).float() / 255,
        rtol=0, atol=1e-5,
    )
    assert torch.equal(data.test.y, torch.from_numpy(files.test_labels).long())
    # and train + val is the training file, shuffled, every image with its own label.
    written = Counter(
        (tuple(image.flatten().tolist()), int(label))
        for image, label in zip(files.train_images.astype(np.int64), files.train_labels,
                                strict=True)
    )
    assert sample_counter(data, ("train", "val"), 255) == written
    in_file_order = torch.from_numpy(files.train_labels).long()
    assert not torch.equal(torch.cat([data.val.y, data.train.y]), in_file_order)


@pytest.mark.parametrize("fraction", [1 / 12, 0.07, 0.1, 0.25, 0.5])
def test_validation_split_size_is_the_rounded_fraction(tmp_path: Path, fraction: float) -> None:
    write_idx_dataset(tmp_path)
    data = load_dataset("mnist", tmp_path, fraction)
    assert len(data.val) == round(N_TRAIN * fraction)
    assert len(data.train) + len(data.val) == N_TRAIN
    assert len(data.test) == N_TEST


def test_split_is_deterministic_and_ignores_the_global_seed(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, "KMNIST")
    torch.manual_seed(1)
    first = load_dataset("kmnist", tmp_path, 1 / 12)
    torch.manual_seed(12345)
    torch.rand(10)  # move the global generator some more
    second = load_dataset("kmnist", tmp_path, 1 / 12)
    assert_same_data(first, second)


def test_idx_helper_writes_big_endian_headers(tmp_path: Path) -> None:
    """The helper writes real IDX files: magic, then one int32 per dimension, then bytes."""
    files = write_idx_dataset(tmp_path)
    raw = files.raw_dir / "t10k-images-idx3-ubyte"
    assert raw.read_bytes()[:16] == struct.pack(">4I", IMAGE_MAGIC, N_TEST, 28, 28)
    labels = files.raw_dir / "t10k-labels-idx1-ubyte"
    assert labels.read_bytes()[:8] == struct.pack(">2I", LABEL_MAGIC, N_TEST)
    assert len(labels.read_bytes()) == 8 + N_TEST


@pytest.mark.parametrize("name", IDX_CLASSES)
def test_idx_files_are_read_as_torchvision_reads_them(tmp_path: Path, name: str) -> None:
    """The plugin reads the IDX files itself; torchvision's class, on the same files,
    gives the same images (as floats / 255) and labels, in the same order."""
    import torchvision.datasets

    write_idx_dataset(tmp_path, IDX_CLASSES[name])
    raw = DATASETS[name](tmp_path)
    dataset_class = getattr(torchvision.datasets, IDX_CLASSES[name])
    train, test = (dataset_class(str(tmp_path), train=is_train, download=False)
                   for is_train in (True, False))
    assert torch.equal(raw.train_x, train.data.float().div_(255))
    assert torch.equal(raw.train_y, train.targets.long())
    assert torch.equal(raw.test_x, test.data.float().div_(255))
    assert torch.equal(raw.test_y, test.targets.long())


def test_an_idx_data_set_loads_without_importing_torchvision(tmp_path: Path) -> None:
    """torchvision's import (a second or more) is paid only to download missing files."""
    write_idx_dataset(tmp_path)
    code = ("import sys; from pathlib import Path; "
            "from pytest_batchprof.data.datasets import load_dataset; "
            "load_dataset('mnist', Path(sys.argv[1]), 1 / 12); "
            "print(sorted(name for name in sys.modules if name.startswith('torchvision')))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("damage", "says"), [
    (lambda data: data[:-1], "holds 47039 bytes of data where its header announces 47040"),
    (lambda data: b"\x00\x00\x0d" + data[3:], "is not an IDX file of unsigned bytes"),
])
def test_a_damaged_idx_file_is_named(tmp_path: Path, damage, says: str) -> None:
    files = write_idx_dataset(tmp_path)
    images = files.raw_dir / "t10k-images-idx3-ubyte"
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(ValueError, match=f"{re.escape(str(images))} .*{says}; delete it to"):
        load_dataset("mnist", tmp_path, 1 / 12)


def test_session_trains_on_generated_mnist(pytester: pytest.Pytester, tmp_path: Path) -> None:
    write_idx_dataset(tmp_path / "data")
    pytester.makepyfile(
        """
        import json
        from pathlib import Path

        def test_train(dataset, trained_mlp):
            run = trained_mlp(hidden=32)
            Path("run.json").write_text(json.dumps({
                "dataset": dataset.name, "train": len(dataset.train),
                "batch_size": run.config.batch_size, "epochs": len(run.history),
                "test_accuracy": run.test_accuracy,
            }))
            assert run.test_accuracy is not None
        """
    )
    result = run(pytester, "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
                 "--batch-sizes", "16", "--epochs", "1", "--device", "cpu")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "batchprof: dataset=mnist batch-sizes=16 epochs=1 *",
        "batchprof: training 784-32-10 on mnist, batch 16, 1 epoch, adam lr=0.001, seed 0, cpu",
        "  Epoch 01, Train acc=*, Val acc=*, Train loss=*, Val loss=*",
        "  trained in * s, test acc=*",
    ])
    summary = json.loads((pytester.path / "run.json").read_text())
    assert summary["dataset"] == "mnist"
    assert summary["train"] == N_TRAIN - round(N_TRAIN / 12)
    assert (summary["batch_size"], summary["epochs"]) == (16, 1)
    assert summary["test_accuracy"] >= 0.5  # the generated classes are easy (1.0 in practice)


# ---------------------------------------------------------------- digits


def test_digits_splits_its_1797_images(hermetic: Path) -> None:
    from sklearn.datasets import load_digits

    data = load_dataset("digits", hermetic, 1 / 12)  # the data dir is not used
    n_test = round(1797 * 0.2)
    n_val = round((1797 - n_test) / 12)
    assert (len(data.train), len(data.val), len(data.test)) == (
        1797 - n_test - n_val, n_val, n_test)
    assert data.image_shape == (8, 8)
    assert data.input_size == 64
    assert data.num_classes == 10
    for split in (data.train, data.val, data.test):
        assert split.x.shape == (len(split), 8, 8)
        assert split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert set(split.y.tolist()) == set(range(10))
    assert abs(data.train.x.mean().item()) < 1e-4
    # The three splits are a partition of scikit-learn's images (pixels 0..16).
    bunch = load_digits()
    original = Counter(
        (tuple(image.astype(np.int64).flatten().tolist()), int(label))
        for image, label in zip(bunch.images, bunch.target, strict=True)
    )
    assert sample_counter(data, ("train", "val", "test"), 16) == original


def test_digits_split_is_deterministic(hermetic: Path) -> None:
    torch.manual_seed(3)
    first = load_dataset("digits", hermetic, 1 / 12)
    torch.manual_seed(4)
    second = load_dataset("digits", hermetic, 1 / 12)
    assert_same_data(first, second)


# ---------------------------------------------------------------- synthetic


def test_synthetic_takes_its_size_from_the_options(hermetic: Path) -> None:
    data = load_dataset("synthetic", hermetic, 0.1, {"size": 500})
    assert (len(data.train), len(data.val), len(data.test)) == (450, 50, 1000)
    assert data.name == "synthetic(size=500)"
    assert data.image_shape == (8, 8)
    assert data.num_classes == 10
    assert data.train.x.dtype == torch.float32
    assert data.train.y.dtype == torch.int64
    assert abs(data.train.x.mean().item()) < 1e-4
    assert abs(data.train.x.std().item() - 1) < 1e-3


def test_synthetic_shape_and_classes_are_options(hermetic: Path) -> None:
    options = {"size": 90, "test_size": 30, "image_size": 5, "num_classes": 3}
    data = load_dataset("synthetic", hermetic, 0.1, options)
    assert (len(data.train), len(data.val), len(data.test)) == (81, 9, 30)
    assert data.test.x.shape == (30, 5, 5)
    assert data.num_classes == 3
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    assert set(labels.tolist()) == {0, 1, 2}
    assert data.name == "synthetic(image_size=5, num_classes=3, size=90, test_size=30)"


def test_synthetic_is_deterministic_and_seeded_by_its_option(hermetic: Path) -> None:
    torch.manual_seed(7)
    first = load_dataset("synthetic", hermetic, 0.1, {"size": 200})
    torch.manual_seed(8)
    second = load_dataset("synthetic", hermetic, 0.1, {"size": 200})
    assert_same_data(first, second)
    other = load_dataset("synthetic", hermetic, 0.1, {"size": 200, "seed": 1})
    assert not torch.equal(first.train.x, other.train.x)


def test_synthetic_is_learnable_through_the_marker(pytester: pytest.Pytester) -> None:
    """A 64-32-10 MLP, one epoch: 0.85-0.93 test accuracy over 16 seeds tried; chance is 0.1."""
    pytester.makepyfile(
        """
        import json
        from pathlib import Path

        import pytest

        @pytest.mark.dataset("synthetic", size=600)
        def test_learns(dataset, trained_mlp):
            run = trained_mlp(hidden=32, lr=0.01)
            Path("run.json").write_text(json.dumps({
                "dataset": dataset.name, "train": len(dataset.train),
                "test_accuracy": run.test_accuracy,
            }))
            assert run.test_accuracy >= 0.6
        """
    )
    # --dataset mnist is absent (empty data dir): the marker's data set replaces it.
    result = run(pytester, "--dataset", "mnist", "--batch-sizes", "16", "--epochs", "1",
                 "--device", "cpu")
    result.assert_outcomes(passed=1)
    summary = json.loads((pytester.path / "run.json").read_text())
    assert summary["dataset"] == "synthetic(size=600)"
    assert summary["train"] == 600 - 50
    assert summary["test_accuracy"] >= 0.6


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("synthetic", {"colour": True}, "data set synthetic does not take these options"),
        ("digits", {"size": 100}, "data set digits does not take these options"),
        ("mnist", {"size": 100}, "data set mnist does not take these options"),
        ("synthetic", {"size": 1}, "synthetic needs size >= 2"),
        ("nope", None, f"unknown data set 'nope'; choose one of {CHOICES}"),
    ],
)
def test_bad_names_and_options_raise_value_error(
    hermetic: Path, name: str, options: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(name, hermetic, 0.1, options)


def test_a_fraction_leaving_no_validation_set_raises(hermetic: Path) -> None:
    with pytest.raises(ValueError, match="leaves no usable split of 100 training samples"):
        load_dataset("synthetic", hermetic, 0.001, {"size": 100})


# ---------------------------------------------------------------- crops and subsets


@pytest.fixture
def small_mnist(tmp_path: Path) -> Dataset:
    write_idx_dataset(tmp_path)
    return load_dataset("mnist", tmp_path, 1 / 12)


@pytest.mark.parametrize(("shape", "top", "left"), [((20, 20), 4, 4), ((20, 24), 4, 2)])
def test_cropped_keeps_the_centre(
    small_mnist: Dataset, shape: tuple[int, int], top: int, left: int
) -> None:
    cropped = small_mnist.cropped(shape)
    height, width = shape
    assert cropped.image_shape == shape
    assert cropped.input_size == height * width
    for split_name in ("train", "val", "test"):
        before, after = getattr(small_mnist, split_name), getattr(cropped, split_name)
        assert after.x.shape == (len(before), height, width)
        assert torch.equal(after.x, before.x[:, top:top + height, left:left + width])
        assert torch.equal(after.y, before.y)


def test_cropped_to_the_same_shape_is_the_same_data_set(small_mnist: Dataset) -> None:
    assert small_mnist.cropped((28, 28)) is small_mnist


@pytest.mark.parametrize("shape", [(29, 28), (28, 30)])
def test_a_crop_larger_than_the_images_raises(small_mnist: Dataset, shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="does not fit mnist's 28x28 images"):
        small_mnist.cropped(shape)


@pytest.mark.parametrize(
    ("input_size", "expected"),
    [(400, (20, 20)), (784, (28, 28)), (1, (1, 1)), (None, (28, 28)), ((20, 24), (20, 24))],
)
def test_crop_shape(input_size: int | tuple[int, int] | None, expected: tuple[int, int]) -> None:
    assert crop_shape(input_size, (28, 28)) == expected


@pytest.mark.parametrize(
    "input_size",
    [
        401,
        399,
        0,
        -4,
    ],
)
def test_crop_shape_of_a_non_square_count_raises(input_size: int) -> None:
    with pytest.raises(ValueError, match=f"input_size={input_size} is not a square number"):
        crop_shape(input_size, (28, 28))


def test_wrongly_typed_dataset_option_is_not_called_unknown() -> None:
    with pytest.raises(ValueError, match="synthetic got an option value of the wrong type"):
        load_dataset("synthetic", Path("."), 0.1, {"size": "500"})


def test_crop_shape_of_an_empty_side_raises() -> None:
    with pytest.raises(ValueError, match="height and width of at least 1"):
        crop_shape((0, 20), (28, 28))


def test_with_train_subset(small_mnist: Dataset) -> None:
    assert small_mnist.with_train_subset(None) is small_mnist
    subset = small_mnist.with_train_subset(50)
    assert len(subset.train) == 50
    assert torch.equal(subset.train.x, small_mnist.train.x[:50])
    assert torch.equal(subset.train.y, small_mnist.train.y[:50])
    assert subset.val is small_mnist.val and subset.test is small_mnist.test
    everything = len(small_mnist.train)
    assert len(small_mnist.with_train_subset(everything).train) == everything


def test_a_train_subset_larger_than_the_training_split_uses_it_whole(
        small_mnist: Dataset) -> None:
    count = len(small_mnist.train)
    assert small_mnist.with_train_subset(count + 1) is small_mnist


# ---------------------------------------------------------------- session errors


NEVER_RUN = """
    from pathlib import Path

    def test_a(dataset):
        Path("ran-a").touch()

    def test_b(trained_mlp):
        Path("ran-b").touch()

    def test_c(dataset, trained_mlp):
        Path("ran-c").touch()
"""


def test_missing_data_set_stops_the_session_once(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    pytester.makepyfile(NEVER_RUN)
    result = run(pytester, "--dataset", "mnist", "--data-dir", str(empty))
    line = assert_one_clean_error(result)
    assert line.startswith(f"ERROR: MNIST is not in {empty / 'MNIST' / 'raw'}")
    assert "could not be downloaded (OSError: downloads are disabled in the test suite)" in line
    for hint in ("--batchprof-data-dir", "BATCHPROF_DATA_DIR", "--batchprof-dataset digits"):
        assert hint in line
    assert not list(pytester.path.glob("ran-*"))


def test_unknown_dataset_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(NEVER_RUN)
    result = run(pytester, "--dataset", "nope")
    line = assert_one_clean_error(result)
    # "ERROR: --dataset is 'nope', which is not one of mnist, ...; expected ... (got 'nope')"
    assert line.startswith("ERROR: --dataset ")
    assert "'nope'" in line
    assert CHOICES in line
    assert not list(pytester.path.glob("ran-*"))


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('"nope"', f"ERROR: unknown data set 'nope'; choose one of {CHOICES}, or register *"),
        ('"synthetic", colour=1', "ERROR: data set synthetic does not take these options: *"),
        ("", "ERROR: test_marker.py::test_x: @pytest.mark.dataset takes one data set name*"),
    ],
    ids=["unknown-name", "unknown-option", "no-name"],
)
def test_bad_dataset_marker_is_a_usage_error(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        test_marker=f"""
        from pathlib import Path

        import pytest

        @pytest.mark.dataset({marker})
        def test_x(dataset):
            Path("ran-x").touch()

        def test_y():
            Path("ran-y").touch()
        """
    )
    result = run(pytester, "--dataset", "synthetic")
    line = assert_one_clean_error(result)
    assert fnmatch.fnmatchcase(line, message), line
    assert not list(pytester.path.glob("ran-*"))


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the data sets the session loads (asks to load), in order."""
    names: list[str] = []
    real_load = session_module.load_dataset

    def spy(name: str, *args: object, **kwargs: object) -> Dataset:
        names.append(name)
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(session_module, "load_dataset", spy)
    return names


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """A data directory without any data set."""
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_collect_only_does_not_load_data(
    pytester: pytest.Pytester, loads: list[str], empty: Path
) -> None:
    pytester.makepyfile(NEVER_RUN)

    result = run(pytester, "--collect-only", "--dataset", "mnist", "--data-dir", str(empty))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*3 tests collected*"])
    assert loads == []

    # The same session without --collect-only does load (and stops: there is no MNIST).
    result = run(pytester, "--dataset", "mnist", "--data-dir", str(empty))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert loads == ["mnist"]
    assert not list(pytester.path.glob("ran-*"))


def test_a_missing_default_data_set_is_tried_once_and_fails_each_test_that_asks(
    pytester: pytest.Pytester, loads: list[str], empty: Path
) -> None:
    """Unchosen, the default data set is not loaded before the tests (a test may train on
    its own): each test that asks for it fails with the same line, and it is looked for
    once, not once per test."""
    pytester.makepyfile(
        """
        def test_a(trained_mlp):
            trained_mlp(hidden=8)

        def test_b(trained_mlp):
            trained_mlp(hidden=8)

        def test_unit():
            pass
        """
    )
    result = run(pytester, "--data-dir", str(empty), "--batchprof-no-report")
    result.assert_outcomes(passed=1, failed=2)
    assert loads == ["mnist"]
    for test in ("test_a", "test_b"):
        (line,) = failure_section(result, test)
        assert line.startswith(f"MNIST is not in {empty / 'MNIST' / 'raw'}"), line


def test_a_train_subset_larger_than_the_data_set_uses_it_whole_with_a_note(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_x(trained_mlp, batch_size):
            run = trained_mlp(hidden=8)
            assert run.samples_per_epoch == 2750
            assert run.config.train_subset == 5000
        """
    )
    # synthetic's default size is 3,000: 2,750 training samples after the 1/12 validation split.
    result = run(pytester, "--dataset", "synthetic", "--train-subset", "5000",
                 "--batch-sizes", "256", "--epochs", "1")
    result.assert_outcomes(passed=1)
    assert [row["data note"] for row in summary_rows(result)] == [
        "all 2,750 training samples (fewer than --batchprof-train-subset 5,000)"]


def test_a_batch_size_larger_than_the_data_set_fails_only_its_runs(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_x(trained_mlp, batch_size):
            trained_mlp(hidden=8)

        def test_unit():
            pass
        """
    )
    result = run(pytester, "--dataset", "synthetic", "--train-subset", "100",
                 "--batch-sizes", "64,128", "--epochs", "1")
    result.assert_outcomes(passed=2, failed=1)
    assert "batch_size=128 must be a whole number from 1 to the 100 training samples" in (
        "\n".join(failure_section(result, "test_x[bs128]")))
    assert [row["batch"] for row in summary_rows(result)] == ["64"]


def test_dataset_choices_match_the_loaders() -> None:
    assert ", ".join(DATASETS) == CHOICES
