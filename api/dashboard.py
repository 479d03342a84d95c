"""``/dashboard``: the city's vital signs at a glance — the six dimensions with their worst indicators,
a choropleth of one indicator by street or grid (MapLibre GL over the platform's own vector tiles),
live alerts and the newest cases. A static page that reads ``/vitals…``, ``/alerts`` and ``/cases``.

MapLibre comes from npm through the viewer's mount (``/viewer/lib/maplibre``, see :mod:`api.viewer`):
one place serves ``node_modules``, no CDN.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from api.viewer import install_page

DASHBOARD_DIR = Path(__file__).with_name("static") / "dashboard"


def install(app: FastAPI) -> None:
    install_page(app, "/dashboard", "CIM dashboard", DASHBOARD_DIR, ("maplibre",))
