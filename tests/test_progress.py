"""Live progress while a run trains: condensed epoch lines and the progress (status) line.

Three layers, from the inside out:

* :mod:`pytest_batchprof.runs.progress` on its own: which epochs a run prints, how a
  duration and a :class:`TrainingStatus` read, and when :class:`RunProgress`
  draws, clears and prints, driven by a fake console and a fake clock;
* :class:`pytest_batchprof.plugin.terminal.TerminalConsole` on a real pytest
  ``TerminalReporter`` that writes into a string stream, as a TTY and not;
* real pytest sessions (pytester, in-process) that train on the offline
  ``digits`` data set.
"""

from __future__ import annotations

import importlib
import io
import itertools
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from pytest_batchprof.engine import training
from pytest_batchprof.engine.status import TrainingStatus, duration
from pytest_batchprof.engine.training import EpochRecord, RunConfig
from pytest_batchprof.plugin.terminal import TerminalConsole
from pytest_batchprof.runs import progress as progress_module
from pytest_batchprof.runs.progress import (
    ALL_EPOCHS_UP_TO,
    CONDENSED_EPOCHS,
    PLAIN_EVERY_SECONDS,
    REDRAW_SECONDS,
    SHOW_AFTER_SECONDS,
    RunProgress,
    shown_epochs,
)

# ---------------------------------------------------------------- fakes and helpers


@dataclass
class FakeConsole:
    """A :class:`~pytest_batchprof.runs.progress.Console` that records every call in order."""

    is_terminal: bool = True
    verbose: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    """``("line", text)``, ``("status", text)`` and ``("clear", "")``, as they were made."""

    def line(self, text: str) -> None:
        self.calls.append(("line", text))

    def status(self, text: str) -> None:
        self.calls.append(("status", text))

    def clear_status(self) -> None:
        self.calls.append(("clear", ""))

    @property
    def lines(self) -> list[str]:
        """The texts of the lines printed so far."""
        return [text for kind, text in self.calls if kind == "line"]

    @property
    def statuses(self) -> list[str]:
        """The texts of the status lines drawn so far."""
        return [text for kind, text in self.calls if kind == "status"]

    def kinds(self) -> list[str]:
        """The kinds of the calls so far: ``["status", "clear", "line", ...]``."""
        return [kind for kind, _ in self.calls]


@dataclass
class FakeClock:
    """A monotonic clock that only moves when a test sets :attr:`now`."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def record(epoch: int) -> EpochRecord:
    """An epoch's figures; only the epoch number matters to the progress output."""
    return EpochRecord(epoch, train_loss=0.5, train_accuracy=0.9, val_loss=0.6,
                       val_accuracy=0.85, train_seconds=1.0, eval_seconds=0.1)


CONFIG = RunConfig(
    dataset="digits", input_shape=(8, 8), hidden=(8,), num_classes=10, activation="relu",
    batch_size=64, epochs=200, lr=1e-3, optimizer="adam", seed=0, device="cpu",
    train_subset=None, val_fraction=1 / 12)
"""The run the engine passes to ``on_epoch`` (progress output does not depend on it)."""


def status_at(epoch_seconds: float, epoch: int = 1, epochs: int = 200,
              stops_early: bool = False) -> TrainingStatus:
    """Where a run of 100 steps of 10 samples per epoch stands ``epoch_seconds`` into ``epoch``,
    at a steady 10 steps per second."""
    step = min(int(epoch_seconds * 10), 100)
    done = (epoch - 1) * 1000 + step * 10
    return TrainingStatus(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=100,
                          samples_done=done, total_samples=epochs * 1000,
                          run_seconds=(epoch - 1) * 10.0 + epoch_seconds,
                          stops_early=stops_early)


def drawn_at(progress: RunProgress, console: FakeConsole, clock: FakeClock,
             seconds: Iterable[float], epoch: int = 1, epoch_started: float = 1000.0
             ) -> list[float]:
    """Report one status per time in ``seconds`` (since ``epoch`` started at clock time
    ``epoch_started``) to ``progress``; the times at which a status line was drawn."""
    drawn = []
    for elapsed in seconds:
        clock.now = epoch_started + elapsed
        before = len(console.statuses)
        progress.on_progress(status_at(elapsed, epoch=epoch))
        if len(console.statuses) > before:
            drawn.append(elapsed)
    return drawn


