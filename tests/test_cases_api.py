"""``/cases`` over HTTP (issue 11, item 8) on a real PostGIS with the sample city: the worked
example 汾阳路150号 from report to verified closure with its log, filters and paging, role checks
(API key role and case role), 409 on an illegal action and on a lost race, idempotent external
ids, unknown classes, photos (stored; oversized → 413, not an image → 415) and the indicators.

No assertion depends on the wall clock: the server acts at its own "now", and the tests check
statuses, assignees and the log's order, never times.
"""
from __future__ import annotations

import csv
import io
import threading

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.features import MAX_OFFSET
from api.limits import CASE_REPORT_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES, MAX_PHOTOS_PER_REPORT, body_limit
from cases.attachments import MAX_BYTES
from cim.apikeys import create_key
from cim.grid import lookup_points
from tests.test_geocode import load_city

SRID = 4549
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(scope="module")
def city(engine, tmp_path_factory):
    load_city(engine)
    return engine


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case-photos")
    mp = pytest.MonkeyPatch()
    mp.setenv("CIM_CASE_ATTACHMENTS", str(folder))
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def client(city, photos_dir):
    return TestClient(create_app(city))


@pytest.fixture(scope="module")
def keys(city) -> dict[str, dict[str, str]]:
    with city.begin() as conn:
        return {role: {"X-API-Key": create_key(conn, role, f"{role} key")[1]} for role in ("reader", "loader", "admin")}


def _report(client, headers, **body):
    body.setdefault("channel", "vehicle_patrol")
    body.setdefault("class", "道路破损")
    return client.post("/cases", json=body, headers=headers)


def _act(client, headers, case_id, action, role, **extra):
    return client.post(f"/cases/{case_id}/actions", json={"action": action, "role": role, **extra}, headers=headers)


def _grid_worker(answer):
    """A holder of the grid worker's post (网格监督员) in the grid of a grid-lookup answer."""
    return next(p.name for r in answer.responsibility if r.post.name == "网格监督员" for p in r.persons)


def _door(city, road, number):
    with city.connect() as conn:
        x, y = conn.execute(sa.text("SELECT ST_X(geom), ST_Y(geom) FROM addresses WHERE valid_to IS NULL "
                                    "AND road = :r AND door_number = :n"), {"r": road, "n": number}).one()
        return lookup_points(conn, [x], [y], f"EPSG:{SRID}")[0]


def test_worked_example_over_http(client, keys, city):
    expected = _door(city, "汾阳路", "150")
    road = [r for r in expected.responsibility if "建管委" in r.department.name][0]

    r = _report(client, keys["reader"], address="汾阳路150号附近", description="汾阳路150号附近路面龟裂",
                external_id="VP-API-0001", reporter_contact="13912345678")
    assert r.status_code == 201, r.text
    case = r.json()
    assert r.headers["location"] == f"/cases/{case['id']}"
    assert case["created"] is True and case["status"] == "dispatched"
    assert case["grid_code"] == expected.grid.code and case["street_code"] == expected.street.code
    assert case["department_code"] == road.department.code and case["post_code"] == road.post.code
    assert 121.4 < case["lon"] < 121.5 and 31.1 < case["lat"] < 31.3
    assert case["reporter_contact"] == "13912345678"  # the reporter sees it; others only masked
    assert client.get(f"/cases/{case['id']}").json()["reporter_contact"] == "139****5678"
    assert client.get(f"/cases/{case['id']}", headers=keys["loader"]).json()["reporter_contact"] == "13912345678"

    cid = case["id"]
    assert _act(client, keys["loader"], cid, "accept", "department").json()["status"] == "accepted"
    assert _act(client, keys["loader"], cid, "handle", "department", note="路面已修补").json()["status"] == "handled"
    # only the grid's worker (网格监督员 of the case's grid) verifies, not anyone with the role
    wrong = _act(client, keys["loader"], cid, "verify", "supervisor", data={"passed": True})
    assert wrong.status_code == 403 and "网格监督员" in wrong.json()["detail"]
    done = _act(client, keys["loader"], cid, "verify", "supervisor", data={"passed": True},
                actor=_grid_worker(expected))
    assert done.status_code == 200 and done.json()["status"] == "closed"

    shown = client.get(f"/cases/{cid}").json()
    assert shown["status"] == "closed"
    assert [(e["action"], e["from_status"], e["to_status"]) for e in shown["log"]] == [
        ("report", None, "reported"), ("register", "reported", "registered"),
        ("dispatch", "registered", "dispatched"), ("accept", "dispatched", "accepted"),
        ("handle", "accepted", "handled"), ("verify", "handled", "closed")]
    assert shown["log"][3]["actor"] == "loader key"  # the key's name, when the body names no actor
    assert shown["log"][4]["note"] == "路面已修补"


