"""The training engine: one run of one configuration, from seed to test accuracy.

Batches are index slices of tensors already on the device (data in memory), or a
DataLoader's batches of the user's ``Dataset`` (:mod:`pytest_batchprof.data.loading`),
reshuffled every epoch by a generator seeded from the run's seed, so the same seed gives
the same weights and figures bit for bit on the CPU. Running loss and correct
counts stay on the device and are read once per epoch (plus a cheap finiteness
check every :data:`DIVERGENCE_CHECK_STEPS` steps), so the hot loop never waits
for the host.

Between epochs the run records a finer learning curve: every
:data:`CURVE_EVERY_SAMPLES` training samples, the loss and accuracy on the first
:data:`CURVE_PROBE_SAMPLES` validation samples. That measuring is kept out of
every training time. An observer (:class:`TrainingObserver`) hears of each
epoch, and of the run's progress from host-side counters at most every
:data:`PROGRESS_POLL_SECONDS`, with no device sync.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pytest_batchprof.data.batches import (
    BatchModel,
    Forward,
    call_model,
    default_forward,
    model_outputs,
    split_batch,
)
from pytest_batchprof.data.datasets import AnySplit, Dataset, Split
from pytest_batchprof.data.loading import EVAL_LOADER_BATCH, LoaderSplit
from pytest_batchprof.engine.memory import (
    MemoryBudgetExceeded,
    MemoryLimit,
    OutOfMemory,
    cause_of,
    is_out_of_memory,
    release_device_memory,
)
from pytest_batchprof.engine.status import TrainingStatus
from pytest_batchprof.experiment.config import RunConfig
from pytest_batchprof.experiment.models import build_mlp
from pytest_batchprof.experiment.tasks import TASK_BY_NAME, RunMetric, Task, run_metric
from pytest_batchprof.hardware.clock import HOST_CLOCK, Stopwatch
from pytest_batchprof.hardware.denormals import denormals_flushed
from pytest_batchprof.hardware.devices import synchronize
from pytest_batchprof.hardware.precision import (
    autocast,
    emulation_note,
    grad_scaler,
    in_precision,
    matmul_precision,
)
from pytest_batchprof.measuring.metrics import (
    Latency,
    Measurements,
    PeakMemoryMeter,
    inference_inputs,
    predictor,
)
from pytest_batchprof.measuring.noise_scale import NoiseScale

if TYPE_CHECKING:
    from pytest_batchprof.engine.lr_choice import LrChoice
    from pytest_batchprof.engine.memory import MaxBatch
    from pytest_batchprof.engine.parallel import Shard
    from pytest_batchprof.engine.steps import LoopStep

DIVERGENCE_CHECK_STEPS = 200
"""How often (in optimizer steps) the running loss is checked for NaN or inf."""

TARGET_CHECK_SAMPLES = 5_000
"""With a target accuracy, the validation accuracy is checked after every this many
training samples (rounded to whole steps), and at the end of every epoch."""

EVAL_BATCH_SIZE = 4096
"""Batch size of validation and test passes; it does not change the result, only the speed."""

CURVE_EVERY_SAMPLES = 10_000
"""A learning-curve point is recorded after every this many training samples (runs whose
epochs are shorter have one point per epoch, their epoch records)."""

CURVE_PROBE_SAMPLES = 500
"""The validation samples a learning-curve point is measured on: the first ones of the
split, the same for every point and every run, so that the points of one curve, and the
curves of two runs, differ by what the models learnt, not by which samples were drawn. A
point costs a tenth of a full MNIST validation pass; the curve, one forward pass over 5%
of the training samples (``make overhead`` measures it)."""

GATHER_CHUNK_BYTES = 1 << 20
"""Training samples are gathered in their shuffled order this many bytes at a time (at
least one batch): small enough to stay in cache until its batches are used."""

MEASURED_SAMPLES = 256
"""The test samples a DataLoader-fed run keeps for its latency, FLOPs and predictor (an
in-memory run keeps its whole test split: the inputs of a timed batch cycle through them)."""

PROGRESS_POLL_SECONDS = 0.25
"""How often the training loop tells its observer where it stands (a clock read per step)."""


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def correct_predictions(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The accuracy metric: how many arg-max classes equal the class-index targets."""
    return (outputs.argmax(dim=1) == targets).sum()
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int, int], torch.optim.lr_scheduler.LRScheduler]
"""``scheduler(optimizer, steps_per_epoch, epochs)``: a learning-rate schedule stepped after
every optimizer step."""


