"""Illegal construction (issue 14, item 3) end to end on the sample city, one database for the module.

The sample (scenarios/illegal_building/sample/, see its generate.py) is loaded as ``make demo`` does:
the 拆违办 posts through ``cim ingest responsibility``, then ``cim scenarios illegal-building sample``.
Hand-checked expectations, in metres from a point of 田林街道第1网格 (310104011001001):

* spot A at (0, 0): grid patrol GP-2026-1001 (first, 10-05), hotline 12345-2026-88121 at (12, 0),
  property app WY-2026-0311 at (0, 25), drone change polygon RS-2026-10-017 (20 × 15 m around (5, 0))
  → one spot, one case; B at (80, 0) is 80 m off A (> 30 m), and GP-2026-1010 at (100, 0) joins B;
  C is the change polygon RS-2026-10-018 on the register's WJ-REG-0001 200 m north; D at (0, −150).
* 龙华街道第1网格: 27 clues 50 m apart (none merge): two a month Oct 2025 – Sep 2026, three in Oct 2026.
* So 35 clues, 31 spots, 4 merged. In Oct 2026 田林's grid has 4 spots against a baseline of 0 (hot);
  龙华's has 3 against its 2 a month (p ≈ 0.33: not hot).
"""
from __future__ import annotations

import json
import subprocess

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cases.lifecycle import Action, act, verifiers
from cases.model import case_log, get_case
from cim.apikeys import create_key
from cim.errors import ConflictError, ParameterError, UserError
from ingest.run import IngestOptions, ingest_files
from scenarios.illegal_building import flow, structures
from scenarios.illegal_building.clues import spot_of
from scenarios.illegal_building.hotspots import hotspots
from scenarios.illegal_building.importer import read_changes, read_clues
from tests.conftest import PROJECT, run_cim
from tests.test_dependency_rule import LINT_IMPORTS
from tests.test_geocode import load_city

SAMPLE = PROJECT / "scenarios" / "illegal_building" / "sample"
TIANLIN_GRID, LONGHUA_GRID = "310104011001001", "310104016001001"
TIANLIN_CWB, DISTRICT_CWB = "310104011-CWB", "310104-CWB"


@pytest.fixture(scope="module")
def city(engine, db_url):
    load_city(engine)
    ingest_files("responsibility", [SAMPLE / "responsibility.csv"], IngestOptions(), engine)
    summary = json.loads(run_cim("scenarios", "illegal-building", "sample", db_url=db_url).stdout)
    assert summary["structures"] == {"inserted": 2, "updated": 0, "unchanged": 0}
    assert (summary["clues"], summary["spots_opened"], summary["merged"]) == (35, 31, 4)
    return engine


def _clue(conn, external_id: str):
    return conn.execute(sa.text("SELECT id, merged_into, case_id, grid_code FROM ib_clues WHERE external_id = :e"),
                        {"e": external_id}).one()


def _ext(conn, ids: list[int]) -> set[str]:
    return set(conn.execute(sa.text("SELECT external_id FROM ib_clues WHERE id = ANY(:i)"), {"i": ids}).scalars())


def test_clues_on_one_spot_merge_into_one_verification_case(city):
    with city.connect() as conn:
        a = _clue(conn, "GP-2026-1001")
        assert _ext(conn, spot_of(conn, a.id)) == {"GP-2026-1001", "12345-2026-88121", "WY-2026-0311", "RS-2026-10-017"}
        assert _ext(conn, spot_of(conn, _clue(conn, "CW-2026-0077").id)) == {"CW-2026-0077", "GP-2026-1010"}
        for alone in ("12319-2026-4410", "RS-2026-10-018", "GP-LH-001", "GP-LH-027"):
            assert _ext(conn, spot_of(conn, _clue(conn, alone).id)) == {alone}
        case = get_case(conn, a.case_id)
        assert (case.class_code, case.status, case.grid_code) == ("E9601", "dispatched", TIANLIN_GRID)
        assert (case.department_code, case.department_name) == (TIANLIN_CWB, "田林街道拆违办")
        merged = [e for e in case_log(conn, case.id) if e.data.get("merged_into_clue") == a.id]
        assert sorted(e.data["channel"] for e in merged) == ["hotline", "property_app", "remote_sensing"]
        # every merged clue points at its spot's case; 31 spots, 31 verification cases
        assert conn.execute(sa.text("SELECT count(DISTINCT case_id), count(*) FILTER (WHERE merged_into IS NOT NULL) "
                                    "FROM ib_clues")).one() == (31, 4)