def test_failed_verification_is_rework_and_illegal_action_is_409(client, keys, city):
    cid = _report(client, keys["reader"], address="汾阳路150号", description="坑").json()["id"]
    r = _act(client, keys["loader"], cid, "handle", "department", note="修了")
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    assert "dispatched" in r.json()["detail"] and "accepted" in r.json()["detail"]
    _act(client, keys["loader"], cid, "accept", "department")
    _act(client, keys["loader"], cid, "handle", "department", note="修了")
    failed = _act(client, keys["loader"], cid, "verify", "supervisor", note="仍有裂缝", data={"passed": False},
                  actor=_grid_worker(_door(city, "汾阳路", "150")))
    assert failed.json()["status"] == "accepted" and failed.json()["rework_count"] == 1
    stale = _act(client, keys["loader"], cid, "handle", "department", note="again", version=1)
    assert stale.status_code == 409


def test_roles_key_and_case(client, keys):
    cid = _report(client, keys["reader"], address="汾阳路150号").json()["id"]
    assert _report(client, {}, address="汾阳路150号").status_code == 401
    # a reader key may not act as the department; a loader key may not act as the platform
    r = _act(client, keys["reader"], cid, "accept", "department")
    assert r.status_code == 403 and "loader" in r.json()["detail"]
    assert _act(client, keys["loader"], cid, "suspend", "platform", note="x").status_code == 403
    # the key may act as supervisor, but a supervisor may not accept: the core's rule, 403
    r = _act(client, keys["loader"], cid, "accept", "supervisor")
    assert r.status_code == 403 and "department" in r.json()["detail"]
    r = _act(client, keys["admin"], cid, "accept", "boss")
    assert r.status_code == 400 and r.json()["parameter"] == "role"
    r = _act(client, keys["reader"], cid, "comment", "reporter", note="still there")
    assert r.status_code == 200
    r = _act(client, keys["admin"], cid, "levitate", "platform")
    assert r.status_code == 400 and r.json()["parameter"] == "action" and "accept" in r.json()["detail"]
    assert client.post("/cases/999999/actions", json={"action": "accept", "role": "department"},
                       headers=keys["loader"]).status_code == 404


def test_two_racing_actions_one_wins(client, keys):
    cid = _report(client, keys["reader"], address="汾阳路150号").json()["id"]
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def accept() -> None:
        barrier.wait()
        codes.append(_act(client, keys["loader"], cid, "accept", "department").status_code)

    threads = [threading.Thread(target=accept) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409]
    log = client.get(f"/cases/{cid}").json()["log"]
    assert [e["action"] for e in log].count("accept") == 1


def test_same_external_id_twice_is_the_same_case(client, keys):
    first = _report(client, keys["reader"], channel="hotline_12345", address="汾阳路150号", external_id="12345-A1")
    again = _report(client, keys["reader"], channel="hotline_12345", address="汾阳路150号", external_id="12345-A1")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False


