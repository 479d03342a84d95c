// 群租 group rental on the 2D map: the addresses the latest scoring run flagged (GET scenarios/group-rental/suspects,
// GeoJSON) coloured by their suspicion score; a click shows the address, score, confidence and the reasons.
const SCORE_COLOUR = ["interpolate", ["linear"], ["get", "score"], 0.5, "#f2c14e", 0.75, "#ff7a1a", 1, "#e0202a"];
const LAYER = "group-rental-suspects";

export async function addGroupRentalLayer(map, api, showInfo) {
  const r = await fetch(new URL("scenarios/group-rental/suspects", api)).catch(() => null);
  if (!r || !r.ok) { console.warn("no group-rental suspects:", r && r.status); return; }
  const data = await r.json();
  for (const f of data.features) {  // lists travel through MapLibre as text: keep the popup's fields flat
    f.properties.reasons = (f.properties.reasons || []).join("; ");
    f.properties.missing = (f.properties.missing || []).join(", ");
    delete f.properties.fired;
  }
  map.addSource("group-rental", {type: "geojson", data});
  map.addLayer({id: LAYER, type: "circle", source: "group-rental",
                paint: {"circle-radius": 7, "circle-color": SCORE_COLOUR,
                        "circle-stroke-color": "#2b0a3d", "circle-stroke-width": 2}});
  map.on("click", LAYER, (e) => {
    const p = e.features[0].properties;
    showInfo(`群租嫌疑 ${p.address}`, {room: p.room, score: p.score, confidence: p.confidence, verdict: p.verdict,
      reasons: p.reasons, missing: p.missing, months: p.months, grid_code: p.grid_code, run_id: p.run_id});
  });
  document.getElementById("layers-2d").addEventListener("change", (ev) => {
    if (ev.target.name !== "group-rental") return;
    map.setLayoutProperty(LAYER, "visibility", ev.target.checked ? "visible" : "none");
  });
}
