"""``trained_model`` and ``record`` as a user meets them, in real pytest sessions.

Every test here runs ``pytester`` sessions (in-process, but for the one that needs a
session not nested in this one) of a small inner project:
its own ``nn.Module`` classes and factory functions, its own losses and
optimizers, data sets registered from tensors and from a
``torch.utils.data.Dataset`` in its ``conftest.py``, and runs of its own loop
brought in with ``pytest_batchprof.record``. The outer file imports nothing but
the top-level package (modules inside it may move), and reads what the user
reads: the terminal (the training lines, the summary table, one-line failures)
and the report JSON.

Data: scikit-learn's digits (8x8 images, offline) and small learnable sets
(class prototypes plus noise, from a fixed ``torch.Generator``). Models are tiny
and train for one or two epochs.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from session_output import failure_section, summary_rows

import pytest_batchprof

BASE = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
        "--device", "cpu", "--no-co2", "--epochs", "1")
"""Every inner session: on the CPU, no CO2 metering, one epoch unless a test says otherwise."""
DIGITS = (*BASE, "--dataset", "digits")
ARCHITECTURE = re.compile(r"[0-9a-f]{16}")
REGISTERED = ("tm-flat", "tm-nchw", "tm-torch-dataset")
"""The names the inner conftest.py of :data:`REGISTERING_CONFTEST` registers."""


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Train on one CPU thread: with two cores shared by other processes, torch's thread
    pool spins and a run that takes 0.1 s takes 10 s. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def registered(pytester: pytest.Pytester) -> Iterator[pytest.Pytester]:
    """An inner project whose conftest.py registers :data:`REGISTERED`; registrations are
    process-global, so they are removed when the test ends."""
    pytester.makeconftest(REGISTERING_CONFTEST)
    yield pytester
    for name in REGISTERED:
        pytest_batchprof.unregister_dataset(name)




def report_rows(pytester: pytest.Pytester, directory: str = "out") -> list[dict[str, object]]:
    """The rows of the session's report JSON (``latest.json`` in ``directory``)."""
    document = json.loads((pytester.path / directory / "latest.json").read_text("utf-8"))
    return document["rows"]


def training_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("batchprof: training ")]




def params_of(source: str, name: str) -> int:
    """The parameter count of the model class ``name`` defined in an inner test file."""
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(source), namespace)  # this file's own source text
    model = namespace[name]()
    return sum(parameter.numel() for parameter in model.parameters())


def accuracies(pytester: pytest.Pytester) -> list[str]:
    """What the inner tests appended to ``accuracies.txt``: ``label=repr(accuracy)``."""
    return (pytester.path / "accuracies.txt").read_text("utf-8").split()


# ---------------------------------------------------------------- inner sources


REGISTERING_CONFTEST = """
import torch

import pytest_batchprof


def learnable(shape, classes, counts, seed, noise=0.3):
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, *shape, generator=generator)
    splits = []
    for count in counts:
        labels = (torch.arange(count) % classes)[torch.randperm(count, generator=generator)]
        x = prototypes[labels] + noise * torch.randn(count, *shape, generator=generator)
        splits.append((x, labels))
    return splits


FLAT_TRAIN, FLAT_TEST = learnable((12,), 4, (480, 120), seed=0)
pytest_batchprof.register_dataset("tm-flat", FLAT_TRAIN, FLAT_TEST)
NCHW_TRAIN, NCHW_TEST = learnable((3, 8, 8), 4, (480, 120), seed=1)
pytest_batchprof.register_dataset("tm-nchw", NCHW_TRAIN, NCHW_TEST)
(DS_X, DS_Y), (DS_TEST_X, DS_TEST_Y) = learnable((10,), 3, (360, 90), seed=2)
pytest_batchprof.register_dataset("tm-torch-dataset", torch.utils.data.TensorDataset(DS_X, DS_Y),
                                  torch.utils.data.TensorDataset(DS_TEST_X, DS_TEST_Y))
"""

