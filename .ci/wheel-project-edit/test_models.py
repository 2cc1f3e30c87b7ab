"""Run three times by .ci/wheel-check: saved, compared unchanged (from the cache), and
compared after an edit of mymodels.BasicBlock (the gate must fail, the cache must miss)."""

import pytest
from mymodels import TinyResNet


def test_the_projects_own_fixtures(dataset, device, batch_size, pytestconfig):
    assert dataset == {"name": "the project's data"}
    assert device == pytestconfig.getoption("--device") == "project-gpu"
    assert batch_size == 32
    assert pytestconfig.getoption("--lr") == "0.1"


@pytest.mark.dataset("quadrants")
def test_tiny_resnet(trained_model):
    run = trained_model(TinyResNet, batch_size=16, epochs=2)
    assert run.test_accuracy is not None
