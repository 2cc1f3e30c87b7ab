"""pytest-batchprof: batch-size and architecture experiments on PyTorch models as pytest tests.

The plugin (:mod:`pytest_batchprof.plugin`) is loaded through the ``pytest11``
entry point; the names below are what tests and conftests import.
"""

from importlib.metadata import PackageNotFoundError, version

from pytest_batchprof.data import Dataset, Split
from pytest_batchprof.training import EpochRecord, Run, RunConfig

try:
    __version__ = version("pytest-batchprof")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["Dataset", "EpochRecord", "Run", "RunConfig", "Split", "__version__"]
