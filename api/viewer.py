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


def install_page(app: FastAPI, path: str, title: str, directory: Path, libraries: tuple[str, ...]) -> None:
    """A static page at ``path`` (its ``index.html``, the slash form redirected, its files under
    ``path/static``), answered 503 with what to run while the npm ``libraries`` it needs are missing."""
    name = path.strip("/")

    async def page() -> HTMLResponse:
        missing = [LIBRARIES[lib].split("/")[0] for lib in libraries if not (node_modules() / LIBRARIES[lib]).is_dir()]
        if missing:
            return HTMLResponse(
                f"<!doctype html><meta charset='utf-8'><title>{title}</title>"
                f"<p>The page needs the npm packages {', '.join(missing)} in {node_modules()}: run "
                "<code>npm ci</code> at the repository root (<code>make setup</code> does it).</p>", status_code=503)
        return HTMLResponse((directory / "index.html").read_text(encoding="utf-8"))

    async def slash() -> RedirectResponse:
        return RedirectResponse(f"../{name}", status_code=308)

    app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{path}/", slash, methods=["GET"], include_in_schema=False)
    app.mount(f"{path}/static", StaticFiles(directory=directory), name=f"{name}-static")


def install(app: FastAPI) -> None:
    install_page(app, "/viewer", "CIM viewer", VIEWER_DIR, tuple(LIBRARIES))
    for prefix, sub in LIBRARIES.items():
        directory = node_modules() / sub
        if directory.is_dir():
            app.mount(f"/viewer/lib/{prefix}", StaticFiles(directory=directory), name=f"viewer-lib-{prefix}")
