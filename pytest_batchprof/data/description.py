"""What a model factory may know of its data: one sample's shape and the classes.

A data set (:meth:`pytest_batchprof.data.datasets.Dataset.description`) describes
itself with a :class:`DataDescription`, and a factory that takes one sizes its input
and output layers from it (:mod:`pytest_batchprof.experiment.models`). It imports
neither torch nor the rest of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DataDescription:
    """What a model factory may need to know of the data: one sample's shape and the classes.

    ``input_shape`` is one sample's shape as the model receives it: ``(H, W)``
    for grayscale images, ``(C, H, W)`` for images with channels, ``(D,)`` for
    flat features.
    """

    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def channels(self) -> int | None:
        """Image channels (1 for ``(H, W)`` images); ``None`` for flat features."""
        if len(self.input_shape) == 3:
            return self.input_shape[0]
        return 1 if len(self.input_shape) == 2 else None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Height and width of an image; ``None`` for flat features."""
        return tuple(self.input_shape[-2:]) if len(self.input_shape) >= 2 else None

    @property
    def input_size(self) -> int:
        """Features per sample once flattened."""
        return math.prod(self.input_shape)
