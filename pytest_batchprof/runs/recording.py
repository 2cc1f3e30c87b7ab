"""Runs trained by the user's own loop: :func:`record` brings them to the table and report.

The plugin's engine is one way to train; a project with its own loop (a
Lightning ``Trainer``, a hand-written loop, a model loaded from a checkpoint)
can still put its model in the same table, beside engine-trained runs. What can
be measured on a trained model is measured here, exactly as for an engine run:
test loss and accuracy on the data set's test split, parameters, FLOPs and
MACs, sizes, inference latency and inference CO2eq. What only the loop knew
(its per-epoch history and training time) is taken as given; what nobody
measured (peak training memory, training CO2eq) is ``n/a``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

from pytest_batchprof.engine.training import EpochRecord, Run, RunConfig, evaluate
from pytest_batchprof.experiment.build import callable_label
from pytest_batchprof.experiment.models import module_fingerprint
from pytest_batchprof.measuring.metrics import PeakMemory, measure

OWN_LOOP = "own loop"
"""The ``optimizer`` column's note, and the peak-memory method, of a recorded run."""

_RECORD_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


def record(
    model: nn.Module,
    *,
    batch_size: int,
    epochs: int | None = None,
    history: Sequence[EpochRecord | Mapping[str, float]] = (),
    train_seconds: float | None = None,
    name: str | None = None,
    dataset: str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    seed: int | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
) -> Run:
    """Measure ``model``, trained by the test's own loop, and add it to the session's report.

    Call it inside a test (the run's row takes the test's outcome, and
    ``@pytest.mark.min_accuracy`` checks it)::

        def test_my_loop(dataset):
            model = MyNet()
            history = my_training_loop(model, dataset.train, epochs=3, batch_size=64)
            run = pytest_batchprof.record(model, batch_size=64, history=history)
            assert run.test_accuracy > 0.97

    ``model`` is evaluated on the test split of ``dataset`` (default: the
    test's data set, as the ``dataset`` fixture has it: normalised, on the
    session's device; the model is moved there). ``history`` is one entry per
    epoch, an :class:`~pytest_batchprof.engine.training.EpochRecord` or a mapping with
    ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
    ``val_accuracy`` (and optionally ``train_seconds``, ``eval_seconds``).
    ``optimizer`` (its state goes into the checkpoint size), ``lr``, ``seed``,
    ``name`` (default: the class name and parameter count) and ``loss`` (for
    the test loss; default cross-entropy) describe the run in its row.
    """
    from pytest_batchprof.plugin import (
        RUNS_KEY,
        batchprof_session,
        current_item,
        dataset_request,
    )

    item = current_item()
    if item is None:
        raise RuntimeError("pytest_batchprof.record(...) must be called inside a test (its "
                           "row belongs to the test that calls it)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"record(model=...) takes a trained nn.Module, not a "
                        f"{type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"record(batch_size={batch_size!r}): the batch size the model was "
                         f"trained at, a whole number >= 1")
    state = batchprof_session(item.config)
    if dataset is None:
        dataset, options = dataset_request(item)
    else:
        options = {}
    data = state.dataset(dataset, options)
    records = [_epoch_record(entry, index) for index, entry in enumerate(history, start=1)]
    if epochs is None:
        epochs = len(records)
    if records and epochs != len(records):
        raise ValueError(f"record(epochs={epochs}) disagrees with the {len(records)} epochs "
                         f"of history")
    loss_fn = loss if loss is not None else F.cross_entropy
    model.to(state.device)
    model.eval()
    params = sum(parameter.numel() for parameter in model.parameters())
    cls = type(model)
    config = RunConfig(
        dataset=data.name,
        input_shape=data.sample_shape,
        hidden=None,
        num_classes=data.num_classes,
        activation=None,
        batch_size=batch_size,
        epochs=epochs,
        lr=math.nan if lr is None else float(lr),
        optimizer=(OWN_LOOP if optimizer is None
                   else f"{type(optimizer).__name__.lower()} ({OWN_LOOP})"),
        seed=seed,
        device=str(state.device),
        train_subset=None,
        val_fraction=state.settings.val_fraction,
        flush_denormals=False,
        model=name or f"{cls.__name__} ({params:,})",
        architecture=module_fingerprint(model, f"{cls.__module__}.{cls.__qualname__}"),
        loss="cross_entropy" if loss in (None, F.cross_entropy) else callable_label(loss),
        trainer=f"{OWN_LOOP} ({item.nodeid})",
    )
    test_loss, test_accuracy = evaluate(model, data.test, loss=loss_fn)
    if train_seconds is None:
        train_seconds = sum(record.seconds for record in records)
    run = Run(config=config, model=model, optimizer=optimizer,
              samples_per_epoch=len(data.train), test_images=data.test.x, history=records,
              train_seconds=float(train_seconds), test_loss=test_loss,
              test_accuracy=test_accuracy)
    run.measurements = measure(
        model, optimizer, data.test.x, state.settings.inference_batch_size or batch_size,
        PeakMemory(0, f"not measured (trained by the test's {OWN_LOOP})"), None, state.carbon)
    used = item.stash.setdefault(RUNS_KEY, [])
    used.append(run)
    state.say(
        f"batchprof: recorded {config.model_name} on {data.name} (trained by the test's "
        f"{OWN_LOOP}): test acc={test_accuracy:.4f}")
    return run


def _epoch_record(entry: EpochRecord | Mapping[str, float], index: int) -> EpochRecord:
    """One epoch of a recorded history, checked."""
    if isinstance(entry, EpochRecord):
        return entry
    if not isinstance(entry, Mapping):
        raise TypeError(f"record(history=...): entry {index} is a {type(entry).__name__}; give "
                        f"EpochRecords or mappings with {', '.join(_RECORD_FIELDS)}")
    missing = [key for key in _RECORD_FIELDS if key not in entry]
    unknown = sorted(set(entry) - {field.name for field in fields(EpochRecord)})
    if missing or unknown:
        raise ValueError(f"record(history=...): entry {index} lacks {missing} and has unknown "
                         f"{unknown}; give {', '.join(_RECORD_FIELDS)} (and optionally "
                         f"train_seconds, eval_seconds)")
    values = {"train_seconds": 0.0, "eval_seconds": 0.0, **entry}
    return EpochRecord(**{key: (int(value) if key == "epoch" else float(value))
                          for key, value in values.items()})

