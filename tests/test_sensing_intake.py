"""Reading intake: batches as JSON, NDJSON and CSV through `POST /iot/readings` and the store
function; duplicates, late readings and bad rows each counted, with reasons; the latest value kept."""
from __future__ import annotations

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.apikeys import create_key
from cim.database import engine_for
from sensing.intake import store_batch
from sensing.parse import parse_batch
from tests.sensing_fixtures import iot_devices_base, scalar


@pytest.fixture(scope="module")
def base(server_url) -> str:
    return iot_devices_base(server_url)


@pytest.fixture(scope="module")
def client(base):
    with TestClient(create_app(engine_for(base))) as c:
        yield c


@pytest.fixture(scope="module")
def loader_key(base) -> str:
    with engine_for(base).begin() as conn:
        return create_key(conn, "loader", "sensing test")[1]


def store(url: str, body: bytes, fmt: str):
    with engine_for(url).begin() as conn:
        return store_batch(conn, parse_batch(body, fmt))


def test_a_json_batch_is_stored_and_the_latest_value_follows(base, client, loader_key):
    batch = [{"device_id": "IOT-0041", "time": f"2026-12-01T08:{m:02d}:00+08:00", "quantity": "water_level",
              "value": 0.5 + m / 100} for m in range(0, 60, 5)]
    r = client.post("/iot/readings", content=orjson.dumps(batch),
                    headers={"X-API-Key": loader_key, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["received"], body["stored"], body["duplicates"], body["rejected"]) == (12, 12, 0, 0)
    assert scalar(base, "SELECT count(*) FROM iot_readings WHERE device_id = 'IOT-0041' "
                        "AND time >= '2026-12-01T00:00:00Z'") == 12
    # the month's own partition holds them, not the default partition
    assert scalar(base, "SELECT count(*) FROM iot_readings_202612") >= 12
    assert scalar(base, "SELECT count(*) FROM iot_readings_default") == 0
    latest = scalar(base, "SELECT value FROM iot_latest WHERE device_id = 'IOT-0041' AND quantity = 'water_level'")
    assert latest == pytest.approx(1.05)


def test_writing_readings_needs_a_loader_key(client):
    r = client.post("/iot/readings", content=b"[]", headers={"Content-Type": "application/json"})
    assert r.status_code == 401


def test_ndjson_and_csv_batches_and_duplicates_are_counted(base):
    ndjson = b"\n".join(orjson.dumps({"device_id": "IOT-0042", "time": f"2026-12-02T00:0{i}:00Z",
                                      "quantity": "water_level", "value": 0.1 * i}) for i in range(5))
    first = store(base, ndjson, "ndjson")
    assert (first.stored, first.duplicates) == (5, 0)
    # the same five again, plus one repeated inside the batch and one new
    again = ndjson + b"\n" + orjson.dumps({"device_id": "IOT-0042", "time": "2026-12-02T00:09:00Z",
                                           "quantity": "water_level", "value": 0.9}) * 1
    again += b"\n" + orjson.dumps({"device_id": "IOT-0042", "time": "2026-12-02T00:09:00+00:00",
                                   "quantity": "water_level", "value": 0.95})
    second = store(base, again, "ndjson")
    assert (second.received, second.stored, second.duplicates, second.rejected) == (7, 1, 6, 0)
    # the first of a repeated reading stays
    assert scalar(base, "SELECT value FROM iot_readings WHERE device_id = 'IOT-0042' "
                        "AND time = '2026-12-02T00:09:00Z'") == pytest.approx(0.9)
    csv = b"device_id,time,quantity,value,unit\nIOT-0042,2026-12-02T00:10:00Z,water_level,1.0,m\n"
    assert store(base, csv, "csv").stored == 1


def test_late_readings_are_stored_but_do_not_move_the_latest_value(base):
    store(base, b'[{"device_id":"IOT-0043","time":"2026-12-03T10:00:00Z","quantity":"water_level","value":0.7}]',
          "json")
    late = store(base, b'[{"device_id":"IOT-0043","time":"2026-12-03T09:00:00Z","quantity":"water_level",'
                       b'"value":0.2}]', "json")
    assert (late.stored, late.late) == (1, 1)
    assert scalar(base, "SELECT value FROM iot_latest WHERE device_id = 'IOT-0043'") == pytest.approx(0.7)


def test_bad_rows_are_rejected_with_reasons_and_the_rest_loads(base, client, loader_key):
    csv = "\n".join([
        "device_id,time,quantity,value,unit",
        "IOT-0044,2026-12-04T00:00:00Z,water_level,0.3,m",        # good
        "IOT-9999,2026-12-04T00:00:00Z,water_level,0.3,m",        # unknown device
        "IOT-0044,2026-12-04T00:10:00,water_level,0.3,m",         # no offset
        "IOT-0044,yesterday,water_level,0.3,m",                   # malformed
        "IOT-0044,2026-12-04T00:20:00Z,water_level,NaN,m",        # NaN
        "IOT-0044,2026-12-04T00:30:00Z,water_level,0.3,cm",       # wrong unit
        "IOT-0044,2026-12-04T00:40:00Z,ch4,3.0,%LEL",             # not measured by this device
        "IOT-0044,2026-12-04T00:50:00Z,water_level,,m",           # missing value
        "IOT-0044,2026-12-04T01:00:00Z,water_level,0.4,",         # good: no unit given
    ]).encode()
    r = client.post("/iot/readings", content=csv, headers={"X-API-Key": loader_key, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["received"], body["stored"], body["rejected"]) == (9, 2, 7)
    reasons = {row["row"]: row["reason"] for row in body["rejects"]}
    assert "unknown device 'IOT-9999'" in reasons[2]
    assert "no UTC offset" in reasons[3] or "RFC 3339" in reasons[3]
    assert "RFC 3339" in reasons[4]
    assert "finite number" in reasons[5]
    assert "unit 'cm'" in reasons[6] and "'m'" in reasons[6]
    assert "does not measure 'ch4'" in reasons[7]
    assert reasons[8] == "missing value"
    assert body["reasons"] == {"unknown_device": 1, "time": 2, "value": 1, "unit": 1, "quantity": 1,
                               "missing_value": 1}


def test_a_batch_that_is_not_readable_is_a_400_naming_the_body(client, loader_key):
    r = client.post("/iot/readings", content=b"[{not json", headers={"X-API-Key": loader_key,
                                                                     "Content-Type": "application/json"})
    assert r.status_code == 400
    assert "request body" in r.json()["detail"]
    r = client.post("/iot/readings", content=b"a,b\n1,2\n", headers={"X-API-Key": loader_key,
                                                                    "Content-Type": "text/csv"})
    assert r.status_code == 400 and "missing column" in r.json()["detail"]


def test_thousands_of_readings_in_one_request(base, client, loader_key):
    rows = ["device_id,time,quantity,value"]
    devices = [f"IOT-{i:04d}" for i in range(51, 71)]  # 燃气探测器: ch4
    for minute in range(250):
        for device in devices:
            rows.append(f"{device},2026-12-05T{minute // 60:02d}:{minute % 60:02d}:00Z,ch4,{minute % 7}")
    r = client.post("/iot/readings", content="\n".join(rows).encode(),
                    headers={"X-API-Key": loader_key, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 5000 and r.json()["rejected"] == 0
    with engine_for(base).connect() as conn:
        latest = conn.execute(sa.text("SELECT count(*), min(time), max(time) FROM iot_latest "
                                      "WHERE device_id = ANY(:d) AND quantity = 'ch4'"), {"d": devices}).one()
    assert latest[0] == 20 and latest[1] == latest[2]


def test_a_batch_in_a_new_month_locks_out_neither_readers_nor_other_batches(base):
    """The month's partition is made and committed apart from the batch's transaction: while a batch
    that made one is still open, readings can be read and another batch of that month loads."""
    engine = engine_for(base)
    body = lambda device: orjson.dumps([{"device_id": device, "quantity": "water_level", "value": 0.2,  # noqa: E731
                                         "time": "2027-03-01T00:00:00Z"}])
    with engine.connect() as first:
        tx = first.begin()
        assert store_batch(first, parse_batch(body("IOT-0047"), "json")).stored == 1
        with engine.connect() as reader:
            reader.execute(sa.text("SET lock_timeout = '5s'"))
            assert reader.execute(sa.text("SELECT count(*) FROM iot_readings WHERE device_id = 'IOT-0041'")).scalar()
            reader.commit()
            with reader.begin():
                assert store_batch(reader, parse_batch(body("IOT-0048"), "json")).stored == 1
        tx.commit()
    assert scalar(base, "SELECT count(*) FROM iot_readings_202703") == 2


def test_a_nul_character_is_a_rejected_row_not_a_server_error(base):
    report = store(base, b'[{"device_id":"IOT-0041\\u0000","time":"2026-12-06T00:00:00Z","quantity":"water_level",'
                         b'"value":0.1},{"device_id":"IOT-0041","time":"2026-12-06T00:00:00Z","quantity":"water_level",'
                         b'"value":0.1}]', "json")
    assert (report.stored, report.rejected) == (1, 1)
    assert report.rejects[0]["reason"] == "device_id contains a NUL character"
