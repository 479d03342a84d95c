"""Past one node (issue 15, item 5): the city base on a Citus cluster — a coordinator and two workers
on loopback, started by the real ``cim db up --workers 2`` (conftest ``citus_home``) — through the
same commands and API as on one node: ``cim init`` places the tables (reference / distributed and
co-located on the district code), ``cim samples load`` loads the sample city, a second delivery
merges, the API answers items, grid lookup, nearby and tiles, a case goes through dispatch; a worker
that is down makes the queries that need its shards 503 until it is back.

Marked ``citus`` (``-m citus`` runs only these; ``make test`` runs them with the rest).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from cim.citus import CitusCluster, citus_bindir
from cim.database import dispose_engines, engine_for
from cim.distribution import DISTRIBUTED_TABLES, REFERENCE_TABLES, placement
from cim.spatial import to_storage
from tests.conftest import PROJECT, run_cim

pytestmark = pytest.mark.citus

SAMPLES = PROJECT / "data_samples"
XUHUI = "310104"
FENYANG_150 = (121.4468, 31.2101)  # WGS84, near 汾阳路150号 in the sample district


@pytest.fixture(scope="module")
def base(citus_home: Path) -> SimpleNamespace:
    """The sample city on the Citus cluster, through the real commands: ``cim init``, ``cim samples load``."""
    env = {"CIM_HOME": str(citus_home)}
    init = run_cim("init", env=env).stdout
    loaded = json.loads(run_cim("samples", "load", "--json", env=env).stdout)
    cluster = CitusCluster(citus_home, 2)
    url = cluster.coordinator.url()
    return SimpleNamespace(home=citus_home, env=env, init=init, loaded=loaded, cluster=cluster, url=url,
                           engine=engine_for(url))


def _rows(base, sql: str, **params) -> list:
    with base.engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def test_init_makes_reference_and_co_located_distributed_tables(base):
    assert "citus: parts distributed on district_code" in base.init
    with base.engine.connect() as conn:
        placed = placement(conn)
    assert {t: placed.get(t) for t in REFERENCE_TABLES} == {t: "reference" for t in REFERENCE_TABLES}
    assert {t: placed.get(t) for t in DISTRIBUTED_TABLES} == {t: "distributed" for t in DISTRIBUTED_TABLES}
    colocation = _rows(base, "SELECT DISTINCT colocation_id FROM citus_tables WHERE table_name::text = ANY(:t) "
                             "AND distribution_column = 'district_code'", t=list(DISTRIBUTED_TABLES))
    assert len(colocation) == 1  # one co-location group: a district's rows of every layer on one node
    # the case loop's cases and log and the readings are distributed with the layers; their code lists are
    # reference tables, their small tables (rules, alerts, latest values, attachments) stay on the coordinator
    assert {placed["cases"], placed["case_events"], placed["iot_readings"]} == {"distributed"}
    assert placed["case_classes"] == "reference" and placed.get("iot_latest", "local") == "local"
    # the log's key to its case and the class key stay plain foreign keys on Citus (one node checks them by
    # statement-level trigger instead: migration 0011_case_keys), the first co-located through the district
    keys = dict(_rows(base, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' "
                            "AND conrelid IN ('cases'::regclass, 'case_events'::regclass)"))
    assert keys.get("case_events_case_id_fkey") == ("FOREIGN KEY (case_id, district_code) REFERENCES "
                                                    "cases(id, district_code)")
    assert keys.get("cases_class_code_fkey") == "FOREIGN KEY (class_code) REFERENCES case_classes(code)"
    # a second init changes nothing
    assert "nothing to change" in run_cim("init", env=base.env).stdout
    status = run_cim("db", "status", env=base.env).stdout
    assert status.count("citus worker") == 2 and "citus coordinator" in status
    # cim db up again (what a restart runs): a worker that holds Citus metadata refuses any CREATE EXTENSION,
    # so only missing extensions are made
    assert "Citus cluster up" in run_cim("db", "up", env=base.env).stdout


def test_loaded_rows_live_on_the_workers_by_district(base):
    parts_loaded = sum(r["inserted"] for r in base.loaded if r["layer"] == "parts")
    assert parts_loaded > 1000
    assert _rows(base, "SELECT count(*) FROM parts WHERE valid_to IS NULL")[0][0] == parts_loaded
    # every row is in a shard on a worker (group > 0), none on the coordinator
    on_shards = _rows(base, "SELECT sum(result::bigint) FROM run_command_on_shards('parts', "
                            "'SELECT count(*) FROM %s')")[0][0]
    assert on_shards == parts_loaded
    nodes = _rows(base, "SELECT DISTINCT n.groupid FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) "
                        "JOIN pg_dist_node n ON n.groupid = p.groupid WHERE s.logicalrelid = 'parts'::regclass")
    assert {g for (g,) in nodes} and all(g > 0 for (g,) in nodes)
    assert len(nodes) == 2  # the 32 shards are spread over both workers
    # partitioned by district (cim.schema) and distributed with its partitions: 徐汇's is a distributed table
    assert _rows(base, "SELECT pg_get_partkeydef('parts'::regclass)")[0][0] == "LIST (district_code)"
    assert _rows(base, "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'parts_310104'::regclass")[0][0] == 1
    assert _rows(base, "SELECT count(*) FROM parts_310104 WHERE valid_to IS NULL")[0][0] == parts_loaded
    # co-location: the parts and the buildings of 徐汇区 sit in shards on the same worker
    same = _rows(base, """
        SELECT (SELECT nodeport FROM citus_shards WHERE shardid = get_shard_id_for_distribution_column('parts', :d)),
               (SELECT nodeport FROM citus_shards WHERE shardid = get_shard_id_for_distribution_column('buildings', :d))
        """, d=XUHUI)[0]
    assert same[0] == same[1]
    assert _rows(base, "SELECT count(*) FROM buildings WHERE district_code = :d", d=XUHUI)[0][0] > 0


def test_a_second_delivery_merges_and_keeps_history(base, tmp_path):
    source = json.loads((SAMPLES / "xuhui" / "parts.geojson").read_text(encoding="utf-8"))
    source["features"] = source["features"][:50]
    source["features"][0]["properties"]["name"] = "改名的部件"
    changed_id = source["features"][0]["properties"]["source_id"]
    # a part that moves out of 徐汇区 (to 浦东, which this base has no district for): its new version lives
    # in another shard, and the old one is closed in its own
    moved = source["features"][1]
    moved["geometry"]["coordinates"][:2] = [121.80, 31.10]
    path = tmp_path / "parts.geojson"
    path.write_text(json.dumps(source, ensure_ascii=False), encoding="utf-8")
    report = json.loads(run_cim("ingest", "parts", str(path), "--crs", "EPSG:4326", "--json",
                                env=base.env).stdout)
    assert (report["updated"], report["unchanged"], report["rejected"]) == (2, 48, 0), report
    versions = _rows(base, "SELECT name, valid_to IS NULL FROM parts WHERE source_id = :s ORDER BY fid",
                     s=changed_id)
    assert len(versions) == 2 and versions[-1] == ("改名的部件", True) and versions[0][1] is False
    history = _rows(base, "SELECT district_code, valid_to IS NULL, feature_id, "
                          "get_shard_id_for_distribution_column('parts', district_code) FROM parts "
                          "WHERE source_id = :s ORDER BY fid", s=moved["properties"]["source_id"])
    assert [(d, current) for d, current, _, _ in history] == [(XUHUI, False), ("", True)]
    assert history[0][2] == history[1][2] and history[0][3] != history[1][3]  # one feature, two shards


def test_reorder_is_refused_on_a_coordinator_with_a_clear_error(base):
    refused = run_cim("ingest", "reorder", "parts", env=base.env, check=False)
    assert refused.returncode != 0 and "Citus" in refused.stderr + refused.stdout, refused
    assert "Traceback" not in refused.stderr


@pytest.fixture(scope="module")
def client(base):
    from api.app import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIM_HOME", str(base.home))
        with TestClient(create_app(base.engine)) as c:
            yield c


def _bbox_around(lon: float, lat: float, d: float = 0.01) -> str:
    return f"{lon - d},{lat - d},{lon + d},{lat + d}"


def test_api_items_grid_lookup_nearby_and_tiles(base, client):
    lon, lat = FENYANG_150
    items = client.get("/collections/parts/items", params={"bbox": _bbox_around(lon, lat), "limit": 100})
    assert items.status_code == 200, items.text
    features = items.json()["features"]
    assert 0 < len(features) <= 100
    assert {f["properties"]["district_code"] for f in features} == {XUHUI}
    grid = client.get("/grid/lookup", params={"lon": lon, "lat": lat})
    assert grid.status_code == 200, grid.text
    answer = grid.json()["results"][0]
    assert answer["level"] == "grid" and answer["district"]["code"] == XUHUI
    near = client.get("/nearby", params={"layer": "parts", "lon": lon, "lat": lat, "k": 10, "radius": 500})
    assert near.status_code == 200, near.text
    distances = [f["properties"]["distance_m"] for f in near.json()["features"]]
    assert len(distances) == 10 and distances == sorted(distances)
    # the same ten as on one node: the nearest parts by a plain query on the coordinator
    expected = _rows(base, "SELECT source_id FROM parts WHERE valid_to IS NULL ORDER BY geom <-> "
                           "ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 4326), 4549) LIMIT 10", x=lon, y=lat)
    assert [f["properties"]["source_id"] for f in near.json()["features"]] == [r[0] for r in expected]
    # in 3D, walked in 2D order on the shards (ORDER BY <-> LIMIT m pushed down, merged) and proven on the
    # coordinator (cim.spatial): the same ten as ST_3DDistance on the coordinator — also 40 m up, where the
    # parts' first rows in plan do not prove the answer and the walk is taken again with more rows
    (x,), (y,) = to_storage([lon], [lat], "EPSG:4326", 4549)  # as the API moves the point into storage
    for z in (1.5, 40.0):
        near3d = client.get("/nearby", params={"layer": "parts", "lon": lon, "lat": lat, "z": z, "k": 10,
                                               "radius": 500})
        assert near3d.status_code == 200, near3d.text
        expected = _rows(base, "SELECT ST_3DDistance(geom, ST_SetSRID(ST_MakePoint(:x, :y, :z), 4549)) AS d "
                               "FROM parts WHERE valid_to IS NULL ORDER BY d LIMIT 10", x=float(x), y=float(y), z=z)
        assert [f["properties"]["distance_m"] for f in near3d.json()["features"]] == \
            pytest.approx([r[0] for r in expected]), z
    tile = client.get("/collections/parts/tiles/WebMercatorQuad/15/13400/27454")
    assert tile.status_code in (200, 204), tile.text
    tileset = client.get("/3dtiles/buildings/tileset.json")
    assert tileset.status_code == 200 and tileset.json()["root"]["children"] is not None


def test_a_narrower_jurisdiction_is_refused_on_citus_never_widened(base, client):
    """Row-level jurisdiction is not enforced across Citus workers yet: a street-scoped key gets a 501 problem
    document, not the city's rows; a city-wide caller (here: no key, the public) reads as above."""
    from cim.apikeys import create_key
    from cim.users import create_user

    with base.engine.begin() as conn:
        street = conn.execute(sa.text("SELECT code FROM streets WHERE valid_to IS NULL ORDER BY code LIMIT 1")).scalar()
        user = create_user(conn, "citus-street", "viewer", street=street)
        _, key = create_key(conn, user=user)
    refused = client.get("/collections/parts/items", params={"limit": 5}, headers={"X-API-Key": key})
    assert refused.status_code == 501, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json") and "Citus" in refused.json()["detail"]
    assert client.get("/collections/parts/items", params={"limit": 5}).status_code == 200


