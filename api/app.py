"""The FastAPI app: one factory, one router per concern. Where a request goes:

- ``/``, ``/conformance``, ``/collections…`` → :mod:`api.features` (OGC API – Features 1–3)
- ``/grid/lookup`` → :mod:`api.grid`;  ``/nearby`` → :mod:`api.nearby`
- ``/iot/…`` → :mod:`api.iot`;  ``/ingest/{layer}`` → :mod:`api.ingest_upload`
- ``/geocode``, ``/geocode/batch``, ``/reverse`` → :mod:`api.geocode`
- ``/3dtiles/…``, ``/collections/{id}/tiles/…``, ``/tileMatrixSets…`` → :mod:`api.tiles` (a package)
- ``/cases…`` → :mod:`api.cases` (the case loop of :mod:`cases`)
- ``/open311/v2/…`` → :mod:`api.open311` (GeoReport v2 over the case loop)
- ``/scenarios/…`` → :mod:`api.scenarios` (one router module per scenario)
- ``/vitals…`` → :mod:`api.vitals` (the city's vital signs of :mod:`vitals`);  ``/dashboard`` → :mod:`api.dashboard`
- ``/viewer`` → :mod:`api.viewer`;  ``/healthz``, ``/metrics`` → :mod:`api.ops`

Before any route, the middleware of :data:`MIDDLEWARE` (one list, outermost first: metrics, the body limits of
:mod:`api.limits`, access control, the tile and case-report fast paths); TileJSON's versioned
vector-tile URLs are answered there, by :class:`api.tiles.VersionedTileMiddleware`, and the common case report
(``POST /cases``, JSON) by :class:`api.case_fast_path.CaseReportMiddleware`. Every error becomes a
problem document in one place, :mod:`api.problems`. The OpenAPI
document's error answers are written by :mod:`api.openapi_errors`.
"""
from __future__ import annotations

import importlib

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from starlette.middleware import Middleware

from api import openapi_errors, periodic, problems
from api.auth import ReadAccessMiddleware
from api.case_fast_path import CaseReportMiddleware
from api.deps import create_state
from api.limits import BodyLimitMiddleware, QueryTextMiddleware
from api.ops import MetricsMiddleware
from api.responses import OrjsonResponse
from api.tiles import VersionedTileMiddleware
from cim.config import DeploymentSettings

ROUTER_MODULES = ("api.ops", "api.features", "api.grid", "api.nearby", "api.iot", "api.ingest_upload",
                  "api.geocode", "api.tiles", "api.viewer", "api.cases", "api.open311", "api.sensing",
                  "api.scenarios", "api.vitals", "api.dashboard")

#: Every middleware of the app, outermost first; nothing else adds one. Inside the last of them come
#: Starlette's exception handlers (api.problems) and the routes.
MIDDLEWARE: tuple[Middleware, ...] = (
    # Outermost, so every answer is counted and timed: a 401 of access control, a tile of the fast path,
    # a problem document alike. (Only Starlette's own last-resort 500 handler sits outside it.)
    Middleware(MetricsMiddleware),
    # Before anything reads a body: each route's size limit (413), and a body left unread by an early
    # answer (a 401 of access control) is drained, so the client reads that answer, not a reset.
    Middleware(BodyLimitMiddleware),
    # Before any route parses a query string: a NUL in it (which PostgreSQL text cannot hold) is a 400.
    Middleware(QueryTextMiddleware),
    # Before anything reads data: when reading needs a key, no request gets further without one.
    Middleware(ReadAccessMiddleware),
    # Serves TileJSON's versioned tile URLs before routing, so it must come after access
    # control (a locked deployment locks its tiles too) and inside metrics (they are counted).
    Middleware(VersionedTileMiddleware),
    # Innermost: answers the common case report (POST /cases, JSON) before routing, after access control (the
    # key it checked) and inside metrics and the body limits.
    Middleware(CaseReportMiddleware),
)


def create_app(engine: Engine | None = None, deployment: DeploymentSettings | None = None) -> FastAPI:
    """The app over ``engine`` (default: the configured database), with the deployment settings given
    or, by default, those of the environment (:func:`cim.config.settings`)."""
    from cim.database import get_engine

    app = FastAPI(title="CIM city data platform", version="0.1.0", default_response_class=OrjsonResponse,
                  description="Spatial API over the city base: OGC API – Features, grid lookup, proximity, "
                              "geocoding and tiles.", middleware=MIDDLEWARE,
                  lifespan=periodic.lifespan)  # the periodic jobs (case tick …) when a setting enables them
    app.state.cim = create_state(engine or get_engine(), deployment)
    problems.install(app)
    for module_name in ROUTER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.install(app)
    openapi_errors.install(app)  # after the routers: the document says 400 + problem, not FastAPI's 422
    return app
