"""Loaders of the water-logging scenario's layers: roads, residential compounds (小区), ponding-prone
and monitoring points with their plans, and pump trucks and teams.

Files are read by the platform's one reader (:mod:`ingest.read`: any OGR format, GeoParquet, or CSV
with ``lon``/``lat`` columns) and brought to the storage CRS by :mod:`cim.crs`. A load is all or
nothing: every problem names the file, the row and the field, and nothing is written when there is
one. Loads are upserts by the layer's key, except roads, which are replaced as a whole (the routable
network is rebuilt from them). The GPS units of trucks and teams are IoT devices, loaded by the
ordinary ``iot-devices`` loader; their positions then arrive as readings (quantities ``lon``/``lat``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cim.bootstrap import stored_settings
from cim.crs import resolve_crs
from cim.crs.transform import transform_geometries
from cim.errors import UserError
from cim.readings import quantity_specs
from ingest.read import ReadOptions, open_source
from ingest.run import IngestOptions, ingest_files
from scenarios.flood.topology import build_network
from sensing.intake import store_batch
from sensing.rules import RuleSpec, add_rule, remove_rule

LAYERS = ("roads", "compounds", "points", "resource-devices", "resources")
POINT_KINDS = ("ponding_prone", "monitoring")
RESOURCE_KINDS = ("pump_truck", "team")
RESOURCE_STATUSES = ("available", "dispatched", "maintenance")
#: the case class an alarm of a monitoring point's rule opens (the department of 条: 水务)
ALARM_CASE_CLASS = "E0401"
MAX_LISTED = 10


class LoadError(UserError):
    """A file that cannot be loaded as given; the message lists the rows and fields at fault."""


@dataclass
class Row:
    number: int  # 1-based row (feature) number in the file
    values: dict[str, Any]
    geom: Any  # shapely geometry in the storage CRS, or None


class Problems:
    """Problems of one file, each naming its row and field; raised together."""

    def __init__(self, path: Path) -> None:
        self.path, self.items = path, []

    def add(self, row: int, field: str, why: str) -> None:
        self.items.append(f"row {row}: {field}: {why}")

    def raise_any(self) -> None:
        if self.items:
            more = f" (and {len(self.items) - MAX_LISTED} more)" if len(self.items) > MAX_LISTED else ""
            raise LoadError(f"{self.path}: {len(self.items)} problem(s), nothing loaded: "
                            + "; ".join(self.items[:MAX_LISTED]) + more)


def _clean(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_rows(path: Path, crs: str | None, srid: int, point_columns: bool = False) -> Iterator[Row]:
    """The file's rows with lower-cased column names and geometries in the storage CRS."""
    options = ReadOptions(x="lon", y="lat") if point_columns and path.suffix.lower() == ".csv" else ReadOptions()
    source = open_source(path, options)
    src = crs or source.declared_crs
    if src is None and source.format != "CSV":
        raise LoadError(f"{path}: the file declares no CRS: pass --crs (e.g. EPSG:4326)")
    for batch in source.batches:
        geoms = batch.geometry
        if geoms is not None and src is not None:
            present = np.array([g is not None for g in geoms], dtype=bool)
            moved = np.array(geoms, dtype=object)
            if present.any():
                moved[present] = transform_geometries(moved[present], resolve_crs(src), f"EPSG:{srid}")
            geoms = moved
        columns = [str(c).lower() for c in batch.attributes.columns]
        for i, record in enumerate(batch.attributes.itertuples(index=False)):
            values = {c: _clean(v) for c, v in zip(columns, record)}
            geom = None if geoms is None else geoms[i]
            if i in batch.errors:
                values["__geometry_error__"] = batch.errors[i]
            yield Row(int(batch.rows[i]), values, geom)


def _srid(conn: Connection) -> int:
    settings = stored_settings(conn)
    if settings is None:
        raise UserError("the city base is not initialised: run 'cim init'")
    return settings.srid


def _number(problems: Problems, row: Row, field: str, *, required: bool = False, minimum: float | None = None,
            positive: bool = False) -> float | None:
    value = row.values.get(field)
    if value is None:
        if required:
            problems.add(row.number, field, "missing")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.add(row.number, field, f"{value!r} is not a number")
        return None
    if not math.isfinite(number) or (positive and number <= 0) or (minimum is not None and number < minimum):
        problems.add(row.number, field, f"{value!r} is out of range" + (" (must be > 0)" if positive else ""))
        return None
    return number


def _text(problems: Problems, row: Row, field: str, *, required: bool = False) -> str | None:
    value = row.values.get(field)
    if value is None and required:
        problems.add(row.number, field, "missing")
    return None if value is None else str(value)


