"""OGC API – Features over a real PostGIS base: a few dozen features inserted with SQL in several
layers (one building updated, so it has a closed historical version, and one terminated)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import httpx
import pyproj
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from tests.conftest import missing_tool
from tests.servers import serve_app

SRID = 4549
TO_STORAGE = pyproj.Transformer.from_crs("OGC:CRS84", f"EPSG:{SRID}", always_xy=True)
TO_WGS = pyproj.Transformer.from_crs(f"EPSG:{SRID}", "OGC:CRS84", always_xy=True)
TO_MERC = pyproj.Transformer.from_crs(f"EPSG:{SRID}", "EPSG:3857", always_xy=True)
BASE_LON, BASE_LAT = 121.43, 31.18  # Xuhui
N_PARTS = 30
PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)


def storage_xy(lon: float, lat: float) -> tuple[float, float]:
    return TO_STORAGE.transform(lon, lat)


def _poly(lon0: float, lat0: float, lon1: float, lat1: float, z: float = 0.0) -> str:
    corners = [(lon0, lat0), (lon1, lat0), (lon1, lat1), (lon0, lat1), (lon0, lat0)]
    pts = ", ".join(f"{x:.3f} {y:.3f} {z}" for x, y in (storage_xy(*c) for c in corners))
    return f"MULTIPOLYGON Z ((({pts})))"


def part_lonlat(i: int) -> tuple[float, float]:
    return BASE_LON + (i % 6) * 0.002, BASE_LAT + (i // 6) * 0.002


def seed_city(engine: sa.Engine) -> dict:
    """Insert the test city; returns what the tests need to know about it."""
    info: dict = {}
    with engine.begin() as conn:
        x = lambda sql, **p: conn.execute(sa.text(sql), p)  # noqa: E731
        x("INSERT INTO districts (source_id, code, name, geom) VALUES "
          "('d1', '310104', '徐汇区', ST_GeomFromText(:a, 4549)), ('d2', '310101', '黄浦区', ST_GeomFromText(:b, 4549))",
          a=_poly(121.40, 31.15, 121.45, 31.25), b=_poly(121.45, 31.15, 121.50, 31.25))
        x("INSERT INTO grids (source_id, grid_code, name, district_code, geom) VALUES "
          "('g1', '31010400101', '网格一', '310104', ST_GeomFromText(:a, 4549)), "
          "('g2', '31010100201', '网格二', '310101', ST_GeomFromText(:b, 4549))",
          a=_poly(121.40, 31.15, 121.4355, 31.25), b=_poly(121.4355, 31.15, 121.50, 31.25))
        for i in range(N_PARTS):
            lon, lat = part_lonlat(i)
            px, py = storage_xy(lon, lat)
            grid, district = ("31010400101", "310104") if lon < 121.4355 else ("31010100201", "310101")
            x("INSERT INTO parts (source_id, object_code, part_class, part_subclass, name, status, maintainer, "
              "district_code, grid_code, attributes, geom) VALUES (:sid, :code, '01', :sub, :name, :status, "
              ":maint, :district, :grid, CAST(:attrs AS jsonb), ST_GeomFromText(:wkt, 4549))",
              sid=f"P{i:03d}", code=f"31010401{i:08d}", sub="0101" if i % 3 else "0102",
              name=f"窨井{i:02d}" if i % 5 else f"Hydrant {i:02d}", status="完好" if i % 2 else "破损",
              maint=None if i % 4 == 0 else "徐汇养护", district=district, grid=grid,
              attrs=json.dumps({"材质": "铸铁", "n": i}, ensure_ascii=False),
              wkt=f"POINT Z ({px:.3f} {py:.3f} {3.5 + i * 0.1:.2f})")
        # buildings: B1 gets a new version (height 30 -> 45), B3 is demolished (terminated)
        x("INSERT INTO buildings (source_id, name, height, floors, use, valid_from, district_code, grid_code, geom) "
          "VALUES ('B1', '徐汇大厦', 30, 10, '办公', :past, '310104', '31010400101', ST_GeomFromText(:a, 4549)), "
          "('B2', '衡山公寓', 60, 20, '住宅', :past, '310104', '31010400101', ST_GeomFromText(:b, 4549)), "
          "('B3', '老仓库', 8, 2, '仓储', :past, '310101', '31010100201', ST_GeomFromText(:c, 4549))",
          past=PAST, a=_poly(121.431, 31.181, 121.432, 31.182, 4.0), b=_poly(121.433, 31.181, 121.434, 31.182, 4.0),
          c=_poly(121.440, 31.181, 121.441, 31.182, 4.0))
        x("INSERT INTO pipelines (source_id, kind, diameter_mm, material, district_code, grid_code, geom) VALUES "
          "('L1', '燃气', 300, 'PE', '310104', '31010400101', ST_GeomFromText(:a, 4549)), "
          "('L2', '给水', 500, '球墨铸铁', '310104', '31010400101', ST_GeomFromText(:b, 4549)), "
          "('L3', '燃气', 150, 'PE', '310101', '31010100201', ST_GeomFromText(:c, 4549))",
          a="LINESTRING Z ({} {} -1.5, {} {} -1.6)".format(*storage_xy(121.430, 31.180), *storage_xy(121.434, 31.180)),
          b="LINESTRING Z ({} {} -2.0, {} {} -2.1)".format(*storage_xy(121.430, 31.1805), *storage_xy(121.434, 31.1805)),
          c="LINESTRING Z ({} {} -1.2, {} {} -1.2)".format(*storage_xy(121.440, 31.190), *storage_xy(121.444, 31.190)))
        dx, dy = storage_xy(121.432, 31.1815)
        x("INSERT INTO iot_devices (source_id, device_type, name, quantities, grid_code, geom) VALUES "
          "('D1', '燃气探测器', '探测器一', CAST(:q AS jsonb), '31010400101', ST_GeomFromText(:p, 4549)), "
          "('D2', '水位计', '水位计一', '[]', '31010400101', ST_GeomFromText(:p, 4549))",
          q=json.dumps([{"quantity": "ch4", "unit": "%LEL", "alarm_low": None, "alarm_high": 20.0},
                        {"quantity": "temperature", "unit": "°C", "alarm_low": -10.0, "alarm_high": 60.0}]),
          p=f"POINT Z ({dx:.3f} {dy:.3f} -0.5)")
        t0 = datetime(2026, 11, 24, tzinfo=timezone.utc)
        for k in range(6):
            x("INSERT INTO iot_readings (device_id, time, quantity, value) VALUES "
              "('D1', :t, 'ch4', :v), ('D1', :t, 'temperature', :w)", t=t0 + timedelta(minutes=10 * k), v=1.0 + k, w=20.0 + k)
        x("INSERT INTO curtain_walls (source_id, building_source_id, glass_type, facade_area) "
          "VALUES ('CW1', 'B2', 'Low-E', 1200.0)")  # no geometry yet: served as "geometry": null
    with engine.begin() as conn:  # a later transaction: the update's now() is after the insert
        info["before_update"] = conn.execute(sa.text("SELECT now()")).scalar()
    time.sleep(0.05)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE buildings SET height = 45, floors = 15 WHERE source_id = 'B1' AND valid_to IS NULL"))
        conn.execute(sa.text("DELETE FROM buildings WHERE source_id = 'B3'"))
        info["updated_at"] = conn.execute(sa.text("SELECT now()")).scalar()
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT source_id, feature_id::text FROM buildings WHERE valid_to IS NULL "
                                   "OR source_id = 'B3'")).all()
        info["buildings"] = dict(ids)
        info["parts"] = dict(conn.execute(sa.text("SELECT source_id, feature_id::text FROM parts")).all())
        info["devices"] = dict(conn.execute(sa.text("SELECT source_id, feature_id::text FROM iot_devices")).all())
    return info


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def city(engine) -> dict:
    return seed_city(engine)


@pytest.fixture(scope="module")
def client(engine, city) -> TestClient:
    return TestClient(create_app(engine))


def get_items(client: TestClient, collection: str, **params) -> dict:
    r = client.get(f"/collections/{collection}/items", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    return r.json()


def source_ids(doc: dict) -> set[str]:
    return {f["properties"]["source_id"] for f in doc["features"]}


def parts_where(pred) -> set[str]:
    """Expected part source_ids, computed from the seed's own rules."""
    out = set()
    for i in range(N_PARTS):
        lon, lat = part_lonlat(i)
        row = {"i": i, "lon": lon, "lat": lat, "z": 3.5 + i * 0.1, "status": "完好" if i % 2 else "破损",
               "name": f"窨井{i:02d}" if i % 5 else f"Hydrant {i:02d}", "maintainer": None if i % 4 == 0 else "徐汇养护",
               "sub": "0101" if i % 3 else "0102"}
        if pred(row):
            out.add(f"P{i:03d}")
    return out


