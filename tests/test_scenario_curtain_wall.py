"""Curtain-wall risk end to end on the sample city: the synthetic dossiers load and rank; four dossiers
written here rank in an order worked out by hand from model.toml (weights add up to 100, so a factor's
points are weight x level), with their reasons, confidence and the 沪府令77号 overdue list; a tilt alarm
(live sensing) and a breakage case nearby (the case loop) count; the top buildings are pushed as
inspection cases that reach the building's grid and its 房管 department; outcomes give the precision.
Bad input: a records file with bad rows, a scoring file with an unknown factor, bad API parameters."""
from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cases.intake import CaseReport, intake
from cim.apikeys import create_key
from cim.bootstrap import initialise
from cim.database import engine_for
from cim.grid import responsibility_for
from scenarios.curtain_wall.feed import generate
from scenarios.curtain_wall.model import PACKAGED_MODEL, ModelFileError, load_model, parse_model
from scenarios.curtain_wall.records import RecordsFileError, load_records
from scenarios.curtain_wall.scoring import rank_buildings
from tests.conftest import PROJECT, create_database, run_cim
from tests.sensing_fixtures import load_sample_layers

AS_OF = "2026-12-01"
DAY = date(2026, 12, 1)
FEED = PROJECT / "data_samples" / "scenarios" / "curtain_wall_records.csv"
# four sample buildings more than 1.5 km apart; B carries the tilt sensor IOT-0091
A, B, C, D = "BLD-00002", "BLD-00721", "BLD-00026", "BLD-00184"
HEADER = ("building_id,wall_area_m2,support_type,glass_type,sealant_type,sealant_year,height_m,completion_year,"
          "design_life_years,owner,last_inspection_date,last_inspection_findings,last_sealant_sampling_date,"
          "breakage_count,last_breakage_date,last_storm_date,last_fire_date,last_appraisal_date,wind_exposure,"
          "use_below")
RECORDS = "\n".join([
    HEADER,
    # A: an old cable-net tower of ordinary glass over a street, beyond its design life, two breakages
    f"{A},9000,索支承,普通玻璃,结构胶,1995,120,1995,25,甲物业,2019-06-01,major,,2,2025-08-03,,,,exposed,street",
    # B: a unitised tower of 2010 whose sealant sampling is late; its tilt sensor alarms (below)
    f"{B},6000,unitised,tempered,structural_silicone,2010,80,2010,25,乙置业,2022-03-01,none,2021-01-10,0,,,,,normal,plaza",
    # C: a sparse dossier — support, design life, exposure and breakages unknown; height from the building
    f"{C},,,钢化,,,,2005,,丙公司,2020-05-01,minor,,,,,,,,entrance",
    # D: a new laminated wall, never inspected yet
    f"{D},1200,frame,laminated,weatherproof,2024,30,2024,30,丁公司,,,,0,,,,,sheltered,enclosed",
]) + "\n"
# by hand (points = weight x level, see model.toml):
#   A  age 31→8, cable 7, ordinary 12, sealant 31y→10, 120 m→5, 6 y beyond life→8, most late: sealant sampling
#      due 2005-12-31→10, major 10, exposed 6, no sensor 0, 2 breakages 6, nothing nearby 0, street 6    = 88
#   B  age 16→4.8, unitised 1.4, tempered 7.2, sealant 16y→8, 80 m→3.5, within life 0, sampling due 2024-01-10
#      (1056 days)→10, none 0, normal 2.4, one tilt alarm 4.8, 0, 0, plaza 3.6                          = 45.7
#   C  age 21→4.8, support ?, tempered 7.2, sealant from completion 21y→10, the building's 18.3 m→0, life ?,
#      inspection due 2025-05-01 (579 days)→7, minor 5, exposure ?, no sensor 0, breakages ?, one breakage case
#      within 200 m→2, entrance 4.8                                                                 = 40.8
#      confidence 1 - (7 + 8 + 6 + 6)/100 = 0.73
#   D  age 2→0, frame 2.1, laminated 0, sealant 2y→0, 30 m→2, 0, first inspection due 2025-12-31 (335 days)→4,
#      findings ? (never inspected), sheltered 0, 0, 0, 0, enclosed 0                                   = 8.1
#      confidence 0.9
EXPECTED = {A: (88.0, 1.0, "high"), B: (45.7, 1.0, "medium"), C: (40.8, 0.73, "medium"), D: (8.1, 0.9, "low")}


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def url(server_url) -> str:
    url = create_database(server_url)
    initialise(engine_for(url))
    load_sample_layers(url, "districts", "streets", "communities", "grids", "responsibility", "addresses",
                       "buildings", "iot-devices")
    return url


