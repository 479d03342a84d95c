"""Which districts an area touches: the one place that turns a box in the storage CRS into the district codes
whose features can lie in it, so that a spatial query can name them (``district_code = ANY(…)``).

Why: the big layers are partitioned on ``district_code`` on one node and hash-distributed on it on Citus
(:mod:`cim.distribution`). A bbox query, a ``/nearby`` or a tile that names no district reads every partition
(every shard, one task each on Citus); naming the districts of its area lets PostgreSQL prune partitions at
plan time and Citus route to the shards concerned. The codes are bound as a literal array for that reason: a
subquery on ``districts`` would only be pruned at run time on one node, and not at all by Citus.

Why the answer stays the same. The loader gives a feature the code of the district polygon covering its
representative point (:mod:`cim.gridindex`: smallest code on a shared edge; ``''`` or NULL outside every
district). A feature that meets a box therefore has its representative point inside the box grown by the
feature's own width and height; grown by the layer's widest feature (its *reach*: 0 for points), the box
meets that feature's district — or lies partly outside every district, and then :data:`NO_DISTRICT` (and NULL)
is named too. That holds while the layer's codes were assigned against the current district boundaries, so a
layer is pruned only when it was loaded *after* the districts last changed (``layers.updated_at``); a layer
loaded earlier, a base whose districts were never loaded, a table without the column, a time selection (older
versions carry the codes of their day) or ``CIM_DISTRICT_PRUNING=false`` leave the query as it was.
Rows edited by hand in SQL with codes that contradict their position are outside this promise (as they are
outside the jurisdiction policies', which read the same column).

The district polygons are kept in memory per database (a few dozen polygons, shared by every jurisdiction scope:
all of them read the whole map frame), re-read when the districts layer's version changes — checked whenever a
layer's version is seen for the first time and at most ``CIM_LAYER_CACHE_S`` after the last check otherwise;
what is learnt of each layer (loaded after the districts? its reach) is kept per database, scope and version.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from cim.config import settings
from cim.crs import CrsSpec, transform_coords
from cim.distribution import DISTRIBUTION_COLUMN, NO_DISTRICT
from cim.jurisdiction import current_scope
from cim.kept import Kept
from cim.registry import Layer
from cim.schema import ENRICHED

if TYPE_CHECKING:  # imported where the index is built or asked: not every importer of this module needs GEOS
    import shapely

__all__ = ["NO_DISTRICT", "Box", "Districts", "districts_touching", "grown", "storage_box"]

#: (minx, miny, maxx, maxy) in the storage CRS, metres
Box = tuple[float, float, float, float]
#: added around a box transformed into storage in Python: PostGIS transforms the query's own box with its PROJ,
#: which may round differently from pyproj's; districts are kilometres wide, so this costs no pruning
TRANSFORM_MARGIN_M = 10.0
#: vertices per edge of a box densified before its transform (its straight edges bend in another CRS)
_EDGE_POINTS = 33
_POINT_TYPES = ("POINT", "POINTZ", "MULTIPOINT", "MULTIPOINTZ")


@dataclass(frozen=True)
class Districts:
    """The district codes a query names; ``with_null`` when rows without any code (NULL, in a nullable column)
    may be among the answers too (:data:`NO_DISTRICT` is then one of ``codes``)."""

    codes: tuple[str, ...]
    with_null: bool = False

    def clause(self, column: sa.ColumnElement, name: str | None = None) -> sa.ColumnElement:
        """``column = ANY(codes)`` (``OR column IS NULL``): the codes bound as one array, or as the named
        parameter ``name`` to be given at execution (a statement built once for many tiles)."""
        values = (sa.bindparam(name, type_=ARRAY(sa.Text)) if name is not None
                  else sa.bindparam(None, list(self.codes), type_=ARRAY(sa.Text)))
        test = column == sa.any_(values)
        return sa.or_(test, column.is_(None)) if self.with_null else test

    def without(self, other: Districts) -> Districts:
        """These districts less ``other``'s (rows without a code go with :data:`NO_DISTRICT`)."""
        codes = tuple(c for c in self.codes if c not in other.codes)
        return Districts(codes, self.with_null and NO_DISTRICT in codes)


# ---------------------------------------------------------------------------------------------
# boxes into storage
# ---------------------------------------------------------------------------------------------

def grown(box: Box, by: float) -> Box:
    return box[0] - by, box[1] - by, box[2] + by, box[3] + by