def make_progress(epochs: int = 3, terminal: bool = True, verbose: bool = False
                  ) -> tuple[RunProgress, FakeConsole, FakeClock]:
    """A :class:`RunProgress` of an ``epochs``-epoch run on a fake console and clock."""
    console = FakeConsole(is_terminal=terminal)
    clock = FakeClock()
    return RunProgress(console, epochs, verbose=verbose, clock=clock), console, clock


def note(shown: int, epochs: int) -> str:
    """The line a condensed run prints first."""
    return (f"  (every epoch's figures are kept in the report; showing {shown} of {epochs} "
            f"epochs here, -v shows all)")


# ---------------------------------------------------------------- shown_epochs


@pytest.mark.parametrize("epochs", [1, 2, 10, ALL_EPOCHS_UP_TO])
def test_short_runs_show_every_epoch(epochs: int) -> None:
    assert ALL_EPOCHS_UP_TO == 20
    assert shown_epochs(epochs) is None


@pytest.mark.parametrize("epochs", [1, 21, 200, 10_000])
def test_verbose_shows_every_epoch(epochs: int) -> None:
    assert shown_epochs(epochs, verbose=True) is None


@pytest.mark.parametrize(("epochs", "shown"), [
    (200, {1, 23, 45, 67, 89, 112, 134, 156, 178, 200}),
    (21, {1, 3, 5, 8, 10, 12, 14, 17, 19, 21}),
    (ALL_EPOCHS_UP_TO + 1, {1, 3, 5, 8, 10, 12, 14, 17, 19, 21}),
])
def test_long_runs_show_ten_evenly_spaced_epochs(epochs: int, shown: set[int]) -> None:
    assert shown_epochs(epochs) == shown


def test_condensed_epochs_are_ten_spread_from_the_first_to_the_last() -> None:
    for epochs in range(ALL_EPOCHS_UP_TO + 1, 1001):
        shown = sorted(shown_epochs(epochs) or ())
        assert len(shown) == CONDENSED_EPOCHS == 10, epochs
        assert (shown[0], shown[-1]) == (1, epochs)
        gaps = {later - earlier for earlier, later in itertools.pairwise(shown)}
        assert max(gaps) - min(gaps) <= 1, (epochs, shown)  # evenly spaced, to the epoch


# ---------------------------------------------------------------- duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"),
    (0.4, "0 s"),
    (44.6, "45 s"),
    (59.4, "59 s"),
    (59.6, "1 min 00 s"),
    (60, "1 min 00 s"),
    (185, "3 min 05 s"),
    (3599, "59 min 59 s"),
    (3600, "1 h 00 min"),
    (7620, "2 h 07 min"),
    (3659, "1 h 01 min"),  # minutes are rounded too, not cut
    (7199, "2 h 00 min"),
    (25 * 3600, "25 h 00 min"),
])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


# ---------------------------------------------------------------- TrainingStatus


def example_status(stops_early: bool = False) -> TrainingStatus:
    """The docstring's example: 23,450 samples in 10 s, 83 s of the planned run left."""
    return TrainingStatus(epoch=3, epochs=200, step=1200, steps_per_epoch=3438,
                          samples_done=23_450, total_samples=23_450 + 83 * 2345,
                          run_seconds=10.0, stops_early=stops_early)


def test_status_rate_and_time_left() -> None:
    status = example_status()
    assert status.samples_per_second == pytest.approx(2345)
    assert status.seconds_left == pytest.approx(83)


def test_status_line() -> None:
    assert example_status().line() == (
        "epoch 3/200, step 1,200/3,438, 2,345 samples/s, 1 min 23 s left")


def test_status_line_of_a_run_that_may_stop_early_gives_an_upper_bound() -> None:
    assert example_status(stops_early=True).line() == (
        "epoch 3/200, step 1,200/3,438, 2,345 samples/s, at most 1 min 23 s left")


def small_status(**changes: object) -> TrainingStatus:
    """The first step of a 2-epoch run of 10 steps (640 samples planned), with ``changes``."""
    fields: dict[str, object] = dict(epoch=1, epochs=2, step=0, steps_per_epoch=10,
                                     samples_done=0, total_samples=640, run_seconds=0.0)
    return TrainingStatus(**{**fields, **changes})


def test_status_without_elapsed_time_has_no_rate_and_no_time_left() -> None:
    status = small_status(stops_early=True)
    assert math.isnan(status.samples_per_second)
    assert math.isnan(status.seconds_left)
    assert status.line() == "epoch 1/2, step 0/10"


