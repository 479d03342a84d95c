"""``/viewer``: a browser view of the city base — CesiumJS for the 3D tiles, MapLibre GL for the
vector tiles — served from this process with no CDN and no token.

The libraries come from npm (``npm ci`` at the repository root installs ``cesium`` and
``maplibre-gl`` into ``node_modules``); ``CIM_NODE_MODULES`` points elsewhere if needed.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from cim.config import settings

VIEWER_DIR = Path(__file__).with_name("static") / "viewer"
#: URL prefix → directory inside node_modules
LIBRARIES = {"cesium": "cesium/Build/Cesium", "maplibre": "maplibre-gl/dist"}


def node_modules() -> Path:
    return settings().node_modules or Path(__file__).resolve().parents[1] / "node_modules"


def _missing() -> list[str]:
    return [sub.split("/")[0] for sub in LIBRARIES.values() if not (node_modules() / sub).is_dir()]


def install(app: FastAPI) -> None:
    @app.get("/viewer", include_in_schema=False)
    async def viewer() -> HTMLResponse:
        missing = _missing()
        if missing:
            return HTMLResponse(
                "<!doctype html><meta charset='utf-8'><title>CIM viewer</title>"
                f"<p>The viewer needs the npm packages {', '.join(missing)} in {node_modules()}: run "
                "<code>npm ci</code> at the repository root (<code>make setup</code> does it).</p>", status_code=503)
        return HTMLResponse((VIEWER_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/viewer/", include_in_schema=False)
    async def viewer_slash() -> RedirectResponse:
        return RedirectResponse("../viewer", status_code=308)

    app.mount("/viewer/static", StaticFiles(directory=VIEWER_DIR), name="viewer-static")
    for prefix, sub in LIBRARIES.items():
        directory = node_modules() / sub
        if directory.is_dir():
            app.mount(f"/viewer/lib/{prefix}", StaticFiles(directory=directory), name=f"viewer-lib-{prefix}")
