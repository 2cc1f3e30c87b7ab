"""Data as the user gave it, in real sessions: registered samples reach the model with their
dtype and values, a data set that cannot be registered fails only the tests that use it,
``record(test=...)`` scores exactly the user's test data, and ``--batchprof-train-subset``
takes at most N samples of each data set.

Each test runs an in-process ``pytester`` session whose conftest.py registers small data
sets, as a project would; the autouse ``forget_registrations`` fixture removes what the
inner conftest registered (registrations live in a process-global dict).
"""

from __future__ import annotations

import json

import pytest
from session_output import failure_section, summary_rows

from pytest_batchprof.reports import storage

BASE = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
        "--device", "cpu", "--batchprof-no-co2", "--epochs", "1")
"""Every inner session: on the CPU, no CO2 metering, one epoch."""

TRAIN_SUBSET = 6000
SMALL_TRAIN = 2200
"""A registered data set smaller than ``--batchprof-train-subset``: its training split."""

DATA = """
import torch

import pytest_batchprof


def tokens(count, length=10, vocabulary=50, seed=0):
    # token ids (count, length) for nn.Embedding; the class is whether the first id is small
    ids = torch.randint(vocabulary, (count, length), generator=torch.Generator().manual_seed(seed))
    return ids, (ids[:, 0] < vocabulary // 2).long()


def grey(count, seed=0):
    # uint8 images in 0-255; the class is whether the top-left pixel is bright
    images = torch.randint(0, 256, (count, 6, 6), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return images, (images[:, 0, 0] > 127).long()


def features(count, seed=0):
    # float features far from mean 0 and std 1; the class is the sign of the first one
    x = torch.randn(count, 5, generator=torch.Generator().manual_seed(seed)) * 4 + 2
    return x, (x[:, 0] > 2).long()
"""

CONFTEST = DATA + f"""

pytest_batchprof.register_dataset("tokens", tokens(300), tokens(60, seed=1))
pytest_batchprof.register_dataset("grey", grey(240), grey(40, seed=1))
pytest_batchprof.register_dataset("grey-normalised", grey(240), grey(40, seed=1),
                                  normalize=True)
pytest_batchprof.register_dataset("shifted", features(240), features(60, seed=1))
pytest_batchprof.register_dataset("small", features({SMALL_TRAIN}), features(100, seed=1),
                                  val=features(100, seed=2))
# diabetes-like regression targets: whole numbers from 25 to 346, not class indices
pytest_batchprof.register_dataset(
    "floaty", (torch.randn(200, 4), torch.linspace(25, 346, 200).round()),
    (torch.randn(20, 4), torch.linspace(25, 346, 20).round()))
pytest_batchprof.register_dataset("ragged", (torch.randn(10, 4), torch.arange(9) % 2),
                                  features(20))
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """An inner project whose conftest.py registers the data sets of :data:`CONFTEST`."""
    pytester.makeconftest(CONFTEST)
    return pytester


def report(pytester: pytest.Pytester) -> dict[str, object]:
    """The session's report JSON (``latest.json`` under ``out``)."""
    return json.loads((pytester.path / "out" / "latest.json").read_text("utf-8"))


def header(pytester: pytest.Pytester) -> dict[str, str]:
    """The markdown report's header table, as {key: value}."""
    lines = (pytester.path / "out" / "latest.md").read_text("utf-8").splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    cells = {}
    for line in lines[start + 2:]:  # past the header row and the |---| rule
        if not line.startswith("|"):
            break
        key, value = (cell.strip() for cell in line.strip().strip("|").split("|", 1))
        cells[key] = value
    return cells


# ---------------------------------------------------------------- samples as given


def test_token_ids_reach_an_embedding_model_as_int64_and_train_end_to_end(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        """
        import pytest
        import torch
        from torch import nn

        SEEN = []


        class Bag(nn.Module):
            def __init__(self, data):
                super().__init__()
                self.embed = nn.Embedding(50, 8)
                self.head = nn.Linear(8 * data.input_shape[0], data.num_classes)

            def forward(self, ids):
                SEEN.append(ids.dtype)
                return self.head(self.embed(ids).flatten(1))


        @pytest.mark.dataset("tokens")
        def test_tokens(trained_model, dataset):
            assert dataset.train.x.dtype == torch.int64
            assert dataset.sample_shape == (10,)
            run = trained_model(Bag, batch_size=32, lr=0.01)
            assert set(SEEN) == {torch.int64}
            assert run.test_accuracy is not None
        """
    )
    result = project.runpytest(*BASE, "--batchprof-report", "out")
    result.assert_outcomes(passed=1)
    (row,) = report(project)["rows"]
    assert (row["dataset"], row["input_shape"]) == ("tokens", [10])
    assert row["params"] == 50 * 8 + (8 * 10 + 1) * 2
    assert row["flops"] is not None or row["flops_notes"], row
    assert row["latency_median_s"] > 0
    assert row["checkpoint_bytes"] > 0