SMALL_CNN = """
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, {width}, 3, padding=1)
        self.head = nn.Linear({width} * 4 * 4, 10)

    def forward(self, images):
        x = torch.relu(self.conv(images.unsqueeze(1)))  # digits: (N, 8, 8)
        return self.head(nn.functional.max_pool2d(x, 2).flatten(1))
"""


def small_cnn(width: int = 8) -> str:
    return SMALL_CNN.replace("{width}", str(width))


# ---------------------------------------------------------------- 1. an nn.Module class


CNN_TESTS = """
import pytest


@pytest.mark.min_accuracy(0.5)
def test_small_cnn(trained_model, batch_size):
    run = trained_model(SmallCNN, batch_size=batch_size, lr=0.01)
    assert run.config.batch_size == batch_size
    assert run.name == f"SmallCNN ({run.params:,})"
"""


def test_a_module_class_trains_over_the_batch_sizes_into_table_and_report(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cnn=small_cnn() + CNN_TESTS)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16,64", "--batchprof-report", "out")
    result.assert_outcomes(passed=2)
    name = f"SmallCNN ({params_of(small_cnn(), 'SmallCNN'):,})"
    assert name == "SmallCNN (1,370)"
    assert [line.split(" on ")[0] for line in training_lines(result)] == [
        f"batchprof: training {name}"] * 2
    table = summary_rows(result)
    assert [(row["model"], row["data set"], row["batch"]) for row in table] == [
        (name, "digits", "16"), (name, "digits", "64")]
    for row in table:
        assert row["params"] == "1,370"
        assert re.fullmatch(r"\d{1,3}(,\d{3})*", row["FLOPs / sample"]), row
        assert float(row["test acc (%)"]) >= 50
        assert row["outcome"] == "passed"
    rows = report_rows(pytester)
    assert [(row["model"], row["batch_size"]) for row in rows] == [(name, 16), (name, 64)]
    for row in rows:
        assert ARCHITECTURE.fullmatch(row["architecture"]), row["architecture"]
        assert row["hidden"] is None and row["activation"] is None
        assert row["params"] == 1370
        assert isinstance(row["flops"], int) and row["flops"] > 0
        assert row["input_shape"] == [8, 8] and row["num_classes"] == 10
        assert (row["loss"], row["optimizer"]) == ("cross_entropy", "adam")
        assert row["test_accuracy"] >= 0.5
    assert rows[0]["architecture"] == rows[1]["architecture"]  # one model, two batch sizes


# ---------------------------------------------------------------- 2. factories, registered data


FACTORY_TESTS = """
import pytest
from torch import nn

import pytest_batchprof

pytestmark = pytest.mark.min_accuracy(0.5)


def make(data):
    assert isinstance(data, pytest_batchprof.DataDescription)
    return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, 16), nn.ReLU(),
                         nn.Linear(16, data.num_classes))


@pytest.mark.dataset("tm-flat")
def test_factory_on_features(trained_model, batch_size, dataset):
    run = trained_model(make, lr=0.02)
    assert (dataset.sample_shape, dataset.num_classes) == ((12,), 4)
    assert run.name == "make (276)"


@pytest.mark.dataset("tm-flat")
def test_mlp_on_features(trained_model, batch_size):
    assert trained_model(pytest_batchprof.mlp(32), lr=0.02).name == "12-32-4"


@pytest.mark.dataset("tm-nchw")
def test_cnn_on_images(trained_model, batch_size, dataset):
    run = trained_model(pytest_batchprof.cnn(channels=(4,), hidden=(16,)), lr=0.02)
    assert dataset.sample_shape == (3, 8, 8)
    assert run.name == "c4-16-4"


@pytest.mark.dataset("tm-nchw")
def test_factory_on_images(trained_model, batch_size):
    assert trained_model(make, lr=0.02).name == f"make ({192 * 16 + 16 + 16 * 4 + 4:,})"


@pytest.mark.dataset("tm-torch-dataset")
def test_factory_on_a_torch_dataset(trained_model, batch_size, dataset):
    run = trained_model(make, lr=0.02)
    assert (dataset.sample_shape, dataset.num_classes) == ((10,), 3)
    assert run.name == "make (227)"
"""


