"""Run by .ci/wheel-check against the plugin installed from its wheel."""

import importlib
import os
from pathlib import Path

import pytest

import pytest_batchprof


def test_the_plugin_comes_from_the_wheel_with_every_module():
    site = Path(os.environ["BATCHPROF_WHEEL_SITE"])
    installed = Path(pytest_batchprof.__file__).parent
    assert installed.parent == site, installed
    source = Path(os.environ["BATCHPROF_SOURCE_TREE"])
    expected = {path.relative_to(source).as_posix() for path in source.rglob("*.py")}
    shipped = {path.relative_to(installed).as_posix() for path in installed.rglob("*.py")}
    assert expected <= shipped, sorted(expected - shipped)
    for name in sorted(expected):
        module = name[:-3].removesuffix("__init__").rstrip("/").replace("/", ".")
        importlib.import_module("pytest_batchprof" + (f".{module}" if module else ""))


def test_the_project_keeps_its_own_device_option(pytestconfig):
    assert pytestconfig.getoption("device") == "project-gpu"


@pytest.mark.dataset("digits")
@pytest.mark.min_accuracy(0.5)
def test_trains_through_the_installed_plugin(trained_mlp, batch_size, device):
    run = trained_mlp(hidden=(32,), batch_size=batch_size)
    assert run.config.epochs == 1 and batch_size == 32
    assert str(device) in ("cpu", "cuda:0", "mps")
    assert run.test_accuracy > 0.5


def sized(data):
    """A model factory of the project's own, sized by the data description."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, 16), nn.ReLU(),
                         nn.Linear(16, data.num_classes))


@pytest.mark.dataset("digits")
@pytest.mark.parametrize("model", [sized, pytest_batchprof.cnn(channels=(4,), hidden=(16,))],
                         ids=["own-factory", "cnn"])
def test_trains_any_model_through_the_installed_plugin(trained_model, batch_size, model):
    run = trained_model(model, batch_size=batch_size)
    assert run.test_accuracy > 0.3
