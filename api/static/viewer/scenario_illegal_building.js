// 违法建筑 illegal construction on the 2D map (GET scenarios/illegal-building/layer, GeoJSON): the grids of the
// latest month shaded by their new spots (a hot grid — significant against its own baseline — ringed red), the
// illegal-structures layer coloured by status, and the clue spots still being verified; a click shows status and case.
const STATUS_COLOURS = {under_construction: "#ff3030", existing: "#ff8c00", rechecking: "#b45ac8",
                        demolished: "#8a8a8a", legalised: "#3cc83c"};
const kind = ["get", "kind"];
const statusColour = ["match", ["get", "status"], ...Object.entries(STATUS_COLOURS).flat(), "#969696"];
const STYLES = [
  {id: "ib-hotspot-fill", type: "fill", filter: ["==", kind, "hotspot"],
   paint: {"fill-color": ["interpolate", ["linear"], ["get", "count"], 1, "#fde0c5", 3, "#f59e72", 6, "#d7301f"],
           "fill-opacity": 0.45}},
  {id: "ib-hotspot-line", type: "line", filter: ["==", kind, "hotspot"],
   paint: {"line-color": ["case", ["==", ["get", "hot"], true], "#ff2020", "#f5b08a"],
           "line-width": ["case", ["==", ["get", "hot"], true], 3, 1]}},
  {id: "ib-structure-fill", type: "fill", filter: ["all", ["==", kind, "structure"], ["!=", ["geometry-type"], "Point"]],
   paint: {"fill-color": statusColour, "fill-opacity": 0.8}},
  {id: "ib-structure-line", type: "line", filter: ["all", ["==", kind, "structure"], ["!=", ["geometry-type"], "Point"]],
   paint: {"line-color": statusColour, "line-width": 2}},
  // a structure a case added from a point clue (no change polygon) is that point; a polygon, a few metres across,
  // vanishes at city scale, so it gets a marker too, faded out once the polygon itself is big enough to see
  {id: "ib-structure-point", type: "circle", filter: ["all", ["==", kind, "structure"], ["==", ["geometry-type"], "Point"]],
   paint: {"circle-radius": 6, "circle-color": statusColour, "circle-stroke-color": "#ffffff", "circle-stroke-width": 1,
           "circle-opacity": ["interpolate", ["linear"], ["zoom"], 15, 1, 17, ["case", ["==", ["get", "marker"], true], 0, 1]],
           "circle-stroke-opacity": ["interpolate", ["linear"], ["zoom"], 15, 1, 17, ["case", ["==", ["get", "marker"], true], 0, 1]]}},
  {id: "ib-spot", type: "circle", filter: ["==", kind, "spot"],
   paint: {"circle-radius": ["min", 10, ["+", 4, ["get", "clues"]]], "circle-color": "#ffe14d",
           "circle-stroke-color": "#7a2e00", "circle-stroke-width": 2}},
];
const CLICKABLE = ["ib-spot", "ib-structure-point", "ib-structure-fill", "ib-hotspot-fill"];

// the middle of a polygon's bounding box: where its marker goes
function middle(geometry) {
  const xs = [], ys = [];
  const walk = (c) => { if (typeof c[0] === "number") { xs.push(c[0]); ys.push(c[1]); } else c.forEach(walk); };
  walk(geometry.coordinates);
  return [(Math.min(...xs) + Math.max(...xs)) / 2, (Math.min(...ys) + Math.max(...ys)) / 2];
}

export async function addIllegalBuildingLayer(map, api, showInfo) {
  const r = await fetch(new URL("scenarios/illegal-building/layer", api)).catch(() => null);
  if (!r || !r.ok) { console.warn("no illegal-building layer:", r && r.status); return; }
  const data = await r.json();
  const markers = [];
  for (const f of data.features) {  // arrays travel through MapLibre as text: keep the popup's fields flat
    if (Array.isArray(f.properties.case_ids)) f.properties.case_ids = f.properties.case_ids.join(", ");
    if (f.properties.kind === "structure" && f.geometry && f.geometry.type !== "Point") {
      markers.push({type: "Feature", geometry: {type: "Point", coordinates: middle(f.geometry)},
                    properties: {...f.properties, marker: true}});
    }
  }
  data.features.push(...markers);
  map.addSource("illegal-building", {type: "geojson", data});
  for (const style of STYLES) map.addLayer({...style, source: "illegal-building"});
  map.on("click", (e) => {
    const hit = map.queryRenderedFeatures(e.point, {layers: CLICKABLE})[0];
    if (!hit) return;
    const p = hit.properties;
    if (p.kind === "spot") {
      showInfo(`违建线索 clue ${p.clue_id}`, {case_id: p.case_id, case_status: p.case_status, clues: p.clues,
        channel: p.channel, external_id: p.external_id, reported_at: p.reported_at, grid_code: p.grid_code});
    } else if (p.kind === "structure") {
      showInfo(`违法建筑 ${p.code}`, {status: p.status, case_ids: p.case_ids, source: p.source, area_m2: p.area_m2,
        found_at: p.found_at, certificate_no: p.certificate_no, grid_code: p.grid_code});
    } else {
      showInfo(`违建热点 ${p.grid_code} · ${p.month}`, {spots: p.count, baseline: p.baseline, p_value: p.p_value,
        hot: p.hot, street_code: p.street_code});
    }
  });
  document.getElementById("layers-2d").addEventListener("change", (ev) => {
    if (ev.target.name !== "illegal-building") return;
    for (const s of STYLES) map.setLayoutProperty(s.id, "visibility", ev.target.checked ? "visible" : "none");
  });
}
