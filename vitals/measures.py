"""How each computed vital sign is measured from the platform's own data: the one place that knows.

A :class:`Measure` is a SQL source — one row per counted thing (a part, a pipeline segment, a
device, a case, a grid …) carrying its ``district_code``, ``street_code`` and ``grid_code`` — with the
aggregates of a numerator (and denominator) over it and the kind of value they make: a share in per
cent, a density per km² of the area, a count or a sum. :mod:`vitals.compute` wraps it into one
statement that computes every area of every requested level at once (``GROUPING SETS``).

Everything is read *as of* the computation's time ``:at``: the version of a feature valid then, alerts
open then, cases reported (and not yet closed) by then, readings in the window before it — so a
computation for a past time (``cim vitals compute --at``) says what the platform knew of that time.

The case-loop rates (结案率, 按期结案率, 返工率, 延期率, time to close) are not re-defined here: they are
those of :func:`cases.evaluation.evaluate` (综合评价), over the cases registered in the window before
``:at`` (see :data:`EVALUATION`).
"""
from __future__ import annotations

from dataclasses import dataclass

#: kinds of value and the SQL that makes one from ``k.num``, ``k.den`` and the area's ``a.km2``
KINDS = {
    "share": "100.0 * coalesce(k.num, 0) / NULLIF(k.den, 0)",  # per cent of the denominator
    "per_km2": "coalesce(k.num, 0) / NULLIF(a.km2, 0)",    # per km² of the area
    "count": "coalesce(k.num, 0)",                          # a count (0 where nothing was found)
    "sum": "coalesce(k.num, 0)",                            # a total (0 where nothing was found)
}


@dataclass(frozen=True)
class Measure:
    name: str
    kind: str
    source: str
    num: str
    den: str = "NULL::float8"
    doc: str = ""


def _valid(table: str) -> str:
    """The version of a feature of ``table`` valid at ``:at``."""
    return f"{table}.valid_from <= :at AND ({table}.valid_to IS NULL OR {table}.valid_to > :at)"


_AREA = "{t}.district_code, {t}.street_code, {t}.grid_code"
PART_FAULTY = "('破损', '丢失')"

# --- sources ------------------------------------------------------------------------------------------
PARTS = f"SELECT {_AREA.format(t='parts')}, parts.status, parts.part_class, parts.part_subclass FROM parts " \
        f"WHERE {_valid('parts')}"
PIPELINES = (f"SELECT {_AREA.format(t='pipelines')}, pipelines.kind, pipelines.year_laid, "
             "ST_Length(pipelines.geom) / 1000.0 AS km, "
             "(pipelines.start_depth IS NULL AND pipelines.end_depth IS NULL) AS depth_unknown, "
             "pipelines.year_laid <= date_part('year', CAST(:at AS timestamptz) AT TIME ZONE 'Asia/Shanghai') - 30 "
             "AS over_30 FROM pipelines "
             f"WHERE {_valid('pipelines')}")
BUILDINGS = (f"SELECT {_AREA.format(t='buildings')}, buildings.use, buildings.structure, buildings.year_built, "
             "buildings.year_built <= date_part('year', CAST(:at AS timestamptz) AT TIME ZONE 'Asia/Shanghai') - 50 "
             f"AS over_50 FROM buildings WHERE {_valid('buildings')}")
# 上海市建筑玻璃幕墙管理办法: a full inspection at least every five years; a 25-year design life
CURTAIN_WALLS = (f"SELECT {_AREA.format(t='cw')}, "
                 "(cw.last_inspection_date IS NULL OR cw.last_inspection_date < "
                 "CAST((CAST(:at AS timestamptz) AT TIME ZONE 'Asia/Shanghai') - interval '5 years' AS date)) "
                 "AS inspection_overdue, cw.inspection_result IN ('不合格', '需整改') AS failed, "
                 "cw.year_installed <= date_part('year', CAST(:at AS timestamptz) AT TIME ZONE 'Asia/Shanghai') - 25 "
                 "AS over_design_life FROM curtain_walls cw "
                 "WHERE cw.valid_from <= :at AND (cw.valid_to IS NULL OR cw.valid_to > :at)")
#: devices with an alert of a level or rate rule at the alarm level at ``:at`` (offline is not an alarm
#: of what the device measures)
_ALARMED = ("SELECT DISTINCT a.device_id FROM iot_alerts a JOIN iot_rules r ON r.id = a.rule_id "
            "WHERE r.kind <> 'offline' AND a.level = 'alarm' AND coalesce(a.escalated_at, a.opened_at) <= :at "
            "AND (a.cleared_at IS NULL OR a.cleared_at > :at)")
