"""A run's configuration, and the part each setting plays in rows, reports and baselines.

:class:`RunConfig` is everything that determines a run's result. Each field
declares, once, the roles it plays beyond that (in its ``metadata``), and the
rest of the package derives its key lists from them:

* ``experiment``: the setting names the experiment a baseline entry stands for,
  as the user names it: the model (``model_id``; an MLP by its widths), the data
  set, the batch size and the processes, which a sweep varies. With the test's
  node id and the seeds (folded into one entry) they match a run to its entry
  (:mod:`pytest_batchprof.gating`);
* ``compared``: the setting may change between two commits of one experiment
  (the model's code and architecture, lr, optimizer, loss, epochs, precision,
  the data's crop and split, ...). It is stored beside the entry and compared,
  never matched: a difference is said in the comparison's verdict, in the words
  the field declares (``said``) or as ``lr 0.001 -> 0.01``, and the run is
  judged as usual;
* ``lines``: runs that differ in it are drawn as separate lines;
* ``per_batch``: ... only when runs of one batch size differ in it (a
  learning-rate sweep does; ``--lr-scaling``, one rate per batch size, does not).

Every field identifies the run (:data:`RUN_KEYS`): two rows that differ in any
of them are two runs, never merged. This module imports neither torch nor the
plugin, so reports and gating read it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields


def _role(*roles: str, default: object = dataclass, said: str | None = None) -> object:
    """A dataclass field carrying its roles (and its default, when it has one).

    ``said``: how a baseline comparison says that this ``compared`` setting changed, for
    a fingerprint whose values mean nothing to a reader (``model code changed since the
    baseline``); other settings are said as ``name old -> new``.
    """
    metadata: dict[str, object] = {role: True for role in roles}
    if said is not None:
        metadata["said"] = said
    if default is dataclass:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def mlp_name(input_size: int, hidden: Sequence[int], num_classes: int) -> str:
    """The posts' way of naming an MLP by its layer widths: ``784-1024-10``."""
    return "-".join(str(width) for width in (input_size, *hidden, num_classes))


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result; equal configs train once per session.

    The model is named by ``model`` (what tables call it) and identified by
    ``architecture`` (see :func:`.models.prepare_model`); the MLP family also
    keeps its ``hidden`` widths and ``activation``, which are ``None`` for other
    models. ``optimizer`` and ``loss`` name what the run trains with: a built-in
    name, or the qualified name of the user's callable.
    """

    dataset: str = _role("experiment")
    input_shape: tuple[int, ...] = _role("compared")
    """One sample as the model sees it: ``(H, W)`` (after any crop), ``(C, H, W)`` or ``(D,)``."""
    hidden: tuple[int, ...] | None = _role("compared")
    """An MLP's hidden widths, which name it (its ``model_id`` is ``None``); ``None`` for
    other models."""
    num_classes: int = _role("compared")
    activation: str | None = _role("compared", "lines")
    batch_size: int = _role("experiment")
    epochs: int = _role("compared", "lines")
    lr: float = _role("compared", "lines", "per_batch")
    optimizer: str = _role("compared", "lines")
    seed: int = _role()
    device: str = _role()
    train_subset: int | None = _role("compared", "lines")
    val_fraction: float = _role("compared", "lines")
    flush_denormals: bool = _role("compared", default=True)
    """Flush denormal floats to zero on the CPU while training
    (see :mod:`pytest_batchprof.hardware.denormals`)."""
    drop_last: bool = _role("compared", "lines", default=False)
    """Drop each epoch's last partial batch (``--batchprof-drop-last``, ``drop_last=True``):
    an epoch then trains on the whole batches of its shuffled order only. ``False`` (every
    sample, the last batch short) is the default, so rows written before the setting
    existed read as it."""
    lr_warmup_epochs: float = _role("compared", default=0.0)
    """Epochs over which the learning rate ramps linearly from ``lr_warmup_start`` to ``lr``."""
    lr_warmup_start: float | None = _role("compared", default=None)
    """The learning rate of the first step of a warm-up (the unscaled ``--lr``)."""
    target_accuracy: float | None = _role("compared", default=None)
    """Stop when the validation accuracy reaches this fraction (time-to-accuracy)."""
    model: str | None = _role(default=None)
    """The model's name in tables; ``None`` for an MLP named by its widths."""
    architecture: str | None = _role("compared", default=None,
                                     said="architecture changed since the baseline")
    """Fingerprint of the model's structure: its module tree, parameter and buffer shapes,
    and the factory's name (``None``: an MLP of ``hidden``); ``code`` is what computes it."""
    loss: str = _role("compared", "lines", default="cross_entropy")
    """The training loss: ``cross_entropy`` or the qualified name of the user's callable."""
    precision: str = _role("compared", "lines", default="fp32")
    """``fp32``, ``tf32`` (TF32 matmuls on CUDA), ``bf16`` or ``fp16`` (autocast mixed
    precision, fp16 with a gradient scaler): training, evaluation and latency alike."""
    processes: int = _role("experiment", "lines", default=1)
    """Processes of a data-parallel run (``batch_size`` is the global batch, split evenly
    among them); 1 for a run in the test's own process."""
    model_id: str | None = _role("experiment", default=None)
    """What a baseline knows the model by, across commits: the ``name=`` given, else the
    class or factory name (``LeNet5``, ``make_net``), without its parameter count; a
    shipped CNN its layers (``c6-c16-120-84-10``); ``None`` for an MLP, which its widths
    (``hidden``) name."""
    code: str | None = _role("compared", default=None,
                             said="model code changed since the baseline")
    """Fingerprint of all the code that computes the run (the factory's source file, every
    module class of the model's tree outside torch, the loss and optimizer callables);
    ``None`` when there is no code of the user's to fingerprint."""
    trainer: str = _role("compared", default="batchprof")
    """Who trained the run: the plugin's engine, or ``own loop (<test id>)`` for a run
    a test trained itself and recorded (:func:`pytest_batchprof.record`)."""
    task: str = _role("compared", default="classification")
    """What the data's targets are: ``classification``, ``regression``, ``multilabel`` or
    ``tokens`` (:mod:`pytest_batchprof.experiment.tasks`)."""
    metric: str = _role("compared", default="accuracy")
    """The name of the metric the run is scored, asserted and gated by: ``accuracy``, a
    task's default (``rmse``, ``f1``, ``perplexity``) or the one given (``metric=``)."""
    higher_is_better: bool = _role("compared", default=True)
    """The metric's direction: a baseline's regression is a drop when higher is better
    (accuracy, F1), a rise when lower is (RMSE, perplexity)."""
    target_metric: float | None = _role("compared", default=None)
    """Stop when the validation metric reaches this value, in its direction
    (``--batchprof-target-metric``)."""
    data_feed: str = _role("compared", "lines", default="in memory")
    """How the training split is read: ``in memory`` (tensors batched by index) or
    ``DataLoader`` with its workers (``DataLoader, 2 workers``), its transforms applied on
    every read."""
    forward: str | None = _role("compared", default=None)
    """The user's ``forward(model, batch)``, by its qualified name; ``None`` for the
    conventions of :mod:`pytest_batchprof.data.batches`."""
    scheduler: str | None = _role("compared", "lines", default=None)
    """The learning-rate schedule stepped per step (``scheduler=``), by its name."""
    sync_batchnorm: bool = _role("compared", default=False)
    """BatchNorm statistics synchronised across a data-parallel run's processes."""

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def per_process_batch(self) -> int:
        """The batch each process of a data-parallel run computes."""
        return self.batch_size // self.processes

    @property
    def model_name(self) -> str:
        """The model's name: ``784-1024-10`` for an MLP, ``c6-c16-120-84-10``, ``Net (1,234)``."""
        if self.model is not None:
            return self.model
        return mlp_name(self.input_size, self.hidden or (), self.num_classes)

    def describe(self, variant: bool = True) -> str:
        """What a person needs to tell this run from its neighbours in a message; with
        ``variant=False`` without its lr and seed: what the runs of an ensemble or of a
        learning-rate grid share."""
        return (
            f"{self.model_name} on {self.dataset}, batch {self.batch_size}, "
            f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}, {self.optimizer}"
            + (f" lr={self.lr:g}, seed {self.seed}" if variant else "") + f", {self.device}"
            + ("" if self.precision == "fp32" else f", {self.precision}")
            + ("" if self.processes == 1 else
               f", {self.processes} processes of batch {self.per_process_batch}")
            + (", drop_last" if self.drop_last else "")
            + ("" if self.scheduler is None else f", scheduler {self.scheduler}")
            + (", sync_batchnorm" if self.sync_batchnorm else "")
            + ("" if self.data_feed == "in memory" else f", {self.data_feed}")
            + ("" if self.metric == "accuracy" else f", scored by {self.metric}")
        )


