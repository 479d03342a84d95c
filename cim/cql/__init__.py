"""CQL2 filters (OGC 21-065) for the feature queries: :mod:`cim.cql.parse` reads CQL2 text and
JSON into pygeofilter's AST (its grammar extended), :mod:`cim.cql.compile` turns the AST into an
SQLAlchemy Core condition with bound parameters only, and :mod:`cim.cql.literals` reads geometry
literals in a request's CRS. CRS references themselves are :mod:`cim.crs`'s.
"""
from __future__ import annotations

from cim.cql.compile import GEOMETRY_NAMES, MAX_FILTER_CHARS, column_kind, compile_filter
from cim.cql.literals import envelope_literal, geometry_literal
from cim.cql.parse import FilterError, parse_filter
from cim.errors import ParameterError

__all__ = [
    "GEOMETRY_NAMES",
    "MAX_FILTER_CHARS",
    "FilterError",
    "ParameterError",
    "column_kind",
    "compile_filter",
    "envelope_literal",
    "geometry_literal",
    "parse_filter",
]
