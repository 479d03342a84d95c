"""The API's operational side (issue 5B): health and metrics, API keys (hashed, roles, revocation),
the ingest upload's access control and plumbing, read-key-required mode, IoT readings and
problem documents — against a real PostGIS."""
from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import READ_KEY_ENV
from api.iot import MAX_READINGS
from cim.apikeys import create_key, revoke_key, verify_key
from cim.config import override_settings
from cim.database import engine_for
from tests.conftest import create_database, run_cim
from tests.spatial_data import build_features, build_hierarchy

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def city(engine):
    with engine.begin() as conn:
        city = build_hierarchy(conn)
        build_features(conn, city)  # device dev-1 (water_level, 48 hourly readings up to now)
        conn.execute(sa.text(
            "INSERT INTO iot_devices (source_id, device_type, quantities, geom) VALUES "
            "('dev-2', '气象站', CAST(:q AS jsonb), ST_SetSRID(ST_MakePoint(:x, :y, 0), 4549))"),
            {"q": '{"temperature": {"unit": "°C", "alarm_high": 38}, "humidity": "%"}',
             "x": city.x0 + 10, "y": city.y0 + 10})
        # one reading a minute for a day at T0, and 100,005 one-second readings from T0 + 10 days
        conn.execute(sa.text(
            "INSERT INTO iot_readings (device_id, time, quantity, value) "
            "SELECT 'dev-2', CAST(:t0 AS timestamptz) + make_interval(mins => m), 'temperature', 20 + m / 100.0 "
            "FROM generate_series(0, 1439) AS m"), {"t0": T0})
        conn.execute(sa.text(
            "INSERT INTO iot_readings (device_id, time, quantity, value) "
            "SELECT 'dev-2', CAST(:t0 AS timestamptz) + make_interval(secs => s), 'humidity', 50 "
            "FROM generate_series(0, :n) AS s"), {"t0": T0 + timedelta(days=10), "n": MAX_READINGS + 4})
    return city


@pytest.fixture(scope="module")
def client(engine, city):
    return TestClient(create_app(engine))


@pytest.fixture(scope="module")
def keys(engine, city) -> dict[str, str]:
    with engine.begin() as conn:
        return {role: create_key(conn, role, f"test {role}")[1] for role in ("reader", "loader", "admin")}


# --- health, metrics, problems -------------------------------------------------------------------

def test_healthz_and_metrics(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["postgis"]
    client.get("/grid/lookup", params={"lon": 121.47, "lat": 31.23})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'cim_http_requests_total{method="GET",route="/grid/lookup",status="200"}' in metrics.text


def test_unknown_route_is_a_problem(client):
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 404


def _problem(r, status: int, title: str, parameter: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] == title and body.get("parameter") == parameter, body
    return body


@pytest.mark.parametrize("path, params, status, title, parameter", [
    # each core error is mapped by its own meaning (cim.errors), with no router re-wrapping it
    ("/3dtiles/nope/tileset.json", {}, 404, "Not found", None),  # unknown layer
    ("/3dtiles/grids/tileset.json", {}, 404, "Not found", None),  # a layer without 3D tiles
    ("/3dtiles/parts/0/root.glb", {}, 409, "Conflict", None),  # a content URL of a stale version
    ("/collections/grids/tiles/WebMercatorQuad/1/0/0", {"properties": "nope"}, 400, "Bad request parameter",
     "properties"),
    ("/collections/grids/tiles/WebMercatorQuad/25/0/0", {}, 400, "Bad request parameter", "tileMatrix"),  # the schema
    ("/collections/grids/tiles/WebMercatorQuad/1/5/0", {}, 404, "Not found", "tileRow"),
    ("/3dtiles/parts/tileset.json", {"bbox": "1,2"}, 400, "Bad request parameter", "bbox"),
    ("/nearby", {"layer": "parts", "lon": 121.47, "lat": 31.23, "filter": "no_such_property = 1"}, 400,
     "Bad request parameter", "filter"),
    ("/reverse", {"lon": "1e400", "lat": 31.2}, 400, "Bad request parameter", "lon"),
    ("/collections/parts/items", {"bbox": "1,2,3"}, 400, "Bad request parameter", "bbox"),
    ("/collections/nope/items", {}, 404, "Not found", None),
])
def test_core_errors_are_mapped_once_by_their_meaning(client, path, params, status, title, parameter):
    _problem(client.get(path, params=params), status, title, parameter)


def test_a_base_that_is_not_initialised_is_a_503_with_retry_after(server_url):
    """The base went away under a running app (reset, restored): "run cim init" is the server's state,
    not the client's mistake, so a 503 that says when to retry, not a 400."""
    url = create_database(server_url)
    run_cim("init", db_url=url)
    app = TestClient(create_app(engine_for(url)))
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("DELETE FROM cim_settings"))
    body = _problem(app.get("/geocode", params={"q": "徐汇区汾阳路150号"}), 503, "Service unavailable")
    assert "cim init" in body["detail"]
    assert int(app.get("/geocode", params={"q": "徐汇区汾阳路150号"}).headers["retry-after"]) > 0