def assert_problem(r: httpx.Response, status: int, parameter: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["detail"]
    if parameter is not None:
        assert body.get("parameter") == parameter, body
    return body


# ---------------------------------------------------------------------------------------------
# landing page, conformance, OpenAPI, collections
# ---------------------------------------------------------------------------------------------

def test_landing_page_links_resolve(client):
    doc = client.get("/").json()
    rels = {link["rel"]: link["href"] for link in doc["links"]}
    for rel in ("self", "service-desc", "service-doc", "conformance", "data"):
        assert rel in rels, rel
        path = urlsplit(rels[rel]).path
        assert client.get(path).status_code == 200, rel
    assert urlsplit(rels["service-desc"]).path == "/openapi.json"


def test_conformance_declares_the_implemented_classes(client):
    classes = set(client.get("/conformance").json()["conformsTo"])
    for suffix in ("ogcapi-features-1/1.0/conf/core", "ogcapi-features-1/1.0/conf/geojson",
                   "ogcapi-features-1/1.0/conf/oas30", "ogcapi-features-2/1.0/conf/crs",
                   "ogcapi-features-3/1.0/conf/filter", "ogcapi-features-3/1.0/conf/features-filter",
                   "ogcapi-features-3/1.0/conf/queryables", "cql2/1.0/conf/cql2-text", "cql2/1.0/conf/cql2-json",
                   "cql2/1.0/conf/basic-cql2", "cql2/1.0/conf/advanced-comparison-operators",
                   "cql2/1.0/conf/basic-spatial-functions", "cql2/1.0/conf/basic-spatial-functions-plus",
                   "cql2/1.0/conf/spatial-functions", "cql2/1.0/conf/temporal-functions"):
        assert "http://www.opengis.net/spec/" + suffix in classes, suffix


def test_openapi_is_3_0(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    text = json.dumps(doc)
    assert '"type": "null"' not in text and '"const"' not in text
    params = {p["name"] for p in doc["paths"]["/collections/{collectionId}/items"]["get"]["parameters"]}
    assert {"bbox", "bbox-crs", "crs", "limit", "filter", "filter-lang", "filter-crs", "sortby", "datetime"} <= params


def test_collections_are_the_layer_registry(client, engine):
    with engine.connect() as conn:
        names = set(conn.execute(sa.text("SELECT name FROM layers")).scalars())
    doc = client.get("/collections").json()
    assert {c["id"] for c in doc["collections"]} == names
    for c in doc["collections"]:
        assert c["itemType"] == "feature"
        assert c["crs"][0] == "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
        assert c["storageCrs"] == f"http://www.opengis.net/def/crs/EPSG/0/{SRID}" and c["storageCrs"] in c["crs"]
        assert {"self", "items"} <= {link["rel"] for link in c["links"]}


def test_collection_extent_covers_current_features(client):
    c = client.get("/collections/parts").json()
    (minx, miny, maxx, maxy), = c["extent"]["spatial"]["bbox"]
    lons, lats = zip(*(part_lonlat(i) for i in range(N_PARTS)))
    assert minx <= min(lons) and maxx >= max(lons) and miny <= min(lats) and maxy >= max(lats)
    assert max(min(lons) - minx, maxx - max(lons), min(lats) - miny, maxy - max(lats)) < 1e-3
    assert c["extent"]["temporal"]["interval"][0][1] is None
    assert "extent" not in client.get("/collections/addresses").json()  # no features, no history yet


def test_unknown_collection_is_404(client):
    assert_problem(client.get("/collections/nope"), 404)
    assert_problem(client.get("/collections/nope/items"), 404)


# ---------------------------------------------------------------------------------------------
# items: paging, versions, properties
# ---------------------------------------------------------------------------------------------

def test_paging_follows_next_and_prev_links(client, city):
    seen: list[str] = []
    url = "/collections/parts/items?limit=7"
    pages = []
    while url:
        r = client.get(url)
        doc = r.json()
        last = len(seen) + doc["numberReturned"] == N_PARTS  # counted on the page that ends them only
        assert doc.get("numberMatched") == (N_PARTS if last else None)
        assert doc["numberReturned"] == len(doc["features"])
        pages.append(doc)
        seen += [f["id"] for f in doc["features"]]
        nxt = [link["href"] for link in doc["links"] if link["rel"] == "next"]
        url = nxt[0] if nxt else None
    assert len(pages) == 5 and [p["numberReturned"] for p in pages] == [7, 7, 7, 7, 2]
    assert len(seen) == len(set(seen)) and set(seen) == set(city["parts"].values())
    prev = [link["href"] for link in pages[1]["links"] if link["rel"] == "prev"][0]
    assert [f["id"] for f in client.get(prev).json()["features"]] == [f["id"] for f in pages[0]["features"]]
    assert not [link for link in pages[0]["links"] if link["rel"] == "prev"]
    assert {"self", "collection"} <= {link["rel"] for link in pages[0]["links"]}
    assert pages[0]["timeStamp"].endswith("Z")


def test_items_are_current_versions_with_history_columns(client, city):
    doc = get_items(client, "buildings")
    by_id = {f["properties"]["source_id"]: f for f in doc["features"]}
    assert set(by_id) == {"B1", "B2"}  # B3 was terminated
    b1 = by_id["B1"]
    assert b1["id"] == city["buildings"]["B1"] == b1["properties"]["feature_id"]
    assert b1["properties"]["height"] == 45 and b1["properties"]["valid_to"] is None
    assert {"valid_from", "ingest_run_id", "attributes"} <= set(b1["properties"])
    assert "geom" not in b1["properties"] and "content_hash" not in b1["properties"] and "fid" not in b1["properties"]


def test_features_keep_z(client):
    for f in get_items(client, "parts")["features"]:
        assert len(f["geometry"]["coordinates"]) == 3
    pipes = get_items(client, "pipelines")["features"]
    assert pipes and all(c[2] < 0 for f in pipes for c in f["geometry"]["coordinates"])


def test_properties_selection(client):
    doc = get_items(client, "parts", properties="name,attributes", limit=3)
    for f in doc["features"]:
        assert set(f["properties"]) == {"name", "attributes"}
        assert f["properties"]["attributes"]["材质"] == "铸铁"
    assert_problem(client.get("/collections/parts/items", params={"properties": "name,height"}), 400, "properties")


def test_curtain_wall_without_geometry_is_served(client):
    f, = get_items(client, "curtain-walls")["features"]
    assert f["geometry"] is None and f["properties"]["glass_type"] == "Low-E"


def test_iot_devices_carry_latest_reading_per_quantity(client):
    doc = get_items(client, "iot-devices")
    by_id = {f["properties"]["source_id"]: f["properties"] for f in doc["features"]}
    latest = by_id["D1"]["latest"]
    assert set(latest) == {"ch4", "temperature"}
    assert latest["ch4"]["value"] == 6.0 and latest["temperature"]["value"] == 25.0
    assert datetime.fromisoformat(latest["ch4"]["time"]) == datetime(2026, 11, 24, 0, 50, tzinfo=timezone.utc)
    assert latest["ch4"]["unit"] == "%LEL"
    assert by_id["D2"]["latest"] is None
    assert set(get_items(client, "iot-devices", properties="latest")["features"][0]["properties"]) == {"latest"}


# ---------------------------------------------------------------------------------------------
# bbox and CRS (Part 2)
# ---------------------------------------------------------------------------------------------

def test_bbox_in_crs84(client):
    lon0, lat0, lon1, lat1 = 121.4295, 31.1795, 121.4335, 31.1845
    doc = get_items(client, "parts", bbox=f"{lon0},{lat0},{lon1},{lat1}")
    expected = parts_where(lambda r: lon0 <= r["lon"] <= lon1 and lat0 <= r["lat"] <= lat1)
    assert expected and source_ids(doc) == expected and doc["numberMatched"] == len(expected)


def test_bbox_crs_storage_is_northing_first(client):
    lon0, lat0, lon1, lat1 = 121.4295, 31.1795, 121.4335, 31.1845
    expected = parts_where(lambda r: lon0 <= r["lon"] <= lon1 and lat0 <= r["lat"] <= lat1)
    xs, ys = zip(*(storage_xy(*part_lonlat(int(s[1:]))) for s in expected))
    # EPSG:4549 defines northing (X) first: bbox = minN,minE,maxN,maxE
    bbox = f"{min(ys) - 1},{min(xs) - 1},{max(ys) + 1},{max(xs) + 1}"
    doc = get_items(client, "parts", bbox=bbox, **{"bbox-crs": f"http://www.opengis.net/def/crs/EPSG/0/{SRID}"})
    assert source_ids(doc) == expected
    assert source_ids(get_items(client, "parts", bbox=bbox, **{"bbox-crs": f"[EPSG:{SRID}]"})) == expected
    # the short name EPSG:4549 is easting first, like every short name
    swapped = f"{min(xs) - 1},{min(ys) - 1},{max(xs) + 1},{max(ys) + 1}"
    assert source_ids(get_items(client, "parts", bbox=swapped, **{"bbox-crs": f"EPSG:{SRID}"})) == expected
    assert get_items(client, "parts", bbox=bbox, **{"bbox-crs": f"EPSG:{SRID}"})["numberMatched"] == 0


def test_bbox_crs_4326_is_lat_lon(client):
    expected = parts_where(lambda r: 121.4295 <= r["lon"] <= 121.4335 and 31.1795 <= r["lat"] <= 31.1845)
    doc = get_items(client, "parts", bbox="31.1795,121.4295,31.1845,121.4335",
                    **{"bbox-crs": "http://www.opengis.net/def/crs/EPSG/0/4326"})
    assert expected and source_ids(doc) == expected


def test_bbox_with_heights(client):
    doc = get_items(client, "parts", bbox="121.4,31.1,4.0,121.5,31.3,5.0")
    assert source_ids(doc) == parts_where(lambda r: 4.0 <= r["z"] <= 5.0)


def test_crs_4490_is_lat_lon_with_content_crs(client):
    uri = "http://www.opengis.net/def/crs/EPSG/0/4490"
    r = client.get("/collections/parts/items", params={"crs": uri, "limit": 50})
    assert r.headers["content-crs"] == f"<{uri}>"
    for f in r.json()["features"]:
        lon, lat = part_lonlat(int(f["properties"]["source_id"][1:]))
        y, x, z = f["geometry"]["coordinates"]
        assert abs(y - lat) < 1e-6 and abs(x - lon) < 1e-6 and z > 3


def test_crs84_is_lon_lat_by_default(client):
    r = client.get("/collections/parts/items", params={"source_id": "P007"})
    assert r.headers["content-crs"] == "<http://www.opengis.net/def/crs/OGC/1.3/CRS84>"
    x, y, z = r.json()["features"][0]["geometry"]["coordinates"]
    assert (abs(x - part_lonlat(7)[0]), abs(y - part_lonlat(7)[1])) < (1e-6, 1e-6) and abs(z - 4.2) < 1e-9


@pytest.mark.parametrize("srid", [3857, SRID])
def test_projected_output_crs(client, srid):
    uri = f"http://www.opengis.net/def/crs/EPSG/0/{srid}"
    r = client.get("/collections/parts/items", params={"crs": uri, "source_id": "P013"})
    assert r.headers["content-crs"] == f"<{uri}>"
    coords = r.json()["features"][0]["geometry"]["coordinates"]
    e, n = storage_xy(*part_lonlat(13))
    if srid == 3857:
        ex, ey = TO_MERC.transform(e, n)
        assert abs(coords[0] - ex) < 0.01 and abs(coords[1] - ey) < 0.01
    else:  # EPSG:4549 is northing, easting
        assert abs(coords[0] - n) < 0.002 and abs(coords[1] - e) < 0.002
    assert abs(coords[2] - (3.5 + 1.3)) < 1e-9


def test_single_feature_in_requested_crs(client, city):
    fid = city["parts"]["P003"]
    r = client.get(f"/collections/parts/items/{fid}", params={"crs": "http://www.opengis.net/def/crs/EPSG/0/4326"})
    assert r.status_code == 200 and r.headers["content-crs"] == "<http://www.opengis.net/def/crs/EPSG/0/4326>"
    f = r.json()
    assert f["type"] == "Feature" and f["id"] == fid
    lat, lon, _ = f["geometry"]["coordinates"]
    assert abs(lon - part_lonlat(3)[0]) < 1e-6 and abs(lat - part_lonlat(3)[1]) < 1e-6
    assert {"self", "collection"} <= {link["rel"] for link in f["links"]}


# ---------------------------------------------------------------------------------------------
# property equality, CQL2, sortby, datetime
# ---------------------------------------------------------------------------------------------

def test_property_equality_filters(client):
    assert source_ids(get_items(client, "parts", status="完好")) == parts_where(lambda r: r["status"] == "完好")
    assert source_ids(get_items(client, "pipelines", kind="燃气")) == {"L1", "L3"}
    assert source_ids(get_items(client, "pipelines", diameter_mm="300")) == {"L1"}
    assert source_ids(get_items(client, "parts", status="完好", part_subclass="0102")) == \
        parts_where(lambda r: r["status"] == "完好" and r["sub"] == "0102")
    assert_problem(client.get("/collections/pipelines/items", params={"diameter_mm": "wide"}), 400, "diameter_mm")


HYDRANT_POLY = "POLYGON((121.4295 31.1795, 121.4345 31.1795, 121.4345 31.1825, 121.4295 31.1825, 121.4295 31.1795))"
HYDRANT_POLY_JSON = {"type": "Polygon", "coordinates": [[[121.4295, 31.1795], [121.4345, 31.1795], [121.4345, 31.1825],
                                                         [121.4295, 31.1825], [121.4295, 31.1795]]]}
IN_POLY = lambda r: 121.4295 <= r["lon"] <= 121.4345 and 31.1795 <= r["lat"] <= 31.1825  # noqa: E731
ANCHOR = storage_xy(*part_lonlat(14))


def _square(lon: float, lat: float, d: float = 1e-4) -> list[list[float]]:
    return [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]]


TWO_SQUARES_JSON = {"type": "MultiPolygon", "coordinates": [[_square(*part_lonlat(7))], [_square(*part_lonlat(20))]]}
TWO_SQUARES = "MULTIPOLYGON({})".format(", ".join(
    "((" + ", ".join(f"{x} {y}" for x, y in ring) + "))" for (ring,) in TWO_SQUARES_JSON["coordinates"]))


def _near_anchor(r: dict, metres: float) -> bool:
    x, y = storage_xy(r["lon"], r["lat"])
    return ((x - ANCHOR[0]) ** 2 + (y - ANCHOR[1]) ** 2) ** 0.5 <= metres


PART_FILTERS = [
    ("name = 'Hydrant 05'", {"op": "=", "args": [{"property": "name"}, "Hydrant 05"]},
     lambda r: r["name"] == "Hydrant 05"),
    ("status <> '完好'", {"op": "<>", "args": [{"property": "status"}, "完好"]}, lambda r: r["status"] != "完好"),
    ("source_id < 'P005'", {"op": "<", "args": [{"property": "source_id"}, "P005"]}, lambda r: r["i"] < 5),
    ("source_id <= 'P005'", {"op": "<=", "args": [{"property": "source_id"}, "P005"]}, lambda r: r["i"] <= 5),
    ("source_id > 'P025'", {"op": ">", "args": [{"property": "source_id"}, "P025"]}, lambda r: r["i"] > 25),
    ("source_id >= 'P025'", {"op": ">=", "args": [{"property": "source_id"}, "P025"]}, lambda r: r["i"] >= 25),
    ("name LIKE '窨井1%'", {"op": "like", "args": [{"property": "name"}, "窨井1%"]},
     lambda r: r["name"].startswith("窨井1")),
    ("source_id IN ('P001', 'P002', 'P099')", {"op": "in", "args": [{"property": "source_id"}, ["P001", "P002", "P099"]]},
     lambda r: r["i"] in (1, 2)),
    ("source_id BETWEEN 'P010' AND 'P013'", {"op": "between", "args": [{"property": "source_id"}, "P010", "P013"]},
     lambda r: 10 <= r["i"] <= 13),
    ("maintainer IS NULL", {"op": "isNull", "args": [{"property": "maintainer"}]}, lambda r: r["maintainer"] is None),
    ("NOT (maintainer IS NULL) AND status = '完好'",
     {"op": "and", "args": [{"op": "not", "args": [{"op": "isNull", "args": [{"property": "maintainer"}]}]},
                            {"op": "=", "args": [{"property": "status"}, "完好"]}]},
     lambda r: r["maintainer"] is not None and r["status"] == "完好"),
    ("part_subclass = '0102' OR source_id = 'P001'",
     {"op": "or", "args": [{"op": "=", "args": [{"property": "part_subclass"}, "0102"]},
                           {"op": "=", "args": [{"property": "source_id"}, "P001"]}]},
     lambda r: r["sub"] == "0102" or r["i"] == 1),
    ("CASEI(name) = casei('HYDRANT 10')", {"op": "=", "args": [{"op": "casei", "args": [{"property": "name"}]},
                                                               {"op": "casei", "args": ["HYDRANT 10"]}]},
     lambda r: r["name"] == "Hydrant 10"),
    (f"S_INTERSECTS(geometry, {HYDRANT_POLY})", {"op": "s_intersects", "args": [{"property": "geometry"}, HYDRANT_POLY_JSON]},
     IN_POLY),
    (f"S_WITHIN(geometry, {HYDRANT_POLY})", {"op": "s_within", "args": [{"property": "geometry"}, HYDRANT_POLY_JSON]},
     IN_POLY),
    (f"S_INTERSECTS(geometry, {TWO_SQUARES})", {"op": "s_intersects", "args": [{"property": "geometry"}, TWO_SQUARES_JSON]},
     lambda r: r["i"] in (7, 20)),
    ("BBOX(geometry, 121.4295, 31.1795, 121.4345, 31.1825)",
     {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [121.4295, 31.1795, 121.4345, 31.1825]}]},
     IN_POLY),
    ("S_DWITHIN(geometry, POINT({} {}), 250)".format(*part_lonlat(14)),
     {"op": "s_dwithin", "args": [{"property": "geometry"},
                                  {"type": "Point", "coordinates": list(part_lonlat(14))}, 250]},
     lambda r: _near_anchor(r, 250)),
]


