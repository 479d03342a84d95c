"""Bad input to the reading intake and the rules, each handled explicitly: impossible values (outside the
quantity's physical range from sensing/data/quantity_limits.csv), units that are not the quantity's,
NaN / null / true as values — rejected per row with the rest of the batch loaded; rules that would fire on
every possible reading or never, visible in `rules check`; and the offline check the server runs
periodically (`sensing.offline.check_offline`), which must be idempotent."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.database import engine_for
from sensing.intake import store_batch
from sensing.limits import read_limits
from sensing.offline import check_offline
from sensing.parse import parse_batch
from sensing.rules import RuleSpec, add_rule, check_rules
from tests.sensing_fixtures import iot_devices_base, scalar

T0 = datetime(2026, 12, 21, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def base(server_url) -> str:
    url = iot_devices_base(server_url)
    with engine_for(url).begin() as conn:  # a device that declares its quantities without units
        conn.execute(sa.text("""INSERT INTO iot_devices (source_id, device_type, quantities, geom)
            SELECT 'IOT-BARE', '气象站', '["water_level", "temperature"]'::jsonb, geom FROM iot_devices
            WHERE source_id = 'IOT-0041' AND valid_to IS NULL"""))
    return url


def store(url: str, readings: list[dict] | bytes, fmt: str = "json"):
    body = readings if isinstance(readings, bytes) else orjson.dumps(readings)
    with engine_for(url).begin() as conn:
        return store_batch(conn, parse_batch(body, fmt))


def reading(device: str, minute: int, value, quantity: str = "water_level", **extra) -> dict:  # noqa: ANN001
    return {"device_id": device, "quantity": quantity, "value": value,
            "time": (T0 + timedelta(minutes=minute)).isoformat(), **extra}


def test_impossible_values_are_rejected_with_their_physical_range(base):
    report = store(base, [reading("IOT-0041", 0, -50.0), reading("IOT-0041", 1, 0.4),
                          reading("IOT-0071", 0, 500.0, "temperature"), reading("IOT-0071", 1, 21.5, "temperature"),
                          reading("IOT-0041", 2, 30.0)])  # the bound itself is possible
    assert (report.received, report.stored, report.rejected) == (5, 3, 2)
    assert report.reasons == {"out_of_range": 2}
    reasons = {r["row"]: r["reason"] for r in report.rejects}
    assert reasons[1].startswith("water_level -50 is outside its physical range -5 … 30 m")
    assert reasons[3].startswith("temperature 500 is outside its physical range -60 … 150 °C")
    assert scalar(base, "SELECT count(*) FROM iot_readings WHERE device_id IN ('IOT-0041', 'IOT-0071') "
                        "AND time >= :t0", t0=T0) == 3


def test_a_unit_that_is_not_the_quantitys_is_rejected_also_when_the_device_names_none(base):
    report = store(base, [reading("IOT-BARE", 0, 0.5, unit="°C"), reading("IOT-BARE", 1, 0.5, unit="m"),
                          reading("IOT-BARE", 2, 0.5), reading("IOT-BARE", 0, 20.0, "temperature", unit="℃"),
                          reading("IOT-BARE", 1, 20.0, "temperature", unit="K")])
    assert (report.stored, report.rejected) == (3, 2)
    reasons = {r["row"]: r["reason"] for r in report.rejects}
    assert reasons[1] == "unit '°C' is not a unit of 'water_level' (m)"
    assert reasons[5] == "unit 'K' is not a unit of 'temperature' (°C, degC, ℃)"
    assert report.reasons == {"unit": 2}


def test_nan_null_and_true_are_not_values(base):
    ndjson = b"\n".join([
        b'{"device_id":"IOT-0042","quantity":"water_level","time":"2026-12-21T09:00:00Z","value":"NaN"}',
        b'{"device_id":"IOT-0042","quantity":"water_level","time":"2026-12-21T09:01:00Z","value":null}',
        b'{"device_id":"IOT-0042","quantity":"water_level","time":"2026-12-21T09:02:00Z","value":true}',
        b'{"device_id":"IOT-0042","quantity":"water_level","time":"2026-12-21T09:03:00Z","value":"Infinity"}',
        b'{"device_id":"IOT-0042","quantity":"water_level","time":"2026-12-21T09:04:00Z","value":"0.25"}',
        b'{"device_id":"IOT-0042","quantity":"water_level","time":"2026-12-21 09:05","value":0.3}',
        b'{"device_id":"IOT-0042","quantity":"water_level","time":"2026-13-21T09:06:00Z","value":0.3}',
    ])
    report = store(base, ndjson, "ndjson")
    assert (report.stored, report.rejected) == (1, 6)
    reasons = {r["row"]: r["reason"] for r in report.rejects}
    assert "'NaN' is not a finite number" in reasons[1]
    assert reasons[2] == "missing value"
    assert "'True' is not a finite number" in reasons[3]
    assert "'Infinity' is not a finite number" in reasons[4]
    assert "RFC 3339" in reasons[6] and "RFC 3339" in reasons[7]


def test_unknown_devices_and_duplicates_are_counted_and_the_rest_loads(base):
    batch = [reading("IOT-0043", m, 0.2) for m in range(5)] + [reading("NO-SUCH", 0, 0.2)]
    first = store(base, batch)
    assert (first.stored, first.rejected, first.reasons) == (5, 1, {"unknown_device": 1})
    again = store(base, batch + [reading("IOT-0043", 5, 0.2)])  # the five again, one new
    assert (again.stored, again.duplicates, again.rejected) == (1, 5, 1)


def test_rules_check_names_rules_that_fire_on_every_possible_reading_or_never(base):
    with engine_for(base).begin() as conn:
        always = add_rule(conn, RuleSpec(name="below the physical floor", quantity="water_level",
                                         device_type="水位计", warning=-10.0))["id"]
        never = add_rule(conn, RuleSpec(name="beyond the physical ceiling", quantity="water_level",
                                        device_type="水位计", alarm=100.0))["id"]
        sane = add_rule(conn, RuleSpec(name="sane", quantity="water_level", device_type="水位计", warning=1.0))["id"]
        findings = {f["rule_id"]: f["problem"] for f in check_rules(conn)}
    assert findings[always].startswith("fires on every possible reading: water_level is never below -5 m")
    assert findings[never].startswith("never fires: water_level is never above 30 m")
    assert sane not in findings
    with TestClient(create_app(engine_for(base))) as client:
        listed = client.get("/iot/rules/check").json()["findings"]
    assert {f["rule_id"] for f in listed} >= {always, never}


def test_a_malformed_limits_file_is_one_error_naming_file_and_row(tmp_path):
    path = tmp_path / "limits.csv"
    path.write_text("quantity,units,min,max\nwater_level,m,-5,30\ntilt,deg,ten,180\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"limits.csv, row 3: min and max must be numbers"):
        read_limits(path)


def test_check_offline_is_idempotent(base):
    with engine_for(base).begin() as conn:
        rules = [add_rule(conn, RuleSpec(name=f"silent {d}", kind="offline", offline_minutes=30, device_id=d))["id"]
                 for d in ("IOT-0044", "IOT-0045")]
    store(base, [reading("IOT-0044", 0, 0.3), reading("IOT-0045", 20, 0.3)])
    engine = engine_for(base)

    def offline_alerts() -> list[tuple]:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT device_id, opened_at, cleared_at FROM iot_alerts "
                                        "WHERE rule_id = ANY(:r) ORDER BY device_id"), {"r": rules}).all()

    assert check_offline(engine, T0 + timedelta(minutes=29)) == 0
    assert offline_alerts() == []
    # two workers' periodic runners at once: the one alert is opened once
    counts: list[int] = []
    runners = [threading.Thread(target=lambda: counts.append(check_offline(engine, T0 + timedelta(minutes=31))))
               for _ in range(2)]
    for r in runners:
        r.start()
    for r in runners:
        r.join(timeout=60)
    assert sorted(counts) == [0, 1]
    assert [(d, o) for d, o, _ in offline_alerts()] == [("IOT-0044", T0 + timedelta(minutes=30))]
    assert check_offline(engine, T0 + timedelta(minutes=31)) == 0  # again: nothing more
    assert check_offline(engine, T0 + timedelta(minutes=55)) == 1  # now IOT-0045 too (its last reading + 30)
    assert check_offline(engine, T0 + timedelta(minutes=90)) == 0
    assert len(offline_alerts()) == 2
    with pytest.raises(ValueError, match="aware"):
        check_offline(engine, datetime(2026, 12, 21, 9, 0))