@pytest.fixture(scope="module")
def engine(url):
    return engine_for(url)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


@pytest.fixture(scope="module")
def keys(engine) -> dict[str, dict[str, str]]:
    with engine.begin() as conn:
        return {role: {"X-API-Key": create_key(conn, role, f"{role} key")[1]} for role in ("reader", "loader")}


def test_sample_feed_is_deterministic_and_loads_and_ranks(url, tmp_path):
    assert generate(PROJECT / "data_samples") == FEED.read_text(encoding="utf-8")  # the committed file is fresh
    out = run_cim("scenarios", "curtain-wall", "load", str(FEED), "--json", db_url=url)
    assert '"read": 150' in out.stdout and '"inserted": 150' in out.stdout
    with engine_for(url).connect() as conn:
        ranking = rank_buildings(conn, load_model(), DAY)
    rows = ranking.rows()
    assert len(rows) == 150 and all(len(r["reasons"]) == 13 for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    # the feed's risky tower: the tallest wall completed before 2000, ordinary glass over a street
    tower = next(r for r in rows if {x["factor"]: x["value"] for x in r["reasons"]}["glass_type"] == "ordinary"
                 and {x["factor"]: x["value"] for x in r["reasons"]}["inspection_findings"] == "major")
    assert tower["risk_class"] == "high"


def test_hand_checked_ranking_reasons_and_overdue(url, engine, client, keys, tmp_path):
    path = tmp_path / "records.csv"
    path.write_text(RECORDS, encoding="utf-8")
    with engine.begin() as conn:
        report = load_records(conn, path, replace=True)
    assert report.read == 4
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM curtain_wall_records")).scalar() == 4
    # B's tilt sensor alarms (through live sensing: a rule, then a reading over HTTP)
    r = client.post("/iot/rules", json={"name": "幕墙倾斜", "device_type": "倾角传感器", "quantity": "tilt_x",
                                        "direction": "above", "alarm": 0.3}, headers=keys["loader"])
    assert r.status_code == 201, r.text
    r = client.post("/iot/readings", json=[{"device_id": "IOT-0091", "quantity": "tilt_x", "value": 0.5,
                                            "time": "2026-11-30T10:00:00+08:00"}], headers=keys["loader"])
    assert r.json()["alerts"]["opened"] == 1, r.text
    # a glass breakage reported 30 m from C (the case loop)
    with engine.begin() as conn:
        cx, cy = conn.execute(sa.text("SELECT ST_X(ST_Centroid(geom)), ST_Y(ST_Centroid(geom)) FROM buildings "
                                      "WHERE source_id = :b AND valid_to IS NULL"), {"b": C}).one()
        intake(conn, CaseReport("grid_patrol", "幕墙玻璃破损", "玻璃掉落", x=cx + 30, y=cy, crs="EPSG:4549",
                                reported_at=datetime(2026, 10, 1, 2, tzinfo=timezone.utc)))

    body = client.get("/scenarios/curtain-wall/ranking", params={"as_of": AS_OF}).json()
    assert [b["building"] for b in body["buildings"]] == [A, B, C, D]
    assert body["counts"] == {"high": 1, "medium": 2, "low": 1}
    for b in body["buildings"]:
        score, confidence, risk = EXPECTED[b["building"]]
        assert b["score"] == pytest.approx(score, abs=0.01), b
        assert (b["confidence"], b["risk_class"]) == (pytest.approx(confidence), risk)
        assert sum(x["contribution"] for x in b["reasons"]) == pytest.approx(b["score"], abs=0.05)
    reasons = {b["building"]: {x["factor"]: x for x in b["reasons"]} for b in body["buildings"]}
    assert reasons[A]["glass_type"]["value"] == "ordinary" and reasons[A]["glass_type"]["contribution"] == 12
    assert reasons[A]["support_type"]["value"] == "cable"  # 索支承 read as cable
    assert reasons[A]["inspection_overdue"]["detail"].startswith("sealant_sampling due 2005-12-31")
    assert (reasons[B]["sensor_alerts"]["value"], reasons[B]["sensor_alerts"]["contribution"]) == (1, 4.8)
    assert reasons[A]["sensor_alerts"]["detail"] == "no tilt/wind sensor on the building"
    assert (reasons[C]["breakage_nearby"]["value"], reasons[C]["breakage_nearby"]["contribution"]) == (1, 2)
    assert reasons[C]["height"] == {"factor": "height", "value": 18.3, "level": 0.0, "contribution": 0.0,
                                    "missing": False, "detail": "the building's height"}
    unknown = [x["factor"] for x in body["buildings"][2]["reasons"] if x["missing"]]
    assert unknown == ["beyond_design_life", "own_breakage", "storm_exposure", "support_type"]
    assert body["buildings"][2]["reasons"][-4:][0]["detail"] == "unknown: lowers the confidence by 8.0 %"
    assert reasons[D]["inspection_findings"]["missing"] is True

    overdue = client.get("/scenarios/curtain-wall/overdue", params={"as_of": AS_OF}).json()
    got = [(o["building"], o["obligation"], o["due"], o["days_overdue"]) for o in overdue["overdue"]]
    assert got == [
        (A, "sealant_sampling", "2005-12-31", (DAY - date(2005, 12, 31)).days),
        (A, "inspection", "2020-06-01", (DAY - date(2020, 6, 1)).days),  # beyond design life: yearly
        (B, "sealant_sampling", "2024-01-10", (DAY - date(2024, 1, 10)).days),
        (C, "inspection", "2025-05-01", (DAY - date(2025, 5, 1)).days),
        (A, "appraisal", "2025-09-02", (DAY - date(2025, 9, 2)).days),  # 30 days after the breakage
        (D, "inspection", "2025-12-31", (DAY - date(2025, 12, 31)).days),  # first: 1 year after completion
    ]


def test_push_reaches_grid_and_department_and_outcomes_give_precision(url, engine, client, keys):
    r = client.post("/scenarios/curtain-wall/push", json={"top": 5, "min_score": 45, "as_of": AS_OF},
                    headers=keys["loader"])
    assert r.status_code == 200, r.text
    pushed = r.json()
    assert pushed["case_class"] == "E0405 幕墙玻璃破损"  # the catalogue has no 幕墙安全隐患 class
    assert [p["building"] for p in pushed["pushed"]] == [A, B]
    with engine.connect() as conn:
        for p in pushed["pushed"]:
            grid = conn.execute(sa.text("SELECT grid_code FROM buildings WHERE source_id = :b AND valid_to IS NULL"),
                                {"b": p["building"]}).scalar()
            housing = {r.department.code for r in responsibility_for(conn, [grid])[grid]
                       if "房管" in r.department.name}
            assert housing and p["grid_code"] == grid and p["department_code"] in housing, p
            case = client.get(f"/cases/{p['case_id']}").json()
            assert case["status"] == "dispatched" and case["class_code"] == "E0405"
            assert case["attributes"]["building"] == p["building"]
    # pending pushes are not pushed again; the pushed cases do not count as breakage near anything
    again = client.post("/scenarios/curtain-wall/push", json={"top": 5, "min_score": 45, "as_of": AS_OF},
                        headers=keys["loader"]).json()
    assert again["pushed"] == [] and again["pending_skipped"] == [A, B]
    ranking = client.get("/scenarios/curtain-wall/ranking", params={"as_of": AS_OF, "limit": 2, "offset": 2}).json()
    assert [(b["building"], b["rank"], b["score"]) for b in ranking["buildings"]] == [(C, 3, 40.8), (D, 4, 8.1)]

    a_case, b_case = (p["case_id"] for p in pushed["pushed"])
    r = client.post("/scenarios/curtain-wall/outcome", json={"case_id": a_case, "confirmed": True,
                                                             "note": "两块玻璃自爆"}, headers=keys["loader"])
    assert r.status_code == 200 and r.json()["outcome"] == "confirmed", r.text
    out = run_cim("scenarios", "curtain-wall", "outcome", "--building", B, "--not-confirmed", "--by", "巡检员",
                  db_url=url)
    assert "not_confirmed" in out.stdout
    assert client.post("/scenarios/curtain-wall/outcome", json={"case_id": a_case, "confirmed": False},
                       headers=keys["loader"]).status_code == 409
    log = client.get(f"/cases/{a_case}").json()["log"]
    assert log[-1]["action"] == "comment" and "confirmed" in log[-1]["note"]
    precision = client.get("/scenarios/curtain-wall/precision").json()
    assert (precision["pushed"], precision["confirmed"], precision["inspected"], precision["precision"]) == (2, 1, 2, 0.5)
    assert precision["summary"] == "1/2 confirmed on inspection (50.0%)"
    assert precision["by_model_version"][0]["model_version"] == "2026.12-1"
    # with their outcomes in, the buildings may be pushed again: the top one first, as a new case
    again = client.post("/scenarios/curtain-wall/push", json={"top": 1, "min_score": 45, "as_of": AS_OF},
                        headers=keys["loader"]).json()
    assert [p["building"] for p in again["pushed"]] == [A] and again["pushed"][0]["case_id"] not in (a_case, b_case)


def test_geojson_for_the_viewer(client):
    fc = client.get("/scenarios/curtain-wall/ranking", params={"as_of": AS_OF, "f": "geojson"}).json()
    assert fc["type"] == "FeatureCollection" and fc["numberMatched"] == 4
    first = fc["features"][0]
    assert first["id"] == A and first["geometry"]["type"] == "MultiPolygon"
    lon, lat = first["geometry"]["coordinates"][0][0][0]
    assert 121.3 < lon < 121.6 and 31.0 < lat < 31.3
    script = (PROJECT / "api" / "static" / "viewer" / "scenario_curtain_wall.js").read_text(encoding="utf-8")
    assert "scenarios/curtain-wall/ranking" in script and "f=geojson" in script


def test_bad_records_file_is_refused_with_line_and_field(url, engine, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\n" + f"{A},9000,frame,bulletproof,,,,1995,,,,,,,,,,,,\n"
                   f"{B},abc,frame,tempered,,,,1995,,,2021-13-01,,,,,,,,,\n" + f"{A},,,,,,,,,,,,,,,,,,,\n"
                   + "NOPE-1,,,,,,,,,,,,,,,,,,,\n", encoding="utf-8")
    with pytest.raises(RecordsFileError) as err, engine.begin() as conn:
        load_records(conn, bad)
    text = str(err.value)
    assert "line 2, field glass_type: unknown glass type 'bulletproof'" in text
    assert "line 3, field wall_area_m2: 'abc' is not a number" in text
    assert "line 3, field last_inspection_date: '2021-13-01' is not a valid date" in text
    assert "line 4, field building_id: building 'BLD-00002' repeated (also at line 2)" in text
    unknown = tmp_path / "unknown.geojson"
    unknown.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null, '
                       '"properties": {"building_id": "NOPE-1", "glass_type": "夹胶"}}]}', encoding="utf-8")
    with pytest.raises(RecordsFileError, match="feature 1, field building_id: unknown building 'NOPE-1'"), \
            engine.begin() as conn:
        load_records(conn, unknown)
    with engine.connect() as conn:  # nothing of either file was written
        assert conn.execute(sa.text("SELECT count(*) FROM curtain_wall_records")).scalar() == 4
    # a good GeoJSON dossier: Shanghai's words read as codes, a column without a field kept in attributes
    good = tmp_path / "good.geojson"
    good.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None,
                                "properties": {"building": D, "support_type": "明框", "glass_type": "夹层玻璃",
                                               "completion_year": 2024, "sealant_type": "耐候胶", "use_below": "绿地",
                                               "备注": "新建"}}]}, ensure_ascii=False), encoding="utf-8")
    with engine.begin() as conn:
        assert load_records(conn, good).updated == 1
        row = conn.execute(sa.text("SELECT support_type, glass_type, sealant_type, use_below, height_m, attributes "
                                   "FROM curtain_wall_records WHERE building_source_id = :b"), {"b": D}).one()
        assert tuple(row) == ("frame", "laminated", "weatherproof", "enclosed", None, {"备注": "新建"})
        load_records(conn, _write(tmp_path / "again.csv", RECORDS))  # back to the hand-checked dossiers


