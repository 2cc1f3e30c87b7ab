"""pytest-batchprof: batch-size and architecture experiments on PyTorch models as pytest tests.

The plugin (:mod:`pytest_batchprof.plugin`) is loaded through the ``pytest11``
entry point; the names below are what tests and conftests import. They are
imported on first access (PEP 562): the package is imported by every pytest
session of its environment, and these names bring torch with them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from pytest_batchprof._version import __version__

_EXPORTS = {
    "register_dataset": "pytest_batchprof.data.datasets",
    "unregister_dataset": "pytest_batchprof.data.datasets",
    "record": "pytest_batchprof.plugin.recording",
    "mlp": "pytest_batchprof.experiment.models",
    "cnn": "pytest_batchprof.experiment.models",
    "DataDescription": "pytest_batchprof.data.description",
    "ModelError": "pytest_batchprof.experiment.models",
    "ShapeMismatch": "pytest_batchprof.experiment.models",
    "Recipe": "pytest_batchprof.engine.training",
    "Dataset": "pytest_batchprof.data.datasets",
    "Split": "pytest_batchprof.data.datasets",
    "EpochRecord": "pytest_batchprof.engine.training",
    "CurvePoint": "pytest_batchprof.engine.training",
    "Run": "pytest_batchprof.engine.training",
    "RunConfig": "pytest_batchprof.engine.training",
    "BatchprofCacheWarning": "pytest_batchprof.runs.cache",
    "metric": "pytest_batchprof.experiment.tasks",
    "MetricSpec": "pytest_batchprof.experiment.tasks",
}

__all__ = ["BatchprofCacheWarning", "CurvePoint", "DataDescription", "Dataset", "EpochRecord",
           "MetricSpec", "ModelError", "Recipe", "Run", "RunConfig", "ShapeMismatch", "Split",
           "__version__", "cnn", "metric", "mlp", "record", "register_dataset",
           "unregister_dataset"]

if TYPE_CHECKING:
    from pytest_batchprof.data.datasets import Dataset, Split, register_dataset, unregister_dataset
    from pytest_batchprof.data.description import DataDescription
    from pytest_batchprof.engine.training import CurvePoint, EpochRecord, Recipe, Run, RunConfig
    from pytest_batchprof.experiment.models import ModelError, ShapeMismatch, cnn, mlp
    from pytest_batchprof.experiment.tasks import MetricSpec, metric
    from pytest_batchprof.plugin.recording import record
    from pytest_batchprof.runs.cache import BatchprofCacheWarning


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next access skips this function
        return value
    raise AttributeError(f"module 'pytest_batchprof' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
