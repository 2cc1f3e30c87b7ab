"""CI gates: accuracy and metric thresholds on runs, and comparison with a saved baseline.

The markers ``min_accuracy``, ``min_metric`` and ``max_metric`` bound every run a test
trains (:class:`Threshold`): its accuracy, or its metric (RMSE, F1, perplexity, the one
given with ``metric=``) from below or from above, on the test, validation or training split.

A baseline is a session's report JSON (see :mod:`pytest_batchprof.reports.storage`)
saved under a name. Each entry of it is an experiment as the user names it,
and a run of the session is compared with its entry, the mean test accuracy of
its seeds against the mean of the baseline's seeds. Only a drop of the mean
larger than ``--batchprof-fail-drop`` percentage points fails the session (an
improvement is reported, not failed), and, when asked, a training-time growth
larger than ``--batchprof-fail-slowdown`` percent. Beside each difference the
comparison says whether it is larger than the noise the seeds measured (a
Welch interval). An entry only in the baseline is listed ("not run"), never
failed; a run with no entry is listed ("new"), and with
``--batchprof-fail-missing`` its test fails (:func:`missing_entries`).

A run's entry is the baseline's run with the same **key**: a test's node id
in common, the model's id (``name=``, else its class or factory name; an
MLP's widths) and the settings a sweep varies, data set, batch size and
processes (:data:`~pytest_batchprof.experiment.config.EXPERIMENT_KEYS`). The
seeds are samples of the entry, folded into it. Everything that may change
between two commits is stored beside the key and **compared**, never matched
(:data:`~pytest_batchprof.experiment.config.COMPARED_KEYS`): the model's code
and architecture fingerprints, its parameter count, lr, optimizer, loss,
epochs, precision, the data's crop and split. A change is said in the verdict
(``model code changed since the baseline``, ``lr 0.001 -> 0.01``, ``params
61,706 -> 75,018``) and the run is judged as usual: the change a gate exists
to catch is caught. When the baseline has several entries of one key (a
learning-rate sweep in one test), the one of the very same recipe is
preferred, then the closest one not yet paired.

Baselines written by older versions still match: a row without node ids is
matched by the rest of its key, a row without ``model_id`` by the table's
model name (``784-1024-10``, ``Net (1,234)``), and a compared setting that the
row does not have is not compared (nor are the fingerprints of a row written
before the code fingerprint existed, which were computed another way).

Of a learning-rate grid (``--batchprof-lr-grid``), each side's chosen runs are
compared (the other lrs of the grid are left out on both sides), and an lr that
moved between the baseline's choice and the session's is said in the verdict
(``ok; tuned lr 0.001 -> 0.003``).

A run scored by another metric than accuracy (a regression's RMSE, a multilabel set's F1,
a language model's perplexity, ``metric=``) is compared by its test figure of that metric,
in its direction: ``--batchprof-fail-drop`` is then read as percent of the baseline's value,
and a change for the worse beyond it fails (``REGRESSION: rmse 0.52 -> 0.61 (+17.3% > 2%
allowed)``). A run scored by another metric than its entry is not compared (the change of
metric is said). The settings added with metrics (task, metric, its direction, the target
of the metric, how the data is fed, ``forward``, ``scheduler``, ``sync_batchnorm``) read
as their defaults in a row written before them (:data:`DEFAULTED_KEYS`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from tabulate import tabulate

from pytest_batchprof.experiment.config import (
    COMPARED_KEYS,
    EXPERIMENT_KEYS,
    FINGERPRINT_SAID,
    MODEL_ID_KEY,
    RunConfig,
)
from pytest_batchprof.reports.figures import ACCURACY_KEY, OUT_OF_MEMORY_KEY, TIME_KEY
from pytest_batchprof.reports.lr_grid import chosen_rows, lr_moved
from pytest_batchprof.reports.seeds import group_seeds
from pytest_batchprof.reports.stats import (
    Interval,
    difference_interval,
    finite,
    mean_interval,
    seed_label,
)
from pytest_batchprof.reports.studies import metric_of
from pytest_batchprof.reports.tables import Row, run_title
from pytest_batchprof.units import human_number

SPLITS = ("test", "val", "train")
MACHINE_KEYS = ("machine", "cpu", "device", "torch")
NEW = "new (not in baseline)"
"""The verdict of a run with no baseline entry (a failure with ``--batchprof-fail-missing``)."""
NOT_RUN = "not run (only in baseline)"
"""The verdict of a baseline entry the session did not run: listed, never failed."""
OTHER_METRIC = "not compared: scored by another metric than in the baseline"
"""The verdict of a run whose metric is not its entry's (its figures do not compare)."""

