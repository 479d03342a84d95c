"""OGC API – Features (Part 1 Core + GeoJSON + OpenAPI 3.0, Part 2 CRS, Part 3 Filtering) over
every layer of the registry, plus per-unit statistics.

Routes: ``/`` (landing), ``/conformance``, ``/collections``, ``/collections/{id}``,
``/collections/{id}/items``, ``/collections/{id}/items/{featureId}``,
``/collections/{id}/queryables``, ``/collections/{id}/stats``.

Decisions a client should know:

- ``featureId`` is the stable ``feature_id`` UUID. A deliverer's ``source_id`` is not accepted in
  the path (it may itself look like anything, a UUID included); select by it with
  ``items?source_id=…`` instead. A malformed or unknown id is a 404.
- Without ``datetime`` the current versions are served; ``datetime`` selects the versions valid
  at an instant or during an interval (history), also on ``items/{featureId}``.
- Coordinates follow the platform's one CRS rule (:mod:`cim.crs.resolve`), which is Part 2's for
  the OGC spellings: a CRS URI, URN or safe CURIE is written in its authority's axis order, so
  ``http://www.opengis.net/def/crs/EPSG/0/4326`` and ``[EPSG:4490]`` are lat/lon and the
  Gauss-Krüger storage CRS (EPSG:4549) northing/easting; CRS84 and the short names (``EPSG:4326``,
  ``4326``, ``wgs84``, ``cgcs2000``, ``gcj02``, ``bd09``) are lon/lat (easting/northing). ``bbox``
  and ``filter`` geometries are read the same way in ``bbox-crs`` / ``filter-crs``. Heights (Z,
  metres) pass through unchanged in every CRS.
- ``crs=gcj02``/``bd09`` give the Chinese web-map positions (Amap/Tencent, Baidu). These have no
  OGC or EPSG identifier, so ``Content-Crs`` then names them ``<gcj02>`` / ``<bd09>``.
- ``numberMatched`` is given on the page that holds the last match (``offset`` + ``numberReturned``,
  exact) and left out before it, as OGC API – Features allows: counting reads every match counted
  (~5,000 parts in an 800 m box of the 15 M, against the page's 101), and an estimate would stop
  clients that page until numberMatched (e.g. GDAL) short. Follow the ``next`` link: it is there
  exactly when there are more (the page asks for one row more than its limit).
- Without ``sortby``, a ``bbox`` page lists the features nearest the box's centre first, the order
  the spatial index returns them in, so a page reads its own rows only (equal distances keep the
  index's order, the same for every page while the data stays); without ``bbox`` the order is ``fid``.
- A query parameter that is neither a standard one nor a queryable is a 400 naming it (Part 1
  /req/core/query-param-unknown); queryables double as equality filters (``?kind=燃气``).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response

from api.deps import AppState, get_state
from api.limits import (
    MAX_BBOX_CHARS, MAX_CRS_CHARS, MAX_DATETIME_CHARS, MAX_FILTER_CHARS, MAX_LIST_CHARS, MAX_NAME_CHARS,
)
from api.problems import bad_parameter, not_found
from api.responses import OrjsonResponse
from api.params import parse_equals, parse_properties, parse_sortby
from cim.crs import CRS84_URI, crs_uri, offered_crs, resolve_offered
from cim.errors import UserError
from cim.features import (
    DEFAULT_LIMIT, MAX_LIMIT, Extent, ItemsQuery, Selection, feature_ended_at, feature_table, fetch_feature,
    fetch_items, group_stats, layer_extent,
)
from cim.jurisdiction import current_scope
from cim.selection import parse_bbox, parse_datetime
from cim.registry import Layer

GEOJSON = "application/geo+json"
JSON = "application/json"
SCHEMA_JSON = "application/schema+json"
OPENAPI_30 = "application/vnd.oai.openapi+json;version=3.0"
OGC_REL = "http://www.opengis.net/def/rel/ogc/1.0/"
#: the deepest page offered by offset: PostgreSQL reads and throws away every skipped row, so an
#: offset of 2^63 was a full scan of the layer for an empty page. Deeper than this, narrow the
#: selection (bbox, filter, datetime, a queryable) or sort it (sortby) instead; beyond it is a 400.
MAX_OFFSET = 1_000_000

_F1 = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/"
_F3 = "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/"
_CQL2 = "http://www.opengis.net/spec/cql2/1.0/conf/"
CONFORMANCE = [
    _F1 + "core", _F1 + "geojson", _F1 + "oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    _F3 + "queryables", _F3 + "queryables-query-parameters", _F3 + "filter", _F3 + "features-filter",
    _CQL2 + "cql2-text", _CQL2 + "cql2-json", _CQL2 + "basic-cql2", _CQL2 + "advanced-comparison-operators",
    _CQL2 + "case-insensitive-comparison", _CQL2 + "basic-spatial-functions",
    _CQL2 + "basic-spatial-functions-plus", _CQL2 + "spatial-functions", _CQL2 + "temporal-functions",
    "http://www.opengis.net/spec/ogcapi-records-1/1.0/conf/sorting",
]

#: parameters of /items besides the queryables (``f`` is accepted for clients that send f=json)
ITEMS_PARAMETERS = {"bbox", "bbox-crs", "crs", "limit", "offset", "properties", "filter", "filter-lang",
                    "filter-crs", "sortby", "datetime", "f"}
STATS_PARAMETERS = {"group_by", "sum", "bbox", "bbox-crs", "filter", "filter-lang", "filter-crs", "datetime", "f"}
_GEOMETRY_FORMATS = {"POINT": "geometry-point", "LINESTRING": "geometry-linestring", "POLYGON": "geometry-polygon",
                     "MULTIPOLYGON": "geometry-multipolygon", "MULTILINESTRING": "geometry-multilinestring",
                     "MULTIPOINT": "geometry-multipoint"}
_JSON_TYPES = {"string": {"type": "string"}, "number": {"type": "number"}, "integer": {"type": "integer"},
               "boolean": {"type": "boolean"}, "date": {"type": "string", "format": "date"},
               "datetime": {"type": "string", "format": "date-time"}}
_ROLES = {"valid_from": "primary-interval-start", "valid_to": "primary-interval-end"}

_extent_cache: dict[tuple[str, str, int], tuple[float, Extent]] = {}


class SchemaJsonResponse(OrjsonResponse):
    """A JSON Schema document (the queryables), served and documented as ``application/schema+json``."""

    media_type = SCHEMA_JSON


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _link(href: str, rel: str, type_: str, title: str | None = None) -> dict[str, str]:
    link = {"href": href, "rel": rel, "type": type_}
    if title:
        link["title"] = title
    return link


def _check_parameters(request: Request, layer: Layer, known: set[str]) -> dict[str, str]:
    """The property-equality filters of a request; any other unknown parameter is a 400."""
    equals: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in known:
            continue
        if layer.queryable(name) is None:
            raise bad_parameter(name, f"unknown query parameter {name!r}: neither a parameter of this "
                                      f"resource nor a queryable of {layer.name!r} (see "
                                      f"/collections/{layer.name}/queryables)")
        if name in equals:
            raise bad_parameter(name, f"{name} is given twice; use filter={name} IN (…) for several values")
        if len(value) > MAX_FILTER_CHARS:
            raise bad_parameter(name, f"{name}: at most {MAX_FILTER_CHARS:,} characters, got {len(value):,}")
        equals[name] = value
    return equals


def _selection(request: Request, layer: Layer, srid: int, known: set[str], bbox: str | None, bbox_crs: str | None,
               filter_: str | None, filter_lang: str | None, filter_crs: str | None,
               datetime_: str | None) -> Selection:
    equals = _check_parameters(request, layer, known)
    if filter_lang is not None and filter_lang not in ("cql2-text", "cql2-json"):
        raise bad_parameter("filter-lang", f"filter-lang must be cql2-text or cql2-json, got {filter_lang!r}")
    if filter_ is not None and not filter_.strip():
        raise bad_parameter("filter", "filter is empty")
    if bbox_crs is not None and bbox is None:
        raise bad_parameter("bbox-crs", "bbox-crs is given without bbox")
    if filter_crs is not None and filter_ is None:
        raise bad_parameter("filter-crs", "filter-crs is given without filter")
    typed = parse_equals(layer, feature_table(layer, srid), equals) if equals else {}
    return Selection(bbox=parse_bbox(bbox), bbox_crs=bbox_crs, equals=typed, filter=filter_,
                     filter_lang=filter_lang or "cql2-text", filter_crs=filter_crs,
                     when=parse_datetime(datetime_))


def _run(state: AppState, fn, *args, **kwargs):
    """Run a core query; a value PostgreSQL refuses (e.g. a transform out of range) is the request's fault."""
    try:
        with state.engine.connect() as conn:
            return fn(conn, *args, **kwargs)
    except sa.exc.DataError as exc:
        message = getattr(getattr(exc.orig, "diag", None), "message_primary", None) or "invalid value"
        raise UserError(f"the database rejected a value of the request: {message}") from None