#: devices that sent any reading in the window before ``:at``
_REPORTING = ("SELECT DISTINCT r.device_id FROM iot_readings r "
              "WHERE r.time > CAST(:at AS timestamptz) - CAST(:window AS interval) AND r.time <= :at")
DEVICES = (f"SELECT {_AREA.format(t='d')}, d.device_type, al.device_id IS NOT NULL AS alarmed FROM iot_devices d "
           f"LEFT JOIN ({_ALARMED}) al ON al.device_id = d.source_id "
           "WHERE d.valid_from <= :at AND (d.valid_to IS NULL OR d.valid_to > :at)")
DEVICES_REPORTING = (f"SELECT {_AREA.format(t='d')}, rp.device_id IS NOT NULL AS reporting FROM iot_devices d "
                     f"LEFT JOIN ({_REPORTING}) rp ON rp.device_id = d.source_id "
                     "WHERE d.valid_from <= :at AND (d.valid_to IS NULL OR d.valid_to > :at)")
#: alarms active at ``:at`` (one row per alert), placed where their device is
ALARMS = (f"SELECT {_AREA.format(t='d')} FROM iot_alerts a JOIN iot_rules r ON r.id = a.rule_id "
          "JOIN iot_devices d ON d.source_id = a.device_id AND d.valid_from <= :at "
          "AND (d.valid_to IS NULL OR d.valid_to > :at) "
          "WHERE r.kind <> 'offline' AND a.level = 'alarm' AND coalesce(a.escalated_at, a.opened_at) <= :at "
          "AND (a.cleared_at IS NULL OR a.cleared_at > :at)")
_CASE_COUNTED = "c.status NOT IN ('merged', 'not_registered')"
#: cases reported in the window before ``:at``
CASES_REPORTED = (f"SELECT {_AREA.format(t='c')}, c.class_code, c.channel FROM cases c "
                  "WHERE c.reported_at > CAST(:at AS timestamptz) - CAST(:window AS interval) "
                  f"AND c.reported_at <= :at AND {_CASE_COUNTED}")
#: cases registered by ``:at`` and not closed by then
CASES_OPEN = (f"SELECT {_AREA.format(t='c')}, c.urgency, c.due_at < :at AS overdue FROM cases c "
              "WHERE c.registered_at <= :at AND (c.closed_at IS NULL OR c.closed_at > :at) "
              f"AND {_CASE_COUNTED}")
GRIDS = ("SELECT g.district_code, g.street_code, g.grid_code, "
         "NOT EXISTS (SELECT 1 FROM grid_posts gp WHERE gp.grid_code = g.grid_code) AS no_chain FROM grids g "
         f"WHERE {_valid('g')}")
ADDRESSES = f"SELECT {_AREA.format(t='addresses')} FROM addresses WHERE {_valid('addresses')}"


def _parts_share(name: str, where: str, doc: str) -> Measure:
    """Share of the current parts selected by ``where`` that are damaged or missing (破损, 丢失)."""
    return Measure(name, "share", PARTS, f"count(*) FILTER (WHERE {where} AND status IN {PART_FAULTY})",
                   f"count(*) FILTER (WHERE {where})", doc)


def _pipes_old_share(name: str, kinds: str, doc: str) -> Measure:
    return Measure(name, "share", PIPELINES, f"sum(km) FILTER (WHERE kind IN {kinds} AND over_30)",
                   f"sum(km) FILTER (WHERE kind IN {kinds} AND year_laid IS NOT NULL)", doc)


def _alarm_share(name: str, device_type: str, doc: str) -> Measure:
    return Measure(name, "share", DEVICES, f"count(*) FILTER (WHERE device_type = '{device_type}' AND alarmed)",
                   f"count(*) FILTER (WHERE device_type = '{device_type}')", doc)


def _alarm_count(name: str, device_type: str, doc: str) -> Measure:
    return Measure(name, "count", DEVICES, f"count(*) FILTER (WHERE device_type = '{device_type}' AND alarmed)",
                   doc=doc)


def _cases_per_km2(name: str, classes: str, doc: str) -> Measure:
    return Measure(name, "per_km2", CASES_REPORTED, f"count(*) FILTER (WHERE {classes})", doc=doc)


MANHOLES = "part_subclass IN ('0101','0102','0103','0104','0105','0106','0107','0108','0109','0115','0116')"

