"""What a request may make the server hold (issue 16, items 6 and 7): body size per route before
parsing (413), item counts while parsing, a maxLength on every string parameter, problem
documents that never echo a huge input, offsets capped — in process, and against a real uvicorn
whose memory is measured under a stream of 50 MB bodies."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.features import MAX_OFFSET
from api.limits import (
    GEOCODE_BATCH_MAX_BODY_BYTES, GRID_LOOKUP_MAX_BODY_BYTES, MAX_CRS_CHARS, MAX_DETAIL_CHARS,
    TooManyItems, body_limit, load_json_list,
)
from cim.apikeys import create_key
from cim.config import override_settings
from cim.gazetteer.geocode import MAX_QUERY_CHARS
from tests.servers import serve_app
from tests.spatial_data import build_features, build_hierarchy

MB = 1 << 20


@pytest.fixture(scope="module")
def city(engine):
    with engine.begin() as conn:
        city = build_hierarchy(conn)
        build_features(conn, city)
    return city


@pytest.fixture(scope="module")
def client(engine, city):
    return TestClient(create_app(engine), raise_server_exceptions=False)


def _problem(r: httpx.Response, status: int, parameter: str | None = None) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    if parameter is not None:
        assert body.get("parameter") == parameter, body
    return body


# --- bodies -----------------------------------------------------------------------------------------

def test_routes_have_their_own_body_limits():
    assert body_limit("POST", "/grid/lookup") == GRID_LOOKUP_MAX_BODY_BYTES < 50 * MB
    assert body_limit("POST", "/geocode/batch") == GEOCODE_BATCH_MAX_BODY_BYTES < 50 * MB
    assert body_limit("POST", "/ingest/buildings") == 2048 * MB > GEOCODE_BATCH_MAX_BODY_BYTES
    with override_settings(upload_max_mb=5):  # a deployment's own upload limit
        assert body_limit("POST", "/ingest/buildings") == 5 * MB
    assert body_limit("GET", "/collections") < GRID_LOOKUP_MAX_BODY_BYTES


def test_a_declared_oversized_body_is_refused_with_413(client):
    body = b"x" * (GRID_LOOKUP_MAX_BODY_BYTES + 1)
    problem = _problem(client.post("/grid/lookup", content=body,
                                   headers={"content-type": "application/json"}), 413)
    assert f"{GRID_LOOKUP_MAX_BODY_BYTES:,}" in problem["detail"]


def test_a_streamed_body_is_refused_when_it_passes_the_limit(client):
    sent = []

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(200):
            sent.append(1)
            yield b" " * (64 << 10)

    r = client.post("/grid/lookup", content=chunks(), headers={"content-type": "application/json"})
    _problem(r, 413)


def test_geocode_batch_limits(client):
    # 1,000 addresses of 50 KB each: a 50 MB body, refused before it is parsed
    huge = orjson.dumps(["上" * 50_000] * 1_000)
    _problem(client.post("/geocode/batch", content=huge, headers={"content-type": "application/json"}), 413)
    # an address longer than GET /geocode accepts, named
    r = client.post("/geocode/batch", json=["上海市黄浦区", "上" * (MAX_QUERY_CHARS + 1)])
    _problem(r, 400, "addresses.1")
    # counted while parsing: more items than the cap stop the parser, whatever the body's size
    many = b"[" + b",".join([b'"a"'] * 100_001) + b"]"
    assert "at most 100,000" in _problem(client.post("/geocode/batch", content=many,
                                                     headers={"content-type": "application/json"}),
                                         400, "addresses")["detail"]
    wrapped = b'{"addresses": ' + many + b"}"
    _problem(client.post("/geocode/batch", content=wrapped, headers={"content-type": "application/json"}),
             400, "addresses")


def test_a_json_list_is_counted_while_it_is_parsed():
    from cim.errors import ParameterError

    many = b"[" + b",".join([b'"a,b"'] * 50) + b"]"  # commas inside strings are not items
    assert load_json_list(many, 50, "addresses") == ["a,b"] * 50
    assert load_json_list(b'{"addresses": ' + many + b', "n": 1}', 50, "addresses", key="addresses")["n"] == 1
    with pytest.raises(TooManyItems, match="at most 50"):
        load_json_list(b"[" + b",".join([b"null"] * 51) + b"]", 50, "addresses")
    # a nested list could hold millions of items of its own: refused, not parsed
    for body, parameter in ((b"[[" + b",".join([b"0"] * 100) + b"]]", "addresses.0"),
                            (b'{"x": [' + b",".join([b"0"] * 100) + b'], "addresses": []}', "x")):
        with pytest.raises(ParameterError) as refused:
            load_json_list(body, 50, "addresses", key="addresses")
        assert refused.value.parameter == parameter
    with pytest.raises(ValueError):
        load_json_list(b"[" + b",".join([b"1"] * 60) + b"] trailing", 100, "addresses")


def test_the_upload_route_takes_more_than_the_others(engine, client):
    with engine.begin() as conn:
        _, key = create_key(conn, "loader", "limits test")
    big = b"id,x,y\n" + b"1,121.47,31.23\n" * (3 * MB // 15)  # 3 MB: over the grid's limit, under the upload's
    r = client.post("/ingest/parts", headers={"X-API-Key": key}, data={"dry_run": "true"},
                    files={"files": ("p.csv", big, "text/csv")})
    assert r.status_code != 413 and r.status_code < 500, r.text[:300]


# --- strings and echoes ------------------------------------------------------------------------------

def test_every_string_query_parameter_has_a_max_length(client):
    missing = []
    for path, methods in client.get("/openapi.json").json()["paths"].items():
        for method, operation in methods.items():
            for p in operation.get("parameters", []):
                schema = p.get("schema", {})
                if p["in"] == "query" and schema.get("type") == "string" and "enum" not in schema \
                        and "maxLength" not in schema:
                    missing.append(f"{method.upper()} {path} {p['name']}")
    assert not missing


def test_an_oversized_string_is_a_short_400(client, city):
    lon, lat = city.lonlat(200, 150)
    crs = "EPSG:" + "9" * 20_000
    r = client.get("/grid/lookup", params={"lon": lon, "lat": lat, "crs": crs})
    _problem(r, 400, "crs")
    assert len(r.content) < 2_000
    r = client.post("/grid/lookup", json={"points": [{"lon": lon, "lat": lat}], "crs": "x" * (1 * MB)})
    _problem(r, 400, "crs")
    assert len(r.content) < 2_000  # the 1 MB value is not sent back
    r = client.get("/collections/parts/items", params={"filter": "name = '" + "a" * 20_000 + "'"})
    _problem(r, 400, "filter")


def test_a_problem_detail_is_cut(client, city):
    r = client.get("/collections/parts/items", params={"kind": "a" * (MAX_CRS_CHARS + 5_000)})
    assert len(_problem(r, 400)["detail"]) <= MAX_DETAIL_CHARS + 50


# --- offsets -------------------------------------------------------------------------------------------

def test_offsets_are_capped_and_documented(client):
    _problem(client.get("/collections/parts/items", params={"offset": "9223372036854775807"}), 400, "offset")
    _problem(client.get("/collections/parts/items", params={"offset": str(MAX_OFFSET + 1)}), 400, "offset")
    r = client.get("/collections/parts/items", params={"offset": str(MAX_OFFSET)})
    assert r.status_code == 200 and r.json()["numberReturned"] == 0
    parameters = client.get("/openapi.json").json()["paths"]["/collections/{collectionId}/items"]["get"]["parameters"]
    assert next(p for p in parameters if p["name"] == "offset")["schema"]["maximum"] == MAX_OFFSET


# --- a real server's memory under 50 MB bodies ------------------------------------------------------------

def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _server_pid() -> int:
    """The uvicorn that :func:`tests.servers.serve_app` started: this process's newest uvicorn child."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if int(fields[1]) == os.getpid() and b"uvicorn" in command:
            children.append((int(fields[19]), int(entry.name)))  # (start time, pid)
    assert children, "no uvicorn child process"
    return max(children)[1]


