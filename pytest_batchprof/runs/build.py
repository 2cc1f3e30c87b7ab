"""From a fixture's arguments to what the engine trains: a :class:`RunConfig` and its
:class:`Recipe`, checked before any timed work.

The fixture's arguments fill in from the session's settings (batch size,
epochs, learning rate and its scaling rule, optimizer, seed), the model factory
is built once for the data (:func:`prepare_model`), and the model, its
loss and its optimizer are tried on two training samples: a model that fails to
build, returns outputs of the wrong shape, or a loss that is not a finite
scalar, or a ``scheduler=`` that makes no ``LRScheduler``, ends here with one line naming
the model (:class:`ModelError`), before the run's clock starts; so does a model that
cannot train on a batch of one sample (BatchNorm) in a run that would hand it one. A
model that cannot take the data's samples at all (:class:`ShapeMismatch`: a shipped CNN
whose convolutions shrink the images to nothing, or a user's model that says so) is told
apart, for the fixtures to skip its test rather than fail it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pytest_batchprof.data.batches import (
    BatchError,
    Forward,
    describe_inputs,
    split_batch,
)
from pytest_batchprof.data.datasets import Dataset, crop_shape
from pytest_batchprof.engine.parallel import Shard
from pytest_batchprof.engine.training import (
    LossFunction,
    OptimizerFactory,
    Recipe,
    RunConfig,
    SchedulerFactory,
    epoch_samples,
    initial_model,
    last_batch,
    scaled_lr,
)
from pytest_batchprof.errors import one_line
from pytest_batchprof.experiment.code import Code, code_of
from pytest_batchprof.experiment.models import (
    ModelError,
    PreparedModel,
    ShapeMismatch,
    factory_identity,
    local_identity,
    model_label,
    prepare_model,
)
from pytest_batchprof.experiment.tasks import TASK_BY_NAME, MetricSpec, Task, metric_identity
from pytest_batchprof.hardware.precision import unsupported
from pytest_batchprof.settings import OPTIMIZERS, Settings, flag_of

CHECK_SAMPLES = 2
"""Training samples the model, loss and optimizer are tried on before a run."""


@dataclass(frozen=True)
class Experiment:
    """One run to train: its configuration, its callables, and the data it trains on."""

    config: RunConfig
    recipe: Recipe
    data: Dataset
    """The data set cut to the run's training subset and input crop."""
    cache_note: str | None = None
    """Why this run is not cached (a factory, loss or optimizer with no stable name)."""


def loss_identity(loss: object) -> tuple[str | None, str | None]:
    """``cross_entropy``, or a stable name for the user's loss; ``None`` and why not."""
    if loss is None or loss is F.cross_entropy:
        return "cross_entropy", None
    if isinstance(loss, nn.Module):  # e.g. nn.CrossEntropyLoss(label_smoothing=0.1)
        cls = type(loss)
        settings = _module_settings(loss)
        plain = all(value is None or isinstance(value, str | int | float | bool)
                    for value in settings.values())
        if not plain or "<locals>" in cls.__qualname__:
            return None, f"holds values without a stable name ({cls.__qualname__})"
        return f"{cls.__module__}.{cls.__qualname__}({sorted(settings.items())})", None
    return factory_identity(loss)


def _module_settings(module: nn.Module) -> dict[str, object]:
    """A loss module's public attributes (``reduction``, ``label_smoothing``, ...)."""
    return {key: value for key, value in vars(module).items()
            if not key.startswith("_") and key != "training"}


def callable_label(value: object) -> str:
    """How a table names a loss or optimizer callable: ``SGD(momentum=0.9)``, ``my_loss``."""
    if isinstance(value, functools.partial):
        arguments = [repr(item) for item in value.args]
        arguments += [f"{key}={item!r}" for key, item in sorted(value.keywords.items())]
        return f"{callable_label(value.func)}({', '.join(arguments)})"
    if isinstance(value, nn.Module):  # its settings that differ from a default instance
        settings = _module_settings(value)
        try:
            defaults = _module_settings(type(value)())
        except Exception:  # a loss that needs arguments: show them all
            defaults = {}
        shown = [f"{key}={item!r}" for key, item in sorted(settings.items())
                 if defaults.get(key, object()) != item]
        return f"{type(value).__name__}({', '.join(shown)})"
    return getattr(value, "__qualname__", None) or type(value).__qualname__


