"""Which features: one :class:`Selection` (bbox, property equality, CQL2 filter, time) and its
SQL, shared by the OGC API – Features items and stats, the vector tiles, the 3D Tiles and the
tiles CLI, so that "which features" means the same everywhere.

Time: without ``when`` a selection sees the current versions (``valid_to IS NULL``). An instant
``T`` gives the versions valid at ``T`` (``valid_from <= T < valid_to``), i.e. the layer as it
was then; an interval gives every version valid at some point of it, so one feature may appear
in several versions (same ``id``, different ``valid_from``).

``bbox`` is read in ``bbox-crs`` and filter geometries in ``filter-crs`` (default CRS84), in the
axis order of that spelling (:mod:`cim.crs.resolve`).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.cql import compile_filter, envelope_literal
from cim.crs import resolve_offered
from cim.distribution import DISTRIBUTION_COLUMN
from cim.districts_index import Districts, districts_touching, storage_box
from cim.errors import ParameterError
from cim.registry import Layer
from cim.times import day_start, next_day, parse_instant

__all__ = [
    "Selection",
    "TimeSelection",
    "bbox_centre",
    "parse_bbox",
    "parse_datetime",
    "property_filters",
    "selection_clause",
    "validity_clause",
]


# ---------------------------------------------------------------------------------------------
# bbox and datetime, as requests write them
# ---------------------------------------------------------------------------------------------

def _numbers(text: str, parameter: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ParameterError(parameter, f"{parameter} must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ParameterError(parameter, f"{parameter} must contain finite numbers, got {text!r}")
    return values


def parse_bbox(text: str | None) -> tuple[float, ...] | None:
    """``minx,miny,maxx,maxy`` or ``minx,miny,minz,maxx,maxy,maxz`` (axis order of bbox-crs);
    finite numbers, lower corner first. None or blank means no bbox."""
    if text is None or not text.strip():
        return None
    values = _numbers(text, "bbox")
    if len(values) not in (4, 6):
        raise ParameterError("bbox", f"bbox needs 4 or 6 numbers, got {len(values)}: {text!r}")
    half = len(values) // 2
    for axis in range(half):
        if values[axis] > values[axis + half]:
            raise ParameterError("bbox", f"bbox lower corner exceeds upper corner on axis {axis + 1} "
                                         f"({values[axis]:g} > {values[axis + half]:g})")
    return tuple(values)


@dataclass(frozen=True)
class TimeSelection:
    """A ``datetime`` selection: an instant (start == end) or an interval; None ends are open.

    ``end_exclusive`` is set when the end is a whole day (``2024-05-01`` = up to next midnight).
    """

    start: datetime | None
    end: datetime | None
    end_exclusive: bool = False

    @property
    def is_instant(self) -> bool:
        return self.start is not None and self.start == self.end and not self.end_exclusive


def _instant(text: str) -> tuple[datetime, bool]:
    """(start, is a whole day) of a timestamp or a date (:func:`cim.times.parse_instant`)."""
    value = parse_instant(text, "datetime")
    if isinstance(value, datetime):
        return value, False
    return day_start(value), True


def _day_end(start: datetime) -> datetime:
    return day_start(next_day(start.date(), "datetime"))


def parse_datetime(text: str | None) -> TimeSelection | None:
    """OGC ``datetime``: an instant, a date, or an interval ``a/b`` with ``..`` or empty for open."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        raise ParameterError("datetime", "datetime is empty")
    if "/" not in text:
        value, is_date = _instant(text)
        return TimeSelection(value, _day_end(value), True) if is_date else TimeSelection(value, value)
    parts = text.split("/")
    if len(parts) != 2:
        raise ParameterError("datetime", f"an interval has exactly one '/': {text!r}")
    start_text, end_text = (p.strip() for p in parts)
    start = None if start_text in ("", "..") else _instant(start_text)[0]
    end, exclusive = None, False
    if end_text not in ("", ".."):
        end, is_date = _instant(end_text)
        if is_date:
            end, exclusive = _day_end(end), True
    if start is not None and end is not None and (start > end or (exclusive and start == end)):
        raise ParameterError("datetime", f"the interval {text!r} ends before it starts")
    return TimeSelection(start, end, exclusive)


