"""The flood response (防汛处置): for a water-level alarm, or a warning declared for an area —

1. the ponding area: a circle around the point (the monitoring point's ``radius_m``, else
   :data:`DEFAULT_RADIUS_M`) or the area given (a polygon, or a district/street/community/grid);
2. what lies in it: residential compounds (小区), buildings, addresses and underground parts
   (人防工事 and anything stored below ground level);
3. the ``k`` nearest available pump trucks by road (:mod:`scenarios.flood.routing`), and the
   :data:`TEAMS` nearest emergency teams, which are then marked dispatched to this response;
4. cases through the case loop: one for the department (条: ``E0401 道路积水`` → 水务; an alarm's
   rule has already opened it through sensing, and that case is taken) and one per street concerned
   (块: ``E0409 小区积水`` → the street's 办事处), located so that intake puts each in that street's grid;
5. the response record (``flood_responses``): the area and a summary of all the above.

Responding to the same alarm twice gives the same response (``alert_id`` is unique, and case
intake is idempotent by external id).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import shapely
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cases.intake import CaseReport, intake
from cases.model import get_case
from cim.bootstrap import stored_settings
from cim.crs import resolve_crs
from cim.crs.transform import transform_geometries
from cim.errors import ConflictError, NotFoundError, ParameterError, UserError
from scenarios.flood.routing import nearest_trucks
from scenarios.flood.setup import DEPARTMENT_CASE_CLASS, STREET_CASE_CLASS, ensure_scenario

DEFAULT_RADIUS_M = 300.0
MAX_RADIUS_M = 5000.0
#: part classes that are underground spaces (GB/T 30428.2: 0502 人防工事)
UNDERGROUND_SUBCLASSES = ("0502",)
#: how many emergency teams (抢险队) a response sends besides the pump trucks: the nearest available by road
TEAMS = 2
#: how many buildings and addresses a response lists by name (all are counted)
LISTED = 50
AREA_LEVELS = {"district": ("districts", "code"), "street": ("streets", "code"),
               "community": ("communities", "code"), "grid": ("grids", "grid_code")}
WATER_LEVEL = "water_level"


@dataclass(frozen=True)
class Trigger:
    kind: str  # alarm | warning
    title: str
    level: str | None = None
    alert_id: int | None = None
    point_code: str | None = None
    department_case_id: int | None = None  # the alarm's case, opened by sensing
    at: datetime | None = None


# --- areas (storage CRS, as WKB) --------------------------------------------------------------------


def circle(conn: Connection, x: float, y: float, radius_m: float) -> bytes:
    if not 0 < radius_m <= MAX_RADIUS_M:
        raise ParameterError("radius_m", f"radius_m must be > 0 and at most {MAX_RADIUS_M:g}, got {radius_m:g}")
    return bytes(conn.execute(sa.text("SELECT ST_AsBinary(ST_Multi(ST_Buffer(ST_MakePoint(:x, :y), :r, 16)))"),
                              {"x": x, "y": y, "r": radius_m}).scalar())


def unit_area(conn: Connection, spec: str) -> bytes:
    """``street:310104003`` (district, street, community or grid) → that unit's current polygon."""
    level, _, code = spec.partition(":")
    if level not in AREA_LEVELS or not code:
        raise ParameterError("area", f"area {spec!r}: give LEVEL:CODE with LEVEL one of {', '.join(AREA_LEVELS)} "
                                     "(e.g. street:310104003), or a polygon")
    table, column = AREA_LEVELS[level]
    wkb = conn.execute(sa.text(f"SELECT ST_AsBinary(ST_Multi(ST_Force2D(ST_Union(geom)))) FROM {table} "
                               f"WHERE valid_to IS NULL AND {column} = :c"), {"c": code}).scalar()
    if wkb is None:
        raise NotFoundError(f"area {spec!r}: no current {level} with code {code!r}")
    return bytes(wkb)


