"""Reverse geocoding: the gazetteer address nearest a point, within a radius, and the grid,
community, street and district the point lies in (with who answers for the grid).

The nearest address comes from the GiST index (``ORDER BY geom <-> point``, a KNN index scan);
among entries at the same spot (the rooms of one building) the building's own entry is preferred,
and the answer names the building, not one of its rooms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.crs import CrsSpec, resolve_crs, transform_coords
from cim.errors import ParameterError
from cim.gazetteer.index import ENTRY_COLUMNS, Entry, entry_from_row
from cim.gazetteer.results import xy_fields
from cim.gazetteer.store import gazetteer_for
from cim.gazetteer.parse import ParsedAddress
from cim.grid import GridAnswer, lookup_points
from cim.spatial import to_storage

DEFAULT_RADIUS_M = 100.0
MAX_RADIUS_M = 2_000.0

_POINT = "ST_SetSRID(ST_MakePoint(:x, :y), CAST(:srid AS integer))"
# The inner query walks the GiST index nearest first; the outer one prefers, among entries at the
# same spot (to the millimetre), the one without unit/floor/room.
_NEAREST_SQL = f"""
SELECT * FROM (
    SELECT feature_id::text, address_code, standard_address, road, door_number, lane, building_no,
           unit, floor, room, compound, district_code, street_code, community_code, grid_code,
           ST_X(geom), ST_Y(geom), ST_Distance(geom, {_POINT}) AS distance_m, fid
    FROM addresses
    WHERE valid_to IS NULL AND ST_DWithin(geom, {_POINT}, :radius)
    ORDER BY geom <-> {_POINT}
    LIMIT 32
) AS near
ORDER BY round(CAST(distance_m AS numeric), 3), room IS NOT NULL, floor IS NOT NULL, unit IS NOT NULL, fid
LIMIT 1
"""


@dataclass
class NearestAddress:
    entry: Entry
    building_address: str  # the entry without unit/floor/room: the place, not one flat
    distance_m: float
    x: float  # in the output CRS
    y: float

    def to_dict(self, geographic: bool) -> dict[str, Any]:
        e = self.entry
        return {"standard_address": self.building_address, "distance_m": round(self.distance_m, 2),
                **xy_fields(self.x, self.y, geographic),
                "entry": {"feature_id": e.feature_id, "address_code": e.address_code,
                          "standard_address": e.standard_address},
                "road": e.road, "door_number": e.door_number, "lane": e.lane, "building": e.building,
                "compound": e.compound}


@dataclass
class ReverseResult:
    """The query point (in ``crs``), the nearest address within ``radius_m`` (or None) and the
    units containing the point."""

    x: float
    y: float
    crs: str
    geographic: bool
    radius_m: float
    address: NearestAddress | None
    assignment: GridAnswer = field(default_factory=GridAnswer)

    def to_dict(self) -> dict[str, Any]:
        return {"query": {**xy_fields(self.x, self.y, self.geographic), "crs": self.crs, "radius_m": self.radius_m},
                "found": self.address is not None,
                "address": self.address.to_dict(self.geographic) if self.address else None,
                "assignment": self.assignment.to_dict()}


def check_radius(radius_m: float) -> float:
    if not (isinstance(radius_m, (int, float)) and math.isfinite(radius_m) and 0 < radius_m <= MAX_RADIUS_M):
        raise ParameterError("radius", f"radius: must be more than 0 and at most {MAX_RADIUS_M:g} metres, got {radius_m}")
    return float(radius_m)


def reverse(conn: Connection, x: float, y: float, crs: CrsSpec | str | int = "EPSG:4326",
            radius_m: float = DEFAULT_RADIUS_M) -> ReverseResult:
    """The address nearest (x, y) given in ``crs`` within ``radius_m`` metres; its point is
    returned in the same CRS."""
    spec = resolve_crs(crs)
    radius = check_radius(radius_m)
    for name, value in (("lon", x), ("lat", y)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParameterError(name, f"{name}: must be a finite number, got {value}")
    gazetteer = gazetteer_for(conn)
    srid = gazetteer.settings.srid
    sx, sy = to_storage([x], [y], spec, srid)
    if not (math.isfinite(sx[0]) and math.isfinite(sy[0])):
        raise ParameterError("lon", f"lon: the point ({x}, {y}) in {spec.name} cannot be expressed in the storage CRS "
                        f"EPSG:{srid}")
    params = {"x": float(sx[0]), "y": float(sy[0]), "srid": srid, "radius": radius}
    row = conn.execute(sa.text(_NEAREST_SQL), params).first()
    assignment = lookup_points(conn, [float(sx[0])], [float(sy[0])], f"EPSG:{srid}", gazetteer.settings)[0]
    address = None
    if row is not None:
        entry = entry_from_row(row[:ENTRY_COLUMNS])
        ox, oy, _ = transform_coords(entry.x, entry.y, None, f"EPSG:{srid}", spec)
        dictionary = gazetteer.dictionary
        building = ParsedAddress(raw="", city=dictionary.city_name,
                                 district=dictionary.district_name(entry.district_code),
                                 road=entry.road, door_number=entry.door_number, lane=entry.lane,
                                 building=entry.building, building_kind="号" if entry.lane else None,
                                 compound=entry.compound)
        address = NearestAddress(entry, building.standard_address() or entry.standard_address or "",
                                 float(row[ENTRY_COLUMNS]), float(ox), float(oy))
    return ReverseResult(float(x), float(y), spec.name, spec.is_geographic, radius, address, assignment)
