// CIM viewer: CesiumJS (3D Tiles of buildings, pipelines, parts) and MapLibre GL (vector tiles).
// No imagery, no terrain service and no Cesium ion: a plain globe and the platform's own tiles.
import {addCurtainWallLayer} from "./scenario_curtain_wall.js";
import {addIllegalBuildingLayer} from "./scenario_illegal_building.js";
import {addGroupRentalLayer} from "./scenario_group_rental.js";
const API = new URL(".", document.baseURI);  // the API root (/viewer → /)
const status = document.getElementById("status");
const info = document.getElementById("info");

function showInfo(title, props) {
  document.getElementById("info-title").textContent = title;
  const table = document.getElementById("info-table");
  table.replaceChildren();
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === "" || value === -9999 || key === "geom") continue;
    const row = table.insertRow();
    row.insertCell().textContent = key;
    row.insertCell().textContent = String(value);
  }
  info.hidden = false;
}

// --- 3D ----------------------------------------------------------------------------------------
const viewer = new Cesium.Viewer("cesium", {
  baseLayer: false, baseLayerPicker: false, geocoder: false, timeline: false, animation: false,
  sceneModePicker: false, navigationHelpButton: false, fullscreenButton: false, infoBox: false,
  selectionIndicator: false, homeButton: false, terrainProvider: new Cesium.EllipsoidTerrainProvider(),
  // draw only when something changed: a still 3D view (or the hidden 3D tab) costs no CPU/GPU
  requestRenderMode: true, maximumRenderTimeChange: Infinity,
});
window.cimViewer = viewer;  // for debugging and the screenshot check
const scene = viewer.scene;
scene.globe.baseColor = Cesium.Color.fromCssColorString("#31465a");
scene.globe.showGroundAtmosphere = false;
scene.globe.depthTestAgainstTerrain = true;
scene.skyAtmosphere.show = true;
viewer.cesiumWidget.creditContainer.style.display = "none";

const tilesets = {};
let remaining = 0;
async function addTileset(name) {
  remaining += 1;
  try {
    const ts = await Cesium.Cesium3DTileset.fromUrl(new URL(`3dtiles/${name}/tileset.json`, API).href,
                                                    {maximumScreenSpaceError: 8});
    scene.primitives.add(ts);
    tilesets[name] = ts;
    return ts;
  } catch (err) {
    console.warn(`no 3D tiles for ${name}:`, err);
    return null;
  } finally {
    remaining -= 1;
    if (remaining === 0) status.textContent = `3D: ${Object.keys(tilesets).join(", ") || "no layers"}`;
  }
}

const CURTAIN_STYLE = new Cesium.Cesium3DTileStyle({
  color: {conditions: [["${has_curtain_wall} === true", "color('#4fb3ff', 0.95)"], ["true", "color('#d9d4cc')"]]},
});

const loaded = Promise.all(["buildings", "pipelines", "parts"].map(addTileset)).then(() => {
  const b = tilesets.buildings;
  if (b) b.style = CURTAIN_STYLE;
  const target = b || tilesets.pipelines || tilesets.parts;
  // ?at=lon,lat,range looks at one place (e.g. ?at=121.5011,31.2357,1500 for Lujiazui)
  const at = new URLSearchParams(location.search).get("at");
  if (at) {
    const [lon, lat, range] = at.split(",").map(Number);
    viewer.camera.lookAt(Cesium.Cartesian3.fromDegrees(lon, lat, 0),
                         new Cesium.HeadingPitchRange(0.5, -0.45, range || 1500));
    viewer.camera.lookAtTransform(Cesium.Matrix4.IDENTITY);
  } else if (target) {
    const s = target.boundingSphere;
    viewer.camera.viewBoundingSphere(s, new Cesium.HeadingPitchRange(0.4, -0.55, Math.max(s.radius * 2.2, 400)));
    viewer.camera.lookAtTransform(Cesium.Matrix4.IDENTITY);
  }
  window.cimReady = true;
});