def polygon_area(conn: Connection, geometry: dict[str, Any], crs: str = "EPSG:4326") -> bytes:
    """A GeoJSON Polygon/MultiPolygon (x first) in ``crs`` → storage CRS."""
    try:
        geom = shapely.geometry.shape(geometry)
    except Exception as exc:  # shapely raises several kinds for malformed GeoJSON
        raise ParameterError("area", f"area: not a GeoJSON geometry ({exc})") from None
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
        raise ParameterError("area", f"area: a Polygon or MultiPolygon is needed, got {geom.geom_type}")
    srid = stored_settings(conn).srid
    moved = transform_geometries([geom], resolve_crs(crs), f"EPSG:{srid}")[0]
    if not shapely.is_valid(moved):
        moved = shapely.make_valid(moved)
    if not shapely.get_coordinates(moved).size or not shapely.isfinite(shapely.get_coordinates(moved)).all():
        raise ParameterError("area", f"area: its coordinates cannot be brought from {crs} to the storage CRS")
    return shapely.multipolygons(shapely.get_parts(moved)[shapely.get_type_id(shapely.get_parts(moved)) == 3]).wkb


# --- what lies in the area --------------------------------------------------------------------------


def _affected(conn: Connection, response_id: int) -> dict[str, Any]:
    p = {"id": response_id, "n": LISTED, "under": list(UNDERGROUND_SUBCLASSES)}
    area = "(SELECT area FROM flood_responses WHERE id = :id)"
    centre = f"(SELECT ST_PointOnSurface({area}))"
    compounds = [dict(r) for r in conn.execute(sa.text(f"""SELECT c.source_id, c.name, c.address, c.households,
            c.street_code, c.community_code, round(ST_Area(ST_Intersection(c.geom, a.area))::numeric, 0)::float8
                AS flooded_m2, ST_X(inside.p) AS x, ST_Y(inside.p) AS y
        FROM flood_compounds c CROSS JOIN flood_responses a
        -- a point of the compound inside its own street, where that street's case is located
        CROSS JOIN LATERAL (SELECT coalesce((SELECT ST_PointOnSurface(ST_Intersection(c.geom, s.geom)) FROM streets s
            WHERE s.valid_to IS NULL AND s.code = c.street_code LIMIT 1), ST_PointOnSurface(c.geom)) AS p) inside
        WHERE a.id = :id AND ST_Intersects(c.geom, a.area)
        ORDER BY ST_Distance(c.geom, ST_PointOnSurface(a.area)), c.source_id"""), p).mappings()]
    buildings = conn.execute(sa.text(f"""SELECT count(*) OVER () AS n, source_id, name, use, floors
        FROM buildings WHERE valid_to IS NULL AND ST_Intersects(geom, {area})
        ORDER BY ST_Distance(geom, {centre}), source_id LIMIT :n"""), p).mappings().all()
    addresses = conn.execute(sa.text(f"""SELECT count(*) OVER () AS n, source_id, standard_address, compound
        FROM addresses WHERE valid_to IS NULL AND ST_Intersects(geom, {area})
        ORDER BY ST_Distance(geom, {centre}), source_id LIMIT :n"""), p).mappings().all()
    underground = [dict(r) for r in conn.execute(sa.text(f"""SELECT object_code, part_subclass, name,
            round(ST_Z(geom)::numeric, 2)::float8 AS z FROM parts
        WHERE valid_to IS NULL AND ST_Intersects(geom, {area}) AND (part_subclass = ANY(:under) OR ST_Z(geom) < 0)
        ORDER BY object_code"""), p).mappings()]
    return {
        "compounds": compounds,
        "households": sum(c["households"] or 0 for c in compounds),
        "buildings": {"count": buildings[0]["n"] if buildings else 0,
                      "nearest": [{k: b[k] for k in ("source_id", "name", "use", "floors")} for b in buildings]},
        "addresses": {"count": addresses[0]["n"] if addresses else 0,
                      "nearest": [{k: a[k] for k in ("source_id", "standard_address", "compound")} for a in addresses]},
        "underground_parts": underground,
    }


# --- cases --------------------------------------------------------------------------------------------


def _case_summary(conn: Connection, case_id: int, role: str) -> dict[str, Any]:
    c = get_case(conn, case_id)
    return {"id": c.id, "role": role, "class_code": c.class_code, "status": c.status,
            "department_code": c.department_code, "department_name": c.department_name,
            "street_code": c.street_code, "grid_code": c.grid_code, "manual_reason": c.manual_reason}


