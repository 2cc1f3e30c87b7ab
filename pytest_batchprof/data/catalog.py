"""The names of the data sets, importable without torch.

``--batchprof-dataset`` is checked against them when the session starts, and
the plugin loads in every pytest session of its environment: that check must
not import torch. :data:`pytest_batchprof.data.datasets.DATASETS` holds a loader for
each built-in name, in this order; :func:`pytest_batchprof.register_dataset`
adds the user's to :data:`REGISTERED`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

TASKS: tuple[str, ...] = ("classification", "regression", "multilabel", "tokens")
"""What a data set's targets may hold (``register_dataset(..., task=...)``); each task's
loss and metric are in :mod:`pytest_batchprof.experiment.tasks`."""

DATASET_NAMES: tuple[str, ...] = (
    "mnist", "fashion-mnist", "kmnist", "cifar10", "digits", "synthetic")


@dataclass(frozen=True)
class RegistrationFailure:
    """A data set :func:`pytest_batchprof.register_dataset` could not register: its name
    stays known (so the option and the marker that name it parse), and the tests that
    load it fail with ``message``, one line; the rest of the session runs."""

    message: str


@dataclass(frozen=True)
class LazyRegistration:
    """A data set registered with splits that are built when a test first needs it: ``build``
    makes its data (or the :class:`RegistrationFailure` of a build or a check that fails),
    which then replaces this entry."""

    build: Callable[[], object]


REGISTERED: dict[str, object] = {}
"""Data sets registered by the project: name -> :class:`pytest_batchprof.data.datasets.RawData`,
a :class:`LazyRegistration` not built yet, or a :class:`RegistrationFailure` that loading
the name raises."""


def dataset_names() -> tuple[str, ...]:
    """Every name ``--batchprof-dataset`` accepts now: the built-ins, then the registered."""
    return (*DATASET_NAMES, *REGISTERED)
