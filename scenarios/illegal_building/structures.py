"""The illegal-structures layer (违法建筑库): loaded from a city's register (polygons), compared with
each confirmed clue — linked when a structure of the layer covers the spot (or lies within
:data:`LINK_RADIUS_M`), extended with a new structure when none does — and re-checked when a
structure later gets a property certificate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import shapely
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import stored_settings
from cim.crs.transform import transform_geometries
from cim.errors import NotFoundError, UserError
from cim.grid import lookup_points
from cim.times import day_start, parse_instant

#: a confirmed spot this close to a structure of the layer is that structure (metres)
LINK_RADIUS_M = 10.0
#: statuses a register may give a structure
REGISTER_STATUSES = ("under_construction", "existing", "demolished", "legalised")


@dataclass(frozen=True)
class Comparison:
    structure_code: str
    linked: bool  # True: the layer knew it; False: added to the layer

    def to_dict(self) -> dict[str, Any]:
        return {"structure_code": self.structure_code, "linked": self.linked}


def _srid(conn: Connection) -> int:
    settings = stored_settings(conn)
    if settings is None:
        raise UserError("the city base is not initialised: run 'cim init'")
    return settings.srid


def _codes(conn: Connection, geom: Any, srid: int) -> dict[str, str | None]:
    point = geom if geom.geom_type == "Point" else geom.point_on_surface()
    answer = lookup_points(conn, [point.x], [point.y], f"EPSG:{srid}")[0]
    return {level: (getattr(answer, level).code if getattr(answer, level) else None)
            for level in ("district", "street", "community", "grid")}


def load_register(conn: Connection, path: Path, crs: str | None = None, code_field: str = "code",
                  status_field: str = "status", found_field: str = "found_at") -> dict[str, int]:
    """A city's register of illegal structures (GeoJSON, Shapefile, GeoPackage … of polygons) into
    the layer: a structure is its ``code``; a known code is updated. Every bad row is an error
    naming the file, row and field, and nothing is loaded."""
    import pyogrio

    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        frame = pyogrio.read_dataframe(path, datetime_as_string=True)
    except Exception as exc:  # pyogrio's errors name the driver's trouble
        raise UserError(f"{path}: cannot be read as a vector file: {exc}") from None
    source_crs = crs or (frame.crs.to_wkt() if frame.crs is not None else None)
    if source_crs is None:
        raise UserError(f"{path}: the file declares no CRS; give one with --crs")
    for column in (code_field, status_field):
        if column not in frame.columns:
            raise UserError(f"{path}: missing column {column!r}")
    srid = _srid(conn)
    geoms = transform_geometries(shapely.force_2d(frame.geometry.values), source_crs, f"EPSG:{srid}")
    rows = []
    for n, (record, geom) in enumerate(zip(frame.to_dict("records"), geoms), start=1):
        where = f"{path}, feature {n}"
        code = str(record.get(code_field) or "").strip()
        status = str(record.get(status_field) or "existing").strip()
        if not code:
            raise UserError(f"{where}: field {code_field}: empty")
        if status not in REGISTER_STATUSES:
            raise UserError(f"{where}: field {status_field}: {status!r} is not one of {', '.join(REGISTER_STATUSES)}")
        if geom is None or geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise UserError(f"{where}: geometry: a structure is a polygon, got "
                            f"{'nothing' if geom is None or geom.is_empty else geom.geom_type}")
        found = record.get(found_field)
        if found in (None, ""):
            found_at = datetime.now(timezone.utc)
        else:
            try:
                value = parse_instant(found.isoformat() if hasattr(found, "isoformat") else str(found), found_field)
            except UserError as exc:
                raise UserError(f"{where}: field {found_field}: {exc}") from None
            found_at = value if isinstance(value, datetime) else day_start(value)
        rows.append({"code": code, "status": status, "geom": shapely.to_wkb(shapely.make_valid(geom)),
                     "found": found_at, **_codes(conn, geom, srid)})
    inserted = updated = 0
    for row in rows:
        # a register loaded again changes what it says; a status the verification flow set (the
        # structure has cases) is the newer truth and stays
        was = conn.execute(sa.text(
            "INSERT INTO ib_structures (code, status, source, geom, area_m2, district_code, street_code, "
            "community_code, grid_code, found_at) VALUES (:code, :status, 'register', ST_GeomFromWKB(:geom, :srid), "
            "ST_Area(ST_GeomFromWKB(:geom, :srid)), :district, :street, :community, :grid, :found) "
            "ON CONFLICT (code) DO UPDATE SET status = CASE WHEN ib_structures.case_ids = '{}' THEN EXCLUDED.status "
            "ELSE ib_structures.status END, geom = EXCLUDED.geom, area_m2 = EXCLUDED.area_m2, "
            "district_code = EXCLUDED.district_code, street_code = EXCLUDED.street_code, "
            "community_code = EXCLUDED.community_code, grid_code = EXCLUDED.grid_code, updated_at = now() "
            "WHERE ST_AsBinary(ib_structures.geom) IS DISTINCT FROM ST_AsBinary(EXCLUDED.geom) "
            "OR (ib_structures.case_ids = '{}' AND ib_structures.status IS DISTINCT FROM EXCLUDED.status) "
            "RETURNING (xmax = 0) AS inserted"), {**row, "srid": srid}).scalar()
        inserted += was is True
        updated += was is False
    return {"inserted": inserted, "updated": updated, "unchanged": len(rows) - inserted - updated}


def spot_geometry(conn: Connection, clue_id: int) -> bytes:
    """The geometry a spot is compared by: the union of its change polygons, else its first clue's point."""
    return bytes(conn.execute(sa.text(
        "SELECT ST_AsBinary(coalesce(ST_Union(geom) FILTER (WHERE GeometryType(geom) LIKE '%POLYGON'), "
        "(array_agg(geom ORDER BY id))[1])) FROM ib_clues WHERE id = :l OR merged_into = :l"),
        {"l": conn.execute(sa.text("SELECT coalesce(merged_into, id) FROM ib_clues WHERE id = :id"),
                           {"id": clue_id}).scalar()}).scalar_one())