def _push_cases(conn: Connection, response_id: int, trigger: Trigger, centre: tuple[float, float],
                compounds: list[dict[str, Any]], srid: int) -> list[dict[str, Any]]:
    channel = "iot" if trigger.kind == "alarm" else "other"
    crs = f"EPSG:{srid}"
    cases = []
    department_case = trigger.department_case_id
    if department_case is None:
        department_case = intake(conn, CaseReport(
            channel=channel, class_code=DEPARTMENT_CASE_CLASS, external_id=f"flood-{response_id}-{DEPARTMENT_CASE_CLASS}",
            description=f"{trigger.title}: 积水处置 (防汛响应 {response_id})", x=centre[0], y=centre[1], crs=crs,
            urgency="emergency", reported_at=trigger.at, attributes={"flood_response_id": response_id})).case.id
    cases.append(_case_summary(conn, department_case, "department"))
    # the streets concerned: the street of the ponding point, then those of the compounds in the area
    here = conn.execute(sa.text("SELECT code FROM streets WHERE valid_to IS NULL AND "
                                "ST_Intersects(geom, ST_SetSRID(ST_MakePoint(:x, :y), :srid)) LIMIT 1"),
                        {"x": centre[0], "y": centre[1], "srid": srid}).scalar()
    streets: dict[str, list[dict[str, Any]]] = {}
    if here is not None:
        streets[here] = []
    for c in compounds:
        if c["street_code"]:
            streets.setdefault(c["street_code"], []).append(c)
    for street, in_street in streets.items():
        # located at a compound of that street (or the ponding point), so intake puts it in the street's grid
        x, y = (in_street[0]["x"], in_street[0]["y"]) if in_street else centre
        names = "、".join(c["name"] for c in in_street) or "无小区"
        households = sum(c["households"] or 0 for c in in_street)
        case = intake(conn, CaseReport(
            channel=channel, class_code=STREET_CASE_CLASS, external_id=f"flood-{response_id}-{street}",
            description=f"{trigger.title}: 积水区域涉及小区 {names} (共 {households} 户); 请街道组织巡查、"
                        f"转移和防汛队处置 (防汛响应 {response_id})",
            x=x, y=y, crs=crs, urgency="emergency", reported_at=trigger.at,
            attributes={"flood_response_id": response_id, "street_code": street,
                        "compounds": [c["source_id"] for c in in_street]})).case
        cases.append(_case_summary(conn, case.id, "street"))
    return cases


# --- the response -------------------------------------------------------------------------------------


