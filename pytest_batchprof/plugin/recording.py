"""Runs trained by the user's own loop: :func:`record` brings them to the table and report.

The plugin's engine is one way to train; a project with its own loop (a
Lightning ``Trainer``, a hand-written loop, a model loaded from a checkpoint)
can still put its model in the same table, beside engine-trained runs. What can
be measured on a trained model is measured here, exactly as for an engine run:
test loss and accuracy, parameters, FLOPs and MACs, sizes, inference latency and
inference CO2eq, all on the test data the user gives (``test=``: scored exactly
as given) or else on the test split of the test's data set, as registered. What
only the loop knew (its per-epoch history and training time) is taken as given;
what nobody measured (peak training memory, training CO2eq) is ``n/a``. The row
says where its figures came from (``test_source``, ``history_source``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_batchprof.data import catalog
from pytest_batchprof.data.datasets import Dataset, DatasetUnavailable
from pytest_batchprof.engine.training import (
    EVAL_BATCH_SIZE,
    EpochRecord,
    Run,
    RunConfig,
    evaluate_batches,
)
from pytest_batchprof.experiment.code import model_code
from pytest_batchprof.experiment.models import module_fingerprint
from pytest_batchprof.measuring.metrics import PeakMemory, measure
from pytest_batchprof.runs.build import callable_label

if TYPE_CHECKING:
    from pytest_batchprof.runs.session import BatchprofSession

OWN_LOOP = "own loop"
"""The ``optimizer`` column's note, and the peak-memory method, of a recorded run."""

OWN_TEST_DATA = "own test data"
"""The ``dataset`` of a recorded run scored on ``test=`` when ``dataset=`` names none."""

HISTORY_FROM_LOOP = "the test's own loop"
"""The ``history_source`` of a recorded run given its history: train and validation
figures are the loop's, on the loop's data."""

NO_HISTORY = "none given to record"
"""The ``history_source`` of a recorded run without a history (its figures are n/a)."""

_RECORD_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")

TestData = object
"""``(x, y)`` tensors (or arrays), a ``torch.utils.data.Dataset`` of ``(x, y)`` pairs, or a
``torch.utils.data.DataLoader`` of ``(x, y)`` batches."""


@dataclass
class RecordedRun(Run):
    """A run trained by the test's own loop, with where its figures came from."""

    test_source: str = ""
    """What the test loss and accuracy, the latency and the FLOPs were measured on."""
    history_source: str = NO_HISTORY
    """Where the per-epoch (training and validation) figures came from."""

    @property
    def train_samples_per_second(self) -> float:
        """As a run's, when the samples of a training epoch are known (NaN if not)."""
        return super().train_samples_per_second if self.samples_per_epoch else math.nan

    def summary(self) -> dict[str, object]:
        figures = super().summary()
        if not self.samples_per_epoch:
            figures["samples_per_epoch"] = None  # not known: never a figure of 0
        return {**figures, "test_source": self.test_source,
                "history_source": self.history_source}


