"""``/scenarios/illegal-building/…``: a thin adapter over :mod:`scenarios.illegal_building`.

- ``POST …/clues`` — one clue from any of the five channels: ``lon``/``lat`` (+ ``crs``), an
  ``address``, or a change polygon ``geometry`` (GeoJSON, in ``crs``); 201 with the clue, the spot it
  joined (``merged_into``) and the spot's verification case; the same channel + external id → 200.
- ``GET …/clues/{id}/spot`` — the clues of its spot.
- ``GET …/structures`` (GeoJSON) and ``…/structures/{code}`` — the illegal-structures layer.
- ``POST …/structures/{code}/certificate`` — a property certificate: the district's re-check case.
- ``GET …/hotspots`` — spots per grid per month with baseline and significance.
- ``GET …/layer`` (GeoJSON, WGS84) — the viewer's layer: the structures (``kind`` structure), the open
  clue spots (``kind`` spot) and one month's grids with their spot counts and significance (``kind`` hotspot).

The verification flow itself runs through ``POST /cases/{id}/actions`` (``handle`` with
``data.finding``): the scenario's hook on the case loop opens the next case.
"""
from __future__ import annotations

from typing import Any

import shapely.geometry
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from api import auth
from api.deps import get_state
from api.limits import MAX_NAME_CHARS
from api.params import body_json, body_text
from api.responses import OrjsonResponse
from cim.apikeys import ApiKey
from cim.errors import NotFoundError, ParameterError
from scenarios.illegal_building import flow, hotspots, structures
from scenarios.illegal_building.clues import Clue, add_clue, open_spots, spot_of
from scenarios.illegal_building.importer import instant

router = APIRouter(prefix="/scenarios/illegal-building", tags=["scenarios: illegal construction"])


def _clue(data: Any) -> Clue:
    if not isinstance(data, dict):
        raise ParameterError("body", "body: a JSON object with channel and lon/lat, address or geometry")
    for key in ("channel", "crs", "address", "description", "external_id", "reported_at"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ParameterError(key, f"{key}: a string")
        body_text(key, data.get(key))
    body_json("attributes", data.get("attributes"))
    for key in ("lon", "lat"):
        if data.get(key) is not None and (isinstance(data[key], bool) or not isinstance(data[key], int | float)):
            raise ParameterError(key, f"{key}: a number")
    polygon = None
    if data.get("geometry") is not None:
        try:
            polygon = shapely.geometry.shape(data["geometry"])
        except Exception:  # shapely says little that a client can use
            raise ParameterError("geometry", "geometry: not a GeoJSON geometry") from None
    when = data.get("reported_at")
    return Clue(channel=data.get("channel") or "", x=data.get("lon"), y=data.get("lat"), polygon=polygon,
                crs=data.get("crs") or "EPSG:4326", address_text=data.get("address"),
                description=data.get("description"), external_id=data.get("external_id"),
                reported_at=instant("body", "reported_at", when) if when else None,
                attributes=data.get("attributes") if isinstance(data.get("attributes"), dict) else {})


@router.post("/clues", status_code=201, summary="Take one illegal-building clue in (any of the five channels)",
             responses={200: {"description": "A clue with this channel and external_id exists: it."},
                        201: {"description": "The clue, the spot it joined or opened, and the spot's case."}})
async def post_clue(request: Request, key: ApiKey = Depends(auth.require_role("reader"))) -> OrjsonResponse:
    try:
        data = await request.json()
    except ValueError:
        raise ParameterError("body", "body: not valid JSON") from None
    clue = _clue(data)
    state = get_state(request)

    def run():
        with state.engine.begin() as conn:
            return add_clue(conn, clue)

    result = await run_in_threadpool(run)
    return OrjsonResponse(result.to_dict(), status_code=201 if result.created else 200)


@router.get("/clues/{clue_id}/spot", summary="The clues of the spot a clue belongs to")
def get_spot(request: Request, clue_id: int) -> dict[str, Any]:
    with get_state(request).engine.connect() as conn:
        clues = spot_of(conn, clue_id)
    if not clues:
        raise NotFoundError(f"clue {clue_id} does not exist")
    return {"clue_id": clue_id, "spot": clues}


@router.get("/structures", summary="The illegal-structures layer (GeoJSON, WGS84)")
def get_structures(request: Request, status: str | None = Query(None, max_length=MAX_NAME_CHARS),
                   grid: str | None = Query(None, max_length=MAX_NAME_CHARS)) -> dict[str, Any]:
    with get_state(request).engine.connect() as conn:
        items = structures.list_structures(conn, status, grid)
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": s["code"], "geometry": s.pop("geometry"), "properties": s} for s in items]}


@router.get("/structures/{code}", summary="One structure of the layer")
def get_structure(request: Request, code: str) -> dict[str, Any]:
    with get_state(request).engine.connect() as conn:
        return structures.get_structure(conn, code)


@router.post("/structures/{code}/certificate", status_code=201,
             summary="A structure got a property certificate: open the district's re-check")
async def post_certificate(request: Request, code: str,
                           key: ApiKey = Depends(auth.require_role("loader"))) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise ParameterError("body", "body: not valid JSON") from None
    number = data.get("certificate_no") if isinstance(data, dict) else None
    if not isinstance(number, str):
        raise ParameterError("certificate_no", "certificate_no: the certificate's number, a string")
    body_text("certificate_no", number)
    state = get_state(request)

    def run() -> int:
        with state.engine.begin() as conn:
            return flow.certificate(conn, code, number)

    return {"structure_code": code, "case_id": await run_in_threadpool(run)}


@router.get("/hotspots", summary="Spots per grid per month, with the grid's baseline and a Poisson significance")
def get_hotspots(request: Request, from_: str = Query(..., alias="from", max_length=16, description="YYYY-MM"),
                 to: str = Query(..., max_length=16, description="YYYY-MM"),
                 baseline: int = Query(12, ge=1, le=120), alpha: float = Query(0.01, gt=0, lt=1),
                 min_count: int = Query(3, ge=1), hot: bool = Query(False, description="Only hot grid-months."),
                 ) -> dict[str, Any]:
    with get_state(request).engine.connect() as conn:
        rows = hotspots.hotspots(conn, from_, to, baseline, alpha, min_count, hot)
    return {"grid_months": [r.to_dict() for r in rows]}


def _feature(kind: str, item: dict[str, Any], fid: str) -> dict[str, Any]:
    geometry = item.pop("geometry")
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": {"kind": kind, **item}}


@router.get("/layer", summary="The viewer's layer (GeoJSON, WGS84): structures, open clue spots, one month's hot-spot grids")
def get_layer(request: Request,
              month: str | None = Query(None, max_length=16, description="YYYY-MM; default the latest clue's month"),
              baseline: int = Query(12, ge=1, le=120), alpha: float = Query(0.01, gt=0, lt=1),
              min_count: int = Query(3, ge=1)) -> dict[str, Any]:
    with get_state(request).engine.connect() as conn:
        month = month or hotspots.latest_month(conn)
        grids = hotspots.hotspot_grids(conn, month, baseline, alpha, min_count) if month else []
        items = structures.list_structures(conn)
        spots = open_spots(conn)
    # grids first: the choropleth lies under the structures and spots
    return {"type": "FeatureCollection", "month": month, "features": [
        *(_feature("hotspot", g, f"grid-{g['grid_code']}") for g in grids),
        *(_feature("structure", s, s["code"]) for s in items),
        *(_feature("spot", s, f"clue-{s['clue_id']}") for s in spots)]}


def install(app: FastAPI) -> None:
    app.include_router(router)

