"""Cases as a map layer (issue 11, item 8): the OGC API – Features collection ``cases`` (read-only,
CRS84 by default, other CRSs, CQL2 filters) and its vector tiles, served from the view of
migration 0005 like every other layer; a change to a case bumps the layer's version so tiles and
ETags never go stale."""
from __future__ import annotations

import math

import mapbox_vector_tile
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.apikeys import create_key
from tests.test_geocode import load_city


@pytest.fixture(scope="module")
def city(engine):
    load_city(engine)
    return engine


@pytest.fixture(scope="module")
def client(city, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CIM_CASE_ATTACHMENTS", str(tmp_path_factory.mktemp("photos")))
    yield TestClient(create_app(city))
    mp.undo()


@pytest.fixture(scope="module")
def keys(city):
    with city.begin() as conn:
        return {r: {"X-API-Key": create_key(conn, r, r)[1]} for r in ("reader", "loader")}


@pytest.fixture(scope="module")
def reported(client, keys):
    """Three located cases (one accepted) and one the gazetteer cannot place."""
    ids = []
    for door in ("150", "100", "200"):
        r = client.post("/cases", json={"channel": "grid_patrol", "class": "道路破损",
                                        "address": f"汾阳路{door}号", "description": f"{door}号路面破损"},
                        headers=keys["reader"])
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    client.post(f"/cases/{ids[0]}/actions", json={"action": "accept", "role": "department"}, headers=keys["loader"])
    unplaced = client.post("/cases", json={"class": "道路破损", "address": "火星路1号"}, headers=keys["reader"])
    return ids, unplaced.json()["id"]


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def test_cases_collection_items(client, reported):
    ids, unplaced = reported
    c = client.get("/collections/cases").json()
    assert c["id"] == "cases" and c["itemType"] == "feature"
    items = client.get("/collections/cases/items", params={"limit": 100}).json()
    by_case = {f["properties"]["source_id"]: f for f in items["features"]}
    assert {str(i) for i in ids} <= set(by_case) and str(unplaced) not in by_case  # no point, no map feature
    first = by_case[str(ids[0])]
    assert first["properties"]["status"] == "accepted" and first["properties"]["class_name"] == "道路破损"
    assert "reporter_contact" not in first["properties"] and "person_name" not in first["properties"]
    lon, lat = first["geometry"]["coordinates"][:2]
    case = client.get(f"/cases/{ids[0]}").json()
    assert abs(lon - case["lon"]) < 1e-6 and abs(lat - case["lat"]) < 1e-6
    one = client.get(f"/collections/cases/items/{first['id']}")
    assert one.status_code == 200 and one.json()["properties"]["source_id"] == str(ids[0])
    projected = client.get("/collections/cases/items",
                           params={"crs": "http://www.opengis.net/def/crs/EPSG/0/4549", "limit": 100}).json()
    x = [f for f in projected["features"] if f["properties"]["source_id"] == str(ids[0])][0]["geometry"]
    assert x["coordinates"][0] > 100_000  # metres, not degrees
    accepted = client.get("/collections/cases/items", params={"filter": "status = 'accepted'"}).json()
    assert [f["properties"]["source_id"] for f in accepted["features"]] == [str(ids[0])]


def test_cases_vector_tiles_follow_the_cases(client, keys, reported):
    ids, _ = reported
    case = client.get(f"/cases/{ids[1]}").json()
    z = 16
    x, y = _tile_of(case["lon"], case["lat"], z)
    url = f"/collections/cases/tiles/WebMercatorQuad/{z}/{y}/{x}"
    first = client.get(url)
    assert first.status_code == 200, first.text
    feats = mapbox_vector_tile.decode(first.content)["cases"]["features"]
    assert any(f["properties"].get("status") == "dispatched" for f in feats)
    etag = first.headers["etag"]
    before = client.get("/collections/cases/tiles/WebMercatorQuad/tilejson.json").json()["version"]

    engine = client.app.state.cim.engine
    version = "SELECT version FROM layers WHERE name = 'cases'"
    with engine.connect() as conn:
        v0 = conn.execute(sa.text(version)).scalar()
    r = client.post(f"/cases/{ids[1]}/actions", json={"action": "accept", "role": "department"},
                    headers=keys["loader"])
    assert r.status_code == 200
    with engine.connect() as conn:
        assert conn.execute(sa.text(version)).scalar() == v0 + 1
    # an intake changes its case in several statements (insert, register, dispatch): still one bump
    client.post("/cases", json={"class": "道路破损", "address": "汾阳路120号"}, headers=keys["reader"])
    with engine.connect() as conn:
        assert conn.execute(sa.text(version)).scalar() == v0 + 2
    # the layer's version moved with the case (the app re-reads the registry after a few seconds:
    # a fresh app reads it at once)
    fresh = TestClient(create_app(client.app.state.cim.engine))
    assert fresh.get("/collections/cases/tiles/WebMercatorQuad/tilejson.json").json()["version"] != before
    again = fresh.get(url)
    assert again.headers["etag"] != etag
    feats = mapbox_vector_tile.decode(again.content)["cases"]["features"]
    assert any(f["properties"].get("status") == "accepted" for f in feats)
