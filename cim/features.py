"""Feature queries on a layer: a :class:`~cim.selection.Selection` (bbox, property equality,
CQL2, time), order, paging, property choice and output CRS — one SQL statement that returns
GeoJSON features, plus a count; and the per-unit statistics of a selection.

Request text (``sortby=…``, ``properties=…``, ``?name=value``) is the API's to parse
(:mod:`api.params`); ``bbox`` and ``datetime`` are parsed by :mod:`cim.selection`, which the tile
builders share.

GeoJSON is built by PostgreSQL (``json_build_object`` + ``ST_AsGeoJSON``) and passed through as
text. Measured on a page of 10,000 parts (all properties, CRS84, plus the count): 99 ms, against
188 ms for fetching the columns and serialising in Python with orjson (geometry passed through
as an ``orjson.Fragment``) — the per-row Python work dominates, and the SQL way has none. Only
the GCJ-02/BD-09 output, which PostGIS cannot compute, is finished in Python: the database
writes WGS 84 and the offset is applied to the geometries of the GeoJSON it wrote.
"""
from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from geoalchemy2 import Geometry
from sqlalchemy.engine import Connection

from cim.cql import FilterError, ParameterError
from cim.crs import WGS84, CrsSpec, resolve_offered, transform_geojson
from cim.districts_index import Districts
from cim.errors import UserError
from cim.registry import Layer, layer_table
from cim.schema import tables_for
from cim.selection import (
    Selection, TimeSelection, bbox_centre, parse_bbox, parse_datetime, property_filters, selection_clause, validity_clause,
)

