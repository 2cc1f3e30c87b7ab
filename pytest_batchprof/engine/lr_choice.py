"""The learning-rate tuning a run took part in, as the run holds it: the grid, the rate
chosen on the validation split, and each rate's score.

:func:`pytest_batchprof.runs.lr_grid.choose_lr` makes the choice; a
:class:`~pytest_batchprof.engine.training.Run` keeps it (``run.lr_choice``) and
writes it into its row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

STEPS_TO_TARGET = "steps to target"
VAL_ACCURACY = "val accuracy"


def val_criterion(metric: str) -> str:
    """The criterion of the final validation figure of runs scored by ``metric``:
    :data:`VAL_ACCURACY`, or ``val rmse`` (lowest best), ``val f1`` (highest best)..."""
    return VAL_ACCURACY if metric == "accuracy" else f"val {metric}"


@dataclass(frozen=True)
class LrChoice:
    """The outcome of tuning one configuration's learning rate over a grid."""

    grid: tuple[float, ...]
    """The rates tried, smallest first."""
    chosen: float | None
    """The rate kept; ``None`` when every rate diverged or ran out of memory."""
    criterion: str
    """:data:`STEPS_TO_TARGET`, :data:`VAL_ACCURACY` or the final validation figure of
    the runs' metric (:func:`val_criterion`)."""
    scores: Mapping[float, float | None]
    """Each rate's validation figure under the criterion (mean over seeds); ``None``
    where a seed diverged, ran out of memory or (for steps) missed the target."""

    @property
    def note(self) -> str | None:
        """The edge flag: the best rate is the grid's smallest or largest."""
        if self.chosen is None:
            return None
        if self.chosen == self.grid[-1]:
            return "best lr is the grid's largest: widen the grid"
        if self.chosen == self.grid[0]:
            return "best lr is the grid's smallest: widen the grid"
        return None

    def summary(self, lr: float) -> dict[str, object]:
        """The row figures of the run at ``lr``."""
        chosen = lr == self.chosen
        return {"lr_grid": ",".join(f"{rate:g}" for rate in self.grid),
                "lr_chosen": chosen, "lr_grid_criterion": self.criterion,
                "lr_grid_score": self.scores.get(lr), "lr_grid_note": self.note if chosen else None}

    def describe(self) -> str:
        """One line for the console."""
        if self.chosen is None:
            return "lr grid: no rate trained without diverging or running out of memory"
        scores = ", ".join(f"{rate:g}: {_shown(score, self.criterion)}"
                           for rate, score in self.scores.items())
        note = f"; {self.note}" if self.note else ""
        return (f"lr grid: chose lr={self.chosen:g} by {self.criterion} on the validation "
                f"split ({scores}){note}")


def _shown(score: float | None, criterion: str) -> str:
    if score is None:
        return "n/a"
    if criterion == STEPS_TO_TARGET:
        return f"{score:,.0f} steps"
    return f"{score:.2%}" if criterion == VAL_ACCURACY else f"{score:.4g}"