# ---------------------------------------------------------------------------------------------
# The selection
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """Which features: everything here is ANDed; ``when`` None means the current versions.

    ``equals`` maps queryables to values already of the column's type (the API parses the query
    string). The first three fields come first so that ``Selection(bbox, filter, lang)`` reads
    as the tile routes write it.
    """

    bbox: tuple[float, ...] | None = None
    filter: str | dict | None = None
    filter_lang: str = "cql2-text"
    bbox_crs: str | None = None
    filter_crs: str | None = None
    equals: Mapping[str, Any] = field(default_factory=dict)
    when: TimeSelection | None = None

    @property
    def is_all(self) -> bool:
        """The current versions of every feature (what tile caches may keep on disk)."""
        return self.bbox is None and not self.filter and not self.equals and self.when is None

    @property
    def key(self) -> str:
        """A short stable name of the selection for tile caches and URLs."""
        if self.is_all:
            return "all"
        parts: list[Any] = [self.bbox, self.filter, self.filter_lang]
        extra = {"bbox_crs": self.bbox_crs, "filter_crs": self.filter_crs, "equals": dict(self.equals),
                 "when": self.when}
        if any(extra.values()):  # a bbox/filter-only selection keeps the key it always had
            parts.append(extra)
        text = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=_json_default)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def districts(self, conn: Connection, layer: Layer, srid: int) -> Districts | None:
        """The districts whose features of ``layer`` can be in the bbox (:mod:`cim.districts_index`); None
        without a bbox, for history (older versions carry the codes of their day) or a layer not pruned."""
        if self.bbox is None or self.when is not None:
            return None
        crs = resolve_offered(self.bbox_crs, srid, "bbox-crs")
        half = len(self.bbox) // 2
        box = storage_box(self.bbox[0], self.bbox[1], self.bbox[half], self.bbox[half + 1], crs, srid,
                          lat_first=crs.lat_first)
        return districts_touching(conn, layer, box)

    def __hash__(self) -> int:  # equals (and a cql2-json filter) are dicts; tile plans cache by selection
        return hash(self.key)

    def clauses(self, layer: Layer, table: sa.Table | sa.TableClause, geom: sa.ColumnElement,
                srid: int, districts: Districts | None = None) -> list[sa.ColumnElement]:
        """WHERE terms on ``table`` (the layer's own table); ``geom`` is the geometry to box.

        ``districts`` (from :meth:`districts`) names the districts the selection's box touches: the same
        rows, read from their districts' partitions / shards only."""
        terms = [validity_clause(table, self.when)]
        if self.bbox is not None:
            terms.append(_bbox_clause(geom, self.bbox, self.bbox_crs, srid))
        if districts is not None and DISTRIBUTION_COLUMN in table.c:
            terms.append(districts.clause(table.c[DISTRIBUTION_COLUMN]))
        terms += property_filters(layer, table, self.equals)
        if self.filter:
            terms.append(compile_filter(self.filter, self.filter_lang, layer, table, srid, self.filter_crs))
        return terms


def _json_default(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, TimeSelection):
        return [_json_default(value.start), _json_default(value.end), value.end_exclusive]
    return str(value)


def validity_clause(table: sa.Table | sa.TableClause, when: TimeSelection | None) -> sa.ColumnElement:
    """The versions to see: current ones, those valid at an instant, or during an interval."""
    if when is None:
        return table.c.valid_to.is_(None)
    clauses = []
    if when.end is not None:
        end = sa.bindparam(None, when.end, type_=sa.DateTime(timezone=True))
        clauses.append(table.c.valid_from < end if when.end_exclusive else table.c.valid_from <= end)
    if when.start is not None:
        start = sa.bindparam(None, when.start, type_=sa.DateTime(timezone=True))
        clauses.append(sa.or_(table.c.valid_to.is_(None), table.c.valid_to > start))
    return sa.and_(sa.true(), *clauses)


def _bbox_clause(geom: sa.ColumnElement, bbox: tuple[float, ...], bbox_crs: str | None,
                 storage_srid: int) -> sa.ColumnElement:
    crs = resolve_offered(bbox_crs, storage_srid, "bbox-crs")
    half = len(bbox) // 2
    minx, miny, maxx, maxy = bbox[0], bbox[1], bbox[half], bbox[half + 1]
    box = envelope_literal(minx, miny, maxx, maxy, crs, storage_srid, "bbox")
    # The box test is spelled out: ST_Intersects' own index condition comes from its support function, and
    # under row-level security only a LEAKPROOF operator may drive an index scan (migration
    # 0006_jurisdiction marks && so), so without it a scoped caller's bbox query would scan the table.
    clause = sa.and_(geom.op("&&")(box), sa.func.ST_Intersects(geom, box))
    if half == 3:  # heights are metres in every offered CRS: compare them with the z range
        clause = sa.and_(clause, sa.func.ST_ZMax(geom) >= bbox[2], sa.func.ST_ZMin(geom) <= bbox[5])
    return clause


def bbox_centre(bbox: tuple[float, ...], bbox_crs: str | None, storage_srid: int) -> sa.ColumnElement:
    """The centre of a ``bbox`` (read as :func:`_bbox_clause` reads it) as a point in storage.

    Ordering by the distance to it (``geom <-> centre``) is what the GiST index returns rows in, so a
    page of a box can stop after its rows instead of reading every match to sort them."""
    crs = resolve_offered(bbox_crs, storage_srid, "bbox-crs")
    half = len(bbox) // 2
    box = envelope_literal(bbox[0], bbox[1], bbox[half], bbox[half + 1], crs, storage_srid, "bbox")
    return sa.func.ST_Centroid(sa.func.ST_Envelope(box))


def property_filters(layer: Layer, table: sa.Table | sa.TableClause,
                     equals: Mapping[str, Any]) -> list[sa.ColumnElement]:
    """``kind = 燃气 AND grid_code = …``: equality on queryables, each value bound with its column's type."""
    clauses = []
    for name, value in equals.items():
        if layer.queryable(name) is None or name not in table.c:
            raise ParameterError(name, f"{name!r} is not a queryable of {layer.name!r}")
        column = table.c[name]
        clauses.append(column == sa.bindparam(None, value, type_=column.type))
    return clauses


def selection_clause(layer: Layer, table: sa.Table, storage_srid: int, sel: Selection,
                     districts: Districts | None = None) -> sa.ColumnElement:
    """The WHERE clause of a selection on the layer's table (bound parameters only)."""
    return sa.and_(*sel.clauses(layer, table, table.c.geom, storage_srid, districts))