function setUnderground(on) {
  const globe = scene.globe;
  globe.translucency.enabled = on;
  globe.translucency.frontFaceAlpha = on ? 0.3 : 1.0;
  globe.translucency.backFaceAlpha = on ? 0.3 : 1.0;
  // let the camera go below the surface to look at the pipes from underneath
  scene.screenSpaceCameraController.enableCollisionDetection = !on;
  scene.requestRender();
}

document.getElementById("layers-3d").addEventListener("change", (ev) => {
  const {name, checked} = ev.target;
  if (name === "underground") return setUnderground(checked);
  if (name === "curtain" && tilesets.buildings) tilesets.buildings.style = checked ? CURTAIN_STYLE : undefined;
  if (tilesets[name]) tilesets[name].show = checked;
  scene.requestRender();
});

let picked = null;
const handler = new Cesium.ScreenSpaceEventHandler(scene.canvas);
handler.setInputAction((click) => {
  if (picked) { picked.feature.color = picked.color; picked = null; }
  const feature = scene.pick(click.position);
  if (!(feature instanceof Cesium.Cesium3DTileFeature)) { info.hidden = true; return; }
  picked = {feature, color: Cesium.Color.clone(feature.color)};
  feature.color = Cesium.Color.YELLOW;
  scene.requestRender();
  const props = {};
  for (const id of feature.getPropertyIds()) props[id] = feature.getProperty(id);
  showInfo(props.name || props.object_code || props.source_id || "feature", props);
}, Cesium.ScreenSpaceEventType.LEFT_CLICK);

// --- 2D ----------------------------------------------------------------------------------------
let map = null;
const LAYERS_2D = {
  grids: [
    {id: "grids-fill", type: "fill", paint: {"fill-color": "#3fa34d", "fill-opacity": 0.18}},
    {id: "grids-line", type: "line", paint: {"line-color": "#7fd18a", "line-width": 1}},
  ],
  streets: [{id: "streets-line", type: "line", paint: {"line-color": "#f2c14e", "line-width": 2.5}}],
  parts: [{id: "parts-circle", type: "circle", paint: {
    "circle-radius": 4, "circle-stroke-color": "#fff", "circle-stroke-width": 1,
    "circle-color": ["match", ["get", "part_class"], "01", "#1e78ff", "02", "#ffaa00", "03", "#00aa5a",
                     "04", "#3cc83c", "05", "#b45ac8", "#969696"]}}],
};

// cases: open ones coloured by status, an overdue one ringed red; closed ones on request
const CASE_COLOURS = {registered: "#f2c14e", reported: "#f2c14e", dispatched: "#1e78ff", accepted: "#00b3b3",
                      returned: "#b45ac8", handled: "#3cc83c", suspended: "#8a8a8a"};
const CASE_OPEN = Object.keys(CASE_COLOURS);
const caseColour = ["match", ["get", "status"], ...Object.entries(CASE_COLOURS).flat(), "#969696"];
LAYERS_2D.cases = [{id: "cases-open", type: "circle", filter: ["in", ["get", "status"], ["literal", CASE_OPEN]],
  paint: {"circle-radius": 6, "circle-color": caseColour,
          "circle-stroke-color": ["case", ["==", ["get", "overdue"], true], "#ff3030", "#ffffff"],
          "circle-stroke-width": ["case", ["==", ["get", "overdue"], true], 3, 1]}}];
const CASES_CLOSED = {id: "cases-closed", type: "circle", source: "cases", "source-layer": "cases",
  filter: ["!", ["in", ["get", "status"], ["literal", CASE_OPEN]]], layout: {visibility: "none"},
  paint: {"circle-radius": 4, "circle-color": "#5d6b78", "circle-stroke-color": "#c0c8d0", "circle-stroke-width": 1}};
