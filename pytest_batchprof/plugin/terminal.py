"""Live output during a pytest session, past output capturing (no ``-s`` needed).

:class:`TerminalConsole` is the :class:`~pytest_batchprof.runs.progress.Console` of
a pytest session: lines through pytest's terminal reporter, and a status line
that is redrawn in place when the reporter writes to a terminal (a plain line
otherwise). Nothing is written with ``-q`` or in an xdist worker, which has no
terminal reporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest


class TerminalConsole:
    """Writes to the session's terminal while a test runs, with capturing suspended."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._status_shown = False

    @property
    def verbose(self) -> bool:
        """``-v``: every epoch line of a long run."""
        return self.config.get_verbosity() > 0

    @property
    def is_terminal(self) -> bool:
        terminal = self._terminal()
        return bool(terminal is not None and terminal.isatty)

    def line(self, text: str) -> None:
        with self._writing() as terminal:
            if terminal is not None:
                self._erase(terminal)
                terminal.write_line(text)

    def status(self, text: str) -> None:
        with self._writing() as terminal:
            if terminal is None:
                return
            if not terminal.isatty:
                terminal.write_line(text)
                return
            if not self._status_shown:
                terminal.ensure_newline()  # start below pytest's row of dots
            width = getattr(getattr(terminal, "_tw", None), "fullwidth", 80)
            terminal.rewrite(text[:max(width - 1, 1)], erase=True)  # one screen line
            self._status_shown = True

    def clear_status(self) -> None:
        with self._writing() as terminal:
            if terminal is not None:
                self._erase(terminal)

    def _erase(self, terminal: pytest.TerminalReporter) -> None:
        """Blank the status line and leave the cursor at its start, for the next line."""
        if self._status_shown:
            terminal.rewrite("", erase=True)
            terminal.rewrite("")
            self._status_shown = False

    def _terminal(self) -> pytest.TerminalReporter | None:
        if self.config.get_verbosity() < 0:
            return None
        return self.config.pluginmanager.get_plugin("terminalreporter")

    @contextmanager
    def _writing(self) -> Iterator[pytest.TerminalReporter | None]:
        terminal = self._terminal()
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        suspended = (capture.global_and_fixture_disabled()
                     if terminal is not None and capture is not None else nullcontext())
        with suspended:
            yield terminal