_MEASURES = (
    # 基础设施
    _parts_share("parts_faulty_share", "true", "部件 damaged or missing, of all current parts"),
    Measure("parts_damaged_share", "share", PARTS, "count(*) FILTER (WHERE status = '破损')", "count(*)",
            "parts with status 破损, of all current parts"),
    Measure("parts_missing_share", "share", PARTS, "count(*) FILTER (WHERE status = '丢失')", "count(*)",
            "parts with status 丢失, of all current parts"),
    Measure("parts_occupied_share", "share", PARTS, "count(*) FILTER (WHERE status = '占用')", "count(*)",
            "parts with status 占用 (occupied), of all current parts"),
    _parts_share("manhole_faulty_share", MANHOLES, "manhole covers (0101–0109, 0115, 0116) damaged or missing"),
    _parts_share("street_lamp_faulty_share", "part_subclass = '0202'", "street lamps (0202) damaged or missing"),
    Measure("gas_pipe_old_km", "sum", PIPELINES, "sum(km) FILTER (WHERE kind = '燃气' AND over_30)",
            doc="length of gas pipelines laid 30 or more years ago, km"),
    _pipes_old_share("gas_pipe_old_share", "('燃气')", "gas pipeline length laid ≥ 30 years ago, of gas length "
                                                      "with a known year"),
    _pipes_old_share("water_pipe_old_share", "('给水')", "water supply pipeline length laid ≥ 30 years ago"),
    _pipes_old_share("drain_pipe_old_share", "('排水', '雨水', '污水')", "drainage (排水, 雨水, 污水) pipeline length "
                                                                    "laid ≥ 30 years ago"),
    Measure("pipe_depth_unknown_share", "share", PIPELINES, "sum(km) FILTER (WHERE depth_unknown)", "sum(km)",
            "pipeline length with neither burial depth surveyed"),
    Measure("buildings_old_share", "share", BUILDINGS, "count(*) FILTER (WHERE over_50)",
            "count(*) FILTER (WHERE year_built IS NOT NULL)", "buildings built ≥ 50 years ago"),
    Measure("iot_device_density", "per_km2", DEVICES, "count(*)", doc="IoT devices per km²"),
    Measure("devices_offline_share", "share", DEVICES_REPORTING, "count(*) FILTER (WHERE NOT reporting)", "count(*)",
            "devices that sent no reading in the window before the time"),
    # 城市环境
    _cases_per_km2("env_cases_density", "class_code LIKE 'E01%'", "市容环境 (E01) cases reported in the window, per km²"),
    _cases_per_km2("ad_cases_density", "class_code LIKE 'E02%'", "宣传广告 (E02) cases reported in the window, per km²"),
    _cases_per_km2("construction_cases_density", "class_code LIKE 'E03%'",
                   "施工管理 (E03) cases reported in the window, per km²"),
    _parts_share("bins_faulty_share", "part_subclass IN ('0302', '0303', '0304')",
                 "垃圾箱, 果壳箱, 垃圾房 damaged or missing"),
    _parts_share("greenery_faulty_share", "part_class = '04'", "园林绿化 parts (class 04) damaged or missing"),
    Measure("toilet_density", "per_km2", PARTS, "count(*) FILTER (WHERE part_subclass = '0301')",
            doc="public toilets (0301) per km²"),
    # 城市交通
    _parts_share("traffic_light_faulty_share", "part_subclass = '0201'", "traffic lights (0201) damaged or missing"),
    _parts_share("traffic_sign_faulty_share", "part_subclass = '0205'", "traffic signs (0205) damaged or missing"),
    _parts_share("bus_shelter_faulty_share", "part_subclass = '0203'", "bus shelters (0203) damaged or missing"),
    _cases_per_km2("road_cases_density", "class_code IN ('E0105', 'E0302', 'E0304', 'E0402')",
                   "road cases (道路破损, 施工占道, 道路开挖未恢复, 道路塌陷) reported in the window, per km²"),
    _cases_per_km2("parking_cases_density", "class_code IN ('E0504', 'E0505')",
                   "illegal parking cases (非机动车/机动车乱停放) reported in the window, per km²"),
    Measure("bus_shelter_density", "per_km2", PARTS, "count(*) FILTER (WHERE part_subclass = '0203')",
            doc="bus shelters (0203) per km²"),
    # 城市保障
    Measure("open_cases_density", "per_km2", CASES_OPEN, "count(*)", doc="cases registered and not closed, per km²"),
    Measure("overdue_share", "share", CASES_OPEN, "count(*) FILTER (WHERE overdue)", "count(*)",
            "open cases past their deadline, of the open cases"),
    Measure("grids_without_chain_share", "share", GRIDS, "count(*) FILTER (WHERE no_chain)", "count(*)",
            "unit grids with no post of a responsibility chain"),
    Measure("cases_reported_density", "per_km2", CASES_REPORTED, "count(*)",
            doc="cases reported in the window (every channel), per km²"),
    # 城市安全
    _alarm_share("ponding_alarm_share", "水位计", "water-logging points (水位计) with an alarm open"),
    _alarm_share("manhole_sensor_alarm_share", "井盖传感器", "manhole-cover sensors with an alarm open"),
    _alarm_count("gas_alarm_count", "燃气探测器", "gas detectors with an alarm open"),
    _alarm_count("smoke_alarm_count", "烟感探测器", "smoke detectors with an alarm open"),
    _alarm_count("facade_tilt_alarm_count", "倾角传感器", "curtain-wall tilt sensors with an alarm open"),
    Measure("alarms_per_100_devices", "share", DEVICES, "count(*) FILTER (WHERE alarmed)", "count(*)",
            "devices with an alarm open, per 100 devices"),
    Measure("alarms_open_count", "count", ALARMS, "count(*)", doc="alarms open (one per rule and device)"),
    _parts_share("hydrant_faulty_share", "part_subclass = '0110'", "fire hydrants (0110) damaged or missing"),
    Measure("emergency_cases_open", "count", CASES_OPEN, "count(*) FILTER (WHERE urgency = 'emergency')",
            doc="emergency cases registered and not closed"),
    Measure("cw_inspection_overdue_share", "share", CURTAIN_WALLS, "count(*) FILTER (WHERE inspection_overdue)",
            "count(*)", "curtain walls not inspected in the last five years (or never)"),
    Measure("cw_inspection_overdue_count", "count", CURTAIN_WALLS, "count(*) FILTER (WHERE inspection_overdue)",
            doc="curtain walls not inspected in the last five years (or never)"),
    Measure("cw_failed_share", "share", CURTAIN_WALLS, "count(*) FILTER (WHERE failed)",
            "count(*) FILTER (WHERE failed IS NOT NULL)", "curtain walls whose last inspection found 不合格 or 需整改"),
    Measure("cw_over_design_life_share", "share", CURTAIN_WALLS, "count(*) FILTER (WHERE over_design_life)",
            "count(*) FILTER (WHERE over_design_life IS NOT NULL)", "curtain walls installed ≥ 25 years ago"),
    Measure("old_brick_buildings_share", "share", BUILDINGS, "count(*) FILTER (WHERE over_50 AND structure = '砖混')",
            "count(*) FILTER (WHERE year_built IS NOT NULL)", "brick-concrete (砖混) buildings ≥ 50 years old"),
    # 城市活力
    Measure("public_report_share", "share", CASES_REPORTED,
            "count(*) FILTER (WHERE channel IN ('hotline_12345', 'public', 'media'))", "count(*)",
            "cases reported by citizens (12345 hotline, public app, media), of all reported in the window"),
    Measure("commercial_buildings_share", "share", BUILDINGS, "count(*) FILTER (WHERE use IN ('商业', '办公'))",
            "count(*) FILTER (WHERE use IS NOT NULL)", "commercial and office buildings, of buildings with a use"),
    Measure("address_density", "per_km2", ADDRESSES, "count(*)", doc="door-plate addresses per km²"),
    Measure("amenity_density", "per_km2", PARTS, "count(*) FILTER (WHERE part_subclass IN ('0405','0406','0407','0501'))",
            doc="public amenities (绿地, 城市雕塑, 街头坐椅, 宣传栏) per km²"),
)

MEASURES: dict[str, Measure] = {m.name: m for m in _MEASURES}
assert len(MEASURES) == len(_MEASURES), "measure names must be unique"
assert all(m.kind in KINDS for m in _MEASURES)

#: case-loop indicators of :func:`cases.evaluation.evaluate` (综合评价): name → (numerator, denominator) of its
#: counts, in per cent; ``mean_hours_to_close`` is weighted by the closed cases
EVALUATION: dict[str, tuple[str, str]] = {
    "closure_rate": ("closed", "registered"),
    "on_time_rate": ("closed_on_time", "registered"),
    "rework_rate": ("reworked", "registered"),
    "extension_rate": ("extended", "registered"),
    "mean_hours_to_close": ("mean_hours_to_close", "closed"),
}


def known_computations() -> frozenset[str]:
    """Every name a catalogue's ``compute`` may give (besides ``fed``)."""
    return frozenset(MEASURES) | frozenset(EVALUATION)
