"""CQL2 filters → SQLAlchemy Core, with bound parameters only.

pygeofilter's own SQLAlchemy backend is not used: it targets ORM models, splices geometry
literals into EWKT strings and knows nothing of a layer's queryables or of CRS axis order. This
module walks the AST of :mod:`cim.cql.parse` instead and builds a Core expression against the
layer's table, where

- attribute names must be the layer's queryables (or ``geometry``/``geom``); anything else is
  an error naming the attribute, so no identifier ever comes from the request;
- every literal is a bound parameter, typed after the column it is compared with;
- geometry literals are read in ``filter-crs`` (default CRS84), in that spelling's axis order,
  and transformed to the storage CRS in SQL, so the spatial predicates use the GiST index;
- temporal predicates see a feature's validity as the half-open interval
  ``INTERVAL(valid_from, valid_to)`` = [valid_from, valid_to), an open end being "still valid".
"""
from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from geoalchemy2 import Geometry
from pygeofilter import ast, values
from sqlalchemy.dialects.postgresql import JSONB, UUID

from cim.cql.literals import envelope_literal, geometry_literal
from cim.cql.parse import FilterError, PropertyInterval, TimeIntersects, is_number, parse_filter, read_instant
from cim.crs import CrsSpec, resolve_offered
from cim.errors import ParameterError
from cim.registry import Layer
from cim.times import day_start, next_day, to_utc

__all__ = ["GEOMETRY_NAMES", "MAX_FILTER_CHARS", "column_kind", "compile_filter"]

#: the names a filter may use for a layer's geometry
GEOMETRY_NAMES = ("geometry", "geom")
#: longer filters are refused before parsing: a filter is a query, not a data upload
MAX_FILTER_CHARS = 50_000


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


# What a column holds, as filters and query parameters treat it, and what a literal is, in the same
# words; the first matching type wins, so subclasses come first (bool before int, datetime before date).
_Kinds = tuple[tuple[type | tuple[type, ...], str], ...]
_COLUMN_KINDS: _Kinds = (
    (Geometry, "geometry"), (UUID, "uuid"), (JSONB, "json"), (sa.Boolean, "boolean"),
    ((sa.Integer, sa.Float, sa.Numeric), "number"), (sa.DateTime, "datetime"), (sa.Date, "date"))
_LITERAL_KINDS: _Kinds = (
    (type(None), "null"), (bool, "boolean"), ((int, float), "number"), (datetime, "datetime"),
    (date, "date"), (str, "string"))


def _kind_of(value: Any, kinds: _Kinds) -> str | None:
    return next((kind for types, kind in kinds if isinstance(value, types)), None)


def column_kind(column: sa.ColumnElement) -> str:
    """What a column holds, as filters and query parameters treat it."""
    return _kind_of(column.type, _COLUMN_KINDS) or "string"


_KIND_WORDS = {"string": "text", "number": "a number", "boolean": "a boolean", "date": "a date",
               "datetime": "a timestamp", "uuid": "a UUID", "geometry": "a geometry", "json": "a JSON object"}


def _literal_kind(value: Any) -> str:
    return _kind_of(value, _LITERAL_KINDS) or type(value).__name__


class _Compiler:
    def __init__(self, layer: Layer, table: sa.Table | sa.TableClause, storage_srid: int,
                 filter_crs: CrsSpec) -> None:
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
            crs = resolve_offered(f"EPSG:{srid}", self.srid, "filter")  # a short name: x-first
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
        crs = resolve_offered(node.crs, self.srid, "filter") if node.crs else self.crs
        env = envelope_literal(node.minx, node.miny, node.maxx, node.maxy, crs, self.srid, "filter")
        return sa.func.ST_Intersects(v.expr, env)

    def dwithin(self, node: Any) -> sa.ColumnElement:
        a, b = self.geometry_pair(node, "S_DWITHIN")
        if not is_number(node.distance) or node.distance < 0 or not math.isfinite(node.distance):
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
        instant = read_instant(bound) if isinstance(bound, str) else bound
        if instant is None:
            return _timestamp(_INFINITY if is_end else "-" + _INFINITY), False
        if not isinstance(instant, date):
            raise FilterError(f"{instant!r} is not a date or timestamp")
        if is_end and type(instant) is date:  # a whole day: up to the next midnight (UTC), excluded
            return _bound_sql(_next_day(instant)), True
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
                return _Period(_bound_sql(v.literal), _bound_sql(_next_day(v.literal)), True)
            return _Period(v.expr, v.expr, False)
        if v.kind == "string" and v.is_literal and v.expr is None:
            instant = read_instant(v.literal)
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
        value = day_start(value)
    return _timestamp(_aware(value))


def _next_day(day: date) -> date:
    try:
        return next_day(day, "filter")
    except ParameterError as exc:
        raise FilterError(str(exc)) from None


def _aware(value: datetime) -> datetime:
    """In UTC; the parser (:mod:`cim.times`) already refuses naive and unrepresentable times."""
    try:
        return to_utc(value, "filter")
    except ParameterError as exc:
        raise FilterError(str(exc)) from None


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
            value = read_instant(value)
            if value is None:
                raise wrong
        if isinstance(value, datetime):
            if kind == "date":
                raise FilterError(f"{name} is a date; compare it with DATE('YYYY-MM-DD'), not a timestamp")
            return _aware(value)
        if isinstance(value, date):
            return day_start(value) if kind == "datetime" else value
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
    crs = resolve_offered(filter_crs, storage_srid, "filter-crs")
    size = len(text) if isinstance(text, str) else len(json.dumps(text))
    if size > MAX_FILTER_CHARS:
        raise FilterError(f"the filter is {size} characters long; at most {MAX_FILTER_CHARS} are accepted")
    try:
        tree = parse_filter(text, lang)
        return _Compiler(layer, table, storage_srid, crs).condition(tree)
    except RecursionError:
        raise FilterError("the filter is nested too deeply") from None

