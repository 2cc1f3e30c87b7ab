"""What a run learns and how it is scored: its task (the loss and the default metric) and
the metric a test asserts, a baseline gates and a table titles.

==================  ===========================  ===========================  =============
task                targets                      loss                         metric
==================  ===========================  ===========================  =============
``classification``  class indices ``(N,)``       cross-entropy                accuracy (up)
``regression``      floats ``(N,)`` or ``(N,K)``  mean squared error           RMSE (down)
``multilabel``      0/1 floats ``(N, C)``        BCE with logits              micro F1 (up)
``tokens``          class indices ``(N, L)``     token cross-entropy          perplexity (down)
==================  ===========================  ===========================  =============

Accuracy is counted on the device with no library (a classification run counts it beside
any other metric, for ``min_accuracy`` and the tables); every other metric is a
torchmetrics ``Metric`` (imported only by the runs that use one): the task's default, one
the user passes (``metric=MeanAbsoluteError()``), or a callable the user wraps with
:func:`metric`, scored once on a split's outputs and targets together.

A :class:`RunMetric` accumulates over batches and is computed at the end of an epoch or a
split; in a data-parallel run its ``compute`` combines every process's batches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import torchmetrics


ACCURACY = "accuracy"
"""The name of the metric every classification run counts."""


class MetricShard(Protocol):
    """A data-parallel process's view of the others (``engine.parallel.Shard``)."""

    def sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]: ...


class RunMetric(Protocol):
    """A metric accumulated over a run's batches (one epoch's, or one split's)."""

    name: str
    higher_is_better: bool

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch's outputs (detached) and targets."""

    def compute(self, shard: MetricShard | None = None) -> float:
        """The metric over every batch added since :meth:`reset` (every process's, with
        ``shard``)."""

    def reset(self) -> None:
        """Forget the batches added."""


class LibraryMetric:
    """A torchmetrics ``Metric``, a fresh copy per run; torchmetrics itself combines the
    processes of a data-parallel run when it computes. ``reshape(outputs, targets)`` puts
    a batch as the metric takes it (:meth:`Task.library_inputs`)."""

    def __init__(self, template: torchmetrics.Metric, device: torch.device,
                 name: str | None = None, reshape: Callable | None = None) -> None:
        self.metric = copy.deepcopy(template).to(device)
        self.metric.reset()
        self.name = name or type(template).__name__
        self.higher_is_better = bool(template.higher_is_better)
        self.reshape = reshape

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self.reshape is not None:
            outputs, targets = self.reshape(outputs, targets)
        else:
            outputs = outputs.float()
        self.metric.update(outputs, targets)

    def compute(self, shard: MetricShard | None = None) -> float:
        return float(self.metric.compute())

    def reset(self) -> None:
        self.metric.reset()


@dataclass(frozen=True)
class MetricSpec:
    """A metric of the user's: ``fn(outputs, targets) -> float`` scored once on a whole
    split's outputs and targets (see :func:`metric`)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float]
    higher_is_better: bool


def metric(name: str, fn: Callable[[torch.Tensor, torch.Tensor], float],
           higher_is_better: bool) -> MetricSpec:
    """A metric for ``trained_model(..., metric=...)`` from a callable ``fn(outputs,
    targets) -> float``; it is called once per split (and per training epoch) on every
    batch's outputs and targets together, so it need not be a mean of per-batch figures::

        pytest_batchprof.metric("mae", lambda out, y: (out.squeeze(1) - y).abs().mean(),
                                higher_is_better=False)
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"metric(name={name!r}): give the metric a non-empty name")
    if not callable(fn):
        raise ValueError(f"metric({name!r}, fn={fn!r}): fn must be a callable "
                         f"(outputs, targets) -> float")
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"metric({name!r}, higher_is_better={higher_is_better!r}): give True "
                         f"or False")
    return MetricSpec(name.strip(), fn, higher_is_better)


class CallableMetric:
    """A :class:`MetricSpec` accumulated: the outputs and targets kept until computed."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec, self.name, self.higher_is_better = spec, spec.name, spec.higher_is_better
        self.reset()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.outputs.append(outputs)
        self.targets.append(targets)

    def compute(self, shard: MetricShard | None = None) -> float:
        outputs, targets = torch.cat(self.outputs), torch.cat(self.targets)
        if shard is not None and torch.distributed.is_initialized():
            outputs, targets = (_gathered(tensor) for tensor in (outputs, targets))
        return float(self.spec.fn(outputs, targets))

    def reset(self) -> None:
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []


def _gathered(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor``, concatenated in rank order (their lengths may differ)."""
    parts: list[object] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts).to(tensor.device)


