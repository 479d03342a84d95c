// City vital signs dashboard: the six dimensions with their worst indicators (GET /vitals/summary), a
// choropleth of one indicator by street or grid (GET /vitals over the platform's vector tiles), live alerts
// (GET /alerts) and the newest cases (GET /cases). Everything from this server; MapLibre from node_modules.
const API = new URL(".", document.baseURI);  // the API root (/dashboard → /)
const status = document.getElementById("status");
const STATUS_COLOURS = {red: "#e0433b", yellow: "#f2c14e", green: "#3fa34d"};
const NO_VALUE = "#3a4a5a";
//: level → the vector-tile collection and the property that carries the area code
const LEVELS = {street: {collection: "streets", key: "code"}, grid: {collection: "grids", key: "grid_code"}};
const params = new URLSearchParams(location.search);
const state = {level: params.get("level") in LEVELS ? params.get("level") : "street", indicator: params.get("indicator"),
               indicators: [], values: [], summary: null, ready: false};
window.cimDashboard = state;

const url = (path, query = {}) => {
  const u = new URL(path, API);
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) u.searchParams.set(k, v);
  return u;
};
async function getJSON(path, query) {
  const r = await fetch(url(path, query));
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}
const cityTime = (iso) => iso ? new Date(iso).toLocaleString("zh-CN", {timeZone: "Asia/Shanghai", hour12: false}) : "";
const fmt = (v) => (v === null || v === undefined) ? "–" : Number(v).toFixed(2);
function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

// --- the six dimensions ------------------------------------------------------------------------------
function renderSummary(summary) {
  const box = document.getElementById("dimensions");
  box.replaceChildren();
  for (const d of summary.dimensions) {
    const card = el("article", {className: "dimension"});
    card.dataset.dimension = d.dimension;
    card.style.setProperty("--c", STATUS_COLOURS[d.status] || NO_VALUE);
    card.append(el("h2", {}, `${d.dimension} `, el("small", {}, d.dimension_en)),
                el("div", {className: "counts"}, `红 ${d.red} · 黄 ${d.yellow} · 绿 ${d.green} / ${d.indicators}`));
    const list = el("ol");
    for (const w of d.worst) {
      const dot = el("span", {className: "dot"});
      dot.style.setProperty("--c", STATUS_COLOURS[w.status] || NO_VALUE);
      const item = el("li", {}, dot, `${w.name_zh} ${fmt(w.value)} ${w.unit}`);
      item.dataset.indicator = w.indicator;
      item.dataset.value = String(w.value);
      item.title = `${w.name_en} (${w.indicator})`;
      item.addEventListener("click", () => selectIndicator(w.indicator));
      list.append(item);
    }
    card.append(list);
    box.append(card);
  }
  document.getElementById("at").textContent = summary.at ? `计算于 ${cityTime(summary.at)}` : "尚未计算 not computed yet";
}

// --- the choropleth ------------------------------------------------------------------------------------
let map = null;
function fillColour(values) {
  const pairs = values.flatMap(v => [v.area_code, STATUS_COLOURS[v.status] || "#7d8fa3"]);
  return pairs.length ? ["match", ["to-string", ["get", LEVELS[state.level].key]], ...pairs, NO_VALUE] : NO_VALUE;
}

function renderAreas(values) {
  const ind = state.indicators.find(i => i.code === state.indicator);
  document.getElementById("areas-title").textContent = ind ? `${ind.name_zh} ${ind.name_en} (${ind.unit})` : "";
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  if (ind && ind.yellow !== null) {
    const worse = ind.direction === "higher_worse" ? "≥" : "≤";
    for (const [s, text] of [["green", "正常"], ["yellow", `${worse} ${ind.yellow}`], ["red", `${worse} ${ind.red}`]]) {
      const dot = el("span", {className: "dot"});
      dot.style.setProperty("--c", STATUS_COLOURS[s]);
      legend.append(el("li", {}, dot, text));
    }
  }
  const body = document.querySelector("#areas tbody");
  body.replaceChildren();
  for (const v of [...values].sort((a, b) => b.value - a.value)) {
    const row = el("tr");
    row.dataset.area = v.area_code;
    row.dataset.value = String(v.value);
    row.dataset.status = v.status || "";
    const dot = el("span", {className: "dot"});
    dot.style.setProperty("--c", STATUS_COLOURS[v.status] || NO_VALUE);
    row.append(el("td", {}, v.area_name || v.area_code), el("td", {className: "value"}, fmt(v.value)),
               el("td", {}, dot, v.status || "–"));
    body.append(row);
  }
}

async function showIndicator() {
  if (!state.indicator) return;
  const answer = await getJSON("vitals", {level: state.level, indicator: state.indicator});
  state.values = answer.values;
  renderAreas(state.values);
  if (map && map.isStyleLoaded()) paintMap();
}

function paintMap() {
  for (const [level, spec] of Object.entries(LEVELS)) {
    map.setLayoutProperty(`vitals-${level}`, "visibility", level === state.level ? "visible" : "none");
    map.setLayoutProperty(`vitals-${level}-line`, "visibility", level === state.level ? "visible" : "none");
  }
  map.setPaintProperty(`vitals-${state.level}`, "fill-color", fillColour(state.values));
}

