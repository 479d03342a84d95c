"""``cim iot simulate``: readings for the base's IoT devices, for demos and benchmarks.

Every current device gets one reading per quantity it declares every ``every_min`` minutes: noise
around a quiet level — a third of the device's own ``alarm_high`` where it declares one, else a
typical value of the quantity. A :class:`Storm` adds a rainstorm: water levels swell and recede
as a bell around the storm's peak, each device to its own peak between 0.7 and 1.5 times its
alarm level, so some pass their thresholds and some do not. The same seed gives the same readings.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.errors import ParameterError
from cim.readings import quantity_specs
from sensing.intake import IntakeReport, store_batch

#: quiet level and noise of quantities whose device declares no alarm level
TYPICAL = {"water_level": (0.3, 0.03), "tilt": (1.2, 0.2), "tilt_x": (0.1, 0.02), "tilt_y": (0.1, 0.02),
           "ch4": (2.0, 0.4), "smoke": (0.6, 0.1), "temperature": (16.0, 1.0)}
NEVER_NEGATIVE = {"water_level", "ch4", "smoke", "tilt"}
STORM_QUANTITY = "water_level"


@dataclass(frozen=True)
class Storm:
    peak_after_h: float  # hours after the start
    hours: float = 2.0  # from first rise to last recession, roughly


def _series(conn: sa.Connection) -> pd.DataFrame:
    rows = conn.execute(sa.text("SELECT source_id, quantities FROM iot_devices WHERE valid_to IS NULL "
                                "AND source_id IS NOT NULL ORDER BY source_id")).all()
    out = []
    for device_id, quantities in rows:
        for quantity, spec in quantity_specs(quantities).items():
            alarm = spec.get("alarm_high")
            out.append((device_id, quantity, spec.get("unit"), float(alarm) if isinstance(alarm, (int, float)) else None))
    return pd.DataFrame(out, columns=["device_id", "quantity", "unit", "alarm_high"])


def simulate_readings(conn: sa.Connection, start: datetime, hours: float = 24.0, every_min: int = 10,
                      storm: Storm | None = None, seed: int = 13) -> pd.DataFrame:
    """Readings (device_id, time, quantity, value, unit), ordered by time."""
    if hours <= 0 or every_min <= 0:
        raise ParameterError("hours", "hours and every must be positive")
    series = _series(conn)
    if series.empty:
        raise ParameterError("devices", "the base has no current IoT devices to simulate (load iot-devices)")
    rng = np.random.default_rng(seed)
    steps = int(hours * 60 // every_min)
    offsets_min = np.arange(steps) * every_min
    typical = series["quantity"].map(lambda q: TYPICAL.get(q, (1.0, 0.05)))
    alarm = series["alarm_high"].to_numpy(dtype=float)
    quiet = np.where(np.isfinite(alarm), alarm / 3.0, [t[0] for t in typical])
    noise = np.where(np.isfinite(alarm), np.abs(alarm) * 0.03, [t[1] for t in typical])
    values = quiet[:, None] + rng.normal(0.0, 1.0, (len(series), steps)) * noise[:, None]
    if storm is not None:
        wet = (series["quantity"] == STORM_QUANTITY).to_numpy()
        peak = np.where(np.isfinite(alarm), alarm, quiet * 4.0) * rng.uniform(0.7, 1.5, len(series))
        # a bell whose width makes the swell last about storm.hours above its half height
        width_min = storm.hours * 60.0 / 2.355
        bell = np.exp(-0.5 * ((offsets_min - storm.peak_after_h * 60.0) / width_min) ** 2)
        values = np.where(wet[:, None], values + (peak - quiet)[:, None] * bell[None, :], values)
    never_negative = series["quantity"].isin(NEVER_NEGATIVE).to_numpy()
    values = np.where(never_negative[:, None], np.maximum(values, 0.0), values)
    times = pd.DatetimeIndex([start + timedelta(minutes=int(m)) for m in offsets_min]).tz_convert("UTC")
    frame = pd.DataFrame({
        "device_id": np.tile(series["device_id"].to_numpy(), steps),
        "time": np.repeat(times.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy(), len(series)),
        "quantity": np.tile(series["quantity"].to_numpy(), steps),
        "value": np.round(values.T.reshape(-1), 4),
        "unit": np.tile(series["unit"].to_numpy(), steps),
    })
    return frame


def store_simulated(engine: Engine, frame: pd.DataFrame, batch: int = 20_000) -> IntakeReport:
    """Store the readings through the ordinary intake, in time order, ``batch`` readings per transaction."""
    total = IntakeReport()
    for first in range(0, len(frame), batch):
        with engine.begin() as conn:
            total.merge(store_batch(conn, frame.iloc[first:first + batch].reset_index(drop=True)))
    return total
