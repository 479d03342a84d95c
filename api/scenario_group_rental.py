"""``/scenarios/group-rental/…``: a thin adapter over :mod:`scenarios.group_rental`.

- ``GET …/scores`` — a scoring run's scores (default the latest), highest first, with reasons.
- ``GET …/suspects`` (GeoJSON, WGS84) — the run's flagged addresses as points, with the same fields.
- ``POST …/runs`` — score with the packaged model over ``from``/``to`` (YYYY-MM; default the
  latest three months); ``POST …/runs/{id}/push`` — flagged addresses → cases at the 平安办.

The loop at the 平安办 (登记, door visit, rectification, 复核/督办) is the case loop's own actions on
``POST /cases/{id}/actions``.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from api import auth
from api.deps import get_state
from cim.apikeys import ApiKey
from cim.errors import ParameterError
from scenarios.group_rental.handling import push
from scenarios.group_rental.model import load_model
from scenarios.group_rental.score import explain, month_of, score, suspects

router = APIRouter(prefix="/scenarios/group-rental", tags=["scenarios: group rental"])


@router.get("/scores", summary="Suspicion scores with their reasons, highest first")
def get_scores(request: Request, run: int | None = Query(None, ge=1, le=2**31 - 1), flagged: bool = Query(False),
               limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    with get_state(request).engine.connect() as conn:
        return {"scores": explain(conn, run, flagged, limit=limit)}


@router.get("/suspects", summary="A run's flagged addresses as GeoJSON points (WGS84), with their reasons")
def get_suspects(request: Request, run: int | None = Query(None, ge=1, le=2**31 - 1),
                 limit: int = Query(1000, ge=1, le=10000)) -> dict[str, Any]:
    with get_state(request).engine.connect() as conn:
        return suspects(conn, run, limit)


@router.post("/runs", status_code=201, summary="Score every address over a window of months")
async def post_run(request: Request, key: ApiKey = Depends(auth.require_role("loader"))) -> dict[str, Any]:
    try:
        data = await request.json() if await request.body() else {}
    except ValueError:
        raise ParameterError("body", "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise ParameterError("body", "body: a JSON object with optional from and to (YYYY-MM)")
    first = month_of(data["from"], "from") if data.get("from") else None
    last = month_of(data["to"], "to") if data.get("to") else None
    state = get_state(request)

    def run() -> dict[str, Any]:
        with state.engine.begin() as conn:
            return score(conn, load_model(), first, last).to_dict()

    return await run_in_threadpool(run)


@router.post("/runs/{run_id}/push", summary="Open cases at the street's 平安办 for the run's flagged addresses")
async def post_push(request: Request, run_id: int, key: ApiKey = Depends(auth.require_role("admin"))) -> dict[str, Any]:
    state = get_state(request)

    def run() -> list[dict[str, Any]]:
        with state.engine.begin() as conn:
            return push(conn, run_id)

    return {"cases": await run_in_threadpool(run)}


def install(app: FastAPI) -> None:
    app.include_router(router)