def _geometry(problems: Problems, row: Row, kinds: tuple[str, ...]) -> Any:
    if "__geometry_error__" in row.values:
        problems.add(row.number, "geometry", row.values["__geometry_error__"])
        return None
    geom = row.geom
    if geom is None or geom.is_empty:
        problems.add(row.number, "geometry", "missing")
        return None
    if geom.geom_type not in kinds:
        problems.add(row.number, "geometry", f"a {geom.geom_type}, expected {' or '.join(kinds)}")
        return None
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        problems.add(row.number, "geometry", "coordinates cannot be brought to the storage CRS (wrong --crs?)")
        return None
    return shapely.force_2d(geom)


# --- roads ------------------------------------------------------------------------------------------


def load_roads(conn: Connection, path: Path, crs: str | None = None) -> dict[str, Any]:
    """Replace the roads with the file's lines and rebuild the routable network."""
    srid = _srid(conn)
    problems, rows = Problems(path), []
    for row in read_rows(path, crs, srid):
        geom = _geometry(problems, row, ("LineString", "MultiLineString"))
        if geom is None:
            continue
        key = _text(problems, row, "source_id") or _text(problems, row, "road_code") or f"row-{row.number}"
        parts = list(getattr(geom, "geoms", [geom]))
        for j, part in enumerate(parts):
            if part.length <= 0:
                problems.add(row.number, "geometry", "a line of length 0")
                continue
            rows.append({"source_id": key if len(parts) == 1 else f"{key}#{j + 1}", "name": row.values.get("name"),
                         "road_code": _text(problems, row, "road_code"), "wkb": part.wkb, "srid": srid})
    keys = [r["source_id"] for r in rows]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        problems.add(keys.index(dup) + 1, "source_id", f"{dup!r} appears more than once")
    problems.raise_any()
    if not rows:
        raise LoadError(f"{path}: no roads in the file")
    conn.execute(sa.text("DELETE FROM flood_road_edges"))
    conn.execute(sa.text("DELETE FROM flood_road_vertices"))
    conn.execute(sa.text("DELETE FROM flood_roads"))
    conn.execute(sa.text("INSERT INTO flood_roads (source_id, name, road_code, geom) "
                         "VALUES (:source_id, :name, :road_code, ST_SetSRID(ST_GeomFromWKB(:wkb), :srid))"), rows)
    network = build_network(conn)
    return {"layer": "roads", "file": str(path), "roads": len(rows), **network}


# --- compounds --------------------------------------------------------------------------------------


def load_compounds(conn: Connection, path: Path, crs: str | None = None) -> dict[str, Any]:
    """Residential compounds (小区): ``source_id``, ``name``, optional ``address``, ``households``."""
    srid = _srid(conn)
    problems, rows = Problems(path), []
    for row in read_rows(path, crs, srid):
        geom = _geometry(problems, row, ("Polygon", "MultiPolygon"))
        source_id = _text(problems, row, "source_id", required=True)
        name = _text(problems, row, "name", required=True)
        households = _number(problems, row, "households", minimum=0)
        if geom is None or source_id is None or name is None:
            continue
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            geom = shapely.multipolygons(shapely.get_parts(geom)[shapely.get_type_id(shapely.get_parts(geom)) == 3])
        rows.append({"source_id": source_id, "name": name, "address": row.values.get("address"),
                     "households": None if households is None else int(households),
                     "wkb": shapely.multipolygons([geom]).wkb if geom.geom_type == "Polygon" else geom.wkb,
                     "srid": srid})
    problems.raise_any()
    conn.execute(sa.text("""INSERT INTO flood_compounds (source_id, name, address, households, geom)
        VALUES (:source_id, :name, :address, :households, ST_SetSRID(ST_GeomFromWKB(:wkb), :srid))
        ON CONFLICT (source_id) DO UPDATE SET name = EXCLUDED.name, address = EXCLUDED.address,
            households = EXCLUDED.households, geom = EXCLUDED.geom, loaded_at = now()"""), rows)
    # the street and community a compound belongs to: those holding the largest part of it
    conn.execute(sa.text("""UPDATE flood_compounds c SET street_code = s.code, community_code = m.code
        FROM flood_compounds c2
        LEFT JOIN LATERAL (SELECT code FROM streets WHERE valid_to IS NULL AND ST_Intersects(geom, c2.geom)
            ORDER BY ST_Area(ST_Intersection(geom, c2.geom)) DESC, code LIMIT 1) s ON true
        LEFT JOIN LATERAL (SELECT code FROM communities WHERE valid_to IS NULL AND ST_Intersects(geom, c2.geom)
            ORDER BY ST_Area(ST_Intersection(geom, c2.geom)) DESC, code LIMIT 1) m ON true
        WHERE c.id = c2.id AND c2.source_id = ANY(:ids)"""), {"ids": [r["source_id"] for r in rows]})
    return {"layer": "compounds", "file": str(path), "compounds": len(rows)}


