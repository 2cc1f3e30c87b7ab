"""Batches and model outputs as the field's libraries shape them, taken apart one way.

A batch is what a data set's item, or a DataLoader's collated batch, holds:

* ``(x, y)``: the inputs and the targets (the built-in data sets, tensors);
* ``(x1, x2, ..., y)``: several inputs, given to the model in order, then the targets;
* a mapping such as ``{"input_ids": ..., "attention_mask": ..., "labels": ...}``: the
  targets under one of :data:`TARGET_KEYS`, the rest given by name, ``model(**inputs)``,
  as Hugging Face models take them.

A model's result is a tensor, a tuple or list (its first item), a mapping (its
``logits``, else its first value) or an object with a ``logits`` attribute (Hugging Face's
``ModelOutput``). Anything else is the user's to take apart, with ``forward=fn``: a
:data:`Forward` that returns ``(outputs, targets)``.

The inputs of a batch (:data:`Inputs`) are a tensor, a tuple of tensors or a mapping of
names to tensors, every tensor with the batch along its first dimension; the helpers here
move, cut and count them whatever their shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

Inputs = object
"""A batch's inputs: a tensor, a tuple of tensors, or a mapping of argument names to tensors."""

Forward = Callable[[nn.Module, object], tuple[torch.Tensor, torch.Tensor]]
"""``forward(model, batch) -> (outputs, targets)``: how a run calls its model on a batch
when the conventions above do not fit (``trained_model(..., forward=fn)``)."""

TARGET_KEYS = ("labels", "label", "targets", "target", "y")
"""The keys a mapping batch may hold its targets under, looked up in this order."""


class BatchError(ValueError):
    """A batch or a model result the conventions cannot take apart; the message says what
    it was and names ``forward=`` as the fix."""


def split_batch(batch: object) -> tuple[Inputs, torch.Tensor]:
    """``(inputs, targets)`` of ``batch``: the last item of a tuple or list (the inputs
    before it, one tensor or a tuple of several), or a mapping's targets under one of
    :data:`TARGET_KEYS` (the inputs the other keys)."""
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return {name: value for name, value in batch.items() if name != key}, batch[key]
        raise BatchError(f"a batch mapping of keys {sorted(batch)} holds no targets under "
                         f"{', '.join(TARGET_KEYS)}; name them so, or pass forward=fn "
                         f"returning (outputs, targets)")
    if isinstance(batch, Sequence) and not isinstance(batch, str | bytes) and len(batch) >= 2:
        inputs = batch[0] if len(batch) == 2 else tuple(batch[:-1])
        return inputs, batch[-1]
    raise BatchError(f"a batch that is a {type(batch).__name__} cannot be taken apart into "
                     f"inputs and targets; give (x, y), (x1, x2, ..., y) or a mapping with "
                     f"'labels', or pass forward=fn returning (outputs, targets)")


def call_model(model: Callable[..., object], inputs: Inputs) -> object:
    """``model(x)``, ``model(*inputs)`` for a tuple, ``model(**inputs)`` for a mapping."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def model_outputs(result: object) -> torch.Tensor:
    """The scores in a model's ``result``: a tensor itself, an object's or mapping's
    ``logits``, a mapping's first value, a tuple's first item."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(result, Mapping) and result:
        first = result["logits"] if "logits" in result else next(iter(result.values()))
        return model_outputs(first)
    if isinstance(result, tuple | list) and result:
        return model_outputs(result[0])
    raise BatchError(f"the model returned a {type(result).__name__}, which holds no tensor of "
                     f"scores (a tensor, a .logits, a mapping or a tuple); pass forward=fn "
                     f"returning (outputs, targets)")


def default_forward(model: Callable[..., object], batch: object) -> (
        tuple[torch.Tensor, torch.Tensor]):
    """The :data:`Forward` of every run without ``forward=``: split the batch, call the
    model on its inputs, take the scores from its result."""
    inputs, targets = split_batch(batch)
    return model_outputs(call_model(model, inputs)), targets


def to_device(batch: object, device: torch.device, non_blocking: bool = False) -> object:
    """``batch`` with every tensor in it on ``device`` (pinned host memory copies
    asynchronously with ``non_blocking``); other leaves unchanged."""
    return tree_map(lambda leaf: leaf.to(device, non_blocking=non_blocking)
                    if isinstance(leaf, torch.Tensor) else leaf, batch)


def tensors_of(inputs: Inputs) -> list[torch.Tensor]:
    """Every tensor in ``inputs``, in order."""
    return [leaf for leaf in tree_flatten(inputs)[0] if isinstance(leaf, torch.Tensor)]


def batch_length(inputs: Inputs) -> int:
    """How many samples ``inputs`` holds: its first tensor's first dimension."""
    tensors = tensors_of(inputs)
    if not tensors or tensors[0].dim() == 0:
        raise BatchError(f"inputs of type {type(inputs).__name__} hold no batch of tensors")
    return int(tensors[0].shape[0])


def take_rows(inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
    """The samples ``index`` picks (a slice, or int64 positions) of every tensor in
    ``inputs``, along the batch dimension."""
    def take(leaf: object) -> object:
        if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0:
            return leaf
        if isinstance(index, slice):
            return leaf[index]
        return leaf[index.to(leaf.device)]

    return tree_map(take, inputs)


def inputs_device(inputs: Inputs) -> torch.device:
    """The device of the first tensor in ``inputs`` (the CPU when there is none)."""
    tensors = tensors_of(inputs)
    return tensors[0].device if tensors else torch.device("cpu")


def describe_inputs(inputs: Inputs) -> str:
    """How a message names a batch's inputs: ``shape (2, 784)``, ``input_ids (2, 16),
    attention_mask (2, 16)``, ``(2, 3, 32, 32), (2, 4)``."""
    if isinstance(inputs, torch.Tensor):
        return f"shape {tuple(inputs.shape)}"
    if isinstance(inputs, Mapping):
        return ", ".join(f"{name} {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                         else f"{name} {type(value).__name__}" for name, value in inputs.items())
    return ", ".join(str(tuple(tensor.shape)) for tensor in tensors_of(inputs))


class BatchModel(nn.Module):
    """A model called as ``call(model, inputs)``: what latency, FLOPs and predictors time
    when a model takes its inputs by name or position, or through the user's ``forward=``
    (the model is a submodule, so its parameters and mode are this module's)."""

    def __init__(self, model: nn.Module, call: Callable[[nn.Module, object], object]) -> None:
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, inputs: object) -> object:
        return self.call(self.model, inputs)
