"""``/dashboard``: the city's vital signs at a glance — the six dimensions with their worst indicators,
a choropleth of one indicator by street or grid (MapLibre GL over the platform's own vector tiles),
live alerts and the newest cases. A static page that reads ``/vitals…``, ``/alerts`` and ``/cases``.

MapLibre comes from npm through the viewer's mount (``/viewer/lib/maplibre``, see :mod:`api.viewer`):
one place serves ``node_modules``, no CDN.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from api.viewer import LIBRARIES, node_modules

DASHBOARD_DIR = Path(__file__).with_name("static") / "dashboard"


def install(app: FastAPI) -> None:
    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        if not (node_modules() / LIBRARIES["maplibre"]).is_dir():
            return HTMLResponse(
                "<!doctype html><meta charset='utf-8'><title>CIM dashboard</title>"
                f"<p>The dashboard needs the npm package maplibre-gl in {node_modules()}: run "
                "<code>npm ci</code> at the repository root (<code>make setup</code> does it).</p>", status_code=503)
        return HTMLResponse((DASHBOARD_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/dashboard/", include_in_schema=False)
    async def dashboard_slash() -> RedirectResponse:
        return RedirectResponse("../dashboard", status_code=308)

    app.mount("/dashboard/static", StaticFiles(directory=DASHBOARD_DIR), name="dashboard-static")
