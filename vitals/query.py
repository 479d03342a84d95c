"""Reading the vital signs back: values of a level (newest, or a time range), and the summary per
dimension with its worst indicators — for ``GET /vitals…``, the dashboard and ``cim vitals show``."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import ParameterError
from vitals.catalogue import DIMENSION_EN, DIMENSIONS, LEVELS, Indicator, get_indicator, list_indicators
from vitals.compute import CITY_CODE

#: the name of an area of a level, valid now
_NAMES = {
    "district": "SELECT code, max(name) AS name FROM districts WHERE valid_to IS NULL GROUP BY code",
    "street": "SELECT code, max(name) AS name FROM streets WHERE valid_to IS NULL GROUP BY code",
    "grid": "SELECT grid_code AS code, max(name) AS name FROM grids WHERE valid_to IS NULL GROUP BY grid_code",
}
_STATUS_RANK = {"red": 3, "yellow": 2, "green": 1, None: 0}


@dataclass(frozen=True)
class ValueQuery:
    level: str = "city"
    code: str | None = None
    indicators: tuple[str, ...] = ()
    start: datetime | None = None  # inclusive
    end: datetime | None = None    # exclusive
    limit: int = 10_000


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ParameterError("level", f"level: {level!r} is not one of {', '.join(LEVELS)}")
    return level


def check_area(conn: Connection, level: str, code: str) -> None:
    """An area code that the base does not hold (now) is a bad parameter, not an empty answer."""
    if "\x00" in code:  # PostgreSQL text cannot hold NUL
        raise ParameterError("code", "code contains a NUL character (U+0000)")
    if level == "city":
        if code != CITY_CODE:
            raise ParameterError("code", f"code: the city level has one area, {CITY_CODE!r}; got {code!r}")
        return
    found = conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM ({_NAMES[level]}) n WHERE n.code = :c)"),
                         {"c": code}).scalar()
    if not found:
        raise ParameterError("code", f"code: no {level} {code!r} in the base")


def values(conn: Connection, q: ValueQuery) -> list[dict[str, Any]]:
    """Values of ``q.level`` (one area, or all): in ``[start, end)`` when a time is given, else the newest
    value of each indicator and area. Ordered by indicator, area, time."""
    check_level(q.level)
    if q.code is not None:
        check_area(conn, q.level, q.code)
    for code in q.indicators:
        get_indicator(conn, code)
    if q.start is not None and q.end is not None and q.end <= q.start:
        raise ParameterError("to", f"to: {q.end.isoformat()} is not after from {q.start.isoformat()}")
    where = ["v.level = :level"]
    params: dict[str, Any] = {"level": q.level, "limit": q.limit}
    if q.code is not None:
        where.append("v.area_code = :code")
        params["code"] = q.code
    if q.indicators:
        where.append("v.indicator = ANY(CAST(:inds AS text[]))")
        params["inds"] = list(q.indicators)
    if q.start is not None:
        where.append("v.at >= :start")
        params["start"] = q.start
    if q.end is not None:
        where.append("v.at < :end")
        params["end"] = q.end
    ranged = q.start is not None or q.end is not None
    inner = (f"SELECT v.* FROM vital_values v WHERE {' AND '.join(where)}" if ranged else
             f"SELECT DISTINCT ON (v.indicator, v.area_code) v.* FROM vital_values v WHERE {' AND '.join(where)} "
             "ORDER BY v.indicator, v.area_code, v.at DESC")
    names = _NAMES.get(q.level, f"SELECT '{CITY_CODE}'::text AS code, NULL::text AS name")
    rows = conn.execute(sa.text(
        f"SELECT x.indicator, x.level, x.area_code, n.name AS area_name, x.at, x.value, x.status, x.source "
        f"FROM ({inner}) x LEFT JOIN ({names}) n ON n.code = x.area_code "
        "ORDER BY x.indicator, x.area_code, x.at LIMIT :limit"), params)
    return [dict(r._mapping) for r in rows]


def _severity(ind: Indicator, value: float) -> float:
    """How far past its yellow threshold a value is, in units of the threshold (larger is worse)."""
    if ind.yellow is None:
        return float("-inf")
    scale = abs(ind.yellow) or 1.0
    return (value - ind.yellow) / scale if ind.direction == "higher_worse" else (ind.yellow - value) / scale


def summary(conn: Connection, level: str = "city", code: str | None = None, worst: int = 3) -> dict[str, Any]:
    """Per dimension (the six, in order): how many indicators are red, yellow, green (newest values of
    the area) and its ``worst`` indicators — red before yellow before green, then by how far past the
    yellow threshold; unrated ones last."""
    check_level(level)
    code = CITY_CODE if level == "city" and code is None else code
    if code is None:
        raise ParameterError("code", f"code: which {level}? (the summary is of one area)")
    if not 1 <= worst <= 50:
        raise ParameterError("worst", f"worst: {worst} is not between 1 and 50")
    latest = {r["indicator"]: r for r in values(conn, ValueQuery(level=level, code=code, limit=100_000))}
    catalogue = list_indicators(conn)
    dimensions = []
    for dim in DIMENSIONS:
        entries = []
        for ind in catalogue:
            row = latest.get(ind.code)
            if ind.dimension != dim or row is None:
                continue
            entries.append({"indicator": ind.code, "name_zh": ind.name_zh, "name_en": ind.name_en, "unit": ind.unit,
                            "value": row["value"], "status": row["status"], "at": row["at"],
                            "yellow": ind.yellow, "red": ind.red, "direction": ind.direction,
                            "source": row["source"], "_rank": (_STATUS_RANK[row["status"]],
                                                               _severity(ind, row["value"]))})
        entries.sort(key=lambda e: e["_rank"], reverse=True)
        counts = {s: sum(1 for e in entries if e["status"] == s) for s in ("red", "yellow", "green")}
        for e in entries:
            del e["_rank"]
        status = next((s for s in ("red", "yellow", "green") if counts[s]), None)
        dimensions.append({"dimension": dim, "dimension_en": DIMENSION_EN[dim], "status": status,
                           "indicators": len(entries), **counts, "worst": entries[:worst]})
    newest = max((r["at"] for r in latest.values()), default=None)
    return {"level": level, "code": code, "at": newest, "dimensions": dimensions}