def test_factories_and_shipped_families_train_on_registered_data(
        registered: pytest.Pytester) -> None:
    registered.makepyfile(test_factories=FACTORY_TESTS)
    result = registered.runpytest(*BASE, "--epochs", "2", "--batch-sizes", "16,64",
                                  "--batchprof-report", "out")
    result.assert_outcomes(passed=10)
    expected = [(model, data, batch) for model, data in (
        ("make (276)", "tm-flat"), ("12-32-4", "tm-flat"), ("c4-16-4", "tm-nchw"),
        ("make (3,156)", "tm-nchw"), ("make (227)", "tm-torch-dataset"),
    ) for batch in ("16", "64")]
    table = summary_rows(result)
    assert sorted((row["model"], row["data set"], row["batch"]) for row in table) == sorted(
        expected)
    assert all(row["outcome"] == "passed" and float(row["test acc (%)"]) >= 50 for row in table)
    rows = {(row["model"], row["dataset"], row["batch_size"]): row
            for row in report_rows(registered)}
    assert len(rows) == 10
    for (model, _, _), row in rows.items():
        assert row["epochs"] == 2 and row["flops"] > 0 and row["params"] > 0
        assert ARCHITECTURE.fullmatch(row["architecture"])
        if model.startswith("make"):
            assert row["hidden"] is None and row["activation"] is None
    assert rows[("12-32-4", "tm-flat", 16)]["hidden"] == [32]
    assert rows[("c4-16-4", "tm-nchw", 16)]["input_shape"] == [3, 8, 8]
    assert rows[("make (227)", "tm-torch-dataset", 64)]["input_shape"] == [10]
    # one factory on three data sets: three architectures, sized by each description
    assert len({rows[(model, data, 16)]["architecture"] for model, data, _ in expected
                if model.startswith("make")}) == 3


# ---------------------------------------------------------------- 3. losses and optimizers


NET = """
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, images):
        return self.body(images)
"""

RECIPE_TESTS = NET + """

def smooth_loss(outputs, targets):
    return F.cross_entropy(outputs, targets, label_smoothing=0.05)


def nesterov(parameters):
    return torch.optim.SGD(parameters, lr=1.0, momentum=0.9, nesterov=True)


@pytest.mark.min_accuracy(0.5)
def test_loss_module_and_partial_optimizer(trained_model):
    run = trained_model(Net, loss=nn.CrossEntropyLoss(label_smoothing=0.1),
                        optimizer=functools.partial(torch.optim.SGD, momentum=0.9), lr=0.05)
    assert isinstance(run.optimizer, torch.optim.SGD)
    assert run.optimizer.param_groups[0]["momentum"] == 0.9
    assert run.optimizer.param_groups[0]["lr"] == 0.05  # the run's lr, written into the groups


@pytest.mark.min_accuracy(0.5)
def test_loss_function_and_optimizer_function(trained_model):
    run = trained_model(Net, loss=smooth_loss, optimizer=nesterov, lr=0.05, name="My net")
    assert run.name == "My net"
    assert run.optimizer.param_groups[0]["nesterov"] is True
    assert run.optimizer.param_groups[0]["lr"] == 0.05
"""


def test_custom_losses_and_optimizers_train_and_are_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_recipes=RECIPE_TESTS)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16", "--batchprof-report", "out")
    result.assert_outcomes(passed=2)
    assert len(training_lines(result)) == 2
    assert [row["model"] for row in summary_rows(result)] == ["Net (2,410)", "My net"]
    module, function = report_rows(pytester)
    assert module["model"] == "Net (2,410)"
    assert module["loss"] == "CrossEntropyLoss(label_smoothing=0.1)"
    assert "SGD" in module["optimizer"]
    assert function["model"] == "My net"
    assert (function["loss"], function["optimizer"]) == ("smooth_loss", "nesterov")
    assert module["code"] != function["code"]  # the callables are part of the code
    assert all(len(row["code"]) == 16 for row in (module, function))
    for row in (module, function):
        assert row["lr"] == 0.05 and row["test_accuracy"] >= 0.5
    assert module["architecture"] == function["architecture"]  # the same model, named apart


