"""Rows of one configuration that differ only in seed, folded into one row.

Reports keep one row per seed (JSON, CSV, baselines), and :func:`aggregate_seeds`
folds the rows of one configuration into one row when a table is rendered: mean ±
interval where the seeds differ, the value where they agree. Folding at render time
keeps a saved report's table identical to the one the session printed. The baseline
comparison groups a session's seeds the same way (:func:`group_seeds`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from pytest_batchprof.reports.figures import NOT_FOLDED
from pytest_batchprof.reports.stats import finite, mean_interval, seed_label
from pytest_batchprof.reports.tables import Row, merge_outcome, run_key


def group_seeds(rows: Iterable[Row]) -> list[list[Row]]:
    """Rows grouped by configuration but for the seed, groups in order of first appearance."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(run_key(row, seed=False), []).append(row)
    return list(groups.values())


def aggregate_seeds(rows: Sequence[Row]) -> list[Row]:
    """One row per configuration: a group of seeds becomes one row (see :func:`fold`)."""
    return [{**group[0], "seeds": "1"} if len(group) == 1 else fold(group)
            for group in group_seeds(rows)]


def fold(group: Sequence[Row]) -> Row:
    """The row of several seeds of one configuration.

    A number the seeds agree on stays as it is (parameters, FLOPs); one they
    differ on becomes an :class:`~pytest_batchprof.reports.stats.Interval` over the
    seeds that have it (a diverged seed has no test accuracy). A mix of text
    and numbers, as ``not reached`` beside steps to target, becomes
    ``not reached by 1 of 3``; flags that differ count the true ones
    (``2 of 3``). ``seed`` is the seeds (``0-2``), ``seeds`` their count,
    ``outcome`` the worst outcome and ``tests`` every test.
    """
    keys = list(dict.fromkeys(key for row in group for key in row))
    folded: Row = {}
    for key in keys:
        if key in NOT_FOLDED:
            continue
        values = [row.get(key) for row in group]
        folded[key] = _fold_values(values)
    folded["seed"] = seed_label(row.get("seed") for row in group)
    diverged = sum(1 for row in group if row.get("diverged"))
    folded["seeds"] = f"{len(group)}" + (f" ({diverged} diverged)" if diverged else "")
    outcome = None
    for row in group:
        if row.get("outcome") is not None:
            outcome = merge_outcome(outcome, str(row["outcome"]))
    folded["outcome"] = outcome
    folded["tests"] = list(dict.fromkeys(test for row in group for test in row.get("tests") or ()))
    return folded


def _fold_values(values: list[object]) -> object:
    if len({json.dumps(value, sort_keys=True, default=str) for value in values}) == 1:
        return values[0]
    if all(isinstance(value, bool) for value in values):  # target_reached: "2 of 3"
        return f"{sum(values)} of {len(values)}"
    numbers = finite(values)
    texts = [value for value in values if isinstance(value, str)]
    if numbers and texts:
        text = max(set(texts), key=texts.count)
        return f"{text} by {len(texts)} of {len(values)}"
    if numbers:
        return mean_interval(numbers)
    if texts:
        return " / ".join(dict.fromkeys(texts))
    return None
