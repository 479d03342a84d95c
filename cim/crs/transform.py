"""Transforms between any two resolved CRSs, the offset CRSs included; heights are never touched.

x is always easting/longitude and y northing/latitude here (``always_xy``), whatever the axis
order a spelling of the CRS reads or writes in (that is :mod:`cim.crs.resolve`'s business, at the
edges of a request).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyproj

from cim.crs.offsets import Coord, coord_arrays, coord_result, offset_to_offset, offset_to_wgs84, wgs84_to_offset
from cim.crs.resolve import CrsSpec, resolve_crs

__all__ = ["transform_arrays", "transform_coords", "transform_geojson", "transform_geometries", "transformer"]


@functools.lru_cache(maxsize=128)
def transformer(src_srs: str, dst_srs: str) -> pyproj.Transformer:
    """The transformer from one CRS to another (x = easting/longitude, y = northing/latitude), built once.

    Keyed by the CRS's defining string (cheap to hash, unlike CRS objects whose hash renders WKT).
    always_xy: EPSG:4326/4490 and the Gauss-Krüger CRSs declare lat/lon resp. northing/easting axis order;
    the platform is x=easting/longitude everywhere.

    A pyproj Transformer keeps its PROJ object per thread, and one made by ``from_crs`` is made again in every
    new thread by the same PROJ database search: ~95 ms of CPU in each thread for each pair, measured — a
    server's worker threads come and go (anyio retires an idle one after 10 s), and a case group that
    met a new thread stalled for that long. So the operation ``from_crs`` chose is kept as its PROJ pipeline,
    which a thread makes in ~0.3 ms, and gives the same numbers. When PROJ has several candidate operations
    and picks one per point (no single pipeline: a datum shift with grids), ``from_crs``'s transformer stays.
    """
    chosen = pyproj.Transformer.from_crs(src_srs, dst_srs, always_xy=True)
    if chosen.definition.startswith("proj="):
        return pyproj.Transformer.from_pipeline(chosen.definition)
    return chosen


def _srs(crs: pyproj.CRS) -> str:
    return crs.srs or crs.to_wkt()


def transform_arrays(x: np.ndarray, y: np.ndarray, src: CrsSpec, dst: CrsSpec) -> tuple[np.ndarray, np.ndarray]:
    """Transform float64 arrays of equal shape; the offset CRSs are handled around pyproj."""
    if src.offset is not None and dst.offset is not None:
        return offset_to_offset(src.offset, dst.offset, x, y)
    if src.offset is not None:
        x, y = offset_to_wgs84(src.offset, x, y)
    shape = x.shape
    tr = transformer(_srs(src.base), _srs(dst.base))
    ox, oy = tr.transform(x.ravel(), y.ravel())
    ox = np.asarray(ox, dtype=np.float64).reshape(shape)
    oy = np.asarray(oy, dtype=np.float64).reshape(shape)
    if dst.offset is not None:
        ox, oy = wgs84_to_offset(dst.offset, ox, oy)
    return ox, oy


def transform_coords(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    z: npt.ArrayLike | None,
    src: CrsSpec | str | int | pyproj.CRS,
    dst: CrsSpec | str | int | pyproj.CRS,
) -> tuple[Coord, Coord, npt.ArrayLike | None]:
    """Transform x/y (easting/longitude, northing/latitude) from src to dst; z is returned as given.

    Heights are passed through on purpose: the platform's z values are heights in metres whose
    vertical datum is handled elsewhere, and a horizontal CRS change must not alter them.
    Points that cannot be transformed come back as inf.
    """
    s, d = resolve_crs(src), resolve_crs(dst)
    xa, ya, scalar = coord_arrays(x, y)
    ox, oy = transform_arrays(xa, ya, s, d)
    return coord_result(ox, scalar), coord_result(oy, scalar), z


def transform_geometries(
    geoms: npt.ArrayLike,
    src: CrsSpec | str | int | pyproj.CRS,
    dst: CrsSpec | str | int | pyproj.CRS,
) -> np.ndarray:
    """Transform an array of shapely geometries (same shape out); Z values are preserved."""
    import shapely  # here, not with the module: transforming coordinates (most callers) needs no GEOS

    s, d = resolve_crs(src), resolve_crs(dst)
    arr = np.asarray(geoms, dtype=object)
    flat = arr.ravel()

    def fn(coords: np.ndarray) -> np.ndarray:
        out = coords.copy()
        out[:, 0], out[:, 1] = transform_arrays(coords[:, 0].copy(), coords[:, 1].copy(), s, d)
        return out

    # include_z=True on a 2D geometry would make it 3D with NaN z (shapely < 2.1), so 3D and 2D
    # geometries are transformed in two vectorised batches, each keeping its dimensionality.
    has_z = shapely.has_z(flat)
    result = flat.copy()
    if has_z.any():
        result[has_z] = shapely.transform(flat[has_z], fn, include_z=True)
    if (~has_z).any():
        result[~has_z] = shapely.transform(flat[~has_z], fn, include_z=False)
    return result.reshape(arr.shape)



def _positions(coords: Any, out: list[list[float]]) -> None:
    """Collect the positions ([x, y] or [x, y, z] lists) of GeoJSON ``coordinates``."""
    if coords and isinstance(coords[0], (int, float)):
        out.append(coords)
        return
    for c in coords:
        _positions(c, out)


def transform_geojson(geometries: Sequence[dict[str, Any] | None],
                      src: CrsSpec | str | int | pyproj.CRS, dst: CrsSpec | str | int | pyproj.CRS,
                      digits: int | None = None) -> None:
    """Transform GeoJSON geometry objects in place, all in one vectorised call; z is kept.

    ``digits`` rounds the new x/y (as ``ST_AsGeoJSON`` would have). Used where the database
    cannot do the transform itself: the GCJ-02/BD-09 offsets, which PostGIS does not know.
    """
    s, d = resolve_crs(src), resolve_crs(dst)
    positions: list[list[float]] = []
    stack = [g for g in geometries if g]
    while stack:
        geom = stack.pop()
        if geom.get("type") == "GeometryCollection":
            stack.extend(g for g in geom.get("geometries") or () if g)
        elif geom.get("coordinates") is not None:
            _positions(geom["coordinates"], positions)
    if not positions:
        return
    x = np.fromiter((p[0] for p in positions), dtype=np.float64, count=len(positions))
    y = np.fromiter((p[1] for p in positions), dtype=np.float64, count=len(positions))
    ox, oy = transform_arrays(x, y, s, d)
    if digits is not None:
        ox, oy = np.round(ox, digits), np.round(oy, digits)
    for p, a, b in zip(positions, ox.tolist(), oy.tolist()):
        p[0], p[1] = a, b
