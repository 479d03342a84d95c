"""The readings table's monthly partitions: one place that knows how ``iot_readings`` is split.

Readings are partitioned by month of their time (UTC); a partition is created before the rows of
its month arrive, so the default partition (which would block creating a partition later) stays
empty. Every writer of readings — the batch loader and live intake — goes through here.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = ["QUANTITY_NAME_KEYS", "advance_latest", "ensure_month_partitions", "month_of", "quantity_specs"]

QUANTITY_NAME_KEYS = ("name", "quantity", "code", "id")  # how a quantity entry of a device may name itself


def month_of(time: datetime) -> tuple[int, int]:
    """(year, month) of an aware time, in UTC."""
    utc = time.astimezone(timezone.utc)
    return utc.year, utc.month


def ensure_month_partitions(engine: Engine, months: Iterable[tuple[int, int]]) -> None:
    """Create the partition of each (year, month) that does not exist yet.

    In a short transaction of its own, committed at once: CREATE TABLE … PARTITION OF locks the whole
    of iot_readings exclusively, which inside a load's transaction would lock every reader of any
    device's readings out until the load commits. An empty partition outlives a failed load harmlessly.
    Call it before the writing transaction touches ``iot_readings`` (it would wait for itself).
    Two writers meeting a new month at once: the second's CREATE fails on the name once the first
    committed, which only means the partition is there.
    """
    from psycopg2 import errors

    wanted = sorted(set(months))
    if not wanted:
        return
    names = {f"iot_readings_{year:04d}{month:02d}": (year, month) for year, month in wanted}
    with engine.connect() as conn:
        present = set(conn.execute(sa.text("SELECT n FROM unnest(CAST(:names AS text[])) AS n "
                                           "WHERE to_regclass(n) IS NOT NULL"), {"names": list(names)}).scalars())
    for name, (year, month) in names.items():
        if name in present:
            continue
        start = f"{year:04d}-{month:02d}-01T00:00:00+00:00"
        end = f"{year + (month == 12):04d}-{month % 12 + 1:02d}-01T00:00:00+00:00"
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF iot_readings "
                                     f"FOR VALUES FROM ('{start}') TO ('{end}')")
        except sa.exc.ProgrammingError as exc:
            if not isinstance(exc.orig, (errors.DuplicateTable, errors.UniqueViolation)):
                raise
        except sa.exc.IntegrityError as exc:
            if not isinstance(exc.orig, errors.UniqueViolation):
                raise


def advance_latest(cur, source: str) -> None:  # noqa: ANN001 (a DB-API cursor)
    """Carry the newest reading of each device and quantity in table ``source`` (columns device_id,
    quantity, time, value) into ``iot_latest``; a late reading never moves a value back in time."""
    cur.execute(f"""INSERT INTO iot_latest (device_id, quantity, time, value)
        SELECT DISTINCT ON (device_id, quantity) device_id, quantity, time, value FROM {source}
        ORDER BY device_id, quantity, time DESC
        ON CONFLICT (device_id, quantity) DO UPDATE SET time = EXCLUDED.time, value = EXCLUDED.value,
            updated_at = now()
        WHERE EXCLUDED.time > iot_latest.time""")


def quantity_specs(quantities: Any) -> dict[str, dict[str, Any]]:
    """A device's ``quantities`` JSON as {name: entry}; accepts a list of names, a list of
    objects naming themselves by name/quantity/code/id, or an object keyed by name."""
    specs: dict[str, dict[str, Any]] = {}
    if isinstance(quantities, dict):
        for key, entry in quantities.items():
            specs[str(key)] = entry if isinstance(entry, dict) else {"unit": entry}
    elif isinstance(quantities, list):
        for entry in quantities:
            if isinstance(entry, str):
                specs[entry] = {}
            elif isinstance(entry, dict):
                name = next((entry[k] for k in QUANTITY_NAME_KEYS if entry.get(k) not in (None, "")), None)
                if name is not None:
                    specs[str(name)] = entry
    return specs
