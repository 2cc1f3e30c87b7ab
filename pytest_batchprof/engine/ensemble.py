"""Ensembles: runs that differ only in seed and learning rate, trained as one stacked model.

A study that repeats seeds and tunes the learning rate trains many copies of
one architecture at one batch size. Small models at small batches are bound by
the per-step overhead of the framework, not by arithmetic, so training the
copies as one model with stacked weights amortises that overhead: one batched
forward and backward pass (``torch.func.functional_call`` under ``torch.vmap``
over the stacked parameters of ``torch.func.stack_module_state``) and one
optimizer step per learning rate.

Each member stays the run it would be alone:

* its own initial weights (its model is built under its seed, as
  :func:`~.training.initial_model` builds it) and its own shuffled order (a
  generator seeded by its seed), so it sees the same batches as alone;
* its own learning rate: members are ordered by rate, and each rate's members
  are one contiguous slice of every stacked tensor, stepped by an optimizer of
  its own (so only optimizers that update each weight on its own, elementwise,
  are allowed: :data:`ELEMENTWISE_OPTIMIZERS`);
* its own loop steps (warm-up, divergence and target checks, learning-curve
  points, progress): every member is a :class:`MemberLoop`, a
  :class:`~.training.TrainingLoop` whose parameters are views into the stacked
  tensors, so its steps evaluate it as they evaluate a run alone.

A member that reaches its target or diverges stops: its weights and optimizer
state are copied out of the stack and the others are stacked again without it.
Its figures equal those of the run trained alone up to float rounding (the
batched kernels add in another order): ``tests/test_ensemble.py`` holds them
to 0.1 percentage points of test accuracy and 1e-4 relative loss after an epoch.

Time is divided fairly: the time of each stretch of shared steps is split
equally among the members training in it, and each member's own evaluations
(validation passes, target checks) are its own; learning-curve points are left
out, as for a run alone.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from pytest_batchprof.data.datasets import Dataset, Split
from pytest_batchprof.engine.memory import is_out_of_memory, release_device_memory
from pytest_batchprof.engine.training import (
    GATHER_CHUNK_BYTES,
    EpochRecord,
    LossFunction,
    Recipe,
    Run,
    RunConfig,
    TrainingLoop,
)
from pytest_batchprof.errors import one_line
from pytest_batchprof.experiment.libraries import is_keras_model
from pytest_batchprof.hardware.denormals import denormals_flushed
from pytest_batchprof.hardware.devices import synchronize
from pytest_batchprof.hardware.precision import autocast, matmul_precision

ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop,
    torch.optim.Adagrad, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam)
"""Optimizers whose update of a weight reads only that weight's gradient and state, so
that one of them stepping a slice of stacked members steps each member as alone."""

ENSEMBLE_SETTINGS_FREE = ("seed", "lr", "lr_warmup_start")
"""The settings members of one ensemble may differ in (the warm-up's start follows the lr)."""


ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.SiLU, nn.ELU)
"""Layers that act on each number alone: a stacked MLP applies them to all members at once."""


