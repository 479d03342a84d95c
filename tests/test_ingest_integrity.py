"""Loads that must lose nothing and hand out nothing twice: object codes under concurrent loads,
stable identity across re-deliveries, unreadable lines and merged CSV rows as rejects, rejects at
full precision, explicit encodings, and the exit status of a load that loaded nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from cim.database import engine_for
from cim.errors import UserError
from ingest.run import IngestOptions, ingest_files
from tests.conftest import PROJECT, create_database, run_cim, shared_path

SAMPLES = PROJECT / "data_samples"

# points inside the sample district (徐汇), WGS84
LONLAT = [(121.437, 31.190), (121.440, 31.195), (121.445, 31.200), (121.450, 31.185), (121.430, 31.180)]


@pytest.fixture(scope="module")
def city(server_url) -> str:
    """A base with the sample city loaded (its districts give parts their object codes)."""
    url = create_database(server_url)
    run_cim("init", db_url=url)
    run_cim("samples", "load", "--json", db_url=url)
    return url


def scalar(url: str, sql: str, **params):
    with engine_for(url).connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def load(url: str, layer: str, *paths: Path, **options):
    return ingest_files(layer, list(paths), IngestOptions(**options), engine_for(url))


def rejects_of(report) -> dict[int, dict[str, str]]:
    rows = {}
    for f in report.files:
        if f.rejects_file:
            with open(f.rejects_file, encoding="utf-8") as fh:
                rows.update({int(r["row"]): r for r in csv.DictReader(fh)})
    return rows


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- encodings ------------------------------------------------------------------------------------

def test_explicit_encoding_wins_on_the_mislabelled_real_shapefile(server_url):
    """The real file's .cpg says ISO-8859-1 over GBK text that was once mis-decoded and re-saved as
    UTF-8: --encoding gbk must give the same names as the automatic repair, not 脡脧潞拢脰脨脨脛…"""
    shp = shared_path("shanghai", "buildings_cbdc", "buildings.shp")
    url = create_database(server_url)
    run_cim("init", db_url=url)
    proc = run_cim("ingest", "buildings", str(shp), "--encoding", "gbk", "--map", "source_id=BuildingID", "--json",
                   db_url=url)
    report = json.loads(proc.stdout)
    assert report["read"] == 113 and report["rejected"] == 0
    assert scalar(url, "SELECT count(*) FROM buildings WHERE name = '上海中心大厦'") == 1
    assert scalar(url, "SELECT count(*) FROM buildings WHERE name LIKE '%脡脧%'") == 0


def test_explicit_encoding_of_a_plain_gbk_shapefile(tmp_path):
    import geopandas as gpd
    import pyogrio
    import shapely

    from ingest.read import ReadOptions, open_source

    frame = gpd.GeoDataFrame({"name": ["徐家汇", "田林街道", None], "类型": ["街道", "街道", "镇"]},
                             geometry=[shapely.Point(121.44, 31.19)] * 3, crs="EPSG:4326")
    path = tmp_path / "gbk.shp"
    pyogrio.write_dataframe(frame, path, encoding="GBK")
    assert "徐家汇".encode("gbk") in path.with_suffix(".dbf").read_bytes()
    path.with_suffix(".cpg").write_text("UTF-8")  # a wrong label: the explicit encoding wins over it
    source = open_source(path, ReadOptions(encoding="GBK"))
    attributes = next(source.batches).attributes
    assert attributes["name"].tolist()[:2] == ["徐家汇", "田林街道"]
    assert attributes["类型"].tolist() == ["街道", "街道", "镇"]  # field names are decoded too


# --- exit status ------------------------------------------------------------------------------------

def test_a_load_that_rejects_every_row_exits_non_zero(city, tmp_path):
    path = write_csv(tmp_path / "all_bad.csv", ["source_id", "subclass_code", "x", "y"],
                     [["X-1", "0999", 121.44, 31.19], ["X-2", "0101", "north", 31.19]])
    proc = run_cim("ingest", "parts", str(path), "--x", "x", "--y", "y", "--crs", "EPSG:4326", "--json",
                   "--rejects-dir", str(tmp_path), db_url=city, check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)  # the summary as for any load
    assert (report["read"], report["rejected"], report["inserted"]) == (2, 2, 0)
    assert "every one of the 2 row(s) was rejected" in proc.stderr and "Traceback" not in proc.stderr
    assert len(rejects_of_paths(report)) == 2
    # one good row among bad ones is an ordinary load
    write_csv(path, ["source_id", "subclass_code", "x", "y"],
              [["X-1", "0999", 121.44, 31.19], ["X-3", "0101", 121.44, 31.19]])
    proc = run_cim("ingest", "parts", str(path), "--x", "x", "--y", "y", "--crs", "EPSG:4326", "--json",
                   "--rejects-dir", str(tmp_path), db_url=city, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["inserted"] == 1


def rejects_of_paths(report: dict) -> list[dict[str, str]]:
    rows = []
    for f in report["files"]:
        if f["rejects_file"]:
            with open(f["rejects_file"], encoding="utf-8") as fh:
                rows += list(csv.DictReader(fh))
    return rows


# --- counts ---------------------------------------------------------------------------------------

def test_repairs_are_counted_per_batch(city, tmp_path):
    """A batch without geometry must not count the previous batch's make_valid repairs again."""
    building = scalar(city, "SELECT source_id FROM buildings WHERE valid_to IS NULL ORDER BY source_id LIMIT 1")
    bowtie = "POLYGON ((121.440 31.190, 121.441 31.191, 121.441 31.190, 121.440 31.191, 121.440 31.190))"
    square = "POLYGON ((121.440 31.190, 121.441 31.190, 121.441 31.191, 121.440 31.191, 121.440 31.190))"
    path = write_csv(tmp_path / "walls.csv", ["source_id", "building_source_id", "wkt"],
                     [["CW-1", building, bowtie], ["CW-2", building, square],
                      ["CW-3", building, ""], ["CW-4", building, ""]])
    report = load(city, "curtain-walls", path, wkt="wkt", crs="EPSG:4326", batch_rows=2, rejects_dir=tmp_path)
    assert (report.inserted, report.rejected) == (4, 0)
    assert report.repaired == 1


