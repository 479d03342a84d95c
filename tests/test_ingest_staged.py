"""The first load of a district-partitioned layer (ingest.staged) on a real PostGIS, one base for the module, in
order: a staged table left by a killed load is dropped by the next load; a load refused by --strict leaves no
table behind; the first load puts each district's rows in a partition of its own, attached with every index,
key and constraint of the parent, with the fids of the parent's sequence and the load's time, rows outside
every district in the DEFAULT partition, and an audit record; the next load of the same layer merges as usual.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from ingest.merge import DirectLoad, table_columns, uuid_text
from ingest.run import IngestOptions, ingest_files
from ingest.staged import MARK

XUHUI, CHANGNING = "310104", "310105"
SQUARES = {XUHUI: 121.40, CHANGNING: 121.42}


def _square(lon: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[lon, 31.20], [lon + 0.02, 31.20], [lon + 0.02, 31.22],
                                                [lon, 31.22], [lon, 31.20]]]}


def _write(path: Path, features: list[tuple[dict, dict]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": p, "geometry": g} for p, g in features]}), encoding="utf-8")
    return path


def _part(source_id: str, lon: float, subclass: str = "0101") -> tuple[dict, dict]:
    return ({"source_id": source_id, "subclass_code": subclass, "name": "井盖", "z": 1.5},
            {"type": "Point", "coordinates": [lon, 31.21]})


def _parts(folder: Path, name: str, extra: list | None = None) -> Path:
    features = [_part(f"X{i}", SQUARES[XUHUI] + 0.001 * i) for i in range(1, 5)]
    features += [_part(f"C{i}", SQUARES[CHANGNING] + 0.001 * i) for i in range(1, 4)]
    outside = _part("OUT", 121.30)  # inside the city, outside both districts: its code is given
    features.append(({**outside[0], "object_code": "3101070101000001"}, outside[1]))
    return _write(folder / name, features + (extra or []))


def _load(engine, path: Path, **options):
    return ingest_files("parts", [path], IngestOptions(crs="EPSG:4326", **options), engine)


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("staged")


@pytest.fixture(scope="module")
def base(engine, folder):
    ingest_files("districts", [_write(folder / "districts.geojson", [
        ({"code": c, "name": f"区{c}"}, _square(lon)) for c, lon in SQUARES.items()])],
        IngestOptions(crs="EPSG:4326"), engine)
    return engine


def _tables(engine, pattern: str) -> list[str]:
    return [r[0] for r in rows(engine, "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relname LIKE :p "
                                       "ORDER BY 1", p=pattern)]


def test_a_staged_table_left_by_a_killed_load_is_dropped_by_the_next(base, folder):
    with base.begin() as conn:
        conn.execute(sa.text("CREATE TABLE parts_leftover (LIKE parts)"))
        conn.execute(sa.text(f"COMMENT ON TABLE parts_leftover IS '{MARK} parts'"))
    with pytest.raises(Exception, match="--strict"):
        _load(base, _parts(folder, "bad.geojson", [_part("BAD", SQUARES[XUHUI] + 0.01, subclass="9999")]),
              strict=True)
    assert "parts_leftover" not in _tables(base, "parts%")


def test_a_refused_first_load_leaves_no_table_behind(base):
    # the load above was refused by --strict after staging its rows: neither partitions nor staged tables
    assert _tables(base, "parts_31%") == []
    assert rows(base, "SELECT count(*) FROM parts")[0][0] == 0


def test_the_first_load_attaches_a_partition_per_district_with_everything_the_parent_has(base, folder):
    report = _load(base, _parts(folder, "parts.geojson"))
    assert (report.inserted, report.rejected) == (8, 0)
    assert report.message == "first load: 2 district partition(s) filled, indexed and attached after their rows"
    partitions = dict(rows(base, "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                                 "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'parts'::regclass"))
    assert partitions == {"parts_default": "DEFAULT", f"parts_{XUHUI}": f"FOR VALUES IN ('{XUHUI}')",
                          f"parts_{CHANGNING}": f"FOR VALUES IN ('{CHANGNING}')"}
    counts = dict(rows(base, "SELECT tableoid::regclass::text, count(*) FROM parts GROUP BY 1"))
    assert counts == {f"parts_{XUHUI}": 4, f"parts_{CHANGNING}": 3, "parts_default": 1}
    # every index of the parent has its partition on each district's table, attached to it
    parent = {r[0] for r in rows(base, "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'parts'::regclass")}
    for district in (XUHUI, CHANGNING):
        attached = rows(base, "SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
                              "WHERE x.indrelid = CAST(:t AS regclass) AND i.inhparent::regclass::text = ANY(:p)",
                        t=f"parts_{district}", p=list(parent))[0][0]
        assert attached == len(parent)
        keys = {r[0] for r in rows(base, "SELECT contype::text || ':' || confrelid::regclass::text FROM pg_constraint "
                                         "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'f', 'c')",
                                   t=f"parts_{district}")}
        assert keys == {"p:-", "f:ingest_runs", "f:part_classes", "c:-"}
        assert rows(base, "SELECT obj_description(CAST(:t AS regclass), 'pg_class')", t=f"parts_{district}")[0][0] is None
    # fids from the parent's sequence, the load's time, the run
    fids, times, runs = rows(base, "SELECT count(DISTINCT fid), count(DISTINCT valid_from), array_agg(DISTINCT "
                                   "ingest_run_id) FROM parts")[0]
    assert (fids, times, runs) == (8, 1, [report.run_id])
    assert rows(base, "SELECT p.valid_from = r.started_at FROM parts p JOIN ingest_runs r ON r.id = p.ingest_run_id "
                      "LIMIT 1")[0][0]
    with base.begin() as conn:  # the next row through the parent gets the next fid
        max_fid = conn.execute(sa.text("SELECT max(fid) FROM parts")).scalar()
        assert conn.execute(sa.text(
            "INSERT INTO parts (object_code, part_class, part_subclass, district_code, geom) VALUES "
            "('3101040101999999', '01', '0101', :d, ST_SetSRID(ST_MakePoint(0, 0, 0), 4549)) RETURNING fid"),
            {"d": XUHUI}).scalar() > max_fid
        conn.rollback()
    assert rows(base, "SELECT count(*) FROM audit_log WHERE object = 'parts' AND action = 'insert'")[0][0] >= 1
    # feature ids made by the loader (ingest.merge.random_uuids, sent in the COPY): distinct version-4 UUIDs
    ids = [r[0] for r in rows(base, "SELECT feature_id::text FROM parts")]
    assert len(set(ids)) == 8
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids)


def test_the_loader_makes_the_feature_ids_of_a_first_load(base):
    with base.connect() as conn:
        cur = conn.connection.cursor()
        load = DirectLoad(cur, "parts", table_columns(cur, "parts"), run_id=0)
        assert "feature_id" in load.columns  # not left to gen_random_uuid() on the server, row by row
        ids = uuid_text(pa.array(load.prepared(pd.DataFrame({"source_id": ["a", "b", "c"]}))["feature_id"].array)
                        ).to_pylist()
        cur.execute("SELECT array_agg(CAST(i AS uuid)::text) FROM unnest(CAST(%s AS text[])) i", (ids,))
        assert cur.fetchone()[0] == ids and len(set(ids)) == 3
        conn.rollback()


def test_the_next_load_merges_into_the_partitions(base, folder):
    before = dict(rows(base, "SELECT source_id, feature_id::text FROM parts"))
    report = _load(base, _parts(folder, "parts-again.geojson", [_part("X9", SQUARES[XUHUI] + 0.009)]))
    assert (report.inserted, report.unchanged) == (1, 8)
    after = dict(rows(base, "SELECT source_id, feature_id::text FROM parts WHERE valid_to IS NULL"))
    assert {k: after[k] for k in before} == before  # the ids the first load made are kept
    assert rows(base, "SELECT count(*) FROM parts_310104 WHERE valid_to IS NULL")[0][0] == 5
