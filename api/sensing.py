"""Live sensing over HTTP: ``POST /iot/readings`` (a batch of readings: JSON array, NDJSON or CSV),
threshold rules under ``/iot/rules`` and alerts under ``/alerts``. The work is in :mod:`sensing`;
these routes only read requests and write answers."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from api import auth
from api.deps import get_state
from cim.apikeys import ApiKey
from cim.errors import PayloadTooLargeError
from sensing.intake import store_batch
from sensing.parse import format_of, parse_batch

router = APIRouter(tags=["sensing"])

#: largest batch body accepted; a bigger feed is sent as several batches
MAX_BATCH_BYTES = 64 << 20


def _store(engine, body: bytes, fmt: str) -> dict[str, Any]:  # noqa: ANN001
    frame = parse_batch(body, fmt, where="request body")
    with engine.begin() as conn:
        return store_batch(conn, frame).as_dict()


@router.post("/iot/readings", summary="Store a batch of readings (role loader): JSON array, NDJSON or CSV",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                 "application/x-ndjson": {"schema": {"type": "string"}},
                 "text/csv": {"schema": {"type": "string"}}}}})
async def post_readings(request: Request, key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    """Each reading: ``device_id``, ``time`` (RFC 3339 with offset), ``quantity``, ``value``, optional
    ``unit``. Rejected rows are listed with their row number and reason; the rest are stored."""
    body = await request.body()
    if len(body) > MAX_BATCH_BYTES:
        raise PayloadTooLargeError(f"a batch of readings is at most {MAX_BATCH_BYTES >> 20} MiB; "
                                   f"send this one as several batches")
    fmt = format_of(request.headers.get("content-type"), body)
    return await run_in_threadpool(_store, get_state(request).engine, body, fmt)


def install(app: FastAPI) -> None:
    app.include_router(router)
