"""The names of the built-in data sets, importable without torch.

``--batchprof-dataset`` is checked against them when the session starts, and
the plugin loads in every pytest session of its environment: that check must
not import torch. :data:`pytest_batchprof.data.DATASETS` holds a loader for
each name, in this order.
"""

from __future__ import annotations

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "kmnist", "digits", "synthetic")