PARTIAL_TESTS = NET + """

def test_two_momenta(trained_model):
    heavy = trained_model(Net, optimizer=functools.partial(torch.optim.SGD, momentum=0.9),
                          lr=0.05)
    plain = trained_model(Net, optimizer=functools.partial(torch.optim.SGD, momentum=0.0),
                          lr=0.05)
    assert heavy.optimizer.param_groups[0]["momentum"] == 0.9
    assert plain.optimizer.param_groups[0]["momentum"] == 0.0, "got the momentum=0.9 run"
"""


def test_partials_with_other_arguments_are_other_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_partials=PARTIAL_TESTS)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16", "--batchprof-report", "out")
    result.assert_outcomes(passed=1)
    assert len(training_lines(result)) == 2
    names = sorted(row["optimizer"] for row in report_rows(pytester))
    assert len(set(names)) == 2
    for name, momentum in zip(names, ("0.0", "0.9"), strict=True):
        assert "SGD" in name and momentum in name and name.count("(") == name.count(")"), name


# ---------------------------------------------------------------- 4. --repeats


REPEATED_TESTS = """
import pytest
from torch import nn


def make(data):
    return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, 16), nn.ReLU(),
                         nn.Linear(16, data.num_classes))


@pytest.mark.min_accuracy(0.5)
def test_repeated(trained_model, batch_size):
    run = trained_model(make, lr=0.005)  # the two seeds differ in test accuracy
    assert run.seeds == (0, 1)
    assert [one.config.seed for one in run.runs] == [0, 1]
    spread = run.interval("test_accuracy")
    assert spread.n == 2 and spread.low <= run.test_accuracy <= spread.high
"""


def test_repeats_fold_the_seeds_of_a_factory_into_one_row(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_repeated=REPEATED_TESTS)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16,64", "--repeats", "2",
                                "--batchprof-report", "out")
    result.assert_outcomes(passed=2)
    assert [line.split(" on digits")[0] for line in training_lines(result)] == [
        "batchprof: training 2 runs of make (1,210)"] * 2  # each batch size: one ensemble
    table = summary_rows(result)
    assert [(row["model"], row["batch"], row["seeds"]) for row in table] == [
        ("make (1,210)", "16", "2"), ("make (1,210)", "64", "2")]
    for row in table:
        assert re.fullmatch(r"\d+\.\d ± \d+(\.\d+)?", row["test acc (%)"]), row
        assert row["params"] == "1,210"  # the seeds agree: no interval
    rows = report_rows(pytester)
    assert sorted((row["batch_size"], row["seed"]) for row in rows) == [
        (16, 0), (16, 1), (64, 0), (64, 1)]
    assert len({row["architecture"] for row in rows}) == 1


# ---------------------------------------------------------------- 5. the cache


CACHED_TESTS = """
from pathlib import Path

from torch import nn


def note(label, run):
    with Path("accuracies.txt").open("a") as handle:
        handle.write(f"{label}={run.test_accuracy!r}\\n")


def test_module_class(trained_model):
    note("class", trained_model(SmallCNN, lr=0.01))


def test_factory_inside_a_function(trained_model):
    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    note("local", trained_model(make, lr=0.01))


def test_lambda(trained_model):
    note("lambda", trained_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
                                 lr=0.01))
"""
LOCAL_NOTE = ("batchprof: make (650) is not cached: its factory is defined inside a function "
              "(test_factory_inside_a_function.<locals>.make); define it at module level, so "
              "that its name identifies it")
LAMBDA_NOTE = ("batchprof: <lambda> (650) is not cached: its factory is a lambda; define a "
               "module-level function or class instead")