def compare(conn: Connection, geom_wkb: bytes, case_id: int, status: str, now: datetime) -> Comparison:
    """Compare a confirmed spot with the layer: link it to the structure it falls on, or add one."""
    srid = _srid(conn)
    found = conn.execute(sa.text(
        "SELECT code FROM ib_structures WHERE status NOT IN ('demolished', 'legalised') "
        "AND ST_DWithin(geom, ST_GeomFromWKB(:g, :srid), :r) "
        "ORDER BY ST_Distance(geom, ST_GeomFromWKB(:g, :srid)), code LIMIT 1"),
        {"g": geom_wkb, "srid": srid, "r": LINK_RADIUS_M}).scalar()
    if found is not None:
        conn.execute(sa.text("UPDATE ib_structures SET case_ids = array_append(case_ids, :c), status = :s, "
                             "updated_at = :now WHERE code = :code"),
                     {"c": case_id, "s": status, "now": now, "code": found})
        return Comparison(found, True)
    geom = shapely.from_wkb(geom_wkb)
    codes = _codes(conn, geom, srid)
    # the layer's own numbering for structures found through cases: WJ-<grid>-<n>
    prefix = f"WJ-{codes['grid'] or codes['street'] or 'X'}-"
    n = conn.execute(sa.text("SELECT count(*) + 1 FROM ib_structures WHERE code LIKE :p || '%'"),
                     {"p": prefix}).scalar()
    code = f"{prefix}{n:04d}"
    conn.execute(sa.text(
        "INSERT INTO ib_structures (code, status, source, geom, area_m2, district_code, street_code, community_code, "
        "grid_code, found_at, case_ids, attributes) VALUES (:code, :status, 'case', ST_GeomFromWKB(:g, :srid), "
        "nullif(ST_Area(ST_GeomFromWKB(:g, :srid)), 0), :district, :street, :community, :grid, :now, ARRAY[:c]::bigint[], "
        "CAST(:attrs AS jsonb))"),
        {"code": code, "status": status, "g": geom_wkb, "srid": srid, **codes, "now": now, "c": case_id,
         "attrs": json.dumps({"added_by_case": case_id})})
    return Comparison(code, False)


def set_status(conn: Connection, code: str, status: str, case_id: int, now: datetime) -> None:
    conn.execute(sa.text("UPDATE ib_structures SET status = :s, status_before_recheck = NULL, updated_at = :now, "
                         "case_ids = CASE WHEN :c = ANY(case_ids) THEN case_ids ELSE array_append(case_ids, :c) END "
                         "WHERE code = :code"), {"s": status, "now": now, "c": case_id, "code": code})


def get_structure(conn: Connection, code: str) -> dict[str, Any]:
    row = conn.execute(sa.text(
        "SELECT code, status, source, area_m2, district_code, street_code, community_code, grid_code, found_at, "
        "updated_at, certificate_no, case_ids, ST_AsGeoJSON(ST_Transform(geom, 4326), 7) AS geometry "
        "FROM ib_structures WHERE code = :c"), {"c": code}).one_or_none()
    if row is None:
        raise NotFoundError(f"no illegal structure {code!r} in the layer")
    out = row._asdict()
    out["geometry"] = json.loads(out["geometry"])
    for key in ("found_at", "updated_at"):
        out[key] = out[key].isoformat()
    return out


def list_structures(conn: Connection, status: str | None = None, grid_code: str | None = None) -> list[dict[str, Any]]:
    codes = conn.execute(sa.text(
        "SELECT code FROM ib_structures WHERE (CAST(:s AS text) IS NULL OR status = :s) "
        "AND (CAST(:g AS text) IS NULL OR grid_code = :g) ORDER BY code"), {"s": status, "g": grid_code}).scalars()
    return [get_structure(conn, c) for c in codes]
