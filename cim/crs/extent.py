"""Sanity checks of coordinates: is a CRS fit to store in, and do points lie in the city?

When points fall outside the city the message names the likely cause (swapped axes, wrong units,
a Gauss-Krüger zone prefix), each confirmed by re-testing the points under that hypothesis.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import pyproj
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_crs_info
from pyproj.enums import PJType

from cim.config import DEFAULT_STORAGE_SRID, SHANGHAI_BBOX_WGS84
from cim.crs.errors import CrsError, ExtentError
from cim.crs.resolve import WGS84, CrsSpec, resolve_crs
from cim.crs.transform import transform_arrays

__all__ = ["check_extent", "check_storage_crs"]

BBox: TypeAlias = tuple[float, float, float, float]

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
        lon, lat = transform_arrays(x, y, crs, WGS84)
        mlon, mlat = transform_arrays(np.array([np.median(x)]), np.array([np.median(y)]), crs, WGS84)
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