def _shards_holding(base, table: str, where: str) -> dict[int, int]:
    """Shard id → rows matching ``where`` in that shard of ``table``, for the shards holding any."""
    counts = _rows(base, f"SELECT shardid, result FROM run_command_on_shards('{table}', "
                         f"'SELECT count(*) FROM %s WHERE {where}')")
    return {shard: int(n) for shard, n in counts if int(n)}


def _shard_of(base, table: str, district: str) -> tuple[int, int]:
    """(shard id, worker port) of ``district``'s rows of ``table``."""
    return tuple(_rows(base, "SELECT shardid, nodeport FROM citus_shards WHERE shardid = "
                             "get_shard_id_for_distribution_column(:t, :d)", t=table, d=district)[0])


def test_a_case_goes_through_its_whole_lifecycle_in_its_districts_shard(base, client):
    from cases.intake import CaseReport, intake
    from cases.lifecycle import Action, act, verifiers
    from cases.model import case_log

    t0 = datetime.fromisoformat("2026-11-30T10:00:00+08:00")
    version = "SELECT version FROM layers WHERE table_name = 'case_features'"
    before = _rows(base, version)[0][0]
    with base.engine.begin() as conn:
        case = intake(conn, CaseReport(channel="vehicle_patrol", class_code="道路破损",
                                       address_text="汾阳路150号附近", description="路面龟裂"), now=t0).case
    assert case.status == "dispatched" and case.district_code == XUHUI
    assert case.department_code and case.person_name
    for hours, (action, note) in enumerate((("accept", None), ("handle", "已修补")), 1):
        with base.engine.begin() as conn:  # each action locks the case's row: a statement routed to its shard
            case = act(conn, case.id, Action(action, "养护班组", "department", note), now=t0 + timedelta(hours=hours))
    with base.engine.begin() as conn:
        worker = verifiers(conn, case)[0]
        case = act(conn, case.id, Action("verify", worker, "supervisor", None, {"passed": True}),
                   now=t0 + timedelta(hours=3))
    assert case.status == "closed" and case.closed_at is not None
    # the layer's version (tiles, ETags) moved once per transaction, by the writers: no trigger runs on a shard
    assert _rows(base, version)[0][0] == before + 4
    with base.engine.connect() as conn:
        log = case_log(conn, case.id)
    assert [(e.action, e.to_status) for e in log] == [
        ("report", "reported"), ("register", "registered"), ("dispatch", "dispatched"), ("accept", "accepted"),
        ("handle", "handled"), ("verify", "closed")]
    # the case and its whole log in 徐汇's shards, on the worker that holds 徐汇's parts
    shard, port = _shard_of(base, "cases", XUHUI)
    assert _shards_holding(base, "cases", f"id = {case.id}") == {shard: 1}
    event_shard, event_port = _shard_of(base, "case_events", XUHUI)
    assert _shards_holding(base, "case_events", f"case_id = {case.id}") == {event_shard: 6}
    assert port == event_port == _shard_of(base, "parts", XUHUI)[1]
    assert _rows(base, "SELECT DISTINCT district_code FROM case_events WHERE case_id = :c", c=case.id) == [(XUHUI,)]
    # the cases layer (a view over the distributed table) is served as before
    items = client.get("/collections/cases/items", params={"limit": 100})
    assert items.status_code == 200, items.text
    assert str(case.id) in {f["properties"]["source_id"] for f in items.json()["features"]}