def callables_code(loss: object, optimizer: object, **others: object) -> Code:
    """The code of the user's callables (loss, optimizer, and ``others``: the forward,
    the scheduler, the metric): their identities (qualified names, settings, a partial's
    arguments) and the source files that define them; empty when all are built in. Its
    reason says why they cannot be cached, if they cannot (a lambda, a function defined
    inside another)."""
    code = Code()
    roles = [("loss", loss, loss_identity), ("optimizer", optimizer, factory_identity)]
    roles += [(role, value, factory_identity) for role, value in others.items()]
    for role, value, identify in roles:
        if value is None or value is F.cross_entropy or isinstance(value, str):
            continue
        if isinstance(value, MetricSpec):  # its name and direction, and its function's code
            code |= Code(frozenset({f"metric={value.name}:{value.higher_is_better}"}))
            value = value.fn
        identity, reason = identify(value)
        code |= Code(frozenset({f"{role}={identity or local_identity(value)}"}),
                     None if identity is not None else f"its {role} {reason}")
        code |= code_of(value, f"its {role}")
    return code


def build_experiment(
    settings: Settings,
    dataset: Dataset,
    model: object,
    batch_size: int,
    device: torch.device,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    optimizer: str | OptimizerFactory | None = None,
    seed: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    loss: LossFunction | None = None,
    name: str | None = None,
    precision: str | None = None,
    data_parallel: int | None = None,
    drop_last: bool | None = None,
    metric: object = None,
    forward: Forward | None = None,
    scheduler: SchedulerFactory | None = None,
    sync_batchnorm: bool = False,
) -> Experiment:
    """The run of ``model`` on ``dataset`` with these arguments, the session's settings
    filling in what they leave out; raise ``ValueError`` (``ModelError`` for the
    model, loss or optimizer) with one line on bad input."""
    task = TASK_BY_NAME[dataset.task]
    metric_name, higher_is_better = metric_identity(metric, task)
    for argument, value in (("forward", forward), ("scheduler", scheduler)):
        if value is not None and not callable(value):
            raise ValueError(f"{argument}={value!r} is not a callable; see trained_model's "
                             f"{argument}= in the manual's 'Your own model and data'")
    if not isinstance(sync_batchnorm, bool):
        raise ValueError(f"sync_batchnorm={sync_batchnorm!r} must be True or False")
    base_lr = settings.lr if lr is None else float(lr)  # an explicit lr is used unscaled
    data = _cropped(dataset, input_size)
    optimizer = settings.optimizer if optimizer is None else optimizer
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not one of {', '.join(OPTIMIZERS)}, "
                         f"or a callable taking the parameters and returning an optimizer")
    if not isinstance(optimizer, str) and not callable(optimizer):
        raise ValueError(f"optimizer={optimizer!r} is neither a name ({', '.join(OPTIMIZERS)}) "
                         f"nor a callable taking the parameters and returning an optimizer")
    if loss is not None and not callable(loss):
        raise ValueError(f"loss={loss!r} is not a callable loss(outputs, targets)")
    precision = settings.precision if precision is None else precision
    reason = unsupported(precision, device)
    if reason is not None:
        raise ValueError(f"precision={precision!r}: {reason}")
    processes = settings.data_parallel if data_parallel is None else data_parallel
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"data_parallel={processes!r} must be a whole number >= 1")
    if batch_size % processes:
        raise ValueError(f"batch size {batch_size} does not divide by {processes} processes: "
                         f"the batch size is the global batch; use a multiple of {processes}")
    seed = settings.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a whole number >= 0")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prepared = _prepared(model, data, name)
    callables = callables_code(loss, optimizer, forward=forward, scheduler=scheduler,
                               metric=metric)
    target_metric = settings.target_metric
    if target_metric is not None and metric_name == "accuracy":  # the same target, said twice
        target_metric = None
    config = RunConfig(
        dataset=dataset.name,
        input_shape=data.sample_shape,
        hidden=prepared.hidden,
        num_classes=dataset.num_classes,
        activation=prepared.activation,
        batch_size=batch_size,
        epochs=settings.epochs if epochs is None else epochs,
        lr=(scaled_lr(base_lr, batch_size, settings.lr_base_batch, settings.lr_scaling)
            if lr is None else base_lr),
        optimizer=optimizer if isinstance(optimizer, str) else callable_label(optimizer),
        seed=seed,
        device=str(device),
        train_subset=settings.train_subset,
        val_fraction=settings.val_fraction,
        flush_denormals=not settings.keep_denormals,
        drop_last=settings.drop_last if drop_last is None else drop_last,
        lr_warmup_epochs=settings.lr_warmup_epochs,
        lr_warmup_start=base_lr if settings.lr_warmup_epochs else None,
        target_accuracy=settings.target_accuracy,
        model=prepared.name,
        model_id=prepared.model_id,
        architecture=prepared.architecture,
        loss=(task.loss_name if loss is None else "cross_entropy" if loss is F.cross_entropy
              else callable_label(loss)),
        code=(prepared.code | callables).fingerprint(),
        precision=precision,
        processes=processes,
        task=task.name,
        metric=metric_name,
        higher_is_better=higher_is_better,
        target_metric=target_metric,
        data_feed=_feed_words(data),
        forward=None if forward is None else callable_label(forward),
        scheduler=None if scheduler is None else callable_label(scheduler),
        sync_batchnorm=sync_batchnorm,
    )
    data = data.with_train_subset(config.train_subset)
    _check_config(config, len(data.train))
    if settings.noise_scale and not data.train.in_memory:
        raise ValueError(f"{flag_of('noise_scale')} estimates from tensors in memory, and a "
                         f"DataLoader reads {dataset.name}; register it with in_memory=True, "
                         f"or leave the option out")
    if sync_batchnorm and processes == 1:
        raise ValueError("sync_batchnorm=True synchronises BatchNorm across the processes of "
                         "a data-parallel run; pass data_parallel=2 or more (or "
                         f"{flag_of('data_parallel')}), or leave it out")
    recipe = Recipe(prepared.build, loss if loss is not None else task.loss,
                    None if isinstance(optimizer, str) else optimizer, task=task,
                    scores=metric, forward=forward, scheduler=scheduler)
    reasons = [reason for reason in (prepared.uncached_reason, callables.reason) if reason]
    note = f"{prepared.name} is not cached: {reasons[0]}" if reasons else None
    check_recipe(config, recipe, prepared, data, device)
    return Experiment(config, recipe, data, note)