def test_status_without_samples_has_a_zero_rate_and_no_time_left() -> None:
    status = small_status(run_seconds=1.0)
    assert status.samples_per_second == 0
    assert math.isnan(status.seconds_left)
    assert status.line() == "epoch 1/2, step 0/10, 0 samples/s"


def test_status_past_the_planned_samples_has_nothing_left() -> None:
    status = small_status(epoch=2, step=10, samples_done=700, run_seconds=2.0)
    assert status.seconds_left == 0
    assert status.line().endswith(", 350 samples/s, 0 s left")


# ---------------------------------------------------------------- RunProgress: status line


@pytest.mark.parametrize("terminal", [True, False])
def test_no_status_before_the_run_has_been_silent_for_a_while(terminal: bool) -> None:
    progress, console, clock = make_progress(terminal=terminal)
    early = [0.0, 0.5, 1.0, SHOW_AFTER_SECONDS / 2, SHOW_AFTER_SECONDS - 0.25]
    assert drawn_at(progress, console, clock, early) == []
    assert console.calls == []


def test_terminal_status_is_redrawn_at_most_every_redraw_interval() -> None:
    progress, console, clock = make_progress(terminal=True)
    start, every = SHOW_AFTER_SECONDS, REDRAW_SECONDS
    times = [start - 0.25, start, start + every / 4, start + every / 2, start + every * 0.75,
             start + every, start + every * 1.5, start + every * 2.25, start + every * 2.5,
             start + every * 3.25]
    assert drawn_at(progress, console, clock, times) == [
        start, start + every, start + every * 2.25, start + every * 3.25]
    assert console.kinds() == ["status"] * 4  # redrawn in place: no clearing, no lines
    assert console.statuses[0] == "  " + status_at(start).line()


def test_plain_status_lines_wait_for_the_plain_interval_and_repeat_at_it() -> None:
    progress, console, clock = make_progress(terminal=False)
    every = PLAIN_EVERY_SECONDS
    times = [SHOW_AFTER_SECONDS, SHOW_AFTER_SECONDS + REDRAW_SECONDS, every / 2,
             every - 0.25, every, every + REDRAW_SECONDS, every * 1.5, every * 2 - 0.25,
             every * 2, every * 2.5, every * 3 + 0.25]
    assert drawn_at(progress, console, clock, times) == [every, every * 2, every * 3 + 0.25]
    assert console.statuses == ["  " + status_at(t).line()
                                for t in (every, every * 2, every * 3 + 0.25)]


def test_status_text_is_indented_and_carries_the_at_most_wording() -> None:
    console, clock = FakeConsole(), FakeClock()
    progress = RunProgress(console, 3, indent="    ", clock=clock)
    status = status_at(SHOW_AFTER_SECONDS, stops_early=True)
    clock.now += SHOW_AFTER_SECONDS
    progress.on_progress(status)
    assert console.statuses == ["    " + status.line()]
    assert ", at most " in console.statuses[0]


@pytest.mark.parametrize("terminal", [True, False])
def test_each_epoch_waits_again_before_its_first_status(terminal: bool) -> None:
    progress, console, clock = make_progress(terminal=terminal)
    first = SHOW_AFTER_SECONDS if terminal else PLAIN_EVERY_SECONDS
    assert drawn_at(progress, console, clock, [first]) == [first]
    progress.on_epoch(CONFIG, record(1))
    # the next epoch starts right away: its early steps show nothing, and its first status
    # comes when it has run long enough, however recently the last epoch's status was drawn
    started = clock.now
    times = [0.0, SHOW_AFTER_SECONDS - 0.25, first]
    assert drawn_at(progress, console, clock, times, epoch=2, epoch_started=started) == [first]


