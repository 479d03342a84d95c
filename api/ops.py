"""``/healthz`` (database reachable) and ``/metrics`` (Prometheus text)."""
from __future__ import annotations

import time

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from api.responses import OrjsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

REGISTRY = CollectorRegistry()
REQUESTS = Counter("cim_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("cim_http_request_duration_seconds", "Request latency", ["route", "method"],
                    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def _measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # the route template, not the raw path, so label cardinality stays bounded
        name = getattr(route, "path", "unmatched")
        REQUESTS.labels(name, request.method, str(response.status_code)).inc()
        LATENCY.labels(name, request.method).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["ops"], summary="Database reachable")
    def healthz(request: Request):
        try:
            with request.app.state.cim.engine.connect() as conn:
                postgis = conn.execute(sa.text("SELECT postgis_lib_version()")).scalar()
        except sa.exc.SQLAlchemyError as exc:
            return OrjsonResponse({"status": "unavailable", "detail": str(exc.__class__.__name__)}, status_code=503)
        return {"status": "ok", "postgis": postgis}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
