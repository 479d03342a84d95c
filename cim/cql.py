"""CQL2 filters (OGC 21-065) → SQLAlchemy Core, with bound parameters only.

Parsing is pygeofilter's (its cql2-text Lark grammar and its cql2-json walker). Its own SQLAlchemy
backend is not used: it targets ORM models, splices geometry literals into EWKT strings and
knows nothing of a layer's queryables or of CRS axis order. This module walks pygeofilter's AST
instead and builds a Core expression against the layer's table, where

- attribute names must be the layer's queryables (or ``geometry``/``geom``); anything else is
  an error naming the attribute, so no identifier ever comes from the request;
- every literal is a bound parameter, typed after the column it is compared with;
- geometry literals are read in ``filter-crs`` (default CRS84), in that CRS's axis order, and
  transformed to the storage CRS in SQL, so the spatial predicates use the GiST index;
- temporal predicates see a feature's validity as the half-open interval
  ``INTERVAL(valid_from, valid_to)`` = [valid_from, valid_to), an open end being "still valid".

pygeofilter 0.4's text grammar lacks three things of CQL2 that a city base needs, so it is
extended (not copied) at import: the standard function form of the temporal predicates
(``T_INTERSECTS(a, b)``; pygeofilter only has an infix form), ``INTERVAL`` with property or
``'..'`` bounds, and ``S_DWITHIN(a, b, metres)`` (not in CQL2 1.0; distance in the storage CRS).

The module also holds the OGC CRS references (``crs``, ``bbox-crs``, ``filter-crs``) because
geometry literals need them and :mod:`cim.features` builds on this module.
"""
from __future__ import annotations

import functools
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import pyproj
import shapely
import sqlalchemy as sa
from geoalchemy2 import Geometry
from lark import Lark, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError
from pygeofilter import ast, values
from pygeofilter.cql2 import TEMPORAL_PREDICATES_MAP
from pygeofilter.parsers.cql2_json.parser import walk_cql_json
from pygeofilter.parsers.cql2_text import parser as base_text_parser
from sqlalchemy.dialects.postgresql import JSONB, UUID

from cim.errors import ParameterError, UserError
from cim.registry import Layer

__all__ = [
    "CRS84",
    "CRS84_URI",
    "CrsRef",
    "FilterError",
    "ParameterError",
    "GEOMETRY_NAMES",
    "column_kind",
    "compile_filter",
    "crs_ref",
    "crs_uri",
    "envelope_literal",
    "geometry_literal",
    "parse_filter",
    "supported_crs",
]

#: the names a filter may use for a layer's geometry
GEOMETRY_NAMES = ("geometry", "geom")
#: longer filters are refused before parsing: a filter is a query, not a data upload
MAX_FILTER_CHARS = 50_000


class FilterError(ParameterError):
    """A CQL2 filter that cannot be parsed or does not fit the layer."""

    def __init__(self, message: str, parameter: str = "filter") -> None:
        super().__init__(parameter, message)


# ---------------------------------------------------------------------------------------------
# CRS references as OGC APIs write them
# ---------------------------------------------------------------------------------------------

CRS84_URI = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
_EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/{}"
#: output CRSs offered besides CRS84 and the storage CRS: WGS 84, CGCS2000 (China's geodetic
#: datum) and Web Mercator for web maps
EXTRA_CRS = (4326, 4490, 3857)
_CRS_FORMS = (
    re.compile(r"^https?://www\.opengis\.net/def/crs/(?P<auth>EPSG|OGC)/[0-9.]+/(?P<code>\w+)$", re.I),
    re.compile(r"^urn:ogc:def:crs:(?P<auth>EPSG|OGC):[0-9.]*:(?P<code>\w+)$", re.I),
    re.compile(r"^\[?(?P<auth>EPSG|OGC):(?P<code>\w+)\]?$", re.I),  # CURIE / safe CURIE
    re.compile(r"^(?P<code>CRS84)$", re.I),
)


@dataclass(frozen=True)
class CrsRef:
    """A CRS a request may name: its URI, the PostGIS SRID and its authority axis order."""

    uri: str
    srid: int  # CRS84 is SRID 4326 with longitude first
    lat_first: bool  # first axis is latitude/northing (EPSG:4326, EPSG:4490, EPSG:4549 …)
    geographic: bool

    def __str__(self) -> str:
        return self.uri


def crs_uri(srid: int) -> str:
    return _EPSG_URI.format(srid)


@functools.lru_cache(maxsize=64)
def _epsg_ref(srid: int) -> CrsRef:
    crs = pyproj.CRS.from_epsg(srid)
    # OGC API Features Part 2: coordinates are in the axis order the CRS defines, so a CRS whose
    # first axis points north (latitude, or a Gauss-Krüger "X" northing) is written y first.
    first = crs.axis_info[0].direction.lower() if crs.axis_info else "east"
    return CrsRef(crs_uri(srid), srid, first in ("north", "south"), bool(crs.is_geographic))


CRS84 = CrsRef(CRS84_URI, 4326, False, True)


