"""What hangs on the training loop besides optimisation: each a small :class:`LoopStep`.

A step says at which optimizer step it is next due (:attr:`LoopStep.due`); the
loop calls :meth:`LoopStep.fire` only then, so a step that waits costs the hot
loop one integer comparison. Every step also hears of each finished epoch, and
of the run's end (:meth:`LoopStep.finish`), once its clock and the session's
meters have stopped.

* :class:`WarmUp`: the learning rate's linear ramp (``--lr-warmup-epochs``),
  by ``torch.optim.lr_scheduler.LinearLR``;
* :class:`Schedule`: the user's learning-rate schedule (``scheduler=``), stepped per
  step, the warm-up's ramp composed with it;
* :class:`DivergenceCheck`: stop the epoch when the loss became NaN or inf;
* :class:`CurvePoints`: the learning curve between epochs, kept out of the
  training time;
* :class:`TargetCheck`: time to ``--target-accuracy`` on the validation split;
* :class:`ProgressReport`: tell the observer where the run stands, about every
  :data:`~.training.PROGRESS_POLL_SECONDS`, and of every epoch;
* :class:`MemoryCheck`: with a memory limit, end the run as out of memory when
  its peak passes it, checked after steps 1, 2, 4, ... 64 and after every epoch;
* :class:`NoiseScaleEstimate` (asked for, with ``--noise-scale``): the gradient
  noise scale of the trained weights, when the run has ended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from pytest_batchprof.engine import training
from pytest_batchprof.engine.memory import MemoryBudgetExceeded
from pytest_batchprof.engine.status import TrainingStatus
from pytest_batchprof.hardware.devices import synchronize
from pytest_batchprof.measuring import noise_scale

if TYPE_CHECKING:
    from pytest_batchprof.engine.training import EpochRecord, TrainingLoop

NEVER = math.inf


class LoopStep:
    """A piece of a run that is not optimisation; override what it needs."""

    due: float = NEVER
    """The loop's optimizer-step count (``steps_done``) at which :meth:`fire` is next due."""

    def __init__(self, loop: TrainingLoop) -> None:
        self.loop = loop

    def start(self) -> None:
        """Before the first step (the run's clock has not started)."""

    def fire(self) -> None:
        """The step is due; set :attr:`due` to the next time."""

    def epoch_end(self, record: EpochRecord) -> None:
        """An epoch has ended and been validated."""

    def finish(self) -> None:
        """The run has ended and been tested; its training time, memory and CO2eq are
        measured, so what a step does here counts in none of them."""


class WarmUp(LoopStep):
    """A linear ramp of the learning rate from ``lr_warmup_start`` at the first step to
    the run's ``lr`` at step ``warmup_steps + 1`` (Goyal et al., 2017), by LinearLR.

    The optimizer was made at the run's lr, LinearLR's base. The last step writes
    that lr exactly, without the scheduler's rounding. A ramp down (a start above
    the lr, when ``--lr-scaling`` lowers the rate of a small batch) is LambdaLR's
    same linear formula: LinearLR only ramps up.
    """

    def __init__(self, loop: TrainingLoop) -> None:
        super().__init__(loop)
        config = loop.config
        self.total = math.ceil(config.lr_warmup_epochs * loop.steps_per_epoch)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def start(self) -> None:
        config, optimizer = self.loop.config, self.loop.optimizer
        if not self.total or self.loop.recipe.scheduler is not None:  # Schedule ramps it
            return
        start = config.lr if config.lr_warmup_start is None else config.lr_warmup_start
        factor = start / config.lr
        if factor <= 1:
            self.scheduler = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=factor, end_factor=1.0, total_iters=self.total)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: factor + (1 - factor) * min(step, self.total) / self.total)
        self.due = 1

    def fire(self) -> None:
        assert self.scheduler is not None
        self.scheduler.step()
        if self.scheduler.last_epoch >= self.total:
            for group in self.loop.optimizer.param_groups:
                group["lr"] = self.loop.config.lr
            self.due = NEVER
        else:
            self.due = self.loop.steps_done + 1