def test_clue_over_http(city):
    client = TestClient(create_app(city))
    with city.begin() as conn:
        key = {"X-API-Key": create_key(conn, "reader", "app")[1]}
    with city.connect() as conn:
        lon, lat = conn.execute(sa.text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_SetSRID(ST_MakePoint("
                                        "ST_X(geom) + 20, ST_Y(geom)), 4549), 4326) AS p FROM ib_clues "
                                        "WHERE external_id = 'CW-2026-0077') s")).one()
    body = {"channel": "property_app", "lon": lon, "lat": lat, "external_id": "WY-HTTP-1",
            "reported_at": "2026-10-20T09:00:00+08:00", "description": "沿街搭棚"}
    r = client.post("/scenarios/illegal-building/clues", json=body, headers=key)
    assert r.status_code == 201, r.text
    with city.connect() as conn:
        b = _clue(conn, "CW-2026-0077")
    assert (r.json()["merged_into"], r.json()["case_id"], r.json()["grid_code"]) == (b.id, b.case_id, TIANLIN_GRID)
    again = client.post("/scenarios/illegal-building/clues", json=body, headers=key)
    assert (again.status_code, again.json()["clue_id"]) == (200, r.json()["clue_id"])
    spot = client.get(f"/scenarios/illegal-building/clues/{b.id}/spot").json()["spot"]
    assert r.json()["clue_id"] in spot and len(spot) == 3
    bad = client.post("/scenarios/illegal-building/clues", json={"channel": "wechat", "lon": lon, "lat": lat}, headers=key)
    assert bad.status_code == 400 and "channel" in bad.json()["detail"]
    nowhere = client.post("/scenarios/illegal-building/clues", json={"channel": "hotline"}, headers=key)
    assert nowhere.status_code == 400 and "address" in nowhere.json()["detail"]
    assert client.get("/scenarios/illegal-building/clues/999999/spot").status_code == 404
    layer = client.get("/scenarios/illegal-building/structures").json()
    assert {f["id"] for f in layer["features"]} >= {"WJ-REG-0001", "WJ-REG-0002"}
    assert client.get("/scenarios/illegal-building/structures/WJ-NONE").status_code == 404
    assert client.get("/scenarios/illegal-building/structures", params={"status": "a\x00"}).status_code == 400
    nul = client.post("/scenarios/illegal-building/clues", json={**body, "external_id": "X", "description": "a\x00"},
                      headers=key)
    assert nul.status_code == 400 and "description" in nul.json()["detail"]
    nul = client.post("/scenarios/illegal-building/clues", json={**body, "external_id": "Y", "attributes": {"k": "\x00"}},
                      headers=key)
    assert nul.status_code == 400 and "attributes" in nul.json()["detail"]
    hot = client.get("/scenarios/illegal-building/hotspots", params={"from": "2026-10", "to": "2026-10", "hot": "true"})
    assert [g["grid_code"] for g in hot.json()["grid_months"]] == [TIANLIN_GRID]
    bad_month = client.get("/scenarios/illegal-building/hotspots", params={"from": "2026-13", "to": "2026-10"})
    assert bad_month.status_code == 400 and "from" in bad_month.json()["detail"]
    assert client.post("/scenarios/illegal-building/structures/WJ-REG-0002/certificate",
                       json={"certificate_no": "1"}, headers=key).status_code == 403  # a reader key may not


def _verify_case(conn, external_id: str) -> int:
    case_id = _clue(conn, external_id).case_id
    act(conn, case_id, Action("accept", "拆违队员", "department"))
    return case_id


def _handle(conn, case_id: int, finding: str) -> None:
    act(conn, case_id, Action("handle", "拆违队员", "department", "现场核查", {"finding": finding}))


def _next(conn, case_id: int):
    found = conn.execute(sa.text("SELECT id FROM cases WHERE (attributes->>'follows')::bigint = :c"),
                         {"c": case_id}).scalars().all()
    return [get_case(conn, i) for i in found]


def test_verification_flow_paths(city):
    with city.begin() as conn:
        # a handle without a finding is refused and changes nothing
        a = _verify_case(conn, "GP-2026-1001")
        with pytest.raises(ParameterError, match="finding"):
            with conn.begin_nested():
                act(conn, a, Action("handle", "拆违队员", "department", "现场核查"))
        assert get_case(conn, a).status == "accepted"
        # A: under construction → added to the layer (its change polygon), fast procedure at the street
        _handle(conn, a, "under_construction")
        [fast] = _next(conn, a)
        assert (fast.class_code, fast.department_code, fast.grid_code) == ("E9603", TIANLIN_CWB, TIANLIN_GRID)
        code = fast.attributes["structure_code"]
        assert (code, fast.attributes["linked"]) == (f"WJ-{TIANLIN_GRID}-0001", False)
        row = conn.execute(sa.text("SELECT status, source, round(area_m2) AS area, case_ids FROM ib_structures "
                                   "WHERE code = :c"), {"c": code}).one()
        assert (row.status, row.source, row.area, row.case_ids) == ("under_construction", "case", 300, [a])
        act(conn, fast.id, Action("accept", "拆违队员", "department"))
        _handle(conn, fast.id, "demolished")
        assert conn.execute(sa.text("SELECT status FROM ib_structures WHERE code = :c"), {"c": code}).scalar() == "demolished"
        # C: existing, on the register's structure → linked, normal procedure
        c = _verify_case(conn, "RS-2026-10-018")
        _handle(conn, c, "existing")
        [normal] = _next(conn, c)
        assert (normal.class_code, normal.attributes["structure_code"], normal.attributes["linked"]) == \
            ("E9604", "WJ-REG-0001", True)
        assert conn.execute(sa.text("SELECT case_ids FROM ib_structures WHERE code = 'WJ-REG-0001'")).scalar() == [c]
        # D: not illegal → the district re-checks; the district confirms it as existing → normal procedure
        d = _verify_case(conn, "12319-2026-4410")
        _handle(conn, d, "not_illegal")
        [recheck] = _next(conn, d)
        assert (recheck.class_code, recheck.department_code, recheck.department_name, recheck.grid_code) == \
            ("E9602", DISTRICT_CWB, "区拆违办", TIANLIN_GRID)
        act(conn, recheck.id, Action("accept", "复核员", "department"))
        _handle(conn, recheck.id, "existing")
        [after] = _next(conn, recheck.id)
        assert after.class_code == "E9604" and after.attributes["linked"] is False
        # B: the district agrees it is not illegal → the flow ends there
        b = _verify_case(conn, "CW-2026-0077")
        _handle(conn, b, "not_illegal")
        [recheck_b] = _next(conn, b)
        act(conn, recheck_b.id, Action("accept", "复核员", "department"))
        _handle(conn, recheck_b.id, "not_illegal")
        assert _next(conn, recheck_b.id) == []
        # the verifying case itself closes through the ordinary 核查
        worker = verifiers(conn, get_case(conn, b))[0]  # the grid worker (网格监督员) of the spot's grid
        act(conn, b, Action("verify", worker, "supervisor", data={"passed": True}))
        assert get_case(conn, b).status == "closed"


def test_property_certificate_rechecks(city):
    with city.begin() as conn:
        case_id = flow.certificate(conn, "WJ-REG-0002", "沪房地徐字2026第001234号")
        case = get_case(conn, case_id)
        assert (case.class_code, case.department_code) == ("E9605", DISTRICT_CWB)
        assert conn.execute(sa.text("SELECT status FROM ib_structures WHERE code = 'WJ-REG-0002'")).scalar() == "rechecking"
        with pytest.raises(ConflictError):
            with conn.begin_nested():
                flow.certificate(conn, "WJ-REG-0002", "another")
        act(conn, case_id, Action("accept", "复核员", "department"))
        _handle(conn, case_id, "legal")
        assert conn.execute(sa.text("SELECT status, certificate_no FROM ib_structures WHERE code = 'WJ-REG-0002'")
                            ).one() == ("legalised", "沪房地徐字2026第001234号")
        # the register loaded again does not undo what the flow found
        assert structures.load_register(conn, SAMPLE / "structures.geojson") == \
            {"inserted": 0, "updated": 0, "unchanged": 2}
        assert conn.execute(sa.text("SELECT status FROM ib_structures WHERE code = 'WJ-REG-0002'")).scalar() == "legalised"


def test_hotspots_by_grid_against_its_baseline(city):
    with city.connect() as conn:
        october = {r.grid_code: r for r in hotspots(conn, "2026-10", "2026-10")}
    tianlin, longhua = october[TIANLIN_GRID], october[LONGHUA_GRID]
    assert (tianlin.count, tianlin.baseline, tianlin.hot) == (4, 0.0, True)
    assert tianlin.p_value < 1e-6
    assert (longhua.count, longhua.baseline, longhua.hot) == (3, 2.0, False)
    assert longhua.p_value == pytest.approx(0.3346, abs=1e-3)


def test_bad_clue_files_name_the_row(tmp_path, city, db_url):
    csv_file = tmp_path / "clues.csv"
    csv_file.write_text("channel,lon,lat,reported_at\nhotline,121.43,31.18,2026-10-01\nwechat,121.43,31.18,\n",
                        encoding="utf-8")
    with pytest.raises(UserError, match=r"clues.csv, row 3: field channel: 'wechat'"):
        read_clues(csv_file)
    naive = tmp_path / "naive.csv"
    naive.write_text("channel,lon,lat,reported_at\nhotline,121.43,31.18,2026-10-01T08:00:00\n", encoding="utf-8")
    with pytest.raises(UserError, match="row 2: field reported_at"):
        read_clues(naive)
    line = tmp_path / "changes.geojson"
    line.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {
        "id": "X1", "detected_at": "2026-10-01"}, "geometry": {"type": "LineString",
                                                               "coordinates": [[121.43, 31.18], [121.44, 31.18]]}}]}))
    with pytest.raises(UserError, match="feature 1: geometry: a change is a polygon, got LineString"):
        read_changes(line)
    proc = run_cim("scenarios", "illegal-building", "import", str(csv_file), db_url=db_url, check=False)
    assert proc.returncode == 1 and "row 3: field channel" in proc.stderr and "Traceback" not in proc.stderr


