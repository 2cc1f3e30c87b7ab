"""``sync_batchnorm=True``: BatchNorm normalising with the global batch's statistics in a
data-parallel run.

At the engine, with real 2-process gloo runs on the CPU: after one step on one global
batch, the running statistics and the gradients are those of one process on the whole
batch (and without synchronisation they are not); the converted model keeps the
BatchNorm's tensors and ``state_dict``; alone, the layer is BatchNorm. In a real session
(``pytester``): a BatchNorm CNN trained by 2 processes, its row and line saying so, and
the keyword refused for a run of one process.
"""

from __future__ import annotations

import json

import pytest
import torch
from session_output import summary_rows
from torch import nn

from pytest_batchprof.data.datasets import load_dataset, register_dataset
from pytest_batchprof.engine.batchnorm import CpuSyncBatchNorm, synchronise_batchnorm
from pytest_batchprof.engine.parallel import train_data_parallel
from pytest_batchprof.engine.training import Recipe, initial_model, train
from pytest_batchprof.experiment.config import RunConfig

LR = 0.5
BATCH = 64
CPU = torch.device("cpu")


def batchnorm_net() -> nn.Module:
    """A small CNN with a 2-d BatchNorm (momentum 0.1) and a 1-d one (momentum ``None``:
    the cumulative average)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8, momentum=None), nn.ReLU(),
                         nn.Linear(8, 3))


@pytest.fixture
def one_batch():
    """A data set whose training split is one global batch of :data:`BATCH` images, their
    values far from zero mean and unit variance (so that BatchNorm's statistics matter)."""
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(count, 1, 8, 8, generator=generator) * 2 + 1,
                torch.randint(0, 3, (count,), generator=generator))

    register_dataset("one-batch", train=split(BATCH), test=split(20), val=split(20))
    return load_dataset("one-batch", None, 0.2)


def config(**changes: object) -> RunConfig:
    values = dict(dataset="one-batch", input_shape=(1, 8, 8), hidden=None, num_classes=3,
                  activation=None, batch_size=BATCH, epochs=1, lr=LR, optimizer="sgd", seed=0,
                  device="cpu", train_subset=None, val_fraction=0.2, model="bn-net")
    values.update(changes)
    return RunConfig(**values)


def one_step(data, **changes: object) -> dict[str, torch.Tensor]:
    """The weights' gradients (from plain SGD's one step) and the buffers after one step
    on the global batch."""
    recipe = Recipe(batchnorm_net)
    run_config = config(**changes)
    if run_config.processes == 1:
        run = train(run_config, data, CPU, recipe=recipe)
    else:
        run = train_data_parallel(run_config, data, CPU, recipe)
    before = initial_model(run_config, CPU, recipe)[0].state_dict()
    after = run.model.state_dict()
    return {name: (value if name in dict(run.model.named_buffers())
                   else (before[name] - value) / LR)
            for name, value in after.items()}


def differences(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> (
        dict[str, float]):
    return {name: (first[name].double() - second[name].double()).abs().max().item()
            for name in first}


def test_two_synchronised_processes_step_as_one_on_the_global_batch(one_batch) -> None:
    whole = one_step(one_batch)
    synchronised = one_step(one_batch, processes=2, sync_batchnorm=True)
    apart = one_step(one_batch, processes=2)
    assert whole.keys() == synchronised.keys() == apart.keys()
    statistics = [name for name in whole if "running" in name]
    assert len(statistics) == 4
    assert all(difference <= 1e-5 for difference in differences(whole, synchronised).values()), (
        differences(whole, synchronised))
    assert whole["5.num_batches_tracked"] == synchronised["5.num_batches_tracked"] == 1
    unsynchronised = differences(whole, apart)
    assert all(unsynchronised[name] > 1e-3 for name in statistics), unsynchronised
    assert unsynchronised["1.weight"] > 1e-3  # the gradients too


def test_the_converted_model_keeps_its_tensors_and_state_dict_keys() -> None:
    model = batchnorm_net()
    parameters = list(model.parameters())
    keys = list(model.state_dict())
    converted = synchronise_batchnorm(model, CPU)
    assert [type(converted[index]) for index in (1, 5)] == [CpuSyncBatchNorm] * 2
    assert list(converted.parameters()) == parameters  # an optimizer made before still steps
    assert list(converted.state_dict()) == keys
    fresh = batchnorm_net()
    fresh.load_state_dict(converted.state_dict())  # the parent's rebuild


def test_alone_and_in_evaluation_it_is_batchnorm() -> None:
    plain = nn.BatchNorm2d(4)
    synchronised = synchronise_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), CPU)[0]
    images = torch.randn(6, 4, 5, 5) * 3 + 2
    for mode in (True, False):
        plain.train(mode)
        synchronised.train(mode)
        assert torch.equal(plain(images), synchronised(images))
    assert torch.equal(plain.running_mean, synchronised.running_mean)


SESSION = """
import pytest
from torch import nn


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Unflatten(1, (1, 8)), nn.Conv2d(1, 4, 3),
                                  nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 6 * 6, 10))

    def forward(self, x):
        return self.body(x)


@pytest.mark.dataset("synthetic", size=600)
def test_synchronised(trained_model):
    run = trained_model(BatchNormNet, batch_size=32, lr=1e-2, data_parallel=2,
                        sync_batchnorm=True)
    assert run.config.sync_batchnorm and run.test_accuracy > 0.5


@pytest.mark.dataset("synthetic", size=600)
def test_alone(trained_model):
    with pytest.raises(ValueError) as refused:
        trained_model(BatchNormNet, batch_size=32, sync_batchnorm=True)
    assert str(refused.value) == (
        "sync_batchnorm=True synchronises BatchNorm across the processes of a data-parallel "
        "run; pass data_parallel=2 or more (or --batchprof-data-parallel), or leave it out")
"""


def test_a_session_trains_a_batchnorm_cnn_synchronised_over_two_processes(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bn=SESSION)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "--no-co2",
                                "--device", "cpu", "--epochs", "2", "--batchprof-report",
                                "report")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["batchprof: training BatchNormNet * on synthetic(size=600), "
                                 "batch 32, *, cpu, 2 processes of batch 16, sync_batchnorm"])
    (row,) = json.loads((pytester.path / "report" / "latest.json").read_text())["rows"]
    assert (row["sync_batchnorm"], row["processes"]) == (True, 2)
    assert len([line for line in result.outlines  # the refused run trained nothing
                if line.startswith("batchprof: training")]) == 1
    assert summary_rows(result)[0]["processes"] == "2"