def _feed_words(data: Dataset) -> str:
    """How a row names the way the training split is read (``RunConfig.data_feed``)."""
    if data.train.in_memory:
        return "in memory"
    workers = data.train.workers
    return f"DataLoader, {workers} worker{'s' if workers != 1 else ''}" if workers else (
        "DataLoader")


def _cropped(dataset: Dataset, input_size: int | tuple[int, int] | None) -> Dataset:
    if input_size is None:
        return dataset
    if dataset.image_shape is None:
        raise ValueError(f"input_size={input_size!r} crops images, and {dataset.name} holds "
                         f"flat features of shape {dataset.sample_shape}; leave input_size out")
    return dataset.cropped(crop_shape(input_size, dataset.image_shape))


def shape_words(data: Dataset) -> str:
    """How a skip reason names the data's samples: ``digits' 8x8 images``, ``cifar10's
    3-channel 32x32 images``, ``iris's samples of shape (4,)``."""
    shape = data.sample_shape
    owner = f"{data.name}'" if data.name.endswith("s") else f"{data.name}'s"
    if len(shape) == 2:
        return f"{owner} {shape[0]}x{shape[1]} images"
    if len(shape) == 3:
        return f"{owner} {shape[0]}-channel {shape[1]}x{shape[2]} images"
    return f"{owner} samples of shape {shape}"


