"""The training engine: one run of one configuration, from seed to test accuracy.

Batches are index slices of tensors already on the device, reshuffled every
epoch by a generator seeded from the run's seed, so the same seed gives the
same weights and accuracies bit for bit on the CPU. Running loss and correct
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

from pytest_batchprof.data.datasets import Dataset, Split
from pytest_batchprof.engine.clock import HOST_CLOCK, Stopwatch
from pytest_batchprof.engine.denormals import denormals_flushed
from pytest_batchprof.engine.devices import synchronize
from pytest_batchprof.engine.memory import (
    MemoryBudgetExceeded,
    MemoryLimit,
    OutOfMemory,
    cause_of,
    is_out_of_memory,
    release_device_memory,
)
from pytest_batchprof.engine.precision import (
    autocast,
    emulation_note,
    grad_scaler,
    in_precision,
    matmul_precision,
)
from pytest_batchprof.experiment.config import RunConfig
from pytest_batchprof.experiment.models import build_mlp
from pytest_batchprof.measuring.metrics import (
    Latency,
    Measurements,
    PeakMemoryMeter,
    inference_inputs,
    predictor,
)
from pytest_batchprof.measuring.noise_scale import NoiseScale
from pytest_batchprof.plugin.progress import TrainingStatus

if TYPE_CHECKING:
    from pytest_batchprof.engine.parallel import Shard
    from pytest_batchprof.engine.steps import LoopStep
    from pytest_batchprof.runs.lr_grid import LrChoice
    from pytest_batchprof.runs.max_batch import MaxBatch

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

PROGRESS_POLL_SECONDS = 0.25
"""How often the training loop tells its observer where it stands (a clock read per step)."""


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def correct_predictions(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The accuracy metric: how many arg-max classes equal the class-index targets."""
    return (outputs.argmax(dim=1) == targets).sum()
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


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
    tensor, kept on the device); every accuracy of the run is its sum over the samples."""

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

    @property
    def seconds(self) -> float:
        """Wall time of the epoch: optimisation plus the validation pass."""
        return self.train_seconds + self.eval_seconds

    def line(self) -> str:
        """The posts' progress line: ``Epoch 01, Train acc=0.911, Val acc=0.935, ...``."""
        return (
            f"Epoch {self.epoch:02d}, Train acc={self.train_accuracy:.3f}, "
            f"Val acc={self.val_accuracy:.3f}, Train loss={self.train_loss:.3f}, "
            f"Val loss={self.val_loss:.3f}"
        )


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