class _StackedLinear(torch.autograd.Function):
    """``x @ W.T + b`` for every member at once (``x``: members x batch x in; ``W``:
    members x out x in), its weight and bias gradients written into the stack's own
    gradient tensors rather than fresh ones: a fresh tensor of every member's weights
    per step costs the CPU a page fault per 4 KiB."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.grads = (weight_grad, bias_grad)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        weight_grad, bias_grad = ctx.grads
        torch.bmm(grad.transpose(1, 2), x, out=weight_grad)
        torch.sum(grad, dim=1, out=bias_grad)
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None


class StackedMLP:
    """The forward pass of stacked members of a plain MLP (``Flatten``, ``Linear`` and
    elementwise activations in an ``nn.Sequential``) as batched matrix products, with the
    gradients kept in place (see :class:`_StackedLinear`); ``make_speed`` measures it
    against :class:`VmappedModel`."""

    persistent_grads = True

    def __init__(self, model: nn.Sequential) -> None:
        self.layers = [(name, module) for name, module in model.named_children()]

    @staticmethod
    def handles(model: nn.Module) -> bool:
        """Whether ``model`` is a plain MLP this forward pass computes exactly."""
        return (type(model) is nn.Sequential
                and any(isinstance(module, nn.Linear) for module in model.children())
                and all(isinstance(module, (nn.Linear, nn.Flatten, *ELEMENTWISE_MODULES))
                        and (not isinstance(module, nn.Linear) or module.bias is not None)
                        and (not isinstance(module, nn.Flatten)
                             or (module.start_dim, module.end_dim) == (1, -1))
                        for module in model.children()))

    def __call__(self, stacked: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        hidden = x
        for name, module in self.layers:
            if isinstance(module, nn.Flatten):
                hidden = hidden.flatten(2)
            elif isinstance(module, nn.Linear):
                weight, bias = stacked[f"{name}.weight"], stacked[f"{name}.bias"]
                hidden = _StackedLinear.apply(hidden, weight, bias, weight.grad, bias.grad)
            else:
                hidden = module(hidden)
        return hidden


class VmappedModel:
    """The forward pass of stacked members of any model without buffers:
    ``torch.func.functional_call`` under ``torch.vmap``."""

    persistent_grads = False

    def __init__(self, model: nn.Module) -> None:
        base = copy.deepcopy(model).to("meta")
        self.forward = vmap(lambda params, inputs: functional_call(base, params, (inputs,)))

    def __call__(self, stacked: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.forward(stacked, x)


def stacked_forward(model: nn.Module) -> StackedMLP | VmappedModel:
    """The fastest forward pass that computes stacked copies of ``model``."""
    return StackedMLP(model) if StackedMLP.handles(model) else VmappedModel(model)


def _stacked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, in one call over all members' samples."""
    members, batch = labels.shape
    return F.cross_entropy(logits.reshape(members * batch, -1), labels.reshape(-1),
                           reduction="none").view(members, batch).mean(1)


def stacked_loss(loss: LossFunction) -> LossFunction:
    """Each member's loss (members x batch x classes in, one loss per member out): one
    call of cross-entropy over every sample, or the user's loss under ``torch.vmap``
    (whose batching rule for cross-entropy costs a small batch's step a fifth of its time)."""
    return _stacked_cross_entropy if loss is F.cross_entropy else vmap(loss)


class EnsembleOutOfMemory(RuntimeError):
    """The stacked members did not fit; they are trained one at a time instead."""


class MemberLoop(TrainingLoop):
    """One member's loop: its run record, counters and steps, while an :class:`Ensemble`
    does the optimisation. Its model's parameters are views into the ensemble's stacked
    tensors while it trains, so its steps evaluate it as they would a run alone."""

    ensemble: Ensemble
    index: int = 0
    """Its row in the ensemble's stacked tensors (among the members still training)."""
    share_seconds: float = 0.0
    """Its share of the shared steps' time so far."""
    own_seconds: float = 0.0
    """Time of its own evaluations so far (validation, target checks, curve points)."""
    epoch_started: tuple[float, float] = (0.0, 0.0)
    """Its clock and its curve seconds when its current epoch began."""

    @property
    def run_seconds(self) -> float:
        """Its clock: its share of the shared steps plus its own evaluations, curve
        points excluded (a run alone: wall time since its first step, curve excluded)."""
        self.ensemble.account(synchronized=False)  # a progress poll must not wait
        return self.share_seconds + self.own_seconds - self.run_record.curve_seconds

    def evaluate(self, split: Split) -> tuple[float, float]:
        started = time.perf_counter()
        result = super().evaluate(split)
        spent = time.perf_counter() - started
        self.own_seconds += spent
        self.ensemble.owned += spent
        return result

    def fold(self) -> torch.Tensor:
        """The ensemble folds every member's pending steps at once; this member's total."""
        self.ensemble.fold()
        return self.loss_total


