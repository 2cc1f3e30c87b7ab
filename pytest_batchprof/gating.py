"""CI gates: accuracy thresholds on runs, and comparison with a saved baseline.

A baseline is a session's report JSON (see :mod:`pytest_batchprof.storage`)
saved under a name. Each run of the current session is compared with the
baseline run of the same configuration. Only a drop in test accuracy larger
than ``--batchprof-fail-drop`` percentage points fails the session (an
improvement is reported, not failed), and, when asked, a training-time growth
larger than ``--batchprof-fail-slowdown`` percent. A configuration present on
one side only is listed, never an error.

"The same configuration" is the experiment, not the recipe: model, data set,
input crop, activation, batch size, epochs, seed and the data split. The
learning rate, optimizer and device are left out on purpose: changing them is
the kind of change a baseline is there to judge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from pytest_batchprof.report import Row, human_number, run_key, run_title

SPLITS = ("test", "val", "train")
EXPERIMENT_KEYS = ("model", "dataset", "input_shape", "hidden", "activation", "batch_size",
                   "epochs", "seed", "train_subset", "val_fraction")
MACHINE_KEYS = ("machine", "cpu", "device", "torch")


@dataclass(frozen=True)
class Threshold:
    """``@pytest.mark.min_accuracy(0.96, split="val")``, checked."""

    minimum: float
    split: str = "test"

    @classmethod
    def from_marker(cls, args: Sequence[object], kwargs: dict[str, object]) -> Threshold:
        """Validate the marker's arguments; raise ``ValueError`` with what is allowed."""
        if len(args) != 1 or set(kwargs) - {"split"}:
            raise ValueError("min_accuracy takes one fraction and an optional split=, "
                             "e.g. @pytest.mark.min_accuracy(0.96, split='val')")
        minimum, split = args[0], kwargs.get("split", "test")
        if not isinstance(minimum, int | float) or not 0 < minimum <= 1:
            raise ValueError(f"min_accuracy({minimum!r}): give a fraction above 0 and at most "
                             f"1, e.g. 0.96 for 96%")
        if split not in SPLITS:
            raise ValueError(f"min_accuracy(split={split!r}): choose one of {', '.join(SPLITS)}")
        return cls(float(minimum), str(split))

    def failures(self, rows: Sequence[Row]) -> list[str]:
        """One line per run below the threshold (a diverged run always is)."""
        lines = []
        for row in rows:
            accuracy = row.get(f"{self.split}_accuracy")
            if accuracy is None or accuracy < self.minimum:
                shown = "n/a" if accuracy is None else f"{accuracy:.2%}"
                lines.append(f"{run_title(row)}: {self.split} accuracy {shown} is below "
                             f"{self.minimum:.2%} ({figures(row)})")
        return lines


def figures(row: Row) -> str:
    """The accuracies and time of a run, for messages."""
    parts = []
    for split in ("train", "val", "test"):
        value = row.get(f"{split}_accuracy")
        parts.append(f"{split} {'n/a' if value is None else f'{value:.2%}'}")
    if row.get("train_seconds") is not None:
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
    """One configuration in the comparison."""

    title: str
    baseline: float | None
    now: float | None
    baseline_seconds: float | None
    now_seconds: float | None
    verdict: str

    @property
    def drop_pp(self) -> float | None:
        """Percentage points lost (negative: gained)."""
        if self.baseline is None or self.now is None:
            return None
        return (self.baseline - self.now) * 100


