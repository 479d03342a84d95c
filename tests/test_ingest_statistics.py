"""A load leaves its layer with the planner's statistics (issue 15, loads at scale): autovacuum cannot analyze a
layer while the next load holds it (addresses lock buildings), and without statistics the address → building
link probed every building of a district for each address. The load analyzes what it changed, under autovacuum's
own rule, before it commits."""
from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from ingest.run import IngestOptions, ingest_files
from ingest.statistics import THRESHOLD_ROWS, analyze_parent, refresh_statistics


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
        assert refresh_statistics(cur, "known_rows", 0).tables == ()
        assert refresh_statistics(cur, "known_rows", rule).tables == ()  # at the rule, not past it
        assert refresh_statistics(cur, "known_rows", rule + 1).tables == ("known_rows",)
        cur.execute("CREATE TEMP TABLE never_analyzed AS SELECT generate_series(1, 10) AS i")
        assert refresh_statistics(cur, "never_analyzed", 1).tables == ("never_analyzed",)  # the planner knew nothing
        cur.execute("SELECT reltuples FROM pg_class WHERE relname = 'never_analyzed'")
        assert cur.fetchone()[0] == 10
    finally:
        raw.rollback()
        raw.close()


# --- a staged first load: each partition analyzed as it is built, the layer's own statistics after the commit ----

def _district(code: str, lon0: float) -> dict:
    return {"type": "Feature", "properties": {"code": code, "name": f"区{code}"},
            "geometry": _square(lon0, lon0 + 0.02)}


def _part(source_id: str, lon: float, code: str | None = None) -> dict:
    properties = {"source_id": source_id, "subclass_code": "0101", "name": "井盖"}
    if code:
        properties["object_code"] = code
    return {"type": "Feature", "properties": properties, "geometry": {"type": "Point", "coordinates": [lon, 31.21]}}


def _statistics(engine: sa.Engine) -> dict[str, tuple]:
    """Table → (the rows the planner knows, how many times it was analyzed); the layer itself: (its rows, the
    district codes its own statistics hold)."""
    with engine.connect() as conn:
        found = {r[0]: (r[1], r[2]) for r in conn.execute(sa.text(
            "SELECT s.relname, c.reltuples, s.analyze_count FROM pg_stat_user_tables s "
            "JOIN pg_class c ON c.oid = s.relid WHERE s.relname LIKE 'parts_%'"))}
        found["parts"] = conn.execute(sa.text(
            "SELECT c.reltuples, (SELECT array_agg(v ORDER BY v) FROM pg_stats s, "
            "unnest(s.most_common_vals::text::text[]) v WHERE s.tablename = 'parts' AND s.inherited "
            "AND s.attname = 'district_code') FROM pg_class c WHERE c.relname = 'parts'")).one()
    return found


def test_a_staged_first_load_analyzes_each_partition_once_and_the_layer_after_it(server_url, tmp_path):
    """Xuhui is closed (built and analyzed in the background) while Changning's rows are read; a late Xuhui row
    and a repeated id taken back out of Changning come after: both tables are analyzed again before they are
    attached, so every partition's statistics count its rows; the layer's own statistics, made after the commit
    without analyzing the partitions again (PostgreSQL 15 has no ANALYZE ONLY), cover both districts."""
    from cim.bootstrap import initialise
    from cim.database import engine_for
    from tests.conftest import create_database

    engine = engine_for(create_database(server_url))
    initialise(engine)
    ingest_files("districts", [_geojson(tmp_path / "districts.geojson", [
        _district("310104", 121.40), _district("310105", 121.42)])], IngestOptions(crs="EPSG:4326"), engine)
    # past autovacuum's rule (50 rows): the whole layer is due
    features = [_part(f"X{i}", 121.40 + 0.0002 * i) for i in range(1, 31)]  # Xuhui's run: closed in batch 4
    features += [_part(f"C{i}", 121.42 + 0.0002 * i) for i in range(1, 41)]  # Changning's run
    features += [_part("X31", 121.4090, code="3101040101000099"),  # late for Xuhui (closed, analyzed)
                 _part("C1", 121.4190)]  # C1 again: the first one is taken back out of Changning's closed table
    report = ingest_files("parts", [_geojson(tmp_path / "parts.geojson", features)],
                          IngestOptions(crs="EPSG:4326", batch_rows=10), engine)
    assert report.inserted == 70, report
    assert report.message.endswith("(2 indexed while the next district's rows were read)"), report.message
    stats = _statistics(engine)
    assert stats["parts_310104"][0] == 31 and stats["parts_310105"][0] == 39, stats  # the late changes counted
    assert stats["parts_default"][1] == 1, stats
    assert stats["parts"] == (70, ["310104", "310105"]), stats

    # a partition is not analyzed again for the layer's own statistics: rows added behind the planner's back
    # are counted by the layer's, not by the partition's
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, "
                             "geom) SELECT 'N' || i, '3101050199' || lpad(i::text, 6, '0'), '01', '0101', "
                             "'310105', ST_SetSRID(ST_MakePoint(0, 0, 0), 4549) FROM generate_series(1, 100) i"))
    assert analyze_parent(engine, "parts")
    again = _statistics(engine)
    assert again["parts_310105"] == stats["parts_310105"], again
    assert again["parts"] == (170, ["310104", "310105"]), again


def test_the_layers_own_statistics_wait_for_a_load_of_it_only_so_long(engine):
    """A load of the layer that began since the commit holds it: the layer's statistics are not made, not waited
    for (the load's report says so)."""
    other = engine.raw_connection()
    try:
        other.cursor().execute("LOCK TABLE parts IN SHARE ROW EXCLUSIVE MODE")
        assert analyze_parent(engine, "parts", wait="200ms") is False
    finally:
        other.rollback()
        other.close()
    assert analyze_parent(engine, "parts") is True