DEFAULTED_KEYS: dict[str, object] = {
    item.name: item.default for item in fields(RunConfig)
    if item.name in ("task", "metric", "higher_is_better", "target_metric", "data_feed",
                     "forward", "scheduler", "sync_batchnorm")}
"""Compared settings added with tasks and metrics, at their defaults: a baseline row written
before them was a classification run scored by accuracy, fed from memory, with no forward,
schedule or synchronised BatchNorm, and reads so (never as a change)."""

SAID_AS: dict[str, str] = {"sync_batchnorm": "sync BatchNorm", "higher_is_better": "direction"}
"""How a compared setting is named in a verdict, where its key does not read well."""


@dataclass(frozen=True)
class Threshold:
    """``@pytest.mark.min_accuracy(0.96, split="val")``, ``min_metric(0.8)`` or
    ``max_metric(0.5)``, checked: one mechanism, the marker saying which figure is bounded
    and from which side."""

    bound: float
    split: str = "test"
    marker: str = "min_accuracy"

    @property
    def upper(self) -> bool:
        """Whether the bound is a maximum (``max_metric``: an RMSE of at most 0.5)."""
        return self.marker == "max_metric"

    @classmethod
    def from_marker(cls, args: Sequence[object], kwargs: dict[str, object],
                    marker: str = "min_accuracy") -> Threshold:
        """Validate the marker's arguments; raise ``ValueError`` with what is allowed."""
        accuracy = marker == "min_accuracy"
        if len(args) != 1 or set(kwargs) - {"split"}:
            example = (f"{marker}(0.96, split='val')" if accuracy
                       else f"{marker}(0.5, split='val')")
            raise ValueError(f"{marker} takes one {'fraction' if accuracy else 'number'} and an "
                             f"optional split=, e.g. @pytest.mark.{example}")
        bound, split = args[0], kwargs.get("split", "test")
        if accuracy and (not isinstance(bound, int | float) or not 0 < bound <= 1):
            raise ValueError(f"min_accuracy({bound!r}): give a fraction above 0 and at most "
                             f"1, e.g. 0.96 for 96%")
        if not accuracy and (isinstance(bound, bool) or not isinstance(bound, int | float)
                             or not math.isfinite(bound)):
            raise ValueError(f"{marker}({bound!r}): give a number in the metric's units, e.g. "
                             f"{marker}({'0.5' if marker == 'max_metric' else '0.8'})")
        if split not in SPLITS:
            raise ValueError(f"{marker}(split={split!r}): choose one of {', '.join(SPLITS)}")
        return cls(float(bound), str(split), marker)

    def value(self, row: Row) -> float | None:
        """The bounded figure of a row: its accuracy on the split (``min_accuracy``), or its
        metric there (its accuracy, for a run whose metric is accuracy)."""
        return _figure(row, self.split, "accuracy" if self.marker == "min_accuracy"
                       else metric_name(row))

    def misses(self, value: float) -> bool:
        """Whether ``value`` is on the wrong side of the bound (at the bound passes)."""
        return value > self.bound if self.upper else value < self.bound

    def failures(self, rows: Sequence[Row]) -> list[str]:
        """One line per configuration past the bound (a diverged run always is).

        The seeds of one configuration (``--repeats``) are checked by their mean.
        """
        lines = []
        for group in group_seeds(rows):
            unfinished = [row for row in group if self.value(row) is None]
            if unfinished or len(group) == 1:  # a diverged seed fails on its own
                lines += [self._run_failure(row) for row in unfinished or group
                          if self.value(row) is None or self.misses(self.value(row))]
                continue
            values = [float(self.value(row)) for row in group]
            spread = mean_interval(values)
            if self.misses(spread.mean):
                shown, name = self._shown, self._name(group[0])
                half = (f"{spread.half_width * 100:.2f} pp" if self.marker == "min_accuracy"
                        else f"{spread.half_width:.3g}")
                each = ", ".join(shown(value) for value in values)
                lines.append(f"{_title(group)}: mean {self.split} {name} {shown(spread.mean)} "
                             f"± {half} (95% CI) is {self._side} {shown(self.bound)} "
                             f"(seeds: {each})")
        return lines

    @property
    def _side(self) -> str:
        return "above" if self.upper else "below"

    def _name(self, row: Row) -> str:
        return "accuracy" if self.marker == "min_accuracy" else metric_name(row)

    def _shown(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.2%}" if self.marker == "min_accuracy" else f"{value:.4g}"

    def _run_failure(self, row: Row) -> str:
        name = self._name(row)
        if (self.marker == "min_accuracy" and row.get(f"{self.split}_accuracy") is None
                and metric_name(row) != "accuracy" and not row.get("diverged")):
            bound = "max_metric" if row.get("higher_is_better") is False else "min_metric"
            return (f"{run_title(row)}: counts no accuracy for min_accuracy to check (it is "
                    f"scored by {metric_name(row)}); use @pytest.mark.{bound}(...) instead")
        details = figures(row) if self.marker == "min_accuracy" else metric_figures(row)
        return (f"{run_title(row)}: {self.split} {name} {self._shown(self.value(row))} is "
                f"{self._side} {self._shown(self.bound)} ({details})")