def test_uint8_samples_arrive_unscaled_and_normalize_standardises(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        DATA + """

import pytest
from torch import nn

SEEN = []


class Pixels(nn.Module):
    def __init__(self, data):
        super().__init__()
        self.linear = nn.Linear(data.input_size, data.num_classes)

    def forward(self, images):
        SEEN.append((images.dtype, int(images.max())))
        return self.linear(images.flatten(1).float() / 255)


@pytest.mark.dataset("grey")
def test_grey(trained_model, dataset):
    registered, _ = grey(40, seed=1)
    assert torch.equal(dataset.test.x, registered)  # uint8, 0-255, as given
    trained_model(Pixels, batch_size=16)
    assert {dtype for dtype, _ in SEEN} == {torch.uint8}
    assert max(largest for _, largest in SEEN) > 1


@pytest.mark.dataset("grey-normalised")
def test_normalised(dataset):
    assert dataset.train.x.dtype == torch.float32
    assert abs(dataset.train.x.mean().item()) < 1e-4
    assert abs(dataset.train.x.std().item() - 1) < 1e-3
"""
    )
    result = project.runpytest(*BASE, "--batchprof-no-report")
    result.assert_outcomes(passed=2)


# ---------------------------------------------------------------- registrations that fail


FAILING = """
import pytest


@pytest.mark.dataset("floaty")
def test_floaty(trained_mlp):
    trained_mlp(hidden=4)


@pytest.mark.dataset("ragged")
def test_ragged(dataset):
    pass


def test_unit():
    assert sum([1, 2]) == 3


@pytest.mark.dataset("shifted")
def test_other_data_set(trained_mlp):
    assert trained_mlp(hidden=4).config.dataset == "shifted"
"""


def test_a_data_set_that_cannot_be_registered_fails_only_its_tests(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_failing=FAILING)
    result = project.runpytest(*BASE, "--batchprof-no-report", "-rA")
    result.assert_outcomes(passed=2, failed=1, errors=1)  # trained_mlp fails in the call
    output = result.stdout.str()
    assert "Traceback" not in output and "ImportError" not in output
    assert failure_section(result, "test_floaty") == [
        "register_dataset('floaty') train: y holds torch.float32 targets, and a "
        "classification data set needs integer class indices; pass task='regression' (or "
        "'multilabel' for 0/1 labels per class), or cast class indices with y.long()"]
    assert failure_section(result, "test_ragged") == [
        "register_dataset('ragged') train: y has shape (9,); expected 10 targets, one per "
        "sample"]
    assert [row["data set"] for row in summary_rows(result)] == ["shifted"]


def test_the_option_still_names_a_data_set_that_failed_to_register(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_failing=FAILING)
    result = project.runpytest(*BASE, "--batchprof-no-report", "--batchprof-dataset", "floaty",
                               "-k", "unit or other")
    result.assert_outcomes(passed=2)


# ---------------------------------------------------------------- record(test=...)


RECORDED = DATA + """

import pytest
import torch.nn.functional as F
from torch import nn

import pytest_batchprof


def own_loop(x, y, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(5, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    history = []
    for epoch in (1, 2):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"epoch": epoch, "train_loss": loss.item(), "train_accuracy": 0.5,
                        "val_loss": loss.item(), "val_accuracy": 0.5})
    return model, history


def mine(model, x, y):
    with torch.no_grad():
        outputs = model(x)
    return F.cross_entropy(outputs, y).item(), int((outputs.argmax(1) == y).sum()) / len(y)


def test_tensors():
    model, history = own_loop(*features(200))
    test_x, test_y = features(300, seed=7)
    run = pytest_batchprof.record(model, batch_size=200, history=history, name="tensors",
                                  test=(test_x, test_y))
    loss, accuracy = mine(model, test_x, test_y)
    assert run.test_accuracy == pytest.approx(accuracy, rel=1e-9)
    assert run.test_loss == pytest.approx(loss, rel=1e-5)


def test_loader():
    model, history = own_loop(*features(200))
    test_x, test_y = features(300, seed=7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(test_x, test_y),
                                         batch_size=64)
    run = pytest_batchprof.record(model, batch_size=200, history=history, name="loader",
                                  test=loader, seed=7)
    assert run.test_accuracy == pytest.approx(mine(model, test_x, test_y)[1], rel=1e-9)


def test_torch_dataset():
    model, history = own_loop(*features(200))
    test_x, test_y = features(300, seed=7)
    run = pytest_batchprof.record(model, batch_size=200, history=history, name="dataset",
                                  test=torch.utils.data.TensorDataset(test_x, test_y),
                                  dataset="my features", train_samples=200)
    assert run.test_accuracy == pytest.approx(mine(model, test_x, test_y)[1], rel=1e-9)


@pytest.mark.parametrize("test", [torch.zeros(3, 5), (torch.zeros(3, 5), torch.zeros(3))],
                         ids=["no-labels", "float-labels"])
def test_bad_test_data(test):
    model, _ = own_loop(*features(20))
    with pytest.raises(ValueError, match=r"^record\\(test=\\.\\.\\.\\): "):
        pytest_batchprof.record(model, batch_size=20, test=test)


@pytest.mark.dataset("shifted")
def test_registered_split(dataset):
    model, history = own_loop(*features(240))
    run = pytest_batchprof.record(model, batch_size=240, name="registered", history=history)
    test_x, test_y = features(60, seed=1)  # as registered: not normalised
    assert torch.equal(dataset.test.x, test_x)
    assert run.test_accuracy == pytest.approx(mine(model, test_x, test_y)[1], rel=1e-9)


def test_no_history():
    model, _ = own_loop(*features(20))
    pytest_batchprof.record(model, batch_size=20, name="bare", test=features(30, seed=1))
"""