const legend = document.getElementById("case-legend");
for (const [status, colour] of [...Object.entries(CASE_COLOURS).filter(([k]) => k !== "reported"),
                                ["overdue 超期", "transparent"], ["closed 已结案", "#5d6b78"]]) {
  const li = document.createElement("li");
  li.textContent = status;
  li.style.setProperty("--c", colour);
  if (status.startsWith("overdue")) li.style.setProperty("--s", "#ff3030");
  legend.append(li);
}

const casePanel = document.getElementById("case-panel");
// times as the city reads them (the API answers in UTC)
const cityTime = (iso) => new Date(iso).toLocaleString("zh-CN", {timeZone: "Asia/Shanghai", hour12: false});
async function showCase(id) {
  info.hidden = true;
  const r = await fetch(new URL(`cases/${encodeURIComponent(id)}`, API));
  if (!r.ok) { status.textContent = `case ${id}: HTTP ${r.status}`; return; }
  const c = await r.json();
  document.getElementById("case-title").textContent = `案件 #${c.id} · ${c.class_code} · ${c.status}` +
    (c.overdue ? " · 超期 overdue" : "");
  document.getElementById("case-summary").textContent = [c.description, c.address_text, c.department_name,
    c.due_at && `时限 due ${cityTime(c.due_at)}`].filter(Boolean).join(" · ");
  const list = document.getElementById("case-timeline");
  list.replaceChildren();
  for (const e of c.log) {
    const li = document.createElement("li");
    const when = document.createElement("time");
    when.dateTime = e.at;
    when.textContent = cityTime(e.at);
    const move = e.from_status && e.from_status !== e.to_status ? ` ${e.from_status} → ${e.to_status}` : "";
    li.append(when, `${e.action}${move} · ${e.actor} (${e.role})${e.note ? ` — ${e.note}` : ""}`);
    list.append(li);
  }
  casePanel.hidden = false;
}
window.cimShowCase = showCase;

// IoT devices, and the active alerts on them coloured by level (an alarm blinks): the alerts collection's
// current features, re-read every 10 s
const ALERT_COLOURS = {warning: "#ffb000", alarm: "#ff2020"};
function addAlerts(map) {
  map.addSource("iot-devices", {type: "vector",
                                url: new URL("collections/iot-devices/tiles/WebMercatorQuad/tilejson.json", API).href});
  map.addLayer({id: "iot-devices", type: "circle", source: "iot-devices", "source-layer": "iot-devices",
                paint: {"circle-radius": 3, "circle-color": "#8fa3b8", "circle-stroke-color": "#1d2733",
                        "circle-stroke-width": 1}});
  map.addSource("alerts", {type: "geojson", data: {type: "FeatureCollection", features: []}});
  map.addLayer({id: "alerts", type: "circle", source: "alerts", paint: {
    "circle-radius": ["match", ["get", "level"], "alarm", 9, 7],
    "circle-color": ["match", ["get", "level"], "alarm", ALERT_COLOURS.alarm, ALERT_COLOURS.warning],
    "circle-stroke-color": "#ffffff", "circle-stroke-width": 1.5}});
  let alarms = false, bright = true;
  const refresh = async () => {
    const r = await fetch(new URL("collections/alerts/items?limit=1000", API)).catch(() => null);
    if (!r || !r.ok) return;
    const data = await r.json();
    map.getSource("alerts").setData(data);
    alarms = data.features.some((f) => f.properties.level === "alarm");
    window.cimAlerts = data.features.length;
  };
  refresh();
  setInterval(refresh, 10_000);
  setInterval(() => {  // blink the alarms only: a still map costs nothing
    if (!alarms && bright) return;
    bright = !bright || !alarms;
    map.setPaintProperty("alerts", "circle-opacity", ["case", ["==", ["get", "level"], "alarm"], bright ? 1 : 0.2, 1]);
  }, 600);
  document.getElementById("layers-2d").addEventListener("change", (ev) => {
    if (ev.target.name !== "alerts") return;
    for (const id of ["alerts", "iot-devices"]) map.setLayoutProperty(id, "visibility", ev.target.checked ? "visible" : "none");
  });
}

