"""From the storage CRS to Earth-centred coordinates and back to a small local frame.

3D Tiles place content in ECEF (EPSG:4978). ECEF numbers are millions of metres, too big for the
float32 vertex positions of glTF (a float32 near 5e6 m has a step of half a metre), so every
tileset carries a ``transform`` into an east-north-up frame at its centre and the vertices are
written relative to that frame.

Heights: the storage Z (metres) is used as the ellipsoidal height. The viewer shows a plain
ellipsoid without terrain, so Z = 0 sits on its surface; no geoid model is applied.

Axes: glTF is y-up while 3D Tiles is z-up; a 3D Tiles runtime rotates glTF content by +90° about
x (glTF y → up, glTF z → south). Positions are therefore written as (east, up, -north) and the
runtime's standard rotation brings them back to ENU; nothing is baked into the transform.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from cim.crs import transform_coords, transformer

#: radians per metre along a meridian (mean Earth radius; used only to pad regions)
_RAD_PER_M = 1.0 / 6_371_000.0


def storage_to_lonlat(x: np.ndarray, y: np.ndarray, srid: int) -> tuple[np.ndarray, np.ndarray]:
    """Storage-CRS easting/northing → WGS84 longitude/latitude in degrees."""
    lon, lat, _ = transform_coords(np.asarray(x, float), np.asarray(y, float), None, srid, 4326)
    return np.asarray(lon, float), np.asarray(lat, float)


def lonlath_to_ecef(lon: np.ndarray, lat: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Degrees and ellipsoidal metres → (N, 3) ECEF metres."""
    x, y, z = transformer("EPSG:4979", "EPSG:4978").transform(np.asarray(lon, float), np.asarray(lat, float), np.asarray(h, float))
    return np.column_stack([x, y, z])


def ecef_to_lonlath(xyz: np.ndarray) -> np.ndarray:
    """(N, 3) ECEF metres → (N, 3) longitude°, latitude°, ellipsoidal height m."""
    lon, lat, h = transformer("EPSG:4978", "EPSG:4979").transform(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    return np.column_stack([lon, lat, h])


def storage_to_ecef(xyz: np.ndarray, srid: int) -> np.ndarray:
    """(N, 3) storage coordinates (Z = ellipsoidal height) → (N, 3) ECEF."""
    lon, lat = storage_to_lonlat(xyz[:, 0], xyz[:, 1], srid)
    return lonlath_to_ecef(lon, lat, xyz[:, 2])


@dataclass(frozen=True)
class LocalFrame:
    """An east-north-up frame at ``origin`` (ECEF), the tileset root's ``transform``."""

    lon: float
    lat: float
    height: float

    @functools.cached_property
    def origin(self) -> np.ndarray:
        return lonlath_to_ecef(np.array([self.lon]), np.array([self.lat]), np.array([self.height]))[0]

    @functools.cached_property
    def rotation(self) -> np.ndarray:
        """Rows: the east, north and up unit vectors in ECEF (up = ellipsoid normal)."""
        lo, la = math.radians(self.lon), math.radians(self.lat)
        east = [-math.sin(lo), math.cos(lo), 0.0]
        north = [-math.sin(la) * math.cos(lo), -math.sin(la) * math.sin(lo), math.cos(la)]
        up = [math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)]
        return np.array([east, north, up])

    def to_enu(self, ecef: np.ndarray) -> np.ndarray:
        return (ecef - self.origin) @ self.rotation.T

    def from_enu(self, enu: np.ndarray) -> np.ndarray:
        return enu @ self.rotation + self.origin

    def to_gltf(self, ecef: np.ndarray) -> np.ndarray:
        """ECEF → glTF y-up coordinates of this frame: (east, up, -north)."""
        return enu_to_gltf(self.to_enu(ecef))

    def vectors_to_gltf(self, ecef_vectors: np.ndarray) -> np.ndarray:
        return enu_to_gltf(ecef_vectors @ self.rotation.T)

    def transform(self) -> list[float]:
        """The 4×4 ENU→ECEF matrix, column-major as 3D Tiles wants it."""
        e, n, u = self.rotation
        o = self.origin
        return [*e, 0.0, *n, 0.0, *u, 0.0, float(o[0]), float(o[1]), float(o[2]), 1.0]


def enu_to_gltf(enu: np.ndarray) -> np.ndarray:
    return np.column_stack([enu[:, 0], enu[:, 2], -enu[:, 1]])


def gltf_to_enu(p: np.ndarray) -> np.ndarray:
    return np.column_stack([p[:, 0], -p[:, 2], p[:, 1]])


def pad_radians(metres: np.ndarray | float, lat_deg: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal pad in metres as (Δlongitude, Δlatitude) radians at a latitude (generous)."""
    dlat = np.asarray(metres, float) * _RAD_PER_M * 1.01
    dlon = dlat / np.maximum(np.cos(np.radians(lat_deg)), 1e-6)
    return dlon, dlat
