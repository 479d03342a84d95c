"""Proximity: the current features of a layer nearest to a point, in 2D or true 3D.

Both modes stay on an index:

- 2D (no z): ``ST_DWithin`` bounds the search on the 2D GiST index and ``ORDER BY geom <-> point
  LIMIT k`` ranks by the KNN operator (``<->`` is the exact 2D distance); the planner walks the
  index in distance order or, for a small radius, takes a bitmap index scan and a top-k sort.
- 3D (z given): the same 2D GiST, walked in 2D distance order, gives candidates; their true 3D distance
  ranks them. A feature's 3D distance is never less than its 2D distance, so once the k-th nearest
  candidate in 3D is no farther than the last candidate is in 2D, no row the walk has not reached can be
  nearer: the answer is exact (:func:`_search_3d`). The walk takes ``m`` = a few times k candidates
  (those within the radius in 3D), and takes 4× more when that proof fails — once in the usual case, a
  few times where features are stacked in plan (parts at many heights, pipelines under one street).
  The N-D GiST that ranked by ``<<->>`` before is gone (migration
  0013_nearby_2d): PostGIS cannot build it sorted, and it cost ~7 s of server CPU per 1 M rows loaded,
  a third of a big layer's load (docs/benchmarks.md, issue 15). 3D matters underground: a gas main 5 m
  below an excavation point is 0 m away in plan but 5 m away in 3D.

Distances are in the storage CRS's metres; the point is transformed there first
(:func:`to_storage`), so a query in GCJ-02 or BD-09 is answered like one in WGS84.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.dialects.postgresql import JSON

from cim.crs import CrsSpec, resolve_crs, transform_coords
from cim.distribution import DISTRIBUTION_COLUMN
from cim.districts_index import Districts, districts_touching
from cim.errors import ParameterError, UserError
from cim.registry import Layer, layer_table

DEFAULT_RADIUS_M = 100.0
MAX_RADIUS_M = 5_000.0
DEFAULT_K = 10
MAX_K = 1_000
#: the heights a 3D search may start from, in metres (the tallest tower of Shanghai is 632 m, its deepest tunnels a
#: few tens of metres down). The 3D search walks the 2D index until its answer is proven (_search_3d): from a point
#: h metres above or below a layer's features that is every feature within ~h in plan, so a far height would read
#: a district (a point 6 km up: 574,000 parts, 1 s) for an answer that is empty anyway
MAX_HEIGHT_M = 1_000.0
#: the 3D search's first walk takes this many candidates per feature asked for, and each further walk this
#: many times more (see :func:`_search_3d`)
CANDIDATES_PER_K = 4
WIDEN = 4


@dataclass(frozen=True)
class NearbyFeature:
    feature_id: str
    properties: dict[str, Any]
    geometry: dict[str, Any] | None  # GeoJSON geometry in CRS84 (lon, lat, z)
    distance_m: float

    def to_geojson(self) -> dict[str, Any]:
        return {"type": "Feature", "id": self.feature_id, "geometry": self.geometry,
                "properties": {**self.properties, "distance_m": self.distance_m}}


def to_storage(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray,
               crs: CrsSpec | str | int, srid: int) -> tuple[np.ndarray, np.ndarray]:
    """Points from ``crs`` (incl. gcj02/bd09) to the storage CRS as float64 arrays, vectorised.

    Points that cannot be transformed come back as inf (callers decide what that means).
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise UserError(f"x and y must be flat sequences of equal length ({x.shape} vs {y.shape})")
    src = resolve_crs(crs)
    # the resolved SRID when the spelling has one: pyproj's to_epsg() searches its database for a CRS without an
    # EPSG identifier (CRS84: ~40 ms a call, on every /nearby or grid lookup asked in CRS84)
    code = src.srid if src.srid is not None else src.base.to_epsg()
    if src.offset is None and code == srid:
        return x, y
    with np.errstate(all="ignore"):
        sx, sy, _ = transform_coords(x, y, None, src, f"EPSG:{srid}")
    return np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)


def nearby_select(layer: Layer, srid: int, x: float, y: float, z: float | None, *,
                  radius_m: float = DEFAULT_RADIUS_M, k: int = DEFAULT_K,
                  where: sa.ColumnElement | None = None, districts: Districts | None = None,
                  candidates: int | None = None) -> sa.Select:
    """The proximity query: feature id, GeoJSON geometry (CRS84), ``distance_m``, properties.

    ``where`` is an extra condition on :func:`layer_table` — e.g. from ``cim.cql.compile_filter``,
    which binds every value; ``districts`` confines the search to those districts' rows. With ``z``, the
    statement of one walk of ``candidates`` rows (default: the first walk's); its ``_candidates`` and
    ``_reach`` columns say whether the answer is proven (:func:`_search_3d`), which :func:`nearby` checks.
    """
    query, values = _search(layer, srid, x, y, z, radius_m, k, where, districts,
                            candidates or CANDIDATES_PER_K * k)
    return query.params(values)