def test_a_case_without_a_district_and_the_set_based_writers(base):
    """A case the geocoder puts nowhere is stored with district '' (its shard: the empty code's); the batch
    intake, the bulk actions, a merge and the tick work across shards."""
    from cases.batch import intake_batch
    from cases.bulk import BulkItem, act_many
    from cases.intake import CaseReport
    from cases.lifecycle import Action, merge, tick

    t0 = datetime.fromisoformat("2026-11-30T11:00:00+08:00")
    reports = [CaseReport(channel="vehicle_patrol", class_code="道路破损", address_text="汾阳路150号附近",
                          description=f"坑{i}", external_id=f"CITUS-{i}") for i in range(2)]
    reports.append(CaseReport(channel="vehicle_patrol", class_code="道路破损", address_text="火星路1号",
                              description="无处", external_id="CITUS-nowhere"))
    with base.engine.begin() as conn:
        first, second, nowhere = intake_batch(conn, reports, now=t0)
    assert (first.status, nowhere.status) == ("dispatched", "registered")
    assert _rows(base, "SELECT district_code FROM cases WHERE id = :c", c=nowhere.case_id) == [("",)]
    assert _shards_holding(base, "case_events", f"case_id = {nowhere.case_id}") == {
        _shard_of(base, "case_events", "")[0]: 3}
    with base.engine.begin() as conn:  # the same tickets again: the same cases
        assert [o.case_id for o in intake_batch(conn, reports[:1], now=t0)] == [first.case_id]
    with base.engine.begin() as conn:
        done = act_many(conn, [BulkItem(first.case_id, Action("accept", "养护班组", "department"))], now=t0)
    assert done.cases[first.case_id].status == "accepted" and not done.errors
    with base.engine.begin() as conn:
        merge(conn, first.case_id, [second.case_id], "平台")
    with base.engine.begin() as conn:
        assert [o.case_id for o in intake_batch(conn, reports[1:2], now=t0)] == [first.case_id]  # through the merge
    with base.engine.begin() as conn:
        report = tick(conn, now=t0 + timedelta(days=60))
    assert first.case_id in report.overdue


