"""A load leaves its layer with the planner's statistics (issue 15, loads at scale): autovacuum cannot analyze a
layer while the next load holds it (addresses lock buildings), and without statistics the address → building
link probed every building of a district for each address. The load analyzes what it changed, under autovacuum's
own rule, before it commits."""
from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from ingest.run import IngestOptions, ingest_files
from ingest.statistics import THRESHOLD_ROWS, refresh_statistics


def _geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    return path


def _square(lon0: float, lon1: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[lon0, 31.20], [lon1, 31.20], [lon1, 31.22], [lon0, 31.22],
                                                [lon0, 31.20]]]}


def _parts(tmp_path: Path, name: str, n: int, lon: float) -> Path:
    return _geojson(tmp_path / f"{name}.geojson", [
        {"type": "Feature", "properties": {"source_id": f"{name}-{i}", "subclass_code": "0101", "name": "井盖"},
         "geometry": {"type": "Point", "coordinates": [lon + 0.00001 * i, 31.21]}} for i in range(n)])


def _analyzed(engine: sa.Engine) -> dict[str, tuple]:
    """Table → (last manual ANALYZE is set, rows the planner knows): autovacuum's runs set another column."""
    with engine.connect() as conn:
        return {r[0]: (r[1] is not None, r[2]) for r in conn.execute(sa.text(
            "SELECT s.relname, s.last_analyze, c.reltuples FROM pg_stat_user_tables s "
            "JOIN pg_class c ON c.oid = s.relid WHERE s.relname LIKE 'parts%'"))}


def test_a_load_analyzes_what_it_changed_and_a_small_one_only_new_partitions(engine, tmp_path):
    ingest_files("districts", [_geojson(tmp_path / "districts.geojson", [
        {"type": "Feature", "properties": {"code": "310104", "name": "徐汇区"}, "geometry": _square(121.39, 121.47)},
        {"type": "Feature", "properties": {"code": "310101", "name": "黄浦区"}, "geometry": _square(121.47, 121.52)},
    ])], IngestOptions(crs="EPSG:4326"), engine)

    first = ingest_files("parts", [_parts(tmp_path, "xuhui", 400, 121.40)], IngestOptions(crs="EPSG:4326"), engine)
    assert first.inserted == 400
    stats = _analyzed(engine)
    assert stats["parts_310104"] == (True, 400.0), stats  # counted before the commit, by the load itself

    # 30 more rows in 徐汇 pass no rule (50 + 10 % of 400): its statistics stay; 黄浦's new partition is analyzed
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_stat_reset_single_table_counters('parts_310104'::regclass)"))
    small = _parts(tmp_path, "more", 30, 121.41)
    east = _parts(tmp_path, "east", 5, 121.48)
    ingest_files("parts", [small, east], IngestOptions(crs="EPSG:4326", mode="append"), engine)
    stats = _analyzed(engine)
    assert stats["parts_310104"] == (False, 400.0), stats
    assert stats["parts_310101"] == (True, 5.0), stats


def test_the_rule_is_autovacuums_over_the_rows_the_planner_knows(engine):
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("CREATE TEMP TABLE known_rows AS SELECT generate_series(1, 1000) AS i")
        cur.execute("ANALYZE known_rows")
        rule = int(THRESHOLD_ROWS + 0.1 * 1000)
        assert refresh_statistics(cur, "known_rows", 0) == []
        assert refresh_statistics(cur, "known_rows", rule) == []  # at the rule, not past it
        assert refresh_statistics(cur, "known_rows", rule + 1) == ["known_rows"]
        cur.execute("CREATE TEMP TABLE never_analyzed AS SELECT generate_series(1, 10) AS i")
        assert refresh_statistics(cur, "never_analyzed", 1) == ["never_analyzed"]  # the planner knew nothing
        cur.execute("SELECT reltuples FROM pg_class WHERE relname = 'never_analyzed'")
        assert cur.fetchone()[0] == 10
    finally:
        raw.rollback()
        raw.close()