async function makeMap() {
  const maplibregl = await import(url("viewer/lib/maplibre/maplibre-gl.mjs").href);  // the viewer serves it
  const sources = {}, layers = [{id: "background", type: "background", paint: {"background-color": "#1d2733"}}];
  for (const [level, spec] of Object.entries(LEVELS)) {
    sources[spec.collection] = {type: "vector",
      url: url(`collections/${spec.collection}/tiles/WebMercatorQuad/tilejson.json`).href};
    layers.push({id: `vitals-${level}`, type: "fill", source: spec.collection, "source-layer": spec.collection,
                 layout: {visibility: "none"}, paint: {"fill-color": NO_VALUE, "fill-opacity": 0.65}});
    layers.push({id: `vitals-${level}-line`, type: "line", source: spec.collection, "source-layer": spec.collection,
                 layout: {visibility: "none"}, paint: {"line-color": "#c8d4e0", "line-width": 0.8}});
  }
  map = new maplibregl.Map({container: "map", style: {version: 8, sources, layers}, center: [121.44, 31.17], zoom: 11,
                            attributionControl: false});
  window.cimMap = map;
  map.addControl(new maplibregl.NavigationControl(), "bottom-right");
  map.on("error", (e) => { status.textContent = `map: ${e.error && e.error.message || e}`; console.warn(e); });
  map.on("idle", () => {
    if (state.ready) status.textContent = `${state.level}: ${state.values.length} areas · ${state.indicator}`;
  });
  map.on("click", (e) => {
    const hit = map.queryRenderedFeatures(e.point, {layers: [`vitals-${state.level}`]})[0];
    if (!hit) return;
    const code = String(hit.properties[LEVELS[state.level].key]);
    const row = document.querySelector(`#areas tr[data-area="${CSS.escape(code)}"]`);
    if (row) { row.scrollIntoView({block: "nearest"}); row.style.outline = "2px solid #fff"; setTimeout(() => row.style.outline = "", 1500); }
  });
  await new Promise(resolve => map.on("load", resolve));
  const tj = await getJSON(`collections/${LEVELS.street.collection}/tiles/WebMercatorQuad/tilejson.json`).catch(() => null);
  if (tj && tj.bounds) map.fitBounds([[tj.bounds[0], tj.bounds[1]], [tj.bounds[2], tj.bounds[3]]], {padding: 30, duration: 0});
  paintMap();
}

// --- live alerts and the newest cases -------------------------------------------------------------------
async function renderLive() {
  const [alerts, cases] = await Promise.all([getJSON("alerts", {state: "active", limit: 20}),
                                             getJSON("cases", {limit: 10})]);
  const alertList = document.getElementById("alerts");
  alertList.replaceChildren(...alerts.alerts.map(a => {
    const li = el("li", {className: a.level}, `${a.level === "alarm" ? "报警" : "预警"} ${a.rule_name} · ${a.device_id}` +
                  (a.last_value !== null ? ` = ${a.last_value}` : "") + ` · ${cityTime(a.opened_at)}`);
    li.dataset.alert = a.id;
    return li;
  }));
  if (!alerts.alerts.length) alertList.append(el("li", {}, "无 none"));
  const caseList = document.getElementById("cases");
  caseList.replaceChildren(...cases.cases.map(c => {
    const li = el("li", {}, `#${c.id} ${c.class_name || c.class_code} · ${c.status}${c.overdue ? " · 超期" : ""} · ` +
                  `${c.address_text || c.grid_code || ""} · ${cityTime(c.reported_at)}`);
    li.dataset.case = c.id;
    return li;
  }));
  if (!cases.cases.length) caseList.append(el("li", {}, "无 none"));
}

// --- controls ----------------------------------------------------------------------------------------
function fillIndicatorChoices() {
  const select = document.getElementById("indicator");
  select.replaceChildren(...state.indicators.filter(i => i.levels.includes(state.level)).map(i =>
    el("option", {value: i.code, selected: i.code === state.indicator}, `${i.dimension} · ${i.name_zh}`)));
  if (!state.indicators.some(i => i.code === state.indicator && i.levels.includes(state.level))) {
    state.indicator = select.value || null;
  }
}
async function selectIndicator(code) {
  state.indicator = code;
  fillIndicatorChoices();
  await showIndicator();
}
document.getElementById("indicator").addEventListener("change", (e) => selectIndicator(e.target.value));
document.getElementById("level").addEventListener("change", async (e) => {
  state.level = e.target.value;
  fillIndicatorChoices();
  await showIndicator();
});

async function refresh() {
  state.summary = await getJSON("vitals/summary");
  renderSummary(state.summary);
  await Promise.all([showIndicator(), renderLive()]);
}

async function start() {
  document.getElementById("level").value = state.level;
  state.indicators = (await getJSON("vitals/indicators")).indicators;
  state.summary = await getJSON("vitals/summary");
  renderSummary(state.summary);
  if (!state.indicator) {  // the city's worst rated indicator that is kept at this level
    const worst = state.summary.dimensions.flatMap(d => d.worst).filter(w => w.status)
      .sort((a, b) => ({red: 3, yellow: 2, green: 1}[b.status] - {red: 3, yellow: 2, green: 1}[a.status]));
    const levelled = worst.find(w => state.indicators.some(i => i.code === w.indicator && i.levels.includes(state.level)));
    state.indicator = levelled ? levelled.indicator : null;
  }
  fillIndicatorChoices();
  await Promise.all([showIndicator(), renderLive(), makeMap()]);
  state.ready = true;
  status.textContent = `${state.level}: ${state.values.length} areas · ${state.indicator}`;
  setInterval(() => refresh().catch(e => { status.textContent = String(e); }), 60_000);
}
start().catch(e => { status.textContent = `error: ${e.message || e}`; console.error(e); });
