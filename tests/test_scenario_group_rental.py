"""Group rental (issue 14, item 4) end to end on the sample city, one database for the module.

The sample (scenarios/group_rental/sample/utilities.csv, see its generate.py) is loaded as ``make demo``
does: the 平安办 posts through ``cim ingest responsibility``, then ``cim scenarios group-rental sample``
(load, score with the packaged model data/model.txt over 2026-08 … 2026-10, push). Hand-checked,
with the model's weights water/person .25 (> 6 m³), electricity/person .20 (> 150 kWh), gas/person
.10 (> 10 m³), deliveries/person .20 (> 20), electricity .10 (> 600 kWh), deliveries .15 (> 60);
threshold 0.5, min_confidence 0.6 (monthly values average to the figures below):

* 淮海中路347弄2号403室: 30 m³, 900 kWh, 40 m³, 2 residents, 120 orders → all fire: 1.0, flagged;
* 建国西路58弄6号1002室: no gas → gas/person not computed: score 0.9/0.9 = 1.0, confidence 0.9, flagged;
* 淮海中路25号 (a door, no room): 3 residents, everything fires → flagged;
* 天平路347弄2号104室: registered population missing → only the two totals computed: score 1.0 but
  confidence 0.25 < 0.6 → not flagged, the missing attribute among the reasons;
* 衡山路231号: one resident, 8 m³ and 25 orders fire (.45 < .5) → not flagged;
* 岳阳路331弄6号202室 and 30 households: families, nothing fires → 0;
* 不存在路88号301室 and 淮海中路99999号 (3 months each): the rejects file, with their text.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cases.lifecycle import verifiers
from cases.model import get_case
from cim.errors import UserError
from ingest.run import IngestOptions, ingest_files
from scenarios.group_rental.handling import push, rectified, register_case, reverify, visit
from scenarios.group_rental.loader import load_utilities
from scenarios.group_rental.model import load_model, parse_model
from scenarios.group_rental.score import explain, score
from tests.conftest import PROJECT, run_cim
from tests.test_geocode import load_city

SAMPLE = PROJECT / "scenarios" / "group_rental" / "sample"
G1, G2, G3 = "上海市徐汇区淮海中路347弄2号403室", "上海市徐汇区天平路347弄2号104室", "上海市徐汇区建国西路58弄6号1002室"
G4, G5, G6 = "上海市徐汇区岳阳路331弄6号202室", "上海市徐汇区衡山路231号", "上海市徐汇区淮海中路25号"


@pytest.fixture(scope="module")
def demo(engine, db_url, tmp_path_factory):
    load_city(engine)
    ingest_files("responsibility", [SAMPLE / "responsibility.csv"], IngestOptions(), engine)
    home = tmp_path_factory.mktemp("cim-home")
    out = json.loads(run_cim("scenarios", "group-rental", "sample", db_url=db_url,
                             env={"CIM_HOME": str(home)}).stdout)
    return engine, out


def test_loader_matches_rooms_and_rejects_unknown_addresses(demo):
    _, out = demo
    assert {k: out["loaded"][k] for k in ("read", "stored", "addresses", "rejected")} == \
        {"read": 111, "stored": 105, "addresses": 35, "rejected": 6}
    with open(out["loaded"]["rejects_file"], encoding="utf-8") as f:
        rejects = list(csv.DictReader(f))
    assert [(r["address"], r["month"]) for r in rejects] == [
        (a, m) for m in ("2026-08", "2026-09", "2026-10") for a in ("徐汇区不存在路88号301室", "徐汇区淮海中路99999号")]
    assert "level district" in rejects[0]["reason"] and "level road" in rejects[1]["reason"]


def test_flagged_addresses_and_why(demo):
    engine, out = demo
    assert (out["run"]["addresses"], out["run"]["flagged"]) == (35, 3)
    with engine.connect() as conn:
        scores = {s["address"]: s for s in explain(conn, out["run"]["id"], limit=1000)}
    assert {a for a, s in scores.items() if s["flagged"]} == {G1, G3, G6}
    assert (scores[G1]["score"], scores[G1]["confidence"], scores[G1]["room"]) == (1.0, 1.0, "403")
    assert (scores[G3]["score"], scores[G3]["confidence"], scores[G3]["missing"]) == (1.0, 0.9, ["gas_m3"])
    assert "gas_per_person not computed: missing gas_m3 (confidence −0.10)" in scores[G3]["reasons"]
    assert scores[G6]["room"] is None
    g2 = scores[G2]
    assert (g2["flagged"], g2["score"], g2["confidence"], g2["fired"]) == \
        (False, 1.0, 0.25, ["electricity_total", "deliveries_total"])
    assert "confidence 0.25 < 0.6 (missing registered_population)" in g2["verdict"]
    assert (scores[G5]["score"], scores[G5]["fired"]) == (0.45, ["water_per_person", "deliveries_per_person"])
    assert "water_per_person = 8 m³ > 6 (+0.25): water a month per registered resident" in scores[G5]["reasons"]
    assert scores[G4]["score"] == 0 and max(s["score"] for a, s in scores.items() if a not in (G1, G2, G3, G5, G6)) == 0


def test_cases_reach_the_streets_pingan_office(demo):
    engine, out = demo
    by_address = {c["address"]: c for c in out["cases"]}
    assert set(by_address) == {G1, G3, G6}
    assert (by_address[G1]["grid_code"], by_address[G1]["department_code"], by_address[G1]["department_name"]) == \
        ("310104004001001", "310104004-PAB", "湖南路街道平安办")
    assert (by_address[G3]["grid_code"], by_address[G3]["department_name"]) == ("310104007001001", "斜土路街道平安办")
    assert all(c["status"] == "dispatched" for c in out["cases"])
    with engine.begin() as conn:
        case = get_case(conn, by_address[G1]["case_id"])
        assert case.class_code == "E9501" and case.attributes["score"] == 1.0
        assert any("water_per_person" in r for r in case.attributes["reasons"])
        assert push(conn, out["run"]["id"]) == []  # an open case per address is enough


def test_door_visit_rectification_and_supervision_loop(demo):
    engine, out = demo
    by_address = {c["address"]: c["case_id"] for c in out["cases"]}
    with engine.begin() as conn:
        case_id = by_address[G1]
        register_case(conn, case_id, "平安办干事")
        assert visit(conn, case_id, "平安办干事", "group_rental", "一套房住12人，隔成6间").status == "accepted"
        assert rectified(conn, case_id, "平安办干事", "已拆除隔断").status == "handled"
        # the 复核 is the case loop's 核查: by the grid worker (网格监督员) of the address's grid
        worker = verifiers(conn, get_case(conn, case_id))[0]
        back = reverify(conn, case_id, worker, False, "隔断仍在")  # not rectified: 督办
        assert (back.status, back.rework_count) == ("accepted", 1)
        rectified(conn, case_id, "平安办干事", "隔断全部拆除，住户减至3人")
        assert reverify(conn, case_id, worker, True, "复核合格").status == "closed"
        # a door visit that finds no group rental is the handling; the 复核 closes it
        other = by_address[G6]
        register_case(conn, other, "平安办干事")
        assert visit(conn, other, "平安办干事", "not_group_rental", "一家三口，开网店").status == "handled"
        assert reverify(conn, other, verifiers(conn, get_case(conn, other))[0], True).status == "closed"
        # a closed case lets the next run open a new one for a still-flagged address
        run = score(conn, load_model())
        assert {c["address"] for c in push(conn, run.id)} == {G1, G6}


def test_room_level_addresses_are_their_own(demo, tmp_path):
    engine, _ = demo
    extra = tmp_path / "rooms.csv"
    extra.write_text("address,month,water_m3,electricity_kwh,gas_m3,registered_population,deliveries\n"
                     "徐汇区淮海中路25号302室,2026-10,3,90,4,1,2\n", encoding="utf-8")
    with engine.begin() as conn:
        report = load_utilities(conn, extra, tmp_path)
        rows = conn.execute(sa.text("SELECT room, standard_address FROM rental_addresses WHERE address_feature_id = "
                                    "(SELECT address_feature_id FROM rental_addresses WHERE standard_address = :a) "
                                    "ORDER BY room"), {"a": G6}).all()
    assert (report.stored, report.rejected, report.rejects_file) == (1, 0, None)
    assert [tuple(r) for r in rows] == [("", G6), ("302", G6 + "302室")]


def test_bad_input_names_file_line_row_and_field(demo, tmp_path, db_url):
    engine, _ = demo
    model = tmp_path / "model.txt"
    model.write_text("version 1\nthreshold 0.5\nfactor water_per_person weight 0.5 above 6\n"
                     "factor noise_at_night weight 0.5 above 3\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"model.txt, line 4: unknown factor 'noise_at_night'; known factors: "):
        parse_model(model.read_text(encoding="utf-8"), str(model))
    proc = run_cim("scenarios", "group-rental", "score", "--model", str(model), db_url=db_url, check=False)
    assert proc.returncode == 1 and "line 4: unknown factor 'noise_at_night'" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(UserError, match="line 2: threshold 2 is outside"):
        parse_model("version 1\nthreshold 2\nfactor electricity_total weight 1 above 5\n", "m")
    bad = tmp_path / "bad.csv"
    bad.write_text("address,month,water_m3,electricity_kwh,gas_m3,registered_population,deliveries\n"
                   "徐汇区淮海中路25号,2026-10,many,90,4,1,2\n", encoding="utf-8")
    with engine.begin() as conn, pytest.raises(UserError, match=r"bad.csv, row 2: field water_m3: 'many'"):
        load_utilities(conn, bad, tmp_path)
    bad.write_text("address,month\n徐汇区淮海中路25号,2026-13\n", encoding="utf-8")
    with engine.begin() as conn, pytest.raises(UserError, match="row 2: field month: '2026-13'"):
        load_utilities(conn, bad, tmp_path)


def test_scores_over_http(demo):
    engine, out = demo
    client = TestClient(create_app(engine))
    r = client.get("/scenarios/group-rental/scores", params={"run": out["run"]["id"], "flagged": "true"})
    assert r.status_code == 200
    assert {s["address"] for s in r.json()["scores"]} == {G1, G3, G6}
    assert client.post("/scenarios/group-rental/runs", json={"from": "2026-10"}).status_code == 401


def test_packaged_model_is_the_documented_one():
    model = load_model()
    assert [(f.name, f.weight, f.above) for f in model.factors] == [
        ("water_per_person", 0.25, 6), ("electricity_per_person", 0.2, 150), ("gas_per_person", 0.1, 10),
        ("deliveries_per_person", 0.2, 20), ("electricity_total", 0.1, 600), ("deliveries_total", 0.15, 60)]
    assert (model.threshold, model.min_confidence) == (0.5, 0.6)
    assert Path(model.source).name == "model.txt"


#: true once the 2D map draws the group-rental suspects and a click on one shows its reasons
GROUP_RENTAL_DRAWN = """(() => {
  const m = window.cimMap; if (!m || !m.loaded() || !m.getSource('group-rental')) return false;
  const hits = m.queryRenderedFeatures({layers: ['group-rental-suspects']});
  if (!hits.length) return false;
  const point = m.project(hits[0].geometry.coordinates);
  m.fire('click', {point, lngLat: m.unproject(point), originalEvent: {}});
  const info = document.getElementById('info');
  return !info.hidden && document.getElementById('info-title').textContent.startsWith('群租嫌疑')
      && info.textContent.includes('reasons') && info.textContent.includes('per_person');
})()"""


def test_suspects_as_geojson(demo):
    engine, out = demo
    client = TestClient(create_app(engine))
    r = client.get("/scenarios/group-rental/suspects", params={"run": out["run"]["id"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["run_id"] == out["run"]["id"]
    suspects = {f["properties"]["address"]: f for f in body["features"]}
    assert set(suspects) == {G1, G3, G6}
    with engine.connect() as conn:  # the same fields as GET …/scores, no more (addresses only, no names)
        assert [f["properties"] for f in body["features"]] == explain(conn, out["run"]["id"], True, limit=1000)
        latest = conn.execute(sa.text("SELECT max(id) FROM rental_score_runs")).scalar()
    g3 = suspects[G3]
    assert g3["geometry"]["type"] == "Point" and g3["properties"]["score"] == 1.0
    assert "gas_per_person not computed: missing gas_m3 (confidence −0.10)" in g3["properties"]["reasons"]
    lon, lat = g3["geometry"]["coordinates"]
    assert 121.3 < lon < 121.6 and 31.1 < lat < 31.3  # WGS84, in 徐汇
    assert client.get("/scenarios/group-rental/suspects").json()["run_id"] == latest  # default: the latest run
    assert client.get("/scenarios/group-rental/suspects", params={"run": 999999}).status_code == 404
    for params, name in (({"run": "0"}, "run"), ({"run": "x"}, "run"), ({"limit": "0"}, "limit")):
        bad = client.get("/scenarios/group-rental/suspects", params=params)
        assert bad.status_code == 400 and name in bad.json()["detail"], (params, bad.text)


def test_the_viewer_draws_the_group_rental_layer(demo, db_url, tmp_path):
    from tests.servers import serve_app
    from tests.test_viewer import _browser, _needs_libraries

    _needs_libraries()
    with serve_app(db_url) as base:
        result = _browser(f"{base}/viewer#2d", GROUP_RENTAL_DRAWN, tmp_path / "viewer-group-rental.png")
    assert result["ok"], result
    assert not result["errors"], result["errors"]