@pytest.mark.parametrize("text,json_filter,pred", PART_FILTERS, ids=[f[0][:40] for f in PART_FILTERS])
def test_cql2_text_and_json_on_parts(client, text, json_filter, pred):
    expected = parts_where(pred)
    by_text = get_items(client, "parts", filter=text, limit=100)
    by_json = get_items(client, "parts", filter=json.dumps(json_filter, ensure_ascii=False),
                        **{"filter-lang": "cql2-json"}, limit=100)
    assert source_ids(by_text) == expected, text
    assert source_ids(by_json) == expected, json_filter
    assert by_text["numberMatched"] == len(expected)


def test_cql2_on_numbers_and_s_contains(client):
    assert source_ids(get_items(client, "buildings", filter="height BETWEEN 40 AND 70")) == {"B1", "B2"}
    assert source_ids(get_items(client, "buildings", filter="height > 50 OR floors < 12")) == {"B2"}
    assert source_ids(get_items(client, "pipelines", filter="diameter_mm >= 300 AND kind = '燃气'")) == {"L1"}
    lon, lat = part_lonlat(0)
    grids = get_items(client, "grids", filter=f"S_CONTAINS(geometry, POINT({lon} {lat}))")
    assert {f["properties"]["grid_code"] for f in grids["features"]} == {"31010400101"}