def supported_crs(storage_srid: int) -> list[CrsRef]:
    """The CRSs the API reads and writes: CRS84 first (the default), then EPSG codes."""
    srids = dict.fromkeys([*EXTRA_CRS, storage_srid])
    return [CRS84, *(_epsg_ref(s) for s in srids)]


def crs_ref(value: str | None, storage_srid: int, parameter: str = "crs") -> CrsRef:
    """Resolve a CRS as a request names it (URI, URN, ``EPSG:4490``, ``[EPSG:4490]``, ``CRS84``).

    Only the CRSs of :func:`supported_crs` are accepted; None means CRS84.
    """
    if value is None or not value.strip():
        return CRS84
    text = value.strip()
    offered = supported_crs(storage_srid)
    for form in _CRS_FORMS:
        m = form.match(text)
        if not m:
            continue
        auth = (m.groupdict().get("auth") or "OGC").upper()
        code = m.group("code").upper()
        if auth == "OGC" and code == "CRS84":
            return CRS84
        if auth == "EPSG" and code.isdigit():
            ref = next((c for c in offered if c.uri == crs_uri(int(code))), None)
            if ref is not None:
                return ref
        break
    raise ParameterError(parameter, f"unsupported {parameter} {value!r}: use one of "
                                    + ", ".join(c.uri for c in offered))


def _check_geographic(coords: Any, parameter: str, lat_first: bool) -> None:
    for x, y in ((float(p[0]), float(p[1])) for p in coords):
        lon, lat = (y, x) if lat_first else (x, y)
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            order = "lat/lon" if lat_first else "lon/lat"
            raise ParameterError(parameter, f"coordinate ({x:g}, {y:g}) is outside the range of a "
                                            f"geographic CRS (axis order {order})")


def geometry_literal(geojson: dict, crs: CrsRef, storage_srid: int,
                     parameter: str = "filter") -> sa.ColumnElement:
    """A GeoJSON geometry given in ``crs`` (its axis order) as an SQL geometry in storage."""
    try:
        geom = shapely.geometry.shape(geojson)
    except Exception as exc:  # shapely raises several types for malformed input
        raise ParameterError(parameter, f"invalid geometry literal: {exc}") from None
    if geom.is_empty:
        raise ParameterError(parameter, "empty geometry literal")
    coords = shapely.get_coordinates(geom)
    if not all(math.isfinite(v) for v in coords.ravel()):
        raise ParameterError(parameter, "geometry literal has non-finite coordinates")
    if crs.geographic:
        _check_geographic(coords, parameter, crs.lat_first)
    body = {k: v for k, v in geojson.items() if k != "crs"}
    expr = sa.func.ST_GeomFromGeoJSON(sa.bindparam(None, json.dumps(body), type_=sa.Text))
    if crs.lat_first:
        expr = sa.func.ST_FlipCoordinates(expr)
    expr = sa.func.ST_SetSRID(expr, crs.srid)
    if crs.srid != storage_srid:
        expr = sa.func.ST_Transform(expr, storage_srid)
    return sa.type_coerce(expr, Geometry(srid=storage_srid))


def envelope_literal(minx: float, miny: float, maxx: float, maxy: float, crs: CrsRef,
                     storage_srid: int, parameter: str = "bbox") -> sa.ColumnElement:
    """A box given in ``crs`` (numbers in its axis order) as a polygon in storage.

    The edges are densified before the transform: a straight edge in degrees is curved in a
    projected CRS, and the four transformed corners alone would cut off slivers of the box.
    """
    vals = (minx, miny, maxx, maxy)
    if not all(math.isfinite(v) for v in vals):
        raise ParameterError(parameter, "the box has non-finite numbers")
    if minx > maxx or miny > maxy:
        raise ParameterError(parameter, f"the box's minimum exceeds its maximum ({minx:g},{miny:g},"
                                        f"{maxx:g},{maxy:g}); give lower corner, then upper corner")
    if minx == maxx or miny == maxy:  # a degenerate box is a line or a point, not a polygon
        shape = shapely.LineString([(minx, miny), (maxx, maxy)]) if (minx, miny) != (maxx, maxy) \
            else shapely.Point(minx, miny)
    else:
        shape = shapely.box(minx, miny, maxx, maxy)
    if crs.srid != storage_srid:
        shape = shapely.segmentize(shape, max(maxx - minx, maxy - miny) / 32 or 1.0)
    return geometry_literal(shapely.geometry.mapping(shape), crs, storage_srid, parameter)


# ---------------------------------------------------------------------------------------------
# Parsing: pygeofilter's grammar, extended
# ---------------------------------------------------------------------------------------------

class PropertyInterval(ast.Node):
    """``INTERVAL(valid_from, valid_to)``: an interval whose bounds are properties (an AST node,
    so that pygeofilter's JSON walker passes it through)."""

    def __init__(self, start: Any, end: Any) -> None:
        self.start, self.end = start, end

    def __repr__(self) -> str:
        return f"INTERVAL({self.start!r}, {self.end!r})"


