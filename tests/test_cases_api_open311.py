"""The Open311 GeoReport v2 facade driven the way a 311 client drives it: plain HTTP (httpx) against a
real uvicorn server over the sample city, form-encoded POSTs, the spec's parameters, response
fields and error format (``[{"code": …, "description": …}]``)."""
from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from cim.apikeys import create_key
from cim.grid import lookup_points
from tests.servers import serve_app
from tests.test_geocode import load_city

#: the fields every service request carries in GeoReport v2 (JSON)
REQUEST_FIELDS = {"service_request_id", "status", "status_notes", "service_name", "service_code", "description",
                  "agency_responsible", "service_notice", "requested_datetime", "updated_datetime",
                  "expected_datetime", "address", "address_id", "zipcode", "lat", "long", "media_url"}


@pytest.fixture(scope="module")
def city(engine):
    load_city(engine)
    return engine


@pytest.fixture(scope="module")
def api_key(city) -> str:
    with city.begin() as conn:
        return create_key(conn, "reader", "311 app")[1]


@pytest.fixture(scope="module")
def base(db_url, city, tmp_path_factory):
    env = {"CIM_CASE_ATTACHMENTS": str(tmp_path_factory.mktemp("photos"))}
    with serve_app(db_url, env=env) as url:
        yield url + "/open311/v2"


@pytest.fixture(scope="module")
def http(base):
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client