def record(
    model: nn.Module,
    *,
    batch_size: int,
    test: TestData | None = None,
    epochs: int | None = None,
    history: Sequence[EpochRecord | Mapping[str, float]] = (),
    train_seconds: float | None = None,
    train_samples: int | None = None,
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

        def test_my_loop():
            model = MyNet()
            history = my_training_loop(model, train_x, train_y, epochs=3, batch_size=64)
            run = pytest_batchprof.record(model, batch_size=64, history=history,
                                          test=(test_x, test_y))
            assert run.test_accuracy > 0.97

    ``test`` is the user's own test data: ``(x, y)`` tensors (or arrays), a
    ``torch.utils.data.Dataset`` of ``(x, y)`` pairs, or a ``DataLoader`` of
    ``(x, y)`` batches. The model is scored on exactly that (nothing normalised,
    nothing split off), and its latency and FLOPs are measured on its samples;
    ``dataset`` then only names the data in the row (default ``own test data``;
    nothing is loaded). Without ``test``, the model is scored on the test split of
    ``dataset`` (default: the test's data set, ``@pytest.mark.dataset`` or
    ``--batchprof-dataset``): a registered data set's as registered, a built-in
    one's normalised as the engine trains on it. The model is moved to the
    session's device, and each batch with it.

    ``history`` is one entry per epoch, an
    :class:`~pytest_batchprof.engine.training.EpochRecord` or a mapping with
    ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
    ``val_accuracy`` (and optionally ``train_seconds``, ``eval_seconds``).
    ``train_samples`` is the samples of one training epoch, for the samples/s
    figure (default: the training split of ``dataset`` when the model is scored on
    its test split; with ``test=``, not known). ``optimizer`` (its state goes into
    the checkpoint size), ``lr``, ``name`` (default: the class name and parameter
    count) and ``loss`` (for the test loss; default cross-entropy) describe the run
    in its row; ``seed`` is the seed the loop used, and without it the row takes
    the session's ``--batchprof-seed``.

    The row's ``test_source`` says what the test figures, latency and FLOPs were
    measured on, and its ``history_source`` that the training and validation
    figures are the loop's own.
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
    if train_samples is not None and (isinstance(train_samples, bool)
                                      or not isinstance(train_samples, int)
                                      or train_samples < 1):
        raise ValueError(f"record(train_samples={train_samples!r}): the samples of one "
                         f"training epoch, a whole number >= 1")
    state = batchprof_session(item.config)
    seed_note = "" if seed is not None else " (the session's seed: record was given none)"
    seed = state.settings.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"record(seed={seed!r}): the seed the loop used, a whole number >= 0")
    records = [_epoch_record(entry, index) for index, entry in enumerate(history, start=1)]
    if epochs is None:
        epochs = len(records)
    if records and epochs != len(records):
        raise ValueError(f"record(epochs={epochs}) disagrees with the {len(records)} epochs "
                         f"of history")
    loss_fn = loss if loss is not None else F.cross_entropy
    model.to(state.device)
    model.eval()
    inference_batch = state.settings.inference_batch_size or batch_size
    if test is None:
        data = _test_data_set(state, dataset, dataset_request(item))
        label, source = data.name, _split_source(data)
        samples_per_epoch = len(data.train) if train_samples is None else train_samples
        batches: Iterable[object] = _tensor_batches(data.test.x, data.test.y)
    else:
        label = OWN_TEST_DATA if dataset is None else str(dataset)
        batches, source = _given_batches(test)
        samples_per_epoch = train_samples or 0
    score = _score(model, batches, loss_fn, state.device, inference_batch)
    params = sum(parameter.numel() for parameter in model.parameters())
    cls = type(model)
    config = RunConfig(
        dataset=label,
        input_shape=tuple(int(side) for side in score.samples.shape[1:]),
        hidden=None,
        num_classes=score.num_classes,
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
        model_id=name or cls.__name__,
        architecture=module_fingerprint(model, f"{cls.__module__}.{cls.__qualname__}"),
        code=model_code(model).fingerprint(),
        loss="cross_entropy" if loss in (None, F.cross_entropy) else callable_label(loss),
        trainer=f"{OWN_LOOP} ({item.nodeid})",
    )
    if train_seconds is None:  # not known without a history: n/a, never a figure of 0 s
        train_seconds = sum(record.seconds for record in records) if records else math.nan
    run = RecordedRun(config=config, model=model, optimizer=optimizer,
                      samples_per_epoch=samples_per_epoch, test_images=score.samples,
                      history=records, train_seconds=float(train_seconds),
                      test_loss=score.loss, test_accuracy=score.accuracy,
                      test_source=source,
                      history_source=HISTORY_FROM_LOOP if records else NO_HISTORY,
                      threads=torch.get_num_threads())  # the test's loop ran in this process
    run.measurements = measure(
        model, optimizer, score.samples, inference_batch,
        PeakMemory(0, f"not measured (trained by the test's {OWN_LOOP})"), None, state.carbon)
    used = item.stash.setdefault(RUNS_KEY, [])
    used.append(run)
    state.say(
        f"batchprof: recorded {config.model_name} on {label} (trained by the test's "
        f"{OWN_LOOP}): test acc={score.accuracy:.4f} on {source}; seed {seed}{seed_note}")
    return run


