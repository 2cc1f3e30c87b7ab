"""Units and numbers as people read them: the unit families a figure is shown in, the
unit that suits a column, and a number written with as many digits as it deserves.

The report's tables (:mod:`pytest_batchprof.reports.tables`), the baseline comparison
and the engine's out-of-memory line share them, so a size reads the same everywhere.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))
BYTE_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0))
MASS_UNITS = (("kg", 1.0), ("g", 1e-3), ("mg", 1e-6), ("µg", 1e-9))  # CO2eq, from kg
ENERGY_UNITS = (("kWh", 1.0), ("Wh", 1e-3), ("mWh", 1e-6))


def pick_unit(values: Sequence[float], units: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The largest unit in which the column's median is at least 1."""
    positive = [abs(value) for value in values if value]
    if not positive:
        return units[0]
    typical = statistics.median(positive)
    for name, scale in units:
        if typical >= scale:
            return name, scale
    return units[-1]


def human_number(value: float) -> str:
    """``19.2``, ``408.0``, ``9,769``, ``0.0123``: one decimal from 1 up, thousands
    separators from 1,000, three significant digits below 1."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"