def test_a_refused_request_is_counted_in_metrics(engine, keys):
    """Metrics sit outside access control (api.app.MIDDLEWARE): a 401 is counted like any answer."""
    with override_settings(api_read_key_required=True):
        locked = TestClient(create_app(engine))
    assert locked.get("/grid/lookup", params={"lon": 121.47, "lat": 31.23}).status_code == 401
    assert 'cim_http_requests_total{method="GET",route="unmatched",status="401"}' in locked.get("/metrics").text


# --- keys ------------------------------------------------------------------------------------------

def test_keys_are_stored_hashed(engine, keys):
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT to_jsonb(k)::text AS row, key_hash, role FROM api_keys k")).all()
    assert len(rows) >= 3
    for key in keys.values():
        assert not any(key in r.row for r in rows), "a key is stored in plain text"
    hashes = {r.key_hash: r.role for r in rows}
    for role, key in keys.items():
        assert hashes[hashlib.sha256(key.encode()).hexdigest()] == role
        assert len(key) >= 43  # 32 random bytes, base64url


def test_keys_cli_create_list_revoke(engine, db_url, city, client):
    created = run_cim("keys", "create", "--role", "loader", "--name", "ci uploader", db_url=db_url)
    key = created.stdout.strip()
    assert "cannot be shown again" in created.stderr and len(key.splitlines()) == 1
    with engine.connect() as conn:
        record = verify_key(conn, key)
    assert record is not None and record.role == "loader" and record.name == "ci uploader"
    listed = run_cim("keys", "list", db_url=db_url).stdout
    assert "ci uploader" in listed and key not in listed
    assert client.post("/ingest/parts", headers={"X-API-Key": key}).status_code != 401
    run_cim("keys", "revoke", str(record.id), db_url=db_url)
    # a running API keeps verified keys for CIM_AUTH_CACHE_S (issue 12): a new process, or that time, later
    client.app.state.cim.verified_keys = None
    r = client.post("/ingest/parts", headers={"X-API-Key": key})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    bad = run_cim("keys", "create", "--role", "superuser", db_url=db_url, check=False)
    assert bad.returncode == 1 and "role: must be one of reader, loader, admin" in bad.stderr
    missing = run_cim("keys", "revoke", "999999", db_url=db_url, check=False)
    assert missing.returncode == 1 and "no API key with id 999999" in missing.stderr


# --- ingest upload: access control and plumbing --------------------------------------------------

PARTS_CSV = ("编号,小类,名称,经度,纬度\n"
             "3101010101000091,0101,上传井盖一,121.4712,31.2312\n"
             "3101010101000092,0101,上传井盖二,121.4714,31.2313\n").encode("utf-8")


def _upload(client, headers=None, name="../../tmp/parts.csv", **form):
    form = {"crs": "EPSG:4326", "x": "经度", "y": "纬度", "map": ["object_code=编号", "subclass_code=小类", "name=名称"], **form}
    return client.post("/ingest/parts", headers=headers or {}, files=[("files", (name, PARTS_CSV, "text/csv"))],
                       data=form)


def _uploaded(engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT object_code, name FROM parts WHERE name LIKE '上传%' AND valid_to IS NULL ORDER BY 1"))]


def test_ingest_upload_needs_a_loader_key(client, keys, engine):
    r = _upload(client)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    r = _upload(client, {"X-API-Key": "cim_not-a-real-key"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    r = _upload(client, {"Authorization": f"Bearer {keys['reader']}"})
    assert r.status_code == 403 and "role loader" in r.json()["detail"]
    assert _uploaded(engine) == []


def test_ingest_upload_loads_with_a_loader_key(client, keys, engine):
    dry = _upload(client, {"X-API-Key": keys["loader"]}, dry_run="true")
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True and dry.json()["read"] == 2
    assert _uploaded(engine) == []
    r = _upload(client, {"X-API-Key": keys["loader"]})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["layer"] == "parts" and report["read"] == 2 and report["inserted"] == 2, report
    assert _uploaded(engine) == [("3101010101000091", "上传井盖一"), ("3101010101000092", "上传井盖二")]
    with engine.connect() as conn:
        operator = conn.execute(sa.text("SELECT operator FROM ingest_runs WHERE id = :id"),
                                {"id": report["run_id"]}).scalar()
    assert operator == "test loader"
    # an admin may load too (Bearer form); the same delivery again changes nothing
    again = _upload(client, {"Authorization": f"Bearer {keys['admin']}"}).json()
    assert again["unchanged"] == 2 and again["inserted"] == 0


def test_ingest_upload_errors_name_the_parameter(client, keys):
    headers = {"X-API-Key": keys["loader"]}
    r = _upload(client, headers, map=["no-equals-sign"])
    assert r.status_code == 400 and r.json()["parameter"] == "map"
    r = client.post("/ingest/parts", headers=headers, data={"x": "lon"})
    assert r.status_code == 400 and r.json()["parameter"] == "files"
    r = client.post("/ingest/no-such-layer", headers=headers, files=[("files", ("a.csv", b"a\n1\n"))])
    assert r.status_code == 404
    r = client.post("/ingest/parts", headers=headers, data={"x": "lon"},
                    files=[("files", ("a.csv", PARTS_CSV)), ("files", ("dir/a.csv", PARTS_CSV))])
    assert r.status_code == 400 and r.json()["parameter"] == "files"


def test_ingest_upload_of_a_shapefile_with_its_sidecar_files(client, keys, engine, tmp_path):
    import geopandas as gpd

    gpd.GeoDataFrame({"BM": ["3101010102000093"], "name": ["上传污水井盖"]},
                     geometry=gpd.points_from_xy([121.4716], [31.2314]), crs="EPSG:4326").to_file(tmp_path / "wells.shp")
    files = [("files", (p.name, p.read_bytes())) for p in sorted(tmp_path.glob("wells.*"))]
    assert len(files) >= 4  # .shp .shx .dbf .prj (.cpg)
    r = client.post("/ingest/parts", headers={"X-API-Key": keys["loader"]}, files=files,
                    data={"map": ["object_code=BM"]})
    assert r.status_code == 200, r.text
    assert r.json()["inserted"] == 1 and len(r.json()["files"]) == 1
    assert ("3101010102000093", "上传污水井盖") in _uploaded(engine)


# --- read-key-required mode -----------------------------------------------------------------------

def test_read_key_required_mode(engine, keys, monkeypatch):
    monkeypatch.setenv(READ_KEY_ENV, "1")
    locked = TestClient(create_app(engine))
    r = locked.get("/grid/lookup", params={"lon": 121.47, "lat": 31.23})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    assert locked.post("/grid/lookup", json={"points": []}).status_code == 401
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
        assert locked.get(path).status_code == 200, path
    ok = locked.get("/grid/lookup", params={"lon": 121.47, "lat": 31.23}, headers={"X-API-Key": keys["reader"]})
    assert ok.status_code == 200
    assert locked.get("/nearby", params={"layer": "parts", "lon": 121.47, "lat": 31.23},
                      headers={"Authorization": f"Bearer {keys['admin']}"}).status_code == 200
    assert locked.get("/grid/lookup", params={"lon": 121.47, "lat": 31.23},
                      headers={"X-API-Key": "cim_wrong"}).status_code == 401
    with engine.begin() as conn:
        record, throwaway = create_key(conn, "reader", "revoked soon")
        revoke_key(conn, record.id)
    assert locked.get("/grid/lookup", params={"lon": 121.47, "lat": 31.23},
                      headers={"X-API-Key": throwaway}).status_code == 401
    # the default stays open
    monkeypatch.delenv(READ_KEY_ENV)
    assert TestClient(create_app(engine)).get("/grid/lookup", params={"lon": 121.47, "lat": 31.23}).status_code == 200


# --- IoT readings -----------------------------------------------------------------------------------

def _readings(client, device, **params):
    return client.get(f"/iot/devices/{device}/readings", params=params)


def test_readings_in_a_window(client):
    r = _readings(client, "dev-2", quantity="temperature", **{"from": "2024-05-01T01:00:00Z",
                                                               "to": "2024-05-01T02:00:00+00:00"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 60 and len(body["readings"]) == 60  # [from, to): 01:00 … 01:59
    assert body["readings"][0]["time"].startswith("2024-05-01T01:00:00")
    assert body["readings"][0]["value"] == pytest.approx(20.6)
    assert body["unit"] == "°C" and body["alarm"] == {"alarm_high": 38}
    assert body["device"]["id"] == "dev-2" and body["quantity"] == "temperature" and not body["truncated"]
    # the same instant written with another offset; without one it is a 400 (cim.times: never guessed)
    shanghai = _readings(client, "dev-2", quantity="temperature",
                         **{"from": "2024-05-01T09:00:00+08:00", "to": "2024-05-01T10:00:00+08:00"}).json()
    assert shanghai["readings"] == body["readings"]
    naive = _readings(client, "dev-2", quantity="temperature",
                      **{"from": "2024-05-01T01:00:00", "to": "2024-05-01T02:00:00Z"})
    assert naive.status_code == 400 and "no UTC offset" in naive.text and "from" in naive.text
    overflow = _readings(client, "dev-2", quantity="temperature", **{"to": "9999-12-31T23:59:59-14:00"})
    assert overflow.status_code == 400 and "outside the supported time range" in overflow.text


def test_readings_default_to_the_last_24_hours_and_feature_id(client, engine):
    r = _readings(client, "dev-1")  # one quantity: it may be omitted
    body = r.json()
    assert r.status_code == 200 and body["quantity"] == "water_level" and body["unit"] == "m"
    assert body["alarm"] == {"alarm_high": 1.5, "alarm_low": 0.1}
    # readings were written 1 … 48 hours before the fixture ran: those within the last 24 h
    assert 22 <= body["count"] <= 23
    start = datetime.fromisoformat(body["from"])
    assert all(datetime.fromisoformat(x["time"]) >= start for x in body["readings"])
    with engine.connect() as conn:
        fid = conn.execute(sa.text("SELECT feature_id::text FROM iot_devices WHERE source_id = 'dev-1'")).scalar()
    assert _readings(client, fid).json()["readings"] == body["readings"]


def test_readings_are_capped(client):
    body = _readings(client, "dev-2", quantity="humidity",
                     **{"from": "2024-05-11T00:00:00Z", "to": "2024-05-13T00:00:00Z"}).json()
    assert body["count"] == MAX_READINGS and len(body["readings"]) == MAX_READINGS and body["truncated"]
    assert datetime.fromisoformat(body["next_from"]) == T0 + timedelta(days=10, seconds=MAX_READINGS)
    rest = _readings(client, "dev-2", quantity="humidity",
                     **{"from": body["next_from"], "to": "2024-05-13T00:00:00Z"}).json()
    assert rest["count"] == 5 and not rest["truncated"]


@pytest.mark.parametrize("device, params, status, parameter", [
    ("nope", {}, 404, None),
    ("dev-2", {}, 400, "quantity"),  # two quantities: which one?
    ("dev-2", {"quantity": "pressure"}, 400, "quantity"),
    ("dev-1", {"from": "yesterday"}, 400, "from"),
    ("dev-1", {"to": "2024-13-01T00:00:00Z"}, 400, "to"),
    ("dev-1", {"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"}, 400, "from"),
    ("dev-1", {"to": "0001-01-01T00:00:00Z"}, 400, "to"),
])
def test_readings_errors(client, device, params, status, parameter):
    r = _readings(client, device, **params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json().get("parameter") == parameter


def _tcp_sockets(port: int) -> dict[int, str]:
    """The IPv4 TCP sockets whose local port is ``port``: inode → state ('0A' listening, '01' established)."""
    found = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found[int(fields[9])] = fields[3]
    return found


def _holders(inodes: set[int]) -> dict[int, set[int]]:
    """Which processes hold each socket (by inode): pid sets."""
    import os

    held: dict[int, set[int]] = {inode: set() for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in held:
                held[int(target[8:-1])].add(int(pid))
    return held


def test_serve_with_two_workers_gives_each_its_own_nodelay_socket(db_url):
    """`cim serve --workers 2` listens on a socket per worker (SO_REUSEPORT), each made with IPPROTO_TCP (so
    asyncio sets TCP_NODELAY): a client's pool of keep-alive connections is spread over both workers, where
    on one shared socket the worker that woke first took nearly all of them (31 of 32 seen). A second server
    on the same port is refused, not let in beside it."""
    import socket
    from urllib.parse import urlsplit

    import httpx

    from api.cli import listening_socket, worker_sockets
    from cim.errors import UserError
    from tests.conftest import CIM
    from tests.servers import serve_command

    probe = listening_socket("127.0.0.1", 0)
    assert probe.proto == socket.IPPROTO_TCP
    probe.close()
    with serve_command(lambda port: [CIM, "serve", "--port", str(port), "--workers", "2"], db_url=db_url) as base:
        answer = httpx.get(f"{base}/healthz", timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        port = urlsplit(base).port
        deadline = time.monotonic() + 90  # /healthz answered by the first worker up; wait for the second
        while len(listening := {i for i, state in _tcp_sockets(port).items() if state == "0A"}) < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        holders = _holders(listening)
        assert len(listening) == 2, holders
        supervisor = set.intersection(*holders.values())  # keeps both, to restart a worker on its own
        workers = [pids - supervisor for pids in holders.values()]
        assert len(supervisor) == 1 and all(len(w) == 1 for w in workers) and workers[0] != workers[1], holders

        pool = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
        try:
            for conn in pool:  # each answered: accepted by a worker, and kept alive
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            established = {inode for inode, state in _tcp_sockets(port).items() if state == "01"}
            per_worker = [sum(1 for pids in _holders(established).values() if pids & w) for w in workers]
            # spread by the kernel's hash of each connection's addresses: below 8 of 64 on either side has a
            # chance of ~1e-9
            assert sum(per_worker) == 64 and min(per_worker) >= 8, per_worker
        finally:
            for conn in pool:
                conn.close()
        with pytest.raises(UserError, match="--host/--port"):
            worker_sockets("127.0.0.1", port, 2)  # a second server on the port
    busy = listening_socket("127.0.0.1", port)  # the port is free again once the workers stop
    busy.close()