@dataclass
class Comparison:
    """The session against its baseline."""

    baseline_path: Path
    entries: list[Entry] = field(default_factory=list)
    machine_note: str | None = None

    @property
    def regressions(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.verdict.startswith("REGRESSION")]

    def table(self) -> str:
        body = []
        for entry in self.entries:
            delta = (None if entry.drop_pp is None
                     else f"{(entry.now - entry.baseline) * 100:+.2f} pp")
            time_delta = None
            if entry.baseline_seconds and entry.now_seconds is not None:
                time_delta = f"{entry.now_seconds / entry.baseline_seconds - 1:+.0%}"
            body.append([entry.title, _percent(entry.baseline), _percent(entry.now),
                         delta or "n/a", time_delta or "n/a", entry.verdict])
        return tabulate(body, headers=["run", "baseline test acc (%)", "now test acc (%)",
                                       "delta", "train time", "verdict"],
                        tablefmt="github", disable_numparse=True)

    def markdown(self) -> str:
        lines = ["## Comparison with the baseline", "", f"Baseline: `{self.baseline_path}`", ""]
        if self.machine_note:
            lines += [self.machine_note, ""]
        return "\n".join([*lines, self.table(), ""])


def compare(
    rows: Sequence[Row],
    baseline: dict[str, object],
    path: Path,
    fail_drop_pp: float,
    fail_slowdown_pct: float | None,
    environment: dict[str, object],
) -> Comparison:
    """Compare every run with the baseline run of the same configuration."""
    exact = {run_key(row): row for row in baseline["rows"]}
    by_experiment = {experiment_key(row): row for row in baseline["rows"]}
    comparison = Comparison(path, machine_note=_machine_note(baseline.get("environment", {}),
                                                             environment))
    seen: set[int] = set()
    for row in rows:
        # the same recipe first (a learning-rate sweep keeps its pairs), else the experiment
        old = exact.get(run_key(row)) or by_experiment.get(experiment_key(row))
        if old is not None:
            seen.add(id(old))
        if old is None:
            comparison.entries.append(Entry(run_title(row), None, row.get("test_accuracy"), None,
                                            row.get("train_seconds"), "new (not in baseline)"))
            continue
        comparison.entries.append(_entry(row, old, fail_drop_pp, fail_slowdown_pct))
    for old in baseline["rows"]:
        if id(old) not in seen:
            comparison.entries.append(Entry(run_title(old), old.get("test_accuracy"), None,
                                            old.get("train_seconds"), None,
                                            "not run (only in baseline)"))
    return comparison


def experiment_key(row: Row) -> str:
    """What a run is compared by (see the module docstring)."""
    return json.dumps([row.get(key) for key in EXPERIMENT_KEYS])


def _entry(row: Row, old: Row, fail_drop_pp: float, fail_slowdown_pct: float | None) -> Entry:
    now, before = row.get("test_accuracy"), old.get("test_accuracy")
    seconds, old_seconds = row.get("train_seconds"), old.get("train_seconds")
    verdicts = []
    if now is None and before is not None:
        verdicts.append("REGRESSION: no test accuracy (diverged)")
    elif now is not None and before is not None:
        drop = round((before - now) * 100, 9)  # 0.9 - 0.895 is 0.5000000000000004 pp
        if drop > fail_drop_pp:
            verdicts.append(f"REGRESSION: -{drop:.2f} pp > {fail_drop_pp:g} pp allowed")
        elif drop < 0:
            verdicts.append("improved")
    if fail_slowdown_pct is not None and seconds and old_seconds:
        growth = (seconds / old_seconds - 1) * 100
        if growth > fail_slowdown_pct:
            verdicts.append(f"REGRESSION: training {growth:.0f}% slower > "
                            f"{fail_slowdown_pct:g}% allowed")
    verdicts.sort(key=lambda verdict: not verdict.startswith("REGRESSION"))
    return Entry(run_title(row), before, now, old_seconds, seconds,
                 "; ".join(verdicts) or "ok")


def _machine_note(old: dict[str, object], new: dict[str, object]) -> str | None:
    differences = [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in MACHINE_KEYS
                   if old.get(key) != new.get(key)]
    if not differences:
        return None
    return ("The baseline was measured on another machine or software ("
            + "; ".join(differences) + "): training times are not comparable.")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}"