def _instant(text: str) -> date | datetime | None:
    """An RFC 3339 date or timestamp (naive means UTC); '..' (open) gives None."""
    text = text.strip()
    if text in ("..", ""):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise FilterError(f"{text!r} is not an RFC 3339 date or timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@functools.lru_cache(maxsize=1)
def _text_parser() -> Lark:
    path = Path(base_text_parser.__file__).with_name("grammar.lark")
    grammar = path.read_text(encoding="utf-8")
    patches = [
        ("?spatial_predicate: _binary_spatial_predicate_func",
         '?spatial_predicate: "S_DWITHIN"i "(" expression "," expression "," full_number ")" -> dwithin\n'
         "                  | _binary_spatial_predicate_func"),
        ("?temporal_predicate: expression _binary_temporal_predicate_func expression -> binary_temporal_predicate",
         "?temporal_predicate: expression _binary_temporal_predicate_func expression -> binary_temporal_predicate\n"
         '                   | _binary_temporal_predicate_func "(" expression "," expression ")" -> temporal_function'),
        ('?interval: "INTERVAL" "("  "\'" DATETIME "\'" "," "\'" DATETIME "\'" ")"',
         'interval: "INTERVAL"i "(" interval_bound "," interval_bound ")"\n'
         "?interval_bound: SINGLE_QUOTED | attribute"),
        # CQL2's own names of four relations (pygeofilter knows them as BEGINS/ENDS) and T_DISJOINT
        ('!_binary_temporal_predicate_func: "T_BEFORE"i',
         '!_binary_temporal_predicate_func: "T_STARTS"i | "T_STARTEDBY"i | "T_FINISHES"i | "T_FINISHEDBY"i\n'
         '                        | "T_DISJOINT"i\n'
         '                        | "T_BEFORE"i'),
        # the CQL2 bbox literal BBOX(minx, miny, maxx, maxy[, …]) next to pygeofilter's BBOX predicate
        ("?literal: timestamp",
         '?literal: "BBOX"i "(" full_number ("," full_number)~3 ["," full_number "," full_number] ")" -> bbox_literal\n'
         "        | timestamp"),
    ]
    for old, new in patches:
        if old not in grammar:
            raise RuntimeError(f"pygeofilter's CQL2 grammar ({path}) changed: cannot extend {old!r}; "
                               "pin the pygeofilter version this module was written for (0.4)")
        grammar = grammar.replace(old, new, 1)

    @v_args(meta=False, inline=True)
    class Transformer(base_text_parser.CQLTransformer):
        def dwithin(self, lhs, rhs, distance):
            return ast.DistanceWithin(lhs, rhs, distance, "m")

        def binary_temporal_predicate(self, lhs, op, rhs):
            return _temporal_node(str(op), lhs, rhs)

        def temporal_function(self, op, lhs, rhs):
            return _temporal_node(str(op), lhs, rhs)

        def bbox_literal(self, *numbers):
            half = len(numbers) // 2  # 2D: minx, miny, maxx, maxy; 3D: minx, miny, minz, maxx, maxy, maxz
            return values.Envelope(numbers[0], numbers[half], numbers[1], numbers[half + 1])

        def interval(self, start, end):
            if isinstance(start, ast.Attribute) or isinstance(end, ast.Attribute):
                return PropertyInterval(start, end)
            return values.Interval(_instant(start), _instant(end))

        # pygeofilter's WKT transformer prints these to stdout; the same without the print
        def wkt__geometry_with_srid(self, srid, geometry):
            geometry["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{srid}"}}
            return geometry

        def wkt__multipoint_2(self, *coordinates):
            return {"type": "MultiPoint", "coordinates": coordinates}

    return Lark(grammar, parser="lalr", maybe_placeholders=False, transformer=Transformer(),
                source_path=str(path), import_paths=[str(path.parent.parent)])


#: CQL2 1.0 names that pygeofilter 0.4 lacks
_CQL2_TEMPORAL: dict[str, type] = {
    "t_starts": ast.TimeBegins, "t_startedby": ast.TimeBegunBy, "t_finishes": ast.TimeEnds,
    "t_finishedby": ast.TimeEndedBy, "t_disjoint": ast.TimeDisjoint,
}


def _temporal_node(op: str, lhs: Any, rhs: Any) -> ast.TemporalPredicate:
    key = op.lower()
    if key == "t_intersects":  # pygeofilter maps it to T_OVERLAPS, which is a different relation
        return TimeIntersects(lhs, rhs)
    cls = _CQL2_TEMPORAL.get(key) or TEMPORAL_PREDICATES_MAP.get(key)
    if cls is None:
        raise FilterError(f"unknown temporal function {op}")
    return cls(lhs, rhs)


@dataclass
class TimeIntersects(ast.TemporalPredicate):
    """T_INTERSECTS: the two periods share at least one instant."""

    op: ClassVar[str] = "T_INTERSECTS"