class TrainingObserver(Protocol):
    """What the engine tells while it trains (the plugin's
    :class:`~pytest_batchprof.plugin.progress.RunProgress` shows it)."""

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

    @property
    def reached(self) -> bool:
        return self.steps is not None

    def summary(self) -> dict[str, object]:
        """Row figures; ``"not reached"`` in place of a number that does not exist."""
        def figure(value: object) -> object:
            return value if self.reached else "not reached"

        return {"target_accuracy": self.target, "target_reached": self.reached,
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
    test_images: torch.Tensor = field(repr=False)
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
    """What timed the epochs (:mod:`~pytest_batchprof.engine.clock`): CUDA events on CUDA."""
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

    @property
    def name(self) -> str:
        return self.config.model_name

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
        """A no-argument callable running one inference batch of test images, for timers::

            benchmark(run.predictor())   # pytest-benchmark times inference, not training
        """
        if batch_size is None:
            batch_size = (self.measurements.latency.batch_size if self.measurements
                          else self.config.batch_size)
        self.model.eval()
        model = in_precision(self.model, self.config.precision, self.test_images.device)
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
            "diverged": self.diverged,
            "train_samples_per_second": self.train_samples_per_second,
            "train_clock": self.clock,
            "ensemble": self.ensemble,
            "threads": self.threads,
            **({"precision_note": f"{self.config.precision} emulated: {emulated}"}
               if emulated else {}),
            **(self.measurements.summary() if self.measurements else {}),
            **(self.noise_scale.summary() if self.noise_scale else {}),
            **(self.time_to_target.summary() if self.time_to_target else {}),
            **(self.out_of_memory_summary() if self.out_of_memory else {}),
            **(self.max_batch.summary() if self.max_batch else {}),
            **(self.lr_choice.summary(self.config.lr) if self.lr_choice else {}),
            "history": [asdict(record) for record in self.history],
            "curve": [asdict(point) for point in self.curve],
        }
        return {key: None if isinstance(value, float) and math.isnan(value) else value
                for key, value in figures.items()}

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

        state = f", diverged: {self.diverged}" if self.diverged else ""
        if self.out_of_memory:
            state = f", {self.out_of_memory.describe()}"
        return (f"<Run {self.config.describe()}: test acc {percent(self.test_accuracy)}, "
                f"val acc {percent(self.val_accuracy)}, train acc {percent(self.train_accuracy)}"
                f", {self.train_seconds:.2f} s{state}>")


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
    instead of a dozen (the README's Training engine has the timings).
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


def warm_up(device: torch.device) -> None:
    """Pay torch's one-off costs before the first timed run.

    The first optimizer step in a process imports parts of torch (about 2 s
    for Adam on the CPU), and the first kernels on a device initialise it; a
    study's first run would otherwise look seconds slower than the rest.
    """
    with torch.random.fork_rng(devices=[]):
        model = build_mlp(4, (4,), 2).to(device)
    inputs = torch.zeros(2, 2, 2, device=device)
    labels = torch.zeros(2, dtype=torch.int64, device=device)
    for name in ("adam", "sgd"):
        optimizer = make_optimizer(name, model.parameters(), 1e-3)
        for _ in range(2):
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    evaluate(model, Split(inputs, labels))
    synchronize(device)


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int = EVAL_BATCH_SIZE,
             loss: LossFunction = F.cross_entropy,
             metric: Metric = correct_predictions,
             precision: str = "fp32") -> tuple[float, float]:
    """Mean loss per sample (nats for cross-entropy) and accuracy of ``model`` on ``split``,
    the forward pass in ``precision`` (the sums in fp32)."""
    batches = ((split.x[start:start + batch_size], split.y[start:start + batch_size])
               for start in range(0, len(split), batch_size))
    mean_loss, accuracy, _ = evaluate_batches(model, batches, split.x.device, loss, metric,
                                              precision)
    return mean_loss, accuracy


