"""``/iot/devices/{id}/readings``: one device's time series of one quantity, with its unit and alarm
thresholds (from the device's ``quantities``).

Times are RFC 3339 with an offset (``Z``, ``+08:00``), or dates; a time without an offset is a
400, as everywhere (:mod:`cim.times`). The window defaults to the last
24 hours and is half-open, ``from <= time < to``. At most :data:`MAX_READINGS` readings are
returned, oldest first; when a window holds more, ``truncated`` is true and ``next_from`` is where
the next request should start.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Path, Query, Request

from api.deps import get_state
from api.limits import MAX_DATETIME_CHARS, MAX_NAME_CHARS
from cim.readings import QUANTITY_NAME_KEYS, quantity_specs
from api.problems import bad_parameter, not_found
from cim.times import day_start, parse_instant

router = APIRouter(tags=["iot"])

MAX_READINGS = 100_000
DEFAULT_WINDOW = timedelta(hours=24)
_NOT_THRESHOLDS = set(QUANTITY_NAME_KEYS) | {"unit", "label", "title", "description"}


def parse_time(value: str | None, parameter: str) -> datetime | None:
    """An RFC 3339 time with offset, or a date (its midnight UTC), by :mod:`cim.times`' one rule."""
    if value is None or not value.strip():
        return None
    parsed = parse_instant(value, parameter)  # a ParameterError naming ``parameter``, mapped by api.problems
    return parsed if isinstance(parsed, datetime) else day_start(parsed)


def _find_device(conn: sa.Connection, device_id: str) -> dict[str, Any] | None:
    """The device by source_id or feature_id: its current version, else its latest one."""
    try:
        feature_id: str | None = str(uuid.UUID(device_id))
    except ValueError:
        feature_id = None
    row = conn.execute(sa.text(
        "SELECT feature_id::text AS feature_id, source_id, device_type, name, quantities, linked_feature, "
        "valid_to IS NULL AS current FROM iot_devices "
        "WHERE source_id = :id OR feature_id = CAST(:fid AS uuid) "
        "ORDER BY (source_id = :id) IS TRUE DESC, valid_to IS NULL DESC, valid_from DESC LIMIT 1"),
        {"id": device_id, "fid": feature_id}).mappings().first()
    return dict(row) if row else None


def _measured(conn: sa.Connection, source_id: str) -> list[str]:
    return list(conn.execute(sa.text(
        "SELECT DISTINCT quantity FROM iot_readings WHERE device_id = :d ORDER BY quantity"),
        {"d": source_id}).scalars())


@router.get("/iot/devices/{device_id}/readings", summary="Readings of one IoT device over a time window")
def device_readings(
    request: Request,
    device_id: str = Path(..., max_length=MAX_NAME_CHARS, description="The device's source id or feature id."),
    from_: str | None = Query(None, alias="from", max_length=MAX_DATETIME_CHARS,
                              description="Start (ISO 8601, inclusive); default to - 24 h."),
    to: str | None = Query(None, max_length=MAX_DATETIME_CHARS, description="End (ISO 8601, exclusive); default now."),
    quantity: str | None = Query(None, max_length=MAX_NAME_CHARS,
                                 description="Measured quantity; may be omitted when the device has one."),
) -> dict:
    start, end = parse_time(from_, "from"), parse_time(to, "to")
    end = end or datetime.now(timezone.utc)
    try:
        start = start or end - DEFAULT_WINDOW
    except OverflowError:
        raise bad_parameter("to", f"to ({end.isoformat()}) is too early to take a window before it") from None
    if start >= end:
        raise bad_parameter("from", f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
    state = get_state(request)
    with state.engine.connect() as conn:
        device = _find_device(conn, device_id)
        if device is None:
            raise not_found(f"no IoT device with source id or feature id {device_id!r}")
        specs = quantity_specs(device["quantities"])
        source_id = device["source_id"]
        known = sorted(specs) or (_measured(conn, source_id) if source_id else [])
        if quantity is None:
            if len(known) != 1:
                raise bad_parameter("quantity", "quantity is required: this device measures "
                                                + (", ".join(known) if known else "nothing yet"))
            quantity = known[0]
        elif specs and quantity not in specs:
            raise bad_parameter("quantity", f"device {device_id!r} does not measure {quantity!r}; "
                                            f"it measures {', '.join(known)}")
        rows = conn.execute(sa.text(
            "SELECT time, value FROM iot_readings WHERE device_id = :d AND quantity = :q "
            "AND time >= :start AND time < :end ORDER BY time LIMIT :limit"),
            {"d": source_id, "q": quantity, "start": start, "end": end, "limit": MAX_READINGS + 1}).all()
    truncated = len(rows) > MAX_READINGS
    spec = specs.get(quantity, {})
    return {
        "device": {"id": source_id, "feature_id": device["feature_id"], "name": device["name"],
                   "device_type": device["device_type"], "linked_feature": device["linked_feature"],
                   "current": device["current"]},
        "quantity": quantity,
        "unit": spec.get("unit"),
        "alarm": {k: v for k, v in spec.items() if k not in _NOT_THRESHOLDS},
        "from": start, "to": end,
        "count": min(len(rows), MAX_READINGS),
        "truncated": truncated,
        "next_from": rows[MAX_READINGS][0] if truncated else None,
        "readings": [{"time": t, "value": v} for t, v in rows[:MAX_READINGS]],
    }


def install(app: FastAPI) -> None:
    app.include_router(router)