def metric_name(row: Row) -> str:
    """The name of a row's metric (``accuracy`` for a row written before runs had others)."""
    return metric_of(row)[0]


def _figure(row: Row, split: str, metric: str) -> float | None:
    """A row's figure of ``metric`` on ``split``: ``{split}_accuracy`` for accuracy, else
    ``{split}_metric`` (which a row has only when its metric is not accuracy)."""
    key = f"{split}_accuracy" if metric == "accuracy" else f"{split}_metric"
    value = row.get(key)
    return None if value is None else float(value)


def figures(row: Row) -> str:
    """The accuracies and time of a run, for messages."""
    parts = []
    for split in ("train", "val", "test"):
        value = row.get(f"{split}_accuracy")
        parts.append(f"{split} {'n/a' if value is None else f'{value:.2%}'}")
    return _with_time(row, parts)


def metric_figures(row: Row) -> str:
    """The metric on each split and the time of a run, for messages: ``train rmse 0.41,
    val rmse 0.52, test rmse 0.55, 2.0 s``."""
    name = metric_name(row)
    parts = []
    for split in ("train", "val", "test"):
        value = _figure(row, split, name)
        parts.append(f"{split} {name} {'n/a' if value is None else f'{value:.4g}'}")
    return _with_time(row, parts)


def _with_time(row: Row, parts: list[str]) -> str:
    if row.get(TIME_KEY) is not None:
        parts.append(f"{human_number(row['train_seconds'])} s")
    if row.get("diverged"):
        parts.append(f"diverged: {row['diverged']}")
    return ", ".join(parts)


