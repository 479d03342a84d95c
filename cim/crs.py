"""Coordinate reference systems: resolution, transforms, Chinese web-map offsets, sanity checks.

Every coordinate that enters or leaves the platform goes through this module, so the rules live
in one place: x is always easting/longitude and y northing/latitude (``always_xy``), heights are
never touched by a horizontal CRS change, and the storage CRS is projected and in metres.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pyproj
import shapely
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_crs_info
from pyproj.enums import PJType

# Re-exported so callers can take everything CRS-related from here; cim.config stays the single
# source of the values.
from cim.config import DEFAULT_STORAGE_SRID, SHANGHAI_BBOX_WGS84
from cim.errors import UserError

__all__ = [
    "DEFAULT_STORAGE_SRID",
    "SHANGHAI_BBOX_WGS84",
    "CrsError",
    "CrsSpec",
    "ExtentError",
    "Offset",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "check_extent",
    "check_storage_crs",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "resolve_crs",
    "transform_coords",
    "transform_geometries",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
]

Offset: TypeAlias = Literal["gcj02", "bd09"] | None
#: Scalars in give floats out; arrays in give float64 arrays of the broadcast shape out.
Coord: TypeAlias = float | npt.NDArray[np.float64]
BBox: TypeAlias = tuple[float, float, float, float]


class CrsError(UserError, ValueError):
    """A CRS that cannot be resolved or is unfit for the purpose asked."""


class ExtentError(UserError, ValueError):
    """Coordinates do not fall where the city is; ``cause``/``suggestions`` say why, if known."""

    def __init__(
        self,
        message: str,
        *,
        cause: str | None = None,
        suggestions: tuple[str, ...] = (),
        n_outside: int = 0,
        n_total: int = 0,
        median: tuple[float, float] = (math.nan, math.nan),
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.suggestions = suggestions
        self.n_outside = n_outside
        self.n_total = n_total
        self.median = median


# ---------------------------------------------------------------------------------------------
# GCJ-02 / BD-09
#
# pyproj/PROJ has no definition of these: GCJ-02 is a deliberately obfuscated, non-invertible-in-
# closed-form perturbation of WGS84 mandated for Chinese web maps, and BD-09 is Baidu's extra
# perturbation on top of it. Neither is in the EPSG database, so they are hand-written here from
# the well-known public formula (the same as eviltransform/coordtransform).
# ---------------------------------------------------------------------------------------------

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


def _prep(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, bool]:
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    scalar = lon_a.ndim == 0 and lat_a.ndim == 0
    lon_a, lat_a = np.broadcast_arrays(lon_a, lat_a)
    return lon_a, lat_a, scalar


def _out(a: np.ndarray, scalar: bool) -> Coord:
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
    lo, la, scalar = _prep(lon, lat)
    r_lon, r_lat = shift(lo, la)
    return _out(r_lon, scalar), _out(r_lat, scalar)


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


# ---------------------------------------------------------------------------------------------
# CRS resolution
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrsSpec:
    """A resolved CRS: ``base`` is what pyproj knows; ``offset`` is a Chinese web-map shift on top.

    For ``gcj02``/``bd09`` the base is EPSG:4326 and coordinates are lon/lat in degrees.
    """

    name: str
    base: pyproj.CRS
    offset: Offset = None

    @property
    def is_geographic(self) -> bool:
        return bool(self.base.is_geographic)

    def __str__(self) -> str:
        return self.name


_WGS84 = pyproj.CRS.from_epsg(4326)
WGS84 = CrsSpec("EPSG:4326", _WGS84)

# Keys are lower-cased with spaces, '-' and '_' removed, so "GCJ-02", "gcj_02", "WGS 84" all match.
_ALIASES: dict[str, tuple[str, Offset]] = {
    "gcj02": ("gcj02", "gcj02"),
    "gcj": ("gcj02", "gcj02"),
    "mars": ("gcj02", "gcj02"),
    "bd09": ("bd09", "bd09"),
    "bd09ll": ("bd09", "bd09"),
    "baidu": ("bd09", "bd09"),
    "wgs84": ("EPSG:4326", None),
    "crs84": ("OGC:CRS84", None),
    "ogc:crs84": ("OGC:CRS84", None),
    "cgcs2000": ("EPSG:4490", None),
}
_EPSG_RE = re.compile(r"^(?:epsg:)?(\d+)$", re.IGNORECASE)
# OGC CRS URIs, as OGC APIs and GDAL write them: …/def/crs/EPSG/0/4549, …/def/crs/OGC/1.3/CRS84
_OGC_URI_RE = re.compile(r"^https?://www\.opengis\.net/def/crs/(EPSG|OGC)/[^/]+/(\w+)/?$", re.IGNORECASE)


def _bad_crs(spec: object, why: object = None) -> CrsError:
    detail = f" ({why})" if why else ""
    return CrsError(
        f"unknown CRS {spec!r}: expected an EPSG code (4549 or 'EPSG:4549'), 'gcj02', 'bd09', "
        f"'wgs84', 'cgcs2000', 'CRS84', a WKT or a PROJ string{detail}"
    )


def _name_of(crs: pyproj.CRS, fallback: str | None = None) -> str:
    auth = crs.to_authority(min_confidence=100)
    if auth is not None:
        return f"{auth[0]}:{auth[1]}"
    if crs.name and crs.name.lower() != "unknown":
        return crs.name
    return fallback or crs.to_string()


def _from_epsg(code: int, spec: str | int) -> CrsSpec:
    try:
        return CrsSpec(f"EPSG:{code}", pyproj.CRS.from_epsg(code))
    except pyproj.exceptions.CRSError as exc:
        raise _bad_crs(spec, exc) from None


@functools.lru_cache(maxsize=256)
def _resolve_cached(spec: str | int) -> CrsSpec:
    if isinstance(spec, int):
        return _from_epsg(spec, spec)
    text = spec.strip()
    if not text:
        raise _bad_crs(spec)
    uri = _OGC_URI_RE.match(text)
    if uri:
        text = f"EPSG:{uri.group(2)}" if uri.group(1).upper() == "EPSG" else uri.group(2)
    key = re.sub(r"[\s\-_]", "", text.lower())
    if key in _ALIASES:
        target, offset = _ALIASES[key]
        if offset is not None:
            return CrsSpec(target, _WGS84, offset)
        return CrsSpec(target, pyproj.CRS.from_user_input(target))
    m = _EPSG_RE.match(text)
    if m:
        return _from_epsg(int(m.group(1)), spec)
    try:
        crs = pyproj.CRS.from_user_input(text)
    except pyproj.exceptions.CRSError as exc:
        raise _bad_crs(spec, exc) from None
    # A PROJ string has no name of its own; the string itself is the most useful label.
    return CrsSpec(_name_of(crs, fallback=text if len(text) <= 200 else None), crs)


def resolve_crs(spec: CrsSpec | str | int | pyproj.CRS) -> CrsSpec:
    """Turn any accepted CRS spelling into a :class:`CrsSpec`; unknown values raise CrsError."""
    if isinstance(spec, CrsSpec):
        return spec
    if isinstance(spec, pyproj.CRS):
        return CrsSpec(_name_of(spec), spec)
    # bool is an int subclass; True is not EPSG:1
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise _bad_crs(spec)
    return _resolve_cached(spec)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _transformer(src_srs: str, dst_srs: str) -> pyproj.Transformer:
    # Building a Transformer means a PROJ database search for the best operation (milliseconds);
    # doing it per call dominates small batches. Keyed by the CRS's defining string (cheap to
    # hash, unlike CRS objects whose hash renders WKT). pyproj Transformers keep per-thread
    # state, so sharing a cached one between threads is safe.
    # always_xy: EPSG:4326/4490 and the Gauss-Krüger CRSs declare lat/lon resp. northing/easting
    # axis order; the platform is x=easting/longitude everywhere.
    return pyproj.Transformer.from_crs(src_srs, dst_srs, always_xy=True)


def _srs(crs: pyproj.CRS) -> str:
    return crs.srs or crs.to_wkt()


def _xy(x: np.ndarray, y: np.ndarray, src: CrsSpec, dst: CrsSpec) -> tuple[np.ndarray, np.ndarray]:
    """Transform float64 arrays of equal shape; the offset CRSs are handled around pyproj."""
    if src.offset is not None and dst.offset is not None:
        if src.offset == dst.offset:
            return x.copy(), y.copy()
        # Direct GCJ-02 <-> BD-09, without a needless round trip through WGS84.
        return _gcj_to_bd(x, y) if src.offset == "gcj02" else _bd_to_gcj(x, y)
    if src.offset is not None:
        x, y = _offset_to_wgs(src.offset, x, y)
    shape = x.shape
    tr = _transformer(_srs(src.base), _srs(dst.base))
    ox, oy = tr.transform(x.ravel(), y.ravel())
    ox = np.asarray(ox, dtype=np.float64).reshape(shape)
    oy = np.asarray(oy, dtype=np.float64).reshape(shape)
    if dst.offset is not None:
        ox, oy = _wgs_to_offset(dst.offset, ox, oy)
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
    xa, ya, scalar = _prep(x, y)
    ox, oy = _xy(xa, ya, s, d)
    return _out(ox, scalar), _out(oy, scalar), z


def transform_geometries(
    geoms: npt.ArrayLike,
    src: CrsSpec | str | int | pyproj.CRS,
    dst: CrsSpec | str | int | pyproj.CRS,
) -> np.ndarray:
    """Transform an array of shapely geometries (same shape out); Z values are preserved."""
    s, d = resolve_crs(src), resolve_crs(dst)
    arr = np.asarray(geoms, dtype=object)
    flat = arr.ravel()

    def fn(coords: np.ndarray) -> np.ndarray:
        out = coords.copy()
        out[:, 0], out[:, 1] = _xy(coords[:, 0].copy(), coords[:, 1].copy(), s, d)
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


# ---------------------------------------------------------------------------------------------
# Storage CRS
# ---------------------------------------------------------------------------------------------

_METRE_NAMES = {"metre", "meter", "metres", "meters"}


def check_storage_crs(srid: int) -> pyproj.CRS:
    """Return the CRS of ``srid`` if it can be the storage CRS (projected, metres) else CrsError.

    Geometry is stored projected in metres so that lengths, areas, buffers and heights in the
    database are all in the same unit and PostGIS needs no geography casts.
    """
    if isinstance(srid, bool) or not isinstance(srid, int):
        raise CrsError(f"storage SRID must be an integer EPSG code, got {srid!r}")
    try:
        crs = pyproj.CRS.from_epsg(srid)
    except pyproj.exceptions.CRSError as exc:
        raise CrsError(f"unknown storage SRID EPSG:{srid} ({exc})") from None
    example = f"such as EPSG:{DEFAULT_STORAGE_SRID}"
    if crs.is_geographic:
        raise CrsError(
            f"EPSG:{srid} is geographic (degrees); the storage CRS must be a projected CRS in "
            f"metres {example}"
        )
    if not crs.is_projected:
        raise CrsError(
            f"EPSG:{srid} ({crs.name}) is not a projected CRS; the storage CRS must be a "
            f"projected CRS in metres {example}"
        )
    units = [a.unit_name for a in crs.axis_info[:2]]
    if not all(u.lower() in _METRE_NAMES for u in units):
        raise CrsError(
            f"EPSG:{srid} ({crs.name}) has axis units {', '.join(sorted(set(units)))}; the "
            f"storage CRS must be a projected CRS in metres {example}"
        )
    return crs


# ---------------------------------------------------------------------------------------------
# Extent diagnosis
# ---------------------------------------------------------------------------------------------

_DIAGNOSE_MAX_POINTS = 20_000


@dataclass(frozen=True)
class _Fit:
    n_outside: int
    n_total: int
    median_inside: bool

    def ok(self, max_outside_fraction: float) -> bool:
        return self.median_inside and self.n_outside <= max_outside_fraction * self.n_total


def _inside(lon: np.ndarray, lat: np.ndarray, bbox: BBox) -> np.ndarray:
    return (lon >= bbox[0]) & (lon <= bbox[2]) & (lat >= bbox[1]) & (lat <= bbox[3])


def _fit(x: np.ndarray, y: np.ndarray, crs: CrsSpec, bbox: BBox) -> _Fit:
    with np.errstate(all="ignore"):
        # pyproj returns inf for points outside a projection's domain: they count as outside
        lon, lat = _xy(x, y, crs, WGS84)
        mlon, mlat = _xy(np.array([np.median(x)]), np.array([np.median(y)]), crs, WGS84)
    inside = _inside(lon, lat, bbox)
    return _Fit(int((~inside).sum()), int(x.size), bool(_inside(mlon, mlat, bbox)[0]))


@functools.lru_cache(maxsize=16)
def _projected_candidates(city_bbox: BBox) -> tuple[CrsSpec, ...]:
    """Projected CRSs that city data commonly arrives in, from the EPSG database by area of use.

    CGCS2000 Gauss-Krüger (3- and 6-degree, with and without zone prefix) first, then WGS 84 UTM,
    then Web Mercator.
    """
    infos = query_crs_info(
        auth_name="EPSG",
        pj_types=PJType.PROJECTED_CRS,
        area_of_interest=AreaOfInterest(*city_bbox),
        contains=False,
    )
    gk = [i for i in infos if i.name.startswith("CGCS2000 /") and "Gauss-Kruger" in i.name]
    utm = [i for i in infos if i.name.startswith("WGS 84 / UTM zone")]
    # 3-degree before 6-degree: 3-degree is what Chinese surveying and city data use.
    gk.sort(key=lambda i: ("3-degree" not in i.name, int(i.code)))
    codes = [int(i.code) for i in gk] + sorted(int(i.code) for i in utm) + [3857]
    return tuple(resolve_crs(c) for c in codes)


_GEOGRAPHIC_CANDIDATES = ("EPSG:4326", "EPSG:4490")


def _label(spec: CrsSpec) -> str:
    if spec.name.startswith("EPSG:") and spec.base.name:
        return f"{spec.name} ({spec.base.name})"
    return spec.name


def _false_easting(crs: pyproj.CRS) -> float | None:
    op = crs.coordinate_operation
    if op is None:
        return None
    for p in op.params:
        if p.name.lower() == "false easting":
            return float(p.value)
    return None


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"


def _fitting(
    x: np.ndarray, y: np.ndarray, candidates: tuple[CrsSpec, ...], bbox: BBox, max_frac: float
) -> list[CrsSpec]:
    return [c for c in candidates if _fit(x, y, c, bbox).ok(max_frac)]


def _diagnose(
    x: np.ndarray,
    y: np.ndarray,
    crs: CrsSpec,
    city_bbox: BBox,
    bbox: BBox,
    max_frac: float,
) -> tuple[str | None, tuple[str, ...]]:
    """Work out why points fall outside: each cause is confirmed by re-testing the points."""
    mx, my = float(np.median(x)), float(np.median(y))
    median = f"x≈{_fmt(mx)}, y≈{_fmt(my)}"

    if _fit(y, x, crs, bbox).ok(max_frac):
        if crs.is_geographic:
            return (
                f"coordinates look like lat/lon swapped ({median}); x must be longitude and "
                f"y latitude, so swap the two columns",
                (crs.name,),
            )
        return (
            f"coordinates look like x/y (easting/northing) swapped ({median}); x must be the "
            f"easting and y the northing, so swap the two columns",
            (crs.name,),
        )

    if crs.is_geographic:
        if abs(mx) > 180 or abs(my) > 90:
            cause = (
                f"values ({median}) are too large for degrees: these look like projected metres "
                f"declared as the geographic CRS {crs.name}"
            )
            fits = _fitting(x, y, _projected_candidates(city_bbox), bbox, max_frac)
            if fits:
                cause += "; the points fit " + " or ".join(_label(c) for c in fits[:3])
            else:
                # Chinese survey data often lists X=northing first
                fits = _fitting(y, x, _projected_candidates(city_bbox), bbox, max_frac)
                if fits:
                    cause += (
                        "; with x/y swapped the points fit "
                        + " or ".join(_label(c) for c in fits[:3])
                    )
            return cause, tuple(c.name for c in fits)
        return None, ()

    if abs(mx) <= 180 and abs(my) <= 90:
        cause = (
            f"values ({median}) are within ±180/±90: these look like degrees declared as the "
            f"projected CRS {crs.name} (metres)"
        )
        geo = tuple(resolve_crs(c) for c in _GEOGRAPHIC_CANDIDATES)
        fits = _fitting(x, y, geo, bbox, max_frac)
        if fits:
            cause += "; the points fit " + " or ".join(_label(c) for c in fits)
        elif _fitting(y, x, geo, bbox, max_frac):
            cause += "; they fit EPSG:4326/EPSG:4490 with lat/lon swapped"
            fits = list(geo)
        return cause, tuple(c.name for c in fits)

    fits = _fitting(x, y, _projected_candidates(city_bbox), bbox, max_frac)
    if not fits:
        swapped = _fitting(y, x, _projected_candidates(city_bbox), bbox, max_frac)
        if swapped:
            return (
                f"the points ({median}) do not fit {crs.name}, but with x/y (easting/northing) "
                f"swapped they fit " + " or ".join(_label(c) for c in swapped[:3]),
                tuple(c.name for c in swapped),
            )
        return None, ()
    names = tuple(c.name for c in fits)
    fit_text = " or ".join(_label(c) for c in fits[:3])
    declared_fe = _false_easting(crs.base)
    declared_prefix = declared_fe is not None and declared_fe >= 1_000_000
    # Gauss-Krüger eastings without prefix stay below 1,000 km; with the zone number prefixed
    # (zone 13 and up) they are at least 13,000,000.
    data_prefix = abs(mx) >= 10_000_000
    if data_prefix and not declared_prefix:
        return (
            f"x has a Gauss-Krüger zone prefix ({median}, zone {int(abs(mx) // 1_000_000)}) that "
            f"{crs.name} does not expect; the points fit {fit_text}",
            names,
        )
    if declared_prefix and not data_prefix:
        return (
            f"x lacks the Gauss-Krüger zone prefix that {crs.name} expects (false easting "
            f"{declared_fe:.0f}; {median}); the points fit {fit_text}",
            names,
        )
    return f"the points ({median}) do not fit {crs.name} but fit {fit_text}", names


def check_extent(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    crs: CrsSpec | str | int | pyproj.CRS,
    city_bbox_wgs84: BBox = SHANGHAI_BBOX_WGS84,
    *,
    margin_deg: float = 0.2,
    max_outside_fraction: float = 0.01,
) -> None:
    """Raise ExtentError if the points, in ``crs``, do not lie in the city (plus a margin).

    Fails when more than ``max_outside_fraction`` of the points, or the median point, fall
    outside; the message names the likely cause (swapped axes, wrong units, zone prefix) when a
    re-test of the points under that hypothesis confirms it. Non-finite points are ignored.
    """
    spec = resolve_crs(crs)
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length ({xa.size} vs {ya.size})")
    finite = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[finite], ya[finite]
    if xa.size == 0:
        return
    bbox: BBox = (
        city_bbox_wgs84[0] - margin_deg,
        city_bbox_wgs84[1] - margin_deg,
        city_bbox_wgs84[2] + margin_deg,
        city_bbox_wgs84[3] + margin_deg,
    )
    fit = _fit(xa, ya, spec, bbox)
    if fit.ok(max_outside_fraction):
        return

    # Diagnosing re-projects under several hypotheses; an even subsample is plenty for that.
    if xa.size > _DIAGNOSE_MAX_POINTS:
        idx = np.linspace(0, xa.size - 1, _DIAGNOSE_MAX_POINTS).astype(np.intp)
        dx, dy = xa[idx], ya[idx]
    else:
        dx, dy = xa, ya
    cause, suggestions = _diagnose(
        dx, dy, spec, tuple(city_bbox_wgs84), bbox, max_outside_fraction  # type: ignore[arg-type]
    )
    mx, my = float(np.median(xa)), float(np.median(ya))
    bbox_text = ", ".join(f"{v:g}" for v in city_bbox_wgs84)
    summary = (
        f"{fit.n_outside} of {fit.n_total} points fall outside the city extent "
        f"(bbox {bbox_text} WGS84, margin {margin_deg:g}°) in CRS {spec.name}; "
        f"median point x≈{_fmt(mx)}, y≈{_fmt(my)}"
    )
    if not fit.median_inside and fit.n_outside <= max_outside_fraction * fit.n_total:
        summary += " (the median point itself is outside)"
    message = f"{cause}. {summary}" if cause else summary
    raise ExtentError(
        message,
        cause=cause,
        suggestions=suggestions,
        n_outside=fit.n_outside,
        n_total=fit.n_total,
        median=(mx, my),
    )
