"""The water-logging scenario's sample data for the sample city (徐汇), made from the committed
sample files so it fits them: ``python -m scenarios.flood.sample_data [--out DIR]`` rewrites
``data_samples/flood/``. Deterministic: the same sample city gives byte-identical files.

* ``compounds.geojson`` — one residential compound (小区) per lane of the address sample that names
  its compound: the hull of the lane's doors, 20 m around, minus the compounds made before it.
* ``points.csv`` — monitoring points (the sample's 水位计, each with its alarm depth and plan) and
  ponding-prone points (易积水点) at road junctions, two of them underpasses (下立交).
* ``resource_devices.geojson`` — the on-board GPS unit of each pump truck and team (an IoT device
  measuring ``lon``/``lat``, so positions arrive as readings); ``resources.csv`` — the trucks and
  teams, with their start position.
* ``manifest.json`` — what ``cim scenarios flood load-samples`` loads, in order (the roads are the
  sample city's ``xuhui/roads.geojson``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyproj
import shapely
from shapely.geometry import MultiPolygon, mapping, shape

from cim.crs.offsets import gcj02_to_wgs84

ROOT = Path(__file__).resolve().parents[2] / "data_samples"
SEED = 310104_14
TO_PROJ = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:4549", always_xy=True).transform
TO_GEO = pyproj.Transformer.from_crs("EPSG:4549", "EPSG:4326", always_xy=True).transform


def transform(fn, geom):  # noqa: ANN001, ANN201
    return shapely.transform(geom, lambda x, y: fn(x, y), interleaved=False)
COMPOUND_MARGIN_M = 20.0
TRUCKS, TEAMS = 40, 4

PLANS = {
    "道路": "一级响应: 区水务局排水所派泵车强排, 交警设置警示绕行; 街道组织沿线小区防汛队巡查",
    "下立交": "下立交积水超过 15 cm 即封闭: 交警封道, 泵站开泵, 泵车就位强排, 水退后复核开放",
    "雨水井": "雨水井水位超警: 排水所检查泵站与管道, 清捞井口, 必要时调泵车",
}


def _round(coords, nd=7):  # noqa: ANN001, ANN202
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
        return [round(float(c), nd) for c in coords]
    return [_round(c, nd) for c in coords]


def _feature_collection(name: str, features: list[dict]) -> str:
    lines = ['{"type":"FeatureCollection","name":"%s","features":[' % name]
    for i, f in enumerate(features):
        lines.append(json.dumps(f, ensure_ascii=False, separators=(",", ":")) + ("," if i < len(features) - 1 else ""))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def compounds(samples: Path) -> list[dict]:
    lanes: dict[str, list] = defaultdict(list)
    with open(samples / "xuhui" / "addresses_gcj02.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["compound"]:
                lanes[r["compound"]].append(r)
    made: list = []
    out = []
    for n, name in enumerate(sorted(lanes, key=lambda k: lanes[k][0]["source_id"]), start=1):
        rows = lanes[name]
        lon, lat = gcj02_to_wgs84(np.array([float(r["lon"]) for r in rows]), np.array([float(r["lat"]) for r in rows]))
        xs, ys = TO_PROJ(lon, lat)
        hull = shapely.MultiPoint(list(zip(xs, ys))).convex_hull.buffer(COMPOUND_MARGIN_M, quad_segs=4)
        for other in made:
            if hull.intersects(other):
                hull = hull.difference(other)
        hull = shapely.set_precision(hull, 0.01)
        polys = [p for p in getattr(hull, "geoms", [hull]) if p.geom_type == "Polygon" and p.area > 100.0]
        if not polys:
            continue
        geom = MultiPolygon(polys)
        made.append(geom)
        first = rows[0]
        out.append({"type": "Feature", "properties": {
            "source_id": f"XQ-{n:04d}", "name": name, "address": f"{first['road']}{first['lane']}弄",
            "households": 40 * len(rows), "street": first["street"]},
            "geometry": {"type": "MultiPolygon", "coordinates": _round(mapping(transform(TO_GEO, geom))["coordinates"])}})
    return out


def _roads(samples: Path) -> list[tuple[str, shapely.LineString]]:
    data = json.loads((samples / "xuhui" / "roads.geojson").read_text(encoding="utf-8"))
    return [(f["properties"]["name"], transform(TO_PROJ, shape(f["geometry"]))) for f in data["features"]]


def points(samples: Path) -> list[list]:
    rows = []
    devices = json.loads((samples / "xuhui" / "iot_devices.geojson").read_text(encoding="utf-8"))["features"]
    n = 0
    for d in devices:
        p = d["properties"]
        if p["device_type"] != "水位计":
            continue
        alarm = next(q["alarm_high"] for q in json.loads(p["quantities"]) if q["quantity"] == "water_level")
        kind = "道路" if not p["linked_feature"] else "雨水井"
        n += 1
        lon, lat = d["geometry"]["coordinates"]
        rows.append([f"JK-{n:03d}", p["name"].replace("水位计", "监测点"), "monitoring", kind, p["source_id"],
                     alarm, 300 if kind == "道路" else 200, PLANS[kind], round(lon, 7), round(lat, 7)])
    roads = _roads(samples)
    junctions = []
    for i in range(len(roads)):
        for j in range(i + 1, len(roads)):
            x = roads[i][1].intersection(roads[j][1])
            for q in getattr(x, "geoms", [x]):
                if q.geom_type == "Point":
                    junctions.append((roads[i][0], roads[j][0], q))
    rng = np.random.default_rng(SEED)
    for m, idx in enumerate(sorted(rng.choice(len(junctions), size=min(12, len(junctions)), replace=False)), 1):
        a, b, q = junctions[int(idx)]
        kind = "下立交" if m in (3, 8) else "道路"
        lon, lat = TO_GEO(q.x, q.y)
        rows.append([f"YJS-{m:03d}", f"{a}{b}{'下立交' if kind == '下立交' else '路口'}", "ponding_prone", kind, "",
                     "", 300, PLANS[kind], round(lon, 7), round(lat, 7)])
    return rows


def gps_device(device: str, name: str, resource: str, lon: float, lat: float) -> dict:
    """The GeoJSON feature of a resource's GPS device: its positions arrive as lon/lat readings."""
    return {"type": "Feature", "properties": {
        "source_id": device, "device_type": "车载GPS", "name": name,
        "quantities": json.dumps([{"quantity": "lon", "unit": "deg"}, {"quantity": "lat", "unit": "deg"}]),
        "linked_feature": resource, "z": 0.0},
        "geometry": {"type": "Point", "coordinates": [round(lon, 7), round(lat, 7)]}}