__all__ = [
    "DEFAULT_LIMIT",
    "GROUP_LEVELS",
    "MAX_LIMIT",
    "Extent",
    "FeaturePage",
    "FilterError",
    "ItemsQuery",
    "ParameterError",
    "Selection",
    "TimeSelection",
    "feature_ended_at",
    "feature_table",
    "fetch_feature",
    "fetch_items",
    "group_stats",
    "items_select",
    "layer_extent",
    "output_properties",
    "page_statement",
    "parse_bbox",
    "parse_datetime",
    "property_filters",
    "selection_clause",
    "validity_clause",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
#: columns that are not feature properties: the row id, the geometry, the loader's change hash
NOT_PROPERTIES = ("fid", "geom", "content_hash")
#: the property of iot-devices with the newest reading per declared quantity
LATEST = "latest"
IOT_TABLE = "iot_devices"
#: group_by levels of the stats: feature column, table of the named units, its code column
GROUP_LEVELS: dict[str, tuple[str, str, str]] = {
    "district": ("district_code", "districts", "code"),
    "street": ("street_code", "streets", "code"),
    "community": ("community_code", "communities", "code"),
    "grid": ("grid_code", "grids", "grid_code"),
}


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def feature_table(layer: Layer, storage_srid: int) -> sa.Table:
    """The SQLAlchemy table behind a layer (identifiers come from the schema, never a request)."""
    try:
        return layer_table(layer, storage_srid)
    except UserError as exc:
        raise ParameterError("collectionId", str(exc)) from None


def output_properties(layer: Layer, table: sa.Table) -> list[str]:
    """Every property a feature of the layer carries, in output order."""
    names = [str(c.name) for c in table.c if c.name not in NOT_PROPERTIES and c.name != "attributes"]
    names.append("attributes")
    if layer.table == IOT_TABLE:
        names.append(LATEST)
    return names


# ---------------------------------------------------------------------------------------------
# GeoJSON
# ---------------------------------------------------------------------------------------------

def _geometry_json(table: sa.Table, out: CrsSpec, storage_srid: int) -> sa.ColumnElement:
    geom: sa.ColumnElement = table.c.geom
    # the offset CRSs leave the database as WGS 84 (their base); _apply_offset finishes them
    if out.srid != storage_srid:
        geom = sa.func.ST_Transform(geom, out.srid)
    if out.lat_first:  # Part 2: the CRS's own axis order (lat/lon for EPSG:4326 and 4490)
        geom = sa.func.ST_FlipCoordinates(geom)
    digits = _digits(out)
    return sa.cast(sa.func.ST_AsGeoJSON(geom, digits, 0), sa.JSON)  # 0: no "crs" member (RFC 7946)


def _digits(out: CrsSpec) -> int:
    return 8 if out.is_geographic else 3  # ~1 mm either way


#: the geometry member of the feature text PostgreSQL writes; only "type" and the UUID "id" precede it
_GEOMETRY_MEMBER = re.compile(r'"geometry"\s*:\s*')
_JSON = json.JSONDecoder()


def _apply_offset(features: list[str], out: CrsSpec) -> list[str]:
    """GeoJSON features written in WGS 84 by the database, moved into GCJ-02/BD-09 (no-op else).

    Only each feature's geometry is decoded and rewritten; the properties stay the database's
    text, so numbers no Python float holds (huge integers, 1e400 in ``attributes``) pass intact.
    """
    if out.offset is None or not features:
        return features
    spans: list[tuple[int, int]] = []
    geometries: list[Any] = []
    for text in features:
        member = _GEOMETRY_MEMBER.search(text)
        if member is None:
            raise RuntimeError(f"feature text without a geometry member: {text[:80]!r}")
        geometry, end = _JSON.raw_decode(text, member.end())
        spans.append((member.end(), end))
        geometries.append(geometry)
    transform_geojson(geometries, WGS84, out, _digits(out))
    return [text[:start] + orjson.dumps(geometry).decode() + text[end:]
            for text, (start, end), geometry in zip(features, spans, geometries)]


def _json_object(pairs: list[tuple[str, Any]]) -> sa.ColumnElement:
    """json_build_object for any number of pairs (PostgreSQL takes at most 100 arguments)."""
    chunks = [pairs[i:i + 50] for i in range(0, len(pairs), 50)] or [[]]
    objects = [sa.func.jsonb_build_object(*[x for k, v in chunk for x in (sa.literal(k), v)])
               for chunk in chunks]
    if len(objects) == 1:
        return sa.func.json_build_object(*[x for k, v in chunks[0] for x in (sa.literal(k), v)])
    merged = objects[0]
    for obj in objects[1:]:
        merged = merged.op("||")(obj)
    return sa.cast(merged, sa.JSON)


def _latest_readings(table: sa.Table) -> sa.Lateral:
    """Per device: {quantity: {value, time, unit}} of the newest reading of each declared quantity.

    One index probe per quantity (``ORDER BY time DESC LIMIT 1`` on the readings' primary key)
    instead of scanning all of a device's readings.
    """
    readings = sa.table("iot_readings", sa.column("device_id"), sa.column("time"),
                        sa.column("quantity"), sa.column("value"))
    q = sa.func.jsonb_array_elements(table.c.quantities).table_valued("e").render_derived("q")
    quantity = sa.func.coalesce(q.c.e.op("->>")("quantity"), q.c.e.op("#>>")(sa.literal("{}")))
    newest = (sa.select(readings.c.value, readings.c.time)
              .where(readings.c.device_id == table.c.source_id, readings.c.quantity == quantity)
              .order_by(readings.c.time.desc()).limit(1).correlate(table, q).lateral("r"))
    agg = sa.func.json_object_agg(quantity, sa.func.json_build_object(
        "value", newest.c.value, "time", newest.c.time, "unit", q.c.e.op("->>")("unit")))
    return (sa.select(agg.label(LATEST)).select_from(q.join(newest, sa.true())).correlate(table)
            .lateral("latest_readings"))


def _feature_json(layer: Layer, table: sa.Table, out: CrsSpec, storage_srid: int,
                  properties: Sequence[str] | None) -> tuple[sa.ColumnElement, sa.FromClause]:
    """The feature as GeoJSON text and the FROM it needs."""
    names = list(properties) if properties is not None else output_properties(layer, table)
    source: sa.FromClause = table
    pairs: list[tuple[str, Any]] = []
    for name in names:
        if name == LATEST:
            latest = _latest_readings(table)
            source = table.outerjoin(latest, sa.true())
            pairs.append((name, latest.c[LATEST]))
        else:
            pairs.append((name, table.c[name]))
    feature = sa.func.json_build_object(
        "type", "Feature", "id", table.c.feature_id,
        "geometry", _geometry_json(table, out, storage_srid),
        "properties", _json_object(pairs))
    return sa.cast(feature, sa.Text), source


@dataclass(frozen=True)
class ItemsQuery:
    selection: Selection = field(default_factory=Selection)
    sortby: tuple[tuple[str, bool], ...] = ()
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    properties: tuple[str, ...] | None = None
    crs: str | None = None


@dataclass
class FeaturePage:
    features: list[str]  # GeoJSON Feature objects as text, ready to splice into a collection
    number_matched: int | None  # None: not counted (the page is not the last)
    matched_exact: bool
    crs: CrsSpec
    more: bool = False  # a next page exists (the page's probe row)

    @property
    def number_returned(self) -> int:
        return len(self.features)


def _page_order(layer: Layer, table: sa.Table, storage_srid: int,
                query: ItemsQuery) -> list[tuple[sa.ColumnElement, bool]]:
    """The page's sort keys (expression, descending?).

    Without ``sortby`` a bbox page comes nearest the box's centre first: that is the order the GiST index
    returns rows in (``ORDER BY geom <-> centre``), so the LIMIT stops after the page's rows. In ``fid``
    order every match of the box had to be read and sorted for each page (~5,000 parts of an 800 m box
    over the 15 M parts; the first 100 by ``fid`` are anywhere in the box anyway). The distance is the
    only key then: PostgreSQL walks an index in operator order only when that is the whole ORDER BY (a
    tie-breaker turns it back into a sort of every match). Equal distances keep the index's order, which
    is the same for every page of one request while the data stays. Otherwise ``fid`` breaks ties, so
    that pages never overlap."""
    keys = [(table.c[name], desc) for name, desc in query.sortby]
    if not keys and query.selection.bbox is not None:
        centre = bbox_centre(query.selection.bbox, query.selection.bbox_crs, storage_srid)
        return [(table.c.geom.op("<->")(centre), False)]
    return [*keys, (table.c.fid, False)]


def _ordered(key: sa.ColumnElement, desc: bool) -> sa.ColumnElement:
    return key.desc().nulls_last() if desc else key.asc().nulls_last()


def items_select(layer: Layer, storage_srid: int, query: ItemsQuery,
                 districts: Districts | None = None) -> tuple[sa.Select, sa.ColumnElement]:
    """The page's SELECT (one text column ``feature``) and the selection's WHERE clause; ``districts``
    (:meth:`Selection.districts`) confines it to the partitions / shards of the districts the bbox touches."""
    table = feature_table(layer, storage_srid)
    out = resolve_offered(query.crs, storage_srid, "crs")
    where = selection_clause(layer, table, storage_srid, query.selection, districts)
    feature, source = _feature_json(layer, table, out, storage_srid, query.properties)
    order = [_ordered(key, desc) for key, desc in _page_order(layer, table, storage_srid, query)]
    stmt = (sa.select(feature.label("feature")).select_from(source).where(where)
            .order_by(*order).limit(query.limit).offset(query.offset))
    return stmt, where


def page_statement(layer: Layer, storage_srid: int, query: ItemsQuery,
                   districts: Districts | None = None) -> tuple[sa.Select, sa.ColumnElement]:
    """The page (column ``feature``) with one row more than the limit, the probe that says whether there are
    more; and the selection's WHERE clause."""
    return items_select(layer, storage_srid, replace(query, limit=query.limit + 1), districts)


#: planner settings for the items page, while its statement runs. It reads a page of rows: parallel workers
#: would each start (and initialise PROJ for the output transform: ~100 ms a worker, measured on the 15 M
#: parts) for that.
_PAGE_SETTINGS = {"max_parallel_workers_per_gather": "0"}
#: and for a bbox page nearest the centre first, the index's order: under row-level security the planner
#: estimates a box's matches ~100× too low (the policy's CASE), so it sees no gain in stopping early and
#: sorts every match instead (EXPLAIN ANALYZE on 15 M parts: 5,189 rows read for 101, 1.1 s cold).
_NEAREST_SETTINGS = {**_PAGE_SETTINGS, "enable_sort": "off"}


@contextlib.contextmanager
def _planner_settings(conn: Connection, settings: dict[str, str]) -> Iterator[None]:
    """The block's statements planned with ``settings``; the transaction's own values come back after
    (two round trips, ~0.1 ms each: the caller may go on in the same transaction)."""
    names = list(settings)
    keep = ", ".join(f"current_setting('{n}')" for n in names)
    set_ = ", ".join(f"set_config('{n}', %(v{i})s, true)" for i, n in enumerate(names))
    before = conn.exec_driver_sql(f"SELECT {keep}, {set_}", {f"v{i}": settings[n] for i, n in enumerate(names)}).one()
    yield  # on an error the transaction is aborted (and the settings, local to it, go with it): no restore
    conn.exec_driver_sql("SELECT " + ", ".join(f"set_config('{n}', %(v{i})s, true)" for i, n in enumerate(names)),
                         {f"v{i}": before[i] for i in range(len(names))})


def fetch_items(conn: Connection, layer: Layer, storage_srid: int, query: ItemsQuery) -> FeaturePage:
    """One page of features; ``more`` says whether a next page exists (the page's probe row), and the number
    matched is known when the page holds the last of them (``offset`` + returned), None otherwise.

    Not counted beyond the page, as OGC API – Features allows: a count reads every match it counts. On the
    15 M parts an 800 m box holds ~5,000; counting up to 1,000 of them took 4× the page itself (EXPLAIN
    ANALYZE, p50 90 against 21 ms on a busy machine), and counting all of them was most of the old page's
    time. The statement runs without parallel workers, and a bbox page in the index's order
    (:data:`_NEAREST_SETTINGS`); the rest of the transaction keeps its settings."""
    districts = query.selection.districts(conn, layer, storage_srid)
    stmt, _ = page_statement(layer, storage_srid, query, districts)
    nearest = not query.sortby and query.selection.bbox is not None
    with _planner_settings(conn, _NEAREST_SETTINGS if nearest else _PAGE_SETTINGS):
        rows = conn.execute(stmt).scalars().all()
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    out = resolve_offered(query.crs, storage_srid, "crs")
    features = _apply_offset(list(rows), out)
    # the page holds the last match (or there are none at all): that is the count; past the end it is unknown
    matched = query.offset + len(rows) if not more and (rows or query.offset == 0) else None
    return FeaturePage(features, matched, matched is not None, out, more)


def fetch_feature(conn: Connection, layer: Layer, storage_srid: int, feature_id: str,
                  crs: str | None = None, when: TimeSelection | None = None) -> str | None:
    """One feature's current version (or the version valid at ``when``) as GeoJSON text.

    Returns None for an unknown id, a malformed one, or a feature with no version then.
    """
    try:
        key = str(uuid.UUID(feature_id))
    except ValueError:
        return None
    table = feature_table(layer, storage_srid)
    out = resolve_offered(crs, storage_srid, "crs")
    feature, source = _feature_json(layer, table, out, storage_srid, None)
    stmt = (sa.select(feature).select_from(source)
            .where(table.c.feature_id == key, validity_clause(table, when))
            .order_by(table.c.valid_from.desc()).limit(1))
    text = conn.execute(stmt).scalar()
    return None if text is None else _apply_offset([text], out)[0]


def feature_ended_at(conn: Connection, layer: Layer, storage_srid: int, feature_id: str) -> datetime | None:
    """When a feature without a current version was terminated (None if it never existed)."""
    try:
        key = str(uuid.UUID(feature_id))
    except ValueError:
        return None
    table = feature_table(layer, storage_srid)
    return conn.execute(sa.select(sa.func.max(table.c.valid_to)).where(table.c.feature_id == key)).scalar()


# ---------------------------------------------------------------------------------------------
# Collection metadata and statistics
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Extent:
    bbox: tuple[float, float, float, float] | None  # CRS84 lon/lat of the current versions
    first_valid_from: datetime | None


def layer_extent(conn: Connection, layer: Layer, storage_srid: int) -> Extent:
    """Spatial extent (CRS84) of the current versions and the start of the layer's history.

    The storage-CRS box is densified before the transform, since its straight edges curve in
    degrees; 1 km segments keep the error far below a metre at city scale.
    """
    table = feature_table(layer, storage_srid)
    box = sa.select(sa.func.ST_SetSRID(sa.cast(sa.func.ST_Extent(table.c.geom), Geometry()),
                                       storage_srid).label("b")).where(table.c.valid_to.is_(None)).subquery()
    wgs = sa.func.ST_Transform(sa.func.ST_Segmentize(box.c.b, 1000.0), 4326)
    row = conn.execute(sa.select(sa.func.ST_XMin(wgs), sa.func.ST_YMin(wgs), sa.func.ST_XMax(wgs),
                                 sa.func.ST_YMax(wgs)).select_from(box)).one()
    first = conn.execute(sa.select(sa.func.min(table.c.valid_from))).scalar()
    bbox = None if row[0] is None else tuple(round(float(v), 7) for v in row)
    return Extent(bbox, first)  # type: ignore[arg-type]


def group_stats(conn: Connection, layer: Layer, storage_srid: int, level: str, selection: Selection,
                sum_property: str | None = None) -> dict[str, Any]:
    """Counts (and a sum of a numeric property) of the selected features per district, street,
    community or grid, each group with the unit's current name."""
    if level not in GROUP_LEVELS:
        raise ParameterError("group_by", f"group_by must be one of {', '.join(GROUP_LEVELS)}, got {level!r}")
    code_column, unit_table_name, unit_code = GROUP_LEVELS[level]
    table = feature_table(layer, storage_srid)
    if code_column not in table.c:
        raise ParameterError("group_by", f"{layer.name!r} has no {code_column}: it cannot be grouped by {level}")
    measures = [sa.func.count().label("count")]
    if sum_property is not None:
        q = layer.queryable(sum_property)
        if q is None or sum_property not in table.c or q.type not in ("number", "integer"):
            numeric = [x.name for x in layer.queryables if x.type in ("number", "integer")]
            raise ParameterError("sum", f"sum needs a numeric queryable of {layer.name!r} "
                                        f"({', '.join(numeric) or 'none'}), got {sum_property!r}")
        measures.append(sa.func.sum(table.c[sum_property]).label("sum"))
    where = selection_clause(layer, table, storage_srid, selection, selection.districts(conn, layer, storage_srid))
    code = table.c[code_column]
    groups = sa.select(code.label("code"), *measures).where(where).group_by(code).subquery()
    units = tables_for(storage_srid)[unit_table_name]
    name = (sa.select(units.c.name).where(units.c[unit_code] == groups.c.code, units.c.valid_to.is_(None))
            .limit(1).scalar_subquery())
    stmt = sa.select(groups, name.label("name")).order_by(groups.c.code.asc().nulls_last())
    rows = conn.execute(stmt).mappings().all()
    result_groups = []
    total_count, total_sum = 0, 0.0
    for r in rows:
        entry: dict[str, Any] = {"code": r["code"], "name": r["name"], "count": r["count"]}
        total_count += r["count"]
        if sum_property is not None:
            entry["sum"] = None if r["sum"] is None else float(r["sum"])
            total_sum += entry["sum"] or 0.0
        result_groups.append(entry)
    total: dict[str, Any] = {"count": total_count}
    if sum_property is not None:
        total["sum"] = total_sum
    return {"group_by": level, "sum_of": sum_property, "groups": result_groups, "total": total}
