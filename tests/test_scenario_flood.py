"""The water-logging response end to end on the sample city (scenarios.flood).

Hand-checked expectations (worked out from data_samples with shapely, independently of the code):

* The ponding gauge IOT-0045 (斜土路水位计01, monitoring point JK-015, alarm at 0.15 m, radius 300 m)
  stands at the junction of 斜土路 and 宛平南路. Within 300 m lie six compounds, all in 枫林路街道:
  梅陇三村 XQ-0063 (289 m away), 徐汇大楼 XQ-0064 (57 m), 中山花园 XQ-0065, 华园新村 XQ-0068,
  漕溪花园 XQ-0070, 建国一村 XQ-0078 — and no other compound within 340 m.
* Three pump trucks are moved there by GPS fixes through the readings intake (the rest are in
  maintenance): X on 肇嘉浜路 490 m away in a straight line but ~780 m by road (up 宛平南路, then west
  along 肇嘉浜路); Z on 斜土路 495 m away, ~504 m along 斜土路; Y on 宛平南路 513 m away, ~525 m along
  it. By straight line the two nearest are X, Z; by road Z, Y — so the answer proves routing is used.
* 桂林路水位计01 (121.4179242, 31.176292), in 田林街道: within 300 m the compounds 建国花园 XQ-0122,
  龙华新村 XQ-0126 and 双峰一村 XQ-0148. The last two lie wholly in 田林街道; 建国花园 straddles the
  street boundary, 3788 of its 5247 m² in 虹梅路街道, so it belongs to 虹梅路: the streets' cases go
  to both 办事处, each located in a grid of its own street.
"""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.apikeys import create_key
from scenarios.flood.loaders import LoadError, load_compounds, load_layer, load_points
from scenarios.flood.response import close_response, respond_to_alarm
from scenarios.flood.routing import nearest_trucks
from scenarios.flood.sample_data import generate
from scenarios.flood.setup import ensure_scenario
from scenarios.flood.watch import watch
from sensing.intake import store_batch
from tests.conftest import PROJECT, run_cim
from tests.sensing_fixtures import load_sample_layers, wait_until

FLOOD = PROJECT / "data_samples" / "flood"
GAUGE, GAUGE_POINT = "IOT-0045", (121.4471688, 31.1958684)
COMPOUNDS_AT_GAUGE = {"XQ-0063", "XQ-0064", "XQ-0065", "XQ-0068", "XQ-0070", "XQ-0078"}
TRUCK_X, TRUCK_Y, TRUCK_Z = "BC-001", "BC-002", "BC-003"
PLACES = {TRUCK_X: (121.4437077, 31.1991358), TRUCK_Y: (121.4470235, 31.2004914), TRUCK_Z: (121.4523334, 31.1962971)}
FENGLIN, TIANLIN, HONGMEI = "310104008", "310104011", "310104012"
WATER = "310104-SWJ"  # 区水务局


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _store(engine, rows: list[dict]) -> dict:  # noqa: ANN001
    with engine.begin() as conn:
        return store_batch(conn, pd.DataFrame(rows, columns=["device_id", "time", "quantity", "value", "unit"])).as_dict()


@pytest.fixture(scope="module")
def city(engine):
    load_sample_layers(engine.url.render_as_string(hide_password=False), "districts", "streets", "communities",
                       "grids", "responsibility", "addresses", "buildings", "parts", "iot-devices")
    with engine.begin() as conn:
        ensure_scenario(conn)
    for entry in json.loads((FLOOD / "manifest.json").read_text(encoding="utf-8")):
        load_layer(engine, entry["layer"], FLOOD / entry["path"], entry.get("crs"))
    # the three trucks of the expectation move there (GPS fixes, a minute after the load's); the rest rest
    at = (_now() + timedelta(minutes=1)).isoformat()
    fixes = [{"device_id": f"GPS-{code}", "time": at, "quantity": q, "value": v, "unit": "deg"}
             for code, (lon, lat) in PLACES.items() for q, v in (("lon", lon), ("lat", lat))]
    assert _store(engine, fixes)["stored"] == 6
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE flood_resources SET status = 'maintenance' WHERE kind = 'pump_truck' "
                             "AND code <> ALL(:c)"),
                     {"c": list(PLACES)})
    return engine


