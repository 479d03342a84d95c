"""Tiles over HTTP.

- ``/3dtiles/{layer}/tileset.json`` and ``/3dtiles/{layer}/{version}/{tile}.glb``: 3D Tiles 1.1,
  built on first request and cached by layer version (ETag = version; content URLs carry the
  version, so they can be cached for good).
- OGC API – Tiles for every collection: ``/collections/{id}/tiles`` (tilesets),
  ``…/tiles/WebMercatorQuad`` (tileset metadata), ``…/WebMercatorQuad/tilejson.json`` (TileJSON
  3.0 for MapLibre), ``…/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}`` (Mapbox vector
  tile; 204 when empty), plus ``/tileMatrixSets[/WebMercatorQuad]``.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Callable, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.limits import MAX_BBOX_CHARS, MAX_FILTER_CHARS, MAX_LIST_CHARS
from api.problems import not_found
from api.responses import OrjsonResponse
from cim.registry import Layer
from cim.selection import Selection, parse_bbox
from tiles import mvt
from tiles.cache import TileCache
from tiles.service import TileService
from tiles.tileset import DEFAULT_MAX_FEATURES

MVT_TYPE = "application/vnd.mapbox-vector-tile"
GLB_TYPE = "model/gltf-binary"
TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
REL_TILING_SCHEME = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"
REVALIDATE = "no-cache"  # clients keep tiles but ask (If-None-Match) each time: a load shows at once
IMMUTABLE = "public, max-age=31536000, immutable"  # versioned content URLs never change

router = APIRouter(tags=["Tiles"])


def _service(request: Request) -> TileService:
    return request.app.state.tiles


async def _call(fn: Callable, *args: Any) -> Any:
    """Blocking tile work off the event loop; its errors carry their own status (see api.problems)."""
    return await run_in_threadpool(fn, *args)


def _etag(version: str) -> str:
    return f'"{version}"'


def _not_modified(request: Request, etag: str) -> bool:
    return _scope_not_modified(request.scope, etag)


def _scope_not_modified(scope: Scope, etag: str) -> bool:
    header = next((value for name, value in scope["headers"] if name == b"if-none-match"), b"").decode("latin-1")
    return etag in [t.strip() for t in header.split(",")] or header.strip() == "*"


def _selection(bbox: str | None, filter_: str | None, filter_lang: str) -> Selection:
    return Selection(parse_bbox(bbox), filter_ or None, filter_lang)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


BboxQ = Annotated[str | None, Query(max_length=MAX_BBOX_CHARS, description="minlon,minlat,maxlon,maxlat (CRS84)")]
FilterQ = Annotated[str | None, Query(max_length=MAX_FILTER_CHARS, description="CQL2 filter on the layer's queryables")]
FilterLangQ = Annotated[Literal["cql2-text", "cql2-json"], Query(alias="filter-lang",
                                                                 description="cql2-text or cql2-json")]


# --- 3D Tiles ---------------------------------------------------------------------------------

@router.get("/3dtiles/{layer}/tileset.json", summary="3D Tiles 1.1 tileset of a layer")
async def tileset(request: Request, layer: str, bbox: BboxQ = None, filter: FilterQ = None,
                  filter_lang: FilterLangQ = "cql2-text",
                  max_features: Annotated[int, Query(alias="max-features", ge=1, le=100_000)] = DEFAULT_MAX_FEATURES):
    svc = _service(request)
    selection = _selection(bbox, filter, filter_lang)
    lyr = await _call(svc.layer, layer)
    await _call(_model_check, lyr)
    params = {k: v for k, v in (("bbox", bbox), ("filter", filter), ("filter-lang", filter_lang if filter else None),
                                ("max-features", max_features if max_features != DEFAULT_MAX_FEATURES else None))
              if v is not None}
    version = await _call(svc.version_3d, lyr)
    etag = _etag(version)
    if _not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": REVALIDATE})
    version, body = await _call(svc.tileset, lyr, selection, max_features, urlencode(params))
    return Response(body, media_type="application/json",
                    headers={"ETag": _etag(version), "Cache-Control": REVALIDATE})


def _model_check(layer: Layer) -> None:
    from tiles.tileset import model_for

    model_for(layer.name)


@router.get("/3dtiles/{layer}/{version}/{tile}.glb", summary="One tile's binary glTF", response_class=Response,
            responses={200: {"content": {GLB_TYPE: {}}}})
async def tile_content(request: Request, layer: str, version: str, tile: str, bbox: BboxQ = None,
                       filter: FilterQ = None, filter_lang: FilterLangQ = "cql2-text",
                       max_features: Annotated[int, Query(alias="max-features", ge=1, le=100_000)] = DEFAULT_MAX_FEATURES):
    svc = _service(request)
    selection = _selection(bbox, filter, filter_lang)
    etag = _etag(version)
    if _not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
    lyr = await _call(svc.layer, layer)
    await _call(_model_check, lyr)
    data = await _call(svc.glb, lyr, version, tile, selection, max_features)
    return Response(data, media_type=GLB_TYPE, headers={"ETag": etag, "Cache-Control": IMMUTABLE})


# --- OGC API – Tiles (vector) -----------------------------------------------------------------

def _check_tms(tms_id: str) -> None:
    if tms_id != mvt.TMS_ID:
        raise not_found(f"tile matrix set {tms_id!r} is not offered; use {mvt.TMS_ID}")


def _tile_template(base: str, layer: str) -> str:
    return f"{base}/collections/{layer}/tiles/{mvt.TMS_ID}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}"


def _tileset_links(base: str, layer: str) -> list[dict[str, Any]]:
    return [
        {"rel": "self", "type": "application/json", "href": f"{base}/collections/{layer}/tiles/{mvt.TMS_ID}",
         "title": f"{layer} vector tiles in {mvt.TMS_ID}"},
        {"rel": REL_TILING_SCHEME, "type": "application/json", "href": f"{base}/tileMatrixSets/{mvt.TMS_ID}",
         "title": mvt.TMS_ID},
        {"rel": "item", "type": MVT_TYPE, "href": _tile_template(base, layer), "templated": True,
         "title": "Mapbox vector tile"},
        {"rel": "describedby", "type": "application/json",
         "href": f"{base}/collections/{layer}/tiles/{mvt.TMS_ID}/tilejson.json", "title": "TileJSON"},
        {"rel": "collection", "type": "application/json", "href": f"{base}/collections/{layer}"},
    ]


@router.get("/collections/{collectionId}/tiles", summary="Tilesets of a collection")
async def collection_tilesets(request: Request, collectionId: str):
    lyr = await _call(_service(request).layer, collectionId)
    base = _base(request)
    return OrjsonResponse({"tilesets": [{
        "title": f"{lyr.title} ({lyr.name})", "dataType": "vector", "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "tileMatrixSetURI": TMS_URI, "links": _tileset_links(base, lyr.name)}],
        "links": [{"rel": "self", "type": "application/json", "href": f"{base}/collections/{lyr.name}/tiles"}]})


def _fields(layer: Layer, names: list[str]) -> dict[str, str]:
    return {n: (layer.queryable(n).title if layer.queryable(n) else n) for n in names}


@router.get("/collections/{collectionId}/tiles/{tileMatrixSetId}", summary="Tileset metadata")
async def collection_tileset(request: Request, collectionId: str, tileMatrixSetId: str):
    _check_tms(tileMatrixSetId)
    svc = _service(request)
    lyr = await _call(svc.layer, collectionId)
    bounds = await _call(_bounds, svc, lyr)
    base = _base(request)
    props = mvt.default_properties(lyr)
    body: dict[str, Any] = {
        "title": f"{lyr.title} ({lyr.name})", "dataType": "vector", "tileMatrixSetURI": TMS_URI,
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "layers": [{"id": lyr.name, "title": lyr.title, "dataType": "vector",
                    "geometryDimension": _dimension(lyr), "minTileMatrix": "0", "maxTileMatrix": str(mvt.TMS.maxzoom),
                    "propertiesSchema": {"type": "object", "properties": {
                        q.name: {"type": q.type if q.type in ("number", "integer", "boolean") else "string",
                                 "title": q.title} for q in lyr.queryables if q.name in props}}}],
        "links": _tileset_links(base, lyr.name),
    }
    if bounds:
        body["boundingBox"] = {"lowerLeft": list(bounds[:2]), "upperRight": list(bounds[2:]),
                               "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}
    return OrjsonResponse(body, headers={"ETag": _etag(str(lyr.version)), "Cache-Control": REVALIDATE})


def _dimension(layer: Layer) -> int:
    kind = layer.geometry_type.upper()
    return 0 if "POINT" in kind else 1 if "LINE" in kind else 2


def _bounds(svc: TileService, layer: Layer):
    with svc.engine.connect() as conn:
        return mvt.layer_bounds(conn, layer, svc.settings.srid)


@router.get("/collections/{collectionId}/tiles/{tileMatrixSetId}/tilejson.json", summary="TileJSON 3.0")
async def collection_tilejson(request: Request, collectionId: str, tileMatrixSetId: str):
    _check_tms(tileMatrixSetId)
    svc = _service(request)
    lyr = await _call(svc.layer, collectionId)
    bounds = await _call(_bounds, svc, lyr) or svc.settings.city_bbox_wgs84
    base = _base(request)
    return OrjsonResponse({
        "tilejson": "3.0.0", "name": lyr.name, "description": lyr.title, "version": f"1.0.{lyr.version}",
        # versioned: a URL's content never changes, so tiles are cached for good and answered from memory
        # without asking the database for the version (VersionedTileMiddleware); a load changes the version,
        # this document (ETag) and so the URLs
        "scheme": "xyz",
        "tiles": [f"{base}/collections/{lyr.name}/tiles/{mvt.TMS_ID}/{{z}}/{{y}}/{{x}}?v={lyr.version}"],
        "minzoom": 0, "maxzoom": 22, "bounds": list(bounds),
        "center": [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, 12],
        "vector_layers": [{"id": lyr.name, "description": lyr.title, "minzoom": 0, "maxzoom": 22,
                           "fields": _fields(lyr, mvt.default_properties(lyr))}],
    }, headers={"ETag": _etag(str(lyr.version)), "Cache-Control": REVALIDATE})


@router.get("/collections/{collectionId}/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}",
            summary="A Mapbox vector tile", response_class=Response,
            responses={200: {"content": {MVT_TYPE: {}}}, 204: {"description": "no feature in this tile"}})
async def collection_tile(request: Request, collectionId: str, tileMatrixSetId: str,
                          tileMatrix: Annotated[int, Path(description="zoom level")],
                          tileRow: Annotated[int, Path(description="row (y), from the north")],
                          tileCol: Annotated[int, Path(description="column (x), from the west")],
                          bbox: BboxQ = None, filter: FilterQ = None, filter_lang: FilterLangQ = "cql2-text",
                          properties: Annotated[str | None, Query(max_length=MAX_LIST_CHARS,
                              description="comma-separated properties to include (default: all)")] = None,
                          v: Annotated[int | None, Query(
                              description="the layer version the tile is asked for (TileJSON's URLs carry it): "
                                          "the answer may then be cached for good")] = None):
    _check_tms(tileMatrixSetId)
    svc = _service(request)
    mvt.check_tile(tileMatrix, tileCol, tileRow)
    selection = _selection(bbox, filter, filter_lang)
    props = [p.strip() for p in properties.split(",") if p.strip()] if properties is not None else None
    # one thread hop and one connection: the layer's version now, then the tile of that version
    lyr, data = await _call(svc.current_mvt, collectionId, tileMatrix, tileCol, tileRow, selection, props,
                            lambda layer: _not_modified(request, _etag(str(layer.version))))
    status, headers, body = _tile_answer(data, lyr.version, v)
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


@router.get("/tileMatrixSets", summary="Tile matrix sets offered")
async def tile_matrix_sets(request: Request):
    base = _base(request)
    return OrjsonResponse({"tileMatrixSets": [{
        "id": mvt.TMS_ID, "title": mvt.TMS.title, "uri": TMS_URI,
        "links": [{"rel": "self", "type": "application/json", "href": f"{base}/tileMatrixSets/{mvt.TMS_ID}"}]}]})


@router.get("/tileMatrixSets/{tileMatrixSetId}", summary="A tile matrix set definition")
async def tile_matrix_set(tileMatrixSetId: str):
    _check_tms(tileMatrixSetId)
    return OrjsonResponse(mvt.TMS.model_dump(mode="json", exclude_none=True, by_alias=True))


class VersionedTileMiddleware:
    """Serves the vector-tile URLs that TileJSON hands out (``…/WebMercatorQuad/{z}/{y}/{x}?v=N``, nothing
    else in the query) before routing.

    They are most of a map's requests, and each is simple: a tile from memory, or the layer's version
    and a tile built on one connection. Going through FastAPI cost a cached tile about 2.5× a request
    that does nothing and an uncached one a fifth of its Python time (parameter validation and
    routing). The content of such a URL never changes, so a tile in memory needs no database read at
    all. Whatever it cannot serve (no such tile matrix, row or layer; a database error) goes on to the
    route, which words the problem; so do all other requests. Installed innermost: access control and
    metrics still see every request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = _versioned_tile(scope)
        if address is None:
            await self.app(scope, receive, send)
            return
        name, asked, z, y, x = address
        svc: TileService = scope["app"].state.tiles
        data = svc.mvt_in_memory(name, str(asked), z, x, y)
        scope["route"] = _TILE_ROUTE  # metrics count it under the tile route
        if data is not None:  # the hot path: raw ASGI messages, no Request or Response objects
            await _send(scope, send, _tile_answer(None if _scope_not_modified(scope, _etag(str(asked))) else data,
                                                  asked, asked))
            return
        try:
            layer, data = await run_in_threadpool(svc.current_mvt, name, z, x, y, Selection(), None,
                                                  lambda layer: _scope_not_modified(scope, _etag(str(layer.version))))
        except Exception:  # noqa: BLE001 — a bad address, an unknown layer, the database away: the route
            # answers it again and words the problem (this middleware sits outside the app's exception handlers)
            del scope["route"]
            await self.app(scope, receive, send)
            return
        await _send(scope, send, _tile_answer(data, layer.version, asked))


TileAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body


def _tile_answer(data: bytes | None, version: int, asked: int | None) -> TileAnswer:
    """A vector tile (None: the client's copy is current, 304; empty: no feature, 204). Cached for good when
    asked for by the current version's URL; a URL of an older version gets today's tile, which must not be
    kept under the old URL for good. Raw headers, so the hot path can send them without Response objects."""
    headers = [(b"etag", _etag(str(version)).encode()),
               (b"cache-control", _IMMUTABLE if asked == version else _REVALIDATE)]
    if data is None:
        return 304, headers, b""
    if not data:
        return 204, headers, b""
    return 200, [*headers, (b"content-type", _MVT_TYPE), (b"content-length", b"%d" % len(data))], data


async def _send(scope: Scope, send: Send, answer: TileAnswer) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


_TILE_ROUTE = next(r for r in router.routes if getattr(r, "endpoint", None) is collection_tile)
_TILE_PATH = re.compile(rf"^/collections/([^/]+)/tiles/{mvt.TMS_ID}/(\d{{1,2}})/(\d{{1,9}})/(\d{{1,9}})$")
_IMMUTABLE, _REVALIDATE, _MVT_TYPE = IMMUTABLE.encode(), REVALIDATE.encode(), MVT_TYPE.encode()
_VERSION_QUERY = re.compile(rb"^v=(\d{1,18})$")


def _versioned_tile(scope: Scope) -> tuple[str, int, int, int, int] | None:
    """(layer, version, z, row, column) of a GET/HEAD of a TileJSON tile URL, else None."""
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return None
    version = _VERSION_QUERY.match(scope.get("query_string", b""))
    path = _TILE_PATH.match(scope["path"]) if version else None
    if path is None:
        return None
    return path.group(1), int(version.group(1)), int(path.group(2)), int(path.group(3)), int(path.group(4))


def install(app: FastAPI) -> None:
    engine = app.state.cim.engine
    deployment = app.state.cim.deployment
    cache = TileCache(deployment.home.resolve() / "tiles", deployment.tile_memory_mb << 20)
    app.state.tiles = TileService(engine, cache, app.state.cim.settings)
    app.include_router(router)