def _json_prewalk(node: Any) -> Any:
    """Turn the CQL2-JSON constructs pygeofilter 0.4 gets wrong or lacks into AST nodes.

    pygeofilter's walker passes AST nodes through untouched, so the rest stays its job:
    ``between`` with three args (the standard form), ``t_intersects`` (it maps it to
    t_overlaps), ``s_dwithin``, ``{"bbox": […]}`` (it swaps miny/maxx), intervals with
    property or open bounds and strict RFC 3339 timestamps.
    """
    if isinstance(node, list):
        return [_json_prewalk(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "bbox" in node:
        b = node["bbox"]
        if not (isinstance(b, list) and len(b) in (4, 6) and all(_is_number(v) for v in b)):
            raise FilterError(f"a bbox literal needs 4 or 6 numbers, got {b!r}")
        half = len(b) // 2
        return values.Envelope(b[0], b[half], b[1], b[half + 1])
    if "timestamp" in node:
        value = _instant(str(node["timestamp"]))
        if not isinstance(value, datetime):
            raise FilterError(f"timestamp {node['timestamp']!r} must be an RFC 3339 date-time")
        return value
    if "date" in node:
        value = _instant(str(node["date"]))
        if type(value) is not date:
            raise FilterError(f"date {node['date']!r} must be YYYY-MM-DD")
        return value
    if "interval" in node:
        bounds = node["interval"]
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise FilterError(f"an interval needs two bounds, got {bounds!r}")
        if any(isinstance(b, dict) for b in bounds):
            return PropertyInterval(*(walk_cql_json(_json_prewalk(b)) if isinstance(b, dict) else b
                                      for b in bounds))
        return values.Interval(*(_instant(str(b)) for b in bounds))
    if "op" in node:
        op = node["op"]
        args = node.get("args")
        if not isinstance(op, str) or not isinstance(args, list):
            raise FilterError(f"a CQL2-JSON operation needs 'op' (text) and 'args' (array): {node!r}")
        args = [_json_prewalk(a) for a in args]
        key = op.lower()
        if key == "s_dwithin":
            if len(args) != 3 or not _is_number(args[2]):
                raise FilterError("s_dwithin needs three args: a geometry, a geometry, a distance in metres")
            return ast.DistanceWithin(walk_cql_json(args[0]), walk_cql_json(args[1]), args[2], "m")
        if key.startswith("t_"):
            if len(args) != 2:
                raise FilterError(f"{op} needs two args")
            return _temporal_node(key, walk_cql_json(args[0]), walk_cql_json(args[1]))
        if key == "between" and len(args) == 3:
            return ast.Between(walk_cql_json(args[0]), walk_cql_json(args[1]), walk_cql_json(args[2]), False)
        return {**node, "args": args}
    return node


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe_lark_error(exc: Exception, text: str) -> str:
    if isinstance(exc, UnexpectedEOF):
        return "the filter ends too early"
    if isinstance(exc, (UnexpectedCharacters, UnexpectedToken)):
        column = getattr(exc, "column", "?")
        pos = getattr(exc, "pos_in_stream", None)
        snippet = text[pos:pos + 20] if isinstance(pos, int) and pos >= 0 else ""
        if isinstance(exc, UnexpectedToken) and exc.token.type == "$END":
            return "the filter ends too early"
        return f"syntax error at column {column} near {snippet!r}"
    return str(exc)


def parse_filter(text: str | dict, lang: str = "cql2-text") -> Any:
    """Parse CQL2 text or JSON into pygeofilter's AST; FilterError says where it fails."""
    lang = (lang or "cql2-text").lower()
    if lang == "cql2-text":
        if not isinstance(text, str):
            raise FilterError("a cql2-text filter must be text", "filter")
        if not text.strip():
            raise FilterError("the filter is empty")
        try:
            return _text_parser().parse(text)
        except VisitError as exc:
            orig = exc.orig_exc
            if isinstance(orig, FilterError):
                raise orig from None
            raise FilterError(f"invalid filter: {orig}") from None
        except LarkError as exc:
            raise FilterError(_describe_lark_error(exc, text)) from None
    if lang == "cql2-json":
        if isinstance(text, str):
            try:
                text = json.loads(text)
            except ValueError as exc:
                raise FilterError(f"the cql2-json filter is not valid JSON: {exc}") from None
        try:
            return walk_cql_json(_json_prewalk(text))
        except FilterError:
            raise
        except Exception as exc:  # pygeofilter raises bare ValueError/KeyError/TypeError
            raise FilterError(f"invalid cql2-json filter: {exc}") from None
    raise FilterError(f"unsupported filter-lang {lang!r}: use cql2-text or cql2-json", "filter-lang")


# ---------------------------------------------------------------------------------------------
# AST → SQL
# ---------------------------------------------------------------------------------------------

_INFINITY = "infinity"


@dataclass(frozen=True)
class _Value:
    """An operand: its SQL, its kind, and — for literals — the Python value before binding."""

    expr: Any  # sa.ColumnElement, or None for an unbound literal
    kind: str  # string, number, boolean, date, datetime, uuid, geometry, json, null
    literal: Any = None
    is_literal: bool = False
    name: str | None = None  # attribute name, for messages


@dataclass(frozen=True)
class _Period:
    start: Any
    end: Any
    end_open: bool  # half-open [start, end): validity intervals and whole days


def column_kind(column: sa.ColumnElement) -> str:
    """What a column holds, as filters and query parameters treat it."""
    t = column.type
    if isinstance(t, Geometry):
        return "geometry"
    if isinstance(t, UUID):
        return "uuid"
    if isinstance(t, JSONB):
        return "json"
    if isinstance(t, sa.Boolean):
        return "boolean"
    if isinstance(t, (sa.Integer, sa.Float, sa.Numeric)):
        return "number"
    if isinstance(t, sa.DateTime):
        return "datetime"
    if isinstance(t, sa.Date):
        return "date"
    return "string"


_KIND_WORDS = {"string": "text", "number": "a number", "boolean": "a boolean", "date": "a date",
               "datetime": "a timestamp", "uuid": "a UUID", "geometry": "a geometry", "json": "a JSON object"}


def _literal_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


class _Compiler:
    def __init__(self, layer: Layer, table: sa.Table | sa.TableClause, storage_srid: int,
                 filter_crs: CrsRef) -> None:
        self.layer, self.table, self.srid, self.crs = layer, table, storage_srid, filter_crs
        self.handlers: dict[type, Callable[[Any], sa.ColumnElement]] = {
            ast.And: lambda n: sa.and_(self.condition(n.lhs), self.condition(n.rhs)),
            ast.Or: lambda n: sa.or_(self.condition(n.lhs), self.condition(n.rhs)),
            ast.Not: lambda n: sa.not_(self.condition(n.sub_node)),
            ast.Include: lambda n: sa.false() if n.not_ else sa.true(),
            ast.IsNull: self.is_null,
            ast.Between: self.between,
            ast.Like: self.like,
            ast.In: self.in_,
            ast.BBox: self.bbox,
            ast.DistanceWithin: self.dwithin,
            ast.DistanceBeyond: self.dwithin,
        }

    # --- operands --------------------------------------------------------------------------
    def attribute(self, name: str) -> _Value:
        if name.lower() in GEOMETRY_NAMES:
            return _Value(self.table.c.geom, "geometry", name=name)
        if self.layer.queryable(name) is None or name not in self.table.c:
            known = ", ".join([*self.layer.property_names, "geometry"])
            raise FilterError(f"unknown property {name!r} in the filter; the queryables of "
                              f"{self.layer.name!r} are: {known}")
        column = self.table.c[name]
        return _Value(column, column_kind(column), name=name)

    def value(self, node: Any) -> _Value:
        if isinstance(node, ast.Attribute):
            return self.attribute(node.name)
        if isinstance(node, ast.Function):
            return self.function(node)
        if isinstance(node, ast.Arithmetic):
            return self.arithmetic(node)
        if isinstance(node, values.Geometry):
            return _Value(self.geometry(node.geometry), "geometry", is_literal=True)
        if isinstance(node, values.Envelope):
            env = envelope_literal(node.x1, node.y1, node.x2, node.y2, self.crs, self.srid, "filter")
            return _Value(env, "geometry", is_literal=True)
        if isinstance(node, (ast.Node, values.Interval, PropertyInterval, list)):
            raise FilterError(f"{_show(node)} cannot be used as a value here")
        if isinstance(node, (time, timedelta)):
            raise FilterError(f"{node!r} (a time of day or duration) is not supported in filters")
        if isinstance(node, float) and not math.isfinite(node):
            raise FilterError("numbers in the filter must be finite")
        return _Value(None, _literal_kind(node), literal=node, is_literal=True)

    def geometry(self, geojson: dict) -> sa.ColumnElement:
        crs = self.crs
        name = (geojson.get("crs") or {}).get("properties", {}).get("name")
        if name:  # EWKT "SRID=n;…": PostGIS convention, x = easting/longitude whatever the CRS
            srid = int(name.rsplit(":", 1)[-1])
            ref = crs_ref(f"EPSG:{srid}", self.srid, "filter")
            crs = CrsRef(ref.uri, ref.srid, False, ref.geographic)
        return geometry_literal(geojson, crs, self.srid, "filter")

    def function(self, node: Any) -> _Value:
        name = node.name.lower()
        if name in ("lower", "casei") and len(node.arguments) == 1:
            inner = self.value(node.arguments[0])
            return _Value(sa.func.lower(self.text_operand(inner, "CASEI")), "string", name=f"CASEI({_label(inner)})")
        raise FilterError(f"unsupported function {node.name}({', '.join('…' for _ in node.arguments)}); "
                          "supported: CASEI(text)")

    def arithmetic(self, node: Any) -> _Value:
        lhs, rhs = self.value(node.lhs), self.value(node.rhs)
        for v in (lhs, rhs):
            if v.kind != "number":
                raise FilterError(f"arithmetic needs numbers; {_label(v)} is {_KIND_WORDS.get(v.kind, v.kind)}")
        a, b = self.bind(lhs, "number"), self.bind(rhs, "number")
        op = node.op.value
        expr = {"+": a + b, "-": a - b, "*": a * b, "/": a / sa.func.nullif(b, 0)}[op]
        return _Value(expr, "number")

    def text_operand(self, v: _Value, where: str) -> sa.ColumnElement:
        if v.kind == "uuid":
            return sa.cast(v.expr, sa.Text)
        if v.kind != "string":
            raise FilterError(f"{where} needs text; {_label(v)} is {_KIND_WORDS.get(v.kind, v.kind)}")
        return self.bind(v, "string")

    def bind(self, v: _Value, kind: str, column: Any = None) -> sa.ColumnElement:
        """SQL for an operand; a literal is coerced to ``kind`` and bound with the column's type."""
        if not v.is_literal or v.expr is not None:
            return v.expr
        value = _coerce(v.literal, kind, column)
        type_ = column.type if column is not None else _SQL_TYPES.get(kind, sa.Text())
        return sa.bindparam(None, value, type_=type_)

    def pair(self, a: _Value, b: _Value, op: str) -> tuple[sa.ColumnElement, sa.ColumnElement]:
        """Bind two compared operands, each literal typed after the other side's column."""
        if a.is_literal and b.is_literal and a.expr is None and b.expr is None:
            if a.kind != b.kind and {a.kind, b.kind} - {"date", "datetime"}:
                raise FilterError(f"cannot compare {_label(a)} with {_label(b)}")
            return self.bind(a, a.kind), self.bind(b, b.kind)
        ref, other = (a, b) if not (a.is_literal and a.expr is None) else (b, a)
        column = ref.expr if isinstance(ref.expr, sa.Column) else None
        if other.is_literal and other.expr is None:
            other_sql = self.bind(other, ref.kind, column)
        else:
            if not _compatible(ref.kind, other.kind):
                raise FilterError(f"cannot compare {_label(ref)} ({_KIND_WORDS.get(ref.kind, ref.kind)}) "
                                  f"with {_label(other)} ({_KIND_WORDS.get(other.kind, other.kind)})")
            other_sql = other.expr
        if ref.kind in ("geometry", "json"):
            raise FilterError(f"{_label(ref)} cannot be compared with {op}; use a spatial function")
        return (ref.expr, other_sql) if ref is a else (other_sql, ref.expr)

    # --- predicates --------------------------------------------------------------------------
    def condition(self, node: Any) -> sa.ColumnElement:
        if isinstance(node, bool):
            return sa.true() if node else sa.false()
        if isinstance(node, ast.Comparison):
            a, b = self.value(node.lhs), self.value(node.rhs)
            lhs, rhs = self.pair(a, b, node.op.value)
            return {
                "=": lambda: lhs == rhs, "<>": lambda: lhs != rhs, "<": lambda: lhs < rhs,
                "<=": lambda: lhs <= rhs, ">": lambda: lhs > rhs, ">=": lambda: lhs >= rhs,
            }[node.op.value]()
        if isinstance(node, ast.SpatialComparisonPredicate):
            return self.spatial(node)
        if isinstance(node, ast.TemporalPredicate):
            return self.temporal(node)
        if isinstance(node, ast.Attribute):
            v = self.attribute(node.name)
            if v.kind == "boolean":
                return v.expr.is_(True)
        handler = self.handlers.get(type(node))
        if handler is None:
            raise FilterError(f"{_show(node)} is not supported in filters")
        return handler(node)

    def is_null(self, node: Any) -> sa.ColumnElement:
        v = self.value(node.lhs)
        if v.is_literal:
            raise FilterError("IS NULL needs a property")
        return v.expr.is_not(None) if node.not_ else v.expr.is_(None)

    def between(self, node: Any) -> sa.ColumnElement:
        v = self.value(node.lhs)
        if v.is_literal:
            raise FilterError("BETWEEN needs a property on its left")
        if v.kind not in ("number", "date", "datetime", "string"):
            raise FilterError(f"BETWEEN needs a number, date or text property; {_label(v)} is "
                              f"{_KIND_WORDS.get(v.kind, v.kind)}")
        _, low = self.pair(v, self.value(node.low), "BETWEEN")
        _, high = self.pair(v, self.value(node.high), "BETWEEN")
        expr = v.expr.between(low, high)
        return sa.not_(expr) if node.not_ else expr

    def like(self, node: Any) -> sa.ColumnElement:
        lhs = self.text_operand(self.value(node.lhs), "LIKE")
        pattern = self.value(node.pattern)
        if pattern.is_literal and pattern.expr is None and not isinstance(pattern.literal, str):
            raise FilterError(f"the LIKE pattern must be text, got {pattern.literal!r}")
        rhs = self.text_operand(pattern, "LIKE")
        # CQL2 LIKE uses % and _ with backslash escapes, as PostgreSQL's LIKE does by default
        expr = lhs.ilike(rhs) if node.nocase else lhs.like(rhs)
        return sa.not_(expr) if node.not_ else expr

    def in_(self, node: Any) -> sa.ColumnElement:
        v = self.value(node.lhs)
        if v.is_literal:
            raise FilterError("IN needs a property on its left")
        if not node.sub_nodes:
            raise FilterError("IN needs at least one value")
        items = [self.pair(v, self.value(item), "IN")[1] for item in node.sub_nodes]
        expr = v.expr.in_(items)
        return sa.not_(expr) if node.not_ else expr

    def geometry_pair(self, node: Any, what: str) -> tuple[sa.ColumnElement, sa.ColumnElement]:
        a, b = self.value(node.lhs), self.value(node.rhs)
        for v in (a, b):
            if v.kind != "geometry":
                raise FilterError(f"{what} needs geometries; {_label(v)} is {_KIND_WORDS.get(v.kind, v.kind)}")
        return a.expr, b.expr

    def spatial(self, node: Any) -> sa.ColumnElement:
        a, b = self.geometry_pair(node, f"S_{node.op.name}")
        functions = {
            ast.GeometryIntersects: sa.func.ST_Intersects, ast.GeometryDisjoint: sa.func.ST_Disjoint,
            ast.GeometryContains: sa.func.ST_Contains, ast.GeometryWithin: sa.func.ST_Within,
            ast.GeometryTouches: sa.func.ST_Touches, ast.GeometryCrosses: sa.func.ST_Crosses,
            ast.GeometryOverlaps: sa.func.ST_Overlaps, ast.GeometryEquals: sa.func.ST_Equals,
        }
        return functions[type(node)](a, b)

    def bbox(self, node: Any) -> sa.ColumnElement:
        v = self.value(node.lhs)
        if v.kind != "geometry":
            raise FilterError(f"BBOX needs a geometry; {_label(v)} is {_KIND_WORDS.get(v.kind, v.kind)}")
        crs = crs_ref(node.crs, self.srid, "filter") if node.crs else self.crs
        env = envelope_literal(node.minx, node.miny, node.maxx, node.maxy, crs, self.srid, "filter")
        return sa.func.ST_Intersects(v.expr, env)

    def dwithin(self, node: Any) -> sa.ColumnElement:
        a, b = self.geometry_pair(node, "S_DWITHIN")
        if not _is_number(node.distance) or node.distance < 0 or not math.isfinite(node.distance):
            raise FilterError(f"S_DWITHIN needs a distance in metres >= 0, got {node.distance!r}")
        expr = sa.func.ST_DWithin(a, b, sa.bindparam(None, float(node.distance), type_=sa.Float))
        return sa.not_(expr) if isinstance(node, ast.DistanceBeyond) else expr

    # --- temporal ------------------------------------------------------------------------------
    def interval_bound(self, bound: Any, is_end: bool) -> tuple[sa.ColumnElement, bool]:
        """SQL of an interval bound and whether it is an excluded end ("up to, not including")."""
        if isinstance(bound, ast.Attribute):
            v = self.attribute(bound.name)
            if v.kind not in ("date", "datetime"):
                raise FilterError(f"INTERVAL bounds must be dates or timestamps; {_label(v)} is "
                                  f"{_KIND_WORDS.get(v.kind, v.kind)}")
            if not is_end:
                return v.expr, False
            # an open (NULL) end means "still valid"; a version ends where its successor begins
            return sa.func.coalesce(v.expr, _timestamp(_INFINITY)), v.name == "valid_to"
        if isinstance(bound, timedelta):
            raise FilterError("durations in intervals are not supported; give two instants")
        instant = _instant(bound) if isinstance(bound, str) else bound
        if instant is None:
            return _timestamp(_INFINITY if is_end else "-" + _INFINITY), False
        if not isinstance(instant, date):
            raise FilterError(f"{instant!r} is not a date or timestamp")
        if is_end and type(instant) is date:  # a whole day: up to the next midnight (UTC), excluded
            return _bound_sql(instant + timedelta(days=1)), True
        return _bound_sql(instant), False

    def period(self, node: Any) -> _Period:
        if isinstance(node, (PropertyInterval, values.Interval)):
            start, _ = self.interval_bound(node.start, False)
            end, end_open = self.interval_bound(node.end, True)
            return _Period(start, end, end_open)
        v = self.value(node)
        if v.kind == "datetime":
            sql = self.bind(v, "datetime")
            return _Period(sql, sql, False)
        if v.kind == "date":
            if v.is_literal and v.expr is None:
                return _Period(_bound_sql(v.literal), _bound_sql(v.literal + timedelta(days=1)), True)
            return _Period(v.expr, v.expr, False)
        if v.kind == "string" and v.is_literal and v.expr is None:
            instant = _instant(v.literal)
            if instant is not None:
                return self.period(instant)
        raise FilterError(f"temporal functions need dates, timestamps or intervals; {_label(v)} is "
                          f"{_KIND_WORDS.get(v.kind, v.kind)}")

    def temporal(self, node: Any) -> sa.ColumnElement:
        a, b = self.period(node.lhs), self.period(node.rhs)

        def before(x: _Period, y: _Period) -> sa.ColumnElement:  # x ends before y begins
            return x.end <= y.start if x.end_open else x.end < y.start

        relations: dict[type, Callable[[], sa.ColumnElement]] = {
            TimeIntersects: lambda: sa.and_(sa.not_(before(a, b)), sa.not_(before(b, a))),
            ast.TimeDisjoint: lambda: sa.or_(before(a, b), before(b, a)),
            ast.TimeBefore: lambda: before(a, b),
            ast.TimeAfter: lambda: before(b, a),
            ast.TimeEquals: lambda: sa.and_(a.start == b.start, a.end == b.end),
            ast.TimeDuring: lambda: sa.and_(a.start > b.start, a.end < b.end),
            ast.TimeContains: lambda: sa.and_(a.start < b.start, a.end > b.end),
            ast.TimeMeets: lambda: a.end == b.start,
            ast.TimeMetBy: lambda: a.start == b.end,
            ast.TimeOverlaps: lambda: sa.and_(a.start < b.start, a.end > b.start, a.end < b.end),
            ast.TimeOverlappedBy: lambda: sa.and_(b.start < a.start, b.end > a.start, b.end < a.end),
            ast.TimeBegins: lambda: sa.and_(a.start == b.start, a.end < b.end),
            ast.TimeBegunBy: lambda: sa.and_(a.start == b.start, a.end > b.end),
            ast.TimeEnds: lambda: sa.and_(a.start > b.start, a.end == b.end),
            ast.TimeEndedBy: lambda: sa.and_(a.start < b.start, a.end == b.end),
        }
        relation = relations.get(type(node))
        if relation is None:
            raise FilterError(f"temporal operator {node.op} is not supported")
        return relation()


_SQL_TYPES = {"string": sa.Text(), "number": sa.Float(), "boolean": sa.Boolean(),
              "date": sa.Date(), "datetime": sa.DateTime(timezone=True), "uuid": UUID(as_uuid=False)}


def _timestamp(value: str | datetime) -> sa.ColumnElement:
    if isinstance(value, str):  # 'infinity' / '-infinity': open interval ends
        return sa.cast(sa.bindparam(None, value, type_=sa.Text), sa.DateTime(timezone=True))
    return sa.bindparam(None, value, type_=sa.DateTime(timezone=True))


def _bound_sql(value: date | datetime) -> sa.ColumnElement:
    if type(value) is date:
        value = datetime.combine(value, time(0), tzinfo=timezone.utc)
    return _timestamp(_aware(value))


def _aware(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _compatible(k1: str, k2: str) -> bool:
    return k1 == k2 or {k1, k2} <= {"date", "datetime"} or {k1, k2} <= {"string", "uuid"}


def _coerce(value: Any, kind: str, column: Any = None) -> Any:
    """A literal as the Python value for a column of ``kind``; FilterError when it cannot be."""
    name = f"property {column.name!r}" if column is not None else "the value"
    wrong = FilterError(f"{name} is {_KIND_WORDS.get(kind, kind)}; {value!r} is not")
    lk = _literal_kind(value)
    if kind == "string":
        if lk != "string":
            raise FilterError(f"{name} is text; compare it with a quoted string, not {value!r}")
        return value
    if kind == "number":
        if lk != "number":
            raise wrong
        return value
    if kind == "boolean":
        if lk != "boolean":
            raise wrong
        return value
    if kind == "uuid":
        try:
            if lk == "string":
                return str(uuid.UUID(value))
        except ValueError:
            pass
        raise FilterError(f"{name} is a UUID; {value!r} is not one")
    if kind in ("date", "datetime"):
        if lk == "string":
            value = _instant(value)
            if value is None:
                raise wrong
        if isinstance(value, datetime):
            if kind == "date":
                raise FilterError(f"{name} is a date; compare it with DATE('YYYY-MM-DD'), not a timestamp")
            return _aware(value)
        if isinstance(value, date):
            return datetime.combine(value, time(0), tzinfo=timezone.utc) if kind == "datetime" else value
        raise wrong
    raise wrong


def _label(v: _Value) -> str:
    if v.name:
        return repr(v.name)
    if v.is_literal and v.expr is None:
        return repr(v.literal)
    return "the expression"


def _show(node: Any) -> str:
    name = type(node).__name__
    return {"Exists": "EXISTS", "Relate": "S_RELATE", "ArrayEquals": "A_EQUALS",
            "ArrayContains": "A_CONTAINS", "ArrayContainedBy": "A_CONTAINEDBY",
            "ArrayOverlaps": "A_OVERLAPS"}.get(name, name)


def compile_filter(text: str | dict, lang: str, layer: Layer, table: sa.Table | sa.TableClause,
                   storage_srid: int, filter_crs: str | None = None) -> sa.ColumnElement:
    """A CQL2 filter as a boolean SQL expression on ``table`` (bound parameters only).

    ``lang`` is ``cql2-text`` or ``cql2-json`` (a dict is taken as already-decoded JSON);
    ``filter_crs`` is the CRS of geometry literals (URI or ``EPSG:n``; default CRS84).
    Raises :class:`FilterError` (``parameter`` = "filter", "filter-lang" or "filter-crs").
    """
    crs = crs_ref(filter_crs, storage_srid, "filter-crs")
    size = len(text) if isinstance(text, str) else len(json.dumps(text))
    if size > MAX_FILTER_CHARS:
        raise FilterError(f"the filter is {size} characters long; at most {MAX_FILTER_CHARS} are accepted")
    try:
        tree = parse_filter(text, lang)
        return _Compiler(layer, table, storage_srid, crs).condition(tree)
    except RecursionError:
        raise FilterError("the filter is nested too deeply") from None