@pytest.fixture(scope="module")
def client(city):
    return TestClient(create_app(city))


@pytest.fixture(scope="module")
def loader_key(city) -> dict[str, str]:
    with city.begin() as conn:
        return {"X-API-Key": create_key(conn, "loader", "flood test")[1]}


def test_sample_data_is_reproducible(tmp_path):
    counts = generate(PROJECT / "data_samples", tmp_path)
    assert counts == {"compounds": 265, "points": 32, "resources": 44}
    for name in ("compounds.geojson", "points.csv", "resources.csv", "resource_devices.geojson", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (FLOOD / name).read_bytes(), name


def test_loaded_layers(city):
    with city.connect() as conn:
        counts = conn.execute(sa.text("""SELECT (SELECT count(*) FROM flood_compounds),
            (SELECT count(*) FROM flood_road_edges), (SELECT count(*) FROM flood_points),
            (SELECT count(*) FROM flood_resources), (SELECT count(*) FROM iot_rules WHERE name LIKE '防汛 %'),
            (SELECT street_code FROM flood_compounds WHERE source_id = 'XQ-0064')""")).one()
    assert counts[0] == 265 and counts[1] > 31 and counts[2] == 32 and counts[3] == 44
    assert counts[4] == 20  # one water-level rule per monitoring point
    assert counts[5] == FENGLIN


def test_an_alarm_fires_the_response(city, client, loader_key):
    """Readings over the gauge's alarm depth → sensing's rule raises an alarm (and its 道路积水 case) →
    the watcher, woken by the alerts table's notice, responds."""
    stop, responses = threading.Event(), []
    listening = threading.Event()
    watcher = threading.Thread(target=watch, args=(city, stop, responses.append),
                               kwargs={"sweep_every_s": 30.0, "on_listening": listening.set}, daemon=True)
    watcher.start()
    try:
        assert listening.wait(30)
        t0 = _now() - timedelta(minutes=20)
        report = _store(city, [{"device_id": GAUGE, "time": (t0 + timedelta(minutes=10 * i)).isoformat(),
                                "quantity": "water_level", "value": v, "unit": "m"} for i, v in enumerate((0.05, 0.31))])
        assert report["alerts"]["opened"] == 1
        wait_until(lambda: responses, 60, "the flood response to the alarm")
    finally:
        stop.set()
        watcher.join(10)
    response = responses[0]
    summary = response["summary"]
    with city.connect() as conn:
        alert_id, alert_case = conn.execute(sa.text("SELECT id, case_id FROM iot_alerts WHERE device_id = :d "
                                                    "AND level = 'alarm'"), {"d": GAUGE}).one()
    assert response["trigger"] == "alarm" and response["alert_id"] == alert_id and response["point_code"] == "JK-015"
    assert {c["source_id"] for c in summary["compounds"]} == COMPOUNDS_AT_GAUGE
    assert summary["compounds"][0]["source_id"] == "XQ-0064"  # the nearest first
    assert summary["households"] == 120 + 120 + 240 + 80 + 200 + 200
    assert summary["buildings"]["count"] > 0 and summary["addresses"]["count"] > 0
    trucks = summary["pump_trucks"]
    assert response["routing"] == trucks["method"] == "road_network"
    assert [t["code"] for t in trucks["trucks"]] == [TRUCK_Z, TRUCK_Y, TRUCK_X]
    assert [round(t["straight_m"]) for t in trucks["trucks"]] == [495, 513, 490]
    assert trucks["trucks"][0]["road_m"] == pytest.approx(504, abs=5)
    assert trucks["trucks"][1]["road_m"] == pytest.approx(525, abs=5)
    assert trucks["trucks"][2]["road_m"] == pytest.approx(780, abs=10)
    teams = summary["teams"]  # the two nearest of the four teams, by road too
    assert teams["method"] == "road_network" and len(teams["trucks"]) == 2
    assert {t["kind"] for t in teams["trucks"]} == {"team"}
    assert [t["code"] for t in teams["trucks"]] == ["DW-002", "DW-004"]  # on 斜土路 ~200 m, on 零陵路 ~500 m
    # the 条: the alarm's own 道路积水 case, at 区水务局, in the gauge's grid
    department, *streets = summary["cases"]
    assert department["id"] == alert_case and department["class_code"] == "E0401"
    assert department["department_code"] == WATER and department["status"] == "dispatched"
    assert department["grid_code"].startswith(FENGLIN)
    # the 块: one case for 枫林路街道, at its 办事处, in one of its grids
    assert [(c["class_code"], c["department_name"], c["grid_code"][:9]) for c in streets] == \
        [("E0409", "枫林路街道办事处", FENGLIN)]
    with city.connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT code, status FROM flood_resources WHERE code = ANY(:c)"),
                                     {"c": list(PLACES)}).all())
    assert set(statuses.values()) == {"dispatched"}
    with city.connect() as conn:
        dispatched = set(conn.execute(sa.text("SELECT code FROM flood_resources WHERE status = 'dispatched'")).scalars())
    assert dispatched == set(PLACES) | {t["code"] for t in teams["trucks"]}
    # asking again gives the same response; HTTP says the same
    with city.begin() as conn:
        assert respond_to_alarm(conn, alert_id)["id"] == response["id"]
    again = client.post(f"/scenarios/flood/alarms/{alert_id}/response", headers=loader_key)
    assert again.status_code == 200 and again.json()["id"] == response["id"]
    assert client.post("/scenarios/flood/alarms/999999/response", headers=loader_key).status_code == 404
    r = client.get(f"/scenarios/flood/responses/{response['id']}")
    assert r.status_code == 200 and r.json()["case_ids"] == [c["id"] for c in summary["cases"]]
    assert r.json()["area"]["type"] == "MultiPolygon"
    layer = client.get("/scenarios/flood/layer").json()
    kinds = {(f["properties"]["kind"], f["properties"]["id"]) for f in layer["features"]}
    assert ("area", str(response["id"])) in kinds and ("compound", "XQ-0064") in kinds
    assert ("pump_truck", TRUCK_Z) in kinds
    assert client.get("/scenarios/flood/responses/999999").status_code == 404