def storage_box(minx: float, miny: float, maxx: float, maxy: float, crs: CrsSpec | str | int, srid: int,
                lat_first: bool = False, edge_points: int = _EDGE_POINTS) -> Box | None:
    """The storage-CRS bounds of a box given in ``crs`` (x first; ``lat_first``: the numbers are in
    latitude/northing-first order and are swapped), densified before the transform (``edge_points`` a side:
    a caller whose boxes are small enough for their edges' bending to stay well inside the margin may ask for
    fewer), plus :data:`TRANSFORM_MARGIN_M`. None when the box cannot be expressed in storage."""
    if lat_first:
        minx, miny, maxx, maxy = miny, minx, maxy, maxx
    t = np.linspace(0.0, 1.0, edge_points)
    xs = np.concatenate([minx + (maxx - minx) * t, np.full_like(t, maxx), maxx - (maxx - minx) * t,
                         np.full_like(t, minx)])
    ys = np.concatenate([np.full_like(t, miny), miny + (maxy - miny) * t, np.full_like(t, maxy),
                         maxy - (maxy - miny) * t])
    with np.errstate(all="ignore"):
        sx, sy, _ = transform_coords(xs, ys, None, crs, srid)
    sx, sy = np.asarray(sx, float), np.asarray(sy, float)
    if not (np.isfinite(sx).all() and np.isfinite(sy).all()):
        return None
    return grown((float(sx.min()), float(sy.min()), float(sx.max()), float(sy.max())), TRANSFORM_MARGIN_M)


# ---------------------------------------------------------------------------------------------
# the districts in memory
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Index:
    codes: np.ndarray
    tree: shapely.STRtree
    cover: shapely.Geometry  # the union of all districts (prepared)
    #: one caller at a time: GEOS builds a prepared geometry's search structures lazily on its first uses,
    #: and two threads doing so at once crash the process (segfault in libgeos: concurrent tile requests
    #: killed `cim serve` in the Shanghai benchmark, which wrk saw as socket errors). A query is a few µs.
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def touching(self, box: Box) -> tuple[str, ...]:
        with self.lock:
            return self._touching(box)

    def _touching(self, box: Box) -> tuple[str, ...]:
        import shapely

        minx, miny, maxx, maxy = box
        if minx == maxx and miny == maxy:
            shape = shapely.Point(minx, miny)
        elif minx == maxx or miny == maxy:
            shape = shapely.LineString([(minx, miny), (maxx, maxy)])
        else:
            shape = shapely.box(minx, miny, maxx, maxy)
        codes = sorted({str(self.codes[i]) for i in self.tree.query(shape, predicate="intersects")})
        if not shapely.covers(self.cover, shape):
            codes.insert(0, NO_DISTRICT)
        return tuple(codes)


@dataclass(frozen=True)
class _Frame:
    """The districts as one database and scope see them (kept, and checked again, as :class:`cim.kept.Kept`)."""

    version: int
    updated_at: datetime | None
    index: _Index | None  # None: no district loaded


@dataclass(frozen=True)
class _Facts:
    """What pruning a layer (at one version) needs to know."""

    prunable: bool  # the layer was loaded after the districts last changed, and has the column
    nullable: bool  # district_code may be NULL (one node before partitioning) — else '' marks "no district"
    reach: float


_frames: dict[tuple[str, str], Kept[_Frame]] = {}  # (db, scope) → districts, fresh for CIM_LAYER_CACHE_S
#: (db, scope, table) → ((layer version, districts version), facts)
_facts: dict[tuple[str, str, str], tuple[tuple[int, int], _Facts]] = {}
_reaches: dict[tuple[str, str, str], tuple[int, float]] = {}  # (db, scope, table) → (layer version, reach)
#: (db, districts version) → the polygons: every scope reads all districts (their policy is `true`, the map
#: frame), so scopes share one copy instead of one each
_indexes: dict[tuple[str, int], _Index | None] = {}
_guard = threading.Lock()
_locks: dict[tuple[str, str, str], threading.Lock] = {}  # one reader per layer: a cold cache reads the base once

_STAMPS = sa.text("SELECT table_name, version, updated_at FROM layers WHERE table_name IN ('districts', :t)")
_NOT_NULL = sa.text("SELECT a.attnotnull FROM pg_attribute a WHERE a.attrelid = to_regclass(:t) "
                    "AND a.attname = :c AND NOT a.attisdropped")
