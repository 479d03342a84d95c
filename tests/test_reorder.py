"""`cim ingest reorder` rewrites a loaded layer's heap in spatial order (issue 15, queries at scale): a base
whose rows came in many small loads (or were loaded before first loads wrote Z order) has a place's rows spread
over the whole table; after the rewrite they sit together — with the same rows, ids, history and indexes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from cim.errors import UserError
from ingest.reorder import reorder, reorder_targets
from ingest.run import IngestOptions, ingest_files
from tests.conftest import run_cim

#: two places 5 km apart in 徐汇 (lon) and one in 黄浦, in another district
PLACES = {"A": (121.40, 31.21), "B": (121.45, 31.21)}
ROUNDS = 6


def _districts(tmp_path: Path, engine) -> None:
    def square(lon0: float, lon1: float) -> dict:
        return {"type": "Polygon", "coordinates": [[[lon0, 31.20], [lon1, 31.20], [lon1, 31.22], [lon0, 31.22],
                                                    [lon0, 31.20]]]}
    path = tmp_path / "districts.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": "310104", "name": "徐汇区"}, "geometry": square(121.39, 121.47)},
        {"type": "Feature", "properties": {"code": "310101", "name": "黄浦区"}, "geometry": square(121.47, 121.52)},
    ]}), encoding="utf-8")
    ingest_files("districts", [path], IngestOptions(crs="EPSG:4326"), engine)


def _parts(tmp_path: Path, name: str, rows: list[tuple[str, float, float, str]]) -> Path:
    path = tmp_path / f"{name}.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"source_id": sid, "subclass_code": "0101", "name": label, "z": -1.5},
         "geometry": {"type": "Point", "coordinates": [lon, lat]}} for sid, lon, lat, label in rows]}),
        encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def worn(engine, tmp_path_factory) -> sa.Engine:
    """徐汇's parts from six small deliveries taking turns between two places, then one that changes every
    A-part's name (closing their versions: history rows), and a few parts in 黄浦."""
    tmp_path = tmp_path_factory.mktemp("reorder")
    _districts(tmp_path, engine)
    for n in range(ROUNDS):
        place = "AB"[n % 2]
        lon, lat = PLACES[place]
        rows = [(f"{place}{n}-{i}", lon + 0.00002 * i, lat + 0.00001 * (i % 7), "井盖") for i in range(60)]
        report = ingest_files("parts", [_parts(tmp_path, f"parts{n}", rows)], IngestOptions(crs="EPSG:4326",
                                                                                            mode="append"), engine)
        assert report.inserted == 60, report
    renamed = [(f"A{n}-{i}", PLACES["A"][0] + 0.00002 * i, PLACES["A"][1] + 0.00001 * (i % 7), "雨水井盖")
               for n in range(0, ROUNDS, 2) for i in range(60)]
    report = ingest_files("parts", [_parts(tmp_path, "renamed", renamed)], IngestOptions(crs="EPSG:4326"), engine)
    assert report.updated == len(renamed), report
    east = [(f"H{i}", 121.48 + 0.0001 * i, 31.21, "井盖") for i in range(20)]
    ingest_files("parts", [_parts(tmp_path, "east", east)], IngestOptions(crs="EPSG:4326", mode="append"), engine)
    return engine


def _heap(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.text(f'SELECT source_id FROM "{table}" ORDER BY ctid')).scalars().all()


def _rows(engine: sa.Engine) -> set[tuple]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "SELECT fid, feature_id, source_id, valid_from, valid_to, content_hash, name, district_code, "
            "ST_AsEWKB(geom) FROM parts")).all())


def _runs(source_ids: list[str]) -> str:
    """'B1×60 A0×40 …': the deliveries as they lie on the heap, for a failure's message."""
    runs: list[list] = []
    for s in source_ids:
        if runs and runs[-1][0] == s.split("-")[0]:
            runs[-1][1] += 1
        else:
            runs.append([s.split("-")[0], 1])
    return " ".join(f"{k}×{n}" for k, n in runs)