def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device, loss: LossFunction = F.cross_entropy,
                     metric: Metric = correct_predictions,
                     precision: str = "fp32") -> tuple[float, float, int]:
    """Mean loss per sample and accuracy of ``model`` on ``(x, y)`` batches on ``device``,
    and their samples: summed on the device, read once at the end."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    in_precision = autocast(precision, device)
    for x, labels in batches:
        with in_precision:
            logits = model(x)
        logits = logits.float()
        if loss is F.cross_entropy:
            total += F.cross_entropy(logits, labels, reduction="sum")
        else:  # a mean over the batch, weighted back to a sum
            total += loss(logits, labels).detach() * len(labels)
        correct += metric(logits, labels)
        count += len(labels)
    model.train(was_training)
    return total.item() / max(count, 1), correct.item() / max(count, 1), count


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

            self.forward = DistributedDataParallel(self.model)
            self.local_batch = config.batch_size // shard.world
        self.loss_fn, self.metric = recipe.loss, recipe.metric
        self.available = len(data.train)
        """The training samples each epoch's shuffled order is drawn from."""
        self.count = epoch_samples(config, self.available)
        """The samples an epoch trains on: all of them, or with ``drop_last`` those of its
        whole batches (what its steps count epochs and samples by)."""
        self.run_record = Run(config=config, model=self.model, optimizer=self.optimizer,
                              samples_per_epoch=self.count, test_images=data.test.x)
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

    # -- what steps read

    @property
    def run_seconds(self) -> float:
        """Wall time since the first step, measuring (curve points) excluded."""
        return time.perf_counter() - self.started - self.run_record.curve_seconds

    def evaluate(self, split: Split) -> tuple[float, float]:
        """Mean loss and accuracy of the model now on ``split`` (the run's loss, metric and
        precision); in a data-parallel run, each process evaluates its shard and the sums
        are all-reduced."""
        if self.shard is None:
            return evaluate(self.model, split, loss=self.loss_fn, metric=self.metric,
                            precision=self.config.precision)
        low, high = self.shard.bounds(len(split))
        local = Split(split.x[low:high], split.y[low:high])
        loss, accuracy = evaluate(self.model, local, loss=self.loss_fn, metric=self.metric,
                                  precision=self.config.precision)
        count = len(local)
        total_loss, correct, samples = self.shard.sum(
            *(torch.tensor(value, device=self.device)
              for value in (loss * count, accuracy * count, float(count))))
        return float(total_loss / samples), float(correct / samples)

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
            self.correct_total += self.metric(torch.cat(outputs), torch.cat(labels))
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
        # Outside the except block: the failed step's frames, and their tensors, are gone.
        self._release()
        return self.run_record

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
        shuffle = torch.Generator().manual_seed(config.seed)
        train_split = self.data.train
        batch_size, count = config.batch_size, self.count
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        forward, shard, local_batch = self.forward, self.shard, self.local_batch
        clear_grads = _grad_clearer(optimizer)
        in_precision = autocast(config.precision, device)  # nothing for fp32 and tf32
        scaler = grad_scaler(config.precision, device)  # fp16 only
        losses, outputs, labels_seen = self.pending
        sample_bytes = max(1, train_split.x[:1].nelement() * train_split.x.element_size())
        chunk = max(1, GATHER_CHUNK_BYTES // (sample_bytes * batch_size)) * batch_size
        # Every chunk is gathered into the same memory: a fresh chunk per gather can cost a
        # page fault per 4 KiB on the CPU, when the allocator has handed the last one back.
        gathered = train_split.x.new_empty((min(chunk, count), *train_split.x.shape[1:]))
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
            # the whole order is drawn, so that drop_last drops another tail every epoch
            order = torch.randperm(self.available, generator=shuffle)[:count].to(device)
            self.loss_total = torch.zeros((), device=device)
            self.correct_total = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for first in range(0, count, chunk):
                index = order[first:first + chunk]
                chunk_images = torch.index_select(train_split.x, 0, index,
                                                  out=gathered[:len(index)])
                chunk_labels = train_split.y[index]  # kept by the pending steps: not reused
                for start in range(0, len(index), batch_size):
                    labels = chunk_labels[start:start + batch_size]
                    size = len(labels)  # the global batch's
                    if shard is None:
                        with in_precision:
                            logits = forward(chunk_images[start:start + batch_size])
                            loss = objective = loss_fn(logits, labels)
                    else:  # this process's slice, its loss weighted to the global mean's
                        low, high = shard.bounds(size)
                        labels = labels[low:high]
                        with in_precision:
                            logits = forward(chunk_images[start + low:start + high])
                            loss = loss_fn(logits, labels) if high > low else logits.sum()
                        objective = loss * ((high - low) * shard.world / size)
                    clear_grads()
                    if scaler is None:
                        objective.backward()
                        optimizer.step()
                    else:
                        scaler.scale(objective).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    local = len(labels)
                    if local:
                        losses.append(loss.detach())
                        outputs.append(logits.detach())
                        labels_seen.append(labels)
                        if local != local_batch:
                            self.short_batch = local
                    seen += local
                    self.step += 1
                    self.steps_done += 1
                    self.samples_done += size
                    if self.steps_done >= next_due:
                        next_due = self._fire()
                        if self.stop_epoch:
                            break
                if self.stop_epoch:
                    break
            loss_total, correct_total = self.fold(), self.correct_total
            if shard is not None:  # the global figures: every process's sums
                loss_total, correct_total, seen = shard.sum(
                    loss_total, correct_total, torch.tensor(float(seen), device=device))
            train_loss = loss_total.item() / float(seen)
            train_accuracy = correct_total.item() / float(seen)
            train_seconds = stopwatch.stop() - (run.curve_seconds - measured_before)
            trained = time.perf_counter()
            run.train_seconds += train_seconds
            if not math.isfinite(train_loss):
                run.diverged = (f"training loss became {train_loss} in epoch {epoch} "
                                f"(lr={config.lr:g}, {config.optimizer})")
                break
            val_loss, val_accuracy = self.evaluate(self.data.val)
            eval_seconds = time.perf_counter() - trained
            run.train_seconds += eval_seconds
            record = EpochRecord(epoch, train_loss, train_accuracy, val_loss, val_accuracy,
                                 train_seconds, eval_seconds)
            run.history.append(record)
            for loop_step in self.steps:
                loop_step.epoch_end(record)
            if self.stop_run or self.stop_epoch:
                break
        if run.diverged is None:
            run.test_loss, run.test_accuracy = self.evaluate(self.data.test)
        model.eval()
        return run

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
    step a measurable share (the README's Training engine)."""
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        return lambda: optimizer.zero_grad(set_to_none=True)
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]

    def clear() -> None:
        for parameter in parameters:
            parameter.grad = None

    return clear