def test_a_new_epoch_does_not_wait_for_the_last_epochs_redraw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where redraws are rarer than :data:`SHOW_AFTER_SECONDS` (not so with the defaults), a
    new epoch still shows its first status once it has run that long."""
    monkeypatch.setattr(progress_module, "REDRAW_SECONDS", 10 * SHOW_AFTER_SECONDS)
    progress, console, clock = make_progress(terminal=True)
    late = 2 * SHOW_AFTER_SECONDS
    assert drawn_at(progress, console, clock, [SHOW_AFTER_SECONDS, late]) == [SHOW_AFTER_SECONDS]
    progress.on_epoch(CONFIG, record(1))
    started = clock.now
    assert drawn_at(progress, console, clock, [SHOW_AFTER_SECONDS, late], epoch=2,
                    epoch_started=started) == [SHOW_AFTER_SECONDS]


# ---------------------------------------------------------------- RunProgress: epoch lines


def test_epoch_line_clears_a_shown_status_first() -> None:
    progress, console, clock = make_progress(terminal=True)
    drawn_at(progress, console, clock, [SHOW_AFTER_SECONDS])
    progress.on_epoch(CONFIG, record(1))
    assert console.kinds() == ["status", "clear", "line"]
    assert console.lines == ["  " + record(1).line()]


def test_epoch_line_without_a_status_clears_nothing() -> None:
    progress, console, _ = make_progress()
    progress.on_epoch(CONFIG, record(1))
    progress.on_epoch(CONFIG, record(2))
    assert console.calls == [("line", "  Epoch 01, Train acc=0.900, Val acc=0.850, "
                                      "Train loss=0.500, Val loss=0.600"),
                             ("line", "  " + record(2).line())]


def test_a_status_is_cleared_once() -> None:
    progress, console, clock = make_progress(terminal=True)
    drawn_at(progress, console, clock, [SHOW_AFTER_SECONDS])
    history = [record(1), record(2)]
    for epoch_record in history:
        progress.on_epoch(CONFIG, epoch_record)
    progress.finish(history)
    assert console.kinds() == ["status", "clear", "line", "line"]


def test_a_plain_status_is_cleared_too() -> None:
    """A shown status is always cleared; what that means is the console's business (off a
    terminal :class:`TerminalConsole` does nothing, see ``test_plain_status_lines_stay``)."""
    progress, console, clock = make_progress(terminal=False)
    drawn_at(progress, console, clock, [PLAIN_EVERY_SECONDS])
    progress.on_epoch(CONFIG, record(1))
    assert console.kinds() == ["status", "clear", "line"]


@pytest.mark.parametrize("epochs", [1, 3, ALL_EPOCHS_UP_TO])
def test_short_run_prints_every_epoch_and_no_note(epochs: int) -> None:
    progress, console, _ = make_progress(epochs=epochs)
    history = [record(epoch) for epoch in range(1, epochs + 1)]
    for epoch_record in history:
        progress.on_epoch(CONFIG, epoch_record)
    progress.finish(history)
    assert console.lines == ["  " + epoch_record.line() for epoch_record in history]


def test_long_run_prints_a_note_then_the_shown_epochs() -> None:
    progress, console, _ = make_progress(epochs=200)
    assert console.calls == [("line", note(10, 200))]  # once, at construction
    history = [record(epoch) for epoch in range(1, 201)]
    for epoch_record in history:
        progress.on_epoch(CONFIG, epoch_record)
    progress.finish(history)
    shown = sorted(shown_epochs(200) or ())
    assert console.lines == [note(10, 200)] + ["  " + record(epoch).line() for epoch in shown]
    assert console.lines[1].startswith("  Epoch 01,")
    assert console.lines[-1].startswith("  Epoch 200,")


def test_verbose_long_run_prints_every_epoch_and_no_note() -> None:
    progress, console, _ = make_progress(epochs=200, verbose=True)
    history = [record(epoch) for epoch in range(1, 201)]
    for epoch_record in history:
        progress.on_epoch(CONFIG, epoch_record)
    progress.finish(history)
    assert console.lines == ["  " + epoch_record.line() for epoch_record in history]


def test_hidden_epoch_leaves_the_status_for_the_next_redraw() -> None:
    progress, console, clock = make_progress(epochs=200)
    drawn_at(progress, console, clock, [SHOW_AFTER_SECONDS], epoch=2)
    progress.on_epoch(CONFIG, record(2))  # not a shown epoch: nothing is printed or cleared
    assert console.kinds() == ["line", "status"]  # the note, the status
    later = SHOW_AFTER_SECONDS + REDRAW_SECONDS
    assert drawn_at(progress, console, clock, [later], epoch=3) == [later]
    assert console.kinds() == ["line", "status", "status"]  # redrawn in place


@pytest.mark.parametrize("terminal", [True, False])
def test_many_short_hidden_epochs_never_leave_the_output_silent(terminal: bool) -> None:
    """200 epochs of 2.5 s: each is shorter than any wait, but between the condensed
    epoch lines the run is silent for minutes, so progress shows all the same."""
    progress, console, clock = make_progress(epochs=200, terminal=terminal)
    started, outputs = clock.now, [clock.now]
    for epoch in range(1, 201):
        for tick in range(10):  # the engine polls every 0.25 s
            clock.now = started + (epoch - 1) * 2.5 + tick * 0.25
            before = len(console.calls)
            progress.on_progress(status_at(tick * 0.25, epoch=epoch))
            if len(console.calls) > before:
                outputs.append(clock.now)
        clock.now = started + epoch * 2.5
        before = len(console.calls)
        progress.on_epoch(CONFIG, record(epoch))
        if len(console.calls) > before:
            outputs.append(clock.now)
    gaps = [later - earlier for earlier, later in itertools.pairwise(outputs)]
    longest = SHOW_AFTER_SECONDS if terminal else PLAIN_EVERY_SECONDS
    assert max(gaps) <= longest + 0.25
    assert len(console.lines) == 1 + 10  # the note and the ten shown epochs, as before


# ---------------------------------------------------------------- RunProgress: finish


def test_finish_prints_the_last_epoch_of_a_run_stopped_between_shown_epochs() -> None:
    progress, console, clock = make_progress(epochs=200)
    history = [record(epoch) for epoch in range(1, 51)]
    for epoch_record in history:
        progress.on_epoch(CONFIG, epoch_record)
    # the loss diverges in epoch 51, after its status was shown: the engine keeps no record
    drawn_at(progress, console, clock, [SHOW_AFTER_SECONDS], epoch=51)
    progress.finish(history)
    assert console.kinds()[-3:] == ["status", "clear", "line"]
    assert console.lines == [note(10, 200)] + [
        "  " + record(epoch).line() for epoch in (1, 23, 45, 50)]


def test_finish_does_not_print_the_last_epoch_twice() -> None:
    progress, console, _ = make_progress(epochs=200)
    history = [record(epoch) for epoch in range(1, 46)]  # stopped at shown epoch 45
    for epoch_record in history:
        progress.on_epoch(CONFIG, epoch_record)
    progress.finish(history)
    progress.finish(history)
    assert console.lines == [note(10, 200)] + [
        "  " + record(epoch).line() for epoch in (1, 23, 45)]


def test_finish_of_a_run_without_epochs_only_clears_the_status() -> None:
    progress, console, clock = make_progress()
    drawn_at(progress, console, clock, [SHOW_AFTER_SECONDS])
    progress.finish([])
    assert console.kinds() == ["status", "clear"]
    progress.finish([])
    assert console.kinds() == ["status", "clear"]


# ---------------------------------------------------------------- TerminalConsole

WIDTH = 60
"""The terminal width of the reporters below (the real one depends on the machine)."""

STATUS = "  epoch 1/2, step 3/21, 1,234 samples/s"
"""A status line shorter than :data:`WIDTH`."""


class TtyStream(io.StringIO):
    """A string stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class PipeStream(io.StringIO):
    """A string stream that says it is not a terminal (a CI log, a pipe)."""

    def isatty(self) -> bool:
        return False


