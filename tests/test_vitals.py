"""Vital signs on the sample city: values checked against hand computations from the raw rows (parts,
pipelines, curtain walls, devices with their readings and alerts, cases — counted here in Python, with
areas from the geometries by shapely, not by the SQL under test), at street, grid and city level;
a second run at the same time replaces, not adds; the fed-values loader takes a good file and rejects a
bad one whole, naming rows and fields; the catalogue's own checks; the API's parameters."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import shapely
import sqlalchemy as sa
from fastapi.testclient import TestClient

from cim.errors import UserError
from tests.conftest import run_cim
from tests.sample_city import SAMPLES

LEVEL_KEY = {"street": "street_code", "grid": "grid_code"}


def _load_sample_city(engine) -> None:
    """Every layer of the sample city through the real loader, except its old day of readings."""
    from ingest.run import IngestOptions, ingest_files

    for e in json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8")):
        if e["layer"] == "iot-readings":
            continue
        options = IngestOptions(crs=e["crs"], encoding=e["encoding"], layer_name=e["layer_name"], x=e["x"], y=e["y"],
                                z=e["z"], wkt=e["wkt"], address_column=e["address_column"], mapping=e["map"] or {},
                                operator="test")
        ingest_files(e["layer"], [SAMPLES / e["path"]], options, engine)


@pytest.fixture(scope="module")
def city(engine):
    """The sample city; two days of simulated cases; water-level alarms from readings sent just now;
    the vital signs computed at ``city.at``."""
    from cases.simulate import simulate
    from sensing.intake import store_batch
    from sensing.parse import parse_batch
    from sensing.rules import RuleSpec, add_rule
    from vitals.compute import compute

    _load_sample_city(engine)
    simulate(engine, days=2, seed=5, per_day=40)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with engine.begin() as conn:
        add_rule(conn, RuleSpec(name="积水", kind="level", device_type="水位计", quantity="water_level",
                                direction="above", warning=1.0, alarm=1.5, case_class="道路积水"))
        gauges = list(conn.execute(sa.text("SELECT source_id FROM iot_devices WHERE device_type = '水位计' "
                                           "AND valid_to IS NULL ORDER BY source_id")).scalars())
        covers = list(conn.execute(sa.text("SELECT source_id FROM iot_devices WHERE device_type = '井盖传感器' "
                                           "AND valid_to IS NULL ORDER BY source_id")).scalars())
    # three gauges in alarm, one at warning only, the rest dry; half the manhole sensors report, the rest are silent
    levels = {g: 0.3 for g in gauges} | {gauges[0]: 1.8, gauges[5]: 1.7, gauges[11]: 1.6, gauges[3]: 1.2}
    readings = [{"device_id": g, "quantity": "water_level", "value": v, "time": (now - timedelta(minutes=m)).isoformat()}
                for g, v in levels.items() for m in (10, 5)]
    readings += [{"device_id": c, "quantity": "tilt", "value": 1.0, "time": (now - timedelta(minutes=7)).isoformat()}
                 for c in covers[::2]]
    with engine.begin() as conn:
        store_batch(conn, parse_batch(orjson.dumps(readings), "json"))
    at = now + timedelta(minutes=1)
    with engine.begin() as conn:
        report = compute(conn, at)
    engine.at, engine.report, engine.alarmed = at, report, {gauges[0], gauges[5], gauges[11]}
    return engine


def stored(engine, indicator: str, level: str) -> dict[str, tuple[float, str | None]]:
    with engine.connect() as conn:
        return {r.area_code: (r.value, r.status) for r in conn.execute(sa.text(
            "SELECT area_code, value, status FROM vital_values WHERE indicator = :i AND level = :l AND at = :at"),
            {"i": indicator, "l": level, "at": engine.at})}


def rows(engine, sql: str, **params) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def areas_km2(engine, level: str) -> dict[str, float]:
    """Each area's km², by shapely from the stored geometry (metric storage CRS)."""
    sql = {"street": "SELECT code, ST_AsBinary(geom) AS g FROM streets WHERE valid_to IS NULL",
           "grid": "SELECT grid_code AS code, ST_AsBinary(geom) AS g FROM grids WHERE valid_to IS NULL"}[level]
    return {r.code: shapely.from_wkb(bytes(r.g)).area / 1e6 for r in rows(engine, sql)}


