"""A directory of trained runs, so that rerunning a study to rebuild its report takes seconds.

An entry is one ``torch.save`` file, ``DIR/<key>.pt``, where the key is the
SHA-256 of everything that determines a run's result: its :class:`RunConfig`
(with its ``architecture``, the model's structure, and its ``code``, the source
files of all the user's code that computes it: see
:mod:`pytest_batchprof.experiment.code`), a fingerprint of the data, the torch and
pytest-batchprof versions and :data:`CACHE_FORMAT`. An edit of the model's code,
of a module class it is made of, or of the loss or optimizer, is a new key: a miss.
The entry holds tensors and plain values only (it is read with
``torch.load(weights_only=True)``, which runs no pickled code), and a copy of the
key's inputs, so a file renamed by hand or a key collision is noticed. An entry
that cannot be read, does not match or does not fit the model is never trusted:
it is deleted, the run is trained again, and one :class:`BatchprofCacheWarning`
line names the file and the reason (:func:`warn`: a warning filter may hide it,
never turn it into the test's failure).

Diverged runs are cached too: with the same inputs they diverge again, bit for
bit on the CPU, so training them again would only cost time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_batchprof._version import __version__
from pytest_batchprof.engine.training import CurvePoint, EpochRecord, Run, RunConfig, TimeToTarget
from pytest_batchprof.errors import one_line
from pytest_batchprof.measuring.carbon import Carbon
from pytest_batchprof.measuring.metrics import PeakMemory
from pytest_batchprof.reports.storage import TEMPORARY_SUFFIX, atomic_file

CACHE_FORMAT = 7
"""Version of the entry layout; raise it when the layout or its meaning changes."""

SUFFIX = ".pt"
class BatchprofCacheWarning(UserWarning):
    """A cache entry that could not be used or written; the run is trained (or kept) anyway.

    Exported as ``pytest_batchprof.BatchprofCacheWarning``, so that a project can filter it
    by its class (``ignore::pytest_batchprof.BatchprofCacheWarning``).
    """


def warn(message: str, stacklevel: int = 2) -> None:
    """Warn with :class:`BatchprofCacheWarning`; a filter may hide it (``ignore``), but not
    make it an error.

    The cache's trouble is never the test's: the run is trained again (or kept
    uncached), and the test's figures are whole. So under an ``error`` filter
    (``-W error``, ``filterwarnings = error``) the warning is caught and warned once
    more, shown whatever the filters say, and lands in the session's warnings summary
    instead of failing the test. ``stacklevel`` counts from the caller of this function.
    """
    try:
        warnings.warn(message, BatchprofCacheWarning, stacklevel=stacklevel + 1)
    except BatchprofCacheWarning:
        with warnings.catch_warnings():
            warnings.simplefilter("always", BatchprofCacheWarning)
            warnings.warn(message, BatchprofCacheWarning, stacklevel=stacklevel + 1)


class CacheEntryError(ValueError):
    """An entry whose content is not what this version writes."""


@dataclass(frozen=True)
class CachedRun:
    """What an entry restores besides the weights: the figures measured when the run trained."""

    history: list[EpochRecord]
    curve: list[CurvePoint]
    train_seconds: float
    test_loss: float | None
    test_accuracy: float | None
    test_metric: float | None
    """The run's metric on the test split, when it is not accuracy."""
    diverged: str | None
    samples_per_epoch: int
    peak_memory: PeakMemory | None
    train_carbon: Carbon | None
    time_to_target: TimeToTarget | None
    ensemble: str | None
    """``one of 12`` for a run trained in an ensemble: its times are its share."""
    threads: int | None
    """The torch threads it trained with (its times are those of that many threads)."""


_FIELDS = frozenset({"format", "inputs", "model", "optimizer",
                     *(field.name for field in fields(CachedRun))})
"""An entry's keys: its format and key inputs, the state dicts, and a :class:`CachedRun`."""


def torch_version() -> str:
    """The torch version in the key (a function, so that tests can pretend another)."""
    return str(torch.__version__)


def plugin_version() -> str:
    """The pytest-batchprof version in the key (a function, so that tests can pretend
    another)."""
    return str(__version__)


def key_inputs(config: RunConfig, data_fingerprint: str) -> str:
    """Canonical JSON of everything an entry depends on: the text its key hashes."""
    return json.dumps(
        {
            "format": CACHE_FORMAT,
            "config": asdict(config),
            "data": data_fingerprint,
            "torch": torch_version(),
            "pytest-batchprof": plugin_version(),
        },
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )


