"""Assigning district / street / community / grid codes to many points at once, in memory.

Why in memory: a loader enriching a million features must not run a SQL query per row. The
current polygons of each level are read once into a shapely STRtree; points are matched in bulk.
A point on a shared boundary goes to the polygon with the smallest code (deterministic), the
same rule as the grid lookup in SQL.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
import sqlalchemy as sa
from sqlalchemy.engine import Connection

LEVELS = (("district_code", "districts", "code"), ("street_code", "streets", "code"),
          ("community_code", "communities", "code"), ("grid_code", "grids", "grid_code"))


@dataclass
class _Level:
    codes: np.ndarray
    tree: shapely.STRtree | None
    geoms: np.ndarray  # the tree's polygons, prepared


class GridIndex:
    """The current administrative and grid polygons of the base, ready for bulk point-in-polygon."""

    def __init__(self, levels: dict[str, _Level]) -> None:
        self._levels = levels

    @classmethod
    def load(cls, conn: Connection) -> "GridIndex":
        levels = {}
        for column, table, code_col in LEVELS:
            rows = conn.execute(sa.text(
                f"SELECT {code_col}, ST_AsBinary(ST_Force2D(geom)) FROM {table} "
                f"WHERE valid_to IS NULL ORDER BY {code_col}")).all()
            codes = np.array([r[0] for r in rows], dtype=object)
            geoms = shapely.from_wkb([bytes(r[1]) for r in rows]) if rows else np.array([], dtype=object)
            if len(geoms):
                shapely.prepare(geoms)
            levels[column] = _Level(codes=codes, tree=shapely.STRtree(geoms) if len(geoms) else None, geoms=geoms)
        return cls(levels)

    @property
    def is_empty(self) -> bool:
        return all(level.tree is None for level in self._levels.values())

    def assign(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Codes per level for each point (None where no polygon covers it)."""
        out: dict[str, np.ndarray] = {}
        for column, index in self.polygons(points).items():
            result = np.full(len(points), None, dtype=object)
            found = index >= 0
            result[found] = self._levels[column].codes[index[found]]
            out[column] = result
        return out

    def codes(self, column: str) -> np.ndarray:
        """A level's codes, sorted: what :meth:`polygons` indexes."""
        return self._levels[column].codes

    def polygons(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Per level, for each point, the index in :meth:`codes` of the covering polygon with the smallest code;
        -1 where none covers it."""
        out: dict[str, np.ndarray] = {}
        for column, level in self._levels.items():
            if level.tree is not None and len(points):
                # the tree's boxes, then the exact test on the prepared polygon: a point is covered by a polygon
                # exactly when it intersects it (boundary included), and the prepared intersects is 3-4x
                # cheaper than the tree's own per-point covered_by, which prepares nothing (docs/benchmarks.md)
                point_idx, poly_idx = level.tree.query(points)
                hit = shapely.intersects(level.geoms[poly_idx], points[point_idx])
                out[column] = smallest_polygons(point_idx[hit], poly_idx[hit], len(points))
            else:
                out[column] = np.full(len(points), -1, dtype=np.int64)
        return out


def smallest_polygons(point_idx: np.ndarray, poly_idx: np.ndarray, points: int) -> np.ndarray:
    """For each of ``points`` points, the smallest polygon index among its (point, polygon) pairs; -1 if none."""
    out = np.full(points, -1, dtype=np.int64)
    if not len(point_idx):
        return out
    if (point_idx[1:] >= point_idx[:-1]).all():
        # pairs grouped by point already (the tree's query answers point by point): each group's smallest polygon
        # index by one reduction, rather than a sort of every pair (the sort was ~0.2 µs a point and level)
        first = np.flatnonzero(np.r_[True, point_idx[1:] != point_idx[:-1]])
        out[point_idx[first]] = np.minimum.reduceat(poly_idx, first)
        return out
    order = np.lexsort((poly_idx, point_idx))
    point_idx, poly_idx = point_idx[order], poly_idx[order]
    first = np.r_[True, point_idx[1:] != point_idx[:-1]]
    out[point_idx[first]] = poly_idx[first]
    return out


def representative_points(geoms: np.ndarray) -> np.ndarray:
    """A point inside each feature: itself for points, a 2D point on the surface / line otherwise."""
    if (shapely.get_type_id(geoms) == 0).all():  # all points: nothing to compute
        # as they are, Z and all: GEOS's predicates and the STRtree read x and y only, and a 2D copy of
        # each point was a tenth of a 1,000,000-part load (docs/benchmarks.md, parts loader vs its peer)
        return geoms
    out = shapely.point_on_surface(geoms)
    lines = np.array([g is not None and g.geom_type in ("LineString", "MultiLineString") for g in geoms])
    if lines.any():
        out[lines] = shapely.line_interpolate_point(geoms[lines], 0.5, normalized=True)
    return shapely.force_2d(out)
