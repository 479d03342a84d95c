"""``/geocode``, ``/geocode/batch`` and ``/reverse`` over HTTP on the sample city (issue 4):
answers agree with the Python API, bad parameters are 400 problem+json naming the parameter."""
from __future__ import annotations

import csv
import io

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.geocode import MAX_BATCH_ROWS
from cases.model import mask
from cim.gazetteer import geocode
from cim.gazetteer.batch import ADDED_COLUMNS
from tests.test_geocode import SAMPLES, _query, load_city

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def city(engine):
    load_city(engine)
    return engine


@pytest.fixture(scope="module")
def client(city):
    return TestClient(create_app(city))


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    with (SAMPLES / "xuhui" / "addresses_gcj02.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _problem(response, parameter: str) -> dict:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == 400 and body["parameter"] == parameter and body["detail"]
    return body


def test_geocode_get(client, city, sample_rows):
    q = _query(sample_rows[3])
    body = client.get("/geocode", params={"q": q}).json()
    with city.connect() as conn:
        expected = geocode(conn, q).to_dict()
    # without a key, responsible persons' phones are masked (issue 12; tests/test_jurisdiction.py)
    for chain in expected["assignment"]["responsibility"]:
        for person in chain["persons"]:
            person["contact"] = mask(person["contact"])
    assert body == orjson.loads(orjson.dumps(expected))
    assert body["match_level"] == "door" and body["crs"] == "EPSG:4326"
    assert body["assignment"]["grid"]["code"] and body["assignment"]["responsibility"]


@pytest.mark.parametrize("crs, keys", [("gcj02", ("lon", "lat")), ("bd09", ("lon", "lat")),
                                       ("EPSG:4490", ("lon", "lat")), ("EPSG:4549", ("x", "y")),
                                       ("http://www.opengis.net/def/crs/EPSG/0/4549", ("x", "y"))])
def test_geocode_output_crs(client, city, sample_rows, crs, keys):
    q = _query(sample_rows[5])
    body = client.get("/geocode", params={"q": q, "crs": crs}).json()
    assert all(body[k] is not None for k in keys)
    if crs == "gcj02":
        assert body["lon"] == pytest.approx(float(sample_rows[5]["lon"]), abs=5e-6)
        assert body["lat"] == pytest.approx(float(sample_rows[5]["lat"]), abs=5e-6)


def test_geocode_ambiguous_and_foreign(client):
    body = client.get("/geocode", params={"q": "虹桥路100号"}).json()
    assert body["ambiguous"] and {c["district"]["code"] for c in body["candidates"]} == {"310104", "310105"}
    body = client.get("/geocode", params={"q": "浙江舟山普陀区东港路1号"}).json()
    assert body["match_level"] == "none" and body["lon"] is None and "浙江" in body["reason"]


@pytest.mark.parametrize("params, parameter", [
    ({"q": ""}, "q"), ({"q": "   "}, "q"), ({}, "q"), ({"q": "路" * 600}, "q"),
    ({"q": "徐汇区", "crs": "EPSG:999999"}, "crs"), ({"q": "徐汇区", "crs": "mars2"}, "crs"),
])
def test_geocode_bad_parameters(client, params, parameter):
    _problem(client.get("/geocode", params=params), parameter)


def test_reverse(client, sample_rows):
    r = next(r for r in sample_rows if not r["lane"])
    body = client.get("/reverse", params={"lon": r["lon"], "lat": r["lat"], "crs": "gcj02"}).json()
    assert body["found"] and body["address"]["standard_address"] == f"上海市徐汇区{r['road']}{r['door_number']}号"
    assert body["address"]["lon"] == pytest.approx(float(r["lon"]), abs=5e-6)
    assert body["assignment"]["grid"]["code"]
    nowhere = client.get("/reverse", params={"lon": 121.30, "lat": 31.10, "radius": 50}).json()
    assert nowhere["found"] is False and nowhere["address"] is None


@pytest.mark.parametrize("params, parameter", [
    ({"lon": "abc", "lat": 31.2}, "lon"), ({"lon": 121.4}, "lat"), ({"lon": 200, "lat": 31.2}, "lon"),
    ({"lon": 121.4, "lat": 95}, "lat"), ({"lon": 121.4, "lat": 31.2, "radius": 0}, "radius"),
    ({"lon": 121.4, "lat": 31.2, "radius": 2001}, "radius"), ({"lon": 121.4, "lat": 31.2, "crs": "nope"}, "crs"),
    ({"lon": "nan", "lat": 31.2}, "lon"),
])
def test_reverse_bad_parameters(client, params, parameter):
    _problem(client.get("/reverse", params=params), parameter)


def test_batch_json(client, city, sample_rows):
    queries = [_query(r) for r in sample_rows[:50]] + ["", "浙江舟山普陀区东港路1号", "虹桥路100号"]
    body = client.post("/geocode/batch", json=queries).json()
    assert body["summary"]["rows"] == len(queries)
    assert [r["query"] for r in body["results"]] == queries
    assert body["summary"]["match_levels"]["door"] == 50 and body["summary"]["ambiguous"] == 1
    first = body["results"][0]
    assert set(ADDED_COLUMNS) <= set(first) and first["grid_code"]
    wrapped = client.post("/geocode/batch", params={"crs": "gcj02", "detail": "full"},
                          json={"addresses": queries[:2]}).json()
    assert wrapped["results"][0]["assignment"]["responsibility"]
    assert wrapped["results"][0]["lon"] == pytest.approx(float(sample_rows[0]["lon"]), abs=5e-6)


def test_batch_json_bad(client):
    _problem(client.post("/geocode/batch", json=["徐汇区"] * (MAX_BATCH_ROWS + 1)), "addresses")
    _problem(client.post("/geocode/batch", json=["徐汇区", 5]), "addresses.1")
    _problem(client.post("/geocode/batch", json={"rows": []}), "addresses")
    _problem(client.post("/geocode/batch", content=b"[not json", headers={"content-type": "application/json"}),
             "addresses")
    _problem(client.post("/geocode/batch", params={"crs": "nope"}, json=["徐汇区"]), "crs")
    _problem(client.post("/geocode/batch", params={"detail": "everything"}, json=["徐汇区"]), "detail")


def _csv(rows: list[dict], fields: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def test_batch_csv_upload(client, sample_rows):
    rows = [{"id": str(i), "addr": _query(r), "remark": "a, b"} for i, r in enumerate(sample_rows[:20])]
    resp = client.post("/geocode/batch", files={"file": ("cases.csv", _csv(rows, ["id", "addr", "remark"]))},
                       data={"column": "addr"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    out = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(out[0]) == ["id", "addr", "remark", *ADDED_COLUMNS]
    assert [{k: o[k] for k in ("id", "addr", "remark")} for o in out] == rows
    assert all(o["match_level"] == "door" and o["grid_code"] for o in out)
    body = client.post("/geocode/batch", params={"column": "addr"}, content=_csv(rows[:3], ["id", "addr", "remark"]),
                       headers={"content-type": "text/csv"})
    assert len(list(csv.DictReader(io.StringIO(body.text)))) == 3
    gbk = "addr\n徐汇区田林路574号\n".encode("gbk")
    resp = client.post("/geocode/batch", files={"file": ("gbk.csv", gbk)}, data={"column": "addr", "encoding": "gbk"})
    assert resp.status_code == 200 and "田林路574号" in resp.text


def test_batch_csv_bad(client):
    good = "addr\n徐汇区\n".encode("utf-8")
    _problem(client.post("/geocode/batch", files={"file": ("a.csv", good)}, data={"column": "address"}), "column")
    _problem(client.post("/geocode/batch", files={"file": ("a.csv", good)}), "column")
    _problem(client.post("/geocode/batch", data={"column": "addr"}, files={"other": ("a.csv", good)}), "file")
    _problem(client.post("/geocode/batch", files={"file": ("a.csv", "addr\n徐汇区\n".encode("gbk"))},
                         data={"column": "addr"}), "encoding")
    _problem(client.post("/geocode/batch", files={"file": ("a.csv", good)},
                         data={"column": "addr", "encoding": "klingon"}), "encoding")
    _problem(client.post("/geocode/batch", files={"file": ("a.csv", b"addr\n\"open\n")}, data={"column": "addr"}),
             "file")
    too_many = ("addr\n" + "徐汇区\n" * (MAX_BATCH_ROWS + 1)).encode("utf-8")
    body = _problem(client.post("/geocode/batch", files={"file": ("a.csv", too_many)}, data={"column": "addr"}),
                    "file")
    assert "100,000" in body["detail"]
