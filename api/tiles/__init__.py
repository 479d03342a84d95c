"""Tiles over HTTP, one module per job:

- :mod:`api.tiles.tiles3d` — ``/3dtiles/{layer}/tileset.json`` and ``/3dtiles/{layer}/{version}/{tile}.glb``:
  3D Tiles 1.1, built on first request and cached by layer version (ETag = version; content URLs carry
  the version, so they can be cached for good).
- :mod:`api.tiles.ogc` — OGC API – Tiles for every collection: ``/collections/{id}/tiles`` (tilesets),
  ``…/tiles/WebMercatorQuad`` (tileset metadata), ``…/WebMercatorQuad/tilejson.json`` (TileJSON 3.0 for
  MapLibre), ``…/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}`` (Mapbox vector tile; 204 when
  empty), plus ``/tileMatrixSets[/WebMercatorQuad]``.
- :mod:`api.tiles.fast_path` — :class:`VersionedTileMiddleware`, which answers TileJSON's versioned
  vector-tile URLs before routing.
- :mod:`api.tiles.shared` — what the routes share: parameters, errors as problems, ETags, cache headers.
"""
from __future__ import annotations

from fastapi import FastAPI

from api.tiles import ogc, tiles3d
from api.tiles.fast_path import VersionedTileMiddleware
from tiles.cache import TileCache
from tiles.service import TileService

__all__ = ["VersionedTileMiddleware", "install"]


def install(app: FastAPI) -> None:
    engine = app.state.cim.engine
    deployment = app.state.cim.deployment
    cache = TileCache(deployment.home.resolve() / "tiles", deployment.tile_memory_mb << 20)
    app.state.tiles = TileService(engine, cache, app.state.cim.settings)
    app.include_router(tiles3d.router)
    app.include_router(ogc.router)