def test_filter_crs_reads_literals_in_that_crs(client):
    expected = parts_where(IN_POLY)
    corners = [(121.4295, 31.1795), (121.4345, 31.1795), (121.4345, 31.1825), (121.4295, 31.1825), (121.4295, 31.1795)]
    latlon = ", ".join(f"{lat} {lon}" for lon, lat in corners)
    doc = get_items(client, "parts", filter=f"S_INTERSECTS(geometry, POLYGON(({latlon})))",
                    **{"filter-crs": "http://www.opengis.net/def/crs/EPSG/0/4326"})
    assert source_ids(doc) == expected
    ne = ", ".join("{1} {0}".format(*storage_xy(lon, lat)) for lon, lat in corners)  # northing first
    doc = get_items(client, "parts", filter=f"S_INTERSECTS(geometry, POLYGON(({ne})))",
                    **{"filter-crs": f"http://www.opengis.net/def/crs/EPSG/0/{SRID}"})
    assert source_ids(doc) == expected


def test_temporal_functions_on_validity(client, city):
    def versions(**params) -> set[tuple[str, float]]:
        doc = get_items(client, "buildings", datetime="../..", **params)
        return {(f["properties"]["source_id"], f["properties"]["height"]) for f in doc["features"]}

    upd = city["updated_at"].isoformat()
    validity = "INTERVAL(valid_from, valid_to)"
    assert versions() == {("B1", 30), ("B1", 45), ("B2", 60), ("B3", 8)}
    assert versions(filter=f"T_BEFORE({validity}, TIMESTAMP('{upd}'))") == {("B1", 30), ("B3", 8)}
    assert versions(filter=f"T_AFTER(valid_from, TIMESTAMP('2021-01-01T00:00:00Z'))") == {("B1", 45)}
    assert versions(filter=f"T_INTERSECTS({validity}, TIMESTAMP('2021-01-01T00:00:00Z'))") == \
        {("B1", 30), ("B2", 60), ("B3", 8)}
    # the half-open validity: at the instant of the update only the new version is valid
    assert versions(filter=f"T_INTERSECTS({validity}, TIMESTAMP('{upd}'))") == {("B1", 45), ("B2", 60)}
    as_json = {"op": "t_intersects", "args": [{"interval": [{"property": "valid_from"}, {"property": "valid_to"}]},
                                              {"interval": ["2021-01-01T00:00:00Z", "2021-06-01T00:00:00Z"]}]}
    assert versions(filter=json.dumps(as_json), **{"filter-lang": "cql2-json"}) == {("B1", 30), ("B2", 60), ("B3", 8)}


