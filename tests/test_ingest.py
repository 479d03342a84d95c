"""Issue 3: batch loaders — formats, CRSs, encodings, mapping, 2D→3D, rejects, load semantics,
provenance — against the real database, through the real ``cim`` command where it matters."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
import zipfile

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import sqlalchemy as sa

from cim.crs import wgs84_to_gcj02
from cim.database import engine_for
from cim.errors import UserError
from tests.conftest import CIM, create_database, run_cim, shared_path
from tests.sample_city import LONLAT, SAMPLES, load, sample_city_base, scalar


@pytest.fixture(scope="module")
def city(server_url) -> str:
    """A base with the whole sample city loaded through `cim samples load`."""
    return sample_city_base(server_url)


def parts_frame(n: int = 5, prefix: str = "T", subclass: str = "0101") -> gpd.GeoDataFrame:
    lon = [LONLAT[i % len(LONLAT)][0] + 0.0001 * i for i in range(n)]
    lat = [LONLAT[i % len(LONLAT)][1] for i in range(n)]
    return gpd.GeoDataFrame({"source_id": [f"{prefix}-{i}" for i in range(n)], "subclass_code": [subclass] * n,
                             "name": ["上水井盖"] * n, "status": ["完好"] * n},
                            geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")


# --- the sample city --------------------------------------------------------------------------------

def test_sample_city_loads_every_layer_and_reload_is_a_noop(city):
    counts = {t: scalar(city, f"SELECT count(*) FROM {t} WHERE valid_to IS NULL") for t in
              ("districts", "streets", "communities", "grids", "addresses", "buildings", "curtain_walls", "parts",
               "pipelines", "iot_devices")}
    assert counts == {"districts": 1, "streets": 13, "communities": 56, "grids": 60, "addresses": 2129,
                      "buildings": 1500, "curtain_walls": 150, "parts": 5300, "pipelines": 172, "iot_devices": 100}
    assert scalar(city, "SELECT count(*) FROM iot_readings") == 22170
    assert scalar(city, "SELECT count(*) FROM grid_posts") > 60
    again = json.loads(run_cim("samples", "load", "--json", db_url=city).stdout)
    assert sum(r["changes"] for r in again) == 0
    assert all(r["unchanged"] == r["read"] for r in again)


def test_enrichment_codes_and_3d(city):
    # every part got the grid that contains it (checked against PostGIS itself)
    mismatched = scalar(city, """SELECT count(*) FROM parts p JOIN grids g ON g.valid_to IS NULL
        AND ST_Covers(g.geom, ST_Force2D(p.geom)) WHERE p.valid_to IS NULL AND p.grid_code <> g.grid_code""")
    assert mismatched == 0
    assert scalar(city, "SELECT count(*) FROM parts WHERE valid_to IS NULL AND grid_code IS NULL") == 0
    # buildings stand on their base elevation; pipelines lie below ground
    assert scalar(city, "SELECT bool_and(abs(ST_ZMin(geom) - base_elevation) < 1e-6) FROM buildings")
    assert scalar(city, "SELECT max(ST_ZMax(geom)) FROM pipelines") < 0
    # a building with floors but no height got floors × 3 m
    assert scalar(city, "SELECT count(*) FROM buildings WHERE abs(height - floors * 3.0) < 1e-6") >= 100
    # parts without codes were given valid, unique 16-digit codes in their district
    codes = scalar(city, "SELECT array_agg(object_code) FROM parts WHERE source_id >= 'PART-05001'")
    assert len(codes) == 300 and len(set(codes)) == 300
    assert all(c.startswith("310104") and len(c) == 16 for c in codes)
    # curtain walls take the geometry and grid of their building
    assert scalar(city, "SELECT count(*) FROM curtain_walls WHERE geom IS NULL OR building_feature_id IS NULL") == 0


def test_gbk_shapefile_streets_with_cpg(city):
    assert scalar(city, "SELECT name FROM streets WHERE code = '310104011' AND valid_to IS NULL") == "田林街道"


# --- formats ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["geojson", "geojsonseq", "shp-zip", "gpkg", "fgb", "parquet", "csv-xy", "csv-wkt"])
def test_every_format_loads(city, tmp_path, fmt):
    frame = parts_frame(prefix=f"F{fmt}")
    if fmt == "geojson":
        path = tmp_path / "p.geojson"
        frame.to_file(path)
    elif fmt == "geojsonseq":
        path = tmp_path / "p.geojsonl"
        frame.to_file(path, driver="GeoJSONSeq")
    elif fmt == "shp-zip":
        frame.rename(columns={"subclass_code": "subclass_c"}).to_file(tmp_path / "p.shp")
        path = tmp_path / "p.zip"
        with zipfile.ZipFile(path, "w") as z:
            for f in tmp_path.glob("p.*"):
                if f.suffix != ".zip":
                    z.write(f, f.name)
    elif fmt == "gpkg":
        path = tmp_path / "p.gpkg"
        frame.to_file(path, layer="manholes")
        frame.head(1).to_file(path, layer="other")
    elif fmt == "fgb":
        path = tmp_path / "p.fgb"
        frame.to_file(path, driver="FlatGeobuf")
    elif fmt == "parquet":
        path = tmp_path / "p.parquet"
        frame.to_parquet(path)
    elif fmt == "csv-xy":
        path = tmp_path / "p.csv"
        frame.assign(lon=frame.geometry.x, lat=frame.geometry.y).drop(columns="geometry").to_csv(path, index=False)
    else:
        path = tmp_path / "p.csv"
        frame.assign(wkt=frame.geometry.to_wkt()).drop(columns="geometry").to_csv(path, index=False)
    options = {"layer_name": "manholes"} if fmt == "gpkg" else {}
    if fmt == "shp-zip":  # Shapefile field names stop at 10 characters
        options["mapping"] = {"subclass_code": "subclass_c"}
    if fmt == "csv-xy":
        options.update(x="lon", y="lat", crs="EPSG:4326")
    if fmt == "csv-wkt":
        options.update(wkt="wkt", crs="EPSG:4326")
    report = load(city, "parts", path, **options)
    assert (report.read, report.inserted, report.rejected) == (5, 5, 0)
    assert scalar(city, "SELECT count(*) FROM parts WHERE source_id LIKE :p AND valid_to IS NULL "
                        "AND grid_code IS NOT NULL", p=f"F{fmt}-%") == 5


def test_gpkg_with_several_layers_needs_layer(city, tmp_path):
    path = tmp_path / "two.gpkg"
    parts_frame().to_file(path, layer="a")
    parts_frame().to_file(path, layer="b")
    with pytest.raises(UserError, match="several layers"):
        load(city, "parts", path)


# --- coordinate systems ------------------------------------------------------------------------------

def test_gcj02_file_lands_within_1m_of_its_wgs84_twin(city, tmp_path):
    wgs = parts_frame(prefix="TWINW")
    gx, gy = wgs84_to_gcj02(wgs.geometry.x.to_numpy(), wgs.geometry.y.to_numpy())
    gcj = gpd.GeoDataFrame(wgs.drop(columns="geometry").assign(source_id=[f"TWING-{i}" for i in range(5)]),
                           geometry=gpd.points_from_xy(gx, gy), crs="EPSG:4326")
    wgs.to_file(tmp_path / "w.geojson")
    gcj.to_file(tmp_path / "g.geojson")
    load(city, "parts", tmp_path / "w.geojson")
    report = load(city, "parts", tmp_path / "g.geojson", crs="gcj02")
    assert any("overrides" in n for n in report.files[0].notes)
    worst = scalar(city, """SELECT max(ST_Distance(w.geom, g.geom)) FROM parts w JOIN parts g
        ON replace(w.source_id, 'TWINW', 'TWING') = g.source_id WHERE w.source_id LIKE 'TWINW-%'""")
    assert worst < 1.0


def test_bd09_csv(city, tmp_path):
    from cim.crs import wgs84_to_bd09

    lon, lat = wgs84_to_bd09(121.44, 31.19)
    path = tmp_path / "bd.csv"
    path.write_text(f"source_id,subclass_code,x,y\nBD-1,0102,{lon},{lat}\n", encoding="utf-8")
    load(city, "parts", path, x="x", y="y", crs="bd09")
    distance = scalar(city, "SELECT ST_Distance(geom, ST_Transform(ST_SetSRID(ST_MakePoint(121.44, 31.19), 4326), "
                            "4549)) FROM parts WHERE source_id = 'BD-1'")
    assert distance < 1.0


def test_file_without_crs_is_refused(city, tmp_path):
    path = tmp_path / "nocrs.csv"
    path.write_text("source_id,subclass_code,x,y\nN-1,0101,121.44,31.19\n")
    proc = run_cim("ingest", "parts", str(path), "--x", "x", "--y", "y", db_url=city, check=False)
    assert proc.returncode == 1 and "no coordinate system" in proc.stderr and "--crs" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_swapped_lat_lon_is_refused_with_the_cause(city, tmp_path):
    path = tmp_path / "swapped.csv"
    path.write_text("source_id,subclass_code,x,y\nS-1,0101,31.19,121.44\nS-2,0101,31.20,121.45\n")
    proc = run_cim("ingest", "parts", str(path), "--x", "x", "--y", "y", "--crs", "EPSG:4326", db_url=city,
                   check=False)
    assert proc.returncode == 1 and "swapped" in proc.stderr and "Traceback" not in proc.stderr


def test_metres_declared_as_degrees_is_refused(city, tmp_path):
    path = tmp_path / "metres.csv"
    path.write_text("source_id,subclass_code,x,y\nM-1,0101,636000,3452000\n")
    proc = run_cim("ingest", "parts", str(path), "--x", "x", "--y", "y", "--crs", "EPSG:4490", db_url=city,
                   check=False)
    assert proc.returncode == 1 and "4549" in proc.stderr


# --- real data from ../shared ---------------------------------------------------------------------------

def test_real_districts_wgs84_and_gcj02(server_url):
    url = create_database(server_url)
    run_cim("init", db_url=url)
    wgs = shared_path("shanghai", "districts_wgs84.geojson")
    gcj = shared_path("shanghai", "districts_gcj02.geojson")
    load(url, "districts", wgs, mapping={"code": "region_id", "name": "source_name"})
    assert scalar(url, "SELECT count(*) FROM districts WHERE valid_to IS NULL") == 16
    assert scalar(url, "SELECT name FROM districts WHERE code = '310104'") == "徐汇区"
    # the GCJ-02 twin (another publisher's outline): after un-shifting, its 徐汇 overlaps the WGS84 one closely
    report = load(url, "districts", gcj, crs="gcj02", mode="append",
                  mapping={"source_id": "name", "code": "adcode", "name": "name"})
    assert report.inserted == 16
    shift = scalar(url, """SELECT ST_HausdorffDistance(ST_Centroid(a.geom), ST_Centroid(b.geom)) FROM districts a
        JOIN districts b ON a.code = b.code AND a.fid < b.fid WHERE a.code = '310104'""")
    assert shift < 50  # raw GCJ-02 would be 300–500 m off


def test_real_subdistricts_as_streets_keep_mixed_codes(server_url):
    url = create_database(server_url)
    run_cim("init", db_url=url)
    report = load(url, "streets", shared_path("shanghai", "subdistricts_wgs84.geojson"))
    assert report.read == 229 and report.rejected == 0
    assert scalar(url, "SELECT count(*) FROM streets WHERE code = '310115-001'") == 1
    assert scalar(url, "SELECT district_code FROM streets WHERE code = '310104011000'") == "310104"


def test_real_gbk_buildings_mislabelled_latin1(server_url):
    url = create_database(server_url)
    run_cim("init", db_url=url)
    proc = run_cim("ingest", "buildings", str(shared_path("shanghai", "buildings_cbdc", "buildings.shp")),
                   "--map", "source_id=BuildingID", "--json", db_url=url)
    report = json.loads(proc.stdout)
    assert report["read"] == 113 and report["rejected"] == 0
    assert any("GBK" in n for n in report["files"][0]["notes"])
    assert scalar(url, "SELECT height FROM buildings WHERE name = '上海中心大厦'") == 590
    # Fnum is text in the file ("118"): coerced to an integer
    assert scalar(url, "SELECT floors FROM buildings WHERE name = '上海中心大厦'") == 118
    import pyogrio

    unnamed = pyogrio.read_dataframe(shared_path("shanghai", "buildings_cbdc", "buildings.shp"),
                                     read_geometry=False)["BDName"].isna().sum()
    assert scalar(url, "SELECT count(*) FROM buildings WHERE name IS NULL") == unnamed  # none lost, none invented
    # the columns outside the canonical schema are kept
    assert scalar(url, "SELECT attributes ? 'Fheight' FROM buildings WHERE name = '上海中心大厦'")


def test_real_metro_stations_as_iot_devices(city):
    report = load(city, "iot-devices", shared_path("shanghai", "metro_stations_osm.geojson"),
                  mapping={"source_id": "osm_id", "device_type": "kind"})
    assert report.read == 1440 and report.rejected == 0
    assert scalar(city, "SELECT count(*) FROM iot_devices WHERE attributes ? 'name_en'") == 1440


# --- rejects ---------------------------------------------------------------------------------------

def _rejects(report) -> dict[int, str]:
    rows = {}
    for f in report.files:
        if f.rejects_file:
            with open(f.rejects_file, encoding="utf-8") as fh:
                rows.update({int(r["row"]): r["reason"] for r in csv.DictReader(fh)})
    return rows


def test_every_reject_reason(city, tmp_path):
    p = lambda x, y: f"POINT ({x} {y})"  # noqa: E731
    rows = [
        ("R-ok", "0101", "", p(121.44, 31.19), ""),
        ("R-null", "0101", "", "", ""),
        ("R-type", "0101", "", "LINESTRING (121.44 31.19, 121.45 31.19)", ""),
        ("R-class", "0999", "", p(121.44, 31.19), ""),
        ("R-code", "", "31010401", p(121.44, 31.19), ""),
        ("R-dup", "0101", "", p(121.44, 31.19), ""),
        ("R-dup", "0101", "", p(121.44, 31.19), ""),
        ("R-z", "0101", "", p(121.44, 31.19), "high"),
        ("", "0101", "", p(121.44, 31.19), ""),
        ("R-wkt", "0101", "", "POINT (nonsense)", ""),
        # full-width digits are digits to Python's \d, not to the schema's [0-9]: one bad row, not a failed COPY
        ("R-wide", "", "３１０１０４０１０１０００００１", p(121.44, 31.19), ""),
    ]
    path = tmp_path / "bad_parts.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source_id", "subclass_code", "object_code", "wkt", "z"])
        w.writerows(rows)
    report = load(city, "parts", path, wkt="wkt", crs="EPSG:4326", rejects_dir=tmp_path)
    reasons = _rejects(report)
    assert report.inserted == 1 and report.rejected == 10
    assert "null geometry" in reasons[2]
    assert "wrong geometry type" in reasons[3]
    assert "unknown part class" in reasons[4]
    assert "malformed object code" in reasons[5]
    assert "duplicate source id" in reasons[7]
    assert any("duplicate source id" in r for r in reasons.values() if r)  # first occurrence too
    assert "'high' is not a number" in reasons[8]
    assert "missing source id" in reasons[9]
    assert "not valid WKT" in reasons[10]
    assert "malformed object code" in reasons[11]


def test_building_and_pipeline_rejects(city, tmp_path):
    square = lambda d: shapely.box(121.440 + d, 31.190, 121.4402 + d, 31.1902)  # noqa: E731
    bowtie = shapely.Polygon([(121.441, 31.191), (121.4412, 31.1912), (121.4412, 31.191), (121.441, 31.1912)])
    sliver = shapely.Polygon([(121.442, 31.192), (121.4425, 31.192), (121.4422, 31.192)])  # collapses to a line
    buildings = gpd.GeoDataFrame({
        "source_id": ["B-ok", "B-zero", "B-tall", "B-bowtie", "B-sliver", "B-floors"],
        "height": [30, 0, 800, 20, 20, None], "floors": [10, 1, 200, 6, 6, "4"]},
        geometry=[square(0), square(0.001), square(0.002), bowtie, sliver, square(0.003)], crs="EPSG:4326")
    buildings.to_file(tmp_path / "b.geojson")
    report = load(city, "buildings", tmp_path / "b.geojson", rejects_dir=tmp_path)
    reasons = _rejects(report)
    assert "≤ 0" in reasons[2] and "> 700" in reasons[3]
    assert "make_valid cannot keep" in reasons[5]
    assert report.inserted == 3 and report.repaired == 1  # the bow-tie was repaired
    assert scalar(city, "SELECT height FROM buildings WHERE source_id = 'B-floors'") == 12.0
    assert scalar(city, "SELECT ST_GeometryType(geom) FROM buildings WHERE source_id = 'B-bowtie'") == \
        "ST_MultiPolygon"
    line = shapely.LineString([(121.44, 31.19), (121.441, 31.19)])
    pipes = gpd.GeoDataFrame({"source_id": ["L-ok", "L-deep", "L-kind", "L-default"], "kind": ["燃气", "给水", "蒸汽", "煤气"],
                              "start_depth": [1.0, 120, 1, None], "end_depth": [2.0, 1, 1, None]},
                             geometry=[line] * 4, crs="EPSG:4326")
    pipes.to_file(tmp_path / "l.geojson")
    report = load(city, "pipelines", tmp_path / "l.geojson", rejects_dir=tmp_path)
    reasons = _rejects(report)
    assert "> 100 m" in reasons[2] and "unknown pipeline kind" in reasons[3]
    zs = scalar(city, "SELECT array[ST_Z(ST_StartPoint(geom)), ST_Z(ST_EndPoint(geom))] FROM pipelines "
                      "WHERE source_id = 'L-ok'")
    assert zs == [-1.0, -2.0]
    # 煤气 is a synonym of 燃气, loaded at the default gas depth
    assert scalar(city, "SELECT kind || ST_Z(ST_StartPoint(geom)) FROM pipelines WHERE source_id = 'L-default'") \
        == "燃气-1.2"


def test_curtain_wall_and_reading_rejects(city, tmp_path):
    walls = tmp_path / "walls.csv"
    walls.write_text("source_id,building_source_id,support_type\nCW-x,NO-SUCH,隐框\nCW-y,BLD-00001,悬挂式\n",
                     encoding="utf-8")
    report = load(city, "curtain-walls", walls, rejects_dir=tmp_path)
    reasons = _rejects(report)
    assert "unknown building" in reasons[1] and "unknown support type" in reasons[2]
    readings = tmp_path / "r.csv"
    readings.write_text("device_id,time,quantity,value\nNOPE,2026-11-24T00:00:00+08:00,water_level,1\n"
                        "IOT-0001,yesterday,water_level,1\n")
    report = load(city, "iot-readings", readings, rejects_dir=tmp_path)
    reasons = _rejects(report)
    assert "unknown device" in reasons[1] and "not a date-time" in reasons[2]


def test_strict_rejects_whole_file_and_dry_run_writes_nothing(city, tmp_path):
    frame = parts_frame(prefix="STRICT")
    frame.loc[2, "subclass_code"] = "9999"
    frame.to_file(tmp_path / "s.geojson")
    before = scalar(city, "SELECT count(*) FROM parts")
    proc = run_cim("ingest", "parts", str(tmp_path / "s.geojson"), "--strict", db_url=city, check=False)
    assert proc.returncode == 1 and "--strict" in proc.stderr
    assert scalar(city, "SELECT count(*) FROM parts") == before
    assert scalar(city, "SELECT status FROM ingest_runs ORDER BY id DESC LIMIT 1") == "failed"
    dry = json.loads(run_cim("ingest", "parts", str(tmp_path / "s.geojson"), "--dry-run", "--json",
                             db_url=city).stdout)
    assert dry["inserted"] == 4 and dry["rejected"] == 1 and dry["status"] == "dry-run"
    assert scalar(city, "SELECT count(*) FROM parts") == before


# --- load semantics ---------------------------------------------------------------------------------------

def test_upsert_history_and_replace(city, tmp_path):
    frame = parts_frame(n=4, prefix="HIST")
    frame.to_file(tmp_path / "v1.geojson")
    first = load(city, "parts", tmp_path / "v1.geojson")
    assert first.inserted == 4
    assert load(city, "parts", tmp_path / "v1.geojson").changes == 0
    t_between = scalar(city, "SELECT now()")
    time.sleep(0.05)
    frame.loc[0, "status"] = "破损"
    frame.to_file(tmp_path / "v2.geojson")
    second = load(city, "parts", tmp_path / "v2.geojson")
    assert (second.updated, second.unchanged, second.inserted) == (1, 3, 0)
    # the old version stays queryable with the same feature id
    versions = scalar(city, "SELECT array_agg(status ORDER BY valid_from) FROM parts WHERE source_id = 'HIST-0'")
    assert versions == ["完好", "破损"]
    assert scalar(city, "SELECT count(DISTINCT feature_id) FROM parts WHERE source_id = 'HIST-0'") == 1
    assert scalar(city, "SELECT status FROM parts WHERE source_id = 'HIST-0' AND valid_from <= :t "
                        "AND (valid_to IS NULL OR valid_to > :t)", t=t_between) == "完好"
    # replace with a file that lacks HIST-3 and the rest of the layer: those are closed, not deleted
    frame.head(3).to_file(tmp_path / "v3.geojson")
    total_before = scalar(city, "SELECT count(*) FROM parts")
    third = load(city, "parts", tmp_path / "v3.geojson", mode="replace")
    assert third.closed == scalar(city, "SELECT count(*) FROM parts WHERE valid_to IS NOT NULL "
                                        "AND ingest_run_id IS DISTINCT FROM -1") - 1  # minus HIST-0's old version
    assert scalar(city, "SELECT count(*) FROM parts") == total_before
    assert scalar(city, "SELECT count(*) FROM parts WHERE valid_to IS NULL") == 3
    # restore the sample parts for the other tests
    run_cim("samples", "load", db_url=city)


def test_first_load_into_an_empty_table_copies_straight_in(server_url, tmp_path):
    """A table that never held a row is loaded without staging: the rows carry the run, the defaults,
    codes and grid enrichment as a merge would give them; first occurrences of ids repeated in a later
    batch are taken back out (deleted, not terminated); the indexes are all there; and
    loading the same file again (now through staging and the merge) changes nothing."""
    url = create_database(server_url)
    run_cim("init", db_url=url)
    load(url, "districts", SAMPLES / "xuhui" / "district.geojson", crs="EPSG:4326")
    load(url, "grids", SAMPLES / "xuhui" / "admin.gpkg", layer_name="grids")
    frame = parts_frame(12, prefix="D")
    frame.loc[9, "source_id"] = "D-2"  # repeats row 3's id in the last batch
    path = tmp_path / "parts.gpkg"
    frame.to_file(path, driver="GPKG")
    with engine_for(url).connect() as conn:
        indexes = set(conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = 'parts'")).scalars())
    report = load(url, "parts", path, batch_rows=4, rejects_dir=tmp_path)
    assert (report.inserted, report.rejected) == (10, 2), _rejects(report)
    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT source_id, ingest_run_id, valid_from IS NOT NULL AS dated, valid_to, attributes, "
            "object_code, grid_code FROM parts ORDER BY source_id")).mappings().all()
        assert set(conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = 'parts'")).scalars()) \
            == indexes
    assert len(rows) == 10 and "D-2" not in {r["source_id"] for r in rows}
    assert all(r["ingest_run_id"] == report.run_id and r["dated"] and r["valid_to"] is None for r in rows)
    assert all(len(r["object_code"]) == 16 and r["grid_code"] for r in rows)
    duplicates = tmp_path / f"run-{report.run_id}-duplicates.rejects.csv"
    with open(duplicates, encoding="utf-8") as fh:
        taken = {int(r["row"]): r["reason"] for r in csv.DictReader(fh)}
    assert list(taken) == [3] and "first occurrence" in taken[3]
    again = load(url, "parts", path, batch_rows=4, rejects_dir=tmp_path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 10)


def test_a_second_load_of_the_same_layer_waits_for_the_first(server_url, tmp_path):
    """Loads of one layer run one at a time: a load that finds another one's lock waits for its commit
    (then sees its rows, so it goes through the merge), while readers are not held up."""
    import threading

    url = create_database(server_url)
    run_cim("init", db_url=url)
    path = tmp_path / "parts.gpkg"
    frame = parts_frame(3, prefix="W")
    frame["object_code"] = [f"3101040101{i:06d}" for i in range(3)]
    frame.to_file(path, driver="GPKG")
    holder = engine_for(url).connect()
    holder.execute(sa.text("LOCK TABLE parts IN SHARE ROW EXCLUSIVE MODE"))  # as a load in progress does
    result = {}
    loader = threading.Thread(target=lambda: result.update(report=load(url, "parts", path, crs="EPSG:4326")))
    loader.start()
    try:
        deadline, waiting = time.time() + 30, 0
        while time.time() < deadline and not waiting:
            waiting = scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                  "AND query LIKE 'LOCK TABLE%'")
            time.sleep(0.05)
        assert waiting and loader.is_alive(), "the second load did not wait at its start"
        assert scalar(url, "SELECT count(*) FROM parts") == 0  # readers are not blocked
    finally:
        holder.rollback()
        holder.close()
    loader.join(60)
    assert result["report"].inserted == 3, _rejects(result["report"])


def test_provenance_is_recorded(city):
    with engine_for(city).connect() as conn:
        row = conn.execute(sa.text(
            "SELECT layer, files, operator, n_read, status FROM ingest_runs WHERE layer = 'buildings' "
            "AND status = 'succeeded' ORDER BY id LIMIT 1")).one()
    assert row.files[0]["sha256"] and len(row.files[0]["sha256"]) == 64
    assert row.files[0]["crs"] == "EPSG:4549"
    assert row.n_read == 1500 and row.operator
    assert scalar(city, "SELECT count(*) FROM buildings b JOIN ingest_runs r ON r.id = b.ingest_run_id") >= 1500
    listing = json.loads(run_cim("ingest", "runs", "--json", "--limit", "500", db_url=city).stdout)
    assert any(r["layer"] == "buildings" and r["n_inserted"] == 1500 for r in listing)
    assert "buildings" in run_cim("ingest", "runs", db_url=city).stdout


def test_killed_load_leaves_no_trace(server_url, tmp_path):
    url = create_database(server_url)
    run_cim("init", db_url=url)
    n = 400_000
    rng = np.random.default_rng(1)
    path = tmp_path / "big.csv"
    pd.DataFrame({"source_id": [f"K{i}" for i in range(n)], "object_code": [f"3101040101{i:06d}" for i in range(n)],
                  "x": rng.uniform(121.3, 121.6, n), "y": rng.uniform(31.1, 31.3, n)}).to_csv(path, index=False)
    env = {**os.environ, "CIM_DATABASE_URL": url}
    proc = subprocess.Popen([CIM, "ingest", "parts", str(path), "--x", "x", "--y", "y", "--crs", "EPSG:4326"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    copying = False
    while time.time() < deadline and proc.poll() is None:
        # a first load COPYs straight into the (empty) table, a later one into staging: either way mid-COPY
        if scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY %'"):
            copying = True
            break
        time.sleep(0.05)
    assert copying, "the loader never reached COPY"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert scalar(url, "SELECT count(*) FROM parts") == 0
    assert scalar(url, "SELECT count(*) FROM ingest_runs") == 0


def test_bad_cli_input_is_a_clear_error(city, tmp_path):
    # a path long enough that an 80-column wrap would split the message: output that is not a terminal
    # is never wrapped, so the error is one line a script can grep
    missing = tmp_path / ("a-long-directory-name-" * 4) / "missing.geojson"
    proc = run_cim("ingest", "parts", str(missing), db_url=city, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{missing}: no such file" in proc.stderr.splitlines()[-1]
    proc = run_cim("ingest", "parts", str(SAMPLES / "xuhui" / "parts.geojson"), "--map", "nonsense", db_url=city,
                   check=False)
    assert proc.returncode == 1 and "FIELD=COLUMN" in proc.stderr
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("source_id,subclass_code,x,y\n井盖,0101,121.44,31.19\n".encode("gbk"))
    proc = run_cim("ingest", "parts", str(gbk), "--x", "x", "--y", "y", "--crs", "EPSG:4326", db_url=city,
                   check=False)
    assert proc.returncode == 1 and "--encoding GBK" in proc.stderr
    proc = run_cim("ingest", "parts", str(gbk), "--x", "x", "--y", "y", "--crs", "EPSG:4326", "--encoding", "GBK",
                   "--json", db_url=city)
    assert json.loads(proc.stdout)["inserted"] == 1


def test_a_usage_error_into_a_pipe_is_one_plain_line():
    """typer's usage errors too: no 80-column box when stderr is not a terminal."""
    option = "--no-such-option-" + "x" * 90
    proc = run_cim("ingest", "parts", option, check=False)
    assert proc.returncode == 2 and "╭" not in proc.stderr
    assert any(f"No such option: {option}" in line for line in proc.stderr.splitlines())


def test_every_pipeline_kind_the_schema_accepts_has_a_default_depth():
    from cim.schema import PIPELINE_KINDS
    from ingest.specs import DEFAULT_DEPTH_M

    assert set(DEFAULT_DEPTH_M) == set(PIPELINE_KINDS)
