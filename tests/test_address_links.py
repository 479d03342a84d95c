"""Each address's building, found district by district (ingest.layers: the address's own district's partition,
pruned at run time, and the buildings that cross into that district), on a real PostGIS, one base for the
module: two districts side by side (徐汇 310104 | 长宁 310105) and buildings in each, one straddling their
boundary, one straddling it and overlapping a building of the other district (with the smaller source id, so
"own district first" would be wrong), one outside every district. Addresses on all of them, on the far side of
the boundary, outside every district, and on no building.

In order: a first load whose linking fails leaves no table behind; the first load of addresses is staged by district (partitions indexed after their rows) and links
every address as the unpruned join over the whole layer does; a second load goes through the merge and links
the same way; EXPLAIN ANALYZE of the merge's link shows one probe per address into its own district's partition
(the unpruned join probes every partition for every address).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest import layers
from ingest.run import IngestOptions, ingest_files
from ingest.specs import SPECS

XUHUI, CHANGNING = "310104", "310105"
BOUNDARY = 121.42  # 徐汇 is west of it, 长宁 east, both from latitude 31.20 to 31.22


def _box(w: float, s: float, e: float, n: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _write(path: Path, features: list[tuple[dict, dict]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": p, "geometry": g} for p, g in features]}), encoding="utf-8")
    return path


def _load(engine, layer: str, path: Path):
    return ingest_files(layer, [path], IngestOptions(crs="EPSG:4326"), engine)


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


#: buildings: source id → outline. "B-CROSS" lies mostly in 长宁 and reaches 0.002° into 徐汇; "A-OVER" lies mostly
#: in 长宁 too and overlaps "Z-XUHUI", a 徐汇 building, west of the boundary; "B-OUT" lies outside both districts.
BUILDINGS = {
    "B-XUHUI": _box(121.404, 31.204, 121.406, 31.206),
    "B-CROSS": _box(121.418, 31.204, 121.426, 31.206),
    "Z-XUHUI": _box(121.414, 31.212, 121.419, 31.214),
    "A-OVER": _box(121.417, 31.212, 121.427, 31.214),
    "B-CHANGNING": _box(121.430, 31.204, 121.432, 31.206),
    "B-OUT": _box(121.300, 31.204, 121.302, 31.206),
}
#: addresses: source id → (lon, lat) and the building the unpruned join gives it
ADDRESSES = {
    "a-xuhui": ((121.405, 31.205), "B-XUHUI"),
    "a-cross-west": ((121.419, 31.205), "B-CROSS"),  # in 徐汇, on a building placed in 长宁
    "a-cross-east": ((121.424, 31.205), "B-CROSS"),
    "a-over": ((121.418, 31.213), "A-OVER"),  # in 徐汇 on two buildings: the 长宁 one has the smaller source id
    "a-changning": ((121.431, 31.205), "B-CHANGNING"),
    "a-out": ((121.301, 31.205), "B-OUT"),  # outside every district, on a building outside every district
    "a-nowhere": ((121.310, 31.205), None),  # outside every district, on no building
    "a-street": ((121.410, 31.215), None),  # in 徐汇, on no building
}


def _addresses(folder: Path, name: str, suffix: str = "") -> Path:
    return _write(folder / name, [({"source_id": key, "full_address": f"上海市徐汇区中山路{i + 1}号{suffix}"},
                                   {"type": "Point", "coordinates": list(point)})
                                  for i, (key, (point, _building)) in enumerate(ADDRESSES.items())])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("address-links")


@pytest.fixture(scope="module")
def base(engine, folder):
    _load(engine, "districts", _write(folder / "districts.geojson", [
        ({"code": XUHUI, "name": "徐汇区"}, _box(121.40, 31.20, BOUNDARY, 31.22)),
        ({"code": CHANGNING, "name": "长宁区"}, _box(BOUNDARY, 31.20, 121.44, 31.22))]))
    report = _load(engine, "buildings", _write(folder / "buildings.geojson", [
        ({"source_id": key, "height": 12.0}, outline) for key, outline in BUILDINGS.items()]))
    assert report.inserted == len(BUILDINGS)
    placed = dict(rows(engine, "SELECT source_id, district_code FROM buildings"))
    # the premise: the straddling buildings are placed in 长宁, the others where they stand
    assert placed == {"B-XUHUI": XUHUI, "B-CROSS": CHANGNING, "Z-XUHUI": XUHUI, "A-OVER": CHANGNING,
                      "B-CHANGNING": CHANGNING, "B-OUT": ""}
    return engine


def _links(engine) -> dict[str, str | None]:
    return dict(rows(engine, "SELECT a.source_id, b.source_id FROM addresses a LEFT JOIN buildings b "
                             "ON b.feature_id = a.building_feature_id AND b.valid_to IS NULL WHERE a.valid_to IS NULL"))


def _unpruned(engine) -> dict[str, str | None]:
    """What the link was before it was pruned: the unpruned join over the whole layer, for every current address."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE _stage ON COMMIT DROP AS SELECT row_number() OVER (ORDER BY fid) "
                             "AS stage_key, source_id, geom FROM addresses WHERE valid_to IS NULL"))
        linked = dict(conn.execute(sa.text(
            f"SELECT s.source_id, b.source_id FROM _stage s LEFT JOIN ({layers.ADDRESS_LINK_UNPRUNED}) l "
            "ON l.stage_key = s.stage_key LEFT JOIN buildings b ON b.feature_id = l.feature_id")).all())
    return linked