def test_the_two_scenarios_stand_alone(tmp_path):
    """Illegal construction and group rental never import each other (nor the API: the layers
    contract of pyproject.toml). Checked here with a contract of its own, because the toy projects
    of tests/test_dependency_rule.py copy pyproject's contracts without these subpackages."""
    config = tmp_path / "scenarios.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["scenarios", "cases", "cim"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "scenarios stand alone"\ntype = "independence"\n'
                      'modules = ["scenarios.illegal_building", "scenarios.group_rental"]\n', encoding="utf-8")
    proc = subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", str(config)], cwd=PROJECT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "1 kept" in proc.stdout, proc.stdout + proc.stderr


#: true once the 2D map draws the illegal-construction layer (hot-spot grids, structures, open clue spots) and a
#: click on a spot shows its case in the info panel
ILLEGAL_BUILDING_DRAWN = """(() => {
  const m = window.cimMap; if (!m || !m.loaded() || !m.getSource('illegal-building')) return false;
  if (![['ib-hotspot-fill'], ['ib-structure-fill', 'ib-structure-point'], ['ib-spot']].every(
    (layers) => m.queryRenderedFeatures({layers}).length > 0)) return false;
  const spot = m.queryRenderedFeatures({layers: ['ib-spot']})[0];
  const point = m.project(spot.geometry.coordinates);
  m.fire('click', {point, lngLat: m.unproject(point), originalEvent: {}});
  const info = document.getElementById('info');
  return !info.hidden && document.getElementById('info-title').textContent.startsWith('违建线索')
      && info.textContent.includes('case_id') && info.textContent.includes('case_status');
})()"""