async function showMap() {
  if (map) { map.resize(); return; }
  status.textContent = "2D: loading…";
  const maplibregl = await import("../lib/maplibre/maplibre-gl.mjs");
  status.textContent = "2D: map library loaded";
  const sources = {}, layers = [{id: "background", type: "background", paint: {"background-color": "#1d2733"}}];
  for (const [name, styles] of Object.entries(LAYERS_2D)) {
    sources[name] = {type: "vector",
                     url: new URL(`collections/${name}/tiles/WebMercatorQuad/tilejson.json`, API).href};
    for (const s of styles) layers.push({...s, source: name, "source-layer": name});
  }
  layers.push(CASES_CLOSED);
  map = new maplibregl.Map({container: "map", style: {version: 8, sources, layers}, center: [121.47, 31.23], zoom: 11,
                            attributionControl: false});
  window.cimMap = map;
  map.on("load", () => addAlerts(map));
  map.addControl(new maplibregl.NavigationControl(), "bottom-right");
  map.on("error", (e) => { status.textContent = `2D: ${e.error && e.error.message || e}`; console.warn(e); });
  map.on("idle", () => { status.textContent = `2D: ${Object.keys(LAYERS_2D).join(", ")}`; });
  map.on("load", async () => {
    const tj = await (await fetch(sources.parts.url)).json().catch(() => null);
    if (tj && tj.bounds) map.fitBounds([[tj.bounds[0], tj.bounds[1]], [tj.bounds[2], tj.bounds[3]]], {padding: 40, maxZoom: 16});
    addCurtainWallLayer(map, API, showInfo);
    addIllegalBuildingLayer(map, API, showInfo);
    addGroupRentalLayer(map, API, showInfo);
  });
  map.on("click", (e) => {
    const hits = map.queryRenderedFeatures(e.point);
    if (!hits.length) { info.hidden = true; casePanel.hidden = true; return; }
    const f = hits[0];
    // a map tile's feature id is its fid: a case's number (the tiles leave out source_id, tiles.mvt.BOOKKEEPING)
    if (f.sourceLayer === "cases") { showCase(f.id); return; }
    // the scenario layers' own click handlers show their popups
    if (["curtain-wall-risk", "illegal-building", "group-rental"].includes(f.source)) return;
    casePanel.hidden = true;
    // a part's 16-digit object code travels as its feature id, not as a property (tiles.mvt.CODE_IDS); valid codes
    // begin with a province's code (11–82), so the number is exact, padded only for a code that starts with 0
    const props = f.sourceLayer === "parts" && f.id !== undefined
      ? {object_code: String(f.id).padStart(16, "0"), ...f.properties} : f.properties;
    showInfo(props.name || props.grid_code || props.object_code || f.sourceLayer, props);
  });
  document.getElementById("layers-2d").addEventListener("change", (ev) => {
    if (ev.target.name === "cases-closed") {
      map.setLayoutProperty("cases-closed", "visibility", ev.target.checked ? "visible" : "none");
      return;
    }
    for (const s of LAYERS_2D[ev.target.name] || []) map.setLayoutProperty(s.id, "visibility", ev.target.checked ? "visible" : "none");
  });
}

function selectTab(which) {
  for (const t of ["3d", "2d"]) {
    document.getElementById(`tab-${t}`).setAttribute("aria-selected", String(t === which));
    document.getElementById(`view-${t}`).hidden = t !== which;
  }
  info.hidden = true;
  casePanel.hidden = true;
  if (which === "2d") showMap();
}
document.getElementById("tab-3d").addEventListener("click", () => selectTab("3d"));
document.getElementById("tab-2d").addEventListener("click", () => selectTab("2d"));
if (location.hash === "#2d" || location.hash === "#cases") selectTab("2d");
if (location.hash === "#underground") {
  document.querySelector("#layers-3d [name=underground]").checked = true;
  setUnderground(true);
}
export {loaded};
