"""Query-string parameters of the feature routes that only the API reads: ``sortby``,
``properties`` and property equality (``?kind=燃气``), each checked against the layer and turned
into typed values, or a :class:`ParameterError` naming the parameter.

``bbox`` and ``datetime`` are parsed by :mod:`cim.selection`, which the tile routes and the CLI
share.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cim.cql import column_kind
from cim.cql.parse import has_nul
from cim.errors import ParameterError
from cim.features import output_properties
from cim.registry import Layer
from cim.times import parse_instant

__all__ = ["parse_equals", "parse_properties", "parse_sortby"]


def body_text(name: str, value: str | None) -> str | None:
    """A string field of a JSON or form body PostgreSQL can hold: NUL (U+0000) is a 400 naming the field
    (query strings and paths are checked for every route at once by :class:`api.limits.QueryTextMiddleware`)."""
    if value is not None and "\x00" in value:
        raise ParameterError(name, f"{name} contains a NUL character (U+0000)")
    return value


def body_json(name: str, value: Any) -> Any:
    """A JSON value of a body for a jsonb column: jsonb cannot hold NUL in any string (key or value)
    either. Walked rather than serialised: any JSON number is fine for jsonb, even past 64 bits."""
    if has_nul(value):
        raise ParameterError(name, f"{name} contains a NUL character (U+0000)")
    return value


def _sortable(layer: Layer, table: sa.Table) -> list[str]:
    return [q.name for q in layer.queryables if q.name in table.c]


def parse_sortby(text: str | None, layer: Layer, table: sa.Table) -> tuple[tuple[str, bool], ...]:
    """``+name,-height`` → ((name, descending), …); names must be queryables.

    A ``+`` sent unencoded in a URL arrives as a space, so a leading space means ascending too.
    """
    if text is None or not text.strip():
        return ()
    allowed = _sortable(layer, table)
    keys: list[tuple[str, bool]] = []
    for item in text.split(","):
        raw = item.strip()
        descending = raw.startswith("-")
        name = raw.lstrip("+-").strip()
        if ":" in name:  # the ``name:desc`` form some clients send
            name, _, direction = name.partition(":")
            descending = direction.lower().startswith("d")
        if name not in allowed:
            raise ParameterError("sortby", f"cannot sort by {name!r}; sortable properties of "
                                           f"{layer.name!r}: {', '.join(allowed)}")
        keys.append((name, descending))
    return tuple(keys)


def parse_properties(text: str | None, layer: Layer, table: sa.Table) -> tuple[str, ...] | None:
    """``properties=name,height``: the properties to return (None = all)."""
    if text is None:
        return None
    available = output_properties(layer, table)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ParameterError("properties", f"unknown propert{'y' if len(unknown) == 1 else 'ies'} "
                                           f"{', '.join(map(repr, unknown))}; {layer.name!r} has: "
                                           f"{', '.join(available)}")
    return names


_WORDS = {"number": "a number", "boolean": "true or false", "uuid": "a UUID",
          "date": "a date (YYYY-MM-DD)", "datetime": "an RFC 3339 date-time with offset"}


def _coerce(name: str, column: sa.Column, text: str) -> Any:
    """A query-string value as the Python value of ``column``'s type."""
    kind = column_kind(column)
    if kind in ("geometry", "json"):
        raise ParameterError(name, f"{name} cannot be filtered by equality; use filter=")
    if kind == "datetime":
        value = parse_instant(text, name)
        if not isinstance(value, datetime):
            raise ParameterError(name, f"{name} must be {_WORDS[kind]}, got {text!r}")
        return value
    if kind == "date":
        value = parse_instant(text, name)
        if isinstance(value, datetime):
            raise ParameterError(name, f"{name} must be {_WORDS[kind]}, got {text!r}")
        return value
    try:
        if kind == "number":
            return int(text) if isinstance(column.type, sa.Integer) else float(text)
        if kind == "boolean":
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered == "true"
        if kind == "uuid":
            return str(uuid.UUID(text))
    except ValueError:
        raise ParameterError(name, f"{name} must be {_WORDS[kind]}, got {text!r}") from None
    return text


def parse_equals(layer: Layer, table: sa.Table, params: Mapping[str, str]) -> dict[str, Any]:
    """``?kind=燃气&grid_code=…``: the queryables' values, typed after their columns."""
    values: dict[str, Any] = {}
    for name, text in params.items():
        if layer.queryable(name) is None or name not in table.c:
            raise ParameterError(name, f"{name!r} is not a queryable of {layer.name!r}")
        values[name] = _coerce(name, table.c[name], text)
    return values