def _search(layer: Layer, srid: int, x: float, y: float, z: float | None, radius_m: float, k: int,
            where: sa.ColumnElement | None, districts: Districts | None,
            candidates: int) -> tuple[sa.Select, dict[str, Any]]:
    """The statement of the search's shape (built once for a search without a filter) and its values."""
    shape = _district_shape(layer, srid, districts)
    query = (_cached_nearby_query(layer, srid, z is not None, shape, None) if where is None
             else _nearby_query(layer, srid, z is not None, shape, where))
    return query, _nearby_values(x, y, z, radius_m, k, districts if shape is not None else None, candidates)


def _district_shape(layer: Layer, srid: int, districts: Districts | None) -> bool | None:
    """How the statement names districts: None (it does not), False (codes), True (codes or no code)."""
    if districts is None or DISTRIBUTION_COLUMN not in layer_table(layer, srid).c:
        return None
    return districts.with_null


def _nearby_values(x: float, y: float, z: float | None, radius_m: float, k: int,
                   districts: Districts | None, candidates: int) -> dict[str, Any]:
    values: dict[str, Any] = {"nearby_x": float(x), "nearby_y": float(y), "nearby_radius": float(radius_m),
                              "nearby_k": int(k)}
    if z is not None:
        values["nearby_z"] = float(z)
        values["nearby_m"] = int(candidates)
    if districts is not None:
        values["nearby_districts"] = list(districts.codes)
    return values


def _nearby_query(layer: Layer, srid: int, three_d: bool, districts: bool | None,
                  where: sa.ColumnElement | None) -> sa.Select:
    """The statement of one shape, its values bound by name (:func:`_nearby_values`)."""
    table = layer_table(layer, srid)
    geom = table.c.geom
    x, y = sa.bindparam("nearby_x", type_=sa.Float), sa.bindparam("nearby_y", type_=sa.Float)
    radius = sa.bindparam("nearby_radius", type_=sa.Float)
    point = sa.func.ST_SetSRID(sa.func.ST_MakePoint(x, y), srid)
    # ORDER BY the bare `<->` so PostgreSQL can rank by the 2D GiST index (KNN). The box test is spelled out:
    # the one ST_DWithin / ST_3DDWithin add through their support functions may not drive an index scan under
    # the API's row-level security (not LEAKPROOF; && is marked so by migration 0006_jurisdiction), and on a
    # partitioned layer the planner otherwise read every partition sequentially: seconds on 15 M parts
    box = sa.func.ST_Expand(point, radius)
    if not three_d:
        query = _rows(layer, table, sa.func.ST_Distance(geom, point), sa.and_(
            geom.op("&&")(box), sa.func.ST_DWithin(geom, point, radius)), where, districts)
        return query.order_by(geom.op("<->")(point)).limit(sa.bindparam("nearby_k", type_=sa.Integer))
    point_3d = sa.func.ST_SetSRID(sa.func.ST_MakePoint(x, y, sa.bindparam("nearby_z", type_=sa.Float)), srid)
    # the walk: the first m rows within the radius in 3D, in 2D distance order (the 2D GiST's), each with
    # its 2D distance (what bounds the rows not reached) — then ranked by the 3D distance, the nearest k kept,
    # and with them how many candidates there were and the farthest one's 2D distance (_search_3d's proof).
    # The window functions run over the walk's rows (on Citus: on the coordinator, over the shards' merged
    # walks), not over the table. The radius is `ST_3DDistance <= r`, not ST_3DDWithin: the planner multiplies
    # ST_3DDWithin's estimate (its own box's) with the && box's, expects a row or two, and reads and sorts every
    # row of the box (a bitmap scan) rather than walk the index and stop after m
    distance = sa.func.ST_3DDistance(geom, point_3d)
    walk = _rows(layer, table, distance, sa.and_(geom.op("&&")(box), distance <= radius), where, districts,
                 geom.op("<->", return_type=sa.Float)(point).label("_plan_m"), raw=True)
    walk = walk.order_by(geom.op("<->")(point)).limit(sa.bindparam("nearby_m", type_=sa.Integer)).subquery("walk")
    columns = [walk.c[c.name] for c in walk.columns if c.name not in ("_geom", "_plan_m")]
    columns.insert(1, _geojson(walk.c._geom))
    return (sa.select(*columns, sa.func.count().over().label("_candidates"),
                      sa.func.max(walk.c._plan_m).over().label("_reach"))
            .order_by(walk.c._distance_m).limit(sa.bindparam("nearby_k", type_=sa.Integer)))


def _geojson(geom: sa.ColumnElement) -> sa.ColumnElement:
    return sa.cast(sa.func.ST_AsGeoJSON(sa.func.ST_Transform(geom, 4326), 9), JSON).label("_geometry")