def _extent(state: AppState, layer: Layer) -> Extent:
    # the extent of the rows the caller may see (row-level security): one per jurisdiction
    key = (str(state.engine.url), layer.name, layer.version, current_scope().cache_key())
    hit = _extent_cache.get(key)
    # layer versions change with loads, not with hand edits: re-check now and then (CIM_EXTENT_CACHE_S)
    if hit and time.monotonic() - hit[0] < state.deployment.extent_cache_s:
        return hit[1]
    extent = _run(state, layer_extent, layer, state.settings.srid)
    _extent_cache[key] = (time.monotonic(), extent)
    return extent


def _collection(request: Request, state: AppState, layer: Layer) -> dict[str, Any]:
    base = f"{_base(request)}/collections/{layer.name}"
    extent = _extent(state, layer)
    srid = state.settings.srid
    doc: dict[str, Any] = {
        "id": layer.name,
        "title": layer.title,
        "description": layer.description,
        "itemType": "feature",
        "links": [
            _link(base, "self", JSON, "this collection"),
            _link(f"{base}/items", "items", GEOJSON, "the features"),
            _link(f"{base}/queryables", OGC_REL + "queryables", SCHEMA_JSON, "queryable properties"),
            _link(f"{base}/stats?group_by=grid", "describedby", JSON,
                  "counts per grid (also per district, street, community)"),
        ],
        "crs": [c.ref for c in offered_crs(srid)],
        "storageCrs": crs_uri(srid),
    }
    ext: dict[str, Any] = {}
    if extent.bbox is not None:
        ext["spatial"] = {"bbox": [list(extent.bbox)], "crs": CRS84_URI}
    if extent.first_valid_from is not None:
        ext["temporal"] = {"interval": [[_iso(extent.first_valid_from), None]],
                           "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"}
    if ext:
        doc["extent"] = ext
    return doc


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _url(request: Request, path: str, params: list[tuple[str, str]]) -> str:
    return f"{_base(request)}{path}" + (f"?{urlencode(params)}" if params else "")