def resources(samples: Path) -> tuple[list[dict], list[list]]:
    roads = _roads(samples)
    rng = np.random.default_rng(SEED + 1)
    devices, rows = [], []
    teams = ["排水所一队", "排水所二队", "排水所三队", "应急抢险队"]
    for n in range(1, TRUCKS + TEAMS + 1):
        name, line = roads[int(rng.integers(len(roads)))]
        q = line.interpolate(float(rng.uniform(0.1, 0.9)), normalized=True)
        lon, lat = TO_GEO(q.x, q.y)
        truck = n <= TRUCKS
        code = f"BC-{n:03d}" if truck else f"DW-{n - TRUCKS:03d}"
        device = f"GPS-{code}"
        label = f"{'泵车' if truck else '抢险队'}{code[-3:]}"
        devices.append(gps_device(device, f"{label}车载GPS", code, lon, lat))
        rows.append([code, "pump_truck" if truck else "team", label, teams[(n - 1) % 4],
                     [300, 600, 1000][n % 3] if truck else "", device, round(lon, 7), round(lat, 7), name])
    return devices, rows


MANIFEST = [
    {"layer": "roads", "path": "../xuhui/roads.geojson", "crs": "EPSG:4326"},
    {"layer": "compounds", "path": "compounds.geojson", "crs": "EPSG:4326"},
    {"layer": "resource-devices", "path": "resource_devices.geojson", "crs": "EPSG:4326"},
    {"layer": "points", "path": "points.csv", "crs": "EPSG:4326"},
    {"layer": "resources", "path": "resources.csv", "crs": "EPSG:4326"},
]


def generate(samples: Path = ROOT, out: Path | None = None) -> dict[str, int]:
    out = out or samples / "flood"
    out.mkdir(parents=True, exist_ok=True)
    comp = compounds(samples)
    (out / "compounds.geojson").write_text(_feature_collection("compounds", comp), encoding="utf-8")
    pts = points(samples)
    (out / "points.csv").write_text(_csv(["code", "name", "kind", "location_type", "device_id", "alarm_m",
                                          "radius_m", "plan", "lon", "lat"], pts), encoding="utf-8")
    devices, res = resources(samples)
    (out / "resource_devices.geojson").write_text(_feature_collection("resource_devices", devices), encoding="utf-8")
    (out / "resources.csv").write_text(_csv(["code", "kind", "name", "team", "capacity_m3h", "device_id", "lon",
                                             "lat", "road"], res), encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps(MANIFEST, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return {"compounds": len(comp), "points": len(pts), "resources": len(res)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default data_samples/flood)")
    args = parser.parse_args(argv)
    print(generate(ROOT, args.out))


if __name__ == "__main__":
    main()