def test_straight_line_fallback_without_roads(city):
    with city.begin() as conn:
        response_id = conn.execute(sa.text("SELECT max(id) FROM flood_responses")).scalar()
        assert close_response(conn, response_id)["closed_at"] is not None
    x, y = _storage(city, *GAUGE_POINT)
    with city.connect() as conn:
        by_road = nearest_trucks(conn, x, y, k=2)
    assert (by_road["method"], [t["code"] for t in by_road["trucks"]]) == ("road_network", [TRUCK_Z, TRUCK_Y])
    with city.connect() as conn:  # the roads gone for this transaction only
        conn.execute(sa.text("DELETE FROM flood_road_edges; DELETE FROM flood_road_vertices; DELETE FROM flood_roads"))
        straight = nearest_trucks(conn, x, y, k=2)
        conn.rollback()
    assert straight["method"] == "straight_line" and "no roads" in straight["why"]
    assert [t["code"] for t in straight["trucks"]] == [TRUCK_X, TRUCK_Z]
    assert all(t["road_m"] is None for t in straight["trucks"])


def test_routing_reads_a_radius_and_widens_it_until_exact(city):
    """Road distances over the edges near the point only are exact up to the radius: a small least
    radius gives the same answer; on 古美路, a road that meets no other, no truck is joined by road —
    the radius widens to the whole network before saying so, and the trucks come by straight line."""
    x, y = _storage(city, *GAUGE_POINT)
    with city.connect() as conn:
        wide = nearest_trucks(conn, x, y, k=3)
        narrow = nearest_trucks(conn, x, y, k=3, min_radius_m=50)
        gx, gy = conn.execute(sa.text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_LineInterpolatePoint(geom, 0.5) AS p "
                                      "FROM flood_roads WHERE name = '古美路') s")).one()
        isolated = nearest_trucks(conn, gx, gy, k=2, min_radius_m=50)
    assert [(t["code"], t["road_m"]) for t in narrow["trucks"]] == [(t["code"], t["road_m"]) for t in wide["trucks"]]
    assert [t["code"] for t in wide["trucks"]] == [TRUCK_Z, TRUCK_Y, TRUCK_X]
    assert isolated["method"] == "road_network" and set(isolated["unreachable_by_road"]) == set(PLACES)
    assert all(t["road_m"] is None for t in isolated["trucks"])
    assert [t["straight_m"] for t in isolated["trucks"]] == sorted(t["straight_m"] for t in isolated["trucks"])


