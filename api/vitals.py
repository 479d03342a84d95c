"""The city's vital signs over HTTP: ``GET /vitals`` (values of a level: the newest, or a time range),
``GET /vitals/indicators`` (the catalogue) and ``GET /vitals/summary`` (per dimension, the worst
indicators of an area). The work is in :mod:`vitals`; times go through :mod:`cim.times`."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request

from api.deps import get_state
from api.limits import MAX_DATETIME_CHARS, MAX_LIST_CHARS, MAX_NAME_CHARS
from api.problems import bad_parameter
from cim.times import day_start, next_day, parse_instant
from vitals.catalogue import list_indicators
from vitals.query import ValueQuery, summary, values

router = APIRouter(tags=["vitals"])
MAX_VALUES = 100_000


def _from(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = parse_instant(text, "from")
    return value if isinstance(value, datetime) else day_start(value)


def _to(text: str | None) -> datetime | None:
    """The end, excluded; a date means up to the end of that day."""
    if text is None:
        return None
    value = parse_instant(text, "to")
    return value if isinstance(value, datetime) else day_start(next_day(value, "to"))


def _indicators(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    codes = tuple(c.strip() for c in text.split(",") if c.strip())
    if not codes:
        raise bad_parameter("indicator", "indicator: give one or more indicator codes, separated by commas")
    return codes


@router.get("/vitals", summary="Vital-sign values of a level: the newest per indicator and area, or a time range")
def get_vitals(request: Request,
               level: str = Query("city", max_length=MAX_NAME_CHARS, description="city | district | street | grid"),
               code: str | None = Query(None, max_length=MAX_NAME_CHARS, description="One area's code (all if absent)."),
               indicator: str | None = Query(None, max_length=MAX_LIST_CHARS,
                                             description="Indicator codes, comma-separated (all if absent)."),
               from_: str | None = Query(None, alias="from", max_length=MAX_DATETIME_CHARS,
                                         description="From this time (RFC 3339 with offset, or a date), included."),
               to: str | None = Query(None, max_length=MAX_DATETIME_CHARS,
                                      description="Up to this time, excluded (a date: that whole day included)."),
               limit: int = Query(10_000, ge=1, le=MAX_VALUES)) -> Any:
    """Without ``from``/``to``: the newest value of each indicator and area; with them: every value in
    the range (a time series)."""
    q = ValueQuery(level=level, code=code, indicators=_indicators(indicator), start=_from(from_), end=_to(to),
                   limit=limit)
    with get_state(request).engine.begin() as conn:
        rows = values(conn, q)
    return {"level": level, "code": code, "values": rows, "count": len(rows)}


@router.get("/vitals/indicators", summary="The indicator catalogue (six dimensions)")
def get_indicators(request: Request,
                   dimension: str | None = Query(None, max_length=MAX_NAME_CHARS,
                                                 description="基础设施 … 城市活力, or infrastructure … vitality."),
                   source: str | None = Query(None, max_length=MAX_NAME_CHARS, description="computed | fed")) -> Any:
    # begin, not connect: the first read of a new base seeds the packaged catalogue, and keeps it
    with get_state(request).engine.begin() as conn:
        found = list_indicators(conn, dimension, source)
    return {"indicators": [i.as_dict() for i in found], "count": len(found)}


@router.get("/vitals/summary", summary="Per dimension, the status counts and worst indicators of an area")
def get_summary(request: Request,
                level: str = Query("city", max_length=MAX_NAME_CHARS, description="city | district | street | grid"),
                code: str | None = Query(None, max_length=MAX_NAME_CHARS, description="The area (default: the city)."),
                worst: int = Query(3, ge=1, le=50, description="Worst indicators listed per dimension.")) -> Any:
    with get_state(request).engine.begin() as conn:
        return summary(conn, level, code, worst)


def install(app: FastAPI) -> None:
    app.include_router(router)

