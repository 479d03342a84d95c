"""``/healthz`` (database reachable) and ``/metrics`` (Prometheus text)."""
from __future__ import annotations

import time

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.responses import OrjsonResponse
from cim.errors import UnavailableError
from cim.jurisdiction import statements_scoped

REGISTRY = CollectorRegistry()
REQUESTS = Counter("cim_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("cim_http_request_duration_seconds", "Request latency", ["route", "method"],
                    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class MetricsMiddleware:
    """Request counts and latency per route template, as plain ASGI (a BaseHTTPMiddleware costs a task and a
    stream per request, measured at ~10 % of a worker's CPU under load)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # the route template (set on the scope by the router), so label cardinality stays bounded
            name = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(name, scope["method"], str(status)).inc()
            LATENCY.labels(name, scope["method"]).observe(time.perf_counter() - started)


def install(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"], summary="Database reachable",
             responses={503: {"description": "The database is not reachable.", "content": {"application/json": {}}}})
    def healthz(request: Request):
        try:
            # one round trip: the statement is its own transaction, the caller's scope in front of it
            with statements_scoped(request.app.state.cim.engine.connect()) as conn:
                postgis = conn.execute(sa.text("SELECT postgis_lib_version()")).scalar()
        except (sa.exc.SQLAlchemyError, UnavailableError) as exc:
            return OrjsonResponse({"status": "unavailable", "detail": str(exc.__class__.__name__)}, status_code=503)
        return {"status": "ok", "postgis": postgis}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