def status_of(value: float, yellow: float, red: float, higher_worse: bool = True) -> str:
    if higher_worse:
        return "red" if value >= red else "yellow" if value >= yellow else "green"
    return "red" if value <= red else "yellow" if value <= yellow else "green"


def assert_same(got: dict[str, tuple[float, str | None]], expected: dict[str, float], *, yellow=None, red=None,
                higher_worse=True) -> None:
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected)))
    for area, value in expected.items():
        assert got[area][0] == pytest.approx(value, rel=1e-9, abs=1e-12), area
        if yellow is not None:
            assert got[area][1] == status_of(value, yellow, red, higher_worse), area


def shares(items, key, counted, selected) -> dict[str, float]:
    """Per area (``key`` of an item), 100 × selected / counted — areas where nothing is counted left out."""
    num, den = defaultdict(int), defaultdict(int)
    for it in items:
        if key(it) is None or not counted(it):
            continue
        den[key(it)] += 1
        num[key(it)] += bool(selected(it))
    return {a: 100.0 * num[a] / den[a] for a in den if den[a]}


# --- computed values against hand computations -------------------------------------------------------

def test_part_shares_by_street_grid_and_city(city):
    parts = rows(city, "SELECT street_code, grid_code, status, part_class, part_subclass FROM parts WHERE valid_to IS NULL")
    manhole = {"0101", "0102", "0103", "0104", "0105", "0106", "0107", "0108", "0109", "0115", "0116"}
    for level, key in LEVEL_KEY.items():
        faulty = shares(parts, lambda p: getattr(p, key), lambda p: True, lambda p: p.status in ("破损", "丢失"))
        assert_same(stored(city, "parts_faulty_share", level), faulty, yellow=3, red=6)
        covers = shares(parts, lambda p: getattr(p, key), lambda p: p.part_subclass in manhole,
                        lambda p: p.status in ("破损", "丢失"))
        assert_same(stored(city, "manhole_faulty_share", level), covers, yellow=1, red=3)
    city_share = 100.0 * sum(p.status == "破损" for p in parts) / len(parts)
    assert stored(city, "parts_damaged_share", "city") == {"city": (pytest.approx(city_share), status_of(city_share, 2, 5))}
    assert len(parts) == 5300


def test_old_gas_pipeline_length_by_street(city):
    year = city.at.astimezone(timezone(timedelta(hours=8))).year
    pipes = rows(city, "SELECT street_code, kind, year_laid, ST_AsBinary(geom) AS g FROM pipelines WHERE valid_to IS NULL")
    km = defaultdict(float)
    for p in pipes:
        length = shapely.from_wkb(bytes(p.g)).length / 1000.0  # 2D length, as laid on the map
        km[p.street_code] += length if (p.kind == "燃气" and p.year_laid is not None and p.year_laid <= year - 30) else 0.0
    expected = {s: v for s, v in km.items() if s is not None}
    got = stored(city, "gas_pipe_old_km", "street")
    # every street is listed (0 km where it has no old gas pipe), unrated (a total)
    assert set(got) == set(areas_km2(city, "street"))
    for street, (value, status) in got.items():
        assert value == pytest.approx(expected.get(street, 0.0), rel=1e-9, abs=1e-9), street
        assert status is None
    assert sum(v for v, _ in got.values()) > 0  # the sample has gas pipes laid before 1996


def test_curtain_walls_overdue_for_inspection_by_grid(city):
    today = city.at.astimezone(timezone(timedelta(hours=8))).date()  # the city's date
    five_years_before = today.replace(year=today.year - 5)
    walls = rows(city, "SELECT grid_code, last_inspection_date FROM curtain_walls WHERE valid_to IS NULL")
    overdue = shares(walls, lambda w: w.grid_code, lambda w: True,
                     lambda w: w.last_inspection_date is None or w.last_inspection_date < five_years_before)
    assert_same(stored(city, "cw_inspection_overdue_share", "grid"), overdue, yellow=5, red=15)