def test_cim_cases_import_on_citus(base, tmp_path):
    """``cim cases import`` (the pipelined chunks, the layer bumped by the writer, duplicates from the chunk's own
    values) on the cluster: every case with its three log rows, in its district's shard; a rerun adds none."""
    rows = ["channel,class,description,address,external_id"] + [
        f"hotline_12345,道路破损,坑{i},汾阳路150号{'附近' if i % 2 else '门口'},CITUS-IMPORT-{i}" for i in range(5)]
    src = tmp_path / "hotline.csv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    version = "SELECT version FROM layers WHERE table_name = 'case_features'"
    v0 = _rows(base, version)[0][0]
    out = run_cim("cases", "import", str(src), "--chunk", "2", "--now", "2026-11-30T11:00:00+08:00", env=base.env)
    assert "5 read, 5 new, 0 already in, 5 dispatched" in out.stdout
    assert _rows(base, version)[0][0] == v0 + 3  # one bump per chunk (2 + 2 + 1 rows)
    cases = _rows(base, "SELECT id, district_code FROM cases WHERE external_id LIKE 'CITUS-IMPORT-%' ORDER BY id")
    assert [d for _, d in cases] == [XUHUI] * 5
    ids = ", ".join(str(i) for i, _ in cases)
    assert _shards_holding(base, "case_events", f"case_id IN ({ids})") == {_shard_of(base, "case_events", XUHUI)[0]: 15}
    data = _rows(base, f"SELECT data->'possible_duplicates' FROM case_events WHERE case_id IN ({ids}) "
                       "AND action = 'report' ORDER BY case_id")
    assert any(d for (d,) in data), "no duplicate suggested among reports at the same door"
    again = run_cim("cases", "import", str(src), "--now", "2026-11-30T11:00:00+08:00", env=base.env)
    assert "0 new, 5 already in" in again.stdout