def test_cache_loads_a_module_class_and_retrains_unnamed_factories(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cached=small_cnn() + CACHED_TESTS)
    cache_dir = pytester.path / "cache"
    args = (*DIGITS, "--batch-sizes", "16", "--batchprof-cache", str(cache_dir),
            "--batchprof-no-report")
    sessions = []
    for _ in range(2):
        (pytester.path / "accuracies.txt").unlink(missing_ok=True)
        result = pytester.runpytest(*args)
        result.assert_outcomes(passed=3)
        sessions.append((result, accuracies(pytester)))
    (first, first_accuracies), (second, second_accuracies) = sessions

    def trained(result: pytest.RunResult) -> list[str]:
        return [line.split(" on ")[0].removeprefix("batchprof: training ")
                for line in training_lines(result)]

    assert trained(first) == ["SmallCNN (1,370)", "make (650)", "<lambda> (650)"]
    assert trained(second) == ["make (650)", "<lambda> (650)"]  # the class from the cache
    second.stdout.fnmatch_lines([
        "batchprof: loaded SmallCNN (1,370) on digits, batch 16, 1 epoch, adam lr=0.01, seed 0, "
        "cpu from the cache"])
    for result in (first, second):
        assert result.outlines.count(LOCAL_NOTE) == 1, result.stdout.str()
        assert result.outlines.count(LAMBDA_NOTE) == 1, result.stdout.str()
        assert "from the cache" not in "".join(line for line in result.outlines
                                               if "make" in line or "lambda" in line)
    assert second_accuracies == first_accuracies  # all three: the class's came from disk
    assert [entry.split("=")[0] for entry in first_accuracies] == ["class", "local", "lambda"]
    assert len(list(cache_dir.glob("*.pt"))) == 1  # only the module-level class is kept

    pytester.makepyfile(test_cached=small_cnn(width=6) + CACHED_TESTS)  # another conv width
    changed = pytester.runpytest(*args)
    changed.assert_outcomes(passed=3)
    assert trained(changed) == ["SmallCNN (1,030)", "make (650)", "<lambda> (650)"]
    assert "from the cache" not in changed.stdout.str()
    assert len(list(cache_dir.glob("*.pt"))) == 2


OPTIMIZER_FUNCTION = """
import torch


def optimizer(parameters):
    return torch.optim.SGD(parameters, lr=1.0, momentum={momentum})


def test_own_optimizer(trained_model):
    run = trained_model(SmallCNN, optimizer=optimizer, lr=0.01)
    assert run.optimizer.param_groups[0]["momentum"] == {momentum}
"""


def test_cache_misses_when_the_optimizer_function_changes(pytester: pytest.Pytester) -> None:
    cache_dir = pytester.path / "cache"
    args = (*DIGITS, "--batch-sizes", "16", "--batchprof-cache", str(cache_dir),
            "--batchprof-no-report")
    for momentum in ("0.9", "0.0"):
        pytester.makepyfile(test_optimizer=small_cnn() + OPTIMIZER_FUNCTION.replace(
            "{momentum}", momentum))
        result = pytester.runpytest(*args)
        assert "from the cache" not in result.stdout.str(), momentum
        assert len(training_lines(result)) == 1
        result.assert_outcomes(passed=1)


LOCAL_TWINS = """
from torch import nn


def test_default_init(trained_model):
    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    trained_model(make, lr=0.01)


def test_zero_init(trained_model):
    def make():
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        nn.init.zeros_(model[1].weight)
        return model

    trained_model(make, lr=0.01)
"""


def test_two_unnamed_factories_of_one_structure_are_two_runs(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_twins=LOCAL_TWINS)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16", "--batchprof-no-report")
    result.assert_outcomes(passed=2)
    assert len(training_lines(result)) == 2
    assert [row["model"] for row in summary_rows(result)] == ["make (650)", "make (650)"]


# ---------------------------------------------------------------- 6. a saved baseline


BASELINE_TESTS = """
from torch import nn


def make(data):
    return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, 16), nn.ReLU(),
                         nn.Linear(16, data.num_classes))


def test_class(trained_model, batch_size):
    trained_model(SmallCNN, lr=0.01)


def test_factory(trained_model, batch_size):
    trained_model(make, lr=0.01, loss=nn.CrossEntropyLoss(label_smoothing=0.1))
"""
COMPARED = re.compile(r"^-+ compared with baseline (.+?) -+$")