def test_water_logging_points_in_alarm_and_devices_offline(city):
    gauges = rows(city, "SELECT source_id, street_code, grid_code FROM iot_devices "
                        "WHERE valid_to IS NULL AND device_type = '水位计'")
    for level, key in LEVEL_KEY.items():
        expected = shares(gauges, lambda d: getattr(d, key), lambda d: True, lambda d: d.source_id in city.alarmed)
        assert_same(stored(city, "ponding_alarm_share", level), expected, yellow=5, red=15)
    assert stored(city, "ponding_alarm_share", "city")["city"][0] == pytest.approx(100.0 * 3 / len(gauges))
    # offline: no reading in the 60 minutes before the time, from the raw readings
    devices = rows(city, "SELECT source_id, street_code FROM iot_devices WHERE valid_to IS NULL")
    reporting = {r.device_id for r in rows(city, "SELECT device_id, time FROM iot_readings")
                 if city.at - timedelta(minutes=60) < r.time <= city.at}
    expected = shares(devices, lambda d: d.street_code, lambda d: True, lambda d: d.source_id not in reporting)
    assert_same(stored(city, "devices_offline_share", "street"), expected, yellow=5, red=15)


def test_case_indicators_by_street(city):
    cases = rows(city, "SELECT street_code, grid_code, status, registered_at, closed_at, due_at, rework_count "
                       "FROM cases")
    at = city.at
    counted = [c for c in cases if c.status not in ("merged", "not_registered")]
    open_ = [c for c in counted if c.registered_at is not None and c.registered_at <= at
             and (c.closed_at is None or c.closed_at > at)]
    km2 = areas_km2(city, "street")
    per_street = defaultdict(int)
    for c in open_:
        per_street[c.street_code] += 1
    assert_same(stored(city, "open_cases_density", "street"), {s: per_street[s] / a for s, a in km2.items()},
                yellow=5, red=15)
    overdue = shares(open_, lambda c: c.street_code, lambda c: True, lambda c: c.due_at is not None and c.due_at < at)
    assert_same(stored(city, "overdue_share", "street"), overdue, yellow=5, red=15)
    # 综合评价 over the cases registered in the 30 days before: 结案率, 返工率
    cohort = [c for c in counted if c.registered_at is not None and at - timedelta(days=30) <= c.registered_at < at]
    closure = shares(cohort, lambda c: c.street_code, lambda c: True, lambda c: c.closed_at is not None and c.closed_at < at)
    assert_same(stored(city, "closure_rate", "street"), closure, yellow=90, red=80, higher_worse=False)
    rework = shares(cohort, lambda c: c.grid_code, lambda c: True, lambda c: c.rework_count > 0)
    assert_same(stored(city, "rework_rate", "grid"), rework, yellow=5, red=10)
    city_closure = 100.0 * sum(c.closed_at is not None and c.closed_at < at for c in cohort) / len(cohort)
    assert stored(city, "closure_rate", "city")["city"][0] == pytest.approx(city_closure)
    assert len(cohort) > 20 and 0 < city_closure < 100


def test_the_catalogue_is_seeded_with_every_dimension(city):
    from vitals.catalogue import DIMENSIONS
    from vitals.measures import known_computations

    with city.connect() as conn:
        catalogue = list(conn.execute(sa.text("SELECT code, dimension, compute FROM vital_indicators")))
    computed = [r for r in catalogue if r.compute != "fed"]
    assert len(computed) >= 30
    assert {r.dimension for r in computed} == set(DIMENSIONS) == {r.dimension for r in catalogue if r.compute == "fed"}
    assert {r.compute for r in computed} == set(known_computations())  # every measure is in use
    assert city.report.indicators == len(computed)


def test_a_second_run_at_the_same_time_replaces_its_values(city):
    from vitals.compute import compute

    def snapshot():
        return rows(city, "SELECT indicator, level, area_code, value, status FROM vital_values WHERE at = :at "
                          "ORDER BY 1, 2, 3", at=city.at)

    before = snapshot()
    with city.begin() as conn:
        again = compute(conn, city.at)
    assert again.values == len(before) == city.report.values
    assert snapshot() == before


