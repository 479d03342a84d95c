"""``/grid/lookup``: the district, street, community and unit grid of points, and who answers for
the grid. One point by GET, up to 10,000 by POST; answers keep the input order.

Also holds the point and CRS checks the other point-taking routes (``/nearby``) share.
"""
from __future__ import annotations

import math
from dataclasses import replace

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, Field

from api.deps import get_state
from api.limits import MAX_CRS_CHARS
from api.problems import bad_parameter
from api.responses import OrjsonResponse
from cim.crs import CrsSpec, resolve_parameter
from cases.model import mask
from cim.audit import record_unmasked_read
from cim.grid import MAX_POINTS, GridAnswer, Responsibility, answers_to_dicts, as_stored, lookup_points
from cim.jurisdiction import current_scope, statements_scoped

router = APIRouter(tags=["grid"])

CRS_HELP = ("CRS of lon/lat: an EPSG code ('4326', 'EPSG:4549'), 'gcj02' (Amap/Tencent), 'bd09' (Baidu), "
            "'CRS84' or a CRS URI/URN; default WGS84. lon/lat are named, so they are longitude/latitude (with a "
            "projected CRS easting/northing) whatever axis order the CRS spelling has.")


def check_point(x: float, y: float, crs: CrsSpec, x_name: str = "lon", y_name: str = "lat") -> None:
    """400 for non-finite coordinates, and for degrees out of range in a geographic CRS."""
    for name, value in ((x_name, x), (y_name, y)):
        if not math.isfinite(value):
            raise bad_parameter(name, f"{name} must be a finite number, got {value}")
    if crs.is_geographic:
        if not -180.0 <= x <= 180.0:
            raise bad_parameter(x_name, f"{x_name} must be between -180 and 180 degrees, got {x}")
        if not -90.0 <= y <= 90.0:
            raise bad_parameter(y_name, f"{y_name} must be between -90 and 90 degrees, got {y}")


class LookupPoint(BaseModel):
    lon: float = Field(description="Longitude (or easting in a projected crs).")
    lat: float = Field(description="Latitude (or northing in a projected crs).")


class LookupRequest(BaseModel):
    points: list[LookupPoint] = Field(max_length=MAX_POINTS, description=f"At most {MAX_POINTS:,} points.")
    crs: str | None = Field(None, max_length=MAX_CRS_CHARS, description=CRS_HELP)


def masked(answers: list[GridAnswer]) -> list[GridAnswer]:
    """Responsible persons' contacts masked (139****5678), the chains shared between answers kept shared
    (grid lookup and geocoding answers both carry them)."""
    done: dict[int, tuple[Responsibility, ...]] = {}

    def chain(rs: tuple[Responsibility, ...]) -> tuple[Responsibility, ...]:
        if id(rs) not in done:
            done[id(rs)] = tuple(replace(r, persons=tuple(replace(p, contact=mask(p.contact)) for p in r.persons))
                                 for r in rs)
        return done[id(rs)]

    return [replace(a, responsibility=chain(a.responsibility)) for a in answers]


def _answer(request: Request, lons: list[float], lats: list[float], crs: CrsSpec) -> OrjsonResponse:
    """Other jurisdictions' grids are not seen (row-level security): a point there has no grid. Contacts
    are masked unless the caller's role needs them; an unmasked answer is audited.

    The lookup is one statement: it runs as its own transaction with the caller's scope in front (one round
    trip, :func:`cim.jurisdiction.statements_scoped`) and through the prepared statement (no planning). The
    answer is JSON-ready dicts already: it is sent as it is, not validated again against the route's ``dict``."""
    state = get_state(request)
    personal = current_scope().personal_data
    with statements_scoped(state.engine.connect()) as conn:
        answers = lookup_points(conn, lons, lats, crs, state.settings, prepared=True,
                                contact=as_stored if personal else mask)
    if personal and any(p.contact for a in answers for r in a.responsibility for p in r.persons):
        record_unmasked_read(state.engine, "persons", {"grids": sorted({a.grid.code for a in answers if a.grid})})
    return OrjsonResponse({"results": answers_to_dicts(answers)})


@router.get("/grid/lookup", response_model=dict,
            summary="Grid, community, street and district of one point, and who is responsible")
def grid_lookup(request: Request,
                lon: float = Query(..., description="Longitude (or easting in a projected crs)."),
                lat: float = Query(..., description="Latitude (or northing in a projected crs)."),
                crs: str | None = Query(None, max_length=MAX_CRS_CHARS, description=CRS_HELP)) -> OrjsonResponse:
    """``{"results": [answer]}``; ``level`` is the finest unit found (grid, community, street,
    district) or ``none``. A point on a shared boundary gets the unit with the smallest code."""
    spec = resolve_parameter(crs, "crs")
    check_point(lon, lat, spec)
    return _answer(request, [lon], [lat], spec)


@router.post("/grid/lookup", response_model=dict, summary=f"Grid lookup for up to {MAX_POINTS:,} points")
def grid_lookup_batch(request: Request, body: LookupRequest) -> OrjsonResponse:
    """``{"results": [...]}`` in the order of ``points``; answered in one database statement."""
    spec = resolve_parameter(body.crs, "crs")
    for i, p in enumerate(body.points):
        check_point(p.lon, p.lat, spec, f"points.{i}.lon", f"points.{i}.lat")
    return _answer(request, [p.lon for p in body.points], [p.lat for p in body.points], spec)


def install(app: FastAPI) -> None:
    app.include_router(router)