class Schedule(LoopStep):
    """The user's learning-rate schedule (``scheduler=``), made from the optimizer, the
    steps per epoch and the epochs, and stepped after every optimizer step; a warm-up
    composes with it by scaling the schedule's rate, step by step, by the warm-up's linear
    factor (from ``lr_warmup_start / lr`` at the first step to 1 after the warm-up).

    The schedule always steps from its own last rate (the factor is taken off before it
    steps), so a chainable schedule (StepLR, CosineAnnealingLR) and one that writes
    absolute rates (OneCycleLR, LambdaLR) compose alike.
    """

    def __init__(self, loop: TrainingLoop) -> None:
        super().__init__(loop)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        config = loop.config
        self.warmup = math.ceil(config.lr_warmup_epochs * loop.steps_per_epoch)
        start = config.lr if config.lr_warmup_start is None else config.lr_warmup_start
        self.start_factor = start / config.lr
        self.scheduled: list[float] = []
        """Each parameter group's rate as the schedule set it, before the warm-up's factor."""

    def factor(self, step: int) -> float:
        """The warm-up's factor at optimizer step ``step`` (1-based); 1 after it."""
        if step > self.warmup:
            return 1.0
        return self.start_factor + (1 - self.start_factor) * (step - 1) / self.warmup

    def start(self) -> None:
        loop = self.loop
        make = loop.recipe.scheduler
        if make is None:
            return
        self.scheduler = make(loop.optimizer, loop.steps_per_epoch, loop.config.epochs)
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise TypeError(f"scheduler= returned a {type(self.scheduler).__name__}; it must "
                            f"return a torch.optim.lr_scheduler.LRScheduler of the optimizer")
        self._scale(1)
        self.due = 1

    def _scale(self, step: int) -> None:
        groups = self.loop.optimizer.param_groups
        self.scheduled = [group["lr"] for group in groups]
        factor = self.factor(step)
        if factor != 1.0:
            for group, rate in zip(groups, self.scheduled, strict=True):
                group["lr"] = rate * factor

    def fire(self) -> None:
        assert self.scheduler is not None
        for group, rate in zip(self.loop.optimizer.param_groups, self.scheduled, strict=True):
            group["lr"] = rate
        self.scheduler.step()
        self._scale(self.loop.steps_done + 1)
        self.due = self.loop.steps_done + 1


PENDING_OUTPUT_BYTES = 64 << 20
"""The most memory the outputs kept between two folds of the running figures may take."""


