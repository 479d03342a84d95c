"""Clue intake (线索): a report of a suspected illegal building from one of the five channels, a
point (any CRS) or an address, or a change polygon from remote sensing, stored in the storage CRS
and put in its grid. Clues on one spot are merged: a clue within :data:`MERGE_RADIUS_M` of (or
overlapping) an earlier clue whose verification is still open joins that spot; only a spot's first
clue opens a verification case (class E9601, dispatched by the case loop to the street's 拆违办),
the others are logged on that case.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import shapely
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.intake import CaseReport, intake
from cases.lifecycle import now_utc
from cases.model import write_event
from cim.bootstrap import stored_settings
from cim.crs.transform import transform_geometries
from cim.errors import ParameterError, UserError
from cim.gazetteer.geocode import POINT_LEVELS, geocode_many
from cim.grid import lookup_points
from cim.spatial import to_storage

from scenarios.illegal_building.catalogue import VERIFY_CLASS, ensure_catalogue

CHANNELS = ("grid_patrol", "demolition_patrol", "hotline", "property_app", "remote_sensing")
#: the case loop's channel for each clue channel (the clue's own channel stays in the case's attributes)
CASE_CHANNEL = {"grid_patrol": "grid_patrol", "demolition_patrol": "other", "hotline": "hotline_12345",
                "property_app": "public", "remote_sensing": "other"}
#: clues this close (metres; polygons: their edges) are one spot
MERGE_RADIUS_M = 30.0
#: a closed verification ends a spot; a clue there later opens a new one
SPOT_ENDED_STATUSES = "('closed', 'not_registered', 'merged')"


@dataclass(frozen=True)
class Clue:
    """One clue as a channel sends it: a point (``x``, ``y`` in ``crs``), a polygon (``polygon``,
    a shapely geometry in ``crs``) or an address text; the geometry wins over the text."""

    channel: str
    x: float | None = None
    y: float | None = None
    polygon: Any = None
    crs: str = "EPSG:4326"
    address_text: str | None = None
    description: str | None = None
    external_id: str | None = None
    reported_at: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClueResult:
    clue_id: int
    created: bool  # False: the (channel, external id) was known
    merged_into: int | None  # the spot's first clue, when this clue joined a spot
    case_id: int | None
    grid_code: str | None
    street_code: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _validate(clue: Clue, where: str) -> None:
    if clue.channel not in CHANNELS:
        raise ParameterError("channel", f"{where}channel: unknown channel {clue.channel!r}; valid: {', '.join(CHANNELS)}")
    if (clue.x is None) != (clue.y is None):
        raise ParameterError("x", f"{where}x, y: give both coordinates of the point, or neither")
    if clue.x is None and clue.polygon is None and not (clue.address_text or "").strip():
        raise ParameterError("address", f"{where}a clue needs a point (lon/lat), a polygon or an address")
    if clue.reported_at is not None and clue.reported_at.tzinfo is None:
        raise ParameterError("reported_at", f"{where}reported_at: the time needs a time zone")


def _storage_geometry(conn: Connection, clue: Clue, srid: int, where: str) -> Any:
    """The clue's geometry in the storage CRS (shapely), or a UserError naming what is wrong."""
    if clue.polygon is not None:
        geom = clue.polygon
        if not isinstance(geom, shapely.Geometry) or geom.is_empty:
            raise ParameterError("geometry", f"{where}geometry: empty or not a geometry")
        if geom.geom_type not in ("Polygon", "MultiPolygon", "Point"):
            raise ParameterError("geometry", f"{where}geometry: a {geom.geom_type} is not a change polygon")
        geom = transform_geometries([shapely.force_2d(geom)], clue.crs, f"EPSG:{srid}")[0]
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        if not all(map(lambda v: abs(v) < 1e12, geom.bounds)):
            raise ParameterError("geometry", f"{where}geometry: cannot be transformed from {clue.crs}")
        return geom
    if clue.x is not None:
        sx, sy = to_storage([clue.x], [clue.y], clue.crs, srid)
        if not (abs(sx[0]) < 1e12 and abs(sy[0]) < 1e12):
            raise ParameterError("x", f"{where}x, y: ({clue.x}, {clue.y}) cannot be transformed from {clue.crs}")
        return shapely.Point(float(sx[0]), float(sy[0]))
    result = geocode_many(conn, [clue.address_text], f"EPSG:{srid}")[0]
    if result.match_level not in POINT_LEVELS or result.x is None or result.ambiguous:
        raise ParameterError("address", f"{where}address: {clue.address_text!r} is not found to a point "
                             f"(matched at level {result.match_level}: {result.reason or 'ambiguous'})")
    return shapely.Point(result.x, result.y)


def _spot(conn: Connection, wkb: bytes, srid: int) -> sa.Row | None:
    """The open spot (its first clue) the geometry falls on, nearest first."""
    return conn.execute(sa.text(
        "SELECT l.id, l.case_id FROM ib_clues l LEFT JOIN cases c ON c.id = l.case_id "
        "WHERE l.merged_into IS NULL AND (c.id IS NULL OR c.status NOT IN " + SPOT_ENDED_STATUSES + ") "
        "AND ST_DWithin(l.geom, ST_GeomFromWKB(:g, :srid), :r) "
        "ORDER BY ST_Distance(l.geom, ST_GeomFromWKB(:g, :srid)), l.id LIMIT 1"),
        {"g": wkb, "srid": srid, "r": MERGE_RADIUS_M}).one_or_none()


