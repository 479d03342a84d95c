"""Threshold rules and alerts, evaluated as readings arrive: warning then alarm opens one alert
(escalated), staying above opens no more, the hysteresis band keeps it, falling below it clears it;
durations, rates, 'below' rules, offline rules (silence now and gaps in a batch), late readings;
rules managed by CLI and API, `rules check`; alerts listed and acknowledged over HTTP."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.apikeys import create_key
from cim.bootstrap import initialise
from cim.database import engine_for
from sensing.intake import store_batch
from sensing.offline import sweep_offline
from sensing.parse import parse_batch
from sensing.rules import RuleSpec, add_rule, remove_rule
from tests.conftest import create_database, run_cim
from tests.sensing_fixtures import load_sample_layers, scalar

T0 = datetime(2026, 12, 20, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def base(server_url) -> str:
    url = create_database(server_url)
    initialise(engine_for(url))
    load_sample_layers(url, "districts", "streets", "communities", "grids", "responsibility", "iot-devices")
    return url


def rule(url: str, **fields) -> int:
    with engine_for(url).begin() as conn:
        return add_rule(conn, RuleSpec(**fields))["id"]


def send(url: str, device: str, *points: tuple[int, float], quantity: str = "water_level"):
    """Readings of one device at T0 + minutes, in one batch."""
    body = orjson.dumps([{"device_id": device, "quantity": quantity, "value": v,
                          "time": (T0 + timedelta(minutes=m)).isoformat()} for m, v in points])
    with engine_for(url).begin() as conn:
        return store_batch(conn, parse_batch(body, "json"))


def alerts(url: str, rule_id: int) -> list[dict]:
    with engine_for(url).connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM iot_alerts WHERE rule_id = :r ORDER BY id"), {"r": rule_id}).mappings()]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


PONDING = dict(kind="level", quantity="water_level", direction="above", warning=1.0, alarm=1.5, hysteresis=0.2,
               case_class="道路积水")


def test_warning_then_alarm_is_one_alert_escalated_and_cleared_below_the_hysteresis(base):
    rid = rule(base, name="ponding IOT-0031", device_id="IOT-0031", **PONDING)
    assert send(base, "IOT-0031", (0, 0.5)).alerts_opened == 0
    assert send(base, "IOT-0031", (10, 1.1)).alerts_opened == 1
    (alert,) = alerts(base, rid)
    assert (alert["level"], alert["opened_at"], alert["cleared_at"]) == ("warning", at(10), None)
    assert send(base, "IOT-0031", (20, 1.6)).alerts_escalated == 1
    report = send(base, "IOT-0031", (30, 1.7), (40, 1.8))  # staying above: no new alert
    assert (report.alerts_opened, report.alerts_escalated) == (0, 0)
    assert send(base, "IOT-0031", (50, 0.9)).alerts_cleared == 0  # inside the hysteresis band (0.8 … 1.0)
    assert send(base, "IOT-0031", (60, 0.7)).alerts_cleared == 1
    (alert,) = alerts(base, rid)
    assert (alert["level"], alert["escalated_at"], alert["cleared_at"]) == ("alarm", at(20), at(60))
    assert alert["first_value"] == 1.1 and alert["last_value"] == 0.9
    assert alert["case_id"] is not None  # the alarm opened a case (see test_an_alarm_opens_one_case…)
    # rising again later opens a new alert: the one before is cleared
    send(base, "IOT-0031", (70, 1.2))
    assert [a["cleared_at"] is None for a in alerts(base, rid)] == [False, True]


def test_the_same_story_in_one_batch_gives_the_same_alert(base):
    rid = rule(base, name="ponding IOT-0032", device_id="IOT-0032", **PONDING)
    report = send(base, "IOT-0032", (0, 0.5), (10, 1.1), (20, 1.6), (30, 1.7), (40, 1.8), (50, 0.9), (60, 0.7),
                  (70, 0.6))
    assert (report.alerts_opened, report.alerts_escalated, report.alerts_cleared) == (1, 1, 1)
    (alert,) = alerts(base, rid)
    assert (alert["opened_at"], alert["escalated_at"], alert["cleared_at"]) == (at(10), at(20), at(60))


def test_a_level_counts_only_once_it_has_held_for_the_duration(base):
    rid = rule(base, name="held IOT-0033", device_id="IOT-0033", duration_s=600, **PONDING)
    send(base, "IOT-0033", (0, 1.1))
    send(base, "IOT-0033", (5, 0.9))  # the run is broken
    send(base, "IOT-0033", (10, 1.1))
    send(base, "IOT-0033", (15, 1.2))
    assert alerts(base, rid) == []  # above for 5 minutes only
    assert send(base, "IOT-0033", (20, 1.2)).alerts_opened == 1  # 10 minutes since the run began
    (alert,) = alerts(base, rid)
    assert (alert["level"], alert["opened_at"]) == ("warning", at(20))


def test_late_readings_do_not_replay_alerts(base):
    rid = rule(base, name="late IOT-0034", device_id="IOT-0034", **PONDING)
    send(base, "IOT-0034", (30, 0.4))
    report = send(base, "IOT-0034", (10, 1.9))  # older than what was evaluated: stored, counted, no alert
    assert (report.stored, report.late, report.alerts_opened) == (1, 1, 0)
    assert alerts(base, rid) == []


def test_a_below_rule_and_a_rate_rule(base):
    low = rule(base, name="dry IOT-0035", device_id="IOT-0035", kind="level", quantity="water_level",
               direction="below", warning=0.2, alarm=0.1, hysteresis=0.05)
    rate = rule(base, name="rising IOT-0035", device_id="IOT-0035", kind="rate", quantity="water_level",
                direction="above", warning=0.02, alarm=0.05)
    send(base, "IOT-0035", (0, 0.5), (10, 0.6), (20, 1.2), (30, 0.15), (40, 0.05), (50, 0.22), (60, 0.3))
    (dry,) = alerts(base, low)
    assert (dry["opened_at"], dry["escalated_at"], dry["cleared_at"]) == (at(30), at(40), at(60))
    (rising,) = alerts(base, rate)  # +0.06 m/min from 10 to 20; falling clears it
    assert (rising["level"], rising["opened_at"], rising["cleared_at"]) == ("alarm", at(20), at(30))


def test_an_offline_rule_fires_after_the_gap_and_clears_when_readings_return(base):
    rid = rule(base, name="silent IOT-0036", device_id="IOT-0036", kind="offline", offline_minutes=30)
    send(base, "IOT-0036", (0, 0.4))
    with engine_for(base).begin() as conn:
        assert sweep_offline(conn, at(29)).alerts_opened == 0
    with engine_for(base).begin() as conn:
        assert sweep_offline(conn, at(31)).alerts_opened == 1
    with engine_for(base).begin() as conn:
        assert sweep_offline(conn, at(40)).alerts_opened == 0  # still the same one
    (alert,) = alerts(base, rid)
    assert (alert["opened_at"], alert["cleared_at"], alert["last_time"]) == (at(30), None, at(0))
    assert send(base, "IOT-0036", (45, 0.4)).alerts_cleared == 1
    (alert,) = alerts(base, rid)
    assert alert["cleared_at"] == at(45)


def test_the_server_checks_offline_devices_by_itself(base):
    """With CIM_IOT_OFFLINE_CHECK_S set, the running server's periodic job (api/periodic.py) opens the
    offline alert with nobody calling anything; polled, no assertion on time."""
    import time

    from cim.config import load_settings

    rid = rule(base, name="silent IOT-0038", device_id="IOT-0038", kind="offline", offline_minutes=30)
    last = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)  # silent since, by the clock
    body = orjson.dumps([{"device_id": "IOT-0038", "quantity": "water_level", "value": 0.4, "time": last.isoformat()}])
    with engine_for(base).begin() as conn:
        store_batch(conn, parse_batch(body, "json"))
    with TestClient(create_app(engine_for(base), load_settings(iot_offline_check_s=0.1))):
        deadline = time.monotonic() + 60
        while not alerts(base, rid):
            assert time.monotonic() < deadline, "the server never opened the offline alert"
            time.sleep(0.05)
    (alert,) = alerts(base, rid)
    assert alert["cleared_at"] is None and alert["last_time"] == last


def test_a_gap_inside_a_batch_is_an_offline_episode(base):
    rid = rule(base, name="gap IOT-0037", device_id="IOT-0037", kind="offline", offline_minutes=30,
               offline_level="alarm")
    report = send(base, "IOT-0037", (0, 0.4), (10, 0.4), (60, 0.4), (70, 0.4))
    assert (report.alerts_opened, report.alerts_cleared) == (1, 1)
    (alert,) = alerts(base, rid)
    assert (alert["level"], alert["opened_at"], alert["cleared_at"]) == ("alarm", at(40), at(60))


def test_at_most_one_active_alert_per_rule_and_device(base):
    rid = rule(base, name="unique IOT-0038", device_id="IOT-0038", **PONDING)
    send(base, "IOT-0038", (0, 1.6))
    with pytest.raises(sa.exc.IntegrityError, match="uq_iot_alerts_active"):
        with engine_for(base).begin() as conn:
            conn.execute(sa.text("INSERT INTO iot_alerts (rule_id, device_id, level, opened_at) "
                                 "VALUES (:r, 'IOT-0038', 'warning', now())"), {"r": rid})


def test_rules_by_kind_and_area_match_only_their_devices(base):
    street = scalar(base, "SELECT street_code FROM iot_devices WHERE source_id = 'IOT-0039'")
    assert street, "the sample devices carry their street"
    rid = rule(base, name="ponding in one street", device_type="水位计", area_level="street", area_code=street,
               **PONDING)
    others = scalar(base, "SELECT min(source_id) FROM iot_devices WHERE device_type = '水位计' "
                          "AND street_code IS DISTINCT FROM :s AND source_id > 'IOT-0040'", s=street)
    send(base, "IOT-0039", (0, 1.2))
    send(base, others, (0, 1.2))
    assert [a["device_id"] for a in alerts(base, rid)] == ["IOT-0039"]
    with engine_for(base).begin() as conn:
        assert remove_rule(conn, rid) == 1  # its active alert clears; later tests start without it


def test_rules_cli_add_list_check_remove(base):
    run_cim("iot", "rules", "add", "always", "--quantity", "water_level", "--device-type", "水位计",
            "--warning", "-0.5", db_url=base)
    run_cim("iot", "rules", "add", "reversed", "--quantity", "water_level", "--device-type", "水位计",
            "--warning", "2", "--alarm", "1", db_url=base)
    listed = orjson.loads(run_cim("iot", "rules", "list", "--json", db_url=base).stdout)
    always = next(r for r in listed if r["name"] == "always")
    check = run_cim("iot", "rules", "check", db_url=base).stdout
    assert f"rule {always['id']} (always): fires on every reading" in check
    assert "(reversed): warning level 2.0 is past the alarm level 1.0" in check
    bad = run_cim("iot", "rules", "add", "no levels", "--quantity", "water_level", db_url=base, check=False)
    assert bad.returncode == 1 and "needs a warning level" in bad.stderr and "Traceback" not in bad.stderr
    run_cim("iot", "rules", "remove", str(always["id"]), db_url=base)
    names = [r["name"] for r in orjson.loads(run_cim("iot", "rules", "list", "--json", db_url=base).stdout)]
    assert "always" not in names
    reversed_id = next(r["id"] for r in listed if r["name"] == "reversed")
    run_cim("iot", "rules", "remove", str(reversed_id), db_url=base)


def test_rules_and_alerts_over_http(base):
    with engine_for(base).begin() as conn:
        key = create_key(conn, "loader", "operator on duty")[1]
    headers = {"X-API-Key": key}
    with TestClient(create_app(engine_for(base))) as client:
        r = client.post("/iot/rules", json={"name": "ponding IOT-0040", "device_id": "IOT-0040", **PONDING},
                        headers=headers)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert client.post("/iot/rules", json={"name": "x", "kind": "level"}, headers=headers).status_code == 400
        for bad in ({"quantity": {"a": 1}}, {"duration_s": True}, {"warning": True}, {"device_type": "a\x00b"},
                    {"duration_s": 2**40}, {"colour": "red"}):
            r = client.post("/iot/rules", json={"name": "typed", "quantity": "water_level", "warning": 1.0, **bad},
                            headers=headers)
            assert r.status_code == 400, (bad, r.text)
        assert client.get("/alerts", params={"device": "a\x00b"}).status_code == 400
        assert client.get(f"/alerts/{2**70}").status_code in (400, 422)
        assert client.post("/iot/rules", json={"name": "ponding IOT-0040", **PONDING},
                           headers=headers).status_code == 409
        assert any(x["id"] == rid for x in client.get("/iot/rules").json()["rules"])
        body = orjson.dumps([{"device_id": "IOT-0040", "quantity": "water_level", "value": 1.7,
                              "time": at(0).isoformat()}])
        posted = client.post("/iot/readings", content=body, headers={**headers, "Content-Type": "application/json"})
        assert posted.json()["alerts"] == {"opened": 1, "escalated": 0, "cleared": 0}
        listed = client.get("/alerts", params={"state": "open", "device": "IOT-0040"}).json()["alerts"]
        assert [(a["rule_id"], a["level"], a["state"]) for a in listed] == [(rid, "alarm", "open")]
        alert_id = listed[0]["id"]
        assert client.post(f"/alerts/{alert_id}/ack").status_code == 401
        acked = client.post(f"/alerts/{alert_id}/ack", headers=headers).json()
        assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", "operator on duty")
        assert client.get("/alerts", params={"state": "nonsense"}).status_code == 400
        assert client.get("/alerts/999999").status_code == 404
        removed = client.delete(f"/iot/rules/{rid}", headers=headers).json()
        assert removed["alerts_cleared"] == 1
        assert client.post(f"/alerts/{alert_id}/ack", headers=headers).status_code == 409


def test_two_batches_of_one_device_at_once_open_one_alert(base):
    """The second transaction waits for the first (per-device lock) and then sees its alert; without
    the lock both would open one and the second would fail on the unique index."""
    import threading

    rid = rule(base, name="race IOT-0045", device_id="IOT-0045", **PONDING)
    send(base, "IOT-0046", (0, 0.1))  # the month's partition exists: the race is over the alert alone
    engine = engine_for(base)
    first = engine.connect()
    tx = first.begin()
    body = lambda m, v: orjson.dumps([{"device_id": "IOT-0045", "quantity": "water_level", "value": v,  # noqa: E731
                                       "time": at(m).isoformat()}])
    assert store_batch(first, parse_batch(body(0, 1.6), "json")).alerts_opened == 1
    outcome: dict = {}

    def second() -> None:
        try:
            with engine.begin() as conn:
                outcome["report"] = store_batch(conn, parse_batch(body(10, 1.7), "json"))
        except Exception as exc:  # noqa: BLE001 (reported below)
            outcome["error"] = exc

    thread = threading.Thread(target=second)
    thread.start()
    from tests.sensing_fixtures import wait_until

    wait_until(lambda: scalar(base, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()"), 30, "the second batch to wait")
    tx.commit()
    first.close()
    thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].alerts_opened == 0
    assert len(alerts(base, rid)) == 1


def cases_of(url: str, alert_case: int) -> list[dict]:
    with engine_for(url).connect() as conn:
        return [dict(r) for r in conn.execute(sa.text("SELECT * FROM cases WHERE id = :id"),
                                              {"id": alert_case}).mappings()]


def test_an_alarm_opens_exactly_one_case_in_the_devices_grid_and_clearing_notes_it(base):
    rid = rule(base, name="ponding IOT-0049", device_id="IOT-0049", **PONDING)
    before = scalar(base, "SELECT count(*) FROM cases")
    send(base, "IOT-0049", (0, 1.1))  # warning: an alert, no case
    assert scalar(base, "SELECT count(*) FROM cases") == before
    assert alerts(base, rid)[0]["case_id"] is None
    send(base, "IOT-0049", (10, 1.6), (20, 1.9))  # alarm, and staying there
    send(base, "IOT-0049", (30, 2.1))
    assert scalar(base, "SELECT count(*) FROM cases") == before + 1
    (alert,) = alerts(base, rid)
    case = cases_of(base, alert["case_id"])[0]
    device_grid = scalar(base, "SELECT grid_code FROM iot_devices WHERE source_id = 'IOT-0049' AND valid_to IS NULL")
    assert device_grid is not None
    assert (case["channel"], case["grid_code"], case["class_code"]) == ("iot", device_grid, "E0401")
    assert case["external_id"] == f"iot-alert-{alert['id']}" and case["status"] != "reported"
    send(base, "IOT-0049", (40, 0.5))  # cleared: a note on the case, still one case
    assert scalar(base, "SELECT count(*) FROM cases") == before + 1
    notes = scalar(base, "SELECT string_agg(note, ' | ') FROM case_events WHERE case_id = :c AND action = 'comment'",
                   c=alert["case_id"])
    assert f"alert {alert['id']} cleared" in notes and "back to normal" in notes


def test_a_rule_naming_an_unknown_case_class_is_refused(base):
    with pytest.raises(Exception, match="case_class"):
        rule(base, name="bad class", device_id="IOT-0050", **{**PONDING, "case_class": "不存在的类"})