@dataclass(frozen=True)
class Recipe:
    """The callables a run trains with, which its :class:`RunConfig` only names."""

    build_model: Callable[[], nn.Module]
    """Makes the untrained model; :func:`initial_model` seeds the RNG around it."""
    loss: LossFunction = F.cross_entropy
    """``loss(outputs, targets)``: a scalar, the mean over the batch."""
    optimizer: OptimizerFactory | None = None
    """``optimizer(parameters)``; ``None``: the one ``config.optimizer`` names. The
    run's learning rate is written into its parameter groups either way."""
    metric: Metric = correct_predictions
    """``metric(outputs, targets)``: how many of the batch's predictions are right (a 0-d
    tensor, kept on the device); every accuracy of the run is its sum over the samples.
    Counted by classification runs only."""
    task: Task = TASK_BY_NAME["classification"]
    """What the run learns (its loss is ``loss``; its default metric the task's)."""
    scores: object = None
    """The run's metric when it is not the task's default: a torchmetrics ``Metric`` or a
    :class:`~pytest_batchprof.experiment.tasks.MetricSpec` (``trained_model(metric=...)``)."""
    forward: Forward | None = None
    """``forward(model, batch) -> (outputs, targets)`` for batches or results the
    conventions of :mod:`pytest_batchprof.data.batches` do not take apart."""
    scheduler: SchedulerFactory | None = None
    """A learning-rate schedule stepped after every optimizer step (after any warm-up's
    step), made once the optimizer is."""

    def outputs_and_targets(self, model: Callable[..., object], batch: object) -> (
            tuple[torch.Tensor, torch.Tensor]):
        """The model's scores on ``batch`` and its targets: the run's ``forward``, or the
        conventions of :mod:`pytest_batchprof.data.batches`."""
        return (self.forward or default_forward)(model, batch)

    @property
    def counts_accuracy(self) -> bool:
        """Whether the run counts accuracy (classification does, beside any other metric)."""
        return self.task.name == "classification"

    @property
    def metric_is_accuracy(self) -> bool:
        """Whether the run's metric is the accuracy it counts."""
        return self.counts_accuracy and self.scores is None

    @classmethod
    def of_mlp(cls, config: RunConfig) -> Recipe:
        """The recipe of an MLP config (``config.hidden`` set): cross-entropy, named optimizer."""
        if config.hidden is None:
            raise ValueError(f"{config.model_name} is not an MLP: pass its Recipe")
        return cls(lambda: build_mlp(config.input_size, config.hidden, config.num_classes,
                                     config.activation or "relu"))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's figures.

    Losses are mean cross-entropy per sample (nats); accuracies are fractions.
    The training figures are running averages over the epoch's batches, as the
    reference posts print them; validation figures are measured after the epoch.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    train_seconds: float
    eval_seconds: float
    train_metric: float | None = None
    """The run's metric over the epoch's batches, when it is not accuracy (RMSE, F1,
    perplexity, the user's): running, as the training accuracy is."""
    val_metric: float | None = None
    """... and on the validation split after the epoch."""

    @property
    def seconds(self) -> float:
        """Wall time of the epoch: optimisation plus the validation pass."""
        return self.train_seconds + self.eval_seconds

    def line(self, metric: str = "accuracy") -> str:
        """The posts' progress line: ``Epoch 01, Train acc=0.911, Val acc=0.935, ...``; the
        run's ``metric`` by its name when it is not accuracy (``Train rmse=0.52, ...``)."""
        if self.val_metric is None:
            scores = f"Train acc={self.train_accuracy:.3f}, Val acc={self.val_accuracy:.3f}"
        else:
            scores = (f"Train {metric}={self.train_metric:.4g}, "
                      f"Val {metric}={self.val_metric:.4g}")
        return (f"Epoch {self.epoch:02d}, {scores}, Train loss={self.train_loss:.3f}, "
                f"Val loss={self.val_loss:.3f}")


@dataclass(frozen=True)
class CurvePoint:
    """The validation figures partway through training, on the first
    :data:`CURVE_PROBE_SAMPLES` validation samples (mean cross-entropy in nats,
    accuracy as a fraction)."""

    samples: int
    """Training samples seen, counted from the start of the run."""
    epoch: float
    """The same position in epochs: ``samples`` over the samples of one epoch."""
    val_loss: float
    val_accuracy: float
    val_metric: float | None = None
    """The run's metric on the same samples, when it is not accuracy."""


class TrainingObserver(Protocol):
    """What the engine tells while it trains (the plugin's
    :class:`~pytest_batchprof.runs.progress.RunProgress` shows it)."""

    def on_progress(self, status: TrainingStatus) -> None:
        """Where the run stands, at most every :data:`PROGRESS_POLL_SECONDS` during an epoch."""

    def on_epoch(self, config: RunConfig, record: EpochRecord) -> None:
        """An epoch has ended and been validated."""


@dataclass(frozen=True)
class TimeToTarget:
    """How long a run took to reach its target validation accuracy, as MLPerf ranks training.

    ``seconds`` is wall time from the first step, the validation checks
    included. Every figure is ``None`` when the target was not reached within
    the run's epochs.
    """

    target: float
    steps: int | None = None
    samples: int | None = None
    epochs: float | None = None
    seconds: float | None = None
    metric: str = "accuracy"
    """The figure the target is on: ``accuracy``, or the run's metric by its name
    (``--batchprof-target-metric``), reached in its direction."""

    @property
    def reached(self) -> bool:
        return self.steps is not None

    def summary(self) -> dict[str, object]:
        """Row figures; ``"not reached"`` in place of a number that does not exist. A
        target of the run's metric is ``target_metric`` with its ``target_metric_name``
        (``target_accuracy`` is then the config's, none)."""
        def figure(value: object) -> object:
            return value if self.reached else "not reached"

        target = ({"target_accuracy": self.target} if self.metric == "accuracy" else
                  {"target_metric": self.target, "target_metric_name": self.metric})
        return {**target, "target_reached": self.reached,
                "target_steps": figure(self.steps), "target_samples": figure(self.samples),
                "target_epochs": figure(self.epochs), "target_seconds": figure(self.seconds)}