def add_clue(conn: Connection, clue: Clue, now: datetime | None = None, where: str = "") -> ClueResult:
    """Take one clue in (inside the caller's transaction): store it, merge it into the open spot it
    falls on, or open the spot's verification case. ``where`` prefixes errors (a file's row)."""
    _validate(clue, where)
    ensure_catalogue(conn)
    settings = stored_settings(conn)
    if settings is None:
        raise UserError("the city base is not initialised: run 'cim init'")
    srid = settings.srid
    if clue.external_id:
        known = conn.execute(sa.text("SELECT id, merged_into, case_id, grid_code, street_code FROM ib_clues "
                                     "WHERE channel = :c AND external_id = :e"),
                             {"c": clue.channel, "e": clue.external_id}).one_or_none()
        if known is not None:
            return ClueResult(known.id, False, known.merged_into, known.case_id, known.grid_code, known.street_code)
    now = now or now_utc()
    geom = _storage_geometry(conn, clue, srid, where)
    point = geom if geom.geom_type == "Point" else geom.point_on_surface()
    answer = lookup_points(conn, [point.x], [point.y], f"EPSG:{srid}", settings)[0]
    # one intake at a time decides a spot: two clues of one spot racing must not both open a case
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(4549014)"))
    wkb = shapely.to_wkb(geom)
    spot = _spot(conn, wkb, srid)
    codes = {level: (getattr(answer, level).code if getattr(answer, level) else None)
             for level in ("district", "street", "community", "grid")}
    clue_id = conn.execute(sa.text(
        "INSERT INTO ib_clues (channel, external_id, reported_at, description, geom, area_m2, district_code, "
        "street_code, community_code, grid_code, merged_into, case_id, attributes) VALUES (:channel, :ext, :at, "
        ":descr, ST_GeomFromWKB(:g, :srid), :area, :district, :street, :community, :grid, :merged, :case_id, "
        "CAST(:attrs AS jsonb)) RETURNING id"),
        {"channel": clue.channel, "ext": clue.external_id or None, "at": clue.reported_at or now,
         "descr": clue.description, "g": wkb, "srid": srid, "area": geom.area or None,
         **codes, "merged": spot.id if spot else None, "case_id": spot.case_id if spot else None,
         "attrs": json.dumps({**clue.attributes, **({"address": clue.address_text} if clue.address_text else {})},
                             ensure_ascii=False, default=str)}).scalar_one()
    if spot is not None:
        if spot.case_id is not None:
            write_event(conn, spot.case_id, now, clue.channel, "reporter", "comment", None, None,
                        f"clue {clue_id} ({clue.channel}) on the same spot merged into clue {spot.id}",
                        {"clue_id": clue_id, "merged_into_clue": spot.id, "channel": clue.channel})
        return ClueResult(clue_id, True, spot.id, spot.case_id, codes["grid"], codes["street"])
    result = intake(conn, CaseReport(
        channel=CASE_CHANNEL[clue.channel], class_code=VERIFY_CLASS,
        description=clue.description or f"违法建筑线索 {clue_id}", address_text=clue.address_text,
        x=point.x, y=point.y, crs=f"EPSG:{srid}", external_id=f"illegal-building-clue-{clue_id}",
        reported_at=clue.reported_at or now,
        attributes={"scenario": "illegal_building", "clue_id": clue_id, "clue_channel": clue.channel}), now=now)
    conn.execute(sa.text("UPDATE ib_clues SET case_id = :c WHERE id = :id"), {"c": result.case.id, "id": clue_id})
    return ClueResult(clue_id, True, None, result.case.id, codes["grid"], codes["street"])


def add_clues(conn: Connection, clues: list[tuple[str, Clue]], now: datetime | None = None) -> list[ClueResult]:
    """Clues in order of report time (so which clue leads a spot does not depend on the file's
    order), each error naming its source row."""
    order = sorted(range(len(clues)), key=lambda i: (clues[i][1].reported_at or now or now_utc(), i))
    out: dict[int, ClueResult] = {}
    for i in order:
        where, clue = clues[i]
        out[i] = add_clue(conn, clue, now, where=f"{where}: " if where else "")
    return [out[i] for i in range(len(clues))]


def spot_of(conn: Connection, clue_id: int) -> list[int]:
    """The clues of the spot a clue belongs to, first clue first."""
    lead = conn.execute(sa.text("SELECT coalesce(merged_into, id) FROM ib_clues WHERE id = :id"),
                        {"id": clue_id}).scalar()
    return list(conn.execute(sa.text("SELECT id FROM ib_clues WHERE id = :l OR merged_into = :l ORDER BY id"),
                             {"l": lead}).scalars())


def open_spots(conn: Connection) -> list[dict[str, Any]]:
    """The spots still being verified (their verification case not ended), for the viewer: each spot's
    first clue, as a WGS84 point (a change polygon by a point on it), with its case, its status and
    how many clues it merged."""
    rows = conn.execute(sa.text(
        "SELECT l.id AS clue_id, l.channel, l.external_id, l.reported_at, l.grid_code, l.street_code, "
        "l.case_id, c.status AS case_status, "
        "(SELECT count(*) FROM ib_clues m WHERE m.merged_into = l.id) + 1 AS clues, "
        "ST_AsGeoJSON(ST_Transform(ST_PointOnSurface(l.geom), 4326), 7) AS geometry "
        "FROM ib_clues l LEFT JOIN cases c ON c.id = l.case_id "
        "WHERE l.merged_into IS NULL AND (c.id IS NULL OR c.status NOT IN " + SPOT_ENDED_STATUSES + ") "
        "ORDER BY l.id")).all()
    return [{**r._asdict(), "reported_at": r.reported_at.isoformat(), "geometry": json.loads(r.geometry)}
            for r in rows]
