"""Models of the field's libraries that need more than ``nn.Module`` gives: Keras 3.

torchvision, timm and Hugging Face ``transformers`` models are ``nn.Module`` trees like
any other, and need nothing here. A Keras 3 model on the torch backend
(``KERAS_BACKEND=torch``) is an ``nn.Module`` too, whose ``parameters()`` are its
weights, so the training loop, the measurements and the cache take it as it is; but
three things about it are Keras's own:

* Its layers' names, and with them its ``state_dict`` keys
  (``sequential_3/dense_6/kernel``), come from a process-wide counter: a model built
  again has other keys, and a cached run cannot be loaded into it. Its weights are
  drawn from Keras's own random state, which ``torch.manual_seed`` does not seed.
  :func:`keras_build` builds it after ``keras.backend.clear_session()`` (the counter
  starts again) and ``keras.utils.set_random_seed`` (from the seed the caller gave
  torch), so that every build has the same keys and the same weights.
* The layers of a ``Sequential`` or functional model are not torch submodules
  (``modules()`` holds the model, its ``Functional`` and two ``ParameterDict``), so what
  they are and compute is read from Keras: :func:`keras_layers` and
  :func:`keras_structure` (each layer's class and ``get_config()``).
* A Keras layer's training mode (dropout) does not follow ``.train()``/``.eval()``: Keras
  decides it per call (``training=``), off when the model is called as ``model(x)``.

Keras is never imported here: a model is a Keras model only when the user's code has
imported Keras already.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable

import torch
from torch import nn


def is_keras_model(model: object) -> bool:
    """Whether ``model`` is a Keras 3 model (Keras imported, and ``model`` a ``keras.Model``)."""
    keras = sys.modules.get("keras")
    model_class = getattr(keras, "Model", None)
    return isinstance(model_class, type) and isinstance(model, model_class)


def keras_build(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build`` made repeatable for a Keras model: every call starts a fresh Keras session
    (the same layer names, so the same ``state_dict`` keys) and seeds Keras's random state
    from torch's seed (``torch.initial_seed()``, which the caller sets with
    ``torch.manual_seed``), so that the same seed gives the same weights. Python's and
    NumPy's global random states, which ``keras.utils.set_random_seed`` seeds too, are
    restored afterwards."""

    def seeded_build() -> nn.Module:
        import keras
        import numpy as np

        python_state, numpy_state = random.getstate(), np.random.get_state()
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(torch.initial_seed() % 2**32)
        try:
            return build()
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    return seeded_build


def keras_layers(model: nn.Module) -> list[object]:
    """Every layer of a Keras ``model``, nested ones included (not the model itself); an
    empty list for any other model."""
    if not is_keras_model(model):
        return []
    flatten = getattr(model, "_flatten_layers", None)  # Keras 3's walk of its layer tree
    if flatten is None:
        return list(getattr(model, "layers", []))
    return list(flatten(include_self=False, recursive=True))


def keras_structure(model: nn.Module) -> list[str]:
    """What a Keras ``model``'s architecture fingerprint adds to its ``state_dict`` shapes:
    its own and each layer's class and configuration (units, activation, initialisers),
    which its ``repr`` leaves out. Empty for any other model."""
    if not is_keras_model(model):
        return []
    lines = []
    for layer in [model, *keras_layers(model)]:
        cls = type(layer)
        try:
            config = repr(layer.get_config())
        except Exception:  # a custom layer whose get_config() needs arguments it lacks
            config = repr(layer)
        lines.append(f"{cls.__module__}.{cls.__qualname__}:{config}")
    return lines