def test_viewer_layer_over_http(city):
    client = TestClient(create_app(city))
    r = client.get("/scenarios/illegal-building/layer", params={"month": "2026-10"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["month"] == "2026-10"
    by_kind: dict[str, list[dict]] = {}
    for f in body["features"]:
        by_kind.setdefault(f["properties"]["kind"], []).append(f)
    grids = {f["properties"]["grid_code"]: f for f in by_kind["hotspot"]}
    assert (grids[TIANLIN_GRID]["properties"]["count"], grids[TIANLIN_GRID]["properties"]["hot"]) == (4, True)
    assert (grids[LONGHUA_GRID]["properties"]["count"], grids[LONGHUA_GRID]["properties"]["hot"]) == (3, False)
    assert {g["geometry"]["type"] for g in grids.values()} <= {"Polygon", "MultiPolygon"}
    with city.connect() as conn:
        layer = {s["code"]: s["status"] for s in structures.list_structures(conn)}
        open_leads = set(conn.execute(sa.text(
            "SELECT l.id FROM ib_clues l JOIN cases c ON c.id = l.case_id WHERE l.merged_into IS NULL "
            "AND c.status NOT IN ('closed', 'not_registered', 'merged')")).scalars())
        lh1 = _clue(conn, "GP-LH-001")
    assert {f["id"]: f["properties"]["status"] for f in by_kind["structure"]} == layer and "WJ-REG-0001" in layer
    # the register's are polygons; one a case added from a point clue is that point
    assert {f["geometry"]["type"] for f in by_kind["structure"] if f["properties"]["source"] == "register"} == {"Polygon"}
    assert {f["geometry"]["type"] for f in by_kind["structure"]} <= {"Polygon", "MultiPolygon", "Point"}
    spots = {f["properties"]["clue_id"]: f for f in by_kind["spot"]}
    assert set(spots) == open_leads and len(spots) >= 27  # 龙华's 27 clues stay open in this module
    p = spots[lh1.id]["properties"]
    assert (p["case_id"], p["clues"], p["grid_code"], spots[lh1.id]["geometry"]["type"]) == \
        (lh1.case_id, 1, LONGHUA_GRID, "Point")
    lon, lat = spots[lh1.id]["geometry"]["coordinates"]
    assert 121.3 < lon < 121.6 and 31.1 < lat < 31.3  # WGS84, in 徐汇
    # the default month is the latest clue's
    assert client.get("/scenarios/illegal-building/layer").json()["month"] >= "2026-10"
    for params, name in (({"month": "2026-13"}, "month"), ({"baseline": "0"}, "baseline"),
                         ({"alpha": "2"}, "alpha"), ({"min_count": "x"}, "min_count")):
        bad = client.get("/scenarios/illegal-building/layer", params=params)
        assert bad.status_code == 400 and name in bad.json()["detail"], (params, bad.text)


def test_the_viewer_draws_the_illegal_building_layer(city, db_url, tmp_path):
    from tests.servers import serve_app
    from tests.test_viewer import _browser, _needs_libraries

    _needs_libraries()
    with serve_app(db_url) as base:
        result = _browser(f"{base}/viewer#2d", ILLEGAL_BUILDING_DRAWN, tmp_path / "viewer-illegal-building.png")
    assert result["ok"], result
    assert not result["errors"], result["errors"]