def test_record_scores_exactly_the_test_data_it_is_given(project: pytest.Pytester) -> None:
    project.makepyfile(test_recorded=RECORDED)
    result = project.runpytest(*BASE, "--batchprof-report", "out", "--batchprof-seed", "3")
    result.assert_outcomes(passed=7)
    rows = {row["model"]: row for row in report(project)["rows"]}
    bare = rows.pop("bare")  # no history, no train_seconds: no time figure, never 0 s
    assert (bare["train_seconds"], bare["history_source"]) == (None, "none given to record")
    given = "test= given to record"
    assert {name: (row["dataset"], row["test_source"], row["history_source"], row["seed"])
            for name, row in rows.items()} == {
        "tensors": ("own test data", f"{given} (300 samples)", "the test's own loop", 3),
        "loader": ("own test data", f"{given} (a DataLoader)", "the test's own loop", 7),
        "dataset": ("my features", f"{given} (a Dataset of 300 samples)",
                    "the test's own loop", 3),
        "registered": ("shifted", "registered test split of shifted", "the test's own loop",
                       3),
    }
    for row in rows.values():
        assert row["input_shape"] == [5]
        assert row["flops"] == 2 * 5 * 2  # nn.Linear(5, 2), on a sample of the test data
        assert row["latency_median_s"] > 0
    assert rows["tensors"]["samples_per_epoch"] is None  # not known without train_samples
    assert rows["tensors"]["train_samples_per_second"] is None
    assert rows["dataset"]["samples_per_epoch"] == 200
    assert rows["registered"]["samples_per_epoch"] == 240 - round(240 / 12)
    table = {row["model"]: row for row in summary_rows(result)}
    assert table["tensors"]["test data"] == f"{given} (300 samples)"
    assert table["tensors"]["train and val figures"] == "the test's own loop"
    markdown = (project.path / "out" / "latest.md").read_text("utf-8")
    assert "seed None" not in markdown
    result.stdout.fnmatch_lines([
        "batchprof: recorded tensors on own test data (trained by the test's own loop): "
        f"test acc=* on {given} (300 samples); seed 3 (the session's seed: record was given "
        "none)"])


# ---------------------------------------------------------------- several data sets


def test_a_train_subset_takes_at_most_n_samples_of_each_data_set(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        f"""
        import pytest

        @pytest.mark.dataset("small")
        def test_small(trained_mlp):
            assert trained_mlp(hidden=4).samples_per_epoch == {SMALL_TRAIN}

        @pytest.mark.dataset("synthetic", size=6600)
        def test_large(trained_mlp):
            assert trained_mlp(hidden=4).samples_per_epoch == {TRAIN_SUBSET}
        """
    )
    result = project.runpytest(*BASE, "--batchprof-train-subset", str(TRAIN_SUBSET),
                               "--batchprof-batch-sizes", "500", "--batchprof-report", "out")
    result.assert_outcomes(passed=2)
    note = (f"all {SMALL_TRAIN:,} training samples (fewer than --batchprof-train-subset "
            f"{TRAIN_SUBSET:,})")
    assert {row["data set"]: row["data note"] for row in summary_rows(result)} == {
        "small": note, "synthetic(size=6600)": ""}
    rows = report(project)["rows"]
    assert {row["train_subset"] for row in rows} == {TRAIN_SUBSET}
    # The header names the data sets the runs used (not the option's default, mnist).
    cells = header(project)
    assert cells["data sets"] in (f"small ({note}), synthetic(size=6600)",
                                  f"synthetic(size=6600), small ({note})")
    assert "option dataset" not in cells
    assert report(project)["environment"]["data sets"] == cells["data sets"]


def test_the_header_names_the_data_sets_the_rows_used() -> None:
    note = "all 2,200 training samples (fewer than --batchprof-train-subset 6,000)"
    rows = [{"dataset": "small", "data_note": note}, {"dataset": "synthetic(size=600)"},
            {"dataset": "small", "data_note": note}]
    env = storage.environment({"dataset": "mnist", "seed": 0}, "cpu", rows)
    assert env["data sets"] == f"small ({note}), synthetic(size=600)"
    assert "option dataset" not in env  # the default, mnist, that no run used
    assert env["option seed"] == 0
    for default in ("small", "synthetic"):  # a run used it (with or without options)
        assert storage.environment({"dataset": default}, "cpu", rows)["option dataset"] == (
            default)