def test_services_are_the_catalogue_subclasses(http):
    r = http.get("/services.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    services = r.json()
    road = [s for s in services if s["service_name"] == "道路破损"]
    assert len(road) == 1 and road[0]["service_code"] == "E0105" and road[0]["metadata"] is False
    assert road[0]["group"] == "事件/市容环境" and road[0]["description"]
    assert {s["type"] for s in services} == {"realtime"}
    assert all(set(s) >= {"service_code", "service_name", "description", "metadata", "type", "keywords", "group"}
               for s in services)
    codes = {s["service_code"] for s in services}
    assert "E01" not in codes and "01" not in codes and "0101" in codes  # 大类 are groups, not services


def test_post_by_address_then_read_it_back(http, api_key, city):
    r = http.post("/requests.json", data={"api_key": api_key, "service_code": "E0105",
                                          "address_string": "汾阳路150号附近", "description": "路面龟裂",
                                          "email": "someone@example.org", "first_name": "小", "last_name": "王",
                                          "media_url": "https://example.org/crack.jpg"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert isinstance(created, list) and len(created) == 1
    sid = created[0]["service_request_id"]
    assert sid.isdigit() and "道路养护" in created[0]["service_notice"]

    one = http.get(f"/requests/{sid}.json")
    assert one.status_code == 200
    [req] = one.json()
    assert set(req) == REQUEST_FIELDS
    assert req["status"] == "open" and req["service_code"] == "E0105" and req["service_name"] == "道路破损"
    assert req["address"] == "汾阳路150号附近" and req["media_url"] == "https://example.org/crack.jpg"
    assert "建管委" in req["agency_responsible"] and req["expected_datetime"]
    with city.connect() as conn:  # the point is the door's, in WGS84 lat/long
        x, y = conn.execute(sa.text("SELECT ST_X(geom), ST_Y(geom) FROM cases WHERE id = :i"), {"i": int(sid)}).one()
        grid = lookup_points(conn, [req["long"]], [req["lat"]], "EPSG:4326")[0].grid
        assert grid is not None and grid.code == conn.execute(
            sa.text("SELECT grid_code FROM cases WHERE id = :i"), {"i": int(sid)}).scalar()


def test_post_by_lat_long_and_filters(http, api_key):
    first = http.get("/requests.json", params={"service_code": "E0105"}).json()
    lat, lon = first[0]["lat"], first[0]["long"]
    r = http.post("/requests.json", data={"api_key": api_key, "service_code": "E0105", "lat": str(lat),
                                          "long": str(lon), "description": "又一处"})
    assert r.status_code == 201
    sid = r.json()[0]["service_request_id"]
    both = http.get("/requests.json", params={"service_request_id": f"{sid},{first[0]['service_request_id']}"})
    assert sorted(q["service_request_id"] for q in both.json()) == sorted([sid, first[0]["service_request_id"]])
    assert all(q["status"] == "open" for q in http.get("/requests.json", params={"status": "open"}).json())
    assert http.get("/requests.json", params={"status": "closed"}).json() == []
    assert http.get("/requests.json", params={"start_date": "2001-01-01T00:00:00Z",
                                              "end_date": "2001-02-01T00:00:00Z"}).json() == []
    recent = http.get("/requests.json", params={"start_date": "2020-01-01T00:00:00Z"}).json()
    assert {sid, first[0]["service_request_id"]} <= {q["service_request_id"] for q in recent}
    by_code = http.get("/requests.json", params={"service_code": "E0105,0101"}).json()
    assert sid in {q["service_request_id"] for q in by_code} and {q["service_code"] for q in by_code} == {"E0105"}


def test_errors_in_the_spec_format(http, api_key):
    def error(r, code):
        assert r.status_code == code, r.text
        body = r.json()
        assert isinstance(body, list) and body[0]["code"] == code and body[0]["description"]
        return body[0]["description"]

    assert "api_key" in error(http.post("/requests.json", data={"service_code": "E0105",
                                                                "address_string": "汾阳路150号"}), 403)
    error(http.post("/requests.json", data={"api_key": "cim_wrong", "service_code": "E0105",
                                            "address_string": "汾阳路150号"}), 403)
    assert "E0105 道路破损" in error(http.post("/requests.json", data={
        "api_key": api_key, "service_code": "nope", "address_string": "汾阳路150号"}), 400)
    assert "service_code" in error(http.post("/requests.json", data={"api_key": api_key, "lat": "31.2"}), 400)
    assert "location" in error(http.post("/requests.json", data={"api_key": api_key, "service_code": "E0105"}), 400)
    assert "long" in error(http.post("/requests.json", data={"api_key": api_key, "service_code": "E0105",
                                                             "lat": "31.2", "long": "east"}), 400)
    error(http.get("/requests/99999999.json"), 404)
    error(http.get("/requests/abc.json"), 400)
    assert "open or closed" in error(http.get("/requests.json", params={"status": "pending"}), 400)
    error(http.get("/requests.json", params={"start_date": "last week"}), 400)


def test_the_openapi_document_says_errors_come_in_the_spec_format(http, base):
    """Clients and schemathesis read the document: under /open311 every refusal is documented as the
    spec's list (application/json, schema Open311Errors), not as a problem document."""
    document = httpx.get(base.removesuffix("/open311/v2") + "/openapi.json", timeout=60).json()
    assert document["components"]["schemas"]["Open311Errors"]["items"]["required"] == ["code", "description"]
    refusals = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                if status == "default" or status[0] in "45":
                    refusals[(path, method, status)] = response["content"]
    open311 = {k: v for k, v in refusals.items() if k[0].startswith("/open311/")}
    assert {("/open311/v2/requests.json", "get", "400"), ("/open311/v2/requests/{service_request_id}.json", "get",
                                                          "404"), ("/open311/v2/requests.json", "post", "default")} \
        <= set(open311)
    assert all(v == {"application/json": {"schema": {"$ref": "#/components/schemas/Open311Errors"}}}
               for v in open311.values()), open311
    cases = [v for k, v in refusals.items() if k[0].startswith("/cases")]  # the same loop, the house format
    assert cases and all(set(v) == {"application/problem+json"} for v in cases), cases


def test_an_oversized_parameter_is_a_short_400_in_the_spec_format(http):
    r = http.get("/requests.json", params={"service_code": "E0105," * 5_000})
    assert r.status_code == 400 and r.json()[0]["code"] == 400 and len(r.content) < 2_000, r.text[:300]
