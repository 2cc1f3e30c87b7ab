"""Fixtures of the plugin's own test suite.

Every test runs hermetically: ``BATCHPROF_DATA_DIR`` points at an empty
temporary directory and torchvision downloads are replaced by a failure, so no
test reads the developer's cache or touches the network. Tests that need the
real MNIST ask for ``mnist_dir`` and are skipped when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pytest_batchprof.data import catalog
from pytest_batchprof.data import datasets as data
from pytest_batchprof.data.datasets import Dataset
from pytest_batchprof.engine.training import RunConfig, make_optimizer
from pytest_batchprof.experiment.models import build_mlp

REAL_DATA_DIR = os.environ.get("BATCHPROF_DATA_DIR")


def _import_torch_lazy_modules() -> None:
    """Import what torch and torchvision load on first use, before any pytester run.

    In-process pytester sessions restore ``sys.modules`` when they end; a torch
    module first imported inside one is then imported again by the next, and
    torch refuses to register its operator libraries twice; matplotlib's classes
    come in two copies that do not know each other.
    """
    import torchvision.datasets  # noqa: F401
    from torchvision.transforms.v2.functional import center_crop

    # matplotlib too: imported a second time, its classes come in two copies that do not
    # know each other ("'Figure' object has no attribute 'items'").
    import pytest_batchprof.reports.plots  # noqa: F401

    center_crop(torch.zeros(1, 8, 8), [6, 6])
    model = build_mlp(4, (2,), 2)
    for name in ("adam", "sgd"):
        optimizer = make_optimizer(name, model.parameters(), 1e-3)
        model(torch.zeros(1, 4)).sum().backward()
        optimizer.step()


_import_torch_lazy_modules()


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty data directory, no downloads, and no GitHub step summary."""
    empty = tmp_path_factory.mktemp("data-dir")
    monkeypatch.setenv("BATCHPROF_DATA_DIR", str(empty))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)  # no writes to a real CI summary

    def no_download(dataset_class: type, root: Path) -> None:
        raise OSError("downloads are disabled in the test suite")

    monkeypatch.setattr(data, "download", no_download)
    return empty


@pytest.fixture(autouse=True)
def forget_registrations() -> Iterator[None]:
    """Unregister every data set name registered during the test, inner sessions'
    conftests included: registrations live in a process-global dict that in-process
    pytester sessions share with the suite."""
    before = set(catalog.REGISTERED)
    yield
    for name in set(catalog.REGISTERED) - before:
        catalog.REGISTERED.pop(name, None)


@pytest.fixture
def mnist_dir() -> Path:
    """A directory holding the real MNIST in torchvision's layout, or a skip."""
    for candidate in (REAL_DATA_DIR, "~/.cache/pytest-batchprof"):
        if candidate and (Path(candidate).expanduser() / "MNIST" / "raw").is_dir():
            return Path(candidate).expanduser()
    pytest.skip("the real MNIST is not present (fill a data dir with shared/tools/get-mnist)")


def _run_config(dataset: Dataset, **changes: object) -> RunConfig:
    """A CPU run of a 32-unit MLP on ``dataset``: batch 16, 2 epochs, Adam at 1e-3, seed 0."""
    fields: dict[str, object] = dict(
        dataset=dataset.name, input_shape=dataset.image_shape, hidden=(32,),
        num_classes=dataset.num_classes, activation="relu", batch_size=16, epochs=2, lr=1e-3,
        optimizer="adam", seed=0, device="cpu", train_subset=None, val_fraction=0.1)
    fields.update(changes)
    return RunConfig(**fields)


@pytest.fixture(scope="session")
def run_config():
    """``run_config(dataset, **changes)``: a :class:`RunConfig` for the training engine's tests."""
    return _run_config
