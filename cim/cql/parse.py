"""CQL2 parsing (OGC 21-065): text and JSON → pygeofilter's AST, with the grammar extended.

Parsing is pygeofilter's (its cql2-text Lark grammar and its cql2-json walker). pygeofilter 0.4's
text grammar lacks three things of CQL2 that a city base needs, so it is extended (not copied) at
import: the standard function form of the temporal predicates (``T_INTERSECTS(a, b)``; pygeofilter
only has an infix form), ``INTERVAL`` with property or ``'..'`` bounds, and
``S_DWITHIN(a, b, metres)`` (not in CQL2 1.0; distance in the storage CRS). Its JSON walker gets a
pre-pass for the constructs it gets wrong or lacks.

Timestamps and dates are read by :mod:`cim.times`, the platform's one time parser (an offset is
required; a date is a whole day in UTC), not by pygeofilter's lenient one.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, ClassVar

from lark import Lark, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError
from pygeofilter import ast, values
from pygeofilter.cql2 import TEMPORAL_PREDICATES_MAP
from pygeofilter.parsers.cql2_json.parser import walk_cql_json
from pygeofilter.parsers.cql2_text import parser as base_text_parser

from cim.errors import ParameterError
from cim.times import parse_instant

__all__ = ["FilterError", "PropertyInterval", "TimeIntersects", "is_number", "parse_filter", "read_instant"]


class FilterError(ParameterError):
    """A CQL2 filter that cannot be parsed or does not fit the layer."""

    def __init__(self, message: str, parameter: str = "filter") -> None:
        super().__init__(parameter, message)


class PropertyInterval(ast.Node):
    """``INTERVAL(valid_from, valid_to)``: an interval whose bounds are properties (an AST node,
    so that pygeofilter's JSON walker passes it through)."""

    def __init__(self, start: Any, end: Any) -> None:
        self.start, self.end = start, end

    def __repr__(self) -> str:
        return f"INTERVAL({self.start!r}, {self.end!r})"



def read_instant(text: str) -> date | datetime | None:
    """An RFC 3339 date or timestamp with offset (:mod:`cim.times`); '..' (open) gives None."""
    text = text.strip()
    if text in ("..", ""):
        return None
    try:
        return parse_instant(text, "filter")
    except ParameterError as exc:
        raise FilterError(str(exc)) from None


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

        # timestamps and dates through the platform's one time parser (pygeofilter's takes a
        # naive time as is and raises a bare ValueError for one it cannot represent)
        def DATETIME(self, token):
            return read_instant(str(token))

        def DATE(self, token):
            return read_instant(str(token))

        def interval(self, start, end):
            if isinstance(start, ast.Attribute) or isinstance(end, ast.Attribute):
                return PropertyInterval(start, end)
            return values.Interval(read_instant(start), read_instant(end))

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
        if not (isinstance(b, list) and len(b) in (4, 6) and all(is_number(v) for v in b)):
            raise FilterError(f"a bbox literal needs 4 or 6 numbers, got {b!r}")
        half = len(b) // 2
        return values.Envelope(b[0], b[half], b[1], b[half + 1])
    if "timestamp" in node:
        value = read_instant(str(node["timestamp"]))
        if not isinstance(value, datetime):
            raise FilterError(f"timestamp {node['timestamp']!r} must be an RFC 3339 date-time")
        return value
    if "date" in node:
        value = read_instant(str(node["date"]))
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
        return values.Interval(*(read_instant(str(b)) for b in bounds))
    if "op" in node:
        op = node["op"]
        args = node.get("args")
        if not isinstance(op, str) or not isinstance(args, list):
            raise FilterError(f"a CQL2-JSON operation needs 'op' (text) and 'args' (array): {node!r}")
        args = [_json_prewalk(a) for a in args]
        key = op.lower()
        if key == "s_dwithin":
            if len(args) != 3 or not is_number(args[2]):
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


def is_number(v: Any) -> bool:
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


def has_nul(node: Any) -> bool:
    """Whether a JSON value holds NUL (U+0000) in any string, key or value: PostgreSQL's text and jsonb cannot."""
    if isinstance(node, str):
        return "\x00" in node
    if isinstance(node, dict):
        return any(has_nul(k) or has_nul(v) for k, v in node.items())
    if isinstance(node, list):
        return any(has_nul(v) for v in node)
    return False


#: PostgreSQL text cannot hold NUL: a literal with one would fail in the driver, not as a 400
_NUL = "the filter contains a NUL character (U+0000), which no text value can hold"


def parse_filter(text: str | dict, lang: str = "cql2-text") -> Any:
    """Parse CQL2 text or JSON into pygeofilter's AST; FilterError says where it fails."""
    lang = (lang or "cql2-text").lower()
    if lang == "cql2-text":
        if not isinstance(text, str):
            raise FilterError("a cql2-text filter must be text", "filter")
        if not text.strip():
            raise FilterError("the filter is empty")
        if "\x00" in text:
            raise FilterError(_NUL)
        try:
            return _text_parser().parse(text)
        except VisitError as exc:
            orig = exc.orig_exc
            if isinstance(orig, FilterError):
                raise orig from None
            raise FilterError(f"invalid filter: {orig}") from None
        except LarkError as exc:
            raise FilterError(_describe_lark_error(exc, text)) from None
        except FilterError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:  # from pygeofilter's token callbacks
            raise FilterError(f"invalid filter: {exc}") from None
    if lang == "cql2-json":
        if isinstance(text, str):
            try:
                text = json.loads(text)
            except ValueError as exc:
                raise FilterError(f"the cql2-json filter is not valid JSON: {exc}") from None
        if has_nul(text):
            raise FilterError(_NUL)
        try:
            return walk_cql_json(_json_prewalk(text))
        except FilterError:
            raise
        except Exception as exc:  # pygeofilter raises bare ValueError/KeyError/TypeError
            raise FilterError(f"invalid cql2-json filter: {exc}") from None
    raise FilterError(f"unsupported filter-lang {lang!r}: use cql2-text or cql2-json", "filter-lang")

