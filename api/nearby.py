"""``/nearby``: a layer's current features nearest a point, as GeoJSON ordered by distance.

Without ``z`` distances are 2D (plan view); with ``z`` they are true 3D, which is what
underground questions need: "gas pipelines within 3 m of an excavation point 2 m below ground".
"""
from __future__ import annotations

import math

from fastapi import APIRouter, FastAPI, Query, Request

from api.deps import get_state
from api.grid import CRS_HELP, check_point
from cim.crs import resolve_parameter
from api.limits import MAX_CRS_CHARS, MAX_FILTER_CHARS, MAX_NAME_CHARS
from api.problems import bad_parameter
from api.responses import GeoJsonResponse
from cim.cql import compile_filter
from cim.jurisdiction import statements_scoped
from cim.registry import layer_table
from cim.spatial import DEFAULT_K, DEFAULT_RADIUS_M, MAX_K, MAX_RADIUS_M, nearby, to_storage

router = APIRouter(tags=["proximity"])


@router.get("/nearby", summary="Features of a layer nearest a point (2D, or 3D with z)",
            response_class=GeoJsonResponse)
def nearby_features(
    request: Request,
    layer: str = Query(..., max_length=MAX_NAME_CHARS,
                       description="Collection id, e.g. pipelines, parts, buildings (see /collections)."),
    lon: float = Query(..., description="Longitude (or easting in a projected crs)."),
    lat: float = Query(..., description="Latitude (or northing in a projected crs)."),
    z: float | None = Query(None, description="Height in metres, -1000 to 1000 (negative below ground): "
                                              "makes distances 3D."),
    crs: str | None = Query(None, max_length=MAX_CRS_CHARS, description=CRS_HELP),
    radius: float = Query(DEFAULT_RADIUS_M, gt=0, le=MAX_RADIUS_M, description="Search radius in metres."),
    k: int = Query(DEFAULT_K, ge=1, le=MAX_K, description="At most this many features, nearest first."),
    filter: str | None = Query(None, max_length=MAX_FILTER_CHARS,
                               description="CQL2 text filter on the layer's queryables."),
) -> GeoJsonResponse:
    """A FeatureCollection (geometry in CRS84) nearest first, each with ``distance_m``."""
    state = get_state(request)
    found = state.layers().get(layer)
    if found is None:
        raise bad_parameter("layer", f"unknown layer {layer!r}; one of: {', '.join(sorted(state.layers()))}")
    spec = resolve_parameter(crs, "crs")
    check_point(lon, lat, spec)
    if z is not None and not math.isfinite(z):
        raise bad_parameter("z", f"z must be a finite number of metres, got {z}")
    srid = state.settings.srid
    where = (compile_filter(filter, "cql2-text", found, layer_table(found, srid), srid)
             if filter is not None and filter.strip() else None)
    xs, ys = to_storage([lon], [lat], spec, state.settings.srid)
    if not (math.isfinite(xs[0]) and math.isfinite(ys[0])):
        raise bad_parameter("lon", f"the point ({lon}, {lat}) cannot be expressed in the storage CRS "
                                   f"EPSG:{state.settings.srid}")
    # each statement its own transaction with the caller's scope in front (one round trip each, no BEGIN, scope
    # statement or ROLLBACK of their own): the search is one statement, or two when the k-th nearest reaches
    # a neighbouring district (cim.spatial.nearby), and reads only
    with statements_scoped(state.engine.connect()) as conn:
        hits = nearby(conn, found, float(xs[0]), float(ys[0]), z, state.settings.srid,
                      radius_m=radius, k=k, where=where)
    return GeoJsonResponse({"type": "FeatureCollection", "numberReturned": len(hits),
                            "features": [h.to_geojson() for h in hits]})


def install(app: FastAPI) -> None:
    app.include_router(router)
