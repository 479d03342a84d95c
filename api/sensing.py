"""Live sensing over HTTP: ``POST /iot/readings`` (a batch of readings: JSON array, NDJSON or CSV),
threshold rules under ``/iot/rules`` and alerts under ``/alerts``. The work is in :mod:`sensing`;
these routes only read requests and write answers."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from api import auth
from api.deps import get_state
from api.limits import MAX_NAME_CHARS
from cim.apikeys import ApiKey
from cim.jurisdiction import as_owner
from sensing.alerts import acknowledge, get_alert, list_alerts
from sensing.intake import store_batch
from sensing.parse import format_of, parse_batch
from sensing.rules import RuleSpec, add_rule, check_rules, list_rules, remove_rule

router = APIRouter(tags=["sensing"])

def _store(engine, body: bytes, fmt: str) -> dict[str, Any]:  # noqa: ANN001
    frame = parse_batch(body, fmt, where="request body")
    # a batch makes partitions and COPYs: the owner's work, for city-wide keys only (cim.jurisdiction)
    with as_owner("storing a batch of readings"), engine.begin() as conn:
        return store_batch(conn, frame).as_dict()


@router.post("/iot/readings", summary="Store a batch of readings (role loader): JSON array, NDJSON or CSV",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                 "application/x-ndjson": {"schema": {"type": "string"}},
                 "text/csv": {"schema": {"type": "string"}}}}})
async def post_readings(request: Request, key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    """Each reading: ``device_id``, ``time`` (RFC 3339 with offset), ``quantity``, ``value``, optional
    ``unit``. Rejected rows are listed with their row number and reason; the rest are stored."""
    body = await request.body()  # at most api.limits.READINGS_MAX_BODY_BYTES: the body-limit middleware
    fmt = format_of(request.headers.get("content-type"), body)
    return await run_in_threadpool(_store, get_state(request).engine, body, fmt)


@router.get("/iot/rules", summary="Threshold rules")
def get_rules(request: Request) -> Any:
    with get_state(request).engine.connect() as conn:
        return {"rules": list_rules(conn)}


@router.post("/iot/rules", status_code=201, summary="Add a threshold rule (role loader)")
def post_rule(request: Request, rule: dict[str, Any] = Body(..., examples=[{
        "name": "积水", "device_type": "水位计", "quantity": "water_level", "direction": "above", "warning": 1.0,
        "alarm": 1.5, "hysteresis": 0.2, "duration_s": 0, "case_class": "道路积水"}]),
        key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    spec = RuleSpec.from_mapping(rule)
    with get_state(request).engine.begin() as conn:
        return add_rule(conn, spec)


@router.get("/iot/rules/check", summary="Rules that would fire on every reading, match no device, or are reversed")
def get_rules_check(request: Request) -> Any:
    with get_state(request).engine.connect() as conn:
        return {"findings": check_rules(conn)}


@router.delete("/iot/rules/{rule_id}", summary="Remove a rule; its active alerts clear (role loader)")
def delete_rule(request: Request, rule_id: int = Path(..., ge=1, le=2**31 - 1),
                key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    with get_state(request).engine.begin() as conn:
        return {"removed": rule_id, "alerts_cleared": remove_rule(conn, rule_id)}


@router.get("/alerts", summary="Alerts, newest first")
def get_alerts(request: Request,
               state: str | None = Query(None, max_length=MAX_NAME_CHARS, description="open | acknowledged | cleared | active (not cleared)"),
               device: str | None = Query(None, max_length=MAX_NAME_CHARS, description="A device's source id."),
               level: str | None = Query(None, max_length=MAX_NAME_CHARS, description="warning | alarm"),
               limit: int = Query(100, ge=1, le=10_000)) -> Any:
    with get_state(request).engine.connect() as conn:
        alerts = list_alerts(conn, state=state, device_id=device, level=level, limit=limit)
    return {"alerts": alerts, "count": len(alerts)}


@router.get("/alerts/{alert_id}", summary="One alert")
def get_one_alert(request: Request, alert_id: int = Path(..., ge=1, le=2**63 - 1)) -> Any:
    with get_state(request).engine.connect() as conn:
        return get_alert(conn, alert_id)


@router.post("/alerts/{alert_id}/ack", summary="Acknowledge an alert (role loader)")
def post_ack(request: Request, alert_id: int = Path(..., ge=1, le=2**63 - 1),
             key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    with get_state(request).engine.begin() as conn:
        return acknowledge(conn, alert_id, key.name or f"key {key.id}")


def install(app: FastAPI) -> None:
    app.include_router(router)