def regression_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error, the outputs taken in the targets' shape when they hold as many
    values (a model's ``(N, 1)`` for targets ``(N,)``, which MSE would otherwise broadcast
    to ``(N, N)``)."""
    return F.mse_loss(_as_targets(outputs, targets), targets)


def token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token: ``outputs (N, L, V)`` against ``targets (N, L)``, positions
    of target -100 left out (torch's and Hugging Face's padding convention)."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)


def _as_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.reshape(targets.shape) if outputs.numel() == targets.numel() else outputs


@dataclass(frozen=True)
class Task:
    """A task's loss, its default metric, and the outputs it expects of a model."""

    name: str
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss_name: str
    metric_name: str
    higher_is_better: bool

    def default_metric(self, num_classes: int, device: torch.device) -> RunMetric:
        """The task's metric, fresh for one run on ``device``; classification has none here:
        its accuracy is counted by the training loop itself (``Recipe.metric``)."""
        if self.name == "classification":
            raise ValueError("classification is scored by the accuracy the loop counts; a "
                             "run that counts it builds no other metric")
        if self.name == "regression":
            from torchmetrics.regression import MeanSquaredError

            template = MeanSquaredError(squared=False)
        elif self.name == "multilabel":
            from torchmetrics.classification import MultilabelF1Score

            template = MultilabelF1Score(num_labels=num_classes, average="micro")
        else:
            from torchmetrics.text import Perplexity

            template = Perplexity(ignore_index=-100)
        return LibraryMetric(template, device, self.metric_name, self.library_inputs)

    def library_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> (
            tuple[torch.Tensor, torch.Tensor]):
        """A batch's outputs and targets as torchmetrics takes them for this task: a
        regression's outputs in the targets' shape (``(N, 1)`` for targets ``(N,)``: its
        metrics want equal shapes), both float; a multilabel run's logits through a sigmoid
        (torchmetrics reads outputs all within [0, 1] as probabilities, and logits can be)
        and its 0/1 targets as integers; token targets as int64 (``Perplexity`` wants
        them so). Classification's logits and class indices are taken as they are."""
        if self.name == "regression":
            return _as_targets(outputs, targets).float(), targets.float()
        if self.name == "multilabel":
            return torch.sigmoid(outputs.float()), targets.long()
        if self.name == "tokens":
            return outputs.float(), targets.long()
        return outputs.float(), targets

    def expected_outputs(self, targets: torch.Tensor, num_classes: int) -> str | None:
        """The output shape a model must give for ``targets``, in words, if it is
        fixed; ``None`` for regression, whose outputs need only hold as many values."""
        count = len(targets)
        if self.name in ("classification", "multilabel"):
            return str((count, num_classes))
        if self.name == "tokens":
            return str((*targets.shape, num_classes))
        return None

    def outputs_fit(self, outputs: torch.Tensor, targets: torch.Tensor,
                    num_classes: int) -> bool:
        """Whether ``outputs`` have the shape this task's loss and metric take."""
        if self.name == "regression":
            return outputs.numel() == targets.numel()
        return str(tuple(outputs.shape)) == self.expected_outputs(targets, num_classes)


TASK_BY_NAME: dict[str, Task] = {
    "classification": Task("classification", F.cross_entropy, "cross_entropy", ACCURACY, True),
    "regression": Task("regression", regression_loss, "mse", "rmse", False),
    "multilabel": Task("multilabel", F.binary_cross_entropy_with_logits, "bce_with_logits",
                       "f1", True),
    "tokens": Task("tokens", token_cross_entropy, "token_cross_entropy", "perplexity", False),
}
"""Every task by its name (:data:`~pytest_batchprof.data.catalog.TASKS`)."""


def run_metric(spec: object, task: Task, num_classes: int, device: torch.device) -> RunMetric:
    """A fresh :class:`RunMetric` for one run: the task's default (``spec`` ``None``), a
    torchmetrics ``Metric`` (fed as the task's are, :meth:`Task.library_inputs`) or a
    :class:`MetricSpec` (fed the outputs and targets as they are)."""
    if spec is None:
        return task.default_metric(num_classes, device)
    if isinstance(spec, MetricSpec):
        return CallableMetric(spec)
    return LibraryMetric(spec, device, reshape=task.library_inputs)


def metric_identity(spec: object, task: Task) -> tuple[str, bool]:
    """The name a row gives the metric of ``spec`` and whether higher is better; a
    ``ValueError`` with one line for what is not a metric."""
    if spec is None:
        return task.metric_name, task.higher_is_better
    if isinstance(spec, MetricSpec):
        return spec.name, spec.higher_is_better
    if _is_library_metric(spec):
        higher = getattr(spec, "higher_is_better", None)
        if higher is None:
            raise ValueError(f"metric={type(spec).__name__}(): torchmetrics does not say whether "
                             f"higher is better for it; wrap it as pytest_batchprof.metric(name, "
                             f"fn, higher_is_better=...)")
        return type(spec).__name__, bool(higher)
    raise ValueError(f"metric={spec!r} is neither a torchmetrics Metric nor "
                     f"pytest_batchprof.metric(name, fn, higher_is_better)")


def _is_library_metric(value: object) -> bool:
    """Whether ``value`` is a torchmetrics ``Metric`` (without importing torchmetrics when
    it was not imported: then it cannot be one)."""
    import sys

    module = sys.modules.get("torchmetrics")
    return module is not None and isinstance(value, module.Metric)