# --- object codes -----------------------------------------------------------------------------------

def parts_csv(path: Path, prefix: str, n: int, code: str | None = None) -> Path:
    rows = [[f"{prefix}-{i}", "0101", code or "", LONLAT[i % 5][0] + 0.0001 * i, LONLAT[i % 5][1]] for i in range(n)]
    return write_csv(path, ["source_id", "subclass_code", "object_code", "x", "y"], rows)


def test_concurrent_part_loads_hand_out_distinct_object_codes(city, tmp_path):
    """Both loads read what they need before the first one commits; the second must still number after it."""
    import threading
    import time

    first, second = parts_csv(tmp_path / "a.csv", "CA", 20), parts_csv(tmp_path / "b.csv", "CB", 20)
    holder = engine_for(city).connect()
    holder.execute(sa.text("LOCK TABLE parts IN SHARE ROW EXCLUSIVE MODE"))  # as a load in progress does
    results: dict[str, object] = {}

    def run(name: str, path: Path) -> None:
        try:
            results[name] = load(city, "parts", path, x="x", y="y", crs="EPSG:4326", rejects_dir=tmp_path)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    loaders = [threading.Thread(target=run, args=(n, p)) for n, p in (("a", first), ("b", second))]
    for t in loaders:
        t.start()
    try:
        deadline, waiting = time.monotonic() + 60, 0
        while time.monotonic() < deadline and waiting < 2:
            waiting = scalar(city, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                   "AND query LIKE 'LOCK TABLE \"parts\"%'")
            time.sleep(0.05)
        assert waiting == 2, "both loads should wait for the lock"
    finally:
        holder.rollback()
        holder.close()
    for t in loaders:
        t.join(120)
    assert all(getattr(r, "inserted", None) == 20 for r in results.values()), results
    assert scalar(city, "SELECT count(*) FROM parts WHERE valid_to IS NULL AND source_id LIKE 'C_-%'") == 40
    assert scalar(city, "SELECT count(DISTINCT object_code) FROM parts WHERE valid_to IS NULL "
                        "AND source_id LIKE 'C_-%'") == 40


def test_an_object_code_names_one_current_part(city, tmp_path):
    unique = scalar(city, "SELECT indisunique FROM pg_index WHERE indexrelid = 'ix_parts_object_code'::regclass")
    assert unique
    taken = scalar(city, "SELECT object_code FROM parts WHERE valid_to IS NULL AND source_id IS NOT NULL "
                         "ORDER BY object_code LIMIT 1")
    path = write_csv(tmp_path / "codes.csv", ["source_id", "object_code", "x", "y"], [
        ["OC-1", taken, 121.44, 31.19],  # another part's code
        ["OC-2", "3101040101500000", 121.44, 31.19],
        ["OC-3", "3101040101500000", 121.44, 31.19],  # repeated in the delivery
    ])
    report = load(city, "parts", path, x="x", y="y", crs="EPSG:4326", rejects_dir=tmp_path)
    reasons = {row: r["reason"] for row, r in rejects_of(report).items()}
    assert report.inserted == 1 and report.rejected == 2
    assert f"object code {taken} already belongs to part" in reasons[1]
    assert "repeated (also at row 2)" in reasons[3]
    # a part delivered without a code after one given explicitly is numbered after it
    path = write_csv(tmp_path / "codes2.csv", ["source_id", "object_code", "subclass_code", "x", "y"], [
        ["OC-4", "3101040101500005", "", 121.44, 31.19], ["OC-5", "", "0101", 121.44, 31.19]])
    report = load(city, "parts", path, x="x", y="y", crs="EPSG:4326", rejects_dir=tmp_path)
    assert report.inserted == 2, rejects_of(report)
    assert scalar(city, "SELECT object_code FROM parts WHERE source_id = 'OC-5' AND valid_to IS NULL") \
        == "3101040101500006"


