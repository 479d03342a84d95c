"""The synthetic 徐汇区 sample city in data_samples/: deterministic generator, committed output,
counts, codes and geometric consistency.  Pure file checks (pyogrio / shapely / pyproj), no database."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"
#: the one part-class table: seeds every base, names the sample city's parts
PART_CATALOGUE = Path(__file__).resolve().parents[1] / "cim" / "data" / "part_classes.csv"
GENERATOR = SAMPLES / "generate.py"
DATA = SAMPLES / "xuhui"

STREETS = {
    "310104003": "天平路街道", "310104004": "湖南路街道", "310104007": "斜土路街道", "310104008": "枫林路街道",
    "310104010": "长桥街道", "310104011": "田林街道", "310104012": "虹梅路街道", "310104013": "康健新村街道",
    "310104014": "徐家汇街道", "310104015": "凌云路街道", "310104016": "龙华街道", "310104017": "漕河泾街道",
    "310104103": "华泾镇",
}
# feature counts documented in data_samples/README.md
COUNTS = {
    "district.geojson": 1, "streets.shp": 13, "admin.gpkg:communities": 56, "admin.gpkg:grids": 60,
    "roads.geojson": 31, "addresses_gcj02.csv": 2079, "addresses_full.csv": 50, "buildings.gpkg:buildings": 1500,
    "curtain_walls.csv": 150, "parts.geojson": 5000, "parts_nocode.csv": 300, "pipelines.shp": 172,
    "iot_devices.geojson": 100, "iot_readings.csv": 22170, "responsibility.csv": 1116,
}
MANIFEST_ORDER = ["districts", "streets", "communities", "grids", "responsibility", "addresses", "addresses",
                  "buildings", "curtain-walls", "parts", "parts", "pipelines", "iot-devices", "iot-readings"]
GDAL_FILES = {".gpkg", ".shp", ".shx", ".dbf"}
TO_PROJ = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:4549", always_xy=True)


def _load_generator():
    spec = importlib.util.spec_from_file_location("xuhui_samples_generate", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # keep data_samples/ clean
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = dont_write
    return mod


def _run_generator(out: Path) -> None:
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Two independent generator runs into temporary directories."""
    a, b = tmp_path_factory.mktemp("samples_a"), tmp_path_factory.mktemp("samples_b")
    _run_generator(a)
    _run_generator(b)
    return a, b


def _files(root: Path) -> list[str]:
    files = sorted(str(p.relative_to(root)) for p in (root / "xuhui").rglob("*") if p.is_file())
    return files + ["manifest.json"]


def _layers(path: Path) -> list[str]:
    return [name for name, _ in pyogrio.list_layers(path)]


def _content(path: Path, layer=None):
    """Feature content of a GDAL dataset: attribute columns and geometry WKB, in file order."""
    meta, _, geom, fields = pyogrio.raw.read(path, layer=layer)
    cols = {name: [None if (isinstance(v, float) and np.isnan(v)) else v for v in arr.tolist()]
            for name, arr in zip(meta["fields"], fields)}
    return meta["crs"], meta["geometry_type"], cols, [bytes(g) for g in geom]


def assert_same_dataset(a: Path, b: Path, bytewise_gdal: bool):
    assert _files(a) == _files(b)
    for rel in _files(a):
        pa, pb = a / rel, b / rel
        if pa.suffix in GDAL_FILES and not bytewise_gdal:
            if pa.suffix in (".gpkg", ".shp"):
                assert _layers(pa) == _layers(pb), rel
                for layer in _layers(pa):
                    assert _content(pa, layer) == _content(pb, layer), f"{rel}:{layer}"
            continue
        assert pa.read_bytes() == pb.read_bytes(), rel


