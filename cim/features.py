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

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from geoalchemy2 import Geometry
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from cim.cql import FilterError, ParameterError
from cim.crs import WGS84, CrsSpec, resolve_offered, transform_geojson
from cim.districts_index import Districts
from cim.errors import UserError
from cim.registry import Layer, layer_table
from cim.schema import tables_for
from cim.selection import (
    Selection, TimeSelection, parse_bbox, parse_datetime, property_filters, selection_clause, validity_clause,
)

__all__ = [
    "DEFAULT_LIMIT",
    "EXACT_COUNT_LIMIT",
    "GROUP_LEVELS",
    "MAX_LIMIT",
    "PAGE_COUNT_CAP",
    "Extent",
    "FeaturePage",
    "FilterError",
    "ItemsQuery",
    "ParameterError",
    "Selection",
    "TimeSelection",
    "count_matches",
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
#: above this many (estimated) matches numberMatched is the planner's estimate, not a count:
#: an exact count(*) of millions of buildings would cost more than the page itself
EXACT_COUNT_LIMIT = 100_000
#: matches counted by the page's own statement; a selection with more is counted (or estimated)
#: by :func:`count_matches` in further round trips. Small, because counting up to it is paid even
#: when there are millions: 1,000 matches of a filter cost ~1 ms to count.
PAGE_COUNT_CAP = 1_000
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
    number_matched: int
    matched_exact: bool
    crs: CrsSpec

    @property
    def number_returned(self) -> int:
        return len(self.features)


def items_select(layer: Layer, storage_srid: int, query: ItemsQuery,
                 districts: Districts | None = None) -> tuple[sa.Select, sa.ColumnElement]:
    """The page's SELECT (one text column ``feature``) and the selection's WHERE clause; ``districts``
    (:meth:`Selection.districts`) confines it to the partitions / shards of the districts the bbox touches."""
    table = feature_table(layer, storage_srid)
    out = resolve_offered(query.crs, storage_srid, "crs")
    where = selection_clause(layer, table, storage_srid, query.selection, districts)
    feature, source = _feature_json(layer, table, out, storage_srid, query.properties)
    order = [table.c[name].desc().nulls_last() if desc else table.c[name].asc().nulls_last()
             for name, desc in query.sortby]
    stmt = (sa.select(feature.label("feature")).select_from(source).where(where)
            .order_by(*order, table.c.fid).limit(query.limit).offset(query.offset))
    return stmt, where


class _Explain(Executable, ClauseElement):
    inherit_cache = False

    def __init__(self, statement: sa.Select) -> None:
        self.statement = statement


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def count_matches(conn: Connection, table: sa.Table, where: sa.ColumnElement,
                  exact_limit: int = EXACT_COUNT_LIMIT) -> tuple[int, bool]:
    """(number of matching rows, exact?): the planner's estimate when it exceeds ``exact_limit``."""
    plan = conn.execute(_Explain(sa.select(sa.literal(1)).select_from(table).where(where))).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    if estimate > exact_limit:
        return estimate, False
    return conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one(), True


def page_statement(layer: Layer, storage_srid: int, query: ItemsQuery,
                   districts: Districts | None = None) -> tuple[sa.Select, sa.ColumnElement]:
    """The page (column ``feature``) with, when the page is full, the number of matches up to
    :data:`PAGE_COUNT_CAP` + 1 (column ``matched``, else NULL); and the selection's WHERE clause.

    A map window or a filter usually matches fewer than the cap, and then one round trip answers
    the request. The count is a subquery inside ``CASE``, which PostgreSQL runs only when the page
    is full: a short page already says how many there are, and must not pay a second scan.
    """
    stmt, where = items_select(layer, storage_srid, query, districts)
    table = feature_table(layer, storage_srid)
    keys = [table.c[name] for name, _ in query.sortby] + [table.c.fid]  # the page's order, carried out
    page = stmt.add_columns(*(key.label(f"k{i}") for i, key in enumerate(keys))).cte("page")
    capped = sa.select(sa.func.count()).select_from(
        sa.select(sa.literal(1)).select_from(table).where(where).limit(PAGE_COUNT_CAP + 1).subquery())
    page_size = sa.select(sa.func.count()).select_from(page).scalar_subquery()
    matched = sa.case((page_size == query.limit, capped.scalar_subquery()), else_=sa.null())
    order = [page.c[f"k{i}"].desc().nulls_last() if desc else page.c[f"k{i}"].asc().nulls_last()
             for i, (_, desc) in enumerate(query.sortby)] + [page.c[f"k{len(query.sortby)}"]]
    return sa.select(page.c.feature, matched.label("matched")).order_by(*order), where


def fetch_items(conn: Connection, layer: Layer, storage_srid: int, query: ItemsQuery) -> FeaturePage:
    """One page of features and the number matched: exact up to :data:`EXACT_COUNT_LIMIT`, and in
    the page's own statement when the page is short or there are at most :data:`PAGE_COUNT_CAP`."""
    districts = query.selection.districts(conn, layer, storage_srid)
    stmt, where = page_statement(layer, storage_srid, query, districts)
    rows = conn.execute(stmt).all()
    out = resolve_offered(query.crs, storage_srid, "crs")
    features = _apply_offset([row[0] for row in rows], out)
    counted = rows[0][1] if rows else None
    if rows and len(rows) < query.limit or (not rows and query.offset == 0):
        matched, exact = query.offset + len(rows), True
    elif counted is not None and counted <= PAGE_COUNT_CAP:
        matched, exact = counted, True
    else:
        matched, exact = count_matches(conn, feature_table(layer, storage_srid), where)
    return FeaturePage(features, matched, exact, out)


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