def test_bad_reports_name_what_is_wrong(client, keys):
    r = _report(client, keys["reader"], **{"class": "路面有坑"}, address="汾阳路150号")
    assert r.status_code == 400 and r.json()["parameter"] == "class"
    assert "E0105 道路破损" in r.json()["detail"]
    r = _report(client, keys["reader"], lon="east", lat=31.2)
    assert r.status_code == 400 and r.json()["parameter"] == "lon"
    r = _report(client, keys["reader"], channel="pigeon", address="汾阳路150号")
    assert r.status_code == 400 and r.json()["parameter"] == "channel"
    r = client.post("/cases", content=b"[1,2]", headers={**keys["reader"], "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["parameter"] == "body"
    # PostgreSQL text and jsonb cannot hold NUL: the field is named, in the class as in free text
    for field, fields in (("class", {"class": "道路\x00破损"}), ("description", {"description": "坑\x00"}),
                          ("attributes", {"attributes": {"note": "a\x00b"}}),
                          ("attributes", {"attributes": {"a\x00b": ["note"]}})):
        r = _report(client, keys["reader"], **{"class": "道路破损", "address": "汾阳路150号", **fields})
        assert r.status_code == 400 and r.json()["parameter"] == field, r.text
    # any JSON number is kept, even past 64 bits (jsonb's numeric holds it)
    r = _report(client, keys["reader"], **{"class": "道路破损", "address": "汾阳路150号",
                                           "attributes": {"ticket": 2 ** 70, "nested": [{"n": -(2 ** 80)}]}})
    assert r.status_code == 201 and r.json()["attributes"]["ticket"] == 2 ** 70, r.text
    # unlocatable: registered, in the manual queue with the reason, never lost
    r = _report(client, keys["reader"], address="火星路1号")
    assert r.status_code == 201 and r.json()["status"] == "registered" and r.json()["manual_reason"]


def test_photos_multipart(client, keys, photos_dir, city):
    form = {"channel": "grid_patrol", "class": "道路破损", "address": "汾阳路150号", "description": "照片"}
    r = client.post("/cases", data=form, files=[("photos", ("crack.png", PNG, "image/png"))], headers=keys["reader"])
    assert r.status_code == 201, r.text
    att = r.json()["attachments"]
    assert len(att) == 1 and att[0]["media_type"] == "image/png"
    assert list(photos_dir.rglob(f"{att[0]['content_hash']}.png"))
    assert client.get(f"/cases/{r.json()['id']}").json()["attachments"][0]["content_hash"] == att[0]["content_hash"]

    with city.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM cases")).scalar()
    r = client.post("/cases", data=form, files=[("photos", ("a.png", b"%PDF-1.4 not an image", "image/png"))],
                    headers=keys["reader"])
    assert r.status_code == 415 and "image" in r.json()["detail"]
    r = client.post("/cases", data=form, files=[("photos", ("big.png", PNG + b"\x00" * MAX_BYTES, "image/png"))],
                    headers=keys["reader"])
    assert r.status_code == 413
    with city.connect() as conn:  # a refused photo leaves no case behind
        assert conn.execute(sa.text("SELECT count(*) FROM cases")).scalar() == before


def test_a_report_takes_a_few_photos_and_no_more(client, keys, city):
    """POST /cases has its own body limit, sized for MAX_PHOTOS_PER_REPORT photos (the default 64 KiB
    refused any real photo); the other case routes keep the default."""
    assert body_limit("POST", "/cases") == CASE_REPORT_MAX_BODY_BYTES >= MAX_PHOTOS_PER_REPORT * MAX_BYTES
    assert body_limit("POST", "/cases/1/actions") == DEFAULT_MAX_BODY_BYTES
    assert body_limit("POST", "/open311/v2/requests.json") == DEFAULT_MAX_BODY_BYTES
    form = {"channel": "grid_patrol", "class": "道路破损", "address": "汾阳路150号", "description": "大照片"}
    photo = b"\xff\xd8\xff\xe0" + b"\x00" * (1 << 20)  # a 1 MiB JPEG
    r = client.post("/cases", data=form, files=[("photos", ("big.jpg", photo, "image/jpeg"))], headers=keys["reader"])
    assert r.status_code == 201, r.text[:300]
    assert r.json()["attachments"][0]["size_bytes"] == len(photo)

    too_many = [("photos", (f"{i}.png", PNG + bytes([i]), "image/png")) for i in range(MAX_PHOTOS_PER_REPORT + 1)]
    r = client.post("/cases", data=form, files=too_many, headers=keys["reader"])
    assert r.status_code == 400 and r.json()["parameter"] == "photos", r.text[:300]

    with city.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM cases")).scalar()
    # not even multipart: were it parsed it would be a 400; refused for its size first, it is a 413
    oversized = b"x" * (CASE_REPORT_MAX_BODY_BYTES + 1)
    r = client.post("/cases", content=oversized, headers={**keys["reader"],
                                                          "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and f"{CASE_REPORT_MAX_BODY_BYTES:,}" in r.json()["detail"], r.text[:300]
    with city.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cases")).scalar() == before


def test_list_filters_paging_and_masked_contact(client, keys, city):
    _report(client, keys["reader"], address="汾阳路150号", reporter_contact="13900001111", external_id="L-1")
    expected = _door(city, "汾阳路", "150")
    listed = client.get("/cases", params={"grid": expected.grid.code, "limit": 2})
    assert listed.status_code == 200
    body = listed.json()
    assert body["numberReturned"] == 2 and all(c["grid_code"] == expected.grid.code for c in body["cases"])
    nxt = [link for link in body["links"] if link["rel"] == "next"][0]["href"]
    assert "offset=2" in nxt and "grid=" in nxt
    page2 = client.get(nxt).json()["cases"]
    assert not {c["id"] for c in page2} & {c["id"] for c in body["cases"]}
    everything = client.get("/cases", params={"limit": 1000}).json()["cases"]
    masked = [c for c in everything if c["external_id"] == "L-1"][0]
    assert masked["reporter_contact"] == "139****1111"
    assert all(c["status"] == "closed" for c in client.get("/cases", params={"status": "closed"}).json()["cases"])
    by_class = client.get("/cases", params={"class": "E0105"}).json()["cases"]
    assert by_class and all(c["class_code"] == "E0105" for c in by_class)
    manual = client.get("/cases", params={"manual": "true"}).json()["cases"]
    assert manual and all(c["manual_reason"] for c in manual)
    lon, lat = masked["lon"], masked["lat"]
    inside = client.get("/cases", params={"bbox": f"{lon - 0.001},{lat - 0.001},{lon + 0.001},{lat + 0.001}",
                                          "limit": 1000}).json()["cases"]
    assert masked["id"] in {c["id"] for c in inside}
    assert all(c["lon"] is not None for c in inside)
    far = client.get("/cases", params={"bbox": "121.0,31.0,121.01,31.01"}).json()["cases"]
    assert far == []
    assert client.get("/cases", params={"bbox": "1,2,3"}).json()["parameter"] == "bbox"
    assert client.get("/cases", params={"datetime": "2001-01-01/2001-12-31"}).json()["cases"] == []
    assert client.get("/cases", params={"datetime": "yesterday"}).status_code == 400
    assert client.get("/cases", params={"class": "nope"}).json()["parameter"] == "class"


def test_offsets_and_strings_are_capped(client):
    """As on the other routes (issue 16): a deep offset is a 400, not a scan; a huge value a short 400."""
    r = client.get("/cases", params={"offset": str(MAX_OFFSET + 1)})
    assert r.status_code == 400 and r.json()["parameter"] == "offset", r.text[:300]
    assert client.get("/cases", params={"offset": str(MAX_OFFSET)}).json()["numberReturned"] == 0
    r = client.get("/cases", params={"class": "道" * 1_000})
    assert r.status_code == 400 and r.json()["parameter"] == "class" and len(r.content) < 3_000, r.text[:300]
    r = client.get("/cases/stats", params={"datetime": "2026-01-01T00:00:00Z/" * 500})
    assert r.status_code == 400 and r.json()["parameter"] == "datetime" and len(r.content) < 3_000, r.text[:300]


def test_stats_json_and_csv(client, keys):
    period = {"datetime": "2000-01-01T00:00:00Z/2100-01-01T00:00:00Z", "by": "department"}
    r = client.get("/cases/stats", params=period)
    assert r.status_code == 200
    rows = r.json()["indicators"]
    total = sum(row["registered"] for row in rows)
    listed = [c for c in client.get("/cases", params={"limit": 1000}).json()["cases"]
              if c["registered_at"] and c["status"] not in ("merged", "not_registered")]
    assert total == len(listed)
    closed = sum(row["closed"] for row in rows)
    assert closed == sum(1 for c in listed if c["status"] == "closed") >= 1
    r = client.get("/cases/stats", params={**period, "f": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(r.text)))
    assert len(parsed) == len(rows) and "closure_rate" in parsed[0]
    assert client.get("/cases/stats", params={**period, "by": "planet"}).json()["parameter"] == "by"
    assert client.get("/cases/stats", params={"datetime": "2024-01-01T00:00:00Z"}).status_code == 400


def test_the_bodies_read_by_hand_are_documented(client):
    """The write routes read their bodies themselves (JSON or a form): the document still says what
    they take, so that clients and schemathesis send real reports, actions and 311 requests."""
    paths = client.get("/openapi.json").json()["paths"]
    report = paths["/cases"]["post"]
    assert set(report["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert report["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["photos"]["maxItems"] \
        == MAX_PHOTOS_PER_REPORT
    assert {"200", "201"} <= set(report["responses"])  # a known external_id answers 200
    action = paths["/cases/{case_id}/actions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert action["required"] == ["action", "role"]
    form = paths["/open311/v2/requests.json"]["post"]["requestBody"]["content"]
    assert "service_code" in form["application/x-www-form-urlencoded"]["schema"]["required"]


def test_concurrent_reports_are_taken_in_together_each_gets_its_own_answer(city, keys):
    """``POST /cases`` gathers concurrent reports into one set-based transaction (group commit):
    every request still gets its own case, a bad report its own 400, a repeated ticket the same case."""
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(city)
    bodies = [{"channel": "hotline_12345", "class": "道路破损", "address": f"汾阳路{2 * n + 1}号",
               "description": f"group {n}", "external_id": f"GC-{n}"} for n in range(24)]
    bodies += [{"channel": "hotline_12345", "class": "不存在的类", "address": "汾阳路3号", "description": "bad"},
               {"channel": "hotline_12345", "class": "道路破损", "address": "汾阳路5号", "description": "again",
                "external_id": "GC-2"},
               {"channel": "carrier_pigeon", "class": "道路破损", "description": "bad channel"},
               {"channel": "grid_patrol", "class": "道路破损", "address": "火星路1号", "description": "nowhere"}]
    with TestClient(app) as client, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: client.post("/cases", json=b, headers=keys["reader"]), bodies))
    by_text = {b["description"]: r for b, r in zip(bodies, answers)}
    good = [by_text[f"group {n}"] for n in range(24)]
    assert all(r.status_code == 201 for n, r in enumerate(good) if n != 2)
    ids = {r.json()["id"] for r in good}
    assert len(ids) == 24  # no two requests got the same (or another's) case
    for n, r in enumerate(good):
        case = r.json()
        if n == 2:  # ticket GC-2 is reported twice at once: its case is whichever report came first
            assert (case["description"], case["address_text"]) in (("group 2", "汾阳路5号"), ("again", "汾阳路5号"))
        else:
            assert case["description"] == f"group {n}" and case["address_text"] == f"汾阳路{2 * n + 1}号"
        assert case["status"] == "dispatched" and "道路养护" in case["dispatch_reason"]
    bad = by_text["bad"]
    assert bad.status_code == 400 and "不存在的类" in bad.json()["detail"] and "道路破损" in bad.json()["detail"]
    assert by_text["bad channel"].status_code == 400 and "carrier_pigeon" in by_text["bad channel"].json()["detail"]
    again = by_text["again"]  # the same ticket: the same case, whichever of the two came first
    assert again.status_code in (200, 201) and again.json()["id"] == by_text["group 2"].json()["id"]
    assert sorted([again.status_code, by_text["group 2"].status_code]) == [200, 201]
    nowhere = by_text["nowhere"].json()
    assert by_text["nowhere"].status_code == 201 and nowhere["manual_reason"] and nowhere["status"] == "registered"
    with city.connect() as conn:  # each created case has its own complete intake log
        logs = dict(conn.execute(sa.text(
            "SELECT case_id, array_agg(action ORDER BY id) FROM case_events WHERE case_id = ANY(:ids) "
            "GROUP BY case_id"), {"ids": sorted(ids)}).all())
    assert all(log == ["report", "register", "dispatch"] for log in logs.values()) and len(logs) == 24
    group_commit = app.state.case_intake
    assert group_commit.items == len(bodies)  # the refused ones too: refused in the group, one by one
    assert group_commit.groups < group_commit.items  # gathered, not one transaction per request


def test_group_settings_cap_a_group_and_metrics_say_where_a_reports_time_went(city, keys):
    """CIM_CASE_GROUP_MAX caps a group of concurrent reports (one group in flight here, so they queue behind
    it and are taken at most three at a time); every report is still answered with its own case, and
    ``/metrics`` counts each report's wait for its group and each group's run and size."""
    from concurrent.futures import ThreadPoolExecutor

    from api.cases import GROUP_RUN, GROUP_SIZE, GROUP_WAIT
    from cim.config import DeploymentSettings

    def count(histogram) -> float:
        return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))

    before = count(GROUP_WAIT), count(GROUP_RUN), count(GROUP_SIZE)
    app = create_app(city, DeploymentSettings(case_group_max=3, case_groups_in_flight=1, case_group_window_ms=50))
    bodies = [{"channel": "hotline_12345", "class": "暴露垃圾", "address": f"汾阳路{2 * n + 1}号",
               "description": f"capped {n}", "external_id": f"CAP-{n}"} for n in range(10)]
    sizes: list[int] = []
    with TestClient(app) as client:
        group_commit = app.state.case_intake
        run = group_commit._run
        group_commit._run = lambda reports: (sizes.append(len(reports)), run(reports))[1]
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: client.post("/cases", json=b, headers=keys["reader"]), bodies))
        metrics = client.get("/metrics").text
    assert [r.status_code for r in answers] == [201] * len(bodies)
    assert [r.json()["description"] for r in answers] == [b["description"] for b in bodies]
    assert sum(sizes) == len(bodies) and max(sizes) <= 3 and len(sizes) >= 4
    assert (count(GROUP_WAIT), count(GROUP_RUN), count(GROUP_SIZE)) == (
        before[0] + len(bodies), before[1] + len(sizes), before[2] + len(sizes))
    assert "cim_case_group_wait_seconds_bucket" in metrics and "cim_case_group_run_seconds_sum" in metrics


def test_a_city_wide_group_is_written_as_the_owner_a_narrower_one_under_the_policies(city):
    """A group of a city-wide caller is written as the owner (COPY, the duplicate search free to use the spatial
    index), still in the caller's name in the audit trail; a district's caller's group stays under the policies
    (one INSERT the policies check row by row). Both open and dispatch the same way."""
    from api.cases import intake_group
    from cases.intake import CaseReport
    from cim.database import reader_engine
    from cim.jurisdiction import Scope, acting_as

    engine = reader_engine(city)
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    callers = {"OWN": Scope("city", role="admin", user="热线对接"),
               "RLS": Scope("area", role="admin", user="徐汇区平台", district="310104")}
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        for tag, scope in callers.items():
            statements.clear()
            with acting_as(scope):
                results = intake_group(engine, [CaseReport(channel="hotline_12345", class_code="道路破损",
                                                           address_text=f"汾阳路{n}号", external_id=f"{tag}-{n}")
                                                for n in (7, 9)], SRID)
            assert [(r.created, r.case.status) for r in results] == [(True, "dispatched")] * 2, results
            policed = [s for s in statements if "json_populate_recordset" in s]
            assert bool(policed) == (tag == "RLS"), tag
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    with city.connect() as conn:
        actors = set(conn.execute(sa.text("SELECT actor FROM audit_log WHERE object = 'cases' AND action = 'insert'"))
                     .scalars())
    assert {"热线对接", "徐汇区平台"} <= actors


def test_a_verified_key_is_checked_without_a_worker_thread(client, city, monkeypatch):
    """The access middleware and the route's key dependency answer a key verified lately on the event loop;
    only a key that needs the database goes to a worker thread (a hop cost more CPU than the check)."""
    import api.auth

    hops: list[object] = []
    real = api.auth.run_in_threadpool

    async def counted(func, *args, **kwargs):  # noqa: ANN001, ANN202
        hops.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(api.auth, "run_in_threadpool", counted)
    with city.begin() as conn:
        fresh = {"X-API-Key": create_key(conn, "reader", "a new key")[1]}
    assert _report(client, fresh, address="汾阳路150号").status_code == 201
    assert hops, "a key never seen must be looked up (in a worker thread)"
    hops.clear()
    answer = _report(client, fresh, address="汾阳路152号")
    assert answer.status_code == 201 and hops == []
    # an unknown key is still refused, and still looked up every time
    wrong = {"X-API-Key": "not-a-key"}
    assert _report(client, wrong).status_code == 401
    assert hops


def test_case_to_dict_equals_asdict_and_shares_the_nested_values(client, keys, city):
    """``Case.to_dict`` gives what ``dataclasses.asdict`` gave (times as ISO text), without deep-copying the
    geocode answer and the attributes (the copy cost more than the rest of an answer)."""
    import dataclasses
    from datetime import datetime

    from cases.model import get_case

    case_id = _report(client, keys["reader"], address="汾阳路150号", attributes={"a": [1, {"b": 2}]}).json()["id"]
    with city.connect() as conn:
        case = get_case(conn, case_id)
    expected = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in dataclasses.asdict(case).items()}
    expected["escalated_to"] = case.escalated_to
    got = case.to_dict()
    assert got == expected and list(got) == list(expected)
    assert got["geocode"] is case.geocode and got["attributes"] is case.attributes
    assert got["returned_departments"] is not case.returned_departments  # a list: the caller's own