def comparison(result: pytest.RunResult) -> tuple[Path, dict[str, dict[str, str]]]:
    """The baseline a session compared with, and its comparison table by run title."""
    lines = result.outlines
    (start,) = [index for index, line in enumerate(lines) if COMPARED.match(line)]
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    header, _rule, *body = table
    return Path(COMPARED.match(lines[start])[1]), {
        cells[0]: dict(zip(header, cells, strict=True)) for cells in body}


def test_a_baseline_of_user_models_compares_ok(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_baseline=small_cnn() + BASELINE_TESTS)
    args = (*DIGITS, "--batch-sizes", "16,64", "--batchprof-no-report")
    saved = pytester.runpytest(*args, "--batchprof-save", "base")
    saved.assert_outcomes(passed=4)
    path = pytester.path / "reports" / "baselines" / "base.json"
    assert f"baseline saved: {path}" in saved.outlines
    stored = json.loads(path.read_text("utf-8"))["rows"]
    assert sorted((row["model"], row["batch_size"]) for row in stored) == [
        ("SmallCNN (1,370)", 16), ("SmallCNN (1,370)", 64), ("make (1,210)", 16),
        ("make (1,210)", 64)]

    again = pytester.runpytest(*args, "--batchprof-compare", "base")
    again.assert_outcomes(passed=4)
    assert again.ret == pytest.ExitCode.OK
    shown, entries = comparison(again)
    assert shown == path
    assert sorted(entries) == sorted(f"{model} on digits, batch {batch}, seed 0"
                                     for model in ("SmallCNN (1,370)", "make (1,210)")
                                     for batch in (16, 64))
    for title, entry in entries.items():
        assert entry["verdict"] == "ok", (title, entry)
        assert entry["delta"] == "+0.00 pp", (title, entry)  # same seed, same accuracy
    assert "REGRESSION" not in again.stdout.str()
    assert "new (not in baseline)" not in again.stdout.str()


# ---------------------------------------------------------------- 7. trained_mlp is mlp()


MLP_TESTS = """
import pytest_batchprof


def test_fixture(trained_mlp):
    assert trained_mlp(hidden=(32,)).name == "64-32-10"


def test_factory(trained_model):
    assert trained_model(pytest_batchprof.mlp(32)).name == "64-32-10"


def test_both(trained_mlp, trained_model):
    assert trained_mlp(hidden=(32,)) is trained_model(pytest_batchprof.mlp(32))
"""


def test_trained_mlp_and_the_mlp_factory_are_one_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mlp=MLP_TESTS)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16", "--batchprof-report", "out")
    result.assert_outcomes(passed=3)
    assert training_lines(result) == [
        "batchprof: training 64-32-10 on digits, batch 16, 1 epoch, adam lr=0.001, seed 0, cpu"]
    assert [(row["model"], row["batch"]) for row in summary_rows(result)] == [("64-32-10", "16")]
    (row,) = report_rows(pytester)
    assert row["model"] == "64-32-10"
    assert (row["hidden"], row["activation"]) == ([32], "relu")
    assert row["tests"] == [f"test_mlp.py::test_{name}" for name in ("fixture", "factory", "both")]


# ---------------------------------------------------------------- 8. bad models end in one line