@dataclass
class Run:
    """A trained configuration: the model, its history and its results.

    ``diverged`` holds the reason when the loss became NaN or inf; the history
    then ends at the last finite epoch, and ``test_accuracy`` and
    ``measurements`` are ``None``.
    """

    config: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    samples_per_epoch: int
    test_images: object = field(repr=False)
    """What inference is timed on: the test split's inputs (a tensor, or the tuple or
    mapping a model takes), or whole test batches when ``call`` takes batches."""
    history: list[EpochRecord] = field(default_factory=list)
    train_seconds: float = 0.0
    test_loss: float | None = None
    test_accuracy: float | None = None
    diverged: str | None = None
    measurements: Measurements | None = None
    noise_scale: NoiseScale | None = None
    """The gradient noise scale at the end of training, with ``--noise-scale``."""
    time_to_target: TimeToTarget | None = None
    """Steps, samples, epochs and seconds to ``config.target_accuracy``, when it is set."""
    curve: list[CurvePoint] = field(default_factory=list)
    """The learning curve between epochs (empty when an epoch has at most
    :data:`CURVE_EVERY_SAMPLES` samples: the epoch records are fine enough)."""
    curve_seconds: float = 0.0
    """Wall time spent measuring ``curve``: part of no training time."""
    clock: str = HOST_CLOCK
    """What timed the epochs (:mod:`~pytest_batchprof.hardware.clock`): CUDA events on CUDA."""
    max_batch: MaxBatch | None = None
    """With ``--batchprof-find-max-batch``: the largest batch of this run's model that fits."""
    lr_choice: LrChoice | None = None
    """With a learning-rate grid: the tuning this run took part in (:mod:`~pytest_batchprof.
    runs.lr_grid`), whether or not its rate was the one chosen."""
    ensemble: str | None = None
    """``one of 4`` when the run was trained in an ensemble of runs that differ only in
    seed and learning rate (:mod:`~pytest_batchprof.engine.ensemble`); ``None`` alone."""
    threads: int | None = None
    """The torch intra-op threads the run trained with, in the process that trained it
    (``None`` for a data-parallel run's forked processes, which choose their own)."""
    out_of_memory: OutOfMemory | None = None
    """Set when the run ran out of memory (the device's, or the budget's); the history
    then ends at the last whole epoch, and it is neither tested nor measured."""
    test_metric: float | None = None
    """The run's metric on the test split, when it is not accuracy (``test_accuracy`` is)."""
    val_note: str | None = None
    """Why the validation figures may not be what they seem: a validation split cut from a
    training ``Dataset`` is read with its training transforms
    (:data:`~pytest_batchprof.data.datasets.VAL_CUT_NOTE`)."""
    call: Callable[[nn.Module, object], object] | None = field(default=None, repr=False)
    """How inference calls the model on ``test_images``: ``None`` for ``model(inputs)``;
    else ``call(model, inputs)`` (inputs given by name or position, or the user's
    ``forward=`` on whole batches)."""

    @property
    def name(self) -> str:
        return self.config.model_name

    @property
    def metric_name(self) -> str:
        """The name of the run's metric: ``accuracy``, ``rmse``, ``f1``, ``perplexity``, or
        the one given with ``metric=``."""
        return self.config.metric

    @property
    def metric(self) -> float | None:
        """The run's metric on the test split (its accuracy for a classification run
        scored by accuracy); ``None`` for a run that was not tested."""
        return self.test_accuracy if self.config.metric == "accuracy" else self.test_metric

    @property
    def val_metric(self) -> float:
        """The run's metric on the validation split after the last epoch."""
        if self.config.metric == "accuracy":
            return self.val_accuracy
        value = self.history[-1].val_metric if self.history else None
        return math.nan if value is None else value

    def inference_model(self) -> nn.Module:
        """The model as inference is timed and counted: itself, or wrapped so that it takes
        ``test_images`` as they are (:class:`~pytest_batchprof.data.batches.BatchModel`)."""
        return self.model if self.call is None else BatchModel(self.model, self.call)

    @property
    def lr_discarded(self) -> bool:
        """Whether a learning-rate grid chose another rate than this run's: the run is
        evidence in the report's grid, but no threshold or baseline reads it."""
        return self.lr_choice is not None and self.lr_choice.chosen != self.config.lr

    @property
    def epochs_trained(self) -> float:
        """Epochs the run trained: a run stopped at its target ends in a fraction of one."""
        if self.time_to_target is not None and self.time_to_target.reached:
            return self.time_to_target.epochs
        return float(len(self.history))

    @property
    def seconds_per_epoch(self) -> float:
        """Wall time per epoch trained, validation included."""
        return self.train_seconds / self.epochs_trained if self.history else math.nan

    @property
    def train_accuracy(self) -> float:
        """Running training accuracy of the last epoch."""
        return self.history[-1].train_accuracy if self.history else math.nan

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy after the last epoch."""
        return self.history[-1].val_accuracy if self.history else math.nan

    @property
    def train_samples_per_second(self) -> float:
        """Training throughput: samples per second of optimisation (validation excluded)."""
        seconds = sum(record.train_seconds for record in self.history)
        return self.samples_per_epoch * self.epochs_trained / seconds if seconds else math.nan

    @property
    def params(self) -> int | None:
        """Parameter count (``None`` for a diverged run, which is not measured)."""
        return self.measurements.params if self.measurements else None

    @property
    def flops(self) -> int | None:
        """Forward FLOPs of one sample (2 per multiply-add), from FlopCounterMode."""
        return self.measurements.flops.forward_flops if self.measurements else None

    @property
    def latency(self) -> Latency | None:
        """Inference seconds per sample at the inference batch size."""
        return self.measurements.latency if self.measurements else None

    def predictor(self, batch_size: int | None = None) -> Callable[[], torch.Tensor]:
        """A no-argument callable running one inference batch of test images, for timers.

        Usage::

            benchmark(run.predictor())   # pytest-benchmark times inference, not training
        """
        if batch_size is None:
            batch_size = (self.measurements.latency.batch_size if self.measurements
                          else self.config.batch_size)
        self.model.eval()
        model = in_precision(self.inference_model(), self.config.precision,
                             torch.device(self.config.device))
        return predictor(model, inference_inputs(self.test_images, batch_size))

    def summary(self) -> dict[str, object]:
        """Plain figures (no tensors, no NaN: ``None`` where there is no figure)."""
        emulated = emulation_note(self.config.precision, self.config.device)
        figures = {
            **asdict(self.config),
            "model": self.name,
            "per_process_batch": self.config.per_process_batch,
            "samples_per_epoch": self.samples_per_epoch,
            "train_seconds": self.train_seconds,
            "seconds_per_epoch": self.seconds_per_epoch,
            "train_accuracy": self.train_accuracy,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            **({} if self.config.metric == "accuracy" else {
                "train_metric": self.history[-1].train_metric if self.history else None,
                "val_metric": self.val_metric, "test_metric": self.test_metric}),
            "diverged": self.diverged,
            "train_samples_per_second": self.train_samples_per_second,
            "train_clock": self.clock,
            "ensemble": self.ensemble,
            "threads": self.threads,
            **({"val_note": self.val_note} if self.val_note else {}),
            **({"precision_note": f"{self.config.precision} emulated: {emulated}"}
               if emulated else {}),
            **(self.measurements.summary() if self.measurements else {}),
            **(self.noise_scale.summary() if self.noise_scale else {}),
            **(self.time_to_target.summary() if self.time_to_target else {}),
            **(self.out_of_memory_summary() if self.out_of_memory else {}),
            **(self.max_batch.summary() if self.max_batch else {}),
            **(self.lr_choice.summary(self.config.lr) if self.lr_choice else {}),
            "history": [_without_nan(asdict(record)) for record in self.history],
            "curve": [_without_nan(asdict(point)) for point in self.curve],
        }
        return _without_nan(figures)

    def out_of_memory_summary(self) -> dict[str, object]:
        """The row of a run that ran out: its outcome, and the memory it had reached."""
        figures: dict[str, object] = {"out_of_memory": self.out_of_memory.describe()}
        if self.out_of_memory.reached_bytes is not None and self.measurements is None:
            figures["peak_memory_bytes"] = self.out_of_memory.reached_bytes
        return figures

    def __repr__(self) -> str:
        """Names the run and its figures: what a failing ``assert run.test_accuracy`` shows."""
        def percent(value: float | None) -> str:
            return "n/a" if value is None or math.isnan(value) else f"{value:.2%}"

        def figure(value: float | None) -> str:
            return "n/a" if value is None or math.isnan(value) else f"{value:.4g}"

        state = f", diverged: {self.diverged}" if self.diverged else ""
        if self.out_of_memory:
            state = f", {self.out_of_memory.describe()}"
        if self.config.metric != "accuracy":  # the run's metric, by its name
            name = self.config.metric
            train = self.history[-1].train_metric if self.history else None
            scores = (f"test {name} {figure(self.test_metric)}, val {name} "
                      f"{figure(self.val_metric)}, train {name} {figure(train)}")
        else:
            scores = (f"test acc {percent(self.test_accuracy)}, val acc "
                      f"{percent(self.val_accuracy)}, train acc {percent(self.train_accuracy)}")
        return f"<Run {self.config.describe()}: {scores}, {self.train_seconds:.2f} s{state}>"


def _without_nan(figures: dict[str, object]) -> dict[str, object]:
    """``figures`` with ``None`` for NaN (a figure the run has none of: the accuracy of a
    regression's epochs), as JSON can hold them."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in figures.items()}


def epoch_samples(config: RunConfig, available: int) -> int:
    """The samples one epoch of ``config`` trains on, of ``available``: all of them (the
    last batch short when the batch size does not divide them), or with ``drop_last``
    those of the whole batches, as ``torch.utils.data.DataLoader(drop_last=True)``."""
    return available - available % config.batch_size if config.drop_last else available


def last_batch(config: RunConfig, available: int) -> int:
    """The size of an epoch's last batch when it is short (the global batch's); 0 when
    every batch is whole."""
    return epoch_samples(config, available) % config.batch_size


def scaled_lr(lr: float, batch_size: int, base_batch: int, rule: str) -> float:
    """The learning rate for ``batch_size`` when ``lr`` is right at ``base_batch``.

    ``linear``: lr x b/B, the rule of Goyal et al. (2017) for SGD; ``sqrt``:
    lr x sqrt(b/B), the gentler rule often used with Adam; ``none``: lr unchanged.
    """
    if rule == "linear":
        return lr * batch_size / base_batch
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / base_batch)
    if rule == "none":
        return lr
    raise ValueError(f"lr scaling {rule!r} is not one of none, linear, sqrt")