@pytest.fixture(scope="module")
def server(db_url, city, tmp_path_factory):
    with serve_app(db_url, env={"CIM_HOME": str(tmp_path_factory.mktemp("cim-home"))}) as base:
        yield _server_pid(), base


def test_memory_stays_bounded_under_a_stream_of_50_mb_bodies(server, city):
    pid, base = server
    lon, lat = city.lonlat(200, 150)
    with httpx.Client(base_url=base, timeout=120) as http:
        for _ in range(3):  # warm up: imports, pools, caches
            http.get("/grid/lookup", params={"lon": lon, "lat": lat})
            http.post("/geocode/batch", json=["上海市黄浦区南京东路1号"])
        before = _memory_kib(pid)["VmRSS"]
        assert before > 50 * 1024, before  # the server with the app loaded, not some other child
        fifty = b"x" * (50 * MB)
        crs_body = b'{"points": [{"lon": 121.4, "lat": 31.2}], "crs": "' + b"9" * (50 * MB) + b'"}'
        points = b'{"points": [' + b",".join([b'{"lon":1,"lat":1}'] * 2_700_000) + b"]}"  # 50 MB of points
        addresses = orjson.dumps(["上" * 50_000] * 350)  # 50 MB of addresses
        statuses = []
        for _ in range(2):
            for path, body, ctype in (("/grid/lookup", crs_body, "application/json"),
                                      ("/grid/lookup", points, "application/json"),
                                      ("/geocode/batch", addresses, "application/json"),
                                      ("/geocode/batch", fifty, "text/csv"),
                                      ("/collections/parts/items", fifty, "application/json")):
                r = http.post(path, content=body, headers={"content-type": ctype})
                statuses.append(r.status_code)
                assert r.status_code == 413 and len(r.content) < 2_000, (path, r.status_code, r.text[:300])

            def streamed():  # no Content-Length: refused while it streams in
                for _ in range(50):
                    yield b"9" * MB

            r = http.post("/grid/lookup", content=streamed(), headers={"content-type": "application/json"})
            assert r.status_code == 413
        # an upload needs a key; without one the answer is 401, and the files went to disk, not memory
        r = http.post("/ingest/parts", files={"files": ("p.csv", fifty, "text/csv")})
        assert r.status_code == 401
        after = _memory_kib(pid)
        # before the limits one such body took 3 GB; the bound is generous, but far below one body's cost
        assert after["VmHWM"] - before < 200 * 1024, (before, after)
        assert after["VmRSS"] - before < 100 * 1024, (before, after)
        assert http.get("/grid/lookup", params={"lon": lon, "lat": lat}).status_code == 200