def _test_data_set(state: BatchprofSession, dataset: str | None,
                   requested: tuple[str | None, dict[str, object]]) -> Dataset:
    """The data set whose test split scores the model: ``dataset``, else the test's own;
    a data set that cannot be loaded fails the test with its one line."""
    name, options = (dataset, {}) if dataset is not None else requested
    failure = None
    try:
        return state.dataset(name, options)
    except (DatasetUnavailable, ValueError) as error:  # a failed registration is a ValueError
        failure = str(error)
    pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback


def _split_source(data: Dataset) -> str:
    """What a test split is, in a row: a registered one as registered, or normalised."""
    base = data.name.split("(", 1)[0]
    kept = "" if data.mean is None else " (normalised with its training split's mean and std)"
    kind = "registered test split" if base in catalog.REGISTERED else "test split"
    return f"{kind} of {data.name}{kept}"


def _tensor_batches(x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor,
                                                                     torch.Tensor]]:
    for start in range(0, len(y), EVAL_BATCH_SIZE):
        yield x[start:start + EVAL_BATCH_SIZE], y[start:start + EVAL_BATCH_SIZE]


def _given_batches(test: TestData) -> tuple[Iterable[object], str]:
    """The batches of ``record(test=...)``, and how the row names that data."""
    given = "test= given to record"
    if isinstance(test, torch.utils.data.DataLoader):
        return test, f"{given} (a DataLoader)"
    if isinstance(test, torch.utils.data.Dataset):
        try:
            count = f" of {len(test):,} samples"
        except TypeError:
            count = ""
        loader = torch.utils.data.DataLoader(test, batch_size=EVAL_BATCH_SIZE)
        return loader, f"{given} (a Dataset{count})"
    if isinstance(test, tuple | list) and len(test) == 2:
        try:
            x, y = torch.as_tensor(test[0]), torch.as_tensor(test[1])
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"record(test=...): (x, y) cannot be made into tensors "
                             f"({error})") from None
        if x.dim() < 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError(f"record(test=...): x has shape {tuple(x.shape)} and y "
                             f"{tuple(y.shape)}; give x (N, ...) and y (N,) with N >= 1")
        return _tensor_batches(x, y), f"{given} ({len(y):,} samples)"
    raise ValueError(f"record(test=...): give (x, y) tensors, a torch.utils.data.Dataset of "
                     f"(x, y) pairs or a DataLoader of (x, y) batches, not a "
                     f"{type(test).__name__}")


@dataclass(frozen=True)
class _Score:
    """A model's test figures on the given data, and samples of it for latency and FLOPs."""

    loss: float
    accuracy: float
    num_classes: int
    samples: torch.Tensor


def _score(model: nn.Module, batches: Iterable[object], loss: Callable[..., torch.Tensor],
           device: torch.device, keep: int) -> _Score:
    """Mean loss per sample and accuracy of ``model`` on ``batches`` of ``(x, y)``, as
    :func:`~pytest_batchprof.engine.training.evaluate_batches` sums them (each batch
    checked and moved to ``device`` first); the first ``keep`` samples are kept (on
    ``device``) to measure latency and FLOPs on."""
    kept: list[torch.Tensor] = []

    def checked() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index, batch in enumerate(batches):
            if not isinstance(batch, tuple | list) or len(batch) != 2 or not all(
                    isinstance(part, torch.Tensor) for part in batch):
                raise ValueError(f"record(test=...): batch {index} is a "
                                 f"{type(batch).__name__}; give batches of (x, y) tensors")
            x, y = batch[0].to(device), batch[1].to(device)
            if y.is_floating_point() or y.dim() != 1 or len(y) != len(x):
                raise ValueError(f"record(test=...): y of batch {index} is {y.dtype} of shape "
                                 f"{tuple(y.shape)}; give one integer class index per sample "
                                 f"(y.long() if they are class indices)")
            if sum(len(part) for part in kept) < keep:
                kept.append(x[:keep])
            yield x, y.long()

    with torch.no_grad():
        mean_loss, accuracy, count = evaluate_batches(model, checked(), device, loss=loss)
        if count == 0:
            raise ValueError("record(test=...): the test data holds no samples")
        samples = torch.cat(kept)[:keep]
        classes = int(model(samples[:1]).shape[-1])  # what the model scores: its classes
    return _Score(mean_loss, accuracy, classes, samples)


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