def test_readings_are_stored_in_their_devices_district_shard(base, client):
    from cim.apikeys import create_key

    with base.engine.begin() as conn:
        key = create_key(conn, "loader", "citus readings")[1]
        device, district, quantity = conn.execute(sa.text(
            "SELECT source_id, district_code, quantities->0->>'quantity' FROM iot_devices WHERE valid_to IS NULL "
            "AND district_code = :d AND quantities->0->>'quantity' = 'water_level' ORDER BY source_id LIMIT 1"),
            {"d": XUHUI}).one()
    body = [{"device_id": device, "quantity": quantity, "unit": "m", "time": f"2026-12-02T08:0{i}:00+08:00",
             "value": 0.2 + i / 10} for i in range(3)]
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    stored = client.post("/iot/readings", json=body, headers=headers)
    assert stored.status_code == 200, stored.text
    assert (stored.json()["stored"], stored.json()["rejected"]) == (3, 0), stored.json()
    where = f"device_id = ''{device}'' AND time >= ''2026-12-02''"
    assert _shards_holding(base, "iot_readings", where) == {_shard_of(base, "iot_readings", district)[0]: 3}
    assert _shard_of(base, "iot_readings", district)[1] == _shard_of(base, "parts", district)[1]
    # the same batch again: duplicates, told apart from the shard's unique violation (Citus reports it as XX000)
    again = client.post("/iot/readings", json=body, headers=headers)
    assert again.status_code == 200 and (again.json()["stored"], again.json()["duplicates"]) == (0, 3), again.text
    # a threshold rule over the distributed readings (its look-back runs once per district, routed to its shard):
    # the alarm opens a case in the device's district
    from sensing.rules import RuleSpec, add_rule

    with base.engine.begin() as conn:
        rule = add_rule(conn, RuleSpec(name="citus ponding", quantity=quantity, device_id=device, warning=1.0,
                                       alarm=1.5, case_class="道路积水"))["id"]
    for minute, value in ((10, 1.2), (20, 1.8)):
        sent = client.post("/iot/readings", headers=headers, json=[{
            "device_id": device, "quantity": quantity, "unit": "m", "time": f"2026-12-02T08:{minute}:00+08:00",
            "value": value}])
        assert sent.status_code == 200 and sent.json()["stored"] == 1, sent.text
    alert = _rows(base, "SELECT level, case_id FROM iot_alerts WHERE rule_id = :r", r=rule)
    assert len(alert) == 1 and alert[0][0] == "alarm" and alert[0][1] is not None, alert
    assert _rows(base, "SELECT district_code FROM cases WHERE id = :c", c=alert[0][1]) == [(district,)]
    readings = client.get(f"/iot/devices/{device}/readings", params={
        "quantity": quantity, "from": "2026-12-02T00:00:00Z", "to": "2026-12-03T00:00:00Z"})
    assert readings.status_code == 200, readings.text
    assert [r["value"] for r in readings.json()["readings"]] == [r["value"] for r in body] + [1.2, 1.8]