def test_cli_compute_at_a_time(city, db_url):
    at = city.at + timedelta(hours=1)
    out = run_cim("vitals", "compute", "--at", at.isoformat(), "--indicator", "parts_faulty_share", "--quiet",
                  db_url=db_url)
    assert json.loads(out.stdout)["indicators"] == 1
    got = stored(city, "parts_faulty_share", "street")
    with city.connect() as conn:
        later = dict(conn.execute(sa.text("SELECT area_code, value FROM vital_values WHERE indicator = "
                                          "'parts_faulty_share' AND level = 'street' AND at = :at"), {"at": at}).all())
    assert later == {k: v for k, (v, _) in got.items()}
    bad = run_cim("vitals", "compute", "--at", "2026-12-01T08:00:00", db_url=db_url, check=False)
    assert bad.returncode == 1 and "--at" in bad.stderr and "no UTC offset" in bad.stderr


# --- fed values ------------------------------------------------------------------------------------------

def test_fed_values_load_with_status(city, tmp_path, db_url):
    feed = tmp_path / "air.csv"
    feed.write_text("indicator,level,area_code,time,value\n"
                    "pm25,street,310104003,2026-12-01T08:00:00+08:00,28\n"
                    "pm25,street,310104004,2026-12-01T08:00:00+08:00,80.5\n"
                    "aqi_good_share,city,city,2026-11-30,78\n", encoding="utf-8")
    out = run_cim("vitals", "load", str(feed), db_url=db_url)
    assert json.loads(out.stdout)["rows"] == 3
    got = rows(city, "SELECT indicator, area_code, at, value, status, source FROM vital_values WHERE source = 'fed' "
                     "ORDER BY 1 DESC, 2")
    assert [(r.indicator, r.area_code, r.value, r.status) for r in got] == [
        ("pm25", "310104003", 28.0, "green"), ("pm25", "310104004", 80.5, "red"), ("aqi_good_share", "city", 78.0, "yellow")]
    assert got[0].at == datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
    assert got[2].at == datetime(2026, 11, 30, tzinfo=timezone.utc)


def test_a_bad_feed_is_rejected_whole(city, tmp_path):
    from vitals.feed import load_feed

    feed = tmp_path / "bad.csv"
    feed.write_text("indicator,level,area_code,time,value\n"
                    "pm10,street,310104003,2026-12-01T08:00:00+08:00,50\n"       # good, but the file is rejected
                    "pm2.5,street,310104003,2026-12-01T08:00:00+08:00,50\n"      # unknown indicator
                    "closure_rate,street,310104003,2026-12-01T08:00:00+08:00,50\n"  # computed, not fed
                    "pm10,street,310199999,2026-12-01T08:00:00+08:00,50\n"       # unknown street
                    "pm10,grid,310104003001001,2026-12-01T08:00:00+08:00,50\n"   # pm10 is not kept per grid
                    "pm10,street,310104004,2026-12-01T08:00:00,50\n"             # no offset
                    "pm10,street,310104004,2026-12-01T09:00:00Z,NaN\n", encoding="utf-8")
    with pytest.raises(UserError) as err, city.begin() as conn:
        load_feed(conn, feed)
    message = str(err.value)
    for expected in ("row 3: field indicator: 'pm2.5' is not in the catalogue",
                     "row 4: field indicator: closure_rate is computed by the platform",
                     "row 5: field area_code: no street '310199999' in the base",
                     "row 6: field level: 'grid' is not a level of pm10",
                     "row 7: field time:", "no UTC offset",
                     "row 8: field value: 'NaN' is not a finite number"):
        assert expected in message, message
    assert "row 2" not in message
    assert rows(city, "SELECT * FROM vital_values WHERE indicator = 'pm10'") == []
    missing = tmp_path / "columns.csv"
    missing.write_text("indicator,area_code,value\npm10,city,1\n", encoding="utf-8")
    with pytest.raises(UserError, match="missing column.*level.*time"), city.begin() as conn:
        load_feed(conn, missing)