def test_a_first_load_whose_linking_fails_leaves_no_table_behind(base, folder, monkeypatch):
    link, loaded = SPECS["addresses"].staged_links
    failing = dataclasses.replace(SPECS["addresses"], staged_links=(lambda *a: [*link(*a), "SELECT 1/0"], loaded))
    monkeypatch.setitem(SPECS, "addresses", failing)
    with pytest.raises(Exception, match="division by zero"):
        _load(base, "addresses", _addresses(folder, "addresses-0.geojson"))
    assert rows(base, "SELECT relname FROM pg_class WHERE relname LIKE 'addresses_31%'") == []
    assert rows(base, "SELECT count(*) FROM addresses")[0][0] == 0


def test_the_first_load_is_staged_by_district_and_links_as_the_unpruned_join(base, folder):
    report = _load(base, "addresses", _addresses(folder, "addresses-1.geojson"))
    assert (report.inserted, report.rejected) == (len(ADDRESSES), 0)
    assert report.message.startswith("first load: 2 district partition(s) filled, indexed and attached"), report.message
    expected = {key: building for key, (_point, building) in ADDRESSES.items()}
    assert _links(base) == expected
    assert _unpruned(base) == expected
    placed = dict(rows(base, "SELECT source_id, tableoid::regclass::text FROM addresses"))
    assert placed["a-cross-west"] == f"addresses_{XUHUI}" and placed["a-out"] == "addresses_default"
    # history and provenance as any first load: one version each, the run's id and time, no table left over
    assert rows(base, "SELECT count(DISTINCT feature_id), count(*), bool_and(valid_to IS NULL), bool_and("
                      "ingest_run_id = :r), bool_and(valid_from = (SELECT started_at FROM ingest_runs WHERE id = :r)) "
                      "FROM addresses", r=report.run_id)[0] == (len(ADDRESSES), len(ADDRESSES), True, True, True)
    assert rows(base, "SELECT count(*) FROM pg_class WHERE relname LIKE 'addresses%linked'")[0][0] == 0
    # the staged partitions carry every index of the parent
    for district in (XUHUI, CHANGNING):
        assert rows(base, "SELECT count(*) FROM pg_index WHERE indrelid = CAST(:t AS regclass)",
                    t=f"addresses_{district}")[0][0] == rows(
            base, "SELECT count(*) FROM pg_index WHERE indrelid = 'addresses_default'::regclass")[0][0]


def test_a_second_load_merges_and_links_as_the_unpruned_join(base, folder):
    report = _load(base, "addresses", _addresses(folder, "addresses-2.geojson", suffix="1室"))
    assert (report.inserted, report.updated) == (0, len(ADDRESSES))
    expected = {key: building for key, (_point, building) in ADDRESSES.items()}
    assert _links(base) == expected == _unpruned(base)
    assert rows(base, "SELECT count(*) FROM addresses WHERE valid_to IS NOT NULL")[0][0] == len(ADDRESSES)


def _probes(plan: dict) -> dict[str, int]:
    """Loops of every scan of a buildings partition in an EXPLAIN ANALYZE (JSON) plan: index probes per partition."""
    out: dict[str, int] = {}

    def walk(node: dict) -> None:
        relation = node.get("Relation Name", "")
        if relation.startswith("buildings_"):
            out[relation] = out.get(relation, 0) + node["Actual Loops"]
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return out


def test_the_link_probes_one_partition_per_address(base):
    raw = base.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("CREATE TEMP TABLE _stage AS SELECT row_number() OVER (ORDER BY fid) AS stage_key, "
                    "NULLIF(district_code, '') AS district_code, geom FROM addresses WHERE valid_to IS NULL")
        cur.execute("ANALYZE _stage")
        pruned = layers.address_building_links(cur)
        cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {pruned}")
        probes = _probes(cur.fetchone()[0][0])
        cur.execute("SELECT count(*) FROM _crossing_buildings")
        crossing = cur.fetchone()[0]
    finally:
        raw.rollback()
        raw.close()
    per_district = {XUHUI: 4, CHANGNING: 2, "": 2}  # addresses by district ('': outside every district)
    # each address probes its own district's partition once; one outside every district probes them all
    # (the unpruned join would probe all three for each of the 8: benchmarks/addresses_load.py counts it at scale)
    assert probes == {f"buildings_{XUHUI}": per_district[XUHUI] + per_district[""],
                      f"buildings_{CHANGNING}": per_district[CHANGNING] + per_district[""],
                      "buildings_default": per_district[""]}, probes
    assert crossing == 2  # B-CROSS and A-OVER reach into 徐汇; nothing reaches into 长宁