def test_scoring_file_with_unknown_factor_or_key_is_refused_with_its_line(url, tmp_path):
    text = PACKAGED_MODEL.read_text(encoding="utf-8")
    lines = text.splitlines()
    bad = text + "\n[factors.colour]\nweight = 3\nlevels = { blue = 1.0 }\n"
    with pytest.raises(ModelFileError, match=rf"line {len(lines) + 2}: unknown factor 'colour'"):
        parse_model(bad, "bad.toml")
    typo = text.replace("weight = 12\n", "wieght = 12\n", 1)
    line = typo.splitlines().index("wieght = 12") + 1
    with pytest.raises(ModelFileError, match=rf"line {line}: factor glass_type: unknown key 'wieght'"):
        parse_model(typo, "typo.toml")
    uncovered = text.replace("levels = { laminated = 0.0, tempered = 0.6, ordinary = 1.0 }",
                             "levels = { laminated = 0.0, tempered = 0.6 }")
    with pytest.raises(ModelFileError, match="factor glass_type: no level for ordinary"):
        parse_model(uncovered, "uncovered.toml")
    path = tmp_path / "bad.toml"
    path.write_text(bad, encoding="utf-8")
    out = run_cim("scenarios", "curtain-wall", "rank", "--model", str(path), "--as-of", AS_OF, db_url=url, check=False)
    assert out.returncode == 1 and "unknown factor 'colour'" in out.stderr and "Traceback" not in out.stderr


def test_bad_api_parameters_name_the_parameter(client, keys):
    r = client.get("/scenarios/curtain-wall/ranking", params={"class": "severe"})
    assert r.status_code == 400 and r.json()["parameter"] == "class"
    r = client.get("/scenarios/curtain-wall/overdue", params={"as_of": "2026-12-01T08:00:00"})
    assert r.status_code == 400 and r.json()["parameter"] == "as_of"
    r = client.get("/scenarios/curtain-wall/ranking", params={"as_of": "0001-01-01"})
    assert r.status_code == 400 and r.json()["parameter"] == "as_of"
    r = client.post("/scenarios/curtain-wall/push", json={"top": 0}, headers=keys["loader"])
    assert r.status_code == 400 and r.json()["parameter"] == "top"
    assert client.post("/scenarios/curtain-wall/push", json={"top": 1}, headers=keys["reader"]).status_code == 403
    r = client.post("/scenarios/curtain-wall/outcome", json={"case_id": 999999, "confirmed": True},
                    headers=keys["loader"])
    assert r.status_code == 404
