"""The names of the data sets, importable without torch.

``--batchprof-dataset`` is checked against them when the session starts, and
the plugin loads in every pytest session of its environment: that check must
not import torch. :data:`pytest_batchprof.data.datasets.DATASETS` holds a loader for
each built-in name, in this order; :func:`pytest_batchprof.register_dataset`
adds the user's to :data:`REGISTERED`.
"""

from __future__ import annotations

DATASET_NAMES: tuple[str, ...] = (
    "mnist", "fashion-mnist", "kmnist", "cifar10", "digits", "synthetic")

REGISTERED: dict[str, object] = {}
"""Data sets registered by the project (name -> :class:`pytest_batchprof.data.datasets.RawData`)."""


def dataset_names() -> tuple[str, ...]:
    """Every name ``--batchprof-dataset`` accepts now: the built-ins, then the registered."""
    return (*DATASET_NAMES, *REGISTERED)
