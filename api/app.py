"""The FastAPI app: one factory, one router per concern. Where a request goes:

- ``/``, ``/conformance``, ``/collections…`` → :mod:`api.features` (OGC API – Features 1–3)
- ``/grid/lookup`` → :mod:`api.grid`;  ``/nearby`` → :mod:`api.nearby`
- ``/iot/…`` → :mod:`api.iot`;  ``/ingest/{layer}`` → :mod:`api.ingest_upload`
- ``/geocode``, ``/reverse`` → :mod:`api.geocode`
- ``/3dtiles/…``, ``/collections/{id}/tiles/…`` → :mod:`api.tiles`;  ``/viewer`` → :mod:`api.viewer`
- ``/cases…`` → :mod:`api.cases` (the case loop of :mod:`cases`)
- ``/open311/v2/…`` → :mod:`api.open311` (GeoReport v2 over the case loop)
- ``/healthz``, ``/metrics`` → :mod:`api.ops`
"""
from __future__ import annotations

import importlib

from fastapi import FastAPI
from api.responses import OrjsonResponse
from sqlalchemy.engine import Engine

from api import problems
from api.deps import create_state

ROUTER_MODULES = ("api.ops", "api.auth", "api.features", "api.grid", "api.nearby", "api.iot", "api.ingest_upload",
                  "api.geocode", "api.tiles", "api.viewer", "api.cases",
                  "api.open311")


def create_app(engine: Engine | None = None) -> FastAPI:
    from cim.database import get_engine

    app = FastAPI(title="CIM city data platform", version="0.1.0", default_response_class=OrjsonResponse,
                  description="Spatial API over the city base: OGC API – Features, grid lookup, proximity, "
                              "geocoding and tiles.")
    app.state.cim = create_state(engine or get_engine())
    problems.install(app)
    for module_name in ROUTER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.install(app)
    return app