def read_csv(name):
    with open(DATA / name, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def read_geojson(name):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def projected(geojson_geom):
    return shapely.transform(shapely.geometry.shape(geojson_geom),
                             lambda c: np.column_stack(TO_PROJ.transform(c[:, 0], c[:, 1])))


@pytest.fixture(scope="module")
def admin():
    streets = pyogrio.read_dataframe(DATA / "streets.shp")
    communities = pyogrio.read_dataframe(DATA / "admin.gpkg", layer="communities")
    grids = pyogrio.read_dataframe(DATA / "admin.gpkg", layer="grids")
    return streets, communities, grids


# --- generator ----------------------------------------------------------------------------------
def test_generator_is_deterministic(fresh):
    a, b = fresh
    assert_same_dataset(a, b, bytewise_gdal=True)  # same machine: even GDAL output is byte-identical


def test_committed_files_match_fresh_generation(fresh):
    a, _ = fresh
    assert_same_dataset(SAMPLES, a, bytewise_gdal=False)


def test_total_size_under_10_mb():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 10 * 1024 * 1024


# --- counts and manifest ------------------------------------------------------------------------
def _count(key: str) -> int:
    name, _, layer = key.partition(":")
    path = DATA / name
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return sum(1 for _ in csv.DictReader(fh))
    if path.suffix == ".geojson":
        return len(read_geojson(name)["features"])
    return pyogrio.read_info(path, layer=layer or None)["features"]


@pytest.mark.parametrize("key", sorted(COUNTS))
def test_counts_as_documented(key):
    assert _count(key) == COUNTS[key]


def test_readme_mentions_every_file():
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for rel in _files(SAMPLES):
        name = Path(rel).name
        if name.endswith((".shx", ".dbf", ".prj", ".cpg")):
            continue
        assert name in readme, name


def _columns(entry) -> list[str]:
    path = SAMPLES / entry["path"]
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return next(csv.reader(fh))
    return list(pyogrio.read_info(path, layer=entry["layer_name"], encoding=entry["encoding"])["fields"])


def test_manifest_entries_point_at_real_columns():
    manifest = json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8"))
    assert isinstance(manifest, list)
    assert [e["layer"] for e in manifest] == MANIFEST_ORDER
    keys = {"layer", "path", "layer_name", "crs", "encoding", "x", "y", "z", "wkt", "address_column", "map"}
    for e in manifest:
        assert set(e) == keys, e["path"]
        assert (SAMPLES / e["path"]).is_file(), e["path"]
        cols = _columns(e)
        for col in [e["x"], e["y"], e["z"], e["wkt"], e["address_column"], *e["map"].values()]:
            assert col is None or col in cols, (e["path"], col)
        if e["layer_name"]:
            assert e["layer_name"] in _layers(SAMPLES / e["path"])
    by_path = {e["path"]: e for e in manifest}
    assert by_path["xuhui/streets.shp"]["map"]["district_code"] == "dist_code"
    assert by_path["xuhui/buildings.gpkg"]["map"]["height"] == "GD"
    assert by_path["xuhui/pipelines.shp"]["map"]["diameter_mm"] == "diam_mm"
    assert by_path["xuhui/addresses_gcj02.csv"]["crs"] == "gcj02"


# --- administrative hierarchy -------------------------------------------------------------------
def test_streets_are_the_real_units_in_a_gbk_shapefile(admin):
    assert (DATA / "streets.cpg").read_text().strip() == "GBK"
    streets, _, _ = admin
    assert dict(zip(streets["code"], streets["name"])) == STREETS
    assert set(streets["dist_code"]) == {"310104"}
    raw = (DATA / "streets.dbf").read_bytes()
    for name in STREETS.values():
        assert name.encode("gbk") in raw
    with pytest.raises(UnicodeDecodeError):
        raw[raw.index("田林街道".encode("gbk")):][:40].decode("utf-8")
    assert streets.crs.to_epsg() == 4549


def test_district_geojson():
    fc = read_geojson("district.geojson")
    assert "crs" not in fc
    (f,) = fc["features"]
    assert f["properties"] == {"code": "310104", "name": "徐汇区"}
    geom = shapely.geometry.shape(f["geometry"])
    minx, miny, maxx, maxy = geom.bounds
    assert 121.39 < minx < maxx < 121.48 and 31.11 < miny < maxy < 31.23
    assert shapely.is_ccw(geom.exterior)  # RFC 7946 right-hand rule
    assert 45e6 < projected(f["geometry"]).area < 65e6


def test_admin_levels_nest_and_partition(admin):
    streets, communities, grids = admin
    district = projected(read_geojson("district.geojson")["features"][0]["geometry"])
    for gdf in (streets, communities, grids):
        assert set(gdf.geom_type) == {"Polygon"}
        assert gdf.geometry.is_valid.all()
    assert abs(streets.area.sum() - district.area) < 1e-5 * district.area
    assert shapely.union_all(streets.geometry.values).symmetric_difference(district).area < 1e-5 * district.area
    street_geom = dict(zip(streets["code"], streets.geometry))
    com_geom = dict(zip(communities["code"], communities.geometry))
    for code, street_code, geom in zip(communities["code"], communities["street_code"], communities.geometry):
        assert re.fullmatch(r"\d{12}", code) and code[:9] == street_code
        assert geom.within(street_geom[street_code].buffer(0.01)), code
    for code, com_code, geom in zip(grids["grid_code"], grids["community_code"], grids.geometry):
        assert re.fullmatch(r"\d{15}", code) and code[:12] == com_code
        assert geom.within(com_geom[com_code].buffer(0.01)), code
    for code, geom in street_geom.items():
        inner = communities[communities["street_code"] == code]
        assert 4 <= len(inner) <= 6
        assert abs(inner.area.sum() - geom.area) < 1e-6 * geom.area
    for code, geom in com_geom.items():
        inner = grids[grids["community_code"] == code]
        assert 1 <= len(inner) <= 2
        assert abs(inner.area.sum() - geom.area) < 1e-6 * geom.area
    assert grids["grid_code"].is_unique and communities["code"].is_unique and communities["name"].is_unique
    for name, code in zip(grids["name"], grids["grid_code"]):
        assert re.fullmatch(STREETS[code[:9]] + r"第\d+网格", name)


def test_responsibility_chain(admin):
    _, _, grids = admin
    rows = read_csv("responsibility.csv")
    assert set(r["grid_code"] for r in rows) == set(grids["grid_code"])
    grids_per_post = defaultdict(set)
    posts_per_person = defaultdict(set)
    for r in rows:
        grids_per_post[r["post_code"]].add(r["grid_code"])
        posts_per_person[(r["person_name"], r["person_contact"])].add(r["post_code"])
        assert re.fullmatch(r"(021-6\d{7}|13\d{9})", r["person_contact"])
        assert re.fullmatch(r"(\d{2}|\d{4})(;(\d{2}|\d{4}))*", r["handles"])
    assert max(len(v) for v in grids_per_post.values()) > 1
    assert max(len(v) for v in posts_per_person.values()) > 1
    assert len({(r["grid_code"], r["post_code"], r["person_name"]) for r in rows}) == len(rows)


# --- addresses ----------------------------------------------------------------------------------
def test_addresses_lie_in_their_named_street_and_community(admin):
    gen = _load_generator()
    streets, communities, _ = admin
    street_geom = dict(zip(streets["name"], streets.geometry))
    com_geom = dict(zip(communities["name"], communities.geometry))
    rows = read_csv("addresses_gcj02.csv")
    lon, lat = gen.gcj02_to_wgs84([float(r["lon"]) for r in rows], [float(r["lat"]) for r in rows])
    x, y = TO_PROJ.transform(lon, lat)
    for r, px, py in zip(rows, x, y):
        p = shapely.Point(px, py)
        assert r["district"] == "徐汇区"
        assert street_geom[r["street"]].contains(p), r["source_id"]
        assert com_geom[r["community"]].contains(p), r["source_id"]
    assert len({r["source_id"] for r in rows}) == len(rows)


def test_gcj02_offset_is_the_standard_one():
    gen = _load_generator()
    glon, glat = gen.wgs84_to_gcj02(121.4737, 31.2304)  # published reference offset near 人民广场
    assert 0.0040 < float(glon) - 121.4737 < 0.0050 and -0.0025 < float(glat) - 31.2304 < -0.0015


def test_door_numbers_increase_along_the_road_odd_left_even_right():
    roads = {f["properties"]["name"]: projected(f["geometry"]) for f in read_geojson("roads.geojson")["features"]}
    gen = _load_generator()
    rows = [r for r in read_csv("addresses_gcj02.csv") if r["door_number"]]
    lon, lat = gen.gcj02_to_wgs84([float(r["lon"]) for r in rows], [float(r["lat"]) for r in rows])
    x, y = TO_PROJ.transform(lon, lat)
    by_side = defaultdict(list)
    for r, px, py in zip(rows, x, y):
        line = roads[r["road"]]
        s = line.project(shapely.Point(px, py))
        a, b = line.interpolate(max(s - 2, 0)), line.interpolate(min(s + 2, line.length))
        left = (b.x - a.x) * (py - a.y) - (b.y - a.y) * (px - a.x) > 0
        n = int(r["door_number"])
        assert left == (n % 2 == 1), r["source_id"]
        by_side[(r["road"], n % 2)].append((n, s))
    for key, pts in by_side.items():
        pts.sort()
        dist = [s for _, s in pts]
        assert all(d1 > d0 for d0, d1 in zip(dist, dist[1:])), key


def test_lane_addresses_have_compounds():
    rows = read_csv("addresses_gcj02.csv")
    lanes = [r for r in rows if r["lane"]]
    assert 300 < len(lanes) < 1800
    for r in lanes:
        assert not r["door_number"] and r["building_no"] and r["compound"] and r["room"]
    for r in rows:
        assert bool(r["lane"]) != bool(r["door_number"])


def test_full_address_file():
    rows = read_csv("addresses_full.csv")
    assert list(rows[0]) == ["full_address", "x", "y"]
    for r in rows:
        assert "徐汇区" in r["full_address"]
        assert 630000 < float(r["x"]) < 645000 and 3440000 < float(r["y"]) < 3460000


# --- buildings ----------------------------------------------------------------------------------
def test_buildings():
    b = pyogrio.read_dataframe(DATA / "buildings.gpkg", layer="buildings")
    assert b.crs.to_epsg() == 4549 and set(b.geom_type) == {"Polygon"} and b.geometry.is_valid.all()
    assert list(b.columns[:-1]) == ["BH", "JZMC", "GD", "CS", "DMGC", "JZYT", "JCSJ", "JG", "BHJZ"]
    assert b["BH"].is_unique and b["BH"].str.fullmatch(r"BLD-\d{5}").all()
    tree = shapely.STRtree(b.geometry.values)
    i, j = tree.query(b.geometry.values, predicate="intersects")
    assert (i == j).all(), "buildings overlap"
    h = b["GD"]
    assert 0.07 < h.isna().mean() < 0.13
    assert h.dropna().between(3, 200).all() and (h > 150).sum() >= 3
    ratio = (h / b["CS"]).dropna()
    assert ratio.between(2.99, 3.61).all()
    assert b["DMGC"].between(3, 6.5).all() and b["DMGC"].between(4.0, 4.5).mean() > 0.95
    assert set(b["JG"]) <= {"钢混", "砖混", "钢结构"}
    assert {"住宅", "办公", "商业", "教育", "工业"} <= set(b["JZYT"])
    assert sum(len(g.interiors) > 0 for g in b.geometry) == 6
    assert (b["JZMC"] == "").any()
    roads = {f["properties"]["name"]: projected(f["geometry"]) for f in read_geojson("roads.geojson")["features"]}
    historic = shapely.union_all([roads["衡山路"], roads["武康路"], roads["岳阳路"], roads["天平路"],
                                  roads["建国西路"], roads["淮海中路"]])
    protected = b[b["BHJZ"] == 1]
    assert 10 <= len(protected) <= 40
    assert protected.geometry.distance(historic).max() < 200
    assert (protected["JCSJ"] < 1950).all()


def test_curtain_walls_reference_tall_office_or_commercial_buildings():
    b = pyogrio.read_dataframe(DATA / "buildings.gpkg", layer="buildings").set_index("BH")
    rows = read_csv("curtain_walls.csv")
    assert len({r["building_source_id"] for r in rows}) == len(rows)
    for r in rows:
        bld = b.loc[r["building_source_id"]]
        assert bld["JZYT"] in ("办公", "商业") and bld["CS"] >= 5
        assert r["support_type"] in {"点支式", "隐框", "半隐框", "明框", "全玻"}
        assert r["inspection_result"] in {"合格", "需整改", "不合格"}
        assert re.fullmatch(r"20\d\d-\d\d-\d\d", r["last_inspection_date"])
        assert float(r["facade_area"]) > 0


# --- parts --------------------------------------------------------------------------------------
def _catalogue() -> dict[str, dict[str, str]]:
    with PART_CATALOGUE.open(encoding="utf-8", newline="") as fh:
        return {r["code"]: r for r in csv.DictReader(fh)}


def test_part_codes():
    classes = _catalogue()
    fc = read_geojson("parts.geojson")
    assert "crs" not in fc
    codes = [f["properties"]["object_code"] for f in fc["features"]]
    assert len(set(codes)) == len(codes)
    for f in fc["features"]:
        p = f["properties"]
        assert re.fullmatch(r"310104(0[1-6])\d{2}\d{6}", p["object_code"])
        assert p["object_code"][6:10] == p["subclass_code"] and p["subclass_code"] in classes
        assert classes[p["subclass_code"]]["parent_code"] == p["subclass_code"][:2]
        assert p["status"] in {"完好", "破损", "丢失", "占用"}
    nocode = read_csv("parts_nocode.csv")
    assert "object_code" not in nocode[0]
    assert {r["subclass_code"] for r in nocode} <= set(classes)
    ids = [f["properties"]["source_id"] for f in fc["features"]] + [r["source_id"] for r in nocode]
    assert len(set(ids)) == len(ids)


def test_sample_city_uses_only_classes_of_the_catalogue():
    """Every part's subclass is in the catalogue a base is seeded with, under its class, and a part
    named after its subclass carries the catalogue's name (bus stops and toilets are named by road)."""
    catalogue = _catalogue()
    assert not (SAMPLES / "part_classes.csv").exists(), "the catalogue exists once: cim/data/part_classes.csv"
    rows = [f["properties"] for f in read_geojson("parts.geojson")["features"]] + read_csv("parts_nocode.csv")
    used = Counter(r["subclass_code"] for r in rows)
    assert set(used) <= set(catalogue), sorted(set(used) - set(catalogue))
    for code in used:
        assert catalogue[code]["parent_code"] == code[:2] and catalogue[code[:2]]["parent_code"] == ""
    named_by_road = {"0203", "0301"}
    wrong = {(r["subclass_code"], r["name"]) for r in rows
             if r["subclass_code"] not in named_by_road and r["name"] != catalogue[r["subclass_code"]]["name"]}
    assert not wrong, sorted(wrong)


def test_parts_are_inside_the_district():
    district = shapely.geometry.shape(read_geojson("district.geojson")["features"][0]["geometry"])
    for f in read_geojson("parts.geojson")["features"]:
        assert district.contains(shapely.geometry.shape(f["geometry"])), f["properties"]["source_id"]


# --- pipelines ----------------------------------------------------------------------------------
def test_pipelines():
    assert (DATA / "pipelines.cpg").read_text().strip().upper() in ("UTF-8", "UTF8")
    p = pyogrio.read_dataframe(DATA / "pipelines.shp")
    assert p.crs.to_epsg() == 4549 and set(p.geom_type) == {"LineString"}
    assert not p.geometry.has_z.any()
    assert 25_000 <= p.length.sum() <= 35_000
    assert p.length.between(49.0, 301.0).all()
    assert set(p["kind"]) == {"给水", "排水", "雨水", "污水", "燃气", "电力", "通信", "热力", "工业"}
    assert set(p.loc[p["kind"] == "燃气", "pressure"]) <= {"低压", "中压", "次高压"}
    assert (p.loc[p["kind"] != "燃气", "pressure"].fillna("") == "").all()
    missing = p["depth_s"].isna()
    assert 0.02 < missing.mean() < 0.08
    assert (p["depth_s"].isna() == p["depth_e"].isna()).all()
    ranges = {"燃气": (0.8, 1.5), "给水": (0.7, 2.0), "污水": (2.0, 6.0), "电力": (0.7, 1.5), "通信": (0.7, 1.2),
              "雨水": (1.5, 4.0)}
    for kind, (lo, hi) in ranges.items():
        sel = p[(p["kind"] == kind) & ~missing]
        assert sel["depth_s"].between(lo, hi).all() and sel["depth_e"].between(lo, hi).all(), kind
    assert p["source_id"].is_unique


# --- IoT ----------------------------------------------------------------------------------------
def test_iot_devices_and_readings():
    devices = read_geojson("iot_devices.geojson")["features"]
    part_ids = {f["properties"]["source_id"] for f in read_geojson("parts.geojson")["features"]}
    bld_ids = set(pyogrio.read_dataframe(DATA / "buildings.gpkg", read_geometry=False)["BH"])
    quantities = {}
    for f in devices:
        p = f["properties"]
        qs = json.loads(p["quantities"])
        assert qs and all(set(q) == {"quantity", "unit", "alarm_low", "alarm_high"} for q in qs)
        quantities[p["source_id"]] = {q["quantity"]: q for q in qs}
        assert p["linked_feature"] == "" or p["linked_feature"] in part_ids | bld_ids
    rows = read_csv("iot_readings.csv")
    alarms = 0
    times = set()
    for r in rows:
        q = quantities[r["device_id"]][r["quantity"]]
        v = float(r["value"])
        alarms += (q["alarm_high"] is not None and v > q["alarm_high"]) or (q["alarm_low"] is not None and v < q["alarm_low"])
        times.add(r["time"])
    assert 5 <= alarms <= 60
    assert len(times) == 144 and min(times) == "2026-11-24T00:00:00+08:00" and max(times) == "2026-11-24T23:50:00+08:00"
    assert (DATA / "iot_readings.csv").stat().st_size < 4 * 1024 * 1024