class RunCache:
    """Trained runs on disk under ``directory``, one ``<key>.pt`` file each."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._inputs: dict[str, str] = {}

    def key(self, config: RunConfig, data_fingerprint: str) -> str:
        """The entry name of ``config`` trained on data with this fingerprint.

        The inputs are remembered, for :meth:`load` to check and :meth:`store` to write.
        """
        inputs = key_inputs(config, data_fingerprint)
        key = hashlib.sha256(inputs.encode()).hexdigest()
        self._inputs[key] = inputs
        return key

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def load(self, key: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> (
            CachedRun | None):
        """Load the entry into ``model`` and ``optimizer``; ``None`` on a miss.

        A missing file is a quiet miss. Any other failure deletes the file and
        warns once; ``model`` and ``optimizer`` may then hold part of the entry,
        so the caller must not use them.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        device = next(model.parameters()).device
        try:
            entry = torch.load(path, weights_only=True, map_location=device)
        except Exception as error:  # truncated, garbage, or pickled code weights_only refuses
            self._discard(path, f"cannot be read ({one_line(error)})")
            return None
        try:
            return _restore(entry, self._inputs[key], model, optimizer)
        except Exception as error:  # a foreign or damaged entry is a miss, never a crash
            self._discard(path, f"cannot be used ({one_line(error)})")
            return None

    def store(self, key: str, run: Run) -> Path | None:
        """Write ``run`` as the entry ``key`` atomically; warn and go on when that fails."""
        path = self.path(key)
        entry = {
            "format": CACHE_FORMAT,
            "inputs": self._inputs[key],
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "history": [asdict(record) for record in run.history],
            "curve": [asdict(point) for point in run.curve],
            "train_seconds": float(run.train_seconds),
            "test_loss": run.test_loss,
            "test_accuracy": run.test_accuracy,
            "test_metric": run.test_metric,
            "diverged": run.diverged,
            "samples_per_epoch": int(run.samples_per_epoch),
            "peak_memory": None,
            "train_carbon": None,
            "time_to_target": (None if run.time_to_target is None
                               else asdict(run.time_to_target)),
            "ensemble": run.ensemble,
            "threads": run.threads,
        }
        if run.measurements is not None:
            entry["peak_memory"] = asdict(run.measurements.peak_memory)
            carbon = run.measurements.train_carbon
            entry["train_carbon"] = None if carbon is None else asdict(carbon)
        try:
            with atomic_file(path) as stream:  # readers see the old entry or the new one
                torch.save(entry, stream)
        except Exception as error:  # a full disk must not fail the test that trained the run
            warn(f"batchprof: could not write cache entry {path} ({one_line(error)}); the run "
                 f"is not cached")
            return None
        return path

    def clear(self) -> int:
        """Delete every entry (and temporary files left by an interrupted write); the count."""
        if not self.directory.is_dir():
            return 0
        removed = 0
        for path in [*self.directory.glob(f"*{SUFFIX}"),
                     *self.directory.glob(f".*{SUFFIX}.*{TEMPORARY_SUFFIX}")]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                if path.suffix == SUFFIX:
                    removed += 1
        return removed

    def _discard(self, path: Path, reason: str) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        warn(f"batchprof: cache entry {path} {reason}; training the run again", stacklevel=3)


def _restore(entry: Any, inputs: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> (
        CachedRun):
    """Check an entry's layout and inputs, then load its state; raise on any mismatch."""
    if not isinstance(entry, dict):
        raise CacheEntryError(f"the file holds a {type(entry).__name__}, not an entry")
    if set(entry) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(entry)), sorted(set(entry) - _FIELDS)
        raise CacheEntryError(f"wrong fields (missing {missing}, unexpected {extra})")
    if entry["format"] != CACHE_FORMAT:
        raise CacheEntryError(f"format {entry['format']!r}, expected {CACHE_FORMAT}")
    if entry["inputs"] != inputs:
        raise CacheEntryError("it was stored for another configuration, data or version")
    history = _records(entry, "history", EpochRecord)
    curve = _records(entry, "curve", CurvePoint)
    test_accuracy = _optional_number(entry, "test_accuracy")
    test_metric = _optional_number(entry, "test_metric")
    diverged = entry["diverged"]
    if diverged is not None and not isinstance(diverged, str):
        raise CacheEntryError("diverged is neither text nor None")
    if (diverged is None) == (test_accuracy is None and test_metric is None):
        raise CacheEntryError("a run has test figures exactly when it did not diverge")
    model.load_state_dict(_typed(entry, "model", dict))  # strict: names and shapes must fit
    optimizer.load_state_dict(_typed(entry, "optimizer", dict))
    return CachedRun(
        history=history,
        curve=curve,
        train_seconds=float(_number(entry, "train_seconds")),
        test_loss=_optional_number(entry, "test_loss"),
        test_accuracy=test_accuracy,
        test_metric=test_metric,
        diverged=diverged,
        samples_per_epoch=int(_typed(entry, "samples_per_epoch", int)),
        peak_memory=None if entry["peak_memory"] is None else PeakMemory(
            **_typed(entry, "peak_memory", dict)),
        train_carbon=None if entry["train_carbon"] is None else Carbon(
            **_typed(entry, "train_carbon", dict)),
        time_to_target=None if entry["time_to_target"] is None else TimeToTarget(
            **_typed(entry, "time_to_target", dict)),
        ensemble=None if entry["ensemble"] is None else _typed(entry, "ensemble", str),
        threads=None if entry["threads"] is None else _typed(entry, "threads", int),
    )


def _records(entry: dict[str, Any], name: str, record_type: type) -> list[Any]:
    """A list of dataclass records whose every field is a number (``None`` where a record
    has no figure: a metric a run does not score)."""
    records = [record_type(**fields) for fields in _typed(entry, name, list)]
    if any(not isinstance(value, int | float) and value is not None for record in records
           for value in asdict(record).values()):
        raise CacheEntryError(f"{name} holds a value that is not a number")
    return records


def _typed(entry: dict[str, Any], name: str, kind: type) -> Any:
    value = entry[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CacheEntryError(f"{name} is a {type(value).__name__}, expected {kind.__name__}")
    return value


def _number(entry: dict[str, Any], name: str) -> float:
    value = entry[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise CacheEntryError(f"{name} is {value!r}, expected a number")
    return float(value)


def _optional_number(entry: dict[str, Any], name: str) -> float | None:
    return None if entry[name] is None else _number(entry, name)