BAD_TESTS = """
import torch.nn.functional as F
from torch import nn


class FiveWay(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    def forward(self, images):
        return self.body(images)


class Good(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, images):
        return self.body(images)


def broken():
    raise RuntimeError("no weights here")


def two_arguments(data, width):
    return Good()


def per_sample(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")


def nan_loss(outputs, targets):
    return F.cross_entropy(outputs, targets) * float("nan")


def test_wrong_shape(trained_model):
    trained_model(FiveWay)


def test_factory_raises(trained_model):
    trained_model(broken)


def test_vector_loss(trained_model):
    trained_model(Good, loss=per_sample)


def test_nan_loss(trained_model):
    trained_model(Good, loss=nan_loss)


def test_two_arguments(trained_model):
    trained_model(two_arguments)


def test_instance(trained_model):
    trained_model(Good())


def test_not_callable(trained_model):
    trained_model("Good")


def test_good(trained_model):
    assert trained_model(Good, lr=0.01).test_accuracy > 0.5
"""
BAD_CASES = {
    "test_wrong_shape": "model FiveWay (325) returned shape (2, 5) for a batch of shape "
                        "(2, 8, 8); expected (2, 10), one score per class of digits",
    "test_factory_raises": "model broken failed to build: RuntimeError: no weights here",
    "test_vector_loss": "model Good (650): the loss returned shape (2,); it must return a "
                        "scalar tensor (the batch's mean)",
    "test_nan_loss": "model Good (650): the loss is nan on the first samples; it must be finite",
    "test_two_arguments": "model two_arguments needs 2 arguments (data, width); it must take "
                          "none, or one: the data description",
    "test_instance": "model is an instance of Good; pass its class (or a function returning a "
                     "fresh model), so that every run starts from its own seeded weights",
    "test_not_callable": "model='Good' is neither an nn.Module subclass nor a callable "
                         "returning one",
}


def test_bad_models_fail_their_test_in_one_line_and_the_session_goes_on(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad=BAD_TESTS)
    result = pytester.runpytest(*DIGITS, "--batch-sizes", "16", "--batchprof-no-report", "-rfp")
    result.assert_outcomes(passed=1, failed=len(BAD_CASES))
    output = result.stdout.str() + result.stderr.str()
    for test, message in BAD_CASES.items():
        assert failure_section(result, test) == [message], test
        (summary,) = [line for line in result.outlines
                      if line.startswith(f"FAILED test_bad.py::{test} ")]
        shown = summary.removeprefix(f"FAILED test_bad.py::{test} - Failed: ")
        assert shown != summary and message.startswith(shown.removesuffix("...")), summary
    assert "PASSED test_bad.py::test_good" in result.outlines
    assert "Traceback" not in output and "ModelError" not in output
    assert not [line for line in result.outlines if line.startswith(("E ", "> "))]
    assert training_lines(result) == [
        "batchprof: training Good (650) on digits, batch 16, 1 epoch, adam lr=0.01, seed 0, cpu"]
    assert [row["model"] for row in summary_rows(result)] == ["Good (650)"]


# ---------------------------------------------------------------- 9. record(): the test's own loop


RECORD_TESTS = """
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pytest_batchprof


class OwnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, images):
        return self.body(images)


def figures(model, split):
    with torch.no_grad():
        outputs = model(split.x)
    return (F.cross_entropy(outputs, split.y).item(),
            (outputs.argmax(1) == split.y).float().mean().item())


def own_loop(model, optimizer, dataset, epochs, batch_size):
    generator = torch.Generator().manual_seed(0)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(dataset.train.y), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(dataset.train.x[index]), dataset.train.y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        train_loss, train_accuracy = figures(model, dataset.train)
        val_loss, val_accuracy = figures(model, dataset.val)
        history.append({"epoch": epoch, "train_loss": train_loss,
                        "train_accuracy": train_accuracy, "val_loss": val_loss,
                        "val_accuracy": val_accuracy})
    return history


@pytest.mark.min_accuracy(0.5)
def test_own_loop(dataset):
    torch.manual_seed(0)
    model = OwnNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    history = own_loop(model, optimizer, dataset, epochs=2, batch_size=64)
    run = pytest_batchprof.record(model, batch_size=64, history=history, optimizer=optimizer)
    _, by_hand = figures(model, dataset.test)
    assert run.test_accuracy == pytest.approx(by_hand)
    Path("recorded.json").write_text(json.dumps({"history": history, "test_accuracy": by_hand}))


@pytest.mark.min_accuracy(0.99)
def test_threshold_applies(dataset):
    torch.manual_seed(0)
    pytest_batchprof.record(OwnNet(), batch_size=32, name="untrained OwnNet", history=[
        {"epoch": 1, "train_loss": 2.3, "train_accuracy": 0.1, "val_loss": 2.3,
         "val_accuracy": 0.1}])


def test_bad_history_is_a_value_error(dataset):
    with pytest.raises(ValueError, match=r"^record\\(history=\\.\\.\\.\\): entry 1 lacks"):
        pytest_batchprof.record(OwnNet(), batch_size=64,
                                history=[{"epoch": 1, "train_loss": 0.5}])
"""