_POLYGONS = sa.text("SELECT code, ST_AsBinary(ST_Force2D(geom)) FROM districts "
                    "WHERE valid_to IS NULL AND code IS NOT NULL AND geom IS NOT NULL ORDER BY code")


def _read_index(conn: Connection) -> _Index | None:
    import shapely

    rows = conn.execute(_POLYGONS).all()
    if not rows:
        return None
    geoms = shapely.from_wkb([bytes(r[1]) for r in rows])
    cover = shapely.union_all(shapely.make_valid(geoms))
    shapely.prepare(cover)
    return _Index(np.array([r[0] for r in rows], dtype=object), shapely.STRtree(geoms), cover)


def _reach(conn: Connection, layer: Layer, key: tuple[str, str, str]) -> float:
    """The widest current feature's width or height (metres): 0 for points; one scan per layer version."""
    if layer.geometry_type.upper() in _POINT_TYPES:
        return 0.0
    known = _reaches.get(key)
    if known is not None and known[0] == layer.version:
        return known[1]
    # the box kept in each geometry's header: its vertices are not read
    value = conn.execute(sa.text(
        f'SELECT max(greatest(ST_XMax(geom::box2d) - ST_XMin(geom::box2d), ST_YMax(geom::box2d) - '
        f'ST_YMin(geom::box2d))) FROM "{layer.table}" WHERE valid_to IS NULL AND geom IS NOT NULL')).scalar()
    reach = float(value or 0.0) * (1 + 1e-6) + 1e-3  # box2d is float4 rounded outward; a millimetre more
    _reaches[key] = (layer.version, reach)
    return reach


def _state(conn: Connection, layer: Layer) -> tuple[_Frame, _Facts]:
    db, scope = str(conn.engine.url), current_scope().cache_key()
    key = (db, scope, layer.table)
    kept, known = _frames.get((db, scope)), _facts.get(key)
    frame = kept.fresh(settings().layer_cache_s) if kept is not None else None
    if frame is not None and known is not None and known[0] == (layer.version, frame.version):
        return frame, known[1]
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
        kept = _frames.setdefault((db, scope), Kept(settings().layer_cache_s))
    with lock:
        checked = kept.now()
        stamps = {r[0]: (r[1], r[2]) for r in conn.execute(_STAMPS, {"t": layer.table})}
        version, districts_updated = stamps.get("districts", (1, None))
        frame = kept.latest()
        if frame is None or frame.version != version:
            # version 1 is the one `cim init` writes: no load has put districts in the base yet
            with _guard:  # rare (a new districts version): one global lock is enough
                if (db, version) not in _indexes:
                    for old in [k for k in _indexes if k[0] == db]:
                        del _indexes[old]
                    _indexes[(db, version)] = _read_index(conn) if version > 1 else None
                index = _indexes[(db, version)]
            frame = _Frame(version, districts_updated, index)
        kept.put(frame, checked)
        known = _facts.get(key)
        if known is not None and known[0] == (layer.version, frame.version):
            return frame, known[1]
        layer_updated = stamps.get(layer.table, (None, None))[1]
        not_null = conn.execute(_NOT_NULL, {"t": layer.table, "c": DISTRIBUTION_COLUMN}).scalar()
        # strictly later: a layer loaded after the districts got its codes from these boundaries
        prunable = (frame.index is not None and not_null is not None and layer_updated is not None
                    and districts_updated is not None and layer_updated > districts_updated)
        facts = _Facts(prunable, not bool(not_null), _reach(conn, layer, key) if prunable else 0.0)
        _facts[key] = ((layer.version, frame.version), facts)
        return frame, facts


def districts_touching(conn: Connection, layer: Layer, box: Box | None) -> Districts | None:
    """The districts whose features of ``layer`` can meet ``box`` (storage CRS), or None when the layer's
    queries are not to be pruned (see the module's notes) — the caller then leaves its query as it is."""
    if box is None or layer.table not in ENRICHED or not settings().district_pruning:
        return None
    if not all(math.isfinite(v) for v in box):
        return None
    frame, facts = _state(conn, layer)
    if not facts.prunable or frame.index is None:
        return None
    codes = frame.index.touching(grown(box, facts.reach))
    return Districts(codes, facts.nullable and NO_DISTRICT in codes)


def forget() -> None:
    """Drop what is kept in memory (tests that rebuild a base under the same URL)."""
    with _guard:
        _frames.clear()
        _facts.clear()
        _reaches.clear()
        _indexes.clear()