def _rows(layer: Layer, table: sa.Table, distance: sa.ColumnElement, within: sa.ColumnElement,
          where: sa.ColumnElement | None, districts: bool | None, *extra: sa.ColumnElement,
          raw: bool = False) -> sa.Select:
    """The current rows of ``table`` ``within`` the search (and ``where``, and the districts named): feature id,
    geometry (GeoJSON, or ``raw`` as ``_geom`` for an outer query to convert), ``_distance_m``, properties."""
    columns = [sa.cast(table.c.feature_id, sa.Text).label("_feature_id"),
               table.c.geom.label("_geom") if raw else _geojson(table.c.geom), distance.label("_distance_m")]
    columns += [table.c[name] for name in layer.property_names if name in table.c]
    query = sa.select(*columns, *extra).where(table.c.valid_to.is_(None), within)
    if where is not None:
        query = query.where(where)
    if districts is not None:
        query = query.where(Districts((), districts).clause(table.c[DISTRIBUTION_COLUMN], "nearby_districts"))
    return query


# The statement of each shape built once: building it and computing SQLAlchemy's cache key of a new one cost
# ~1 ms of the server's CPU on every /nearby (one object reused keeps its key). Keyed by the Layer (frozen: a new
# version is a new key), so a reload is a new statement; a filter's statement is built each time (its values
# are bound in it).
_cached_nearby_query = functools.lru_cache(maxsize=256)(_nearby_query)


def _search_3d(walk: Callable[[int], list[sa.RowMapping]], k: int) -> list[sa.RowMapping]:
    """The k nearest in 3D from walks of the 2D index: ``walk(m)`` gives the k nearest in 3D among the first m
    rows within the radius (in 3D) in 2D distance order, each row with the walk's ``_candidates`` count and
    ``_reach``, its last row's 2D distance.

    Exact: a row the walk did not reach is at least ``_reach`` away in 2D, so at least that in 3D. If the walk
    ran out of rows (fewer than m) it reached every row within the radius; otherwise, if the k-th nearest found
    is no farther than ``_reach``, no row beyond can be nearer (at most as near: a tie, cut either way as a
    sort would). Else the walk goes on with 4× the rows: a few walks where many features stand at one place
    in plan at other heights (parts on the floors of a building, pipelines under one street).
    """
    m = CANDIDATES_PER_K * k
    while True:
        rows = walk(m)
        if not rows or rows[0]["_candidates"] < m or rows[-1]["_distance_m"] <= rows[0]["_reach"]:
            return rows
        m *= WIDEN


def nearby(conn: Connection, layer: Layer, x: float, y: float, z: float | None, srid: int, *,
           radius_m: float = DEFAULT_RADIUS_M, k: int = DEFAULT_K,
           where: sa.ColumnElement | None = None) -> list[NearbyFeature]:
    """Current features of ``layer`` within ``radius_m`` of (x, y[, z]) in the storage CRS
    ``srid``, nearest first, at most ``k``. With ``z`` the distance is true 3D, else 2D."""
    if not 0 < radius_m <= MAX_RADIUS_M:
        raise ParameterError("radius", f"radius: must be > 0 and at most {MAX_RADIUS_M:g} metres, got {radius_m:g}")
    if not 1 <= k <= MAX_K:
        raise ParameterError("k", f"k: must be between 1 and {MAX_K}, got {k}")
    if z is not None and not -MAX_HEIGHT_M <= z <= MAX_HEIGHT_M:
        raise ParameterError("z", f"z: must be between {-MAX_HEIGHT_M:g} and {MAX_HEIGHT_M:g} metres, got {z:g}")

    def search(radius: float, districts: Districts | None) -> list[NearbyFeature]:
        def walk(candidates: int) -> list[sa.RowMapping]:
            return list(conn.execute(*_search(layer, srid, x, y, z, radius, k, where, districts,
                                              candidates)).mappings())

        rows = walk(0) if z is None else _search_3d(walk, k)
        return [NearbyFeature(feature_id=r["_feature_id"], geometry=r["_geometry"],
                              distance_m=float(r["_distance_m"]),
                              properties={name: value for name, value in r.items() if not name.startswith("_")})
                for r in rows]

    # District by district, so that the search reads the partitions / shards of the point's own district and,
    # only when the answer may reach further, its neighbours'. First the district(s) a feature at distance 0
    # could belong to; the k-th distance found there (or the radius, with fewer) bounds where the true k
    # nearest can be: any feature within it belongs to a district touching the box of that half-width. The
    # districts not yet searched are searched within that distance, and the two lists merged: the plain
    # KNN answer, from fewer partitions.
    own = districts_touching(conn, layer, (x, y, x, y))
    if own is None:
        return search(radius_m, None)
    hits = search(radius_m, own)
    bound = hits[-1].distance_m if len(hits) == k else radius_m
    around = districts_touching(conn, layer, (x - bound, y - bound, x + bound, y + bound))
    if around is None:  # the districts' cache was refreshed in between and the layer is no longer pruned
        return search(radius_m, None)
    rest = around.without(own)
    if rest.codes:
        # a feature exactly at the bound ties with the k-th: the search includes the bound itself
        more = search(min(radius_m, bound * (1 + 1e-9) + 1e-9), rest)
        hits = sorted(hits + more, key=lambda h: h.distance_m)[:k]
    return hits