def test_sortby(client):
    names = [f["properties"]["name"] for f in get_items(client, "parts", sortby="-name", limit=100)["features"]]
    assert names == sorted(names, reverse=True)
    heights = [f["properties"]["height"] for f in get_items(client, "buildings", sortby="+height")["features"]]
    assert heights == [45, 60]
    doc = get_items(client, "parts", sortby="status,-source_id", limit=100)
    keys = [(f["properties"]["status"], f["properties"]["source_id"]) for f in doc["features"]]
    assert keys == sorted(keys, key=lambda k: (k[0], [-ord(c) for c in k[1]]))
    # an unencoded '+' arrives as a space
    r = client.get("/collections/buildings/items?sortby=+height")
    assert [f["properties"]["height"] for f in r.json()["features"]] == [45, 60]


def test_datetime_shows_the_layer_as_it_was(client, city):
    def heights(**params):
        return {f["properties"]["source_id"]: f["properties"]["height"] for f in get_items(client, "buildings", **params)["features"]}

    before = city["before_update"].astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    after = (city["updated_at"] + timedelta(seconds=1)).isoformat()
    assert heights(datetime=before) == {"B1": 30, "B2": 60, "B3": 8}
    assert heights(datetime=after) == {"B1": 45, "B2": 60}
    assert heights(datetime="2021-06-01") == {"B1": 30, "B2": 60, "B3": 8}
    assert heights(datetime="2019-01-01T00:00:00Z") == {}
    doc = get_items(client, "buildings", datetime=f"{before}/..")
    assert sorted((f["properties"]["source_id"], f["properties"]["height"]) for f in doc["features"]) == \
        [("B1", 30), ("B1", 45), ("B2", 60), ("B3", 8)]
    fid = city["buildings"]["B1"]
    old = client.get(f"/collections/buildings/items/{fid}", params={"datetime": before}).json()
    assert old["properties"]["height"] == 30 and old["properties"]["valid_to"] is not None
    assert client.get(f"/collections/buildings/items/{fid}").json()["properties"]["height"] == 45


