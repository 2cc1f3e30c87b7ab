"""The installed version of pytest-batchprof, read once (``0+unknown`` from a source tree
that is not installed). The package exports it as ``pytest_batchprof.__version__``; the
run cache keys its entries by it. It imports nothing of the package."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pytest-batchprof")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