def _page_links(request: Request, layer: Layer, limit: int, offset: int, more: bool) -> list[dict]:
    path = f"/collections/{layer.name}/items"
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("offset", "limit")]
    links = [_link(str(request.url), "self", GEOJSON, "this page"),
             _link(f"{_base(request)}/collections/{layer.name}", "collection", JSON, layer.title)]
    if more:  # the page's probe row (numberMatched is there only on the last page)
        links.append(_link(_url(request, path, [*params, ("limit", str(limit)), ("offset", str(offset + limit))]),
                           "next", GEOJSON, "next page"))
    if offset > 0:
        links.append(_link(_url(request, path, [*params, ("limit", str(limit)),
                                                ("offset", str(max(0, offset - limit)))]),
                           "prev", GEOJSON, "previous page"))
    return links


def _geojson(body: bytes, crs_uri_: str) -> Response:
    return Response(body, media_type=GEOJSON, headers={"Content-Crs": f"<{crs_uri_}>"})


# ---------------------------------------------------------------------------------------------
# OpenAPI 3.0 (FastAPI writes 3.1; the oas30 conformance class and many clients want 3.0)
# ---------------------------------------------------------------------------------------------

def _to_oas30(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_oas30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_oas30(v) for k, v in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and any(o == {"type": "null"} for o in options):
            rest = [o for o in options if o != {"type": "null"}]
            out["nullable"] = True
            if len(rest) == 1:
                del out[key]
                out = {**rest[0], **out}
            else:
                out[key] = rest
    if isinstance(out.get("type"), list):
        types = [t for t in out["type"] if t != "null"]
        if len(types) < len(out["type"]):
            out["nullable"] = True
        out["type"] = types[0] if len(types) == 1 else types
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and "type" in out:
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out.get(bound), bool):
            out[plain] = out[bound]
            out[bound] = True
    return out