def warmup_lr(config: RunConfig, step: int, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (1-based) during a warm-up of ``warmup_steps``.

    A linear ramp from ``lr_warmup_start`` at step 1 to ``lr`` at step
    ``warmup_steps + 1``, the gradual warm-up of Goyal et al. (2017).
    """
    start = config.lr if config.lr_warmup_start is None else config.lr_warmup_start
    if step > warmup_steps:
        return config.lr
    return start + (config.lr - start) * (step - 1) / warmup_steps


def make_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:
    """``adam`` (torch defaults) or plain ``sgd`` (no momentum), fused where torch can.

    The fused kernels do the same arithmetic in one pass over the weights
    instead of a dozen (the manual's 'How a run trains' has the timings).
    """
    classes = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in classes:
        raise ValueError(f"optimizer={name!r} is not one of adam, sgd")
    parameters = list(parameters)
    try:
        return classes[name](parameters, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without fused kernels
        return classes[name](parameters, lr=lr)


def initial_model(config: RunConfig, device: torch.device, recipe: Recipe | None = None) -> (
        tuple[nn.Module, torch.optim.Optimizer]):
    """The untrained model of ``config`` (seeded, global RNG untouched) and its optimizer.

    Training starts from it, and a cached run is loaded into it, so both build
    exactly the same modules. ``recipe`` defaults to the MLP of ``config``.
    """
    recipe = recipe or Recipe.of_mlp(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = recipe.build_model()
    model.to(device)
    if recipe.optimizer is None:
        return model, make_optimizer(config.optimizer, model.parameters(), config.lr)
    optimizer = recipe.optimizer(model.parameters())
    for group in optimizer.param_groups:  # lr options and rules apply to any optimizer
        group["lr"] = config.lr
    return model, optimizer


@contextmanager
def run_randomness(seed: int, device: torch.device) -> Iterator[None]:
    """The global random state a run draws from while it trains (dropout masks, random
    layers of the user's model), seeded with ``seed`` and restored afterwards.

    Weights and the shuffle have seeded generators of their own; without this, dropout
    would draw from whatever state the process was in, so the same configuration gave
    other figures depending on what ran before it. A data-parallel rank adds its rank to
    the seed, so that its processes draw different masks for their different samples.
    """
    devices = [device.index if device.index is not None else torch.cuda.current_device()
               ] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def warm_up(device: torch.device, optimizers: Sequence[str] = ("adam", "sgd")) -> None:
    """Pay torch's one-off costs before the first timed run.

    The first optimizer step in a process imports parts of torch (about 2 s
    for Adam on the CPU), and the first kernels on a device initialise it; a
    study's first run would otherwise look seconds slower than the rest. Two steps of a
    tiny model with each of ``optimizers`` (none: a caller whose runs' own optimizers
    have stepped already), then an evaluation, which no optimizer step pays for.
    """
    with torch.random.fork_rng(devices=[]):
        model = build_mlp(4, (4,), 2).to(device)
    inputs = torch.zeros(2, 2, 2, device=device)
    labels = torch.zeros(2, dtype=torch.int64, device=device)
    for name in optimizers:
        optimizer = make_optimizer(name, model.parameters(), 1e-3)
        for _ in range(2):
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    evaluate(model, Split(inputs, labels))
    synchronize(device)


@dataclass(frozen=True)
class Scores:
    """A model's figures on a split: mean loss per sample, accuracy (NaN when the run
    counts none), the run's metric when it is not accuracy, and the samples scored."""

    loss: float
    accuracy: float
    metric: float | None
    count: int


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int = EVAL_BATCH_SIZE,
             loss: LossFunction = F.cross_entropy,
             metric: Metric = correct_predictions,
             precision: str = "fp32") -> tuple[float, float]:
    """Mean loss per sample (nats for cross-entropy) and accuracy of ``model`` on ``split``,
    the forward pass in ``precision`` (the sums in fp32)."""
    mean_loss, accuracy, _ = evaluate_batches(model, split_batches(split, batch_size),
                                              split.x.device, loss, metric, precision)
    return mean_loss, accuracy


def split_batches(split: AnySplit, batch_size: int = EVAL_BATCH_SIZE,
                  loaders: dict[int, torch.utils.data.DataLoader] | None = None) -> (
        Iterable[object]):
    """A split's batches in order, for scoring: slices of its tensors in memory (of
    ``batch_size``), or a DataLoader's batches of :data:`~.loading.EVAL_LOADER_BATCH`.
    ``loaders`` keeps one DataLoader per split for a run's every pass (so that the
    user's ``persistent_workers`` are started once a run, not at every validation); it
    is the run's own, so that what one run draws never moves another's figures."""
    if split.in_memory:
        return ((split.x[start:start + batch_size], split.y[start:start + batch_size])
                for start in range(0, len(split), batch_size))
    if loaders is None:
        return split.batches(split.loader(EVAL_LOADER_BATCH))
    if id(split) not in loaders:
        loaders[id(split)] = split.loader(EVAL_LOADER_BATCH)
    return split.batches(loaders[id(split)])


@torch.inference_mode()
def score(model: nn.Module, split: AnySplit, recipe: Recipe, device: torch.device,
          precision: str = "fp32", scores: RunMetric | None = None,
          shard: Shard | None = None,
          loaders: dict[int, torch.utils.data.DataLoader] | None = None) -> Scores:
    """``model``'s :class:`Scores` on ``split`` with the run's loss, accuracy count and
    metric (``scores``, reset first; ``None`` when accuracy is the metric); with
    ``shard``, this process scores its share of the split and the figures are every
    process's. ``loaders``: the run's scoring DataLoaders (:func:`split_batches`)."""
    if shard is not None:
        loaders = None  # a shard's subset is cut anew at every pass
        low, high = shard.bounds(len(split))
        split = (Split(split.x[low:high], split.y[low:high]) if split.in_memory
                 else split.subset(list(range(low, high))))
    if scores is not None:
        scores.reset()
    mean_loss, accuracy, count = evaluate_batches(
        model, split_batches(split, loaders=loaders), device, recipe.loss, recipe.metric, precision,
        forward=recipe.forward, counts_accuracy=recipe.counts_accuracy, scores=scores)
    if shard is not None:
        total_loss, correct, count = (float(value) for value in shard.sum(
            *(torch.tensor(value, device=device)
              for value in (mean_loss * count, accuracy * count, float(count)))))
        mean_loss, accuracy = total_loss / max(count, 1), correct / max(count, 1)
    metric = scores.compute(shard) if scores is not None else None
    return Scores(mean_loss, accuracy if recipe.counts_accuracy else math.nan, metric,
                  int(count))


def evaluate_batches(model: nn.Module, batches: Iterable[object],
                     device: torch.device, loss: LossFunction = F.cross_entropy,
                     metric: Metric = correct_predictions,
                     precision: str = "fp32", *, forward: Forward | None = None,
                     counts_accuracy: bool = True,
                     scores: RunMetric | None = None) -> tuple[float, float, int]:
    """Mean loss per sample and accuracy of ``model`` on batches on ``device`` (``(x, y)``,
    or any batch :mod:`~pytest_batchprof.data.batches` takes apart, or ``forward``
    does), and their samples: summed on the device, read once at the end. ``scores``
    hears every batch's outputs and targets."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    in_precision = autocast(precision, device)
    for batch in batches:
        with in_precision:
            logits, labels = (forward or default_forward)(model, batch)
        logits = logits.float()
        size = len(labels)
        if loss is F.cross_entropy:
            total += F.cross_entropy(logits, labels, reduction="sum")
        else:  # a mean over the batch, weighted back to a sum
            total += loss(logits, labels).detach() * size
        if counts_accuracy:
            correct += metric(logits, labels)
        if scores is not None:
            scores.update(logits, labels)
        count += size
    model.train(was_training)
    return total.item() / max(count, 1), correct.item() / max(count, 1), count


def measured_inputs(split: AnySplit, recipe: Recipe) -> tuple[object, Callable | None]:
    """What a run's inference is timed and counted on (``Run.test_images``), and how the
    model is called on it (``Run.call``): the test split's inputs, as many as
    :data:`MEASURED_SAMPLES` when a DataLoader reads it; whole batches for ``forward=``."""
    if split.in_memory and recipe.forward is None:
        return split.x, None
    batch = (split.x, split.y) if split.in_memory else split.first(
        min(len(split), MEASURED_SAMPLES))
    if recipe.forward is not None:
        forward = recipe.forward
        return batch, lambda model, batch: forward(model, batch)[0]
    inputs, _ = split_batch(batch)
    if isinstance(inputs, torch.Tensor):
        return inputs, None
    return inputs, lambda model, inputs: model_outputs(call_model(model, inputs))


def train(
    config: RunConfig,
    data: Dataset,
    device: torch.device,
    observer: TrainingObserver | None = None,
    recipe: Recipe | None = None,
    extra_steps: Sequence[type[LoopStep]] = (),
) -> Run:
    """Train ``config`` on ``data`` (already cropped, subset and on ``device``), then
    let its steps finish (:meth:`TrainingLoop.finish`).

    ``recipe`` gives the model, loss and optimizer (default: the MLP of
    ``config``); ``extra_steps`` are optional :mod:`.steps` to hang on the loop
    (e.g. :class:`~.steps.NoiseScaleEstimate`). Never raises for a diverging
    loss: the returned run carries the reason.
    """
    loop = TrainingLoop(config, data, device, recipe or Recipe.of_mlp(config), observer,
                        extra_steps)
    run = loop.run()
    loop.finish()
    return run


class TrainingLoop:
    """One run's optimisation: epochs of steps, and the :mod:`.steps` that hang on them.

    A step of the hot loop is the forward pass, the loss, the backward pass and
    the optimizer step, and nothing that makes the host wait:

    * each epoch's shuffled order is gathered in chunks of about
      :data:`GATHER_CHUNK_BYTES` (one indexing kernel per chunk, into one buffer
      reused for every chunk, still in cache when its batches, slices of it, are
      used);
    * the step's loss, outputs and labels are kept (references, no kernel) and
      summed into the running loss and accuracy every
      :data:`DIVERGENCE_CHECK_STEPS` steps and at the epoch's end;
    * gradients are cleared as ``zero_grad(set_to_none=True)`` clears them,
      without its profiler record, unless the optimizer overrides ``zero_grad``;
    * everything else (warm-up, divergence and target checks, curve points,
      progress) is a :class:`~.steps.LoopStep`, called only when its next due
      step comes: one integer comparison per step.
    """

    def __init__(self, config: RunConfig, data: Dataset, device: torch.device, recipe: Recipe,
                 observer: TrainingObserver | None = None,
                 extra_steps: Sequence[type[LoopStep]] = (),
                 memory: PeakMemoryMeter | None = None,
                 memory_limit: MemoryLimit | None = None,
                 shard: Shard | None = None) -> None:
        from pytest_batchprof.engine.steps import loop_steps

        self.config, self.data, self.device, self.observer = config, data, device, observer
        self.memory, self.memory_limit = memory, memory_limit
        """The meter of the run's peak memory (entered around :meth:`run`) and the limit it
        may not pass: with both, :class:`~.steps.MemoryCheck` watches the run."""
        self.model, self.optimizer = initial_model(config, device, recipe)  # lr after warm-up
        self.shard = shard
        """This process's place in a data-parallel run (:mod:`.parallel`); ``None`` alone."""
        self.forward = self.model
        self.local_batch = config.batch_size
        """Samples of a full batch that this process computes (the global batch alone)."""
        if shard is not None:
            from torch.nn.parallel import DistributedDataParallel

            if config.sync_batchnorm:  # the same parameters: the optimizer still steps them
                from pytest_batchprof.engine.batchnorm import synchronise_batchnorm

                self.model = synchronise_batchnorm(self.model, device)
            self.forward = DistributedDataParallel(self.model)
            self.local_batch = config.batch_size // shard.world
        self.loss_fn, self.metric = recipe.loss, recipe.metric
        self.recipe = recipe
        self.scores: RunMetric | None = (
            None if recipe.metric_is_accuracy
            else run_metric(recipe.scores, recipe.task, config.num_classes, device))
        """The run's metric when it is not accuracy, over each epoch's training batches."""
        self.val_scores: RunMetric | None = (
            None if recipe.metric_is_accuracy
            else run_metric(recipe.scores, recipe.task, config.num_classes, device))
        """... a second one, for the validation and test splits."""
        self.available = len(data.train)
        """The training samples each epoch's shuffled order is drawn from."""
        self.count = epoch_samples(config, self.available)
        """The samples an epoch trains on: all of them, or with ``drop_last`` those of its
        whole batches (what its steps count epochs and samples by)."""
        measured, call = measured_inputs(data.test, recipe)
        self.run_record = Run(config=config, model=self.model, optimizer=self.optimizer,
                              samples_per_epoch=self.count, test_images=measured, call=call,
                              val_note=data.val_note)
        self.steps_per_epoch = math.ceil(self.count / config.batch_size)
        self.epoch = self.step = self.steps_done = self.samples_done = 0
        self.started = 0.0
        self.stop_epoch = self.stop_run = False
        self.pending: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = (
            [], [], [])
        """Losses, outputs and labels of the steps since the last :meth:`fold`."""
        self.short_batch = 0
        """The size of the epoch's last batch among the pending steps, when it is short."""
        self.loss_total = torch.zeros((), device=device)
        self.correct_total = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = loop_steps(self, extra_steps)
        self._scoring_loaders: dict[int, torch.utils.data.DataLoader] = {}
        """The run's DataLoader per DataLoader-fed split it scores (:func:`split_batches`)."""
        self._train_loader: torch.utils.data.DataLoader | None = None
        self._gathered: torch.Tensor | None = None
        self._chunk = 0

    # -- what steps read

    @property
    def run_seconds(self) -> float:
        """Wall time since the first step, measuring (curve points) excluded."""
        return time.perf_counter() - self.started - self.run_record.curve_seconds

    def score(self, split: AnySplit) -> Scores:
        """The model's :class:`Scores` now on ``split`` (the run's loss, accuracy, metric and
        precision); in a data-parallel run, each process scores its shard and the figures
        are every process's."""
        return score(self.model, split, self.recipe, self.device, self.config.precision,
                     self.val_scores, self.shard, self._scoring_loaders)

    def evaluate(self, split: AnySplit) -> tuple[float, float]:
        """Mean loss and accuracy of the model now on ``split`` (see :meth:`score`)."""
        scores = self.score(split)
        return scores.loss, scores.accuracy

    def target_score(self, split: AnySplit) -> float:
        """What a target is checked against on ``split``: the run's metric with
        ``target_metric``, else its accuracy."""
        scores = self.score(split)
        if self.config.target_metric is not None and scores.metric is not None:
            return scores.metric
        return scores.accuracy

    def finite(self, loss_total: torch.Tensor) -> bool:
        """Whether the running loss is finite (on every process, in a data-parallel run)."""
        finite = bool(torch.isfinite(loss_total))
        return finite if self.shard is None else self.shard.all_true(finite, self.device)

    def fold(self) -> torch.Tensor:
        """Sum the pending steps into the epoch's running loss (per sample, times the
        samples) and correct count, on the device; return the loss total."""
        losses, outputs, labels = self.pending
        if losses:
            stacked = torch.stack(losses)
            if self.short_batch:  # the epoch's last batch, the last pending step
                self.loss_total += (stacked[:-1].sum() * self.local_batch
                                    + stacked[-1] * self.short_batch)
            else:
                self.loss_total += stacked.sum() * self.local_batch
            if self.recipe.counts_accuracy or self.scores is not None:
                outputs_seen, labels_seen = torch.cat(outputs), torch.cat(labels)
                if self.recipe.counts_accuracy:
                    self.correct_total += self.metric(outputs_seen, labels_seen)
                if self.scores is not None:
                    self.scores.update(outputs_seen.float(), labels_seen)
            for pending in self.pending:
                pending.clear()
            self.short_batch = 0
        return self.loss_total

    # -- the loop

    def run(self) -> Run:
        """Train and test the run (denormals flushed on the CPU when the config says so).

        A run that runs out of memory (the device's error, or its peak past
        ``memory_limit``) returns with ``out_of_memory`` set, once what its last
        step held has been let go and the device's cache emptied.
        """
        config = self.config
        rank = 0 if self.shard is None else self.shard.rank
        with (run_randomness(config.seed + rank, self.device),
              denormals_flushed(config.flush_denormals and self.device.type == "cpu"),
              matmul_precision(config.precision, self.device)):
            try:
                return self._train()
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                budget = isinstance(error, MemoryBudgetExceeded)  # checked after its step
                self.run_record.out_of_memory = OutOfMemory(
                    config.batch_size, self._reached(error), cause_of(error), self.epoch,
                    self.step if budget else self.step + 1)
            finally:
                self._release_loaders()
        # Outside the except block: the failed step's frames, and their tensors, are gone.
        self._release()
        return self.run_record

    def _release_loaders(self) -> None:
        """End the worker processes of the run's DataLoaders as the run ends (see
        :meth:`~pytest_batchprof.data.loading.LoaderSplit.release`)."""
        loaders = [*self._scoring_loaders.values(), self._train_loader]
        self._scoring_loaders, self._train_loader = {}, None
        for loader in loaders:
            if loader is not None:
                LoaderSplit.release(loader)

    def _reached(self, error: BaseException) -> int | None:
        if isinstance(error, MemoryBudgetExceeded):
            return error.reached
        return None if self.memory is None else self.memory.reached()

    def _release(self) -> None:
        """Let go of what a run that ran out of memory still holds: the pending steps'
        outputs, the gradients and the optimizer's state (the weights stay, as small as
        the model)."""
        for pending in self.pending:
            pending.clear()
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None
        self.optimizer.state.clear()
        self.model.eval()
        release_device_memory(self.device)

    def finish(self) -> None:
        """Call every step's :meth:`~.steps.LoopStep.finish`: after :meth:`run`, and after
        whatever measured it (the session's memory and CO2 meters) has stopped."""
        for loop_step in self.steps:
            loop_step.finish()

    def _train(self) -> Run:
        run, config, device = self.run_record, self.config, self.device
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        forward, shard = self.forward, self.shard
        world = 1 if shard is None else shard.world
        clear_grads = _grad_clearer(optimizer)
        in_precision = autocast(config.precision, device)  # nothing for fp32 and tf32
        scaler = grad_scaler(config.precision, device)  # fp16 only
        losses, outputs, labels_seen = self.pending
        in_memory = self.data.train.in_memory
        plain = in_memory and self.recipe.forward is None
        """Batches are (x, y) tensors and the model is called on x: the lean step."""
        call = self.recipe.forward or default_forward
        if in_memory:
            shuffle = torch.Generator().manual_seed(config.seed)
            batches = self._memory_batches
        else:
            loader = self._train_loader = self.data.train.loader(
                self.local_batch, shuffle=True, seed=config.seed, drop_last=config.drop_last,
                rank=0 if shard is None else shard.rank, world=world)
            batches = self._loader_batches
        for step in self.steps:
            step.start()
        next_due = min(step.due for step in self.steps)
        stopwatch = Stopwatch(device)
        run.clock = stopwatch.name
        synchronize(device)
        self.started = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            self.epoch, self.stop_epoch, self.step = epoch, False, 0
            stopwatch.start()
            measured_before = run.curve_seconds
            model.train()
            self.loss_total = torch.zeros((), device=device)
            self.correct_total = torch.zeros((), dtype=torch.int64, device=device)
            if self.scores is not None:
                self.scores.reset()
            seen = 0
            for item, size in (batches(shuffle) if in_memory else batches(loader, epoch)):
                with in_precision:
                    if plain:
                        inputs, labels = item
                        logits = forward(inputs)
                        if not isinstance(logits, torch.Tensor):
                            logits = model_outputs(logits)
                    else:
                        logits, labels = call(forward, item)
                    local = len(labels)
                    loss = loss_fn(logits, labels) if local else logits.sum()
                if shard is None:
                    objective = loss
                else:  # this process's slice, its loss weighted to the global mean's
                    size = size or local * world
                    objective = loss * (local * world / size)
                clear_grads()
                if scaler is None:
                    objective.backward()
                    optimizer.step()
                else:
                    scaler.scale(objective).backward()
                    scaler.step(optimizer)
                    scaler.update()
                if local:
                    losses.append(loss.detach())
                    outputs.append(logits.detach())
                    labels_seen.append(labels)
                    if local != self.local_batch:
                        self.short_batch = local
                seen += local
                self.step += 1
                self.steps_done += 1
                self.samples_done += size or local * world
                if self.steps_done >= next_due:
                    next_due = self._fire()
                    if self.stop_epoch:
                        break
            loss_total, correct_total = self.fold(), self.correct_total
            if shard is not None:  # the global figures: every process's sums
                loss_total, correct_total, seen = shard.sum(
                    loss_total, correct_total, torch.tensor(float(seen), device=device))
            train_loss = loss_total.item() / float(seen)
            train_accuracy = (correct_total.item() / float(seen) if self.recipe.counts_accuracy
                              else math.nan)
            train_metric = self.scores.compute(shard) if self.scores is not None else None
            train_seconds = stopwatch.stop() - (run.curve_seconds - measured_before)
            trained = time.perf_counter()
            run.train_seconds += train_seconds
            if not math.isfinite(train_loss):
                run.diverged = (f"training loss became {train_loss} in epoch {epoch} "
                                f"(lr={config.lr:g}, {config.optimizer})")
                break
            val = self.score(self.data.val)
            eval_seconds = time.perf_counter() - trained
            run.train_seconds += eval_seconds
            record = EpochRecord(epoch, train_loss, train_accuracy, val.loss, val.accuracy,
                                 train_seconds, eval_seconds, train_metric, val.metric)
            run.history.append(record)
            for loop_step in self.steps:
                loop_step.epoch_end(record)
            if self.stop_run or self.stop_epoch:
                break
        if run.diverged is None:
            test = self.score(self.data.test)
            run.test_loss, run.test_accuracy, run.test_metric = (
                test.loss, test.accuracy if self.recipe.counts_accuracy else None, test.metric)
        model.eval()
        return run

    def _memory_batches(self, shuffle: torch.Generator) -> Iterator[tuple[object, int]]:
        """One epoch of an in-memory training split: ``((x, y), global batch size)`` of this
        process's share of each batch, in an order drawn from ``shuffle``.

        The shuffled order is gathered in chunks of about :data:`GATHER_CHUNK_BYTES` into
        one buffer reused for every chunk (a fresh chunk per gather can cost a page fault
        per 4 KiB on the CPU, when the allocator has handed the last one back), still in
        cache when its batches, slices of it, are used."""
        train_split, batch_size, count = self.data.train, self.config.batch_size, self.count
        shard = self.shard
        if self._gathered is None:
            sample_bytes = max(1, train_split.x[:1].nelement() * train_split.x.element_size())
            self._chunk = max(1, GATHER_CHUNK_BYTES // (sample_bytes * batch_size)) * batch_size
            self._gathered = train_split.x.new_empty((min(self._chunk, count),
                                                      *train_split.x.shape[1:]))
        chunk, gathered = self._chunk, self._gathered
        # the whole order is drawn, so that drop_last drops another tail every epoch
        order = torch.randperm(self.available, generator=shuffle)[:count].to(self.device)
        for first in range(0, count, chunk):
            index = order[first:first + chunk]
            chunk_images = torch.index_select(train_split.x, 0, index, out=gathered[:len(index)])
            chunk_labels = train_split.y[index]  # kept by the pending steps: not reused
            for start in range(0, len(index), batch_size):
                labels = chunk_labels[start:start + batch_size]
                size = len(labels)  # the global batch's
                if shard is None:
                    yield (chunk_images[start:start + size], labels), size
                else:
                    low, high = shard.bounds(size)
                    yield (chunk_images[start + low:start + high], labels[low:high]), size

    def _loader_batches(self, loader: torch.utils.data.DataLoader, epoch: int) -> (
            Iterator[tuple[object, int]]):
        """One epoch of a DataLoader-fed training split: its batches (this process's, with
        a ``DistributedSampler``), their global size counted from their targets."""
        for batch in self.data.train.batches(loader, epoch):
            yield batch, 0

    def _fire(self) -> int:
        """Run every step that is due; the next step count at which one is."""
        for loop_step in self.steps:
            if self.steps_done >= loop_step.due:
                loop_step.fire()
                if self.stop_epoch:  # diverged or at the target: the rest can wait
                    break
        return min(loop_step.due for loop_step in self.steps)


def _grad_clearer(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``optimizer.zero_grad(set_to_none=True)``, or, for an optimizer that does not
    override it, the same loop without its profiler record, which costs a small batch's
    step a measurable share (the manual's 'How a run trains')."""
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        return lambda: optimizer.zero_grad(set_to_none=True)
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]

    def clear() -> None:
        for parameter in parameters:
            parameter.grad = None

    return clear