def _prepared(model: object, data: Dataset, name: str | None) -> PreparedModel:
    """:func:`prepare_model` for ``data``; a model that cannot take its samples
    (:class:`ShapeMismatch`, raised by the shipped
    :func:`~pytest_batchprof.experiment.models.cnn` or by the user's factory) is said so,
    naming the model and the shape."""
    description = data.description()
    try:
        return prepare_model(model, description, name)
    except ShapeMismatch as error:
        raise ShapeMismatch(f"{model_label(model, description, name)} cannot take "
                            f"{shape_words(data)}: {error}") from None


def check_recipe(config: RunConfig, recipe: Recipe, prepared: PreparedModel, data: Dataset,
                 device: torch.device) -> None:
    """Try the model, loss and optimizer on :data:`CHECK_SAMPLES` training samples (one
    step, on a throw-away copy), the ``scheduler=`` factory on that optimizer, and the model
    on a batch of one sample when the run will meet one (:func:`_one_sample_batch`); raise
    ``ModelError`` naming the model and the fault, :class:`ShapeMismatch` when the model
    itself says it cannot take the data's samples."""
    name = prepared.name
    batch = data.train.first(CHECK_SAMPLES)
    with torch.random.fork_rng(devices=[]):  # the run's own seeded RNG stays untouched
        try:
            model, optimizer = initial_model(config, device, recipe)
        except Exception as error:
            raise ModelError(f"model {name}: its optimizer could not be made: "
                             f"{one_line(error)}") from error
        outputs, y, described = _forward_checked(recipe, model, batch, name, data)
        task = recipe.task
        if not isinstance(outputs, torch.Tensor) or not task.outputs_fit(
                outputs, y, config.num_classes):
            got = (f"shape {tuple(outputs.shape)}" if isinstance(outputs, torch.Tensor)
                   else f"a {type(outputs).__name__}")
            raise ModelError(f"model {name} returned {got} for a batch of {described}; "
                             f"expected {_expected_words(task, y, config.num_classes, data)}")
        try:
            value = recipe.loss(outputs, y)
        except Exception as error:
            raise ModelError(f"model {name}: the loss failed: {one_line(error)}") from error
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            got = (f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                   else f"a {type(value).__name__}")
            raise ModelError(f"model {name}: the loss returned {got}; it must return a scalar "
                             f"tensor (the batch's mean)")
        if not torch.isfinite(value):
            raise ModelError(f"model {name}: the loss is {value.item()} on the first samples; it "
                             f"must be finite")
        if not value.requires_grad:
            raise ModelError(f"model {name}: the loss does not depend on the model's "
                             f"parameters (no gradient flows back)")
        try:
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        except Exception as error:
            raise ModelError(f"model {name}: a training step failed: {one_line(error)}") from (
                error)
        _check_scheduler(config, recipe, optimizer, name, len(data.train))
        _check_one_sample_batch(config, recipe, model, name, data)


def _check_scheduler(config: RunConfig, recipe: Recipe, optimizer: torch.optim.Optimizer,
                     name: str, train_count: int) -> None:
    """Make the run's ``scheduler=`` schedule on the throw-away ``optimizer``, as the run
    will on its own (with its steps per epoch and epochs): a factory that fails, or returns
    anything but an ``LRScheduler``, is one line naming the model, before the clock starts."""
    if recipe.scheduler is None:
        return
    steps_per_epoch = math.ceil(epoch_samples(config, train_count) / config.batch_size)
    try:
        schedule = recipe.scheduler(optimizer, steps_per_epoch, config.epochs)
    except Exception as error:
        raise ModelError(f"model {name}: scheduler={callable_label(recipe.scheduler)} failed "
                         f"on (optimizer, {steps_per_epoch}, {config.epochs}): "
                         f"{one_line(error)}") from error
    if not isinstance(schedule, torch.optim.lr_scheduler.LRScheduler):
        raise ModelError(f"model {name}: scheduler={callable_label(recipe.scheduler)} returned "
                         f"a {type(schedule).__name__}; it must return a torch.optim."
                         f"lr_scheduler.LRScheduler of the optimizer it is given")


