"""Readings at speed: one batch checked row by row (vectorised), stored through COPY, the latest
value per device and quantity moved forward, and the threshold rules evaluated — all in the
caller's transaction, so a batch is stored entirely or not at all.

What happens to each row, explicitly:

* **rejected**, with a reason, when it cannot be a reading: a missing field, a malformed or
  offset-less timestamp, a value that is not a finite number (NaN, inf, text), an unknown device,
  a quantity the device does not measure, a unit that is not the device's unit for the quantity
  or not a unit of the quantity at all, a value outside the quantity's physical range
  (:mod:`sensing.limits`). The rest of the batch loads.
* **duplicate** — same device, quantity and time as a reading stored before or earlier in the
  batch: ignored and counted (the first one stays).
* **late** — older than the newest stored reading of its device and quantity: stored and counted;
  it does not move the latest value back and does not replay alerts (rules were evaluated past it).
* otherwise **stored**.

How it is fast (measured in docs/benchmarks.md): a batch names few distinct devices, quantities,
units and times (a hundred devices send thousands of readings at a few dozen instants), so every
check of a text is made once per *distinct* value or (device, quantity, unit) combination and
spread back to the rows by index — the one time parser runs on the distinct times only. The rows go
into ``iot_readings`` by one binary COPY (no text for the server to parse, no staging table); only a
batch that repeats stored readings takes the careful way (staging, ``ON CONFLICT DO NOTHING``). What
comes after needs only the (device, quantity) pairs the batch touched — first and last time, newest
value, extremes — which go to the server as one small table (``_touched``), plus the batch's times per
device, kept in memory (:class:`StoredBatch`).
"""
from __future__ import annotations

import io
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from psycopg2 import errors

from cim.readings import advance_latest, ensure_month_partitions, quantity_specs
from cim.times import parse_instants
from sensing.limits import LIMITS_CSV, quantity_limits

#: rejected rows listed one by one in a report (all are counted)
MAX_LISTED_REJECTS = 1000
#: PostgreSQL's binary timestamps count microseconds from 2000-01-01 UTC
_PG_EPOCH_US = 946_684_800_000_000
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)


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


@dataclass
class CheckedBatch:
    """The batch after the row checks: per row its reason (None: a reading) and, for readings, the
    (device, quantity) pair it belongs to (index into ``devices``/``quantities``), time and value."""
    reason: np.ndarray  # object: None or text
    device_text: np.ndarray  # object: the row's device id as written (trimmed), for the rejects list
    pair: np.ndarray  # int64, -1 for rejected rows
    devices: list[str]  # per pair
    quantities: list[str]  # per pair
    time_us: np.ndarray  # int64 microseconds since 1970 (UTC); meaningless for rejected rows
    value: np.ndarray  # float64


@dataclass
class StoredBatch:
    """What was stored, as the rule evaluation needs it: the pairs touched and each row's pair, time
    (µs since 1970, UTC) and value; ``_touched`` holds the pairs on the server."""
    devices: list[str]
    quantities: list[str]
    pair: np.ndarray
    time_us: np.ndarray
    value: np.ndarray

    def times_of(self, device_id: str, quantity: str | None) -> np.ndarray:
        """The sorted distinct times (µs) of a device's stored readings, of one quantity or all."""
        if not hasattr(self, "_by_pair"):
            order = np.lexsort((self.time_us, self.pair))
            bounds = np.flatnonzero(np.diff(self.pair[order])) + 1
            self._by_pair = {int(self.pair[rows[0]]): self.time_us[rows] for rows in np.split(order, bounds) if len(rows)}
            self._pairs_of: dict[str, list[int]] = {}
            for p in self._by_pair:
                self._pairs_of.setdefault(self.devices[p], []).append(p)
        pairs = [p for p in self._pairs_of.get(device_id, []) if quantity is None or self.quantities[p] == quantity]
        if len(pairs) == 1:
            return self._by_pair[pairs[0]]
        return np.unique(np.concatenate([self._by_pair[p] for p in pairs])) if pairs else np.zeros(0, dtype=np.int64)