def _worker_of(base, district: str) -> int:
    port = _rows(base, "SELECT nodeport FROM citus_shards WHERE shardid = "
                       "get_shard_id_for_distribution_column('parts', :d)", d=district)[0][0]
    for index in (1, 2):
        if base.cluster.worker(index).state()["port"] == port:
            return index
    raise AssertionError(f"no worker listens on {port}")


def test_a_worker_down_is_503_for_its_queries_until_it_is_back(base, client):
    lon, lat = FENYANG_150
    worker = base.cluster.worker(_worker_of(base, XUHUI))
    params = {"bbox": _bbox_around(lon, lat), "limit": 100}
    worker.down()
    try:
        down = client.get("/collections/parts/items", params=params)
        assert down.status_code == 503, down.text
        assert down.headers["content-type"].startswith("application/problem+json")
        assert "Retry-After" in down.headers
        assert "not reachable" in down.json()["detail"]
        # a query on reference tables only is answered from the coordinator's copy
        assert client.get("/grid/lookup", params={"lon": lon, "lat": lat}).status_code == 200
    finally:
        worker.up(bindir=citus_bindir())
    base.cluster.wait_ready()
    back = client.get("/collections/parts/items", params=params)
    assert back.status_code == 200, back.text
    assert len(back.json()["features"]) > 0
    dispose_engines()


def test_a_bbox_query_runs_on_the_shards_of_its_districts_only(base, client):
    """Items by bbox name the districts the box touches (cim.districts_index): Citus plans one task, on the
    district's shard, instead of one per shard — and the answer is the same."""
    import re

    from cim.config import override_settings
    from cim.distribution import SHARD_COUNT
    from cim.districts_index import districts_touching
    from cim.features import ItemsQuery, Selection, items_select
    from cim.registry import load_layers

    with base.engine.connect() as conn:
        x, y = conn.execute(sa.text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(ST_Buffer(geom, -500)) "
                                    "AS p FROM districts WHERE code = :c AND valid_to IS NULL) s"), {"c": XUHUI}).one()
        box = (x - 300, y - 300, x + 300, y + 300)
        layer = load_layers(conn)["parts"]
        districts = districts_touching(conn, layer, box)
        assert districts is not None and districts.codes == (XUHUI,)
        tasks = []
        for named in (districts, None):
            stmt, _ = items_select(layer, 4549, ItemsQuery(Selection(bbox=box, bbox_crs="EPSG:4549")), named)
            compiled = stmt.compile(conn)
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
            tasks.append(int(re.search(r"Task Count: (\d+)", plan).group(1)))
    assert tasks == [1, SHARD_COUNT]
    params = {"bbox": ",".join(map(str, box)), "bbox-crs": "EPSG:4549", "limit": 500}
    answers = []
    for pruning in (True, False):
        with override_settings(district_pruning=pruning):
            answers.append(client.get("/collections/parts/items", params=params).json()["features"])
    assert answers[0] == answers[1] and answers[0]
