"""Which features a tile export or request covers: current rows, optionally inside a bbox and
matching a CQL2 filter — the same rules for 3D tiles and vector tiles."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import sqlalchemy as sa

from cim.cql import CRS84, compile_filter, envelope_literal
from cim.cql import ParameterError as SelectionError
from cim.registry import Layer

__all__ = ["Selection", "SelectionError", "parse_bbox"]


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """``minlon,minlat,maxlon,maxlat`` (CRS84) → numbers, or a SelectionError naming ``bbox``."""
    if text is None or not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SelectionError("bbox", f"bbox {text!r} is not four comma-separated numbers "
                                     "(minlon,minlat,maxlon,maxlat)") from None
    if len(values) != 4:
        raise SelectionError("bbox", f"bbox needs 4 numbers (minlon,minlat,maxlon,maxlat), got {len(values)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Selection:
    """A subset of a layer's current features; ``key`` names it in caches and URLs."""

    bbox: tuple[float, float, float, float] | None = None
    filter: str | None = None
    filter_lang: str = "cql2-text"

    @property
    def is_all(self) -> bool:
        return self.bbox is None and not self.filter

    @property
    def key(self) -> str:
        if self.is_all:
            return "all"
        text = json.dumps([self.bbox, self.filter, self.filter_lang], ensure_ascii=False)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def clauses(self, layer: Layer, table: sa.Table, geom: sa.ColumnElement, srid: int) -> list[sa.ColumnElement]:
        """WHERE terms on ``table`` (the layer's own table); ``geom`` is the geometry to box."""
        terms: list[sa.ColumnElement] = [table.c.valid_to.is_(None)]
        if self.bbox is not None:
            box = envelope_literal(*self.bbox, CRS84, srid, parameter="bbox")
            terms.append(geom.op("&&")(box))
            terms.append(sa.func.ST_Intersects(geom, box))
        if self.filter:
            terms.append(compile_filter(self.filter, self.filter_lang, layer, table, srid))
        return terms
