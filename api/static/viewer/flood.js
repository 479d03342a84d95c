// 防汛 water-logging: the live flood layer on the 2D map — ponding areas of open responses, the compounds
// in them, and the pump trucks and teams at their latest GPS fix (red: dispatched, cyan: available) — refreshed every 15 s
// from /scenarios/flood/layer (GeoJSON). Added to the map viewer.js makes, once it exists.
const LAYER_URL = new URL("scenarios/flood/layer", new URL(".", document.baseURI)).href;
const kind = ["get", "kind"];
const STYLES = [
  {id: "flood-area", type: "fill", filter: ["==", kind, "area"], paint: {"fill-color": "#1e90ff", "fill-opacity": 0.25}},
  {id: "flood-area-line", type: "line", filter: ["==", kind, "area"], paint: {"line-color": "#4fb3ff", "line-width": 2}},
  {id: "flood-compound", type: "fill", filter: ["==", kind, "compound"],
   paint: {"fill-color": "#ff7f0e", "fill-opacity": 0.5, "fill-outline-color": "#ffd0a0"}},
  {id: "flood-truck", type: "circle", filter: ["in", kind, ["literal", ["pump_truck", "team"]]],
   paint: {"circle-radius": ["match", kind, "team", 5, 7], "circle-stroke-color": "#0b1a26", "circle-stroke-width": 2,
           "circle-color": ["match", ["get", "status"], "dispatched", "#ff3030", "available", "#00d5ff", "#8a8a8a"]}},
];

function attach(map) {
  map.addSource("flood", {type: "geojson", data: LAYER_URL});
  for (const style of STYLES) map.addLayer({...style, source: "flood"});
  setInterval(() => { if (map.getSource("flood")) map.getSource("flood").setData(LAYER_URL); }, 15000);
  document.getElementById("layers-2d").addEventListener("change", (ev) => {
    if (ev.target.name !== "flood") return;
    for (const style of STYLES) map.setLayoutProperty(style.id, "visibility", ev.target.checked ? "visible" : "none");
  });
}

const waitForMap = setInterval(() => {
  const map = window.cimMap;
  if (!map) return;
  clearInterval(waitForMap);
  if (map.isStyleLoaded()) attach(map); else map.once("load", () => attach(map));
}, 300);
