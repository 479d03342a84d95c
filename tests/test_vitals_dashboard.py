"""/dashboard: the page and its assets are served; in headless Chromium (driven over the DevTools protocol
like the viewer's browser test) it renders with no console error and shows what the API answers — the six
dimensions with their worst indicators, the chosen indicator's value for every street (table and
choropleth), the active alerts and the newest cases."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
import sqlalchemy as sa

from tests.conftest import PROJECT, missing_tool
from tests.sensing_fixtures import load_sample_layers
from tests.servers import serve_app
from tests.test_viewer import _browser

INDICATOR = "ponding_alarm_share"


def _needs_maplibre() -> None:
    if not (PROJECT / "node_modules" / "maplibre-gl" / "dist").is_dir():
        missing_tool("node_modules/maplibre-gl missing: run 'npm ci' at the repository root")


@pytest.fixture(scope="module")
def city(engine, db_url):
    """Streets, grids, responsibility and IoT devices of the sample city; two water-level gauges in alarm
    (each opening a case), one at warning; the vital signs computed."""
    from sensing.intake import store_batch
    from sensing.parse import parse_batch
    from sensing.rules import RuleSpec, add_rule
    from vitals.compute import compute

    load_sample_layers(db_url, "districts", "streets", "communities", "grids", "responsibility", "iot-devices")
    now = datetime.now(timezone.utc)  # not truncated: the layers were loaded this very second
    with engine.begin() as conn:
        add_rule(conn, RuleSpec(name="积水", kind="level", device_type="水位计", quantity="water_level",
                                direction="above", warning=1.0, alarm=1.5, case_class="道路积水"))
        gauges = list(conn.execute(sa.text("SELECT source_id FROM iot_devices WHERE device_type = '水位计' "
                                           "ORDER BY source_id")).scalars())
    levels = {g: 0.2 for g in gauges} | {gauges[1]: 1.9, gauges[8]: 1.6, gauges[14]: 1.3}
    body = [{"device_id": g, "quantity": "water_level", "value": v, "time": (now - timedelta(minutes=3)).isoformat()}
            for g, v in levels.items()]
    with engine.begin() as conn:
        store_batch(conn, parse_batch(orjson.dumps(body), "json"))
        compute(conn, now)
    return engine


@pytest.fixture(scope="module")
def server(city, db_url, tmp_path_factory):
    with serve_app(db_url, env={"CIM_HOME": str(tmp_path_factory.mktemp("home"))}) as base:
        yield base


def test_dashboard_page_and_assets_are_served(server):
    _needs_maplibre()
    page = httpx.get(f"{server}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="((?:dashboard|viewer)/[^"]+)"', page.text)
    assert any(a.endswith("dashboard.js") for a in assets) and any(a.endswith("maplibre-gl.css") for a in assets)
    for asset in assets:
        r = httpx.get(f"{server}/{asset}")
        assert r.status_code == 200 and r.content, asset
    assert httpx.get(f"{server}/viewer/lib/maplibre/maplibre-gl.mjs").status_code == 200  # imported by the page
    assert "https://" not in page.text  # no CDN


#: true once the page shows, for every street, the value the API answered, the six dimensions with the
#: API's worst indicators, the API's active alerts and newest cases, and the map has drawn the streets
SHOWS_THE_API = """(() => {
  const d = window.cimDashboard, m = window.cimMap, want = WANT;
  if (!d || !d.ready || !m || !m.loaded()) return false;
  const rows = [...document.querySelectorAll('#areas tbody tr')];
  if (rows.length !== Object.keys(want.values).length) return false;
  for (const r of rows) {
    const v = want.values[r.dataset.area];
    if (!v || Math.abs(parseFloat(r.dataset.value) - v[0]) > 1e-9 || r.dataset.status !== v[1]) return false;
    if (r.cells[1].textContent !== Number(v[0]).toFixed(2)) return false;
  }
  const cards = [...document.querySelectorAll('#dimensions .dimension')];
  if (JSON.stringify(cards.map(c => c.dataset.dimension)) !== JSON.stringify(want.dimensions)) return false;
  const worst = cards.map(c => [...c.querySelectorAll('li')].map(li => li.dataset.indicator));
  if (JSON.stringify(worst) !== JSON.stringify(want.worst)) return false;
  const alerts = [...document.querySelectorAll('#alerts li[data-alert]')].map(li => +li.dataset.alert);
  const cases = [...document.querySelectorAll('#cases li[data-case]')].map(li => +li.dataset.case);
  if (JSON.stringify(alerts) !== JSON.stringify(want.alerts) || JSON.stringify(cases) !== JSON.stringify(want.cases)) return false;
  const drawn = m.queryRenderedFeatures({layers: ['vitals-street']});
  return drawn.length > 0 && drawn.some(f => f.properties.code in want.values);
})()"""


def test_dashboard_shows_what_the_api_answers_in_a_browser(server, tmp_path):
    _needs_maplibre()
    values = httpx.get(f"{server}/vitals", params={"level": "street", "indicator": INDICATOR}).json()["values"]
    summary = httpx.get(f"{server}/vitals/summary").json()
    alerts = httpx.get(f"{server}/alerts", params={"state": "active", "limit": 20}).json()["alerts"]
    cases = httpx.get(f"{server}/cases", params={"limit": 10}).json()["cases"]
    assert len(values) >= 3 and sum(v["status"] == "red" for v in values) >= 1  # a street in alarm
    assert len(alerts) == 3 and len(cases) == 2  # two alarms opened two cases; the warning opened none
    want = {"values": {v["area_code"]: [v["value"], v["status"]] for v in values},
            "dimensions": [d["dimension"] for d in summary["dimensions"]],
            "worst": [[w["indicator"] for w in d["worst"]] for d in summary["dimensions"]],
            "alerts": [a["id"] for a in alerts], "cases": [c["id"] for c in cases]}
    assert len(want["dimensions"]) == 6 and any(want["worst"])
    shot = tmp_path / "dashboard.png"
    result = _browser(f"{server}/dashboard?level=street&indicator={INDICATOR}",
                      SHOWS_THE_API.replace("WANT", json.dumps(want)), shot)
    assert result["ok"], result
    assert not result["errors"], result["errors"]
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