def test_queryables_schema(client):
    r = client.get("/collections/pipelines/queryables")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/schema+json")
    doc = r.json()
    assert doc["$schema"].startswith("https://json-schema.org/") and doc["$id"].endswith("/collections/pipelines/queryables")
    assert doc["type"] == "object"
    props = doc["properties"]
    assert props["geometry"]["format"] == "geometry-linestring"
    assert props["kind"]["type"] == "string" and props["diameter_mm"]["type"] == "number"
    assert props["year_laid"]["type"] == "integer" and props["valid_from"]["format"] == "date-time"


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------

def test_stats_group_by_grid_and_district(client):
    doc = client.get("/collections/parts/stats", params={"group_by": "grid"}).json()
    counts = {g["code"]: (g["name"], g["count"]) for g in doc["groups"]}
    west = len(parts_where(lambda r: r["lon"] < 121.4355))
    assert counts == {"31010400101": ("网格一", west), "31010100201": ("网格二", N_PARTS - west)}
    assert doc["total"]["count"] == N_PARTS
    doc = client.get("/collections/parts/stats", params={"group_by": "district", "status": "完好"}).json()
    assert sum(g["count"] for g in doc["groups"]) == len(parts_where(lambda r: r["status"] == "完好"))
    assert {g["name"] for g in doc["groups"]} <= {"徐汇区", "黄浦区"}


def test_stats_with_sum_and_filter(client):
    doc = client.get("/collections/pipelines/stats",
                     params={"group_by": "district", "sum": "diameter_mm", "filter": "kind = '燃气'"}).json()
    assert {g["code"]: (g["count"], g["sum"]) for g in doc["groups"]} == {"310104": (1, 300.0), "310101": (1, 150.0)}
    assert doc["total"] == {"count": 2, "sum": 450.0}
    doc = client.get("/collections/buildings/stats",
                     params={"group_by": "district", "sum": "height", "datetime": "2021-01-01T00:00:00Z"}).json()
    assert {g["code"]: g["sum"] for g in doc["groups"]} == {"310104": 90.0, "310101": 8.0}


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

BAD_ITEMS = [
    ({"bbox": "1,2,3"}, "bbox"), ({"bbox": "a,b,c,d"}, "bbox"), ({"bbox": "122,31,121,32"}, "bbox"),
    ({"bbox": "121,91,122,92"}, "bbox"), ({"bbox": "1,2,3,4", "bbox-crs": "EPSG:31467"}, "bbox-crs"),
    ({"limit": "0"}, "limit"), ({"limit": "10001"}, "limit"), ({"offset": "-1"}, "offset"),
    ({"properties": "name,nope"}, "properties"), ({"sortby": "-nope"}, "sortby"),
    ({"filter": "name ="}, "filter"), ({"filter": "nope = 1"}, "filter"), ({"filter": "name = 5"}, "filter"),
    ({"filter": "S_INTERSECTS(name, POINT(121 31))"}, "filter"), ({"filter": "{\"op\":"}, "filter"),
    ({"filter": "{\"op\": \"=\", \"args\": 3}", "filter-lang": "cql2-json"}, "filter"),
    ({"filter": "name = 'a'", "filter-lang": "sql"}, "filter-lang"),
    ({"filter": "name = 'a'", "filter-crs": "EPSG:2000"}, "filter-crs"),
    ({"crs": "EPSG:2000"}, "crs"), ({"crs": "http://www.opengis.net/def/crs/EPSG/0/99999"}, "crs"),
    ({"datetime": "yesterday"}, "datetime"), ({"datetime": "2024-01-01T00:00:00"}, "datetime"),
    ({"datetime": "2024-02-01/2024-01-01"}, "datetime"), ({"datetime": "a/b/c"}, "datetime"),
    ({"colour": "red"}, "colour"), ({"f": "html"}, "f"),
]


@pytest.mark.parametrize("params,parameter", BAD_ITEMS, ids=[json.dumps(p, ensure_ascii=False) for p, _ in BAD_ITEMS])
def test_bad_items_parameters_are_400_naming_them(client, params, parameter):
    body = assert_problem(client.get("/collections/parts/items", params=params), 400, parameter)
    assert "Traceback" not in body["detail"]


def test_bad_stats_parameters(client):
    assert_problem(client.get("/collections/parts/stats"), 400, "group_by")
    assert_problem(client.get("/collections/parts/stats", params={"group_by": "city"}), 400, "group_by")
    assert_problem(client.get("/collections/parts/stats", params={"group_by": "grid", "sum": "name"}), 400, "sum")
    assert_problem(client.get("/collections/districts/stats", params={"group_by": "district"}), 400, "group_by")


def test_feature_404s(client, city):
    assert_problem(client.get("/collections/parts/items/not-a-uuid"), 404)
    assert_problem(client.get("/collections/parts/items/00000000-0000-0000-0000-000000000000"), 404)
    assert_problem(client.get(f"/collections/parts/items/{city['buildings']['B2']}"), 404)  # another layer's id
    gone = assert_problem(client.get(f"/collections/buildings/items/{city['buildings']['B3']}"), 404)
    assert "terminated" in gone["detail"]
    assert_problem(client.get(f"/collections/buildings/items/{city['buildings']['B2']}", params={"datetime": "../.."}),
                   400, "datetime")


