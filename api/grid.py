"""``/grid/lookup``: the district, street, community and unit grid of points, and who answers for
the grid. One point by GET, up to 10,000 by POST; answers keep the input order.

Also holds the point and CRS checks the other point-taking routes (``/nearby``) share.
"""
from __future__ import annotations

import math

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, Field

from api.deps import get_state
from api.limits import MAX_CRS_CHARS
from api.problems import bad_parameter
from cim.crs import CrsSpec, resolve_parameter
from cim.grid import MAX_POINTS, answers_to_dicts, lookup_points

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


def _answer(request: Request, lons: list[float], lats: list[float], crs: CrsSpec) -> dict:
    state = get_state(request)
    with state.engine.connect() as conn:
        answers = lookup_points(conn, lons, lats, crs, state.settings)
    return {"results": answers_to_dicts(answers)}


@router.get("/grid/lookup", summary="Grid, community, street and district of one point, and who is responsible")
def grid_lookup(request: Request,
                lon: float = Query(..., description="Longitude (or easting in a projected crs)."),
                lat: float = Query(..., description="Latitude (or northing in a projected crs)."),
                crs: str | None = Query(None, max_length=MAX_CRS_CHARS, description=CRS_HELP)) -> dict:
    """``{"results": [answer]}``; ``level`` is the finest unit found (grid, community, street,
    district) or ``none``. A point on a shared boundary gets the unit with the smallest code."""
    spec = resolve_parameter(crs, "crs")
    check_point(lon, lat, spec)
    return _answer(request, [lon], [lat], spec)


@router.post("/grid/lookup", summary=f"Grid lookup for up to {MAX_POINTS:,} points")
def grid_lookup_batch(request: Request, body: LookupRequest) -> dict:
    """``{"results": [...]}`` in the order of ``points``; answered in one database statement."""
    spec = resolve_parameter(body.crs, "crs")
    for i, p in enumerate(body.points):
        check_point(p.lon, p.lat, spec, f"points.{i}.lon", f"points.{i}.lat")
    return _answer(request, [p.lon for p in body.points], [p.lat for p in body.points], spec)


def install(app: FastAPI) -> None:
    app.include_router(router)
