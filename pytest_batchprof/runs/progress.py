"""What a run shows while it trains: a condensed epoch history and a live progress line.

A run prints every epoch line while it has at most :data:`ALL_EPOCHS_UP_TO`
epochs; a longer one prints about :data:`CONDENSED_EPOCHS` evenly spaced
epochs plus its last (every epoch with ``-v``; the report files keep them
all). Once a run has printed nothing for :data:`SHOW_AFTER_SECONDS` (a long
epoch, or many short ones between the condensed lines), a status line gives
the epoch, the step, the samples per second and the time left for the run: on
a terminal it is redrawn in place at most every :data:`REDRAW_SECONDS`;
elsewhere (a CI log) it is a plain line after :data:`PLAIN_EVERY_SECONDS` of
silence, so a log never goes quiet for longer than that.

The engine reports progress (a :class:`~pytest_batchprof.engine.status.TrainingStatus`)
from host-side counters at most every
:data:`~pytest_batchprof.engine.training.PROGRESS_POLL_SECONDS`: nothing here waits
for the device. This module imports neither torch nor pytest; the console it
writes to is a :class:`Console`, which the plugin implements with pytest's
terminal reporter and tests with a fake.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pytest_batchprof.engine.status import TrainingStatus
    from pytest_batchprof.engine.training import EpochRecord, RunConfig

ALL_EPOCHS_UP_TO = 20
"""Runs of at most this many epochs print every epoch line."""

CONDENSED_EPOCHS = 10
"""A longer run prints this many evenly spaced epochs, the first and the last among them."""

SHOW_AFTER_SECONDS = 3.0
"""On a terminal, a run that has printed nothing for this long shows its progress line."""

REDRAW_SECONDS = 1.0
"""On a terminal, the progress line is redrawn in place at most this often."""

PLAIN_EVERY_SECONDS = 30.0
"""Elsewhere, a run that has printed nothing for this long prints a plain progress line."""


class Console(Protocol):
    """Where live output goes: whole lines, and one status line that the next output replaces."""

    @property
    def is_terminal(self) -> bool:
        """Whether a status line can be redrawn in place (a TTY)."""
        ...

    @property
    def verbose(self) -> bool:
        """Whether the user asked for every line (``-v``): a long run's every epoch."""
        ...

    def line(self, text: str) -> None:
        """Print a line that stays (a status line on screen is cleared first)."""
        ...

    def status(self, text: str) -> None:
        """Show ``text`` as the status line: in place on a terminal, else as a line."""
        ...

    def clear_status(self) -> None:
        """Remove the status line, if one is shown."""
        ...


def shown_epochs(epochs: int, verbose: bool = False) -> frozenset[int] | None:
    """The epochs whose line a run of ``epochs`` epochs prints; ``None`` for all of them."""
    if verbose or epochs <= ALL_EPOCHS_UP_TO:
        return None
    spacing = (epochs - 1) / (CONDENSED_EPOCHS - 1)
    return frozenset(1 + round(index * spacing) for index in range(CONDENSED_EPOCHS))


class RunProgress:
    """The live output of one run: its epoch lines, condensed, and its progress line.

    The engine calls :meth:`on_progress` during an epoch and :meth:`on_epoch`
    after it (the :class:`~pytest_batchprof.engine.training.TrainingObserver`
    protocol); the session calls :meth:`finish` once the run has ended.
    """

    def __init__(self, console: Console, epochs: int, verbose: bool = False,
                 indent: str = "  ", clock: Callable[[], float] = time.monotonic,
                 metric: str = "accuracy") -> None:
        self.console = console
        self.indent = indent
        self.metric = metric
        """The run's metric, by which its epoch lines name their scores (``Train rmse=``)."""
        self.shown = shown_epochs(epochs, verbose)
        self.clock = clock
        self._printed: EpochRecord | None = None
        self._silent_since = clock()
        """When this run last printed a line that stays."""
        self._last_status: float | None = None
        self._status_on_screen = False
        if self.shown is not None:
            self.console.line(
                f"{indent}(every epoch's figures are kept in the report; showing "
                f"{len(self.shown)} of {epochs} epochs here, -v shows all)")

    def on_progress(self, status: TrainingStatus) -> None:
        """Show or refresh the progress line, as often as the console allows."""
        now = self.clock()
        silent = now - self._silent_since
        if self.console.is_terminal:
            due = silent >= SHOW_AFTER_SECONDS and (
                self._last_status is None or now - self._last_status >= REDRAW_SECONDS)
        else:
            due = silent >= PLAIN_EVERY_SECONDS
        if due:
            self.console.status(self.indent + status.line())
            self._last_status = now
            self._status_on_screen = True
            if not self.console.is_terminal:  # a plain line stays: the log is not silent
                self._silent_since = now

    def on_epoch(self, config: RunConfig, record: EpochRecord) -> None:
        """Print the epoch's line if it is one of the shown epochs (a hidden epoch leaves
        the progress line on screen, for the next status to redraw)."""
        if self.shown is None or record.epoch in self.shown:
            self._print(record)

    def finish(self, history: Sequence[EpochRecord]) -> None:
        """Clear the progress line and print the last epoch if it was not shown (a run
        stopped at its target or by a diverging loss ends between the shown epochs)."""
        self._clear()
        if history and history[-1] != self._printed:
            self._print(history[-1])

    def _print(self, record: EpochRecord) -> None:
        self._clear()
        self.console.line(self.indent + record.line(self.metric))
        self._printed = record
        self._silent_since = self.clock()
        self._last_status = None

    def _clear(self) -> None:
        if self._status_on_screen:
            self.console.clear_status()
            self._status_on_screen = False