def baseline_path(name_or_path: str, directory: Path) -> Path:
    """A path as given when it looks like one, else ``DIRECTORY/NAME.json``."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or len(candidate.parts) > 1 or candidate.exists():
        return candidate
    return directory / f"{name_or_path}.json"


@dataclass(frozen=True)
class Entry:
    """One configuration in the comparison: the means of its seeds on either side."""

    title: str
    baseline: float | None
    now: float | None
    baseline_seconds: float | None
    now_seconds: float | None
    verdict: str
    baseline_spread: Interval | None = None
    now_spread: Interval | None = None
    noise: Interval | None = None
    """``now - baseline`` test accuracy with its 95% interval, when both sides finished."""
    changes: tuple[str, ...] = ()
    """What changed since the baseline, in words (see :func:`changes`); also in the verdict."""
    metric: str = "accuracy"
    """The metric the figures are of (the session's; the baseline's for an entry not run)."""
    higher_is_better: bool = True

    @property
    def drop_pp(self) -> float | None:
        """Percentage points of accuracy lost (negative: gained); ``None`` for an entry of
        another metric (see :attr:`change`)."""
        if self.baseline is None or self.now is None or self.metric != "accuracy":
            return None
        return (self.baseline - self.now) * 100

    @property
    def change(self) -> str | None:
        """``now - baseline`` as the table shows it: ``+0.50 pp`` of accuracy, ``+17.3%`` of
        another metric (relative to the baseline's value)."""
        if self.baseline is None or self.now is None:
            return None
        if self.metric == "accuracy":
            return f"{(self.now - self.baseline) * 100:+.2f} pp"
        return f"{relative_change(self.baseline, self.now):+.1f}%"

    def shown(self, spread: Interval | None) -> str:
        """One side's figure: ``96.90 ± 0.30`` (accuracy in %), ``rmse 0.512 ± 0.01``."""
        if self.metric == "accuracy":
            return _percent(spread)
        if spread is None:
            return "n/a"
        half = "" if spread.half_width is None else f" ± {spread.half_width:.2g}"
        return f"{self.metric} {spread.mean:.4g}{half}"

    def seeds(self) -> str:
        """``1, 3``: the seeds behind the baseline's figure and the session's."""
        return ", ".join("0" if spread is None else str(spread.n)
                         for spread in (self.baseline_spread, self.now_spread))

    def noise_text(self) -> str:
        """Whether the difference stands out of the seed noise (see :func:`_noise_text`)."""
        return _noise_text(self.noise, self.metric)


@dataclass
class Comparison:
    """The session against its baseline."""

    baseline_path: Path
    entries: list[Entry] = field(default_factory=list)
    machine_note: str | None = None

    @property
    def regressions(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.verdict.startswith("REGRESSION")]

    @property
    def by_accuracy(self) -> bool:
        """Whether every entry is scored by accuracy (the table's figures are then in %)."""
        return all(entry.metric == "accuracy" for entry in self.entries)

    def table(self) -> str:
        body = []
        for entry in self.entries:
            time_delta = None
            if entry.baseline_seconds and entry.now_seconds is not None:
                time_delta = f"{entry.now_seconds / entry.baseline_seconds - 1:+.0%}"
            before, now = entry.shown(entry.baseline_spread), entry.shown(entry.now_spread)
            if not self.by_accuracy and entry.metric == "accuracy":
                before, now = (f"accuracy {value}%" if value != "n/a" else value
                               for value in (before, now))
            body.append([entry.title, entry.seeds(), before, now, entry.change or "n/a",
                         entry.noise_text(), time_delta or "n/a", entry.verdict])
        figure = ("baseline test acc (%)", "now test acc (%)") if self.by_accuracy else (
            "baseline test score", "now test score")
        return tabulate(body, headers=["run", "seeds (baseline, now)", *figure, "delta",
                                       "noise (95% CI of delta)", "train time", "verdict"],
                        tablefmt="github", disable_numparse=True)

    def verdict(self) -> list[str]:
        """The comparison's outcome in markdown: ``**REGRESSION** ...`` and one bullet per
        run that regressed (what fails the session), or that none did."""
        compared = sum(1 for entry in self.entries if entry.verdict not in (NEW, NOT_RUN))
        if not self.regressions:
            return [f"**No regression** against the baseline ({compared} of "
                    f"{len(self.entries)} entries compared)."]
        count = len(self.regressions)
        return [f"**REGRESSION**: {count} run{'s' if count != 1 else ''} regressed against "
                f"the baseline; the session fails.", "",
                *(f"- {entry.title}: {entry.verdict}" for entry in self.regressions)]

    def markdown(self) -> str:
        """The report's section: the baseline, the notes, the table and the verdict."""
        lines = ["## Comparison with the baseline", "", f"Baseline: `{self.baseline_path}`", "",
                 NOISE_NOTE, ""]
        if not self.by_accuracy:
            lines += [METRIC_NOTE, ""]
        if self.machine_note:
            lines += [self.machine_note, ""]
        return "\n".join([*lines, self.table(), "", *self.verdict(), ""])


NOISE_NOTE = (
    "Test accuracies are means over each side's seeds (± the half-width of the 95% Student t "
    "interval). The noise column is the 95% interval of the difference of the means "
    "(Welch): a delta inside it is within the spread the seeds showed; with one seed on "
    "each side the noise is unknown (train with --batchprof-repeats 3 to measure it)."
)

METRIC_NOTE = (
    "A run scored by another metric than accuracy (RMSE, F1, perplexity, its metric=) is "
    "compared by that metric on the test split, in its direction: its delta is the change "
    "in percent of the baseline's value, and a change for the worse (an RMSE that rose, an F1 "
    "that fell) by more than --batchprof-fail-drop percent fails the session."
)


def compare(
    rows: Sequence[Row],
    baseline: dict[str, object],
    path: Path,
    fail_drop_pp: float,
    fail_slowdown_pct: float | None,
    environment: dict[str, object],
) -> Comparison:
    """Compare every configuration with its baseline entry, mean over seeds against mean
    (of a learning-rate grid, the chosen lr's runs on either side)."""
    old_groups = group_seeds(chosen_rows(baseline["rows"]))
    groups = group_seeds(chosen_rows(rows))
    comparison = Comparison(path, machine_note=_machine_note(baseline.get("environment", {}),
                                                             environment))
    paired = _pair(groups, old_groups)
    for group, old in zip(groups, paired, strict=True):
        if old is None:
            now = _spread(group, score_key(group[0]))
            comparison.entries.append(Entry(
                _title(group), None, _mean(now), None, _mean(_spread(group, TIME_KEY)),
                NEW, now_spread=now, metric=metric_name(group[0]),
                higher_is_better=_higher_is_better(group[0])))
            continue
        entry = _entry(group, old, fail_drop_pp, fail_slowdown_pct)
        said = changes(old, group)
        comparison.entries.append(replace(entry, verdict="; ".join([entry.verdict, *said]),
                                          changes=tuple(said)))
    taken = {id(old) for old in paired if old is not None}
    for old in old_groups:
        if id(old) not in taken:
            before = _spread(old, score_key(old[0]))
            comparison.entries.append(Entry(
                _title(old), _mean(before), None, _mean(_spread(old, TIME_KEY)), None,
                NOT_RUN, baseline_spread=before, metric=metric_name(old[0]),
                higher_is_better=_higher_is_better(old[0])))
    return comparison


def same_entry(old: Row, row: Row) -> bool:
    """Whether the baseline's row ``old`` is the entry of the session's ``row``: a test's
    node id in common and the same experiment key (see the module docstring).

    Rows written by older versions match by what they have: without node ids (or a
    row of a run no test reported) by the rest of the key; without a ``model_id``, by
    the table's model name, which was then part of the key.
    """
    old_tests, tests = old.get("tests") or (), row.get("tests") or ()
    if old_tests and tests and not shared_test(old_tests, tests):
        return False
    for key in EXPERIMENT_KEYS:
        if key == MODEL_ID_KEY:
            if not _same_model(old, row):
                return False
        elif key in old and not _same(old[key], row.get(key)):
            return False
    return True


def shared_test(old_tests: Sequence[str], tests: Sequence[str]) -> bool:
    """Whether two lists of node ids name a test in common: the same id, or the same test
    named from another rootdir (one id ends the other after a ``/``,
    ``test_models.py::test_net`` and ``project/test_models.py::test_net``). pytest names
    tests relative to its rootdir, and without an ini file the rootdir moves with the
    paths on the command line: a baseline must not lose its entries to that."""
    return any(old == new or old.endswith(f"/{new}") or new.endswith(f"/{old}")
               for old in old_tests for new in tests)


def _same_model(old: Row, row: Row) -> bool:
    """The same model as a baseline knows it: the same ``model_id``; two MLPs (no id) of
    the same widths; for a row written before model ids, the same name in the table."""
    if MODEL_ID_KEY not in old:
        return _same(old.get("model"), row.get("model"))
    if old[MODEL_ID_KEY] is None and row.get(MODEL_ID_KEY) is None:
        return _same(old.get("hidden"), row.get("hidden"))
    return _same(old[MODEL_ID_KEY], row.get(MODEL_ID_KEY))


def missing_entries(rows: Sequence[Row], baseline: dict[str, object], path: Path,
                    baseline_dir: Path) -> list[str]:
    """One line per configuration among ``rows`` (a test's runs, their ``tests`` its node
    id) that has no entry in ``baseline`` (read from ``path``), saying how to record it:
    what ``--batchprof-fail-missing`` fails the test with."""
    entries = chosen_rows(baseline["rows"])
    missing = [row for row in rows if not any(same_entry(old, row) for old in entries)]
    saved = baseline_dir / f"{path.stem}.json"
    record = f"--batchprof-save {path.stem}"
    if saved.resolve() != path.resolve():  # --batchprof-save writes only under baseline_dir
        record += f" (it writes {saved}; copy that file to {path})"
    return [f"{_title(group)}: no entry in baseline {path}; record it by running the tests "
            f"with {record}" for group in group_seeds(missing)]


def changes(old: Sequence[Row], now: Sequence[Row]) -> list[str]:
    """What changed between a baseline entry's runs and the session's, in words: the
    fingerprints' (``model code changed since the baseline``), then ``params 61,706 ->
    75,018``, ``lr 0.001 -> 0.01`` and the other compared settings; an lr that a grid
    tuned is ``tuned lr 0.001 -> 0.003``.

    A setting the baseline's row does not have (written before it existed) is not
    compared, nor are the fingerprints of a row that lacks one of them.
    """
    before, row = old[0], now[0]
    tuned = lr_moved(old, now)
    said = []
    for key in _compared(before, row):
        if key == "lr" and tuned:
            said.append(tuned)
        elif key in FINGERPRINT_SAID:
            said.append(FINGERPRINT_SAID[key])
        elif key == "higher_is_better":
            said.append(f"direction {_direction(_setting(before, key))} -> "
                        f"{_direction(_setting(row, key))}")
        else:
            name = SAID_AS.get(key, key.replace("_", " "))
            said.append(f"{name} {_shown(_setting(before, key))} -> {_shown(_setting(row, key))}")
    return said


def _setting(row: Row, key: str) -> object:
    """A compared setting of a row; one added with tasks and metrics that an older row lacks
    reads as its default (:data:`DEFAULTED_KEYS`)."""
    return row[key] if key in row else DEFAULTED_KEYS[key]


def _direction(higher_is_better: object) -> str:
    return "higher is better" if higher_is_better is not False else "lower is better"


def _compared(old: Row, row: Row) -> list[str]:
    """The compared keys whose values differ, fingerprints first, then the parameter
    count, then the settings (see :func:`changes`)."""
    fingerprinted = all(key in old for key in FINGERPRINT_SAID)
    differing = [key for key in COMPARED_KEYS
                 if all(key in side or key in DEFAULTED_KEYS for side in (old, row))
                 and not _same(_setting(old, key), _setting(row, key))
                 and (fingerprinted or key not in FINGERPRINT_SAID)]
    return sorted(differing, key=lambda key: (key not in FINGERPRINT_SAID, key != "params"))


def _pair(groups: Sequence[Sequence[Row]], old_groups: Sequence[Sequence[Row]]) -> (
        list[Sequence[Row] | None]):
    """Each group's baseline entry, or ``None``: the entry of the very same recipe first
    (a learning-rate sweep in one test keeps its pairs), then the closest entry of its key
    not yet paired, else the closest of its key."""
    candidates = [[old for old in old_groups if same_entry(_keyed(old), _keyed(group))]
                  for group in groups]
    paired: list[Sequence[Row] | None] = [None] * len(groups)
    taken: set[int] = set()
    for index, group in enumerate(groups):
        same = [old for old in candidates[index]
                if id(old) not in taken and not _compared(old[0], group[0])]
        if same:
            paired[index] = same[0]
            taken.add(id(same[0]))
    for index, group in enumerate(groups):
        if paired[index] is None and candidates[index]:
            free = [old for old in candidates[index] if id(old) not in taken]
            closest = min(free or candidates[index],
                          key=lambda old: len(_compared(old[0], group[0])))
            paired[index] = closest
            taken.add(id(closest))
    return paired


def _keyed(group: Sequence[Row]) -> Row:
    """A group's first row with the node ids of all its seeds' tests (a seed another test
    shares lists that test too)."""
    tests = list(dict.fromkeys(test for row in group for test in row.get("tests") or ()))
    return {**group[0], "tests": tests}


def _shown(value: object) -> str:
    """A setting's value in a sentence: ``0.001``, ``61,706``, ``(28, 28)``, ``on``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return f"({', '.join(_shown(item) for item in value)})"
    return str(value)


def _same(old: object, new: object) -> bool:
    """Equal as JSON has them (a tuple and a list of the same items are one value)."""
    return json.dumps(old) == json.dumps(new)


def _entry(group: Sequence[Row], old: Sequence[Row], fail_drop_pp: float,
           fail_slowdown_pct: float | None) -> Entry:
    """A configuration against its baseline entry: by the mean test figure of its metric,
    in the metric's direction (accuracy in percentage points, another metric in percent of
    the baseline's value), then its fit in memory and, when asked, its training time."""
    metric, higher = metric_name(group[0]), _higher_is_better(group[0])
    key = score_key(group[0])
    comparable = metric_name(old[0]) == metric  # else the baseline's figure is not shown
    now_spread = _spread(group, key)
    before_spread = _spread(old, key) if comparable else None
    now, before = _mean(now_spread), _mean(_spread(old, score_key(old[0])))
    seconds = _mean(_spread(group, TIME_KEY))
    old_seconds = _mean(_spread(old, TIME_KEY))
    noise = None
    if now_spread is not None and before_spread is not None and comparable:
        noise = difference_interval(finite(row.get(key) for row in old),
                                    finite(row.get(key) for row in group))
    verdicts = []
    out_of_memory = [str(row[OUT_OF_MEMORY_KEY]) for row in group if row.get(OUT_OF_MEMORY_KEY)]
    fitted_before = not any(row.get(OUT_OF_MEMORY_KEY) for row in old)
    if out_of_memory:
        verdicts.append(f"REGRESSION: {out_of_memory[0]}; it fitted in the baseline"
                        if fitted_before else "out of memory, as in the baseline")
    elif not fitted_before:
        verdicts.append("fits now (out of memory in the baseline)")
    diverged = sum(1 for row in group
                   if row.get(key) is None and not row.get(OUT_OF_MEMORY_KEY))
    if diverged and before is not None:
        verdicts.append(f"REGRESSION: no test {metric} (diverged)" if now is None else
                        f"REGRESSION: {diverged} of {len(group)} seeds diverged")
    if now is not None and before is not None and not comparable:
        verdicts.append(OTHER_METRIC)
        before = None
    elif now is not None and before is not None:
        within = _within_noise(noise, metric)
        if metric == "accuracy":
            drop = round((before - now) * 100, 9)  # 0.9 - 0.895 is 0.5000000000000004 pp
            if drop > fail_drop_pp:
                verdicts.append(f"REGRESSION: -{drop:.2f} pp > {fail_drop_pp:g} pp "
                                f"allowed{within}")
            elif drop < 0:
                verdicts.append(f"improved{within}")
        else:
            change = relative_change(before, now)
            worse = round(-change if higher else change, 9)
            if worse > fail_drop_pp:
                verdicts.append(f"REGRESSION: {metric} {before:.4g} -> {now:.4g} "
                                f"({change:+.1f}% > {fail_drop_pp:g}% allowed){within}")
            elif worse < 0:
                verdicts.append(f"improved{within}")
    if fail_slowdown_pct is not None and seconds and old_seconds:
        growth = (seconds / old_seconds - 1) * 100
        if growth > fail_slowdown_pct:
            verdicts.append(f"REGRESSION: training {growth:.0f}% slower > "
                            f"{fail_slowdown_pct:g}% allowed")
    verdicts.sort(key=lambda verdict: not verdict.startswith("REGRESSION"))
    return Entry(_title(group), before, now, old_seconds, seconds,
                 "; ".join(verdicts) or "ok", before_spread, now_spread, noise,
                 metric=metric, higher_is_better=higher)


def score_key(row: Row) -> str:
    """The row key of the test figure a comparison reads: ``test_accuracy``, or
    ``test_metric`` for a run scored by another metric."""
    return ACCURACY_KEY if metric_name(row) == "accuracy" else "test_metric"


def _higher_is_better(row: Row) -> bool:
    """The direction of a row's metric (accuracy's is always up)."""
    metric, higher = metric_of(row)
    return metric == "accuracy" or higher


def relative_change(before: float, now: float) -> float:
    """``now`` against ``before`` in percent of ``before`` (signed: +17.3 is a rise); from
    a baseline of 0, any change is infinite."""
    if before == 0:
        return 0.0 if now == 0 else math.copysign(math.inf, now)
    return (now - before) / abs(before) * 100


def _spread(group: Sequence[Row], key: str) -> Interval | None:
    """Mean and interval of a figure over a group's seeds; ``None`` if no seed has it."""
    values = finite(row.get(key) for row in group)
    return mean_interval(values) if values else None


def _mean(spread: Interval | None) -> float | None:
    return None if spread is None else spread.mean


def _title(group: Sequence[Row]) -> str:
    """``... batch 32, seed 0`` for one run, ``... batch 32, seeds 0-2`` for several."""
    if len(group) == 1:
        return run_title(group[0])
    return run_title({**group[0], "seed": seed_label(row.get("seed") for row in group)})


def _noise_text(noise: Interval | None, metric: str = "accuracy") -> str:
    """``±0.45 pp: within noise``, ``±0.12 pp: beyond noise`` (``±0.013: ...`` in the units
    of another metric), or why it is not known."""
    if noise is None:
        return "n/a"
    if noise.half_width is None:
        return "unknown (1 seed each)"
    verdict = "beyond noise" if noise.excludes_zero() else "within noise"
    return f"±{_half(noise.half_width, metric)}: {verdict}"


def _within_noise(noise: Interval | None, metric: str = "accuracy") -> str:
    """`` (within noise, ±0.80 pp)`` when the seeds' spread covers the difference."""
    if noise is None or noise.half_width is None or noise.excludes_zero():
        return ""
    return f" (within noise, ±{_half(noise.half_width, metric)})"


def _half(half_width: float, metric: str) -> str:
    return f"{half_width * 100:.2f} pp" if metric == "accuracy" else f"{half_width:.2g}"


def _machine_note(old: dict[str, object], new: dict[str, object]) -> str | None:
    differences = [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in MACHINE_KEYS
                   if old.get(key) != new.get(key)]
    if not differences:
        return None
    return ("The baseline was measured on another machine or software ("
            + "; ".join(differences) + "): training times are not comparable.")


def _percent(spread: Interval | None) -> str:
    """``96.90``, or ``96.90 ± 0.30`` over several seeds."""
    if spread is None:
        return "n/a"
    if spread.half_width is None:
        return f"{spread.mean * 100:.2f}"
    return f"{spread.mean * 100:.2f} ± {spread.half_width * 100:.2f}"