def respond(conn: Connection, trigger: Trigger, area_wkb: bytes, centre: tuple[float, float] | None = None,
            k: int = 5) -> dict[str, Any]:
    """Run the response for ``trigger`` over ``area_wkb`` (storage CRS) inside the caller's transaction."""
    if not 1 <= k <= 50:
        raise ParameterError("k", f"k must be between 1 and 50, got {k}")
    ensure_scenario(conn)
    srid = stored_settings(conn).srid
    response_id = conn.execute(sa.text("""INSERT INTO flood_responses (trigger, alert_id, point_code, title, level,
            area, routing, summary, created_at) VALUES (:trigger, :alert, :point, :title, :level,
            ST_SetSRID(ST_GeomFromWKB(:wkb), :srid), 'straight_line', '{}', coalesce(:at, now())) RETURNING id"""),
                               {"trigger": trigger.kind, "alert": trigger.alert_id, "point": trigger.point_code,
                                "title": trigger.title, "level": trigger.level, "wkb": area_wkb, "srid": srid,
                                "at": trigger.at}).scalar()
    if centre is None:
        centre = tuple(conn.execute(sa.text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(area) AS p "
                                            "FROM flood_responses WHERE id = :id) s"), {"id": response_id}).one())
    affected = _affected(conn, response_id)
    trucks = nearest_trucks(conn, centre[0], centre[1], k)
    teams = nearest_trucks(conn, centre[0], centre[1], TEAMS, kind="team")
    codes = [t["code"] for t in trucks["trucks"] + teams["trucks"]]
    conn.execute(sa.text("UPDATE flood_resources SET status = 'dispatched', updated_at = now() "
                         "WHERE code = ANY(:codes)"), {"codes": codes})
    cases = _push_cases(conn, response_id, trigger, centre, affected["compounds"], srid)
    lon, lat = conn.execute(sa.text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_SetSRID(ST_MakePoint("
                                    ":x, :y), :srid), 4326) AS p) s"), {"x": centre[0], "y": centre[1],
                                                                         "srid": srid}).one()
    summary = {"trigger": trigger.kind, "title": trigger.title, "level": trigger.level, "alert_id": trigger.alert_id,
               "point_code": trigger.point_code, "centre": {"lon": round(lon, 7), "lat": round(lat, 7)},
               **affected, "pump_trucks": trucks, "teams": teams, "cases": cases}
    for c in summary["compounds"]:
        c.pop("x"), c.pop("y")
    conn.execute(sa.text("UPDATE flood_responses SET summary = CAST(:s AS jsonb), routing = :routing, "
                         "case_ids = CAST(:cases AS bigint[]) WHERE id = :id"),
                 {"s": json.dumps(summary, ensure_ascii=False, default=str), "routing": trucks["method"],
                  "cases": [c["id"] for c in cases], "id": response_id})
    return get_response(conn, response_id)


def respond_to_alarm(conn: Connection, alert_id: int, k: int = 5) -> dict[str, Any]:
    """The response to a water-level alarm (the same one when asked again)."""
    existing = conn.execute(sa.text("SELECT id FROM flood_responses WHERE alert_id = :a"), {"a": alert_id}).scalar()
    if existing is not None:
        return get_response(conn, existing)
    alert = conn.execute(sa.text("""SELECT a.id, a.device_id, a.quantity, a.level, a.case_id, a.opened_at,
            a.escalated_at, a.last_value, r.name AS rule_name FROM iot_alerts a JOIN iot_rules r ON r.id = a.rule_id
        WHERE a.id = :a"""), {"a": alert_id}).mappings().first()
    if alert is None:
        raise NotFoundError(f"no alert {alert_id}")
    if alert["level"] != "alarm" or alert["quantity"] != WATER_LEVEL:
        raise ConflictError(f"alert {alert_id} is a {alert['level']} on {alert['quantity']!r}: only water-level "
                            "alarms start a flood response")
    # lock the alert so two responders (watch and a manual call) cannot both respond
    conn.execute(sa.text("SELECT id FROM iot_alerts WHERE id = :a FOR UPDATE"), {"a": alert_id})
    existing = conn.execute(sa.text("SELECT id FROM flood_responses WHERE alert_id = :a"), {"a": alert_id}).scalar()
    if existing is not None:
        return get_response(conn, existing)
    where = conn.execute(sa.text("""SELECT d.name, ST_X(coalesce(p.geom, d.geom)) AS x, ST_Y(coalesce(p.geom, d.geom))
            AS y, p.code, p.name AS point_name, p.radius_m, p.plan FROM iot_devices d
        LEFT JOIN flood_points p ON p.device_id = d.source_id
        WHERE d.source_id = :d AND d.valid_to IS NULL"""), {"d": alert["device_id"]}).mappings().first()
    if where is None:
        raise UserError(f"alert {alert_id}: device {alert['device_id']!r} is not a current IoT device")
    radius = float(where["radius_m"] or DEFAULT_RADIUS_M)
    title = (f"积水报警 {where['point_name'] or where['name'] or alert['device_id']}: "
             f"水位 {alert['last_value']:g} m" if alert["last_value"] is not None else "积水报警")
    trigger = Trigger("alarm", title, "alarm", alert_id, where["code"], alert["case_id"],
                      alert["escalated_at"] or alert["opened_at"])
    return respond(conn, trigger, circle(conn, where["x"], where["y"], radius), (where["x"], where["y"]), k)


def pending_alarms(conn: Connection, since_hours: float = 24.0) -> list[int]:
    """Water-level alarms opened (or escalated) in the last ``since_hours`` that have no response yet."""
    return list(conn.execute(sa.text("""SELECT a.id FROM iot_alerts a
        WHERE a.level = 'alarm' AND a.quantity = :q
          AND coalesce(a.escalated_at, a.opened_at) >= now() - make_interval(secs => :s)
          AND NOT EXISTS (SELECT 1 FROM flood_responses f WHERE f.alert_id = a.id)
        ORDER BY coalesce(a.escalated_at, a.opened_at), a.id"""), {"q": WATER_LEVEL, "s": since_hours * 3600}).scalars())


def respond_pending(engine: Engine, since_hours: float = 24.0, k: int = 5) -> list[dict[str, Any]]:
    """Respond to every pending water-level alarm, each in its own transaction."""
    with engine.connect() as conn:
        ids = pending_alarms(conn, since_hours)
    out = []
    for alert_id in ids:
        with engine.begin() as conn:
            out.append(respond_to_alarm(conn, alert_id, k))
    return out


def declare_warning(conn: Connection, *, area: str | dict[str, Any] | None = None, crs: str = "EPSG:4326",
                    lon: float | None = None, lat: float | None = None, radius_m: float = DEFAULT_RADIUS_M,
                    level: str | None = None, title: str | None = None, k: int = 5) -> dict[str, Any]:
    """A warning declared for an area: ``area`` as ``LEVEL:CODE`` or a GeoJSON polygon in ``crs``, or a
    circle of ``radius_m`` around (``lon``, ``lat``) in ``crs``."""
    srid = stored_settings(conn).srid
    if area is not None and lon is not None:
        raise ParameterError("area", "give an area or a point (lon, lat), not both")
    if isinstance(area, str):
        wkb, centre = unit_area(conn, area.strip()), None
    elif isinstance(area, dict):
        wkb, centre = polygon_area(conn, area, crs), None
    elif lon is not None and lat is not None:
        x, y = transform_geometries([shapely.Point(lon, lat)], resolve_crs(crs), f"EPSG:{srid}")[0].coords[0]
        wkb, centre = circle(conn, x, y, radius_m), (x, y)
    else:
        raise ParameterError("area", "give the warning's area (LEVEL:CODE or a polygon) or a point (lon, lat)")
    name = title or f"{level or '暴雨'}预警" + (f" {area}" if isinstance(area, str) else "")
    return respond(conn, Trigger("warning", name, level), wkb, centre, k)


def get_response(conn: Connection, response_id: int) -> dict[str, Any]:
    row = conn.execute(sa.text("""SELECT id, trigger, alert_id, point_code, title, level, routing, summary, case_ids,
            created_at, closed_at, ST_AsGeoJSON(ST_Transform(area, 4326), 7)::json AS area
        FROM flood_responses WHERE id = :id"""), {"id": response_id}).mappings().first()
    if row is None:
        raise NotFoundError(f"no flood response {response_id}")
    out = dict(row)
    out["case_ids"] = list(out["case_ids"])
    return out


def list_responses(conn: Connection, active: bool | None = None, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(sa.text("""SELECT id, trigger, alert_id, point_code, title, level, routing, case_ids,
            created_at, closed_at, jsonb_array_length(summary -> 'compounds') AS compounds
        FROM flood_responses WHERE CAST(:active AS boolean) IS NULL OR (closed_at IS NULL) = :active
        ORDER BY id DESC LIMIT :limit"""), {"active": active, "limit": limit}).mappings()
    return [{**dict(r), "case_ids": list(r["case_ids"])} for r in rows]


def close_response(conn: Connection, response_id: int) -> dict[str, Any]:
    """The water is gone: the response closes and its trucks are available again."""
    response = get_response(conn, response_id)
    if response["closed_at"] is not None:
        raise ConflictError(f"flood response {response_id} is already closed")
    summary = response["summary"]
    codes = [t["code"] for t in summary["pump_trucks"]["trucks"] + summary.get("teams", {}).get("trucks", [])]
    conn.execute(sa.text("UPDATE flood_resources SET status = 'available', updated_at = now() "
                         "WHERE code = ANY(:codes) AND status = 'dispatched'"), {"codes": codes})
    conn.execute(sa.text("UPDATE flood_responses SET closed_at = now() WHERE id = :id"), {"id": response_id})
    return get_response(conn, response_id)