def _install_openapi_30(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None or app.openapi_schema.get("openapi", "").startswith("3.1"):
            schema = _to_oas30(generate())
            schema["openapi"] = "3.0.3"
            schema.pop("jsonSchemaDialect", None)
            schema.pop("webhooks", None)
            schema.get("info", {}).get("license", {}).pop("identifier", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# routes
# ---------------------------------------------------------------------------------------------

#: the filter languages of OGC API – Features Part 3 this API reads
FilterLang = Literal["cql2-text", "cql2-json"]
_COLLECTION_ID = Path(..., alias="collectionId", max_length=MAX_NAME_CHARS,
                      description="collection id, e.g. parts, buildings, iot-devices")
_BBOX = Query(None, max_length=MAX_BBOX_CHARS,
              description="minx,miny,maxx,maxy (or 6 numbers with heights), in bbox-crs axis order")
_CRS_RULE = ("a CRS URI/URN/[EPSG:n] is read in its authority's axis order (lat/lon for 4326); short names "
             "(EPSG:4326, 4326, wgs84, cgcs2000, gcj02, bd09, CRS84) lon/lat")
_BBOX_CRS = Query(None, alias="bbox-crs", max_length=MAX_CRS_CHARS,
                  description=f"CRS of bbox; default CRS84; {_CRS_RULE}")
_FILTER = Query(None, max_length=MAX_FILTER_CHARS, description="CQL2 filter on the queryables, in filter-lang")
_FILTER_LANG = Query(None, alias="filter-lang", description="cql2-text (default) or cql2-json")
_FILTER_CRS = Query(None, alias="filter-crs", max_length=MAX_CRS_CHARS,
                    description=f"CRS of geometry literals in filter; default CRS84; {_CRS_RULE}")
_DATETIME = Query(None, max_length=MAX_DATETIME_CHARS,
                  description="instant or interval (a/b, ../b, a/..): the versions valid then; "
                                    "default: current versions")


def install(app: FastAPI) -> None:
    _install_openapi_30(app)

    @app.get("/", tags=["OGC API – Features"], summary="Landing page")
    def landing(request: Request):
        state = get_state(request)
        base = _base(request)
        return {
            "title": f"{state.settings.city_name} CIM city data platform",
            "description": "3D city base: administrative units, grids, addresses, buildings, curtain walls, "
                           "city parts, pipelines and IoT devices, with their history.",
            "links": [
                _link(f"{base}/", "self", JSON, "this document"),
                _link(f"{base}/openapi.json", "service-desc", OPENAPI_30, "the API definition"),
                _link(f"{base}/docs", "service-doc", "text/html", "the API documentation"),
                _link(f"{base}/conformance", "conformance", JSON, "conformance classes"),
                _link(f"{base}/conformance", OGC_REL + "conformance", JSON, "conformance classes"),
                _link(f"{base}/collections", "data", JSON, "the feature collections"),
                _link(f"{base}/collections", OGC_REL + "data", JSON, "the feature collections"),
            ],
        }

    @app.get("/conformance", tags=["OGC API – Features"], summary="Conformance classes implemented")
    def conformance():
        return {"conformsTo": CONFORMANCE}

    @app.get("/collections", tags=["OGC API – Features"], summary="The feature collections (one per layer)")
    def collections(request: Request):
        state = get_state(request)
        return {
            "links": [_link(f"{_base(request)}/collections", "self", JSON, "the collections")],
            "collections": [_collection(request, state, layer) for layer in state.layers().values()],
            "crs": [c.ref for c in offered_crs(state.settings.srid)],
        }

    @app.get("/collections/{collectionId}", tags=["OGC API – Features"], summary="One collection")
    def collection(request: Request, collection_id: str = _COLLECTION_ID):
        state = get_state(request)
        return _collection(request, state, state.layer(collection_id))

    @app.get("/collections/{collectionId}/queryables", tags=["OGC API – Features"],
             summary="Queryable properties (JSON Schema)", response_class=SchemaJsonResponse)
    def queryables(request: Request, collection_id: str = _COLLECTION_ID):
        state = get_state(request)
        layer = state.layer(collection_id)
        props: dict[str, Any] = {}
        base_type = layer.geometry_type.upper().rstrip("Z").rstrip()
        props["geometry"] = {"title": "geometry", "format": _GEOMETRY_FORMATS.get(base_type, "geometry-any"),
                             "x-ogc-role": "primary-geometry"}
        for q in layer.queryables:
            schema = {"title": q.title, **_JSON_TYPES.get(q.type, {"type": "string"})}
            if q.name == "feature_id":
                schema["format"] = "uuid"
            if q.name in _ROLES:
                schema["x-ogc-role"] = _ROLES[q.name]
            props[q.name] = schema
        body = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{_base(request)}/collections/{layer.name}/queryables",
            "type": "object",
            "title": layer.title,
            "description": f"Properties of {layer.name!r} usable in filter=, sortby= and as ?name=value",
            "properties": props,
            "additionalProperties": False,
        }
        return SchemaJsonResponse(body)

    @app.get("/collections/{collectionId}/items", tags=["OGC API – Features"], summary="Features",
             response_class=Response, responses={200: {"content": {GEOJSON: {}}}})
    def items(
        request: Request,
        collection_id: str = _COLLECTION_ID,
        bbox: str | None = _BBOX,
        bbox_crs: str | None = _BBOX_CRS,
        crs: str | None = Query(None, max_length=MAX_CRS_CHARS, description=f"output CRS; default CRS84; {_CRS_RULE}"),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"page size, 1 to {MAX_LIMIT}"),
        offset: int = Query(0, ge=0, le=MAX_OFFSET,
                            description=f"features to skip, 0 to {MAX_OFFSET:,}; to go deeper narrow the "
                                        "selection (bbox, filter, datetime) or sort it (sortby)"),
        properties: str | None = Query(None, max_length=MAX_LIST_CHARS,
                                       description="comma-separated properties to return"),
        filter_: str | None = Query(None, alias="filter", max_length=MAX_FILTER_CHARS,
                                    description=_FILTER.description),
        filter_lang: FilterLang | None = _FILTER_LANG,
        filter_crs: str | None = _FILTER_CRS,
        sortby: str | None = Query(None, max_length=MAX_LIST_CHARS,
                                   description="+name,-height: sort keys (queryables)"),
        datetime_: str | None = Query(None, alias="datetime", max_length=MAX_DATETIME_CHARS,
                                       description=_DATETIME.description),
        f: str | None = Query(None, max_length=MAX_NAME_CHARS, description="json (the only format)"),
    ):
        state = get_state(request)
        layer = state.layer(collection_id)
        srid = state.settings.srid
        table = feature_table(layer, srid)
        selection = _selection(request, layer, srid, ITEMS_PARAMETERS, bbox, bbox_crs, filter_, filter_lang,
                               filter_crs, datetime_)
        query = ItemsQuery(selection=selection, sortby=parse_sortby(sortby, layer, table), limit=limit,
                           offset=offset, properties=parse_properties(properties, layer, table), crs=crs)
        _check_format(f)
        page = _run(state, fetch_items, layer, srid, query)
        meta = {
            "type": "FeatureCollection",
            "timeStamp": _iso(datetime.now(timezone.utc)),
            **({} if page.number_matched is None else {"numberMatched": page.number_matched}),
            "numberReturned": page.number_returned,
            "links": _page_links(request, layer, limit, offset, page.more),
        }
        head = orjson.dumps(meta)
        body = b"".join((head[:-1], b',"features":[', ",".join(page.features).encode(), b"]}"))
        return _geojson(body, page.crs.ref)

    @app.get("/collections/{collectionId}/items/{featureId}", tags=["OGC API – Features"], summary="One feature",
             response_class=Response, responses={200: {"content": {GEOJSON: {}}}})
    def item(
        request: Request,
        collection_id: str = _COLLECTION_ID,
        feature_id: str = Path(..., alias="featureId", max_length=MAX_NAME_CHARS,
                               description="the feature's stable feature_id (UUID)"),
        crs: str | None = Query(None, max_length=MAX_CRS_CHARS, description=f"output CRS; default CRS84; {_CRS_RULE}"),
        datetime_: str | None = Query(None, alias="datetime", max_length=MAX_DATETIME_CHARS,
                                       description="an instant: the version valid then"),
        f: str | None = Query(None, max_length=MAX_NAME_CHARS, description="json (the only format)"),
    ):
        state = get_state(request)
        layer = state.layer(collection_id)
        srid = state.settings.srid
        for name in request.query_params:
            if name not in ("crs", "datetime", "f"):
                raise bad_parameter(name, f"unknown query parameter {name!r} for a single feature")
        _check_format(f)
        when = parse_datetime(datetime_)
        out = resolve_offered(crs, srid, "crs")
        if when is not None and not when.is_instant:
            raise bad_parameter("datetime", "a single feature takes an instant, not an interval or a date")
        text = _run(state, fetch_feature, layer, srid, feature_id, crs, when)
        if text is None:
            ended = _run(state, feature_ended_at, layer, srid, feature_id) if when is None else None
            if ended is not None:
                raise not_found(f"feature {feature_id} of {layer.name!r} was terminated at {_iso(ended)}; "
                                f"ask for an earlier version with ?datetime=")
            raise not_found(f"no feature {feature_id!r} in {layer.name!r}"
                            + (" at that time" if when is not None else ""))
        base = f"{_base(request)}/collections/{layer.name}"
        links = [_link(str(request.url), "self", GEOJSON, "this feature"),
                 _link(base, "collection", JSON, layer.title)]
        body = text.encode()
        body = b"".join((body[:-1], b',"links":', orjson.dumps(links), b"}"))
        return _geojson(body, out.ref)

    @app.get("/collections/{collectionId}/stats", tags=["statistics"],
             summary="Counts (and sums) of the selected features per district, street, community or grid")
    def stats(
        request: Request,
        collection_id: str = _COLLECTION_ID,
        group_by: Literal["district", "street", "community", "grid"] = Query(
            ..., description="district, street, community or grid"),
        sum_: str | None = Query(None, alias="sum", max_length=MAX_NAME_CHARS,
                                 description="a numeric queryable to sum per group"),
        bbox: str | None = _BBOX,
        bbox_crs: str | None = _BBOX_CRS,
        filter_: str | None = Query(None, alias="filter", max_length=MAX_FILTER_CHARS,
                                    description=_FILTER.description),
        filter_lang: FilterLang | None = _FILTER_LANG,
        filter_crs: str | None = _FILTER_CRS,
        datetime_: str | None = Query(None, alias="datetime", max_length=MAX_DATETIME_CHARS,
                                       description=_DATETIME.description),
        f: str | None = Query(None, max_length=MAX_NAME_CHARS, description="json (the only format)"),
    ):
        state = get_state(request)
        layer = state.layer(collection_id)
        selection = _selection(request, layer, state.settings.srid, STATS_PARAMETERS, bbox, bbox_crs, filter_,
                               filter_lang, filter_crs, datetime_)
        _check_format(f)
        result = _run(state, group_stats, layer, state.settings.srid, group_by, selection, sum_)
        result["collection"] = layer.name
        result["links"] = [_link(str(request.url), "self", JSON, "these statistics"),
                           _link(f"{_base(request)}/collections/{layer.name}", "collection", JSON, layer.title)]
        return result


def _check_format(f: str | None) -> None:
    if f is not None and f.lower() not in ("json", "geojson", "application/json", "application/geo+json"):
        raise bad_parameter("f", f"unsupported format {f!r}: only json is served")
