"""A user's project whose generic names are its own: --device and --lr options, and
dataset, device and batch_size fixtures, beside the plugin installed from its wheel."""

import pytest
import torch

import pytest_batchprof


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="the project's own device option")
    parser.addoption("--lr", default="0.1", help="the project's own lr option")


def quadrants(count, seed):
    """12x12 images with one bright quadrant per class (4 classes), plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=generator)
    images = torch.randn(count, 12, 12, generator=generator) * 0.5
    for label in range(4):
        rows = slice(0, 6) if label < 2 else slice(6, 12)
        cols = slice(0, 6) if label % 2 == 0 else slice(6, 12)
        images[labels == label, rows, cols] += 1.0
    return images, labels


pytest_batchprof.register_dataset("quadrants", train=quadrants(1200, 1), test=quadrants(400, 2))


@pytest.fixture
def dataset():
    return {"name": "the project's data"}


@pytest.fixture
def device(request):
    return request.config.getoption("--device")


@pytest.fixture
def batch_size():
    return 32