# --- rejects files ----------------------------------------------------------------------------------

def test_rejects_keep_the_geometry_at_full_precision_in_the_files_crs(city, tmp_path):
    import pyproj
    import shapely

    lon, lat = 121.44123456789012, 31.192345678901234
    geojson = tmp_path / "parts.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"source_id": "FP-1", "subclass_code": "0999"},
         "geometry": {"type": "Point", "coordinates": [lon, lat]}}]}), encoding="utf-8")
    report = load(city, "parts", geojson, rejects_dir=tmp_path)
    row = rejects_of(report)[1]
    assert "unknown part class" in row["reason"]
    assert shapely.get_coordinates(shapely.from_wkt(row["geometry_wkt"])).tolist() == [[lon, lat]]
    # a projected file: the rejects speak its CRS (CGCS2000 / 3-degree Gauss-Kruger CM 120E), not the base's
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:4549", always_xy=True).transform(lon, lat)
    path = write_csv(tmp_path / "projected.csv", ["source_id", "subclass_code", "wkt"],
                     [["FP-2", "0999", shapely.to_wkt(shapely.Point(x, y), rounding_precision=-1)]])
    report = load(city, "parts", path, wkt="wkt", crs="EPSG:4549", rejects_dir=tmp_path)
    assert shapely.get_coordinates(shapely.from_wkt(rejects_of(report)[1]["geometry_wkt"])).tolist() == [[x, y]]


# --- GeoJSON text sequences ---------------------------------------------------------------------------

def feature_line(source_id: str, i: int, name: str = "井盖") -> str:
    lon, lat = LONLAT[i % 5]
    return json.dumps({"type": "Feature", "properties": {"source_id": source_id, "subclass_code": "0101",
                                                         "name": name},
                       "geometry": {"type": "Point", "coordinates": [lon + 0.0001 * i, lat]}}, ensure_ascii=False)


def test_unreadable_geojsonseq_lines_are_rejects_with_their_line_numbers(city, tmp_path):
    lines = [feature_line(f"SQ-{i}", i) for i in range(1, 11)]
    path = tmp_path / "seq.geojsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = load(city, "parts", path, rejects_dir=tmp_path)
    assert (report.read, report.inserted, report.rejected) == (10, 10, 0), rejects_of(report)
    cut = lines.copy()
    cut[4] = cut[4][:30]  # a line cut in the middle
    cut[9] = cut[9][:-7]  # and the last line cut off (no newline after it)
    cut.insert(7, '{"type": "Feature", "properties": {"source_id": "SQ-x", "subclass_code": "0999"}, '
                  '"geometry": {"type": "Point", "coordinates": [121.44, 31.19]}}')  # readable, but rejected
    path.write_text("\n".join(cut), encoding="utf-8")
    with pytest.raises(UserError, match="2 line\\(s\\) cannot be read, so --mode replace would close"):
        load(city, "parts", path, mode="replace", rejects_dir=tmp_path)
    assert scalar(city, "SELECT count(*) FROM parts WHERE source_id LIKE 'SQ-%' AND valid_to IS NULL") == 10
    with pytest.raises(UserError, match="--strict: 3 row"):
        load(city, "parts", path, strict=True, rejects_dir=tmp_path)
    report = load(city, "parts", path, rejects_dir=tmp_path)
    reasons = {row: r["reason"] for row, r in rejects_of(report).items()}
    assert (report.read, report.rejected) == (11, 3)
    assert reasons[5].startswith("line 5: not valid JSON") and "unknown part class" in reasons[8]
    assert reasons[11].startswith("line 11: not valid JSON") and "cut off" in reasons[11]
    assert report.closed == 0
    assert scalar(city, "SELECT count(*) FROM parts WHERE source_id LIKE 'SQ-%' AND valid_to IS NULL") == 10


