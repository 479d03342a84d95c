"""Readings at speed: one batch checked row by row (vectorised), stored through COPY, the latest
value per device and quantity moved forward, and the threshold rules evaluated — all in the
caller's transaction, so a batch is stored entirely or not at all.

What happens to each row, explicitly:

* **rejected**, with a reason, when it cannot be a reading: a missing field, a malformed or
  offset-less timestamp, a value that is not a finite number (NaN, inf, text), an unknown device,
  a quantity the device does not measure, a unit that is not the device's unit for the quantity.
  The rest of the batch loads.
* **duplicate** — same device, quantity and time as a reading stored before or earlier in the
  batch: ignored and counted (the first one stays).
* **late** — older than the newest stored reading of its device and quantity: stored and counted;
  it does not move the latest value back and does not replay alerts (rules were evaluated past it).
* otherwise **stored**.
"""
from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg2 import errors

from cim.readings import advance_latest, ensure_month_partitions, quantity_specs
from cim.times import parse_instants

#: rejected rows listed one by one in a report (all are counted)
MAX_LISTED_REJECTS = 1000


@dataclass
class IntakeReport:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    alerts_opened: int = 0
    alerts_escalated: int = 0
    alerts_cleared: int = 0

    def merge(self, other: "IntakeReport") -> None:
        for name in ("received", "stored", "duplicates", "late", "rejected", "alerts_opened",
                     "alerts_escalated", "alerts_cleared"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)
        room = MAX_LISTED_REJECTS - len(self.rejects)
        self.rejects.extend(other.rejects[:max(room, 0)])

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "stored": self.stored, "duplicates": self.duplicates,
                "late": self.late, "rejected": self.rejected, "reasons": dict(self.reasons),
                "rejects": self.rejects, "rejects_listed": len(self.rejects),
                "alerts": {"opened": self.alerts_opened, "escalated": self.alerts_escalated,
                           "cleared": self.alerts_cleared}}


def _text(column: pd.Series) -> pd.Series:
    """Trimmed text; None where missing or blank."""
    text = column.astype("string").str.strip()
    return text.where(text.notna() & (text != ""))