class DivergenceCheck(LoopStep):
    """Every :data:`~.training.DIVERGENCE_CHECK_STEPS` steps (fewer when the outputs kept
    meanwhile would pass :data:`PENDING_OUTPUT_BYTES`), fold the pending steps into the
    running figures and end the epoch when the loss is NaN or inf (one device sync); the
    loop then records the divergence."""

    def __init__(self, loop: TrainingLoop) -> None:
        super().__init__(loop)
        output_bytes = 4 * loop.config.batch_size * loop.config.num_classes
        if loop.recipe.task.name == "tokens":  # one row of scores per token
            output_bytes *= max(1, math.prod(loop.config.input_shape))
        self.every = max(1, min(training.DIVERGENCE_CHECK_STEPS,
                                PENDING_OUTPUT_BYTES // output_bytes))

    def start(self) -> None:
        self.due = self.every

    def fire(self) -> None:
        if not self.loop.finite(self.loop.fold()):
            self.loop.stop_epoch = True
        self.due = self.loop.steps_done + self.every


class CurvePoints(LoopStep):
    """A learning-curve point (:class:`~.training.CurvePoint`) every
    :data:`~.training.CURVE_EVERY_SAMPLES` training samples, on the first
    :data:`~.training.CURVE_PROBE_SAMPLES` validation samples; its seconds are
    added to ``run.curve_seconds`` and left out of every training time."""

    def __init__(self, loop: TrainingLoop) -> None:
        super().__init__(loop)
        self.probe = loop.data.val.take(training.CURVE_PROBE_SAMPLES)
        self.next_point = (training.CURVE_EVERY_SAMPLES
                           if loop.count > training.CURVE_EVERY_SAMPLES else NEVER)

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        loop = self.loop
        if self.next_point is NEVER:
            self.due = NEVER
            return
        wanted = self.next_point - loop.samples_done
        self.due = loop.steps_done + max(1, math.ceil(wanted / loop.config.batch_size))

    def fire(self) -> None:
        loop = self.loop
        if loop.samples_done >= self.next_point:
            run = loop.run_record
            synchronize(loop.device)  # the steps queued so far are training time
            started = time.perf_counter()
            scores = loop.score(self.probe)
            run.curve.append(training.CurvePoint(loop.samples_done,
                                                 loop.samples_done / loop.count, scores.loss,
                                                 scores.accuracy, scores.metric))
            run.curve_seconds += time.perf_counter() - started
            every = training.CURVE_EVERY_SAMPLES
            self.next_point = (loop.samples_done // every + 1) * every
        self._schedule()


class TargetCheck(LoopStep):
    """With a target accuracy (or a target of the run's metric, in its direction), measure
    it on the validation split every :data:`~.training.TARGET_CHECK_SAMPLES` training
    samples (in whole steps) and after every epoch; the first time it reaches the target,
    record the steps, samples, epochs and seconds it took (MLPerf's time to train) and end
    the run."""

    def __init__(self, loop: TrainingLoop) -> None:
        super().__init__(loop)
        config = loop.config
        self.on_metric = config.target_metric is not None
        self.target = config.target_metric if self.on_metric else config.target_accuracy
        self.lower_is_better = self.on_metric and not config.higher_is_better
        self.every = max(1, round(training.TARGET_CHECK_SAMPLES / config.batch_size))

    def start(self) -> None:
        if self.target is None:
            return
        self.loop.run_record.time_to_target = training.TimeToTarget(
            self.target, metric=self.loop.config.metric if self.on_metric else "accuracy")
        self.due = self.every

    def fire(self) -> None:
        loop = self.loop
        if self._reached(loop.target_score(loop.data.val)):
            loop.stop_epoch = True  # the epoch ends here; its record covers the samples seen
        self.due = loop.steps_done + self.every

    def epoch_end(self, record: EpochRecord) -> None:
        if self.target is not None:
            self._reached(record.val_metric if self.on_metric and record.val_metric is not None
                          else record.val_accuracy)
            if self.loop.run_record.time_to_target.reached:
                self.loop.stop_run = True

    def _reached(self, value: float) -> bool:
        """Record the target as reached now, if ``value`` (the validation figure) reaches
        it (and did not before)."""
        loop, run = self.loop, self.loop.run_record
        short = value > self.target if self.lower_is_better else value < self.target
        if run.time_to_target.reached or short or math.isnan(value):
            return False
        run.time_to_target = replace(
            run.time_to_target, steps=loop.steps_done, samples=loop.samples_done,
            epochs=loop.samples_done / loop.count, seconds=loop.run_seconds)
        self.due = NEVER
        return True


class ProgressReport(LoopStep):
    """Tell the observer where the run stands about every
    :data:`~.training.PROGRESS_POLL_SECONDS` (from host-side counters: no device sync),
    and of every epoch. The steps between two reports are estimated from the rate so
    far, so the hot loop reads no clock."""

    def start(self) -> None:
        if self.loop.observer is not None:
            self.due = 1
            self.next_report = 0.0

    def fire(self) -> None:
        loop = self.loop
        now = time.perf_counter()
        config = loop.config
        if now >= self.next_report:
            self.next_report = now + training.PROGRESS_POLL_SECONDS
            loop.observer.on_progress(TrainingStatus(
                epoch=loop.epoch, epochs=config.epochs, step=loop.step,
                steps_per_epoch=loop.steps_per_epoch, samples_done=loop.samples_done,
                total_samples=loop.count * config.epochs, run_seconds=loop.run_seconds,
                stops_early=(config.target_accuracy is not None
                             or config.target_metric is not None)))
        elapsed = now - loop.started
        rate = loop.steps_done / elapsed if elapsed > 0 else 0.0
        self.due = loop.steps_done + max(1, int(rate * training.PROGRESS_POLL_SECONDS))

    def epoch_end(self, record: EpochRecord) -> None:
        if self.loop.observer is not None:
            self.loop.observer.on_epoch(self.loop.config, record)


MEMORY_CHECK_LAST_EARLY_STEP = 64
"""The memory limit is checked after steps 1, 2, 4, ... up to this one, then after every
epoch: a step's memory is known after its first few, and a check reads a counter (the
kernel's peak RSS, or the CUDA allocator's), with no device sync."""


class MemoryCheck(LoopStep):
    """With a memory limit (``--batchprof-memory-budget``, or a CUDA device's memory) and
    a meter, raise :class:`~.memory.MemoryBudgetExceeded` when the run's peak has passed
    the limit; the loop turns it into the run's ``out_of_memory`` record."""

    def start(self) -> None:
        if self.loop.memory_limit is not None and self.loop.memory is not None:
            self.due = 1

    def fire(self) -> None:
        self._check()
        done = self.loop.steps_done
        self.due = done * 2 if done * 2 <= MEMORY_CHECK_LAST_EARLY_STEP else NEVER

    def epoch_end(self, record: EpochRecord) -> None:
        if self.loop.memory_limit is not None and self.loop.memory is not None:
            self._check()

    def _check(self) -> None:
        reached = self.loop.memory.reached()
        if reached > self.loop.memory_limit.bytes:
            raise MemoryBudgetExceeded(reached, self.loop.memory_limit)


class NoiseScaleEstimate(LoopStep):
    """The gradient noise scale ``B_simple`` of the trained weights on the training split,
    with the run's loss and seed (:func:`~pytest_batchprof.measuring.noise_scale.estimate`),
    into ``run.noise_scale``; nothing for a run that diverged. Asked for by
    ``--noise-scale``: it costs about as many gradients as an MNIST epoch."""

    def finish(self) -> None:
        loop, run = self.loop, self.loop.run_record
        if run.diverged is None and run.out_of_memory is None:
            run.noise_scale = noise_scale.estimate(
                loop.model, loop.loss_fn, loop.data.train.x, loop.data.train.y,
                seed=loop.config.seed)


STEPS: tuple[type[LoopStep], ...] = (WarmUp, Schedule, DivergenceCheck, CurvePoints, TargetCheck,
                                     ProgressReport, MemoryCheck)
"""The steps of every run, in the order they fire when due at once."""

OPTIONAL_STEPS: tuple[type[LoopStep], ...] = (NoiseScaleEstimate,)
"""The steps a run has only when asked (``train(..., extra_steps=...)``)."""


def loop_steps(loop: TrainingLoop, extra: Iterable[type[LoopStep]] = ()) -> list[LoopStep]:
    """A fresh set of :data:`STEPS` for ``loop``, then the ``extra`` ones asked for."""
    return [step(loop) for step in (*STEPS, *extra)]