class FakePluginManager:
    """The plugin manager of :class:`FakeConfig`: answers ``get_plugin`` from a dict."""

    def __init__(self, plugins: dict[str, object]) -> None:
        self.plugins = plugins

    def get_plugin(self, name: str) -> object | None:
        return self.plugins.get(name)


class FakeConfig:
    """As much of a ``pytest.Config`` as :class:`TerminalConsole` reads."""

    def __init__(self, terminal: pytest.TerminalReporter, verbosity: int = 0,
                 capture: object | None = None) -> None:
        self.verbosity = verbosity
        self.pluginmanager = FakePluginManager(
            {"terminalreporter": terminal, "capturemanager": capture})

    def get_verbosity(self, verbosity_type: str | None = None) -> int:
        return self.verbosity


class FakeCapture:
    """A capture manager that logs when capturing is suspended and resumed."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @contextmanager
    def global_and_fixture_disabled(self) -> Iterator[None]:
        self.log.append("suspend")
        yield
        self.log.append("resume")


class LoggingTtyStream(TtyStream):
    """A terminal stream that adds ``write`` to a shared log on every write."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def write(self, text: str) -> int:
        self.log.append("write")
        return super().write(text)


def reporter_on(config: pytest.Config, stream: io.StringIO) -> pytest.TerminalReporter:
    """A real terminal reporter writing into ``stream``, :data:`WIDTH` columns wide."""
    reporter = pytest.TerminalReporter(config, file=stream)
    reporter._tw.fullwidth = WIDTH
    return reporter