def test_an_upload_without_a_key_is_refused_before_its_body_is_read(client):
    """FastAPI reads a body before a route's dependencies run: the key is checked first, by the route."""
    import asyncio
    from contextlib import AsyncExitStack

    from api.problems import Problem

    app = client.app
    reads = 0

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 65_536, "more_body": reads < 10}

    async def send(message):
        raise AssertionError(f"nothing is sent before the error is mapped: {message}")

    scope = {"type": "http", "method": "POST", "path": "/ingest/parts", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b")], "app": app,
             "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("test", 1)}
    async def route() -> None:
        async with AsyncExitStack() as stack:  # what FastAPI's own middleware gives every request
            scope["fastapi_middleware_astack"] = stack
            await app.router(scope, receive, send)

    with pytest.raises(Exception) as refused:  # the router alone: the app's handlers would map it to a 401
        asyncio.run(route())
    assert isinstance(refused.value, Problem), refused.value
    assert refused.value.status == 401 and reads == 0


@pytest.mark.parametrize("path, params, parameter", [
    ("/collections/parts/items", {"name": "a\x00b"}, "name"),
    ("/cases", {"status": "\x00"}, "status"),
    ("/alerts", {"\x00": "1"}, "\\u0000"),
    ("/scenarios/illegal-building/structures", {"grid": "3101\x00"}, "grid"),
])
def test_a_nul_in_any_query_parameter_is_a_400_naming_it(client, path, params, parameter):
    """PostgreSQL text cannot hold NUL: one check before every route, not one per route (the fuzz test
    found such 500s route after route)."""
    _problem(client.get(path, params=params), 400, parameter)


def test_a_nul_in_a_path_parameter_is_a_400(client):
    _problem(client.get("/scenarios/illegal-building/structures/a%00b"), 400, "path")
    _problem(client.get("/collections/parts/items/a%00b"), 400, "path")
