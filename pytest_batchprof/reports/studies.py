"""Studies across batch sizes: the rows of one experiment but for its batch size, seed and
learning rate, grouped and titled.

A study is the rows that share every setting of
:data:`~pytest_batchprof.experiment.config.STUDY_KEYS` (a learning-rate grid or
``--lr-scaling`` gives each batch size its own rate). The grid's heat map
(:mod:`.lr_grid`) and the critical-batch fit
(:mod:`pytest_batchprof.reports.critical_batch`) read studies alike, and title them
alike: the model, data set and epochs, a detail of their own, and whatever other
setting tells the session's studies apart (``precision bf16``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from pytest_batchprof.experiment.config import STUDY_KEYS

Row = Mapping[str, object]

TITLE_KEYS = ("model", "dataset", "epochs")
"""The settings every study title names."""
MODEL_KEYS = ("input_shape", "hidden", "num_classes", "architecture", "code")
"""Settings a title leaves out even where they vary: its model's name tells them apart."""


def study_key(row: Row) -> str:
    """The study a row belongs to."""
    return json.dumps([row.get(key) for key in STUDY_KEYS], default=str)


def group_studies(rows: Iterable[Row]) -> list[list[Row]]:
    """``rows`` grouped by study, in order of first appearance."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(study_key(row), []).append(row)
    return list(groups.values())


def varying_settings(studies: Sequence[Sequence[Row]], named: Sequence[str] = ()) -> list[str]:
    """The settings that differ between ``studies`` and that neither the title's usual
    settings nor the caller's ``named`` detail already show."""
    shown = (*TITLE_KEYS, *MODEL_KEYS, *named)
    return [key for key in STUDY_KEYS if key not in shown
            and len({json.dumps(study[0].get(key), default=str) for study in studies}) > 1]


def study_title(row: Row, varying: Sequence[str], detail: str) -> str:
    """``784-1024-10 on mnist, 10 epochs, <detail>``, then each of ``varying``."""
    epochs = row.get("epochs")
    return (f"{row.get('model')} on {row.get('dataset')}, {epochs} "
            f"epoch{'' if epochs == 1 else 's'}, {detail}"
            + "".join(f", {key} {row.get(key)}" for key in varying))


def target_words(target: object) -> str:
    """``97%`` for a target accuracy of 0.97; ``the target`` when there is none."""
    return (f"{100 * float(target):g}%" if isinstance(target, int | float)
            and not isinstance(target, bool) else "the target")


def metric_of(row: Row) -> tuple[str, bool]:
    """The name of the metric a row's run is scored by, and whether higher is better
    (``accuracy``, higher, for a row written before runs had other metrics)."""
    return str(row.get("metric") or "accuracy"), row.get("higher_is_better") is not False


def row_target_words(row: Row) -> str:
    """What a row's run trained to: ``97%`` (val accuracy, ``--target-accuracy``), ``rmse
    0.3`` (its metric, ``--batchprof-target-metric``), or ``the target``."""
    target = row.get("target_metric")
    if isinstance(target, int | float) and not isinstance(target, bool):
        name = row.get("target_metric_name") or metric_of(row)[0]
        return f"{name} {float(target):g}"
    return target_words(row.get("target_accuracy"))