def ensemble_obstacle(loops: Sequence[TrainingLoop], recipe: Recipe) -> str | None:
    """Why the runs of ``loops`` cannot train as one ensemble (a sentence), or ``None``."""
    first = loops[0].config
    free = {name: getattr(first, name) for name in ENSEMBLE_SETTINGS_FREE}
    for loop in loops[1:]:
        if dataclasses.replace(loop.config, **free) != first:
            return "its runs differ in more than seed and learning rate"
    if first.processes > 1 or any(loop.shard is not None for loop in loops):
        return "data-parallel runs train one process group at a time"
    if recipe.optimizer is not None:
        return ("a custom optimizer callable would see the stacked weights, whose shapes "
                "are not the model's")
    if not loops[0].data.train.in_memory:
        return "a DataLoader reads its data (an ensemble slices tensors in memory)"
    if not recipe.metric_is_accuracy or recipe.forward is not None:
        return "it is scored by another metric than accuracy, or called through forward="
    if recipe.scheduler is not None:
        return "a scheduler= callable would see the stacked weights' optimizer"
    if not isinstance(loops[0].optimizer, ELEMENTWISE_OPTIMIZERS):
        return f"{type(loops[0].optimizer).__name__} does not update each weight on its own"
    if any(True for _ in loops[0].model.buffers()):
        return ("the model has buffers (such as batch-norm running statistics), which the "
                "stacked members cannot keep apart")
    if first.precision == "fp16":
        return "fp16's gradient scaler would skip every member's step when one overflows"
    if is_keras_model(loops[0].model):
        return ("a Keras model computes with its own variables, which torch.func's stacked "
                "weights cannot stand in for")
    return _probe_obstacle(loops[0], recipe)


def _probe_obstacle(loop: TrainingLoop, recipe: Recipe) -> str | None:
    """Try the ensemble's forward pass, loss and metric on two samples of two members."""
    params, _ = stack_module_state([loop.model, loop.model])
    x, y = (values[:2].unsqueeze(0).expand(2, *values[:2].shape)
            for values in (loop.data.train.x, loop.data.train.y))
    try:
        with torch.random.fork_rng(devices=[]):
            logits = stacked_forward(loop.model)(params, x)
            stacked_loss(recipe.loss)(logits, y)
            vmap(recipe.metric)(logits.detach(), y)
    except Exception as error:  # whatever vmap cannot run: a run alone still can
        return f"torch.vmap cannot run its model, loss or metric ({one_line(error)})"
    return None


class _RateGroup:
    """The members of one learning rate: a slice of every stacked tensor, and the
    optimizer that steps it."""

    def __init__(self, members: list[MemberLoop], first: int, last: int,
                 stacked: dict[str, torch.Tensor], names: list[str]) -> None:
        self.members, self.first, self.last = members, first, last
        self.names = names
        self.views = [nn.Parameter(stacked[name].detach()[first:last]) for name in names]
        self.stacked = [stacked[name] for name in names]
        lead = members[0]
        optimizer_class = type(lead.optimizer)
        defaults = {key: value for key, value in lead.optimizer.defaults.items()
                    if key != "params"}
        self.optimizer = optimizer_class(self.views, **defaults)
        # The state of the members' optimizers, stacked: their steps so far.
        member_params = [dict(member.model.named_parameters()) for member in members]
        for name, view in zip(names, self.views, strict=True):
            states = [member.optimizer.state.get(params[name], {})
                      for member, params in zip(members, member_params, strict=True)]
            if states[0]:
                self.optimizer.state[view] = {
                    key: (torch.stack([state[key] for state in states])
                          if isinstance(value, torch.Tensor) and value.dim() > 0
                          else (value.clone() if isinstance(value, torch.Tensor) else value))
                    for key, value in states[0].items()}
        self.follow_lr()

    def follow_lr(self) -> None:
        """Take the learning rate the members' own optimizers have now (a warm-up's
        scheduler moves it)."""
        self.optimizer.param_groups[0]["lr"] = self.members[0].optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        for view, stacked in zip(self.views, self.stacked, strict=True):
            view.grad = stacked.grad[self.first:self.last]
        self.optimizer.step()

    def hand_back(self) -> None:
        """Give every member its own copy of its weights and optimizer state."""
        for offset, member in enumerate(self.members):
            params = dict(member.model.named_parameters())
            for name, view in zip(self.names, self.views, strict=True):
                parameter = params[name]
                parameter.data = view.detach()[offset].clone()
                state = self.optimizer.state.get(view)
                if state:
                    member.optimizer.state[parameter] = {
                        key: (value[offset].clone()
                              if isinstance(value, torch.Tensor) and value.dim() > 0
                              else (value.clone() if isinstance(value, torch.Tensor) else value))
                        for key, value in state.items()}


