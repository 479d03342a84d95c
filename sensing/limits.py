"""Physical limits per quantity: the values a sensor of a quantity can possibly report, and the units
the quantity is measured in. They are data, not code — ``sensing/data/quantity_limits.csv``, one row a
quantity (``quantity``, ``units`` separated by ``|``, the first the canonical one, ``min``, ``max``,
``why``) — so a city adds its own quantities by adding rows.

A reading outside its quantity's range (a water level of −50 m, a temperature of 500 °C) is a broken
sensor or a garbled message, never a flood or a fire: it is rejected with its reason, not stored and
not evaluated, so it opens no alert. A quantity not in the file has no limits.
"""
from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

from cim.errors import UserError

LIMITS_CSV = Path(__file__).with_name("data") / "quantity_limits.csv"


@dataclass(frozen=True)
class QuantityLimits:
    quantity: str
    units: tuple[str, ...]  # accepted spellings; the first is the canonical unit
    low: float
    high: float

    @property
    def unit(self) -> str:
        return self.units[0]


def read_limits(path: Path) -> dict[str, QuantityLimits]:
    """The limits file as {quantity: limits}; a malformed file is one error naming file, row and field."""
    limits: dict[str, QuantityLimits] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"quantity", "units", "min", "max"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for number, row in enumerate(reader, start=2):
            quantity = (row["quantity"] or "").strip()
            units = tuple(u.strip() for u in (row["units"] or "").split("|") if u.strip())
            if not quantity or not units:
                raise UserError(f"{path}, row {number}: quantity and units are required")
            try:
                low, high = float(row["min"]), float(row["max"])
            except (TypeError, ValueError):
                raise UserError(f"{path}, row {number}: min and max must be numbers, got "
                                f"{row['min']!r}, {row['max']!r}") from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise UserError(f"{path}, row {number}: min must be below max, both finite")
            if quantity in limits:
                raise UserError(f"{path}, row {number}: quantity {quantity!r} is listed twice")
            limits[quantity] = QuantityLimits(quantity, units, low, high)
    return limits


@functools.lru_cache(maxsize=1)
def quantity_limits() -> dict[str, QuantityLimits]:
    """The shipped limits, read once per process."""
    return read_limits(LIMITS_CSV)
