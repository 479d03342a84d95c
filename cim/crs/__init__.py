"""Coordinate reference systems: resolution, transforms, Chinese web-map offsets, sanity checks.

Every coordinate that enters or leaves the platform goes through this package, so the rules live
in one place:

- :mod:`cim.crs.resolve` — one resolver for every spelling (EPSG codes, OGC URIs/URNs/CURIEs,
  ``CRS84``, ``wgs84``, ``cgcs2000``, ``gcj02``, ``bd09``, WKT, PROJ) and one axis-order rule: OGC
  URIs/URNs/safe CURIEs follow the authority's order, everything else is x-first;
- :mod:`cim.crs.offsets` — GCJ-02 and BD-09, which no CRS database knows;
- :mod:`cim.crs.transform` — x/y transforms between any two of them; heights are never touched;
- :mod:`cim.crs.extent` — the storage CRS check and the diagnosis of points outside the city.

``from cim.crs import …`` gives every public name of the four.
"""
from __future__ import annotations

# Re-exported so callers can take everything CRS-related from here; cim.config stays the single
# source of the values.
from cim.config import DEFAULT_STORAGE_SRID, SHANGHAI_BBOX_WGS84
from cim.crs.errors import CrsError, ExtentError
from cim.crs.extent import check_extent, check_storage_crs
from cim.crs.offsets import (
    Offset, bd09_to_gcj02, bd09_to_wgs84, gcj02_to_bd09, gcj02_to_wgs84, wgs84_to_bd09, wgs84_to_gcj02,
)
from cim.crs.resolve import (
    CRS84, CRS84_URI, EXTRA_CRS, WGS84, CrsSpec, crs_uri, offered_crs, resolve_crs, resolve_offered,
    resolve_parameter,
)
from cim.crs.transform import transform_coords, transform_geojson, transform_geometries, transformer

__all__ = [
    "CRS84",
    "CRS84_URI",
    "DEFAULT_STORAGE_SRID",
    "EXTRA_CRS",
    "SHANGHAI_BBOX_WGS84",
    "WGS84",
    "CrsError",
    "CrsSpec",
    "ExtentError",
    "Offset",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "check_extent",
    "check_storage_crs",
    "crs_uri",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "offered_crs",
    "resolve_crs",
    "resolve_offered",
    "resolve_parameter",
    "transform_coords",
    "transform_geojson",
    "transform_geometries",
    "transformer",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
]