# --- points -----------------------------------------------------------------------------------------


def _device_quantities(conn: Connection, device_ids: list[str]) -> dict[str, dict[str, dict]]:
    rows = conn.execute(sa.text("SELECT source_id, quantities FROM iot_devices WHERE valid_to IS NULL "
                                "AND source_id = ANY(:ids)"), {"ids": device_ids}).all()
    return {d: quantity_specs(q) for d, q in rows}


def rule_name(code: str) -> str:
    """The threshold rule a monitoring point's alarm depth becomes."""
    return f"防汛 {code}"


def _sync_rule(conn: Connection, code: str, device_id: str, alarm_m: float) -> None:
    """One water-level rule per monitoring point: warning at 80 % of the alarm depth; its alarm opens a
    道路积水 case (sensing's case link), which the flood response takes as the 条's case."""
    name = rule_name(code)
    spec = RuleSpec(name=name, quantity="water_level", device_id=device_id, direction="above",
                    warning=round(alarm_m * 0.8, 4), alarm=alarm_m, hysteresis=round(alarm_m * 0.1, 4),
                    case_class=ALARM_CASE_CLASS)
    current = conn.execute(sa.text("SELECT id, device_id, alarm FROM iot_rules WHERE name = :n AND removed_at IS NULL"),
                           {"n": name}).first()
    if current is not None:
        if current.device_id == device_id and current.alarm == alarm_m:
            return
        remove_rule(conn, current.id)
    add_rule(conn, spec)


def load_points(conn: Connection, path: Path, crs: str | None = None) -> dict[str, Any]:
    """Ponding-prone (易积水点) and monitoring points: ``code``, ``name``, ``kind``, optional
    ``location_type`` (道路, 下立交, 小区 …), ``device_id`` and ``alarm_m`` (monitoring: the water-level
    device and the depth that is an alarm), ``radius_m`` (the ponding area around it), ``plan``."""
    srid = _srid(conn)
    problems, rows = Problems(path), []
    parsed = list(read_rows(path, crs or "EPSG:4326", srid, point_columns=True))
    devices = _device_quantities(conn, sorted({str(r.values["device_id"]) for r in parsed
                                               if r.values.get("device_id") is not None}))
    for row in parsed:
        geom = _geometry(problems, row, ("Point",))
        code = _text(problems, row, "code", required=True)
        name = _text(problems, row, "name", required=True)
        kind = _text(problems, row, "kind", required=True)
        if kind is not None and kind not in POINT_KINDS:
            problems.add(row.number, "kind", f"{kind!r} is not one of {', '.join(POINT_KINDS)}")
        device = _text(problems, row, "device_id", required=kind == "monitoring")
        alarm = _number(problems, row, "alarm_m", positive=True)
        radius = _number(problems, row, "radius_m", positive=True)
        if device is not None:
            if device not in devices:
                problems.add(row.number, "device_id", f"{device!r} is not a current IoT device")
            elif "water_level" not in devices[device]:
                problems.add(row.number, "device_id", f"{device!r} does not measure water_level")
        if None in (geom, code, name, kind) or problems.items:
            continue
        rows.append({"code": code, "name": name, "kind": kind, "location_type": row.values.get("location_type"),
                     "device_id": device, "alarm_m": alarm, "radius_m": radius or 300.0,
                     "plan": row.values.get("plan"), "x": geom.x, "y": geom.y, "srid": srid})
    problems.raise_any()
    conn.execute(sa.text("""INSERT INTO flood_points (code, name, kind, location_type, device_id, alarm_m, radius_m,
            plan, geom) VALUES (:code, :name, :kind, :location_type, :device_id, :alarm_m, :radius_m, :plan,
            ST_SetSRID(ST_MakePoint(:x, :y), :srid))
        ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
            location_type = EXCLUDED.location_type, device_id = EXCLUDED.device_id, alarm_m = EXCLUDED.alarm_m,
            radius_m = EXCLUDED.radius_m, plan = EXCLUDED.plan, geom = EXCLUDED.geom"""), rows)
    conn.execute(sa.text("""UPDATE flood_points p SET grid_code = g.grid_code, street_code = g.street_code
        FROM grids g WHERE g.valid_to IS NULL AND ST_Intersects(g.geom, p.geom) AND p.code = ANY(:codes)"""),
                 {"codes": [r["code"] for r in rows]})
    rules = 0
    for r in rows:
        if r["device_id"] and r["alarm_m"]:
            _sync_rule(conn, r["code"], r["device_id"], r["alarm_m"])
            rules += 1
    return {"layer": "points", "file": str(path), "points": len(rows), "rules": rules}


