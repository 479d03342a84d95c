"""GCJ-02 and BD-09, the Chinese web-map offsets: conversions to and from WGS84 and between each other.

pyproj/PROJ has no definition of these: GCJ-02 is a deliberately obfuscated, non-invertible-in-
closed-form perturbation of WGS84 mandated for Chinese web maps, and BD-09 is Baidu's extra
perturbation on top of it. Neither is in the EPSG database, so they are hand-written here from
the well-known public formula (the same as eviltransform/coordtransform).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from cim.crs.errors import CrsError

__all__ = [
    "Coord",
    "Offset",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "coord_arrays",
    "coord_result",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "offset_to_offset",
    "offset_to_wgs84",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
    "wgs84_to_offset",
]

Offset: TypeAlias = Literal["gcj02", "bd09"] | None
#: Scalars in give floats out; arrays in give float64 arrays of the broadcast shape out.
Coord: TypeAlias = float | npt.NDArray[np.float64]

_GCJ_A = 6378245.0  # Krasovsky 1940 semi-major axis, as the formula uses (not WGS84's)
_GCJ_EE = 0.00669342162296594323  # Krasovsky first eccentricity squared
_X_PI = math.pi * 3000.0 / 180.0
# The offsets are applied only inside this rough box around mainland China; everywhere else the
# providers serve plain WGS84, so all three systems coincide there.
_CHINA_BOX = (72.004, 0.8293, 137.8347, 55.8271)
# 1e-9 degrees is ~0.1 mm, far inside the 1e-7 degree (~1 cm) requirement; it costs at most one
# extra iteration because the fixed-point map contracts by ~1e-3 per step.
_INVERSE_TOL_DEG = 1e-9
_INVERSE_MAX_ITER = 30


def coord_arrays(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, bool]:
    """float64 arrays of the broadcast shape, and whether both inputs were scalars."""
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    scalar = lon_a.ndim == 0 and lat_a.ndim == 0
    lon_a, lat_a = np.broadcast_arrays(lon_a, lat_a)
    return lon_a, lat_a, scalar


def coord_result(a: np.ndarray, scalar: bool) -> Coord:
    """A float for scalar input, else the array (see :func:`coord_arrays`)."""
    return float(a) if scalar else a


def _out_of_china(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo0, la0, lo1, la1 = _CHINA_BOX
    return (lon < lo0) | (lon > lo1) | (lat < la0) | (lat > la1)


def _gcj_delta(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The GCJ-02 shift (dlon, dlat) in degrees at WGS84 (lon, lat), ignoring the China box."""
    x = lon - 105.0
    y = lat - 35.0
    sqrt_abs_x = np.sqrt(np.abs(x))
    common = (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0

    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sqrt_abs_x + common
    dlat += (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
    dlat += (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0

    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sqrt_abs_x + common
    dlon += (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
    dlon += (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0

    rad_lat = lat / 180.0 * np.pi
    magic = 1.0 - _GCJ_EE * np.sin(rad_lat) ** 2
    sqrt_magic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_GCJ_A * (1.0 - _GCJ_EE)) / (magic * sqrt_magic) * np.pi)
    dlon = (dlon * 180.0) / (_GCJ_A / sqrt_magic * np.cos(rad_lat) * np.pi)
    return dlon, dlat


def _wgs_to_gcj(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dlon, dlat = _gcj_delta(lon, lat)
    outside = _out_of_china(lon, lat)
    return np.where(outside, lon, lon + dlon), np.where(outside, lat, lat + dlat)


def _gcj_to_bd(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.sqrt(lon * lon + lat * lat) + 0.00002 * np.sin(lat * _X_PI)
    theta = np.arctan2(lat, lon) + 0.000003 * np.cos(lon * _X_PI)
    bd_lon = z * np.cos(theta) + 0.0065
    bd_lat = z * np.sin(theta) + 0.006
    outside = _out_of_china(lon, lat)
    return np.where(outside, lon, bd_lon), np.where(outside, lat, bd_lat)


def _invert(
    forward: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    lon: np.ndarray,
    lat: np.ndarray,
    guess: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Solve forward(p) == (lon, lat) by fixed-point iteration p <- p - (forward(p) - target).

    Neither offset has a closed-form inverse (the public "inverse" formulas are off by metres), but
    both are identity plus a slowly varying shift, so this iteration contracts fast.
    """
    p_lon, p_lat = guess[0].copy(), guess[1].copy()
    for _ in range(_INVERSE_MAX_ITER):
        f_lon, f_lat = forward(p_lon, p_lat)
        e_lon, e_lat = f_lon - lon, f_lat - lat
        p_lon -= e_lon
        p_lat -= e_lat
        err = np.maximum(np.abs(e_lon), np.abs(e_lat))
        # NaN inputs stay NaN and must not keep the loop going
        if not np.any(err >= _INVERSE_TOL_DEG):
            break
    else:
        f_lon, f_lat = forward(p_lon, p_lat)
        err = np.maximum(np.abs(f_lon - lon), np.abs(f_lat - lat))
        if np.any(err >= _INVERSE_TOL_DEG):
            raise CrsError(
                f"offset inverse did not converge in {_INVERSE_MAX_ITER} iterations "
                f"(max error {np.nanmax(err):.3g} degrees)"
            )
    # Outside China the forward map is the identity; return the input bit-for-bit there.
    outside = _out_of_china(lon, lat)
    return np.where(outside, lon, p_lon), np.where(outside, lat, p_lat)


def _gcj_to_wgs(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dlon, dlat = _gcj_delta(lon, lat)
    return _invert(_wgs_to_gcj, lon, lat, (lon - dlon, lat - dlat))


def _bd_to_gcj(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The usual published closed-form "inverse" is only approximate; it is a good first guess.
    x = lon - 0.0065
    y = lat - 0.006
    z = np.sqrt(x * x + y * y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    return _invert(_gcj_to_bd, lon, lat, (z * np.cos(theta), z * np.sin(theta)))


def _shifted(shift: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], lon: npt.ArrayLike,
             lat: npt.ArrayLike) -> tuple[Coord, Coord]:
    """A datum shift on arrays, applied to scalars or array-likes (scalars in, floats out)."""
    lo, la, scalar = coord_arrays(lon, lat)
    r_lon, r_lat = shift(lo, la)
    return coord_result(r_lon, scalar), coord_result(r_lat, scalar)


def wgs84_to_gcj02(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[Coord, Coord]:
    """WGS84 lon/lat to GCJ-02 ("Mars") lon/lat; unshifted outside mainland China."""
    return _shifted(_wgs_to_gcj, lon, lat)


def gcj02_to_wgs84(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[Coord, Coord]:
    """GCJ-02 lon/lat to WGS84 lon/lat (iterative exact inverse of :func:`wgs84_to_gcj02`)."""
    return _shifted(_gcj_to_wgs, lon, lat)


def gcj02_to_bd09(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[Coord, Coord]:
    """GCJ-02 lon/lat to Baidu BD-09 lon/lat; unshifted outside mainland China."""
    return _shifted(_gcj_to_bd, lon, lat)


def bd09_to_gcj02(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[Coord, Coord]:
    """BD-09 lon/lat to GCJ-02 lon/lat (iterative exact inverse of :func:`gcj02_to_bd09`)."""
    return _shifted(_bd_to_gcj, lon, lat)


def wgs84_to_bd09(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[Coord, Coord]:
    """WGS84 lon/lat to BD-09 lon/lat (via GCJ-02)."""
    return _shifted(functools.partial(_wgs_to_offset, "bd09"), lon, lat)


def bd09_to_wgs84(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[Coord, Coord]:
    """BD-09 lon/lat to WGS84 lon/lat (via GCJ-02)."""
    return _shifted(functools.partial(_offset_to_wgs, "bd09"), lon, lat)


def _offset_to_wgs(offset: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if offset == "gcj02":
        return _gcj_to_wgs(lon, lat)
    return _gcj_to_wgs(*_bd_to_gcj(lon, lat))


def _wgs_to_offset(offset: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if offset == "gcj02":
        return _wgs_to_gcj(lon, lat)
    return _gcj_to_bd(*_wgs_to_gcj(lon, lat))



def offset_to_offset(src: str, dst: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GCJ-02 <-> BD-09 on float64 arrays directly, without a needless round trip through WGS84."""
    if src == dst:
        return lon.copy(), lat.copy()
    return _gcj_to_bd(lon, lat) if src == "gcj02" else _bd_to_gcj(lon, lat)


def offset_to_wgs84(offset: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undo ``offset`` (gcj02 or bd09) on float64 arrays: WGS84 lon/lat out."""
    return _offset_to_wgs(offset, lon, lat)


def wgs84_to_offset(offset: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``offset`` (gcj02 or bd09) to WGS84 lon/lat float64 arrays."""
    return _wgs_to_offset(offset, lon, lat)