def test_record_brings_the_tests_own_loop_into_table_and_report(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_record=RECORD_TESTS)
    result = pytester.runpytest(*DIGITS, "--batchprof-report", "out")
    result.assert_outcomes(passed=2, failed=1)
    assert training_lines(result) == []  # nothing trained by the plugin
    result.stdout.fnmatch_lines([
        "batchprof: recorded OwnNet (2,410) on digits (trained by the test's own loop): "
        "test acc=0.*"])
    (threshold,) = failure_section(result, "test_threshold_applies")
    assert threshold.startswith("untrained OwnNet on digits, batch 32, ")
    assert "is below 99.00%" in threshold

    recorded = json.loads((pytester.path / "recorded.json").read_text("utf-8"))
    table = {row["model"]: row for row in summary_rows(result)}
    assert list(table) == ["OwnNet (2,410)", "untrained OwnNet"]
    own = table["OwnNet (2,410)"]
    assert (own["batch"], own["epochs"], own["params"], own["outcome"]) == (
        "64", "2", "2,410", "passed")
    assert own["test acc (%)"] == f"{recorded['test_accuracy'] * 100:.1f}"
    assert own["val acc (%)"] == f"{recorded['history'][-1]['val_accuracy'] * 100:.1f}"
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", own["FLOPs / sample"])
    assert table["untrained OwnNet"]["outcome"] == "failed"

    rows = {row["model"]: row for row in report_rows(pytester)}
    row = rows["OwnNet (2,410)"]
    assert (row["batch_size"], row["epochs"]) == (64, 2)
    assert row["test_accuracy"] == pytest.approx(recorded["test_accuracy"])
    assert [{key: epoch[key] for key in recorded["history"][0]} for epoch in row["history"]] == (
        recorded["history"])
    assert row["params"] == 2410 and row["flops"] > 0
    assert row["peak_memory_method"].startswith("not measured")
    assert row["optimizer"] == "adam (own loop)"
    assert ARCHITECTURE.fullmatch(row["architecture"])
    assert rows["untrained OwnNet"]["outcome"] == "failed"


OUTSIDE_TESTS = """
import pytest
from torch import nn

import pytest_batchprof


def attempt():
    try:
        pytest_batchprof.record(nn.Linear(64, 10), batch_size=64)
    except RuntimeError as error:
        return str(error)
    return "no RuntimeError"


AT_IMPORT = attempt()


@pytest.fixture
def in_a_fixture():
    return attempt()


def test_outside(in_a_fixture):
    for message in (AT_IMPORT, in_a_fixture):
        assert message == ("pytest_batchprof.record(...) must be called inside a test (its "
                           "row belongs to the test that calls it)")
"""


def test_record_outside_a_test_is_a_runtime_error(pytester: pytest.Pytester) -> None:
    """In a subprocess: an in-process inner session would run inside this (outer) test."""
    pytester.makepyfile(test_outside=OUTSIDE_TESTS)
    result = pytester.runpytest_subprocess(*DIGITS)
    result.assert_outcomes(passed=1)
    assert "batchprof: recorded" not in result.stdout.str()


RECORDED_TWINS = """
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pytest_batchprof


@pytest.mark.parametrize("steps", [0, 50])
def test_own_loop(dataset, steps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(model(dataset.train.x[:256]), dataset.train.y[:256])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pytest_batchprof.record(model, batch_size=64, history=[
        {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0,
         "val_accuracy": 0.5}])
"""


def test_two_recorded_runs_of_one_class_are_two_rows(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_recorded_twins=RECORDED_TWINS)
    result = pytester.runpytest(*DIGITS, "--batchprof-no-report")
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("batchprof: recorded Sequential (650)") == 2
    assert len(summary_rows(result)) == 2