# --- resources --------------------------------------------------------------------------------------


def load_resources(conn: Connection, path: Path, crs: str | None = None, at: datetime | None = None) -> dict[str, Any]:
    """Pump trucks and teams: ``code``, ``kind`` (pump_truck | team), ``name``, optional ``team``,
    ``capacity_m3h``, ``status``, and ``device_id``: their GPS unit, a current IoT device measuring
    ``lon`` and ``lat``. A row with ``lon``/``lat`` also sends that position as a GPS fix at ``at``
    (default now) through the readings intake — the same path as any live fix."""
    srid = _srid(conn)
    problems, rows, fixes = Problems(path), [], []
    parsed = list(read_rows(path, crs or "EPSG:4326", srid, point_columns=True))
    devices = _device_quantities(conn, sorted({str(r.values["device_id"]) for r in parsed
                                               if r.values.get("device_id") is not None}))
    when = (at or datetime.now().astimezone()).isoformat()
    for row in parsed:
        code = _text(problems, row, "code", required=True)
        name = _text(problems, row, "name", required=True)
        kind = _text(problems, row, "kind", required=True)
        if kind is not None and kind not in RESOURCE_KINDS:
            problems.add(row.number, "kind", f"{kind!r} is not one of {', '.join(RESOURCE_KINDS)}")
        status = _text(problems, row, "status") or "available"
        if status not in RESOURCE_STATUSES:
            problems.add(row.number, "status", f"{status!r} is not one of {', '.join(RESOURCE_STATUSES)}")
        capacity = _number(problems, row, "capacity_m3h", minimum=0)
        device = _text(problems, row, "device_id", required=True)
        if device is not None:
            if device not in devices:
                problems.add(row.number, "device_id", f"{device!r} is not a current IoT device (load its GPS unit "
                                                      "as an iot-devices feature first)")
            elif not {"lon", "lat"} <= set(devices[device]):
                problems.add(row.number, "device_id", f"{device!r} does not measure lon and lat")
        if None in (code, name, kind, device):
            continue
        rows.append({"code": code, "kind": kind, "name": name, "team": row.values.get("team"),
                     "capacity": capacity, "device_id": device, "status": status})
        lon, lat = row.values.get("lon"), row.values.get("lat")
        if lon is not None and lat is not None:
            fixes += [{"device_id": device, "time": when, "quantity": "lon", "value": lon, "unit": None},
                      {"device_id": device, "time": when, "quantity": "lat", "value": lat, "unit": None}]
    problems.raise_any()
    conn.execute(sa.text("""INSERT INTO flood_resources (code, kind, name, team, capacity_m3h, device_id, status)
        VALUES (:code, :kind, :name, :team, :capacity, :device_id, :status)
        ON CONFLICT (code) DO UPDATE SET kind = EXCLUDED.kind, name = EXCLUDED.name, team = EXCLUDED.team,
            capacity_m3h = EXCLUDED.capacity_m3h, device_id = EXCLUDED.device_id, status = EXCLUDED.status,
            updated_at = now()"""), rows)
    stored = store_batch(conn, pd.DataFrame(fixes, columns=["device_id", "time", "quantity", "value", "unit"]),
                         evaluate=False).as_dict() if fixes else None
    return {"layer": "resources", "file": str(path), "resources": len(rows),
            "gps_fixes": stored["stored"] if stored else 0}


def load_resource_devices(engine: Engine, path: Path, crs: str | None = None) -> dict[str, Any]:
    """The GPS units of trucks and teams, through the ordinary ``iot-devices`` loader (upsert)."""
    report = ingest_files("iot-devices", [path], IngestOptions(crs=crs, operator="cim scenarios flood"), engine)
    return {"layer": "resource-devices", "file": str(path), **report.as_dict()}


def load_layer(engine: Engine, layer: str, path: Path, crs: str | None = None) -> dict[str, Any]:
    """Load one of :data:`LAYERS` from ``path`` (one transaction)."""
    if layer not in LAYERS:
        raise UserError(f"unknown flood layer {layer!r}; layers: {', '.join(LAYERS)}")
    if layer == "resource-devices":
        return load_resource_devices(engine, path, crs)
    loader = {"roads": load_roads, "compounds": load_compounds, "points": load_points,
              "resources": load_resources}[layer]
    with engine.begin() as conn:
        return loader(conn, path, crs)