def _storage(engine, lon: float, lat: float) -> tuple[float, float]:  # noqa: ANN001
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_SetSRID("
                                          "ST_MakePoint(:x, :y), 4326), 4549) AS p) s"), {"x": lon, "y": lat}).one())


def test_a_warning_over_http_reaches_the_streets(client, loader_key):
    r = client.post("/scenarios/flood/warnings", headers=loader_key,
                    json={"lon": 121.4179242, "lat": 31.176292, "radius_m": 300, "level": "暴雨橙色", "k": 2})
    assert r.status_code == 201, r.text
    response = r.json()
    summary = response["summary"]
    assert response["trigger"] == "warning" and response["level"] == "暴雨橙色"
    assert {c["source_id"] for c in summary["compounds"]} == {"XQ-0122", "XQ-0126", "XQ-0148"}
    assert {c["source_id"]: c["street_code"] for c in summary["compounds"]} == \
        {"XQ-0122": HONGMEI, "XQ-0126": TIANLIN, "XQ-0148": TIANLIN}
    department, *streets = summary["cases"]
    assert (department["class_code"], department["department_code"]) == ("E0401", WATER)
    got = sorted((c["department_name"], c["grid_code"][:9], c["status"]) for c in streets)
    assert got == [("田林街道办事处", TIANLIN, "dispatched"), ("虹梅路街道办事处", HONGMEI, "dispatched")]
    assert summary["pump_trucks"]["method"] == "road_network"


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"area": "street:310104999"}, 404, "no current street"),
    ({"area": "town:1"}, 400, "LEVEL:CODE"),
    ({"lon": 121.44, "lat": 31.19, "radius_m": 1e6}, 400, "radius_m"),
    ({"lon": 121.44, "lat": 31.19, "depth": 3}, 400, "depth"),
    ({"area": {"type": "Point", "coordinates": [121.44, 31.19]}}, 400, "Polygon"),
    ({"lon": "east", "lat": 31.19}, 400, "lon"),
    ({}, 400, "area"),
])
def test_bad_warnings_are_refused_with_the_reason(client, loader_key, body, status, says):
    r = client.post("/scenarios/flood/warnings", headers=loader_key, json=body)
    assert r.status_code == status, r.text
    assert says in r.text


def test_warnings_need_a_loader_key(client):
    assert client.post("/scenarios/flood/warnings", json={"area": "street:310104008"}).status_code == 401


