"""``/scenarios/flood/…``: the water-logging response over HTTP — declare a warning for an area, respond
to a water-level alarm, read responses, trucks and the live flood layer. The work is in
:mod:`scenarios.flood`; these routes only read requests and write answers."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request

from api import auth
from api.deps import get_state
from cim.apikeys import ApiKey
from cim.errors import ParameterError
from scenarios.flood.layer import flood_layer
from scenarios.flood.response import (close_response, declare_warning, get_response, list_responses,
                                      respond_to_alarm)
from scenarios.flood.routing import resources

router = APIRouter(prefix="/scenarios/flood", tags=["scenarios: water-logging"])
WARNING_FIELDS = {"area", "crs", "lon", "lat", "radius_m", "level", "title", "k"}
_TYPES = {"crs": str, "level": str, "title": str, "lon": (int, float), "lat": (int, float),
          "radius_m": (int, float), "k": int}


def _warning_args(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ParameterError("body", "the body is a JSON object: area (LEVEL:CODE or a GeoJSON polygon) or lon/lat, "
                                     "optional crs, radius_m, level, title, k")
    unknown = sorted(set(body) - WARNING_FIELDS)
    if unknown:
        raise ParameterError(unknown[0], f"unknown field(s) {', '.join(unknown)}; a warning has "
                                         f"{', '.join(sorted(WARNING_FIELDS))}")
    for field, kind in _TYPES.items():
        value = body.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ParameterError(field, f"{field}: {value!r} is not of the right type")
    area = body.get("area")
    if area is not None and not isinstance(area, (str, dict)):
        raise ParameterError("area", "area: LEVEL:CODE (e.g. street:310104003) or a GeoJSON Polygon/MultiPolygon")
    args = {k: body[k] for k in ("area", "crs", "lon", "lat", "level", "title", "k") if body.get(k) is not None}
    if body.get("radius_m") is not None:
        args["radius_m"] = float(body["radius_m"])
    return args


@router.post("/warnings", status_code=201, summary="Declare a warning for an area and respond (role loader)")
def post_warning(request: Request, body: Any = Body(..., examples=[{"area": "street:310104008", "level": "暴雨橙色"},
                                                                    {"lon": 121.4472, "lat": 31.1959, "radius_m": 300}]),
                 key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    """The affected compounds, buildings, addresses and underground parts, the nearest pump trucks by
    road (``summary.pump_trucks.method`` says whether roads were used) and the cases pushed."""
    args = _warning_args(body)
    with get_state(request).engine.begin() as conn:
        return declare_warning(conn, **args)


@router.post("/alarms/{alert_id}/response", summary="Respond to a water-level alarm (role loader; idempotent)")
def post_alarm_response(request: Request, alert_id: int = Path(..., ge=1, le=2**63 - 1),
                        k: int = Query(5, ge=1, le=50), key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    with get_state(request).engine.begin() as conn:
        return respond_to_alarm(conn, alert_id, k)


@router.get("/responses", summary="Flood responses, newest first")
def get_responses(request: Request, active: bool | None = Query(None, description="true: open ones only"),
                  limit: int = Query(100, ge=1, le=1000)) -> Any:
    with get_state(request).engine.connect() as conn:
        return {"responses": list_responses(conn, active, limit)}


@router.get("/responses/{response_id}", summary="One flood response")
def get_one_response(request: Request, response_id: int = Path(..., ge=1, le=2**63 - 1)) -> Any:
    with get_state(request).engine.connect() as conn:
        return get_response(conn, response_id)


@router.post("/responses/{response_id}/close", summary="Close a response; its trucks are available again "
                                                       "(role loader)")
def post_close(request: Request, response_id: int = Path(..., ge=1, le=2**63 - 1),
               key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    with get_state(request).engine.begin() as conn:
        return close_response(conn, response_id)


@router.get("/resources", summary="Pump trucks and teams: status and latest GPS fix")
def get_resources(request: Request) -> Any:
    with get_state(request).engine.connect() as conn:
        return {"resources": resources(conn)}


@router.get("/layer", summary="The live flood layer (GeoJSON, WGS84): open ponding areas, their compounds, trucks")
def get_layer(request: Request) -> Any:
    with get_state(request).engine.connect() as conn:
        return flood_layer(conn)


def install(app: FastAPI) -> None:
    app.include_router(router)