def test_sql_injection_is_inert(client, engine):
    attempts = [
        {"status": "完好'; DROP TABLE parts; --"},
        {"filter": "name = 'x'' OR ''1''=''1'"},
        {"filter": "name = 'x'; DROP TABLE parts; --'"},
        {"filter": "name LIKE '%' OR 1=1 --"},
        {"sortby": "name; DROP TABLE parts"},
        {"properties": "name,(SELECT 1)"},
    ]
    for params in attempts:
        r = client.get("/collections/parts/items", params=params)
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            assert r.json()["numberMatched"] == 0, params
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM parts")).scalar() == N_PARTS


def test_a_bbox_page_comes_nearest_the_centre_first_and_pages_without_a_count(client):
    # numberMatched is left out until the page that holds the last match (counting would read every
    # match of the box); the pages come nearest the box's centre first, without overlap, and "next" says
    # when there are more
    # the parts lie on a 0.002° lattice: a centre off its symmetries, so that no two are equally far
    box = (BASE_LON - 0.0093, BASE_LAT - 0.0071, BASE_LON + 0.0217, BASE_LAT + 0.0203)
    cx, cy = storage_xy((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    bbox = ",".join(str(v) for v in box)
    everything = get_items(client, "parts", bbox=bbox, limit=1000)
    assert everything["numberMatched"] == len(everything["features"]) > 15  # one page holds them all: counted

    def distance(feature: dict) -> float:
        x, y = storage_xy(*feature["geometry"]["coordinates"][:2])
        return ((x - cx) ** 2 + (y - cy) ** 2) ** 0.5

    # the storage box's centre differs from the lon/lat box's by far less than the parts' spacing
    expected = sorted(everything["features"], key=distance)
    seen: list[str] = []
    url: str | None = f"/collections/parts/items?bbox={bbox}&limit=6"
    while url:
        doc = client.get(url).json()
        last = len(seen) + doc["numberReturned"] == len(expected)
        assert doc.get("numberMatched") == (len(expected) if last else None)
        seen += [f["id"] for f in doc["features"]]
        url = next((link["href"] for link in doc["links"] if link["rel"] == "next"), None)
    assert seen == [f["id"] for f in expected]


def test_a_bbox_page_reads_its_own_rows_only(engine, city):
    """The page of a bbox walks the GiST index nearest the centre first and stops after limit + 1 rows,
    as the API reads (cim_api, under row-level security, where the planner would rather sort every match);
    before, every match of the box was read and sorted for each page."""
    from cim import features
    from cim.registry import load_layers

    query = features.ItemsQuery(features.Selection(bbox=(BASE_LON - 0.01, BASE_LAT - 0.01, BASE_LON + 0.02,
                                                         BASE_LAT + 0.02)), limit=3)
    with engine.connect() as conn, conn.begin() as tx:
        layer = load_layers(conn)["parts"]
        stmt, _ = features.page_statement(layer, SRID, query)
        compiled = stmt.compile(conn)
        conn.exec_driver_sql("SET LOCAL ROLE cim_api")
        conn.exec_driver_sql("SELECT set_config('cim.scope', 'public', true)")
        with features._planner_settings(conn, features._NEAREST_SETTINGS):
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + str(compiled), compiled.params).scalar()
        tx.rollback()

    def scans(node: dict) -> list[dict]:
        found = [node] if node.get("Relation Name", "").startswith("parts") else []
        return found + [n for child in node.get("Plans", []) for n in scans(child)]

    page = next(n for n in scans(plan[0]["Plan"]) if "Order By" in n)  # the CTE's scan, in the index's order
    assert page["Node Type"] == "Index Scan" and "<->" in page["Order By"], page
    assert page["Actual Rows"] == query.limit + 1, page  # the probe row too; the box holds far more


# ---------------------------------------------------------------------------------------------
# a real client: GDAL's OGC API driver against a real server
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(db_url, city):
    with serve_app(db_url, app="api.asgi:app", factory=False) as base:
        yield base


def test_gdal_reads_a_collection(server):
    if shutil.which("ogrinfo") is None:
        missing_tool("GDAL's ogrinfo is not installed")
    out = subprocess.run(["ogrinfo", "-ro", "-al", "-so", f"OAPIF:{server}/collections/parts"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Layer name: parts" in out.stdout
    assert f"Feature Count: {N_PARTS}" in out.stdout
    assert "3D Point" in out.stdout and "object_code: String" in out.stdout
    full = subprocess.run(["ogrinfo", "-ro", "-al", "-q", "-oo", "PAGE_SIZE=7", f"OAPIF:{server}/collections/parts"],
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    assert full.stdout.count("POINT Z") == N_PARTS


# ---------------------------------------------------------------------------------------------
# one CRS dialect: every accepted spelling means the same on items, /nearby and /grid/lookup
# ---------------------------------------------------------------------------------------------

#: spelling → (PostGIS SRID, offset, coordinates listed lat/northing first?) — written out here,
#: not asked of the resolver: the rule of cim.crs.resolve, per spelling
CRS_SPELLINGS = {
    None: (4326, None, False),
    "CRS84": (4326, None, False),
    "OGC:CRS84": (4326, None, False),
    "http://www.opengis.net/def/crs/OGC/1.3/CRS84": (4326, None, False),
    "EPSG:4326": (4326, None, False),
    "4326": (4326, None, False),
    "wgs84": (4326, None, False),
    "http://www.opengis.net/def/crs/EPSG/0/4326": (4326, None, True),
    "urn:ogc:def:crs:EPSG::4326": (4326, None, True),
    "[EPSG:4326]": (4326, None, True),
    "EPSG:4490": (4490, None, False),
    "cgcs2000": (4490, None, False),
    "[EPSG:4490]": (4490, None, True),
    "EPSG:3857": (3857, None, False),
    "http://www.opengis.net/def/crs/EPSG/0/3857": (3857, None, False),
    f"EPSG:{SRID}": (SRID, None, False),
    f"http://www.opengis.net/def/crs/EPSG/0/{SRID}": (SRID, None, True),
    "gcj02": (4326, "gcj02", False),
    "GCJ-02": (4326, "gcj02", False),
    "bd09": (4326, "bd09", False),
}


def _expected_xy(lon: float, lat: float, srid: int, offset: str | None) -> tuple[float, float]:
    """Where a CRS84 point lies in (srid, offset), x first — computed independently of cim.crs.resolve."""
    from cim.crs import wgs84_to_bd09, wgs84_to_gcj02

    if offset == "gcj02":
        return wgs84_to_gcj02(lon, lat)
    if offset == "bd09":
        return wgs84_to_bd09(lon, lat)
    return pyproj.Transformer.from_crs("OGC:CRS84", f"EPSG:{srid}", always_xy=True).transform(lon, lat)


@pytest.mark.parametrize("spelling", list(CRS_SPELLINGS), ids=[str(s) for s in CRS_SPELLINGS])
def test_every_crs_spelling_agrees_on_items_nearby_and_grid_lookup(client, spelling):
    srid, offset, lat_first = CRS_SPELLINGS[spelling]
    geographic = srid in (4326, 4490)
    tol = 1e-7 if geographic else 0.002
    params = {"source_id": "P013"} | ({"crs": spelling} if spelling else {})
    r = client.get("/collections/parts/items", params=params)
    assert r.status_code == 200, r.text
    feature = r.json()["features"][0]
    first, second, z = feature["geometry"]["coordinates"]
    x, y = (second, first) if lat_first else (first, second)
    # items writes the part where it is, in this CRS and this spelling's axis order
    ex, ey = _expected_xy(*part_lonlat(13), srid, offset)
    assert abs(x - ex) < tol and abs(y - ey) < tol, (x, y, ex, ey)
    assert abs(z - 4.8) < 1e-9
    # what items wrote, handed back as lon/lat under the same name, finds the same part ...
    crs_param = {"crs": spelling} if spelling else {}
    near = client.get("/nearby", params={"layer": "parts", "lon": x, "lat": y, "k": 1, "radius": 5} | crs_param)
    assert near.status_code == 200, near.text
    [hit] = near.json()["features"]
    assert hit["properties"]["source_id"] == "P013" and hit["properties"]["distance_m"] < 0.01
    # ... and the same grid as the part's own
    grid = client.get("/grid/lookup", params={"lon": x, "lat": y} | crs_param)
    assert grid.status_code == 200, grid.text
    assert grid.json()["results"][0]["grid"]["code"] == feature["properties"]["grid_code"] == "31010400101"
    # a bbox of it in the same spelling selects it, and filter-crs reads a point literal the same way
    box = (x - tol * 10, y - tol * 10, x + tol * 10, y + tol * 10)
    bbox = (box[1], box[0], box[3], box[2]) if lat_first else box
    bbox_params = {"bbox": ",".join(repr(v) for v in bbox)} | ({"bbox-crs": spelling} if spelling else {})
    assert source_ids(get_items(client, "parts", **bbox_params)) == {"P013"}
    point = f"POINT({first!r} {second!r})"
    filt = {"filter": f"S_DWITHIN(geometry, {point}, 0.01)"} | ({"filter-crs": spelling} if spelling else {})
    assert source_ids(get_items(client, "parts", **filt)) == {"P013"}


def test_items_in_gcj02_give_the_amap_position(client, city):
    from cim.crs import wgs84_to_bd09, wgs84_to_gcj02

    lon, lat = part_lonlat(7)
    for name, shift in (("gcj02", wgs84_to_gcj02), ("bd09", wgs84_to_bd09)):
        r = client.get("/collections/parts/items", params={"crs": name, "source_id": "P007"})
        assert r.status_code == 200, r.text
        # no OGC or EPSG identifier exists for the offsets: the header names them
        assert r.headers["content-crs"] == f"<{name}>"
        x, y, z = r.json()["features"][0]["geometry"]["coordinates"]
        gx, gy = shift(lon, lat)
        assert abs(x - gx) < 1e-7 and abs(y - gy) < 1e-7 and abs(z - 4.2) < 1e-9
        assert abs(x - lon) > 1e-3  # really shifted, by hundreds of metres in Shanghai
        one = client.get(f"/collections/parts/items/{city['parts']['P007']}", params={"crs": name})
        assert one.status_code == 200 and one.headers["content-crs"] == f"<{name}>"
        assert one.json()["geometry"]["coordinates"] == [x, y, z]


def test_offset_output_rewrites_only_the_geometry():
    # properties are passed through as the database wrote them: a Python round trip of the whole
    # feature would turn a huge integer into a float and fail on 1e400 (valid in a jsonb number)
    from cim.crs import resolve_crs, wgs84_to_gcj02
    from cim.features import _apply_offset

    text = ('{"type" : "Feature", "id" : "x", "geometry" : {"type":"Point","coordinates":[121.47,31.23,4.5]}, '
            '"properties" : {"geometry" : 1, "n" : 123456789012345678901234567890, "big" : 1e400}}')
    [moved, empty] = _apply_offset([text, '{"type" : "Feature", "id" : "y", "geometry" : null, "properties" : {}}'],
                                   resolve_crs("gcj02"))
    assert moved.endswith('"properties" : {"geometry" : 1, "n" : 123456789012345678901234567890, "big" : 1e400}}')
    lon, lat, z = json.loads(moved)["geometry"]["coordinates"]
    assert (lon, lat) == pytest.approx(wgs84_to_gcj02(121.47, 31.23), abs=1e-8) and z == 4.5
    assert json.loads(empty)["geometry"] is None


def test_collections_offer_the_offset_crss(client):
    doc = client.get("/collections/parts").json()
    assert {"gcj02", "bd09", "http://www.opengis.net/def/crs/EPSG/0/4490"} <= set(doc["crs"])


# ---------------------------------------------------------------------------------------------
# inputs that used to be 500s (issue 16 item 6)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31",
                                   "2024-01-01T00:00:00Z/9999-12-31", "../9999-12-31T23:59:59-14:00"])
def test_unrepresentable_datetime_is_400_naming_it(client, value):
    body = assert_problem(client.get("/collections/parts/items", params={"datetime": value}), 400, "datetime")
    assert "outside the supported time range" in body["detail"]


@pytest.mark.parametrize("params", [
    {"filter": "name = 'a\x00b'"},
    {"filter": "T_INTERSECTS(valid_from, TIMESTAMP('9999-12-31T23:59:59-14:00'))"},
    {"filter": json.dumps({"op": "=", "args": [{"property": "name"}, "a\x00b"]}), "filter-lang": "cql2-json"},
])
def test_filter_literals_that_crashed_are_400_naming_filter(client, params):
    assert_problem(client.get("/collections/parts/items", params=params), 400, "filter")
    assert_problem(client.get("/collections/parts/stats", params={"group_by": "grid", **params}), 400, "filter")


def test_naive_datetime_equality_is_refused_like_datetime(client):
    body = assert_problem(client.get("/collections/parts/items", params={"valid_from": "2024-01-01T00:00:00"}),
                          400, "valid_from")
    assert "no UTC offset" in body["detail"]
    assert_problem(client.get("/collections/parts/items", params={"name": "a\x00b"}), 400, "name")