def test_bad_files_name_row_and_field_and_load_nothing(city, tmp_path):
    bad = tmp_path / "compounds.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"source_id": "T-1", "name": "好小区"},
         "geometry": {"type": "Polygon", "coordinates": [[[121.44, 31.19], [121.441, 31.19], [121.441, 31.191],
                                                          [121.44, 31.19]]]}},
        {"type": "Feature", "properties": {"source_id": "T-2"},
         "geometry": {"type": "Polygon", "coordinates": [[[121.44, 31.19], [121.441, 31.19], [121.441, 31.191],
                                                          [121.44, 31.19]]]}},
        {"type": "Feature", "properties": {"source_id": "T-3", "name": "线"},
         "geometry": {"type": "LineString", "coordinates": [[121.44, 31.19], [121.441, 31.19]]}},
    ]}), encoding="utf-8")
    points = tmp_path / "points.csv"
    points.write_text("code,name,kind,device_id,alarm_m,lon,lat\nP-1,x,monitoring,IOT-9999,0.2,121.44,31.19\n"
                      "P-2,y,lake,,,121.44,31.19\nP-3,z,monitoring,IOT-0002,abc,121.44,31.19\n", encoding="utf-8")
    with city.begin() as conn:
        with pytest.raises(LoadError) as compounds_error:
            load_compounds(conn, bad)
        with pytest.raises(LoadError) as points_error:
            load_points(conn, points)
        assert conn.execute(sa.text("SELECT count(*) FROM flood_compounds WHERE source_id LIKE 'T-%'")).scalar() == 0
    text = str(compounds_error.value)
    assert str(bad) in text and "row 2: name: missing" in text and "row 3: geometry: a LineString" in text
    text = str(points_error.value)
    assert "row 1: device_id: 'IOT-9999' is not a current IoT device" in text
    assert "row 2: kind: 'lake'" in text and "row 3: alarm_m: 'abc' is not a number" in text
    assert "row 3: device_id: 'IOT-0002' does not measure water_level" in text


def test_cim_scenarios_flood_warn_for_a_grid(city, db_url):
    grid = "310104008001001"  # 枫林路街道第1网格
    proc = run_cim("scenarios", "flood", "warn", "--area", f"grid:{grid}", "--level", "暴雨蓝色", "--k", "1", "--json",
                   db_url=db_url)
    response = json.loads(proc.stdout)
    summary = response["summary"]
    assert response["trigger"] == "warning" and response["title"] == f"暴雨蓝色预警 grid:{grid}"
    with city.connect() as conn:
        inside = set(conn.execute(sa.text("""SELECT c.source_id FROM flood_compounds c JOIN grids g
            ON ST_Intersects(c.geom, g.geom) WHERE g.grid_code = :g AND g.valid_to IS NULL"""), {"g": grid}).scalars())
    assert inside and {c["source_id"] for c in summary["compounds"]} == inside
    department, *streets = summary["cases"]
    assert department["department_code"] == WATER
    assert ("枫林路街道办事处", FENGLIN) in {(c["department_name"], c["grid_code"][:9]) for c in streets}
    shown = run_cim("scenarios", "flood", "show", str(response["id"]), db_url=db_url).stdout
    assert f"response {response['id']}: 暴雨蓝色预警" in shown and "road_network" in shown
    bad = run_cim("scenarios", "flood", "warn", "--area", "grid:1", db_url=db_url, check=False)
    assert bad.returncode != 0 and "no current grid with code '1'" in bad.stderr and "Traceback" not in bad.stderr


#: true once the 2D map draws the flood layer: an open ponding area or its compounds, and the trucks
FLOOD_DRAWN = """(() => {
  const m = window.cimMap; if (!m || !m.loaded() || !m.getSource('flood')) return false;
  return m.queryRenderedFeatures({layers: ['flood-area', 'flood-compound']}).length > 0
      && m.queryRenderedFeatures({layers: ['flood-truck']}).length > 0;
})()"""


def test_the_viewer_draws_the_flood_layer(city, db_url, tmp_path):
    from tests.servers import serve_app
    from tests.test_viewer import _browser, _needs_libraries

    _needs_libraries()
    with city.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM flood_responses WHERE closed_at IS NULL")).scalar() > 0
    with serve_app(db_url) as base:
        result = _browser(f"{base}/viewer#2d", FLOOD_DRAWN, tmp_path / "viewer-flood.png")
    assert result["ok"], result
    assert not result["errors"], result["errors"]
