// Curtain-wall risk layer of the 2D map: the buildings of the ranking (GET scenarios/curtain-wall/ranking,
// f=geojson) coloured by their risk score, low → high; a click shows the score, confidence and the reasons.
const RISK_COLOUR = ["interpolate", ["linear"], ["get", "score"], 0, "#3cc83c", 35, "#f2c14e", 55, "#ff7a1a", 80, "#e0202a"];
const LAYERS = ["curtain-wall-risk-fill", "curtain-wall-risk-line"];

export async function addCurtainWallLayer(map, api, showInfo) {
  const url = new URL("scenarios/curtain-wall/ranking?f=geojson&limit=50000", api).href;
  const r = await fetch(url).catch(() => null);
  if (!r || !r.ok) { console.warn("no curtain-wall ranking:", r && r.status); return; }
  const data = await r.json();
  // reasons and other nested properties travel as text through MapLibre: keep what the popup needs flat
  for (const f of data.features) {
    const top = (f.properties.reasons || []).filter((x) => !x.missing && x.contribution > 0).slice(0, 4);
    f.properties.top_reasons = top.map((x) => `${x.factor}=${x.value} +${x.contribution}`).join("; ");
    f.properties.unknown = (f.properties.reasons || []).filter((x) => x.missing).map((x) => x.factor).join(", ");
    delete f.properties.reasons;
  }
  map.addSource("curtain-wall-risk", {type: "geojson", data});
  map.addLayer({id: LAYERS[0], type: "fill", source: "curtain-wall-risk",
                paint: {"fill-color": RISK_COLOUR, "fill-opacity": 0.75}});
  map.addLayer({id: LAYERS[1], type: "line", source: "curtain-wall-risk",
                paint: {"line-color": RISK_COLOUR, "line-width": 2}});
  map.on("click", LAYERS[0], (e) => {
    const p = e.features[0].properties;
    showInfo(`幕墙风险 #${p.rank} ${p.name || p.building}`, {
      building: p.building, score: p.score, risk_class: p.risk_class, confidence: p.confidence,
      model_version: p.model_version, reasons: p.top_reasons, unknown: p.unknown, days_overdue: p.days_overdue,
      grid_code: p.grid_code, owner: p.owner});
  });
  document.getElementById("layers-2d").addEventListener("change", (ev) => {
    if (ev.target.name !== "curtain-wall-risk") return;
    for (const id of LAYERS) map.setLayoutProperty(id, "visibility", ev.target.checked ? "visible" : "none");
  });
}
