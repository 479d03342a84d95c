"""Geometry literals of a request (a ``bbox``, a CQL2 geometry or ``BBOX``) as SQL geometries in
the storage CRS, read in the request's CRS and that spelling's axis order (:mod:`cim.crs.resolve`).

EPSG CRSs are transformed in SQL (``ST_Transform``) so spatial predicates keep the GiST index.
GCJ-02 and BD-09, which PostGIS does not know, are turned into WGS 84 here in Python first.
"""
from __future__ import annotations

import json
import math
from typing import Any

import shapely
import sqlalchemy as sa
from geoalchemy2 import Geometry

from cim.crs import WGS84, CrsSpec, transform_geometries
from cim.errors import ParameterError

__all__ = ["envelope_literal", "geometry_literal"]


def _check_geographic(coords: Any, parameter: str, lat_first: bool) -> None:
    for x, y in ((float(p[0]), float(p[1])) for p in coords):
        lon, lat = (y, x) if lat_first else (x, y)
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            order = "lat/lon" if lat_first else "lon/lat"
            raise ParameterError(parameter, f"coordinate ({x:g}, {y:g}) is outside the range of a "
                                            f"geographic CRS (axis order {order})")


def geometry_literal(geojson: dict, crs: CrsSpec, storage_srid: int,
                     parameter: str = "filter") -> sa.ColumnElement:
    """A GeoJSON geometry given in ``crs`` (its axis order) as an SQL geometry in storage."""
    if crs.srid is None:
        raise ParameterError(parameter, f"{crs.name} has no EPSG code; the database cannot read it")
    try:
        geom = shapely.geometry.shape(geojson)
    except Exception as exc:  # shapely raises several types for malformed input
        raise ParameterError(parameter, f"invalid geometry literal: {exc}") from None
    if geom.is_empty:
        raise ParameterError(parameter, "empty geometry literal")
    coords = shapely.get_coordinates(geom)
    if not all(math.isfinite(v) for v in coords.ravel()):
        raise ParameterError(parameter, "geometry literal has non-finite coordinates")
    if crs.is_geographic:
        _check_geographic(coords, parameter, crs.lat_first)
    if crs.offset is not None:
        # PostGIS knows no GCJ-02/BD-09: the literal becomes WGS 84 (x-first, as the offset
        # names are read) before it goes to SQL
        body: Any = shapely.geometry.mapping(transform_geometries([geom], crs, WGS84)[0])
    else:
        body = {k: v for k, v in geojson.items() if k != "crs"}
    expr = sa.func.ST_GeomFromGeoJSON(sa.bindparam(None, json.dumps(body), type_=sa.Text))
    if crs.lat_first:
        expr = sa.func.ST_FlipCoordinates(expr)
    expr = sa.func.ST_SetSRID(expr, crs.srid)
    if crs.srid != storage_srid:
        expr = sa.func.ST_Transform(expr, storage_srid)
    return sa.type_coerce(expr, Geometry(srid=storage_srid))


def envelope_literal(minx: float, miny: float, maxx: float, maxy: float, crs: CrsSpec,
                     storage_srid: int, parameter: str = "bbox") -> sa.ColumnElement:
    """A box given in ``crs`` (numbers in its axis order) as a polygon in storage.

    The edges are densified before the transform: a straight edge in degrees is curved in a
    projected CRS, and the four transformed corners alone would cut off slivers of the box.
    """
    vals = (minx, miny, maxx, maxy)
    if not all(math.isfinite(v) for v in vals):
        raise ParameterError(parameter, "the box has non-finite numbers")
    if minx > maxx or miny > maxy:
        raise ParameterError(parameter, f"the box's minimum exceeds its maximum ({minx:g},{miny:g},"
                                        f"{maxx:g},{maxy:g}); give lower corner, then upper corner")
    if minx == maxx or miny == maxy:  # a degenerate box is a line or a point, not a polygon
        shape = shapely.LineString([(minx, miny), (maxx, maxy)]) if (minx, miny) != (maxx, maxy) \
            else shapely.Point(minx, miny)
    else:
        shape = shapely.box(minx, miny, maxx, maxy)
    if crs.srid != storage_srid or crs.offset is not None:
        shape = shapely.segmentize(shape, max(maxx - minx, maxy - miny) / 32 or 1.0)
    return geometry_literal(shapely.geometry.mapping(shape), crs, storage_srid, parameter)

