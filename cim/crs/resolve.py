"""CRS resolution: every spelling of a CRS a request, a file or a command line may use → one
:class:`CrsSpec`, by one rule for the axis order.

The rule (OGC API – Features Part 2 for the OGC spellings; the GIS habit for the rest):

- OGC URIs, URNs and safe CURIEs — ``http://www.opengis.net/def/crs/EPSG/0/4326``,
  ``urn:ogc:def:crs:EPSG::4326``, ``[EPSG:4326]`` — follow the authority's axis order: lat/lon for
  EPSG:4326 and EPSG:4490, northing/easting for the Gauss-Krüger EPSG:4549.
- ``CRS84`` (also ``OGC:CRS84`` and its URI ``…/def/crs/OGC/1.3/CRS84``) is lon/lat.
- Short names — ``EPSG:4326``, ``4326``, ``wgs84``, ``cgcs2000``, ``gcj02``, ``bd09``, ``CRS84`` — and
  WKT/PROJ strings are always x-first: lon/lat, easting/northing.

:attr:`CrsSpec.lat_first` records the order of *this spelling*; it matters where coordinates come
as a list (GeoJSON coordinates, a bbox, a CQL2 geometry). Named coordinates (``lon=…&lat=…``,
``{"lon": …, "lat": …}``) and the coordinates inside the platform are x/y whatever the spelling.

GCJ-02 and BD-09 (the Chinese web-map offsets, :mod:`cim.crs.offsets`) are WGS 84 plus a shift:
their ``base`` is EPSG:4326, their ``offset`` names the shift, and they have no OGC URI.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import pyproj

from cim.crs.errors import CrsError
from cim.crs.offsets import Offset
from cim.errors import ParameterError

__all__ = [
    "CRS84",
    "CRS84_URI",
    "EXTRA_CRS",
    "WGS84",
    "CrsSpec",
    "crs_uri",
    "offered_crs",
    "resolve_crs",
    "resolve_offered",
    "resolve_parameter",
]

CRS84_URI = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
_EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/{}"
#: CRSs the API offers besides CRS84, the storage CRS and the offsets: WGS 84, CGCS2000 (China's
#: geodetic datum) and Web Mercator for web maps
EXTRA_CRS = (4326, 4490, 3857)


@dataclass(frozen=True)
class CrsSpec:
    """A resolved CRS: ``base`` is what pyproj knows; ``offset`` is a Chinese web-map shift on top.

    ``srid`` is the PostGIS SRID of the base (None when the base has no EPSG code; CRS84 and the
    offsets are 4326, which PostGIS reads lon/lat). ``uri`` is the OGC URI when the CRS has one.
    ``lat_first`` is the axis order of coordinate lists read or written under the spelling that
    was resolved (see the module docstring).
    """

    name: str
    base: pyproj.CRS
    offset: Offset = None
    srid: int | None = None
    uri: str | None = None
    lat_first: bool = False

    @property
    def is_geographic(self) -> bool:
        return bool(self.base.is_geographic)

    @property
    def ref(self) -> str:
        """How documents and the ``Content-Crs`` header name it: the OGC URI, else the name.

        GCJ-02 and BD-09 have no OGC or EPSG identifier, so they are named ``gcj02``/``bd09``.
        """
        return self.uri or self.name

    def __str__(self) -> str:
        return self.name


def crs_uri(srid: int) -> str:
    """The OGC URI of an EPSG code."""
    return _EPSG_URI.format(srid)


_WGS84_BASE = pyproj.CRS.from_epsg(4326)
WGS84 = CrsSpec("EPSG:4326", _WGS84_BASE, srid=4326, uri=crs_uri(4326))
CRS84 = CrsSpec("OGC:CRS84", pyproj.CRS.from_user_input("OGC:CRS84"), srid=4326, uri=CRS84_URI)

# Keys are lower-cased with spaces, '-' and '_' removed, so "GCJ-02", "gcj_02", "WGS 84" all match.
_ALIASES: dict[str, str | int] = {
    "gcj02": "gcj02", "gcj": "gcj02", "mars": "gcj02",
    "bd09": "bd09", "bd09ll": "bd09", "baidu": "bd09",
    "wgs84": 4326, "cgcs2000": 4490,
    "crs84": "CRS84", "ogc:crs84": "CRS84",
}
_EPSG_RE = re.compile(r"^(?:epsg:)?(\d+)$", re.IGNORECASE)
# The OGC spellings, which follow the authority's axis order:
# …/def/crs/EPSG/0/4549, …/def/crs/OGC/1.3/CRS84, urn:ogc:def:crs:EPSG::4326, [EPSG:4490]
_OGC_FORMS = (
    re.compile(r"^https?://www\.opengis\.net/def/crs/(?P<auth>EPSG|OGC)/[^/]+/(?P<code>\w+)/?$", re.I),
    re.compile(r"^urn:ogc:def:crs:(?P<auth>EPSG|OGC):[0-9.]*:(?P<code>\w+)$", re.I),
    re.compile(r"^\[(?P<auth>EPSG|OGC):(?P<code>\w+)\]$", re.I),  # safe CURIE
)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _bad_crs(spec: object, why: object = None) -> CrsError:
    # never echo unbounded input: pyproj's message repeats the value too
    detail = f" ({_clip(str(why))})" if why else ""
    shown = _clip(repr(spec))
    return CrsError(
        f"unknown CRS {shown}: expected an EPSG code (4549 or 'EPSG:4549'), 'gcj02', 'bd09', "
        f"'wgs84', 'cgcs2000', 'CRS84', an OGC CRS URI or URN, a WKT or a PROJ string{detail}"
    )


def _name_of(crs: pyproj.CRS, fallback: str | None = None) -> str:
    auth = crs.to_authority(min_confidence=100)
    if auth is not None:
        return f"{auth[0]}:{auth[1]}"
    if crs.name and crs.name.lower() != "unknown":
        return crs.name
    return fallback or crs.to_string()


def _epsg_code(crs: pyproj.CRS) -> int | None:
    auth = crs.to_authority(min_confidence=100)
    return int(auth[1]) if auth is not None and auth[0] == "EPSG" and auth[1].isdigit() else None


@functools.lru_cache(maxsize=256)
def _from_epsg(code: int, authority_order: bool) -> CrsSpec:
    try:
        base = pyproj.CRS.from_epsg(code)
    except pyproj.exceptions.CRSError as exc:
        raise _bad_crs(f"EPSG:{code}", exc) from None
    lat_first = False
    if authority_order and base.axis_info:
        # Part 2: coordinates in the axis order the CRS defines; a first axis pointing north
        # (latitude, or a Gauss-Krüger "X" northing) is written first
        lat_first = base.axis_info[0].direction.lower() in ("north", "south")
    return CrsSpec(f"EPSG:{code}", base, srid=code, uri=crs_uri(code), lat_first=lat_first)


def _from_alias(target: str | int) -> CrsSpec:
    if isinstance(target, int):
        return _from_epsg(target, False)
    if target == "CRS84":
        return CRS84
    return CrsSpec(target, _WGS84_BASE, target, srid=4326)  # type: ignore[arg-type]


def _from_ogc(spec: str, auth: str, code: str) -> CrsSpec:
    if auth.upper() == "OGC":
        if code.upper() == "CRS84":
            return CRS84
        raise _bad_crs(spec, f"OGC:{code} is not supported; OGC:CRS84 is")
    if not code.isdigit():
        raise _bad_crs(spec)
    return _from_epsg(int(code), True)


@functools.lru_cache(maxsize=256)
def _resolve_text(spec: str) -> CrsSpec:
    text = spec.strip()
    if not text:
        raise _bad_crs(spec)
    for form in _OGC_FORMS:
        m = form.match(text)
        if m:
            return _from_ogc(spec, m.group("auth"), m.group("code"))
    key = re.sub(r"[\s\-_]", "", text.lower())
    if key in _ALIASES:
        return _from_alias(_ALIASES[key])
    m = _EPSG_RE.match(text)
    if m:
        return _from_epsg(int(m.group(1)), False)
    try:
        crs = pyproj.CRS.from_user_input(text)
    except pyproj.exceptions.CRSError as exc:
        raise _bad_crs(spec, exc) from None
    # A PROJ string has no name of its own; the string itself is the most useful label.
    code = _epsg_code(crs)
    if code is not None:
        return _from_epsg(code, False)
    return CrsSpec(_name_of(crs, fallback=text if len(text) <= 200 else None), crs)


def resolve_crs(spec: CrsSpec | str | int | pyproj.CRS) -> CrsSpec:
    """Turn any accepted CRS spelling into a :class:`CrsSpec`; unknown values raise CrsError."""
    if isinstance(spec, CrsSpec):
        return spec
    if isinstance(spec, pyproj.CRS):
        code = _epsg_code(spec)
        return _from_epsg(code, False) if code is not None else CrsSpec(_name_of(spec), spec)
    # bool is an int subclass; True is not EPSG:1
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise _bad_crs(spec)
    if isinstance(spec, int):
        return _from_epsg(spec, False)
    return _resolve_text(spec)


def offered_crs(storage_srid: int) -> list[CrsSpec]:
    """The CRSs the API reads and writes features in: CRS84 first (the default), the EPSG codes
    in their OGC spelling (authority axis order), then GCJ-02 and BD-09."""
    srids = dict.fromkeys([*EXTRA_CRS, storage_srid])
    return [CRS84, *(_from_epsg(s, True) for s in srids), resolve_crs("gcj02"), resolve_crs("bd09")]


def resolve_parameter(value: str | None, parameter: str, default: str = "EPSG:4326") -> CrsSpec:
    """The CRS a request names in ``parameter`` (any accepted spelling; ``default`` when absent), or a
    :class:`~cim.errors.ParameterError` naming that parameter — for endpoints that take any CRS."""
    if value is None or not value.strip():
        return resolve_crs(default)
    try:
        return resolve_crs(value.strip())
    except CrsError as exc:
        raise ParameterError(parameter, str(exc)) from None


def resolve_offered(value: str | None, storage_srid: int, parameter: str) -> CrsSpec:
    """The CRS a feature request names in ``parameter`` (any spelling; default CRS84), if the API
    offers it; otherwise a :class:`ParameterError` naming the parameter and the offered CRSs."""
    if value is None or not value.strip():
        return CRS84
    offered = offered_crs(storage_srid)
    try:
        spec = resolve_crs(value)
    except CrsError as exc:
        spec, why = None, str(exc)
    else:
        why = f"{spec.name} is not offered"
    if spec is not None and any(spec.offset == o.offset and spec.srid == o.srid for o in offered):
        return spec
    raise ParameterError(parameter, f"unsupported {parameter}: {why}; use one of "
                                    + ", ".join(o.ref for o in offered)
                                    + " (short names such as EPSG:4326 are read x-first, lon/lat)")