def test_catalogue_file_errors_name_row_and_field(tmp_path):
    from vitals.catalogue import COLUMNS, parse_indicators

    header = ",".join(COLUMNS) + "\n"
    good = "x_share,甲,A,城市安全,%,fed,higher_worse,1,2,city;street,,\n"
    assert parse_indicators(header + good, "f.csv")[0].levels == ("city", "street")
    for row, expected in (("x,甲,A,城市安全,%,fed,higher_worse,1,2,city,,", "row 2: field code"),
                          ("x_a,甲,A,城市卫生,%,fed,higher_worse,1,2,city,,", "row 2: field dimension"),
                          ("x_a,甲,A,城市安全,%,no_such_sql,higher_worse,1,2,city,,", "row 2: field compute"),
                          ("x_a,甲,A,城市安全,%,fed,higher_worse,5,2,city,,", "red (2) must be at or above yellow (5)"),
                          ("x_a,甲,A,城市安全,%,fed,lower_worse,1,,city,,", "give both thresholds"),
                          ("x_a,甲,A,城市安全,%,fed,higher_worse,1,2,city;block,,", "row 2: field levels"),
                          ("x_a,甲,A,城市安全,%,fed,higher_worse,1,2,city,2 weeks,", "row 2: field window")):
        with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            parse_indicators(header + row + "\n", "f.csv")


# --- the API ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(city):
    from api.app import create_app

    with TestClient(create_app(city)) as c:
        yield c


def test_api_values_of_a_level(client, city):
    r = client.get("/vitals", params={"level": "street", "indicator": "parts_faulty_share,ponding_alarm_share"})
    assert r.status_code == 200, r.text
    body = r.json()
    newest = {(v["indicator"], v["area_code"]): v for v in body["values"]}
    assert {k[0] for k in newest} == {"parts_faulty_share", "ponding_alarm_share"}
    # the newest values: the CLI test's later run for parts_faulty_share if it ran, else city.at; both equal
    for street, (value, status) in stored(city, "ponding_alarm_share", "street").items():
        v = newest[("ponding_alarm_share", street)]
        assert (v["value"], v["status"], v["source"]) == (value, status, "computed") and v["area_name"]
    one = client.get("/vitals", params={"level": "street", "code": "310104003", "indicator": "parts_faulty_share",
                                        "from": city.at.isoformat(), "to": (city.at + timedelta(seconds=1)).isoformat()})
    assert [(v["area_code"], v["value"]) for v in one.json()["values"]] == [
        ("310104003", stored(city, "parts_faulty_share", "street")["310104003"][0])]
    day = client.get("/vitals", params={"level": "city", "from": city.at.date().isoformat(), "to": "2099-01-01"})
    assert day.json()["count"] >= city.report.indicators


@pytest.mark.parametrize("params, parameter", [
    ({"level": "town"}, "level"),
    ({"level": "street", "code": "nope"}, "code"),
    ({"level": "city", "code": "310104"}, "code"),
    ({"indicator": "no_such"}, "indicator"),
    ({"indicator": " , "}, "indicator"),
    ({"indicator": "a\x00b"}, "indicator"),
    ({"level": "street", "code": "3101\x0004003"}, "code"),
    ({"from": "2026-12-01T08:00:00"}, "from"),
    ({"to": "yesterday"}, "to"),
    ({"from": "2026-12-02", "to": "2026-12-01"}, "to"),
    ({"limit": "0"}, "limit"),
])
def test_api_bad_parameters_are_named(client, params, parameter):
    r = client.get("/vitals", params=params)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["parameter"] == parameter, r.json()


def test_api_catalogue_and_summary(client, city):
    cat = client.get("/vitals/indicators", params={"dimension": "safety", "source": "computed"}).json()
    assert cat["count"] > 5 and {i["dimension"] for i in cat["indicators"]} == {"城市安全"}
    assert client.get("/vitals/indicators", params={"dimension": "城市卫生"}).json()["parameter"] == "dimension"
    s = client.get("/vitals/summary", params={"level": "street", "code": "310104003", "worst": 2}).json()
    assert [d["dimension"] for d in s["dimensions"]] == ["基础设施", "城市环境", "城市交通", "城市保障", "城市安全", "城市活力"]
    rank = {"red": 3, "yellow": 2, "green": 1, None: 0}
    for d in s["dimensions"]:
        assert len(d["worst"]) <= 2
        assert [rank[w["status"]] for w in d["worst"]] == sorted((rank[w["status"]] for w in d["worst"]), reverse=True)
        assert d["red"] + d["yellow"] + d["green"] <= d["indicators"]
    infra = s["dimensions"][0]
    assert infra["status"] == next(x for x in ("red", "yellow", "green") if infra[x])
    assert client.get("/vitals/summary", params={"level": "grid"}).json()["parameter"] == "code"
    assert client.get("/vitals/summary", params={"worst": 0}).status_code == 400
