"""What the model scores, read set-based: the dossiers joined with their current buildings (height and
completion year fall back to the building's when the dossier has none), the tilt/wind alerts of the
buildings' sensors (live sensing: ``iot_alerts`` of devices whose ``linked_feature`` is the building)
and the glass-breakage cases reported near each building (the case loop). Four statements, one frame.
"""
from __future__ import annotations

import io
from datetime import date, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.times import day_start, next_day

from scenarios.curtain_wall.model import Model

RECORDS_SQL = """
SELECT r.building_source_id AS building, b.name, b.district_code, b.street_code, b.community_code, b.grid_code,
       b.source_id IS NOT NULL AS building_current, r.owner, r.wall_area_m2, r.support_type, r.glass_type,
       r.sealant_type, r.sealant_year, coalesce(r.height_m, b.height) AS height,
       r.height_m IS NULL AND b.height IS NOT NULL AS height_from_building,
       coalesce(r.completion_year, b.year_built) AS completion_year,
       r.completion_year IS NULL AND b.year_built IS NOT NULL AS completion_from_building,
       r.design_life_years, r.last_inspection_date, r.last_inspection_findings, r.last_sealant_sampling_date,
       r.breakage_count, r.last_breakage_date, r.last_storm_date, r.last_fire_date, r.last_appraisal_date,
       r.wind_exposure, r.use_below
FROM curtain_wall_records r
LEFT JOIN buildings b ON b.source_id = r.building_source_id AND b.valid_to IS NULL
{where}"""

# devices watching a building for one of the quantities, and their level/rate alerts alive in the window
SENSOR_SQL = """
SELECT d.linked_feature AS building, count(DISTINCT a.id) AS sensor_alerts
FROM iot_devices d
LEFT JOIN (iot_alerts a JOIN iot_rules ru ON ru.id = a.rule_id AND ru.kind <> 'offline')
  ON a.device_id = d.source_id AND a.quantity = ANY(:q) AND a.opened_at < :until
 AND (a.opened_at >= :since OR a.cleared_at IS NULL OR a.cleared_at >= :since)
WHERE d.valid_to IS NULL AND d.linked_feature IS NOT NULL
  AND EXISTS (SELECT 1 FROM jsonb_array_elements(d.quantities) x WHERE x ->> 'quantity' = ANY(:q))
GROUP BY d.linked_feature"""

# breakage cases near each dossier's building: not merged, not refused, not this scenario's own pushes
NEARBY_SQL = """
SELECT b.source_id AS building, count(DISTINCT c.id) AS breakage_nearby
FROM cases c
JOIN buildings b ON b.valid_to IS NULL AND ST_DWithin(b.geom, c.geom, :r)
JOIN curtain_wall_records r ON r.building_source_id = b.source_id
WHERE c.class_code IN (SELECT code FROM case_classes WHERE code = :cls OR name = :cls)
  AND c.reported_at >= :since AND c.reported_at < :until AND c.status NOT IN ('merged', 'not_registered')
  AND NOT EXISTS (SELECT 1 FROM curtain_wall_pushes p WHERE p.case_id = c.id)
GROUP BY b.source_id"""

NUMBER_COLUMNS = ("sealant_year", "completion_year", "design_life_years", "breakage_count", "height", "wall_area_m2")
DATE_COLUMNS = ("last_inspection_date", "last_sealant_sampling_date", "last_breakage_date", "last_storm_date",
                "last_fire_date", "last_appraisal_date")


#: the dossier frame's text and flag columns (the rest are numbers or dates)
TEXT_COLUMNS = ("building", "name", "district_code", "street_code", "community_code", "grid_code", "owner",
                "support_type", "glass_type", "sealant_type", "last_inspection_findings", "wind_exposure", "use_below")
FLAG_COLUMNS = ("building_current", "height_from_building", "completion_from_building")


def _dossiers(conn: Connection, buildings: list[str] | None) -> pd.DataFrame:
    """The dossiers joined with their buildings, through COPY and pandas' CSV reader: parsing 13,000 rows
    of dates and numbers that way is several times faster than building Python objects row by row."""
    cur = conn.connection.dbapi_connection.cursor()
    where = "WHERE r.building_source_id = ANY(%s)" if buildings is not None else ""
    query = cur.mogrify(RECORDS_SQL.format(where=where), (buildings,) if buildings is not None else None)
    buffer = io.BytesIO()
    cur.copy_expert(b"COPY (" + query + b") TO STDOUT WITH (FORMAT csv, HEADER true)", buffer)
    buffer.seek(0)
    frame = pd.read_csv(buffer, dtype={c: object for c in TEXT_COLUMNS}, keep_default_na=False,
                        na_values={c: [""] for c in (*TEXT_COLUMNS, *FLAG_COLUMNS, *NUMBER_COLUMNS, *DATE_COLUMNS)})
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    for column in FLAG_COLUMNS:
        frame[column] = frame[column].eq("t")
    return frame


def read_inputs(conn: Connection, model: Model, as_of: date, buildings: list[str] | None = None,
                counts: bool = True) -> pd.DataFrame:
    """One row per dossier (optionally only ``buildings``), with the sensed and nearby counts as of the end
    of ``as_of`` (left at 0 without ``counts``: the schedule needs none). ``sensed`` says whether any
    tilt/wind sensor watches the building."""
    frame = _dossiers(conn, buildings)
    until = day_start(next_day(as_of, "as_of"))
    frame["sensed"] = False
    frame["sensor_alerts"] = 0
    sensors = model.factor("sensor_alerts")
    if sensors is not None and counts and not frame.empty:
        since = until - timedelta(days=int(sensors.params["window_days"]))
        rows = conn.execute(sa.text(SENSOR_SQL), {"q": list(sensors.params["quantities"]), "since": since,
                                                  "until": until}).all()
        alerts = dict(rows)
        frame["sensed"] = frame["building"].isin(alerts)
        frame["sensor_alerts"] = frame["building"].map(alerts).fillna(0).astype(int)
    frame["breakage_nearby"] = 0
    nearby = model.factor("breakage_nearby")
    if nearby is not None and counts and not frame.empty:
        since = until - timedelta(days=int(nearby.params["window_days"]))
        rows = conn.execute(sa.text(NEARBY_SQL), {"r": nearby.params["radius_m"], "cls": nearby.params["case_class"],
                                                  "since": since, "until": until}).all()
        frame["breakage_nearby"] = frame["building"].map(dict(rows)).fillna(0).astype(int)
    for column in DATE_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], format="%Y-%m-%d")
    for column in NUMBER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame
