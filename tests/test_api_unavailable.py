"""The database down (issue 16, item 6): every operation that needs the base answers 503 with a
problem document and ``Retry-After`` — never a 500 — and ``/healthz`` says so too.

A real PostGIS in its own throwaway cluster, which the test stops: the session's shared server
must stay up for the other test modules. Every operation of the OpenAPI document is called (so a
route added later is covered without this test knowing it), with a loader key, so that the write
route gets past its key check too.
"""
from __future__ import annotations

import io
import re
import shutil

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.apikeys import create_key
from cim.bootstrap import initialise
from cim.cluster import Cluster
from cim.database import DatabaseUnavailableError, engine_for
from tests.spatial_data import build_features, build_hierarchy

#: operations that answer from memory, without the database
NO_DATABASE = {"GET /", "GET /conformance", "GET /metrics", "GET /tileMatrixSets",
               "GET /tileMatrixSets/{tileMatrixSetId}",
               "GET /scenarios/curtain-wall/model"}  # the scoring model is a file of the package


@pytest.fixture(scope="module")
def stopped_base(tmp_path_factory):
    """(app, loader key, city) over a base whose server has been stopped after the app started."""
    home = tmp_path_factory.mktemp("cim-down")
    cluster = Cluster(home)
    url = cluster.up()
    try:
        engine = engine_for(url)
        initialise(engine)
        with engine.begin() as conn:
            city = build_hierarchy(conn)
            build_features(conn, city)
            _, key = create_key(conn, "loader", "unavailable test")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CIM_HOME", str(home))  # the tile cache lives there, empty
            app = create_app(engine)
            with TestClient(app) as client:
                assert client.get("/healthz").status_code == 200
            engine.dispose()
            cluster.down()
            yield app, key, city
    finally:
        cluster.down()
        shutil.rmtree(home, ignore_errors=True)


def _fill(path: str, city) -> str:
    values = {"collectionId": "buildings", "layer": "buildings", "featureId": "00000000-0000-0000-0000-000000000001",
              "device_id": "dev-1", "tileMatrixSetId": "WebMercatorQuad", "tileMatrix": "16", "tileRow": "26790",
              "tileCol": "54906", "version": "1", "tile": "0", "case_id": "1", "service_request_id": "1",
              "rule_id": "1", "alert_id": "1", "response_id": "1", "clue_id": "1", "code": "X1", "run_id": "1"}
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)


def _query(operation: dict, city) -> dict[str, str]:
    lon, lat = city.lonlat(200, 150)
    values = {"lon": str(lon), "lat": str(lat), "q": "上海市黄浦区南京东路1号", "group_by": "grid",
              "layer": "buildings", "datetime": "2026-01-01T00:00:00Z/2026-02-01T00:00:00Z", "from": "2026-01",
              "to": "2026-02"}
    return {p["name"]: values[p["name"]] for p in operation.get("parameters", [])
            if p["in"] == "query" and p.get("required")}


def _call(client: TestClient, method: str, path: str, operation: dict, city, key: str):
    url, params = _fill(path, city), _query(operation, city)
    headers = {"X-API-Key": key}
    lon, lat = city.lonlat(200, 150)
    if method == "post" and path == "/grid/lookup":
        return client.post(url, params=params, headers=headers, json={"points": [{"lon": lon, "lat": lat}]})
    if method == "post" and path == "/geocode/batch":
        return client.post(url, params=params, headers=headers, json=["上海市黄浦区南京东路1号"])
    if method == "post" and path.startswith("/ingest/"):
        return client.post(url, params=params, headers=headers,
                           files={"files": ("b.csv", io.BytesIO(b"id,x,y\n1,121.47,31.23\n"), "text/csv")})
    if method == "post" and path == "/cases":
        return client.post(url, params=params, headers=headers,
                           json={"class": "010101", "lon": lon, "lat": lat, "description": "井盖缺失"})
    if method == "post" and path == "/cases/{case_id}/actions":
        return client.post(url, params=params, headers=headers, json={"action": "accept", "role": "department"})
    if method == "post" and path == "/open311/v2/requests.json":
        return client.post(url, params=params, data={"api_key": key, "service_code": "010101", "lat": str(lat),
                                                     "long": str(lon)})
    return client.request(method.upper(), url, params=params, headers=headers)


def _unavailable(r) -> bool:
    """503 with Retry-After and a body saying the database is the cause: a problem document, or under
    /open311 the GeoReport v2 error list (its own format, the same status)."""
    if r.status_code != 503 or int(r.headers.get("retry-after", "0")) <= 0:
        return False
    if r.request.url.path.startswith("/open311/"):
        body = r.json()
        return (r.headers["content-type"] == "application/json" and body[0]["code"] == 503
                and "database" in body[0]["description"])
    return (r.headers["content-type"] == "application/problem+json" and r.json()["status"] == 503
            and "database" in r.json()["detail"])


def test_every_operation_answers_503_with_retry_after_while_the_database_is_down(stopped_base):
    app, key, city = stopped_base
    client = TestClient(app, raise_server_exceptions=False)
    paths = app.openapi()["paths"]
    called, wrong = [], []
    for path, methods in paths.items():
        for method, operation in methods.items():
            label = f"{method.upper()} {path}"
            r = _call(client, method, path, operation, city, key)
            called.append(label)
            if label == "GET /healthz":
                ok = r.status_code == 503 and r.json()["status"] == "unavailable"
            elif label in NO_DATABASE:
                ok = r.status_code == 200
            else:
                ok = _unavailable(r)
            if not ok:
                wrong.append(f"{label}: {r.status_code} {r.text[:300]}")
    assert {"GET /collections/{collectionId}/items", "POST /grid/lookup", "POST /ingest/{layer}",
            "GET /geocode", "GET /nearby", "POST /cases", "GET /cases/stats", "POST /cases/{case_id}/actions",
            "GET /open311/v2/requests.json", "POST /open311/v2/requests.json"} <= set(called)
    assert not wrong, "\n".join(wrong)


def test_connection_failures_become_one_unavailable_error_in_the_core(stopped_base):
    """Close to the database: any caller (the API, the loader, the CLI) gets the same error."""
    app, _, _ = stopped_base
    engine = app.state.cim.engine
    with pytest.raises(DatabaseUnavailableError, match="not reachable") as caught:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    assert caught.value.status == 503 and caught.value.retry_after > 0
    assert "port" not in str(caught.value)  # the server's address stays out of a public answer


def test_read_key_middleware_answers_503_too(stopped_base, monkeypatch):
    """With read keys required the key check itself needs the base: it too answers 503, not 500."""
    app, key, _ = stopped_base
    locked = app.state.cim.deployment.model_copy(update={"api_read_key_required": True})
    monkeypatch.setattr(app.state.cim, "deployment", locked)
    r = TestClient(app, raise_server_exceptions=False).get("/collections", headers={"X-API-Key": key})
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["status"] == 503


def test_a_connection_lost_mid_request_is_unavailable_too(engine):
    """The server ends a connection in use (a restart, a failover): the same error, and the pool recovers."""
    with engine.connect() as victim:
        pid = victim.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DatabaseUnavailableError, match="connection lost"):
            victim.execute(sa.text("SELECT 1"))
    with engine.connect() as conn:  # the lost connection was discarded, not handed out again
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1


def test_cli_status_still_says_what_to_run_when_the_database_is_down():
    """The CLI gets the same error from the engine and keeps its hint, in one line."""
    import socket

    from tests.conftest import run_cim

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cim("db", "status", db_url=f"postgresql://cim:x@127.0.0.1:{port}/cim", check=False)
    assert proc.returncode != 0
    assert "database not reachable" in proc.stdout + proc.stderr and "cim db up" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_pool_with_every_connection_busy_is_a_503_not_a_500(server_url):
    """The pool's checkout timeout is raised outside any statement, so no engine listener sees it:
    the API maps it once, as 'unavailable, retry'."""
    from cim.config import override_settings
    from cim.database import reader_engine
    from tests.conftest import create_database

    url = create_database(server_url)  # a URL of its own: its engines are made under these settings
    initialise(engine_for(url))
    with override_settings(db_pool_size=1, db_pool_timeout_s=0.2):
        client = TestClient(create_app(engine_for(url)))
        held = reader_engine(engine_for(url)).connect()  # the API's only reading connection
        try:
            r = client.get("/collections/parts/items")
        finally:
            held.close()
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
        assert "busy" in r.json()["detail"] and int(r.headers["Retry-After"]) > 0
        assert client.get("/collections/parts/items").status_code == 200  # the connection is back