def _changes_of_place(source_ids: list[str]) -> int:
    places = [s[0] for s in source_ids]
    return sum(a != b for a, b in zip(places, places[1:]))


def test_a_worn_layer_is_rewritten_in_spatial_order_with_the_same_rows(worn):
    xuhui = "parts_310104"
    before_heap, before_rows = _heap(worn, xuhui), _rows(worn)
    assert _changes_of_place(before_heap) >= 3, _runs(before_heap)  # the places take turns on the heap
    east_before = _heap(worn, "parts_310101")

    targets = reorder_targets(worn, ["parts"], ["310104"])
    assert [t.table for t in targets] == [xuhui]
    done = reorder(worn, targets, jobs=1)
    assert done[0].rows == len(before_heap) and done[0].target.table == xuhui

    after = _heap(worn, xuhui)
    assert sorted(after) == sorted(before_heap)
    assert _changes_of_place(after) == 1  # one place after the other, history rows with their place
    assert _rows(worn) == before_rows  # same fids, feature ids, versions and geometries
    assert _heap(worn, "parts_310101") == east_before  # another district's partition was left alone
    with worn.connect() as conn:
        leftover = conn.execute(sa.text(
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'cim_reorder_%'")).scalar()
        invalid = conn.execute(sa.text(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'parts_310104'::regclass AND NOT indisvalid")).scalar()
        # the indexes still answer: the 5 parts nearest place B come from the B deliveries
        near_b = conn.execute(sa.text(
            "SELECT source_id FROM parts WHERE valid_to IS NULL ORDER BY geom <-> "
            "ST_Transform(ST_SetSRID(ST_MakePoint(:lon, :lat), 4326), ST_SRID(geom)) LIMIT 5"),
            {"lon": PLACES["B"][0], "lat": PLACES["B"][1]}).scalars().all()
    assert leftover == 0 and invalid == 0
    assert len(near_b) == 5 and all(s.startswith("B") for s in near_b)


def test_the_command_rewrites_every_spatial_layer_and_names_bad_input(worn, db_url):
    proc = run_cim("ingest", "reorder", "parts", "--jobs", "2", db_url=db_url)
    assert "parts_310104" in proc.stdout and "parts_310101" in proc.stdout, proc.stdout
    assert _changes_of_place(_heap(worn, "parts_310104")) == 1

    bad = run_cim("ingest", "reorder", "roads", db_url=db_url, check=False)
    assert bad.returncode != 0 and "'roads'" in bad.stderr + bad.stdout and "parts" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr
    nowhere = run_cim("ingest", "reorder", "parts", "--district", "310999", db_url=db_url, check=False)
    assert nowhere.returncode != 0 and "310999" in nowhere.stderr + nowhere.stdout
    with pytest.raises(UserError, match="unknown layer"):
        reorder_targets(worn, ["nope"])
    # every layer with a geometry by default, districts' partitions of the partitioned ones among them
    tables = {t.table for t in reorder_targets(worn)}
    assert {"districts", "grids", "parts_310104", "parts_310101"} <= tables


def test_too_little_free_disk_is_refused_before_anything_changes(worn, monkeypatch, tmp_path):
    """Two partitions rewritten at once need room for both copies: the check sums them and names the disk."""
    targets = reorder_targets(worn, ["parts"])
    before = {t.table: _heap(worn, t.table) for t in targets}
    both = sum(t.bytes for t in targets[:2])
    usage = type(shutil.disk_usage(tmp_path))
    # enough for the largest partition alone, not for the two rewritten together
    monkeypatch.setattr("ingest.reorder.shutil.disk_usage", lambda _path: usage(both * 4, both * 3, both))
    with pytest.raises(UserError, match=r"free disk .* nothing was changed"):
        reorder(worn, targets, jobs=2, data_dir=tmp_path)
    assert {t.table: _heap(worn, t.table) for t in targets} == before
    assert len(reorder(worn, targets, jobs=1, data_dir=tmp_path)) == len(targets)  # one at a time fits