def _forward_checked(recipe: Recipe, model: nn.Module, batch: object, name: str,
                     data: Dataset) -> tuple[object, torch.Tensor, str]:
    """The model's outputs and the targets of ``batch`` (the run's ``forward``, or the
    conventions of :mod:`~pytest_batchprof.data.batches`), and the batch in words; a
    failure is one line naming the model (a :class:`ShapeMismatch` the model
    raises is kept for a skip)."""
    described = "of its first samples"
    try:
        if recipe.forward is None:
            described = describe_inputs(split_batch(batch)[0])
        outputs, targets = recipe.outputs_and_targets(model, batch)
    except ShapeMismatch as error:
        raise ShapeMismatch(f"{name} cannot take {shape_words(data)}: {error}") from None
    except BatchError as error:
        raise ModelError(f"model {name}: {error}") from None
    except Exception as error:
        raise ModelError(f"model {name} failed on a batch of {described}: "
                         f"{one_line(error)}") from error
    if not isinstance(targets, torch.Tensor):
        raise ModelError(f"model {name}: the batch's targets are a {type(targets).__name__}; "
                         f"give tensors")
    return outputs, targets, described


def _expected_words(task: Task, targets: torch.Tensor, num_classes: int, data: Dataset) -> str:
    """What a model's outputs must be for ``task``, in words."""
    if task.name == "regression":
        return (f"{targets.numel()} values, one per target of shape "
                f"{tuple(targets.shape)}")
    shape = task.expected_outputs(targets, num_classes)
    if task.name == "tokens":
        return f"{shape}, one score per token and class of {data.name}'s {num_classes}"
    if task.name == "multilabel":
        return f"{shape}, one score per label of {data.name}"
    return f"{shape}, one score per class of {data.name}"


def _one_sample_batch(config: RunConfig, train_count: int) -> tuple[str, str] | None:
    """Where a run on ``train_count`` samples hands a process a batch of one sample, and
    what avoids it (two clauses); ``None`` when it never does."""
    processes = config.processes
    over = f" over {processes} processes" if processes > 1 else ""
    if config.per_process_batch == 1:
        return (f"every batch holds 1 sample{' per process' if over else ''} (batch "
                f"{config.batch_size}{over})",
                f"use a batch size of {2 * processes} or more")
    last = last_batch(config, train_count)
    slices = [Shard(rank, processes).bounds(last) for rank in range(processes)]
    if last and any(high - low == 1 for low, high in slices):
        holds = "holds 1 sample" if processes == 1 else "gives a process 1 sample"
        return (f"the last batch of an epoch {holds} ({train_count} training samples, batch "
                f"{config.batch_size}{over})",
                f"pass drop_last=True or {flag_of('drop_last')}, or another batch size")
    return None


def _check_one_sample_batch(config: RunConfig, recipe: Recipe, model: nn.Module, name: str,
                            data: Dataset) -> None:
    """Try a training step's forward pass on one sample when the run will meet a batch of
    one (:func:`_one_sample_batch`): BatchNorm, for one, cannot train on it (torch raises
    for a single value per channel), and the run would die in its last step of the first
    epoch, with no row."""
    where = _one_sample_batch(config, len(data.train))
    if where is None:
        return
    batch, fix = where
    model.train()
    try:
        recipe.loss(*recipe.outputs_and_targets(model, data.train.first(1)))
    except Exception as error:
        if any(isinstance(module, nn.modules.batchnorm._BatchNorm)
               for module in model.modules()):
            raise ModelError(f"model {name} has BatchNorm layers, and {batch}: BatchNorm "
                             f"cannot train on one sample; {fix}") from error
        raise ModelError(f"model {name} failed on a batch of one sample, and {batch}: "
                         f"{one_line(error)}; {fix}") from error


def _check_config(config: RunConfig, train_count: int) -> None:
    """Reject arguments that would fail deep inside torch."""
    if (isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int)
            or not 1 <= config.batch_size <= train_count):
        raise ValueError(
            f"batch_size={config.batch_size!r} must be a whole number from 1 to the "
            f"{train_count} training samples"
        )
    if isinstance(config.epochs, bool) or not isinstance(config.epochs, int) or config.epochs < 1:
        raise ValueError(f"epochs={config.epochs!r} must be a whole number >= 1")
    if not config.lr > 0:
        raise ValueError(f"lr={config.lr!r} must be above 0")
    if not isinstance(config.drop_last, bool):
        raise ValueError(f"drop_last={config.drop_last!r} must be True or False")