# --- CSV rows merged by an unbalanced quote ---------------------------------------------------------

def test_csv_rows_merged_by_an_unbalanced_quote_are_rejected(city, tmp_path):
    path = tmp_path / "quotes.csv"
    path.write_text(
        "source_id,subclass_code,name,x,y\n"
        '"MQ-1,0101,井盖,121.44,31.19\n'  # the quote opened here closes two lines down:
        "MQ-2,0101,井盖,121.441,31.19\n"
        'MQ-3",0101,井盖3,121.442,31.19\n'  # … so one row with MQ-3's place and a merged id
        'MQ-4,"0101,井盖,121.443,31.19\n'
        'MQ-5,0101",井盖5,121.444,31.19\n'
        'MQ-6,0101,"两行\n的名称",121.445,31.19\n'  # free text may hold a line break
        "MQ-7,0101,井盖7,121.446,31.19\n", encoding="utf-8")
    report = load(city, "parts", path, x="x", y="y", crs="EPSG:4326", rejects_dir=tmp_path)
    reasons = {row: r["reason"] for row, r in rejects_of(report).items()}
    assert (report.read, report.inserted, report.rejected) == (4, 2, 2)
    assert "field 'source_id' holds a line break" in reasons[1] and "unbalanced quote" in reasons[1]
    assert "field 'subclass_code' holds a line break" in reasons[2]
    assert scalar(city, "SELECT count(*) FROM parts WHERE source_id LIKE 'MQ-%'") == 2
    assert scalar(city, "SELECT name FROM parts WHERE source_id = 'MQ-6'") == "两行\n的名称"


# --- identity ---------------------------------------------------------------------------------------

def test_a_feature_closed_by_replace_and_delivered_again_keeps_its_identity(server_url, tmp_path):
    city = create_database(server_url)  # a base of its own: a replace closes every part not in the file
    run_cim("init", db_url=city)
    load(city, "districts", SAMPLES / "xuhui" / "district.geojson", crs="EPSG:4326")
    every = parts_csv(tmp_path / "every.csv", "RD", 3)
    fewer = parts_csv(tmp_path / "fewer.csv", "RD", 2)
    assert load(city, "parts", every, x="x", y="y", crs="EPSG:4326").inserted == 3
    before = {r.source_id: r for r in engine_for(city).connect().execute(sa.text(
        "SELECT source_id, feature_id, object_code FROM parts WHERE source_id LIKE 'RD-%' AND valid_to IS NULL"))}
    assert load(city, "parts", fewer, x="x", y="y", crs="EPSG:4326", mode="replace").closed == 1
    assert scalar(city, "SELECT count(*) FROM parts WHERE source_id = 'RD-2' AND valid_to IS NULL") == 0
    report = load(city, "parts", every, x="x", y="y", crs="EPSG:4326")
    assert report.inserted == 1
    with engine_for(city).connect() as conn:
        versions = conn.execute(sa.text("SELECT feature_id, object_code, valid_to FROM parts WHERE source_id = 'RD-2' "
                                        "ORDER BY valid_from")).all()
    assert len(versions) == 2 and versions[0].valid_to is not None and versions[1].valid_to is None
    assert {v.feature_id for v in versions} == {before["RD-2"].feature_id}
    assert {v.object_code for v in versions} == {before["RD-2"].object_code}


def test_the_unique_code_migration_names_duplicates_already_stored(server_url):
    from cim.bootstrap import InitError, downgrade, initialise

    url = create_database(server_url)
    engine = engine_for(url)
    initialise(engine)
    downgrade(engine, "0002")  # as a base was before: codes not unique
    part = ("INSERT INTO parts (source_id, object_code, part_class, part_subclass, geom) VALUES "
            "(:s, '3101040101000001', '01', '0101', ST_SetSRID(ST_MakePoint(0, 0, 0), 4549))")
    with engine.begin() as conn:
        conn.execute(sa.text(part), {"s": "DUP-1"})
        conn.execute(sa.text(part), {"s": "DUP-2"})
    with pytest.raises(InitError, match="3101040101000001: DUP-1, DUP-2"):
        initialise(engine)
    with engine.begin() as conn:  # the operator ends one of them: the other keeps the code
        conn.execute(sa.text("DELETE FROM parts WHERE source_id = 'DUP-2'"))
    initialise(engine)
    assert scalar(url, "SELECT indisunique FROM pg_index WHERE indexrelid = 'ix_parts_object_code'::regclass")
    assert scalar(url, "SELECT count(*) FROM parts WHERE object_code = '3101040101000001'") == 2  # history kept
