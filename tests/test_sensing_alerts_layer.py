"""Alerts as an OGC API collection (`alerts`: the active alerts at their devices; `datetime=` for those
active at a time) and in the viewer's 2D map, where a device in alarm is drawn in the alarm colour."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from cim.database import engine_for
from sensing.intake import store_batch
from sensing.parse import parse_batch
from sensing.rules import RuleSpec, add_rule
from tests.conftest import PROJECT
from tests.sensing_fixtures import iot_devices_base, scalar
from tests.test_viewer import _browser, _free_port, _needs_libraries

T0 = datetime(2026, 12, 22, 8, 0, tzinfo=timezone.utc)


def send(url: str, device: str, minute: int, value: float) -> None:
    body = orjson.dumps([{"device_id": device, "quantity": "water_level", "value": value,
                          "time": (T0 + timedelta(minutes=minute)).isoformat()}])
    with engine_for(url).begin() as conn:
        store_batch(conn, parse_batch(body, "json"))


@pytest.fixture(scope="module")
def base(server_url) -> str:
    url = iot_devices_base(server_url)
    with engine_for(url).begin() as conn:
        add_rule(conn, RuleSpec(name="积水", device_type="水位计", quantity="water_level", warning=1.0, alarm=1.5,
                                hysteresis=0.2))
    send(url, "IOT-0041", 0, 1.7)  # alarm, stays
    send(url, "IOT-0042", 0, 1.1)  # warning, stays
    send(url, "IOT-0043", 0, 1.2)  # warning …
    send(url, "IOT-0043", 30, 0.1)  # … cleared half an hour later
    return url


@pytest.fixture(scope="module")
def client(base):
    with TestClient(create_app(engine_for(base))) as c:
        yield c


def test_alerts_are_a_collection_of_the_active_ones(base, client):
    ids = [c["id"] for c in client.get("/collections").json()["collections"]]
    assert "alerts" in ids
    items = client.get("/collections/alerts/items").json()
    levels = {f["properties"]["device_id"]: (f["properties"]["level"], f["properties"]["state"])
              for f in items["features"]}
    assert levels == {"IOT-0041": ("alarm", "open"), "IOT-0042": ("warning", "open")}
    (alarm,) = [f for f in items["features"] if f["properties"]["device_id"] == "IOT-0041"]
    device = client.get("/collections/iot-devices/items", params={"source_id": "IOT-0041"}).json()["features"][0]
    assert alarm["geometry"]["coordinates"] == pytest.approx(device["geometry"]["coordinates"])
    assert int(alarm["id"].replace("-", ""), 16) == scalar(base, "SELECT id FROM iot_alerts WHERE device_id = 'IOT-0041'")
    # the cleared one is there for a time inside its life, and queryable like any layer's property
    during = client.get("/collections/alerts/items",
                        params={"datetime": (T0 + timedelta(minutes=10)).isoformat()}).json()
    assert {f["properties"]["device_id"] for f in during["features"]} == {"IOT-0041", "IOT-0042", "IOT-0043"}
    alarms = client.get("/collections/alerts/items", params={"level": "alarm"}).json()
    assert [f["properties"]["device_id"] for f in alarms["features"]] == ["IOT-0041"]


def test_a_new_alert_changes_the_layer_version(base, client):
    before = scalar(base, "SELECT version FROM layers WHERE name = 'alerts'")
    send(base, "IOT-0044", 0, 1.6)
    assert scalar(base, "SELECT version FROM layers WHERE name = 'alerts'") == before + 1
    assert "IOT-0044" in {f["properties"]["device_id"]
                          for f in client.get("/collections/alerts/items").json()["features"]}


#: true once the 2D map draws IOT-0041's alert in the alarm colour
ALARM_DRAWN = """(() => {
  const m = window.cimMap; if (!m || !m.loaded() || !m.getLayer('alerts')) return false;
  const f = m.queryRenderedFeatures({layers: ['alerts']}).find(h => h.properties.device_id === 'IOT-0041');
  if (!f || f.properties.level !== 'alarm') return false;
  const c = f.layer.paint && f.layer.paint['circle-color'];
  return !!c && c.r > 0.9 && c.g < 0.3 && c.b < 0.3;
})()"""


@pytest.fixture(scope="module")
def server(base, tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "CIM_DATABASE_URL": base, "CIM_HOME": str(tmp_path_factory.mktemp("home"))}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.asgi:app", "--port", str(port)], cwd=PROJECT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_device_in_alarm_is_drawn_in_the_alarm_colour(server, tmp_path):
    _needs_libraries()
    shot = tmp_path / "viewer-alerts.png"
    result = _browser(f"{server}/viewer#2d", ALARM_DRAWN, shot)
    assert result["ok"], result
    assert not result["errors"], result["errors"]