def console_on(reporter: pytest.TerminalReporter, verbosity: int = 0,
               capture: object | None = None) -> TerminalConsole:
    """A :class:`TerminalConsole` of a session whose terminal reporter is ``reporter``."""
    return TerminalConsole(cast(pytest.Config, FakeConfig(reporter, verbosity, capture)))


def screen(written: str) -> list[str]:
    """The rows a terminal shows after ``written``: a carriage return moves back to the
    row's start and later characters overwrite earlier ones; trailing blanks are dropped.
    The last row is where the cursor is (``""`` after a final newline)."""
    rows = []
    for raw in written.split("\n"):
        cells: list[str] = []
        for index, part in enumerate(raw.split("\r")):
            column = 0 if index else len(cells)
            for char in part:
                if column < len(cells):
                    cells[column] = char
                else:
                    cells.append(char)
                column += 1
        rows.append("".join(cells).rstrip())
    return rows


@pytest.fixture
def tty(pytestconfig: pytest.Config) -> tuple[TerminalConsole, io.StringIO]:
    """A console on a terminal reporter that writes to a (fake) TTY, and its stream."""
    stream = TtyStream()
    return console_on(reporter_on(pytestconfig, stream)), stream


@pytest.fixture
def pipe(pytestconfig: pytest.Config) -> tuple[TerminalConsole, io.StringIO]:
    """A console on a terminal reporter that writes to a non-TTY stream, and its stream."""
    stream = PipeStream()
    return console_on(reporter_on(pytestconfig, stream)), stream


def test_console_knows_a_terminal(tty: tuple[TerminalConsole, io.StringIO],
                                  pipe: tuple[TerminalConsole, io.StringIO]) -> None:
    assert tty[0].is_terminal is True
    assert pipe[0].is_terminal is False


@pytest.mark.parametrize(("verbosity", "verbose"), [(-1, False), (0, False), (1, True),
                                                    (2, True)])
def test_console_verbose_is_dash_v(pytestconfig: pytest.Config, verbosity: int,
                                   verbose: bool) -> None:
    console = console_on(reporter_on(pytestconfig, TtyStream()), verbosity)
    assert console.verbose is verbose


