"""/viewer: the page and every asset it names are served; with Chromium present, the page really
renders the 3D tiles and the 2D vector tiles in a headless browser (driven over the DevTools
protocol by a small node script) and a screenshot is kept for a person to look at."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import sqlalchemy as sa

from tests.conftest import PROJECT, missing_tool

X0, Y0 = 642900.0, 3458000.0


@pytest.fixture(scope="module")
def city(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO buildings (source_id, name, height, geom) VALUES ('b1', '测试楼', 60, "
                             "ST_GeomFromText(:g, 4549))"),
                     {"g": f"MULTIPOLYGON Z ((({X0} {Y0} 0, {X0 + 40} {Y0} 0, {X0 + 40} {Y0 + 30} 0, "
                           f"{X0} {Y0 + 30} 0, {X0} {Y0} 0)))"})
        conn.execute(sa.text("INSERT INTO grids (source_id, grid_code, name, geom) VALUES ('g1', '310101002001', "
                             "'外滩网格', ST_GeomFromText(:g, 4549))"),
                     {"g": f"MULTIPOLYGON Z ((({X0 - 200} {Y0 - 200} 0, {X0 + 200} {Y0 - 200} 0, "
                           f"{X0 + 200} {Y0 + 200} 0, {X0 - 200} {Y0 + 200} 0, {X0 - 200} {Y0 - 200} 0)))"})
        conn.execute(sa.text("INSERT INTO parts (source_id, object_code, part_class, part_subclass, geom) VALUES "
                             "('p1', '3101010101000001', '01', '0101', ST_GeomFromText(:g, 4549))"),
                     {"g": f"POINT Z ({X0 - 10} {Y0 - 10} 0)"})
        conn.execute(sa.text("UPDATE layers SET version = version + 1 WHERE table_name IN ('buildings', 'grids', 'parts')"))
    from cases.intake import CaseReport, intake
    from cases.lifecycle import Action, act

    with engine.begin() as conn:  # an open case in the grid (no chain there: registered, manual queue)
        case = intake(conn, CaseReport("grid_patrol", "道路破损", "路面龟裂", x=X0 + 5, y=Y0 + 5, crs="EPSG:4549")).case
        act(conn, case.id, Action("comment", "巡查员", "reporter", "裂缝约两米"))
    return engine


@pytest.fixture(scope="module")
def client(city):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(city)) as c:
        yield c


def _needs_libraries() -> None:
    if not (PROJECT / "node_modules" / "cesium" / "Build" / "Cesium").is_dir():
        missing_tool("node_modules/cesium missing: run 'npm ci' at the repository root")


def test_viewer_page_and_assets_are_served(client):
    _needs_libraries()
    page = client.get("/viewer")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(viewer/[^"]+)"', page.text)
    assert any(a.endswith("Cesium.js") for a in assets) and any(a.endswith("viewer.js") for a in assets)
    for asset in assets:
        r = client.get("/" + asset)
        assert r.status_code == 200, asset
        assert r.content, asset
    script = client.get("/viewer/static/viewer.js").text
    # the module the 2D tab imports, the Cesium workers and the 3D/2D endpoints the page uses
    assert client.get("/viewer/lib/maplibre/maplibre-gl.mjs").headers["content-type"].startswith("text/javascript")
    assert client.get("/viewer/lib/cesium/Workers/createVerticesFromHeightmap.js").status_code == 200
    for layer in ("buildings", "pipelines", "parts"):
        assert f'"{layer}"' in script
        assert client.get(f"/3dtiles/{layer}/tileset.json").status_code == 200
    for layer in ("grids", "streets", "parts"):
        assert client.get(f"/collections/{layer}/tiles/WebMercatorQuad/tilejson.json").status_code == 200
    assert "https://" not in client.get("/viewer").text  # no CDN


# --- in a real browser --------------------------------------------------------------------------

CDP_JS = r"""
// node --experimental-websocket cdp.js PORT URL OUT.png TIMEOUT_MS CONDITION
const [port, url, out, timeoutMs, cond] = process.argv.slice(2);
const fs = require('fs');
(async () => {
  let page;
  // Chromium answers /json/list before its first page is listed: wait for the page too, not only for the port
  // (up to a minute: a busy 2-core CI machine starts the browser slowly)
  for (let i = 0; i < 300 && !page; i++) {
    try { page = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()).find(t => t.type === 'page'); }
    catch (e) { }
    if (!page) await new Promise(r => setTimeout(r, 200));
  }
  if (!page) { console.error('headless Chromium listed no page on port ' + port + ' within a minute'); process.exit(3); }
  const ws = new WebSocket(page.webSocketDebuggerUrl);
  let id = 0; const pending = new Map(); const errors = [];
  const send = (method, params = {}) => new Promise(res => {
    const i = ++id; pending.set(i, res); ws.send(JSON.stringify({id: i, method, params})); });
  ws.onmessage = (m) => { const d = JSON.parse(m.data);
    if (d.id && pending.has(d.id)) { pending.get(d.id)(d.result || d.error); pending.delete(d.id); }
    if (d.method === 'Runtime.exceptionThrown') errors.push(JSON.stringify(d.params.exceptionDetails).slice(0, 300));
    // console.error() of the page's own scripts counts as an error too ("no console errors")
    if (d.method === 'Runtime.consoleAPICalled' && d.params.type === 'error')
      errors.push('console.error: ' + JSON.stringify(d.params.args.map(a => a.value ?? a.description)).slice(0, 300));
  };
  await new Promise(r => ws.onopen = r);
  await send('Runtime.enable'); await send('Page.enable');
  await send('Emulation.setDeviceMetricsOverride', {width: 1280, height: 800, deviceScaleFactor: 1, mobile: false});
  await send('Page.navigate', {url});
  const start = Date.now(); let ok = false;
  while (Date.now() - start < +timeoutMs && !ok) {
    await new Promise(r => setTimeout(r, 500));
    const r = await send('Runtime.evaluate', {expression: cond, returnByValue: true});
    // a condition answers a string when it has found something wrong (e.g. a broken tile): no use waiting on
    if (r.result && typeof r.result.value === 'string') { errors.push('condition: ' + r.result.value); break; }
    ok = !!(r.result && r.result.value === true);
  }
  const st = await send('Runtime.evaluate', {expression: 'document.getElementById("status").textContent', returnByValue: true});
  const shot = await send('Page.captureScreenshot', {format: 'png'});
  fs.writeFileSync(out, Buffer.from(shot.data, 'base64'));
  console.log(JSON.stringify({ok, status: st.result.value, errors, ms: Date.now() - start}));
  ws.close(); process.exit(0);
})().catch(e => { console.error(e); process.exit(2); });
"""
#: true once the test building is drawn where it should be and picking it yields its metadata
PICK_BUILDING = """(() => {
  const v = window.cimViewer; if (!window.cimReady || !v) return false;
  v.scene.requestRender();
  const at = Cesium.SceneTransforms.worldToWindowCoordinates(v.scene, Cesium.Cartesian3.fromDegrees(LON, LAT, 30));
  if (!at) return false;
  const f = v.scene.pick(at);
  return !!(f && f.getProperty && f.getProperty('name') === '测试楼' && f.getProperty('height') === 60);
})()"""
MAP_IDLE = "document.getElementById('status').textContent === '2D: grids, streets, parts, cases'"
#: true once an open case is drawn and a click on it has shown its timeline (report, register, …)
CASE_TIMELINE = """(() => {
  const m = window.cimMap; if (!m || !m.loaded()) return false;
  const hits = m.queryRenderedFeatures({layers: ['cases-open']}); if (!hits.length) return false;
  if (!window.caseClicked) {
    const p = m.project(hits[0].geometry.coordinates);
    m.fire('click', {point: p, lngLat: m.unproject(p)}); window.caseClicked = true; return false;
  }
  const items = [...document.querySelectorAll('#case-timeline li')].map(li => li.textContent);
  return !document.getElementById('case-panel').hidden && items.length >= 3
    && items[0].includes('report') && items.some(t => t.includes('裂缝约两米'))
    && document.getElementById('case-title').textContent.includes('registered');
})()"""


#: true once a part is drawn and a click on it has shown its object code, which its tile carries as the feature id
#: (tiles.mvt.CODE_IDS), not as a property. Other tests' features share the map (cases, devices, scenario layers,
#: other parts), so the click goes where a part is the topmost feature, as the page's own click handler sees it, and
#: only once the map stands still; the panel must show that part's own code. Until it does the click is repeated:
#: a busy machine may still be loading tiles or easing the camera when the first one lands
PART_CODE = """(() => {
  const m = window.cimMap; if (!m || !m.loaded() || m.isMoving()) return false;
  const rows = [...document.querySelectorAll('#info-table tr')].map(tr => tr.textContent);
  if (window.partCode && !document.getElementById('info').hidden && rows.includes('object_code' + window.partCode))
    return true;
  for (const f of m.queryRenderedFeatures({layers: ['parts-circle']})) {
    if (f.properties.object_code !== undefined) return 'a part tile carries object_code as a property';
    if (!/^31[0-9]{14}$/.test(String(f.id))) continue;
    const p = m.project(f.geometry.coordinates);
    const top = m.queryRenderedFeatures(p)[0];
    if (!top || top.sourceLayer !== 'parts' || top.id !== f.id) continue;
    window.partCode = String(f.id);
    m.fire('click', {point: p, lngLat: m.unproject(p)});
    return false;
  }
  return false;
})()"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(city, db_url, tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "CIM_DATABASE_URL": db_url, "CIM_HOME": str(tmp_path_factory.mktemp("home"))}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.asgi:app", "--port", str(port)], cwd=PROJECT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _browser(url: str, condition: str, shot, timeout_ms: int = 90_000) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    node = shutil.which("node")
    if not chromium or not node:
        missing_tool("chromium or node not installed: the in-browser check is skipped")
    work = shot.parent
    script = work / "cdp.js"
    script.write_text(CDP_JS)
    port = _free_port()
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={work / 'profile'}",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--remote-debugging-port={port}",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = subprocess.run([node, "--experimental-websocket", str(script), str(port), url, str(shot),
                               str(timeout_ms), condition], capture_output=True, text=True,
                              timeout=timeout_ms / 1000 + 120)  # + the wait for the browser
    finally:
        browser.terminate()
        browser.wait(10)
    if "WebSocket is not defined" in proc.stderr:
        missing_tool("this node has no WebSocket client (needs node >= 20.10)")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_viewer_renders_3d_in_a_browser(server, tmp_path):
    _needs_libraries()
    shot = tmp_path / "viewer-3d.png"
    from cim.crs import transform_coords

    lon, lat, _ = transform_coords(X0 + 20, Y0 + 15, None, 4549, 4326)
    condition = PICK_BUILDING.replace("LON", f"{lon:.7f}").replace("LAT", f"{lat:.7f}")
    result = _browser(f"{server}/viewer?at={lon:.6f},{lat:.6f},400", condition, shot)
    assert result["ok"], result
    assert not result["errors"], result["errors"]
    assert set(result["status"].removeprefix("3D: ").split(", ")) == {"buildings", "pipelines", "parts"}
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_viewer_renders_2d_in_a_browser(server, tmp_path):
    _needs_libraries()
    shot = tmp_path / "viewer-2d.png"
    result = _browser(f"{server}/viewer#2d", MAP_IDLE, shot)
    assert result["ok"], result
    assert not result["errors"], result["errors"]
    print(f"screenshot: {shot}")


def test_viewer_cases_panel_in_a_browser(server, tmp_path):
    _needs_libraries()
    shot = tmp_path / "viewer-cases.png"
    result = _browser(f"{server}/viewer#cases", CASE_TIMELINE, shot)
    assert result["ok"], result
    assert not result["errors"], result["errors"]
    print(f"screenshot: {shot}")


def test_viewer_shows_a_parts_object_code_on_click_in_a_browser(server, tmp_path):
    _needs_libraries()
    shot = tmp_path / "viewer-part.png"
    result = _browser(f"{server}/viewer#2d", PART_CODE, shot)
    assert result["ok"], result
    assert not result["errors"], result["errors"]