def test_cases_json_equals_each_case_json_with_one_transform(client, keys, city, monkeypatch):
    """A group's answers and a page of cases are made with one coordinate transform for all their points; each
    answer is the one case_json gives alone (a case without a point included)."""
    import api.cases
    from cases.model import get_case

    ids = [_report(client, keys["reader"], address=f"汾阳路{n}号").json()["id"] for n in (150, 151, 152)]
    ids.append(_report(client, keys["reader"], address="火星路1号").json()["id"])  # no point
    with city.connect() as conn:
        cases = [get_case(conn, i) for i in ids]
    alone = [api.cases.case_json(c, SRID, mask_contact=True) for c in cases]
    assert alone[-1]["lon"] is None and all(a["lon"] is not None for a in alone[:-1])
    calls: list[int] = []
    real = api.cases.transform_coords

    def counted(xs, *args, **kwargs):
        calls.append(len(xs))
        return real(xs, *args, **kwargs)

    monkeypatch.setattr(api.cases, "transform_coords", counted)
    assert api.cases.cases_json(cases, SRID, mask_contact=True) == alone
    assert calls == [3]


def test_a_json_report_is_answered_before_routing_every_other_request_by_the_route(client, keys, monkeypatch):
    """api.case_fast_path: a JSON report from a key that may report is taken in without FastAPI's routing, with the
    route's answer, and so is a class the intake refuses (its problem document); a multipart report, a body
    that is no JSON object, a bad field, a missing key go on to the route, which answers them as before (the
    body read once is handed on)."""
    from starlette.routing import Router

    routed: list[str] = []
    route = Router.__call__

    async def counted(self, scope, receive, send):  # noqa: ANN001, ANN202
        routed.append(scope["path"])
        await route(self, scope, receive, send)

    monkeypatch.setattr(Router, "__call__", counted)
    first = _report(client, keys["reader"], channel="hotline_12345", address="汾阳路150号", external_id="FAST-1")
    again = _report(client, keys["reader"], channel="hotline_12345", address="汾阳路150号", external_id="FAST-1")
    assert routed == []
    assert (first.status_code, again.status_code) == (201, 200) and again.json()["id"] == first.json()["id"]
    assert first.headers["location"] == f"/cases/{first.json()['id']}"
    assert first.json()["status"] == "dispatched" and first.json()["attachments"] == []
    assert {"created", "duplicates", "lon", "lat", "person_name"} <= set(first.json())
    big = _report(client, keys["reader"], address="汾阳路150号", attributes={"ticket": 3 ** 50})  # past 64 bits
    assert big.status_code == 201 and big.json()["attributes"]["ticket"] == 3 ** 50, big.text
    assert client.get(f"/cases/{first.json()['id']}", headers=keys["reader"]).json()["id"] == first.json()["id"]
    routed.clear()
    unknown = _report(client, keys["reader"], **{"class": "路面有坑"}, address="汾阳路150号")  # refused by the intake
    assert unknown.status_code == 400 and unknown.json()["parameter"] == "class" and routed == []
    assert unknown.headers["content-type"] == "application/problem+json"
    assert "E0105 道路破损" in unknown.json()["detail"]
    refused = [
        _report(client, keys["reader"], lon="east", lat=31.2),  # a bad field
        client.post("/cases", content=b"[1,2]", headers={**keys["reader"], "Content-Type": "application/json"}),
        client.post("/cases", content=b"{not json", headers={**keys["reader"], "Content-Type": "application/json"}),
        client.post("/cases", json={"class": "道路破损", "address": "汾阳路150号"}),  # no key
    ]
    assert [(r.status_code, r.json().get("parameter")) for r in refused] == [
        (400, "lon"), (400, "body"), (400, "body"), (401, None)]
    assert len(routed) == len(refused)
    routed.clear()
    form = client.post("/cases", data={"class": "道路破损", "address": "汾阳路150号"}, headers=keys["reader"])
    assert form.status_code == 201 and routed == ["/cases"]


def test_a_report_whose_answer_fails_after_its_commit_is_not_taken_in_again(city, keys, monkeypatch):
    """api.case_fast_path: an intake error rolls its report back, so the route may take it again; answers that
    fail once the group is committed (AnswerError) must not be: the report would open a second case. It gets the
    app's 500 problem document, and exactly one case stands."""
    import api.cases

    description = "answer fails after commit 7f3c"

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ValueError("no answer today")

    monkeypatch.setattr(api.cases, "cases_json", broken)
    failed = _report(TestClient(create_app(city), raise_server_exceptions=False), keys["reader"],
                     address="汾阳路150号", description=description)
    assert failed.status_code == 500 and failed.headers["content-type"] == "application/problem+json", failed.text
    with city.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cases WHERE description = :d"),
                            {"d": description}).scalar_one() == 1