def _with_role(role: str) -> tuple[str, ...]:
    return tuple(item.name for item in fields(RunConfig) if item.metadata.get(role))


RUN_KEYS: tuple[str, ...] = tuple(item.name for item in fields(RunConfig))
"""The row keys that make a run: every setting of :class:`RunConfig`."""

EXPERIMENT_KEYS: tuple[str, ...] = _with_role("experiment")
"""The settings a baseline entry is matched by, beside the test's node id and the seeds
folded into it (see the module docstring)."""

MODEL_ID_KEY = "model_id"
"""The experiment key that names the model; ``None`` in an MLP's row, whose widths
(``hidden``) name it, and absent from rows written before it existed, which the table's
name (``model``) then stands for."""

COMPARED_KEYS: tuple[str, ...] = (*_with_role("compared"), "params")
"""What a baseline stores beside each entry and says when it changed: the settings that
may change between two commits of one experiment, and the parameter count, which tells a
changed model apart when no fingerprint of its code could be taken."""

FINGERPRINT_SAID: dict[str, str] = {item.name: item.metadata["said"]
                                    for item in fields(RunConfig) if "said" in item.metadata}
"""The fingerprints among :data:`COMPARED_KEYS`, and how a change of each is said. They
compare as a set: a baseline row lacking one of them was fingerprinted by an older
version, whose fingerprints are not comparable, and none of its are compared."""

LINE_KEYS: tuple[str, ...] = _with_role("lines")
"""Settings that split a model's runs into separate plot lines when they differ."""

STUDY_KEYS: tuple[str, ...] = tuple(key for key in RUN_KEYS if key not in (
    "batch_size", "seed", "lr", "lr_warmup_start"))
"""What makes one study across batch sizes: every setting but those a study varies, the
batch size, the seed and the learning rate (with ``--lr-scaling`` or a learning-rate grid
each batch size has its own, and the warm-up's start follows it)."""

PER_BATCH_LINE_KEYS: frozenset[str] = frozenset(_with_role("per_batch"))
"""Series settings that split lines only when runs of one batch size differ in them."""