def test_tty_status_is_one_line_drawn_from_its_start(
        tty: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = tty
    console.status(STATUS)
    assert stream.getvalue() == "\r" + STATUS.ljust(WIDTH - 1)  # no newline, blanks to erase
    assert screen(stream.getvalue()) == [STATUS]


def test_tty_status_is_redrawn_in_place(tty: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = tty
    console.status(STATUS)
    console.status("  epoch 1/2, step 9/21")  # shorter: the blanks erase the rest
    assert "\n" not in stream.getvalue()
    assert stream.getvalue().count("\r") == 2
    assert screen(stream.getvalue()) == ["  epoch 1/2, step 9/21"]


def test_tty_status_is_cut_to_the_terminal_width(
        tty: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = tty
    long = "  " + "x" * (2 * WIDTH)
    console.status(long)
    assert stream.getvalue() == "\r" + long[:WIDTH - 1]
    assert screen(stream.getvalue()) == [long[:WIDTH - 1]]


def test_tty_status_starts_below_the_row_of_dots(pytestconfig: pytest.Config) -> None:
    stream = TtyStream()
    reporter = reporter_on(pytestconfig, stream)
    reporter.write("test_x.py .")  # as pytest writes a file's results, then
    reporter.currentfspath = Path("test_x.py")  # remembers that the row is open
    console = console_on(reporter)
    console.status(STATUS)
    console.status(STATUS + "!")
    assert screen(stream.getvalue()) == ["test_x.py .", STATUS + "!"]


def test_tty_line_replaces_the_status(tty: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = tty
    console.status(STATUS)
    console.line("  Epoch 01, Train acc=0.9")
    rows = screen(stream.getvalue())
    assert rows == ["  Epoch 01, Train acc=0.9", ""]
    assert not any(STATUS.strip() in row for row in rows)


def test_tty_status_after_a_line_goes_below_it(
        tty: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = tty
    console.status(STATUS)
    console.line("  Epoch 01")
    console.status("  epoch 2/2, step 1/21")
    console.line("  Epoch 02")
    assert screen(stream.getvalue()) == ["  Epoch 01", "  Epoch 02", ""]


def test_tty_clear_status_leaves_nothing_visible(
        tty: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = tty
    console.status(STATUS)
    console.clear_status()
    assert screen(stream.getvalue()) == [""]
    written = len(stream.getvalue())
    console.clear_status()  # nothing left to clear
    console.line("  trained in 1.00 s")  # and nothing to erase before the line
    assert stream.getvalue()[written:] == "  trained in 1.00 s\n"
    assert screen(stream.getvalue()) == ["  trained in 1.00 s", ""]


def test_tty_lines_without_a_status_are_plain(
        tty: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = tty
    console.clear_status()
    console.line("batchprof: training 64-8-10 on digits")
    console.line("  Epoch 01")
    assert stream.getvalue() == "batchprof: training 64-8-10 on digits\n  Epoch 01\n"


def test_plain_status_lines_stay(pipe: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = pipe
    console.status(STATUS)
    console.status("  epoch 1/2, step 9/21")
    console.clear_status()
    console.line("  Epoch 01")
    assert stream.getvalue() == f"{STATUS}\n  epoch 1/2, step 9/21\n  Epoch 01\n"


def test_plain_status_lines_are_not_cut(pipe: tuple[TerminalConsole, io.StringIO]) -> None:
    console, stream = pipe
    long = "  " + "x" * (2 * WIDTH)
    console.status(long)
    assert stream.getvalue() == long + "\n"


@pytest.mark.parametrize("stream_class", [TtyStream, PipeStream])
def test_quiet_console_writes_nothing(pytestconfig: pytest.Config,
                                      stream_class: type[io.StringIO]) -> None:
    stream = stream_class()
    log: list[str] = []
    console = console_on(reporter_on(pytestconfig, stream), verbosity=-1,
                         capture=FakeCapture(log))
    assert console.is_terminal is False
    console.line("batchprof: training")
    console.status(STATUS)
    console.clear_status()
    assert stream.getvalue() == ""
    assert log == []  # and leaves capturing alone


def test_console_writes_with_capturing_suspended(pytestconfig: pytest.Config) -> None:
    log: list[str] = []
    console = console_on(reporter_on(pytestconfig, LoggingTtyStream(log)),
                         capture=FakeCapture(log))
    for write in (lambda: console.status(STATUS), console.clear_status,
                  lambda: console.line("  Epoch 01")):
        log.clear()
        write()
        assert log[0] == "suspend"
        assert log[-1] == "resume"
        assert log.count("suspend") == log.count("resume") == 1
        assert "write" in log


# ---------------------------------------------------------------- real sessions

Runner = Callable[..., pytest.RunResult]
"""The :func:`run_digits` fixture: ``run_digits(*args)`` runs a session with ``args``."""

TRAIN = """
def test_run(trained_mlp):
    trained_mlp(hidden=(8,), batch_size=64)
"""

DIGITS_STEPS = 21
"""Optimizer steps of a digits epoch at batch 64: 1,797 images less a test fifth (360) and a
twelfth for validation (120) leave 1,317 training samples."""

PROGRESS_LINE = re.compile(
    r"^  epoch (?P<epoch>\d+)/(?P<epochs>\d+), step (?P<step>\d+)/(?P<steps>\d+), "
    r"[\d,]+ samples/s, (?P<at_most>at most )?"
    r"(\d+ s|\d+ min \d\d s|\d+ h \d\d min) left$")


PRELOADED = ("sklearn.datasets", "fvcore.nn", "torch.utils.benchmark",
             "pytest_batchprof.reports.plots")
"""What a session imports on first use (the digits loader, FLOP counting, latency timing, the
report's plots); see :func:`preloaded`."""


@pytest.fixture(scope="module")
def preloaded() -> None:
    """Import :data:`PRELOADED` once, in this process: an in-process pytester session
    removes the modules it imported when it ends, so without this every session below would
    import them again (about a second each). Their import warnings (fvcore's torch.jit
    deprecation) are ignored, as the plugin ignores them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PRELOADED:
            importlib.import_module(name)


@pytest.fixture
def run_digits(pytester: pytest.Pytester, preloaded: None) -> Runner:
    """``run_digits(*args)``: an in-process session with ``args`` that trains :data:`TRAIN` on
    digits on the CPU, without CO2 measurement (and without hypothesis's and the cache's
    plugins, which play no part), and passes."""
    pytester.makepyfile(TRAIN)

    def run(*args: str) -> pytest.RunResult:
        result = pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider",
                                    "--batchprof-dataset", "digits", "--batchprof-device",
                                    "cpu", "--batchprof-no-co2", *args)
        result.assert_outcomes(passed=1)
        return result

    return run


def epoch_numbers(result: pytest.RunResult) -> list[int]:
    """The epochs whose ``  Epoch NN, ...`` line the session printed, in order."""
    return [int(line.split()[1].rstrip(","))
            for line in result.outlines if line.startswith("  Epoch ")]


def progress_lines(result: pytest.RunResult) -> list[re.Match[str]]:
    """The session's plain progress lines, each matched against :data:`PROGRESS_LINE`."""
    lines = [line for line in result.outlines if line.startswith("  epoch ")]
    matches = [PROGRESS_LINE.match(line) for line in lines]
    assert all(matches), [line for line, match in zip(lines, matches, strict=True) if not match]
    return cast(list[re.Match[str]], matches)


def events(result: pytest.RunResult) -> list[str]:
    """The session's epoch and progress lines in order, as ``Epoch 1`` for epoch 1's line and
    ``progress 1`` for a progress line during epoch 1."""
    found = []
    for line in result.outlines:
        if match := PROGRESS_LINE.match(line):
            found.append(f"progress {match['epoch']}")
        elif line.startswith("  Epoch "):
            found.append(f"Epoch {int(line.split()[1].rstrip(','))}")
    return found


@pytest.fixture
def long_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every epoch "long": progress is polled at every step and shown at once, as a
    plain line at every poll (in-process sessions share these modules with the tests)."""
    monkeypatch.setattr(progress_module, "SHOW_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(training, "PROGRESS_POLL_SECONDS", 0.0)


LONG_RUN = ("--batchprof-epochs", "200", "--batchprof-train-subset", "64")
"""200 epochs of one step each."""


def test_long_run_prints_ten_epochs_and_a_note(run_digits: Runner) -> None:
    result = run_digits(*LONG_RUN, "--batchprof-no-report")
    numbers = epoch_numbers(result)
    assert 10 <= len(numbers) <= 12
    assert numbers == sorted(shown_epochs(200) or ())
    assert (numbers[0], numbers[-1]) == (1, 200)
    result.stdout.fnmatch_lines(["  Epoch 01, *", "  Epoch 200, *"])
    notes = [line for line in result.outlines if "showing 10 of 200 epochs" in line]
    assert notes == [note(10, 200)]
    assert not progress_lines(result)  # its epochs are short


def test_verbose_long_run_prints_every_epoch_and_reports_them_all(
        run_digits: Runner, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    result = run_digits(*LONG_RUN, "-v", "--batchprof-report", str(reports))
    assert epoch_numbers(result) == list(range(1, 201))
    assert "showing" not in result.stdout.str()
    [row] = json.loads((reports / "latest.json").read_text())["rows"]
    assert [epoch["epoch"] for epoch in row["history"]] == list(range(1, 201))


def test_long_epoch_shows_plain_progress_lines(run_digits: Runner, long_epochs: None) -> None:
    result = run_digits("--batchprof-epochs", "2", "--batchprof-no-report")
    matches = progress_lines(result)
    assert all(match["epochs"] == "2" and match["steps"] == str(DIGITS_STEPS)
               and not match["at_most"] for match in matches)
    for epoch in ("1", "2"):
        steps = [int(match["step"]) for match in matches if match["epoch"] == epoch]
        assert steps == list(range(1, DIGITS_STEPS + 1))  # polled after every step
    assert [key for key, _ in itertools.groupby(events(result))] == [
        "progress 1", "Epoch 1", "progress 2", "Epoch 2"]


def test_progress_towards_a_target_gives_an_upper_bound(
        run_digits: Runner, long_epochs: None) -> None:
    result = run_digits("--batchprof-epochs", "1", "--batchprof-no-report",
                        "--batchprof-target-accuracy", "0.999")
    matches = progress_lines(result)
    assert matches
    assert all(match["at_most"] for match in matches)


def test_quiet_session_prints_no_epoch_or_progress_lines(
        run_digits: Runner, long_epochs: None) -> None:
    result = run_digits("--batchprof-epochs", "30", "--batchprof-train-subset", "64",
                        "-q", "--batchprof-no-report")
    assert epoch_numbers(result) == []
    assert not any(line.lstrip().lower().startswith("epoch ") for line in result.outlines)
    assert "showing" not in result.stdout.str()
