"""Energy and CO2eq of training and inference, measured with codecarbon, quietly.

One ``OfflineEmissionsTracker`` per session (it probes the hardware when it is
created, which costs time once), and one codecarbon *task* per measurement.
Offline means no network call: the carbon intensity comes from codecarbon's
bundled energy-mix table for ``--co2-country`` (ISO 3166 alpha-3, default
``USA``). Its log lines and warnings are silenced and it writes no
``emissions.csv``. When codecarbon fails, or cannot estimate any power on the
machine, the figures are ``None`` and ``note`` says why; the run goes on.

Units are codecarbon's: energy in kWh, emissions in kg CO2eq.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pytest_batchprof.errors import one_line
from pytest_batchprof.settings import DEFAULT_COUNTRY


@dataclass(frozen=True)
class Carbon:
    """Energy (kWh) and emissions (kg CO2eq) of one measured stretch of work."""

    energy_kwh: float | None
    co2eq_kg: float | None
    seconds: float | None
    note: str | None = None

    def scaled(self, factor: float) -> Carbon:
        """The same figures times ``factor`` (e.g. per 1,000 inferences)."""
        if self.energy_kwh is None or self.co2eq_kg is None:
            return self
        return Carbon(self.energy_kwh * factor, self.co2eq_kg * factor, self.seconds, self.note)


def known_countries() -> set[str]:
    """ISO 3166 alpha-3 codes that codecarbon's offline energy-mix table covers."""
    from codecarbon.input import DataSource

    return set(DataSource().get_global_energy_mix_data())


@contextmanager
def _quiet() -> Iterator[None]:
    """Keep codecarbon's log records and warnings away from the user's terminal."""
    logger = logging.getLogger("codecarbon")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.propagate = propagate
        logger.setLevel(level)


class CarbonMeter:
    """Measures stretches of work with one lazily created codecarbon tracker."""

    def __init__(self, country: str = DEFAULT_COUNTRY) -> None:
        self.country = country
        self._tracker = None
        self._error: str | None = None

    def prepare(self) -> None:
        """Create the tracker now (it probes the hardware), outside any measured stretch."""
        self._get_tracker()

    def _get_tracker(self):
        if self._tracker is None and self._error is None:
            try:
                from codecarbon import OfflineEmissionsTracker  # sets its log level on import

                with _quiet():
                    self._tracker = OfflineEmissionsTracker(
                        country_iso_code=self.country,
                        save_to_file=False,
                        log_level="critical",
                        tracking_mode="process",
                        project_name="pytest-batchprof",
                    )
            except Exception as error:
                self._error = f"codecarbon failed to start: {one_line(error)}"
        return self._tracker

    @contextmanager
    def measure(self) -> Iterator[list[Carbon]]:
        """Measure the ``with`` block; one :class:`Carbon` lands in the yielded list."""
        result: list[Carbon] = []
        tracker = self._get_tracker()
        if tracker is None:
            yield result
            result.append(Carbon(None, None, None, self._error))
            return
        try:
            with _quiet():
                tracker.start_task()
        except Exception as error:
            failure = f"codecarbon failed: {one_line(error)}"
        else:
            try:
                yield result
            finally:
                result.append(self._stop(tracker))
            return
        yield result  # outside the except block: the caller's errors are not chained to it
        result.append(Carbon(None, None, None, failure))

    @staticmethod
    def _stop(tracker) -> Carbon:
        try:
            with _quiet():
                data = tracker.stop_task()
        except Exception as error:
            return Carbon(None, None, None, f"codecarbon failed: {one_line(error)}")
        if data is None:
            return Carbon(None, None, None, "codecarbon returned no measurement")
        if not data.energy_consumed or data.energy_consumed <= 0:
            return Carbon(None, None, data.duration,
                          "codecarbon could not estimate the power of this machine")
        return Carbon(float(data.energy_consumed), float(data.emissions), float(data.duration))