class Ensemble:
    """Train the runs of ``loops`` (:class:`MemberLoop`, one per run, differing only in
    seed and learning rate) together; :meth:`run` returns their runs in their order."""

    def __init__(self, loops: Sequence[MemberLoop], recipe: Recipe) -> None:
        self.loops = list(loops)
        for loop in self.loops:
            loop.ensemble = self
        self.members: list[MemberLoop] = []
        """The members still training, ordered by learning rate (then as given)."""
        self.device = self.loops[0].device
        self.config: RunConfig = self.loops[0].config
        self.data: Dataset = self.loops[0].data
        self.loss_fn, self.metric = recipe.loss, recipe.metric
        self.names = [name for name, _ in self.loops[0].model.named_parameters()]
        self.forward = stacked_forward(self.loops[0].model)
        self.losses = stacked_loss(recipe.loss)
        self.correct = vmap(recipe.metric)
        self.stacked: dict[str, torch.Tensor] = {}
        self.groups: list[_RateGroup] = []
        self.pending: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = (
            [], [], [])
        self.short_batch = 0
        self.loss_totals = torch.zeros(0)
        self.correct_totals = torch.zeros(0, dtype=torch.int64)
        self.mark = 0.0
        self.owned = 0.0
        """Seconds of members' own work (evaluations) since :attr:`mark`."""

    # -- the stack

    def _stack(self, members: list[MemberLoop]) -> None:
        """Stack ``members`` (ordered by lr) and make one optimizer per learning rate."""
        self.members = members
        self.stacked, _ = stack_module_state([member.model for member in members])
        member_params = [dict(member.model.named_parameters()) for member in members]
        if self.forward.persistent_grads:  # written in place by every step's backward
            for stacked in self.stacked.values():
                stacked.grad = torch.zeros_like(stacked)
        for index, (member, params) in enumerate(zip(members, member_params, strict=True)):
            member.index = index
            for name in self.names:  # the member's model now reads the stacked weights
                params[name].data = self.stacked[name].detach()[index]
        self.groups = []
        first = 0
        while first < len(members):
            last = first
            while last < len(members) and members[last].config.lr == members[first].config.lr:
                last += 1
            self.groups.append(_RateGroup(members[first:last], first, last, self.stacked,
                                          self.names))
            first = last

    def _unstack(self) -> None:
        for group in self.groups:
            group.hand_back()
        self.groups, self.stacked = [], {}

    # -- what members read

    def account(self, synchronized: bool = True) -> None:
        """Split the shared steps' time since the last mark among the members training;
        after the device has finished what was queued (at epoch ends and stops), unless
        ``synchronized`` is false (a progress poll, which reads the clock as the loop of a
        run alone does: the work still queued is split at the next mark)."""
        if synchronized:
            synchronize(self.device)
        now = time.perf_counter()
        shared = max(0.0, now - self.mark - self.owned)
        for member in self.members:
            member.share_seconds += shared / len(self.members)
        self.mark, self.owned = now, 0.0

    def fold(self) -> None:
        """Sum every member's pending steps into its running loss and correct count."""
        losses, outputs, labels = self.pending
        if not losses:
            return
        stacked = torch.stack(losses)  # (steps, members)
        batch = self.config.batch_size
        if self.short_batch:
            self.loss_totals += stacked[:-1].sum(0) * batch + stacked[-1] * self.short_batch
        else:
            self.loss_totals += stacked.sum(0) * batch
        self.correct_totals += self.correct(torch.cat(outputs, dim=1), torch.cat(labels, dim=1))
        for pending in self.pending:
            pending.clear()
        self.short_batch = 0

    def _reset_totals(self) -> None:
        count = len(self.members)
        self.loss_totals = torch.zeros(count, device=self.device)
        self.correct_totals = torch.zeros(count, dtype=torch.int64, device=self.device)
        self._point_totals()

    def _point_totals(self) -> None:
        for index, member in enumerate(self.members):
            member.loss_total = self.loss_totals[index]
            member.correct_total = self.correct_totals[index]

    # -- the loop

    def run(self) -> list[Run]:
        """Train every member; raise :class:`EnsembleOutOfMemory` when the stack does not
        fit (the caller then trains the runs one at a time)."""
        config = self.config
        with (denormals_flushed(config.flush_denormals and self.device.type == "cpu"),
              matmul_precision(config.precision, self.device)):
            failure = None
            try:
                self._train()
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                failure = one_line(error)
        if failure is not None:  # outside the except block: the failed step's frames are gone
            self.groups, self.stacked = [], {}
            for pending in self.pending:
                pending.clear()
            release_device_memory(self.device)
            raise EnsembleOutOfMemory(f"the {len(self.loops)} stacked runs ran out of memory "
                                      f"({failure})")
        return [loop.run_record for loop in self.loops]

    def _train(self) -> None:
        config, device, data = self.config, self.device, self.data
        batch_size, count = config.batch_size, self.loops[0].count  # drop_last's, or all
        available = len(data.train)
        train_x, train_y = data.train.x, data.train.y
        order = sorted(range(len(self.loops)), key=lambda index: self.loops[index].config.lr)
        self._stack([self.loops[index] for index in order])
        shuffles = {id(member): torch.Generator().manual_seed(member.config.seed)
                    for member in self.members}
        sample_bytes = max(1, train_x[:1].nelement() * train_x.element_size())
        chunk = max(1, GATHER_CHUNK_BYTES // (sample_bytes * batch_size)) * batch_size
        gathered = train_x.new_empty((len(self.members) * min(chunk, count),
                                      *train_x.shape[1:]))
        for member in self.members:
            for loop_step in member.steps:
                loop_step.start()
            member.run_record.ensemble = f"one of {len(self.loops)}"
        self._follow_lr()
        in_precision = autocast(config.precision, device)
        persistent_grads = self.forward.persistent_grads
        losses_seen, outputs_seen, labels_seen = self.pending
        next_due = self._next_due()
        synchronize(device)
        self.mark = started = time.perf_counter()
        for member in self.members:
            member.started = started
        steps_done = samples_done = 0
        for epoch in range(1, config.epochs + 1):
            if not self.members:
                break
            for member in self.members:
                member.epoch, member.stop_epoch, member.step = epoch, False, 0
                member.model.train()
                member.epoch_started = (member.share_seconds + member.own_seconds,
                                        member.run_record.curve_seconds)
            orders = torch.stack([torch.randperm(available, generator=shuffles[id(member)])
                                  for member in self.members])[:, :count].to(device)
            self._reset_totals()
            seen = step = 0
            for first in range(0, count, chunk):
                index = orders[:, first:first + chunk]
                members, length = len(self.members), index.shape[1]
                images = torch.index_select(train_x, 0, index.reshape(-1),
                                            out=gathered[:members * length]).view(
                    members, length, *train_x.shape[1:])
                labels_chunk = train_y[index]
                start = 0
                while start < length:
                    labels = labels_chunk[:, start:start + batch_size]
                    size = labels.shape[1]
                    with in_precision:
                        logits = self.forward(self.stacked, images[:, start:start + batch_size])
                        losses = self.losses(logits, labels)
                    if not persistent_grads:
                        for stacked in self.stacked.values():
                            stacked.grad = None
                    losses.sum().backward()
                    for group in self.groups:
                        group.step()
                    losses_seen.append(losses.detach())
                    outputs_seen.append(logits.detach())
                    labels_seen.append(labels)
                    if size != batch_size:
                        self.short_batch = size
                    seen += size
                    step += 1
                    steps_done += 1
                    samples_done += size
                    start += batch_size
                    if steps_done >= next_due:
                        kept = self._fire(step, steps_done, samples_done, seen)
                        if kept is not None:  # members stopped: the chunk's rows go with them
                            orders, images, labels_chunk = (orders[kept], images[kept],
                                                            labels_chunk[kept])
                            if not self.members:
                                break
                        next_due = self._next_due()
                if not self.members:
                    break
            if self.members:
                self._counted(self.members, step, steps_done, samples_done)
                self._end_epoch(self.members, seen)

    def _next_due(self) -> float:
        return min(loop_step.due for member in self.members for loop_step in member.steps)

    def _follow_lr(self) -> None:
        for group in self.groups:
            group.follow_lr()

    def _counted(self, members: Sequence[MemberLoop], step: int, steps_done: int,
                 samples_done: int) -> None:
        """Bring the members' step and sample counters (read by their steps) up to date."""
        for member in members:
            member.step, member.steps_done, member.samples_done = step, steps_done, samples_done

    def _fire(self, step: int, steps_done: int, samples_done: int,
              seen: int) -> list[int] | None:
        """Run every member's due steps; end the members that stopped. Returns the rows
        of the members kept when some stopped, else ``None``."""
        self._counted(self.members, step, steps_done, samples_done)
        for member in self.members:
            steps_done = member.steps_done
            for loop_step in member.steps:
                if steps_done >= loop_step.due:
                    loop_step.fire()
                    if member.stop_epoch:
                        break
        self._follow_lr()
        stopped = [member for member in self.members if member.stop_epoch]
        if not stopped:
            return None
        kept = [member.index for member in self.members if not member.stop_epoch]
        self._end_epoch(stopped, seen)
        return kept

    def _end_epoch(self, ending: list[MemberLoop], seen: int) -> None:
        """The end of an epoch for ``ending`` (all members, or those that stopped within
        it): their epoch records, as a run alone records them, and the end of the members
        whose run is over; the rest are stacked again without them."""
        self.account()
        self.fold()
        over = []
        for member in ending:
            run, config = member.run_record, member.config
            train_loss = member.loss_total.item() / seen
            train_accuracy = member.correct_total.item() / seen
            clock, curve = member.epoch_started
            train_seconds = (member.share_seconds + member.own_seconds - clock
                             - (run.curve_seconds - curve))
            run.train_seconds += train_seconds
            if not math.isfinite(train_loss):
                run.diverged = (f"training loss became {train_loss} in epoch {member.epoch} "
                                f"(lr={config.lr:g}, {config.optimizer})")
                over.append(member)
                continue
            evaluated = time.perf_counter()
            val_loss, val_accuracy = member.evaluate(member.data.val)
            eval_seconds = time.perf_counter() - evaluated
            run.train_seconds += eval_seconds
            record = EpochRecord(member.epoch, train_loss, train_accuracy, val_loss,
                                 val_accuracy, train_seconds, eval_seconds)
            run.history.append(record)
            for loop_step in member.steps:
                loop_step.epoch_end(record)
            if member.stop_run or member.stop_epoch or member.epoch == member.config.epochs:
                over.append(member)
        self.account()  # the evaluations above were the members' own
        if not over:
            return
        self._unstack()
        for member in over:
            if member.run_record.diverged is None:
                run = member.run_record
                run.test_loss, run.test_accuracy = member.evaluate(member.data.test)
            member.model.eval()
        remaining = [member for member in self.members if member not in over]
        totals = [(member.loss_total, member.correct_total) for member in remaining]
        if remaining:
            self._stack(remaining)
            self.loss_totals = torch.stack([loss for loss, _ in totals])
            self.correct_totals = torch.stack([correct for _, correct in totals])
            self._point_totals()
        else:
            self.members = []
        self.mark, self.owned = time.perf_counter(), 0.0