def _codes(column: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """The column as (code per row, distinct values); code -1 where missing."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), list(uniques)


def _clean(value: Any) -> str | None:
    """Trimmed text; None where missing or blank."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    text = str(value).strip()
    return text or None


def _devices(cur, ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:  # noqa: ANN001
    """The current devices among ``ids``: {source_id: {quantity: spec}}."""
    if not ids:
        return {}
    cur.execute("SELECT source_id, quantities FROM iot_devices WHERE valid_to IS NULL AND source_id = ANY(%s)",
                (ids,))
    return {source_id: quantity_specs(quantities) for source_id, quantities in cur.fetchall()}


def _values(raw: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing mask, not-a-number mask incl. true/false and text)."""
    n = len(raw)
    if isinstance(raw.dtype, pd.StringDtype):  # CSV: all text
        text = raw.astype(object).to_numpy()
        missing = pd.isna(text)
        values = pd.to_numeric(pd.Series(text), errors="coerce").to_numpy(dtype=float)
        return values, missing, ~missing & np.isnan(values)
    if pd.api.types.is_float_dtype(raw.dtype) or pd.api.types.is_integer_dtype(raw.dtype):
        values = raw.to_numpy(dtype=float, na_value=np.nan)
        return values, np.isnan(values) & raw.isna().to_numpy(), np.zeros(n, dtype=bool)
    objects = raw.to_numpy(dtype=object)
    kinds = set(map(type, objects))
    if kinds <= {float, int}:  # JSON numbers: the common case, no per-value work
        values = objects.astype(float)
        return values, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    # JSON true/false are not numbers; text that reads as a number is accepted, as CSV text is
    is_bool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in objects), dtype=bool, count=n)
    missing = pd.isna(objects) & ~is_bool
    values = pd.to_numeric(pd.Series(np.where(is_bool, None, objects)), errors="coerce").to_numpy(dtype=float)
    return values, missing, ~missing & (np.isnan(values) | is_bool)


def check_rows(cur, frame: pd.DataFrame) -> CheckedBatch:  # noqa: ANN001
    """The checks of :mod:`sensing.intake`'s rows, in order; the first failing one gives a row its reason."""
    n = len(frame)
    reason = np.full(n, None, dtype=object)

    def reject(mask: np.ndarray, why: "str | np.ndarray | Any") -> None:
        """Give the rows of ``mask`` without a reason yet this one (a text, per-row texts, or a function
        of the chosen rows' positions building their texts)."""
        mask = mask & np.equal(reason, None)
        if mask.any():
            reason[mask] = why(np.flatnonzero(mask)) if callable(why) else (why if isinstance(why, str) else why[mask])

    # texts: checked once per distinct (device, quantity, unit) combination
    d_code, d_raw = _codes(frame["device_id"])
    q_code, q_raw = _codes(frame["quantity"])
    u_code, u_raw = _codes(frame["unit"])
    d_text = [_clean(v) for v in d_raw]
    q_text = [_clean(v) for v in q_raw]
    u_text = [_clean(v) for v in u_raw]
    combos, combo = np.unique(np.stack([d_code, q_code, u_code], axis=1), axis=0, return_inverse=True)
    combo = combo.reshape(-1)
    device_of = [d_text[d] if d >= 0 else None for d in combos[:, 0]]
    quantity_of = [q_text[q] if q >= 0 else None for q in combos[:, 1]]
    unit_of = [u_text[u] if u >= 0 else None for u in combos[:, 2]]
    early = []  # missing and NUL: before the time and value checks
    for device, quantity, unit in zip(device_of, quantity_of, unit_of):
        why = None
        if device is None:
            why = "missing device_id"
        elif quantity is None:
            why = "missing quantity"
        else:
            why = next((f"{name} contains a NUL character" for name, text in
                        (("device_id", device), ("quantity", quantity), ("unit", unit)) if text and "\x00" in text),
                       None)
        early.append(why)
    reject(np.ones(n, dtype=bool), np.array(early, dtype=object)[combo])

    # times: the one parser, on the distinct texts only
    t_code, t_raw = _codes(frame["time"])
    t_clean = [_clean(v) for v in t_raw]
    t_missing = np.array([v is None for v in t_clean] + [True], dtype=bool)  # code -1 → the last slot
    reject(t_missing[t_code], "missing time")
    parsed, refused = parse_instants(pd.Series([v if v is not None else "" for v in t_clean], dtype=object))
    parsed_us = parsed.astype("datetime64[us, UTC]").array.asi8 if len(t_clean) else np.zeros(0, dtype=np.int64)
    refused = np.append(np.asarray(refused, dtype=bool), True)
    reject(refused[t_code], lambda rows: np.array(
        [f"time {str(t_raw[t_code[i]])[:60]!r} is not an RFC 3339 date-time with offset (e.g. 2026-11-24T14:40:00+08:00)"
         for i in rows], dtype=object))
    time_us = np.append(parsed_us, 0)[t_code]

    values, v_missing, v_bad = _values(frame["value"])
    reject(v_missing, "missing value")
    raw_value = frame["value"]
    reject(v_bad | ~np.isfinite(values), lambda rows: np.array(
        [f"value {str(raw_value.iat[i])[:40]!r} is not a finite number" for i in rows], dtype=object))

    # device, declared quantity, units, physical range: per combination again
    candidates = sorted({device_of[c] for c in np.unique(combo[np.equal(reason, None)]) if device_of[c]})
    known = _devices(cur, candidates)
    limits = quantity_limits()
    late_why, low, high = [], [], []
    for device, quantity, unit in zip(device_of, quantity_of, unit_of):
        specs = known.get(device) if device is not None else None
        spec = specs.get(quantity) if specs else None
        declared = str(spec["unit"]).strip() if spec and spec.get("unit") not in (None, "") else None
        limit = limits.get(quantity) if quantity is not None else None
        why = None
        if specs is None:
            why = f"unknown device {device!r} (not a current IoT device)"
        elif specs and spec is None:
            why = f"device {device!r} does not measure {quantity!r}"
        elif unit is not None and declared is not None and unit != declared:
            why = f"unit {unit!r} does not match {quantity!r} of device {device!r}, measured in {declared!r}"
        elif unit is not None and limit is not None and unit not in limit.units:
            why = f"unit {unit!r} is not a unit of {quantity!r} ({', '.join(limit.units)})"
        late_why.append(why)
        low.append(limit.low if limit else -np.inf)
        high.append(limit.high if limit else np.inf)
    reject(np.ones(n, dtype=bool), np.array(late_why, dtype=object)[combo])
    low_row, high_row = np.array(low)[combo], np.array(high)[combo]
    with np.errstate(invalid="ignore"):
        outside = (values < low_row) | (values > high_row)
    reject(outside, lambda rows: np.array(
        [f"{quantity_of[combo[i]]} {values[i]:g} is outside its physical range {low_row[i]:g} … {high_row[i]:g} "
         f"{limits[quantity_of[combo[i]]].unit} ({LIMITS_CSV.parent.name}/{LIMITS_CSV.name})" for i in rows],
        dtype=object))

    # the readings' (device, quantity) pairs
    good = np.equal(reason, None)
    pair_of_combo = {}
    devices, quantities = [], []
    for c in np.unique(combo[good]):
        key = (device_of[c], quantity_of[c])
        if key not in pair_of_combo:
            pair_of_combo[key] = len(devices)
            devices.append(key[0])
            quantities.append(key[1])
    combo_pair = np.array([pair_of_combo.get((d, q), -1) for d, q in zip(device_of, quantity_of)], dtype=np.int64)
    pair = np.where(good, combo_pair[combo] if n else np.zeros(0, dtype=np.int64), -1)
    device_text = np.array(device_of, dtype=object)[combo] if n else np.zeros(0, dtype=object)
    return CheckedBatch(reason, device_text, pair, devices, quantities, time_us, values)


def _device_districts(cur, devices: list[str]) -> list[str]:  # noqa: ANN001
    """Each device's district ('' for none), per pair: a reading carries its device's (migration 0009; on
    Citus, the shard it goes to)."""
    cur.execute("SELECT source_id, coalesce(district_code, '') FROM iot_devices WHERE valid_to IS NULL "
                "AND source_id = ANY(%s)", (sorted(set(devices)),))
    found = dict(cur.fetchall())
    return [found.get(d, "") for d in devices]


def _binary_copy(devices: list[str], quantities: list[str], pair: np.ndarray, time_us: np.ndarray,
                 value: np.ndarray, districts: list[str]) -> io.BytesIO:
    """The rows in COPY's binary format, columns (device_id, quantity, time, value, district_code): the
    server parses no text. Rows are grouped by pair (order does not matter to a table), so the text fields
    of a pair are one constant prefix and suffix and each pair's rows are one fixed-width numpy record array."""
    parts = [_COPY_HEADER]
    order = np.argsort(pair, kind="stable")
    bounds = np.flatnonzero(np.diff(pair[order])) + 1
    for rows in np.split(order, bounds):
        if not len(rows):
            continue
        p = int(pair[rows[0]])
        d, q = devices[p].encode(), quantities[p].encode()
        s = districts[p].encode()
        prefix = struct.pack(f"!hi{len(d)}si{len(q)}s", 5, len(d), d, len(q), q)
        suffix = struct.pack(f"!i{len(s)}s", len(s), s)
        records = np.empty(len(rows), dtype=[("p", f"S{len(prefix)}"), ("tl", ">i4"), ("t", ">i8"), ("vl", ">i4"),
                                             ("v", ">f8"), ("s", f"S{len(suffix)}")])
        records["p"] = prefix
        records["tl"] = 8
        records["t"] = time_us[rows] - _PG_EPOCH_US
        records["vl"] = 8
        records["v"] = value[rows]
        records["s"] = suffix
        parts.append(records.tobytes())
    parts.append(_COPY_TRAILER)
    return io.BytesIO(b"".join(parts))


def store_batch(conn, frame: pd.DataFrame, *, evaluate: bool = True) -> IntakeReport:  # noqa: ANN001
    """Store one parsed batch (:func:`sensing.parse.parse_batch`) on a SQLAlchemy connection inside a
    transaction; returns what happened to its rows."""
    report = IntakeReport(received=len(frame))
    if not len(frame):
        return report
    cur = conn.connection.dbapi_connection.cursor()
    checked = check_rows(cur, frame)
    bad = ~np.equal(checked.reason, None)
    report.rejected = int(bad.sum())
    if report.rejected:
        rows = np.flatnonzero(bad)
        report.reasons.update(_reason_kind(r) for r in checked.reason[bad])
        report.rejects = [{"row": int(i) + 1, "device_id": checked.device_text[i], "reason": checked.reason[i]}
                          for i in rows[:MAX_LISTED_REJECTS]]
    good = np.flatnonzero(~bad)
    keys = pd.DataFrame({"p": checked.pair[good], "t": checked.time_us[good]})
    first = ~keys.duplicated(keep="first").to_numpy()
    good = good[first]
    report.duplicates = int((~first).sum())
    if not len(good):
        return report
    pair, time_us, value = checked.pair[good], checked.time_us[good], checked.value[good]
    months = pd.to_datetime(np.unique(time_us // 86_400_000_000) * 86_400_000_000, unit="us", utc=True)
    ensure_month_partitions(conn.engine, zip(months.year, months.month))
    districts = _device_districts(cur, checked.devices)
    # Fast path: straight into the table. Fresh readings rarely repeat stored ones; when some do, the
    # savepoint undoes the COPY and the rows go the careful way, which tells which ones were new.
    cur.execute("SAVEPOINT cim_intake")
    try:
        cur.copy_expert("COPY iot_readings (device_id, quantity, time, value, district_code) FROM STDIN "
                        "WITH (FORMAT binary)",
                        _binary_copy(checked.devices, checked.quantities, pair, time_us, value, districts))
        cur.execute("RELEASE SAVEPOINT cim_intake")
        stored = np.ones(len(good), dtype=bool)
    except (errors.UniqueViolation, errors.InternalError_) as exc:
        # a Citus COPY reports a shard's unique violation as an internal error (XX000) with the shard's message
        if not isinstance(exc, errors.UniqueViolation) and "duplicate key value" not in str(exc):
            raise
        cur.execute("ROLLBACK TO SAVEPOINT cim_intake")
        stored = _store_carefully(cur, checked, pair, time_us, value, districts)
    report.stored = int(stored.sum())
    report.duplicates += len(good) - report.stored
    if not report.stored:
        return report
    batch = StoredBatch(checked.devices, checked.quantities, pair[stored], time_us[stored], value[stored])
    report.late = _touch_pairs(cur, batch)
    if evaluate:
        from sensing.evaluate import evaluate_stored

        evaluate_stored(conn, report, batch)
    advance_latest(cur, "_touched")
    return report


def _store_carefully(cur, checked: CheckedBatch, pair: np.ndarray, time_us: np.ndarray,  # noqa: ANN001
                     value: np.ndarray, districts: list[str]) -> np.ndarray:
    """Insert the rows that are not stored yet; returns, per row, whether it was new."""
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS _intake (device_id text, quantity text, time timestamptz, "
                "value float8, district_code text) ON COMMIT DELETE ROWS")
    cur.execute("TRUNCATE _intake")
    cur.copy_expert("COPY _intake (device_id, quantity, time, value, district_code) FROM STDIN WITH (FORMAT binary)",
                    _binary_copy(checked.devices, checked.quantities, pair, time_us, value, districts))
    cur.execute("""INSERT INTO iot_readings (device_id, time, quantity, value, district_code)
        SELECT device_id, time, quantity, value, district_code FROM _intake ON CONFLICT DO NOTHING
        RETURNING device_id, quantity, (extract(epoch FROM time) * 1000000)::int8""")
    new = pd.DataFrame(cur.fetchall(), columns=["d", "q", "t"]).assign(new=True)
    rows = pd.DataFrame({"d": np.array(checked.devices, dtype=object)[pair],
                         "q": np.array(checked.quantities, dtype=object)[pair], "t": time_us})
    return rows.merge(new, how="left", on=["d", "q", "t"])["new"].notna().to_numpy()


def _touch_pairs(cur, batch: StoredBatch) -> int:  # noqa: ANN001
    """Put the batch's (device, quantity) pairs in ``_touched`` (first and last time, value at the last,
    extremes); returns how many stored rows are late (older than the pair's latest value)."""
    order = np.lexsort((batch.time_us, batch.pair))
    p, t, v = batch.pair[order], batch.time_us[order], batch.value[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    ends = np.r_[starts[1:], len(p)] - 1
    to_time = lambda us: pd.to_datetime(us, unit="us", utc=True).to_pydatetime().tolist()  # noqa: E731
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS _touched (device_id text, quantity text, lo timestamptz, "
                "time timestamptz, value float8, vmin float8, vmax float8, before timestamptz, i int) ON COMMIT DELETE ROWS")
    cur.execute("TRUNCATE _touched")
    cur.execute("""INSERT INTO _touched
        SELECT x.d, x.q, x.lo, x.hi, x.v, x.vmin, x.vmax, l.time, x.i
        FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::float8[], %s::float8[],
                    %s::float8[]) WITH ORDINALITY AS x(d, q, lo, hi, v, vmin, vmax, i)
        LEFT JOIN iot_latest l ON l.device_id = x.d AND l.quantity = x.q
        RETURNING i, (extract(epoch FROM before) * 1000000)::int8""",
                ([batch.devices[i] for i in p[starts]], [batch.quantities[i] for i in p[starts]],
                 to_time(t[starts]), to_time(t[ends]), v[ends].tolist(),
                 np.minimum.reduceat(v, starts).tolist(), np.maximum.reduceat(v, starts).tolist()))
    before_us = np.full(len(starts), np.iinfo(np.int64).min, dtype=np.int64)
    for i, before in cur.fetchall():
        if before is not None:
            before_us[i - 1] = before
    group = np.repeat(np.arange(len(starts)), ends - starts + 1)
    return int((t < before_us[group]).sum())


def _reason_kind(reason: str) -> str:
    """A short key to count reasons by (the listed rejects keep the full text)."""
    if reason.startswith("missing "):
        return reason.replace(" ", "_")
    if "outside its physical range" in reason:
        return "out_of_range"
    for key, words in (("time", "time "), ("value", "value "), ("unknown_device", "unknown device"),
                       ("quantity", "does not measure"), ("unit", "unit ")):
        if reason.startswith(words) or words in reason:
            return key
    return "other"
