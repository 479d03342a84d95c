"""OGC API – Tiles (vector) for every collection: ``/collections/{id}/tiles`` (tilesets),
``…/tiles/WebMercatorQuad`` (tileset metadata), ``…/WebMercatorQuad/tilejson.json`` (TileJSON 3.0 for
MapLibre), ``…/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}`` (Mapbox vector tile; 204 when
empty), plus ``/tileMatrixSets[/WebMercatorQuad]``."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from api.limits import MAX_LIST_CHARS
from api.problems import PROBLEM, not_found
from api.responses import OrjsonResponse
from api.tiles.shared import (IMMUTABLE, MVT_TYPE, REVALIDATE, BboxQ, FilterLangQ, FilterQ, base_url, call, etag,
                              not_modified, selection, service)
from cim.registry import Layer
from tiles import mvt

TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
REL_TILING_SCHEME = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"

router = APIRouter(tags=["Tiles"])

#: the largest row or column of the deepest tile matrix; a shallower matrix has fewer (2^tileMatrix)
_MAX_INDEX = 2 ** mvt.TMS.maxzoom - 1
#: the path parameters as the OpenAPI document states them: what they accept is what the route serves
TileMatrixSetP = Annotated[str, Path(description=f"the tile matrix set; only {mvt.TMS_ID} is offered (others: 404)",
                                     json_schema_extra={"enum": [mvt.TMS_ID]})]
TileMatrixP = Annotated[int, Path(ge=mvt.TMS.minzoom, le=mvt.TMS.maxzoom,
                                  description=f"zoom level, {mvt.TMS.minzoom}–{mvt.TMS.maxzoom}")]
TileRowP = Annotated[int, Path(ge=0, le=_MAX_INDEX, description="row (y), from the north: 0 to 2^tileMatrix − 1 "
                                                                 "(a row outside its tile matrix: 404)")]
TileColP = Annotated[int, Path(ge=0, le=_MAX_INDEX, description="column (x), from the west: 0 to 2^tileMatrix − 1 "
                                                                 "(a column outside its tile matrix: 404)")]


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
    lyr = await call(service(request).layer, collectionId)
    base = base_url(request)
    return OrjsonResponse({"tilesets": [{
        "title": f"{lyr.title} ({lyr.name})", "dataType": "vector", "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "tileMatrixSetURI": TMS_URI, "links": _tileset_links(base, lyr.name)}],
        "links": [{"rel": "self", "type": "application/json", "href": f"{base}/collections/{lyr.name}/tiles"}]})


def _description(layer: Layer) -> str:
    """The layer's title, and what its tile features' ids are when they are not the fid (tiles.mvt.CODE_IDS)."""
    code = mvt.feature_id_code(layer)
    if code is None:
        return layer.title
    return (f"{layer.title}; feature id: {code} ({layer.queryable(code).title}) as an integer, not a property "
            f"unless properties={code} asks for it")


def _fields(layer: Layer, names: list[str]) -> dict[str, str]:
    return {n: (layer.queryable(n).title if layer.queryable(n) else n) for n in names}


@router.get("/collections/{collectionId}/tiles/{tileMatrixSetId}", summary="Tileset metadata")
async def collection_tileset(request: Request, collectionId: str, tileMatrixSetId: TileMatrixSetP):
    _check_tms(tileMatrixSetId)
    svc = service(request)
    lyr = await call(svc.layer, collectionId)
    bounds = await call(svc.layer_bounds, lyr)
    minzoom = await call(svc.minzoom, lyr)
    base = base_url(request)
    props = mvt.map_properties(lyr)  # what a tile carries unless properties= asks for others
    body: dict[str, Any] = {
        "title": f"{lyr.title} ({lyr.name})", "dataType": "vector", "tileMatrixSetURI": TMS_URI,
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "layers": [{"id": lyr.name, "title": lyr.title, "description": _description(lyr), "dataType": "vector",
                    "geometryDimension": _dimension(lyr), "minTileMatrix": str(minzoom), "maxTileMatrix": str(mvt.TMS.maxzoom),
                    "propertiesSchema": {"type": "object", "properties": {
                        q.name: {"type": q.type if q.type in ("number", "integer", "boolean") else "string",
                                 "title": q.title} for q in lyr.queryables if q.name in props}}}],
        "links": _tileset_links(base, lyr.name),
    }
    if bounds:
        body["boundingBox"] = {"lowerLeft": list(bounds[:2]), "upperRight": list(bounds[2:]),
                               "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}
    return OrjsonResponse(body, headers={"ETag": etag(str(lyr.version)), "Cache-Control": REVALIDATE})


def _dimension(layer: Layer) -> int:
    kind = layer.geometry_type.upper()
    return 0 if "POINT" in kind else 1 if "LINE" in kind else 2


@router.get("/collections/{collectionId}/tiles/{tileMatrixSetId}/tilejson.json", summary="TileJSON 3.0")
async def collection_tilejson(request: Request, collectionId: str, tileMatrixSetId: TileMatrixSetP):
    _check_tms(tileMatrixSetId)
    svc = service(request)
    lyr = await call(svc.layer, collectionId)
    bounds = await call(svc.layer_bounds, lyr) or svc.settings.city_bbox_wgs84
    minzoom = await call(svc.minzoom, lyr)
    base = base_url(request)
    return OrjsonResponse({
        "tilejson": "3.0.0", "name": lyr.name, "description": lyr.title, "version": f"1.0.{lyr.version}",
        # versioned: a URL's content never changes, so tiles are cached for good and answered from memory
        # without asking the database for the version (VersionedTileMiddleware); a load changes the version,
        # this document (ETag) and so the URLs
        "scheme": "xyz",
        "tiles": [f"{base}/collections/{lyr.name}/tiles/{mvt.TMS_ID}/{{z}}/{{y}}/{{x}}?v={lyr.version}"],
        # a dense point layer starts at a street-level zoom (tiles.mvt.point_minzoom): below, its tiles are empty
        "minzoom": minzoom, "maxzoom": 22, "bounds": list(bounds),
        "center": [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, max(12, minzoom)],
        "vector_layers": [{"id": lyr.name, "description": _description(lyr), "minzoom": minzoom, "maxzoom": 22,
                           "fields": _fields(lyr, mvt.map_properties(lyr))}],
    }, headers={"ETag": etag(str(lyr.version)), "Cache-Control": REVALIDATE})


@router.get("/collections/{collectionId}/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}",
            summary="A Mapbox vector tile", response_class=Response,
            responses={200: {"content": {MVT_TYPE: {}}}, 204: {"description": "no feature in this tile"},
                       304: {"description": "the client's copy (If-None-Match) is current"},
                       404: {"description": "no such collection or tile matrix set, or the row or column is "
                                            "outside the tile matrix", "content": {PROBLEM: {}}}})
async def collection_tile(request: Request, collectionId: str, tileMatrixSetId: TileMatrixSetP,
                          tileMatrix: TileMatrixP, tileRow: TileRowP, tileCol: TileColP,
                          bbox: BboxQ = None, filter: FilterQ = None, filter_lang: FilterLangQ = "cql2-text",
                          properties: Annotated[str | None, Query(
                              max_length=MAX_LIST_CHARS,
                              description="comma-separated properties to include (default: the map's, as "
                                          "TileJSON's fields list them; any queryable but valid_to may be asked "
                                          "for)")] = None,
                          v: Annotated[int | None, Query(
                              description="the layer version the tile is asked for (TileJSON's URLs carry it): "
                                          "the answer may then be cached for good")] = None):
    _check_tms(tileMatrixSetId)
    svc = service(request)
    mvt.check_tile(tileMatrix, tileCol, tileRow)
    chosen = selection(bbox, filter, filter_lang)
    props = [p.strip() for p in properties.split(",") if p.strip()] if properties is not None else None
    # one thread hop and one connection: the layer's version now, then the tile of that version
    lyr, data = await call(svc.current_mvt, collectionId, tileMatrix, tileCol, tileRow, chosen, props,
                           lambda layer: not_modified(request, etag(str(layer.version))))
    status, headers, body = tile_answer(data, lyr.version, v)
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


@router.get("/tileMatrixSets", summary="Tile matrix sets offered")
async def tile_matrix_sets(request: Request):
    base = base_url(request)
    return OrjsonResponse({"tileMatrixSets": [{
        "id": mvt.TMS_ID, "title": mvt.TMS.title, "uri": TMS_URI,
        "links": [{"rel": "self", "type": "application/json", "href": f"{base}/tileMatrixSets/{mvt.TMS_ID}"}]}]})


@router.get("/tileMatrixSets/{tileMatrixSetId}", summary="A tile matrix set definition")
async def tile_matrix_set(tileMatrixSetId: TileMatrixSetP):
    _check_tms(tileMatrixSetId)
    return OrjsonResponse(mvt.TMS.model_dump(mode="json", exclude_none=True, by_alias=True))


TileAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body
_IMMUTABLE, _REVALIDATE, _MVT_TYPE = IMMUTABLE.encode(), REVALIDATE.encode(), MVT_TYPE.encode()


def tile_answer(data: bytes | None, version: int, asked: int | None) -> TileAnswer:
    """A vector tile (None: the client's copy is current, 304; empty: no feature, 204). Cached for good when
    asked for by the current version's URL; a URL of an older version gets today's tile, which must not be
    kept under the old URL for good. Raw headers, so the fast path can send them without Response objects."""
    headers = [(b"etag", etag(str(version)).encode()),
               (b"cache-control", _IMMUTABLE if asked == version else _REVALIDATE)]
    if data is None:
        return 304, headers, b""
    if not data:
        return 204, headers, b""
    return 200, [*headers, (b"content-type", _MVT_TYPE), (b"content-length", b"%d" % len(data))], data
