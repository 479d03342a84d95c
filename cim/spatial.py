"""Proximity: the current features of a layer nearest to a point, in 2D or true 3D.

Both modes stay on an index:

- 2D (no z): ``ST_DWithin`` bounds the search and ``ORDER BY geom <-> point LIMIT k`` walks the
  2D GiST index in distance order (a KNN index scan; ``<->`` is the exact 2D distance).
- 3D (z given): ``ST_3DDWithin`` takes its candidates from the N-D GiST index
  (``gist_geometry_ops_nd``), and they are ranked by ``ST_3DDistance``. 3D matters underground:
  a gas main 5 m below an excavation point is 0 m away in plan but 5 m away in 3D.

Distances are in the storage CRS's metres; the point is transformed there first
(:func:`to_storage`), so a query in GCJ-02 or BD-09 is answered like one in WGS84.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.crs import CrsSpec, resolve_crs, transform_coords
from cim.errors import UserError
from cim.registry import Layer

DEFAULT_RADIUS_M = 100.0
MAX_RADIUS_M = 5_000.0
DEFAULT_K = 10
MAX_K = 1_000


@dataclass(frozen=True)
class NearbyFeature:
    feature_id: str
    properties: dict[str, Any]
    geometry: dict[str, Any] | None  # GeoJSON geometry in CRS84 (lon, lat, z)
    distance_m: float

    def to_geojson(self) -> dict[str, Any]:
        return {"type": "Feature", "id": self.feature_id, "geometry": self.geometry,
                "properties": {**self.properties, "distance_m": self.distance_m}}


@dataclass(frozen=True)
class SqlFilter:
    """An extra WHERE condition on the layer's table, with its own bound parameters.

    ``sql`` must come from a compiler that quotes identifiers and binds values (e.g.
    ``cim.cql.compile_filter``), never from user text.
    """

    sql: str
    params: Mapping[str, Any]


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
    if src.offset is None and src.base.to_epsg() == srid:
        return x, y
    with np.errstate(all="ignore"):
        sx, sy, _ = transform_coords(x, y, None, src, f"EPSG:{srid}")
    return np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def nearby_sql(layer: Layer, *, three_d: bool, where: SqlFilter | None = None) -> str:
    """The proximity statement for ``layer`` (bind :nb_x, :nb_y, :nb_z, :nb_srid, :nb_radius, :nb_k).

    Identifiers come only from the layer registry and are quoted.
    """
    table = _quote(layer.table)
    props = "".join(f", {_quote(name)}" for name in layer.property_names)
    if three_d:
        point = "ST_SetSRID(ST_MakePoint(:nb_x, :nb_y, :nb_z), CAST(:nb_srid AS integer))"
        within, distance, order = (f"ST_3DDWithin(geom, {point}, :nb_radius)",
                                   f"ST_3DDistance(geom, {point})", "distance_m")
    else:
        point = "ST_SetSRID(ST_MakePoint(:nb_x, :nb_y), CAST(:nb_srid AS integer))"
        # ORDER BY the bare `<->` so PostgreSQL can walk the GiST index in distance order
        within, distance, order = (f"ST_DWithin(geom, {point}, :nb_radius)",
                                   f"ST_Distance(geom, {point})", f"geom <-> {point}")
    extra = f" AND ({where.sql})" if where else ""
    return (f"SELECT feature_id::text, ST_AsGeoJSON(ST_Transform(geom, 4326), 9)::json, {distance} AS distance_m"
            f"{props} FROM {table} WHERE valid_to IS NULL AND {within}{extra} ORDER BY {order} LIMIT :nb_k")


def nearby(conn: Connection, layer: Layer, x: float, y: float, z: float | None, srid: int, *,
           radius_m: float = DEFAULT_RADIUS_M, k: int = DEFAULT_K,
           where: SqlFilter | None = None) -> list[NearbyFeature]:
    """Current features of ``layer`` within ``radius_m`` of (x, y[, z]) in the storage CRS
    ``srid``, nearest first, at most ``k``. With ``z`` the distance is true 3D, else 2D."""
    if not 0 < radius_m <= MAX_RADIUS_M:
        raise UserError(f"radius: must be > 0 and at most {MAX_RADIUS_M:g} metres, got {radius_m:g}")
    if not 1 <= k <= MAX_K:
        raise UserError(f"k: must be between 1 and {MAX_K}, got {k}")
    params: dict[str, Any] = {"nb_x": float(x), "nb_y": float(y), "nb_z": None if z is None else float(z),
                              "nb_srid": srid, "nb_radius": float(radius_m), "nb_k": int(k)}
    if where:
        params.update(where.params)
    rows = conn.execute(sa.text(nearby_sql(layer, three_d=z is not None, where=where)), params).all()
    names = layer.property_names
    return [NearbyFeature(feature_id=row[0], geometry=row[1], distance_m=float(row[2]),
                          properties=dict(zip(names, row[3:]))) for row in rows]