def _devices(cur, ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:  # noqa: ANN001
    """The current devices among ``ids``: {source_id: {quantity: spec}}."""
    if not ids:
        return {}
    cur.execute("SELECT source_id, quantities FROM iot_devices WHERE valid_to IS NULL AND source_id = ANY(%s)",
                (ids,))
    return {source_id: quantity_specs(quantities) for source_id, quantities in cur.fetchall()}


def check_rows(cur, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:  # noqa: ANN001
    """The batch as typed columns (device_id, quantity, time, value) and, per row, the reason it is
    rejected (None when it is a reading). The first failing check of a row gives its reason."""
    n = len(frame)
    reason = pd.Series([None] * n, dtype=object)

    def reject(mask: np.ndarray | pd.Series, why: Callable[[np.ndarray], pd.Series] | str) -> None:
        """Give the rows of ``mask`` that have no reason yet this one (a text, or built for those rows only)."""
        mask = np.asarray(mask, dtype=bool) & reason.isna().to_numpy()
        if mask.any():
            reason[mask] = why if isinstance(why, str) else why(mask).to_numpy()

    device, quantity, unit = _text(frame["device_id"]), _text(frame["quantity"]), _text(frame["unit"])
    for name, column in (("device_id", device), ("quantity", quantity)):
        reject(column.isna(), f"missing {name}")
    for name, column in (("device_id", device), ("quantity", quantity), ("unit", unit)):
        reject(column.str.contains("\x00", regex=False).fillna(False), f"{name} contains a NUL character")
    raw_time = frame["time"]
    reject(raw_time.isna() | (raw_time.astype("string").str.strip() == "").fillna(True), "missing time")
    times, bad_time = parse_instants(raw_time.astype("string"))
    reject(bad_time, lambda m: "time " + raw_time[m].astype(str).str.slice(0, 60).map(repr)
           + " is not an RFC 3339 date-time with offset (e.g. 2026-11-24T14:40:00+08:00)")
    raw_value = frame["value"]
    # JSON true/false are not numbers; only a column that is not all text or all numbers can hold one
    kind = pd.api.types.infer_dtype(raw_value, skipna=True)
    is_bool = raw_value.map(lambda v: isinstance(v, bool)).to_numpy(dtype=bool) \
        if kind not in ("string", "floating", "integer", "empty") else np.zeros(n, dtype=bool)
    values = pd.to_numeric(raw_value.where(~is_bool), errors="coerce").astype("float64")
    reject(raw_value.isna() & ~is_bool, "missing value")
    reject(~np.isfinite(values.to_numpy()), lambda m: "value " + raw_value[m].astype(str).str.slice(0, 40).map(repr)
           + " is not a finite number")

    known = _devices(cur, sorted(set(device[reason.isna().to_numpy()].dropna())))
    reject(device.notna() & ~device.isin(list(known)),
           lambda m: "unknown device " + device[m].map(repr) + " (not a current IoT device)")
    # a quantity the device declares, in the device's unit (when both sides name one)
    declared = pd.DataFrame([(d, q, str(spec["unit"]).strip() if spec.get("unit") not in (None, "") else None)
                             for d, specs in known.items() for q, spec in specs.items()],
                            columns=["device_id", "quantity", "declared_unit"], dtype=object)
    keyed = pd.DataFrame({"device_id": device.astype(object), "quantity": quantity.astype(object)}).merge(
        declared, how="left", on=["device_id", "quantity"], indicator=True)  # a left merge keeps row order
    declares_any = device.isin([d for d, specs in known.items() if specs]).to_numpy()
    undeclared = declares_any & (keyed["_merge"] == "left_only").to_numpy()
    reject(undeclared, lambda m: "device " + device[m].map(repr) + " does not measure " + quantity[m].map(repr))
    expected = keyed["declared_unit"]
    mismatch = (unit.notna().to_numpy() & expected.notna().to_numpy()
                & (unit.fillna("").to_numpy() != expected.fillna("").to_numpy()))
    reject(mismatch, lambda m: "unit " + unit[m].map(repr) + " does not match " + quantity[m].map(repr)
           + " of device " + device[m].map(repr) + ", measured in " + expected[m].map(repr))
    typed = pd.DataFrame({"device_id": device, "quantity": quantity, "time": times, "value": values})
    return typed, reason


def store_batch(conn, frame: pd.DataFrame, *, evaluate: bool = True) -> IntakeReport:  # noqa: ANN001
    """Store one parsed batch (:func:`sensing.parse.parse_batch`) on a SQLAlchemy connection inside a
    transaction; returns what happened to its rows."""
    report = IntakeReport(received=len(frame))
    cur = conn.connection.dbapi_connection.cursor()
    typed, reason = check_rows(cur, frame)
    bad = reason.notna().to_numpy()
    report.rejected = int(bad.sum())
    if report.rejected:
        rows = np.flatnonzero(bad)
        report.reasons.update(_reason_kind(r) for r in reason[bad])
        report.rejects = [{"row": int(i) + 1, "device_id": typed.at[i, "device_id"], "reason": reason[i]}
                          for i in rows[:MAX_LISTED_REJECTS]]
    good = typed[~bad]
    repeated = good.duplicated(subset=["device_id", "quantity", "time"], keep="first").to_numpy()
    good = good[~repeated]
    report.duplicates = int(repeated.sum())
    if good.empty:
        return report
    ensure_month_partitions(conn.engine, zip(good["time"].dt.year, good["time"].dt.month))
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS _intake (device_id text, quantity text, time timestamptz, "
                "value float8) ON COMMIT DELETE ROWS")
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS _stored (device_id text, quantity text, time timestamptz, "
                "value float8) ON COMMIT DELETE ROWS")
    cur.execute("TRUNCATE _intake, _stored")
    cur.copy_expert("COPY _stored (device_id, quantity, time, value) FROM STDIN WITH (FORMAT csv)",
                    _csv_for_copy(good))
    # Fast path: a plain INSERT costs half of one with ON CONFLICT … RETURNING (measured), and fresh
    # readings rarely repeat stored ones. When some do, the savepoint undoes it and the rows go the
    # careful way, which keeps in _stored exactly the rows that were new.
    cur.execute("SAVEPOINT cim_intake")
    try:
        cur.execute("INSERT INTO iot_readings (device_id, time, quantity, value) "
                    "SELECT device_id, time, quantity, value FROM _stored")
        report.stored = cur.rowcount
        cur.execute("RELEASE SAVEPOINT cim_intake")
    except errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT cim_intake")
        cur.execute("INSERT INTO _intake SELECT * FROM _stored")
        cur.execute("TRUNCATE _stored")
        cur.execute("""WITH stored AS (
                INSERT INTO iot_readings (device_id, time, quantity, value)
                SELECT device_id, time, quantity, value FROM _intake ON CONFLICT DO NOTHING
                RETURNING device_id, quantity, time, value)
            INSERT INTO _stored SELECT * FROM stored""")
        report.stored = cur.rowcount
    report.duplicates += len(good) - report.stored
    cur.execute("""SELECT count(*) FROM _stored s JOIN iot_latest l USING (device_id, quantity)
        WHERE s.time < l.time""")
    report.late = int(cur.fetchone()[0])
    if evaluate and report.stored:
        from sensing.evaluate import evaluate_stored

        evaluate_stored(conn, report)
    advance_latest(cur, "_stored")
    return report


def _csv_for_copy(good: pd.DataFrame) -> io.BytesIO:
    """The rows as CSV for COPY, written by Arrow (pandas' writer formats times and floats one by one
    in Python, which cost more than the COPY itself); floats round-trip exactly."""
    table = pa.table({"device_id": pa.array(good["device_id"].astype(object), pa.string()),
                      "quantity": pa.array(good["quantity"].astype(object), pa.string()),
                      "time": pa.array(good["time"]), "value": pa.array(good["value"], pa.float64())})
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False))
    sink.seek(0)
    return sink


def _reason_kind(reason: str) -> str:
    """A short key to count reasons by (the listed rejects keep the full text)."""
    if reason.startswith("missing "):
        return reason.replace(" ", "_")
    for key, words in (("time", "time "), ("value", "value "), ("unknown_device", "unknown device"),
                       ("quantity", "does not measure"), ("unit", "unit ")):
        if reason.startswith(words) or words in reason:
            return key
    return "other"
