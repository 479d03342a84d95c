"""The big layers partitioned by district (issue 15, item 2) on a real PostGIS: two districts (徐汇 310104 and
长宁 310105, one street each) loaded through the real loaders; a part that moves district keeps its history
across partitions; the history triggers on a partitioned table (an UPDATE that changes the district too); a
district that appears during a load gets its partition inside the load and rows written by hand into the
DEFAULT partition move into it; a street-scoped caller's query reads one partition (EXPLAIN as the API role);
and migration 0008 converts a base made at 0007 with data — rows, fids, history, policies, triggers, grants and
a dependent view intact, and the same schema as a new base.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

import cim.jurisdiction
import cim.schema
from cim.bootstrap import _alembic_config, downgrade, initialise
from cim.database import engine_for
from cim.distribution import district_partitions
from cim.jurisdiction import Scope, acting_as
from cim.schema import DISTRICT_PARTITIONED
from ingest import merge
from ingest.run import IngestOptions, ingest_files
from tests.conftest import create_database

XUHUI, CHANGNING, JINGAN = "310104", "310105", "310106"
#: lon/lat squares, side by side along the parallel 31.20–31.22
SQUARES = {XUHUI: 121.40, CHANGNING: 121.42, JINGAN: 121.44}


def _square(lon: float, shrink: float = 0.0) -> dict:
    w, e, s, n = lon + shrink, lon + 0.02 - shrink, 31.20 + shrink, 31.22 - shrink
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _write(path: Path, features: list[tuple[dict, dict]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": p, "geometry": g} for p, g in features]}), encoding="utf-8")
    return path


def _load(engine, layer: str, path: Path, mode: str = "upsert"):
    return ingest_files(layer, [path], IngestOptions(crs="EPSG:4326", mode=mode), engine)


def _districts(engine, folder: Path, codes: tuple[str, ...]) -> None:
    _load(engine, "districts", _write(folder / f"districts-{'-'.join(codes)}.geojson",
                                      [({"code": c, "name": f"区{c}"}, _square(SQUARES[c])) for c in codes]))
    _load(engine, "streets", _write(folder / f"streets-{'-'.join(codes)}.geojson",
                                    [({"code": f"{c}001", "name": f"街道{c}", "district_code": c},
                                      _square(SQUARES[c], 0.001)) for c in codes]))


def _part(source_id: str, district: str, offset: float, name: str = "上水井盖") -> tuple[dict, dict]:
    lon = SQUARES[district] + 0.005 + offset
    return ({"source_id": source_id, "subclass_code": "0101", "name": name, "z": 0.0},
            {"type": "Point", "coordinates": [lon, 31.21]})


def owner(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("partitioning")


@pytest.fixture(scope="module")
def base(engine, folder):
    _districts(engine, folder, (XUHUI, CHANGNING))
    parts = [_part(f"P{i}", XUHUI, i * 0.001) for i in range(1, 6)] + [_part("P6", CHANGNING, 0.0)]
    report = _load(engine, "parts", _write(folder / "parts-1.geojson", parts))
    assert report.inserted == 6
    return engine


def _versions(engine, source_id: str) -> list[tuple]:
    return owner(engine, "SELECT tableoid::regclass::text, district_code, feature_id::text, valid_to IS NULL, "
                         "object_code FROM parts WHERE source_id = :s ORDER BY valid_from, fid", s=source_id)


def test_the_big_layers_are_partitioned_by_district(base):
    kinds = dict(owner(base, "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_class c "
                             "WHERE c.relname = ANY(:t) AND c.relkind = 'p'", t=list(DISTRICT_PARTITIONED)))
    assert kinds == {t: "LIST (district_code)" for t in DISTRICT_PARTITIONED}
    with base.connect() as conn:
        partitions = district_partitions(conn.connection.cursor(), "parts")
    assert partitions == {None: "parts_default", XUHUI: f"parts_{XUHUI}", CHANGNING: f"parts_{CHANGNING}"}
    # every row sits in its district's partition, none in DEFAULT
    placed = dict(owner(base, "SELECT tableoid::regclass::text, count(*) FROM parts GROUP BY 1"))
    assert placed == {f"parts_{XUHUI}": 5, f"parts_{CHANGNING}": 1}
    key = owner(base, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'parts'::regclass "
                      "AND contype = 'p'")
    assert key == [("PRIMARY KEY (fid, district_code)",)]
    # a partition's indexes are named after the parent's, so plans say which one they use
    assert ("ix_parts_geom_310104",) in owner(base, "SELECT indexname FROM pg_indexes WHERE tablename = 'parts_310104'")
    # the API role reaches rows only through the parent, under its policies
    assert owner(base, "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a WHERE c.relname LIKE 'parts\\_%' "
                       "AND c.relispartition AND a.grantee = 'cim_api'::regrole")[0][0] == 0


def test_a_part_that_moves_district_keeps_its_history_across_partitions(base, folder):
    before = _versions(base, "P1")
    assert [(v[0], v[3]) for v in before] == [(f"parts_{XUHUI}", True)]
    feature_id, code = before[0][2], before[0][4]
    moved = [_part("P1", CHANGNING, 0.003)] + [_part(f"P{i}", XUHUI, i * 0.001) for i in range(2, 6)] + \
            [_part("P6", CHANGNING, 0.0)]
    report = _load(base, "parts", _write(folder / "parts-2.geojson", moved))
    assert (report.updated, report.unchanged, report.inserted) == (1, 5, 0)
    after = _versions(base, "P1")
    assert after == [(f"parts_{XUHUI}", XUHUI, feature_id, False, code),
                     (f"parts_{CHANGNING}", CHANGNING, feature_id, True, code)]
    # and back again: a third version in the first partition, still one feature, one current version
    back = [_part("P1", XUHUI, 0.009)] + moved[1:]
    assert _load(base, "parts", _write(folder / "parts-3.geojson", back)).updated == 1
    again = _versions(base, "P1")
    assert [(v[0], v[2], v[3]) for v in again] == [(f"parts_{XUHUI}", feature_id, False),
                                                    (f"parts_{CHANGNING}", feature_id, False),
                                                    (f"parts_{XUHUI}", feature_id, True)]
    # the API's view of the layer: one current P1, in its new district
    assert owner(base, "SELECT district_code FROM parts WHERE source_id = 'P1' AND valid_to IS NULL") == [(XUHUI,)]


def test_history_triggers_on_the_partitioned_table(base):
    with base.begin() as conn:
        (fid, feature_id), = conn.execute(sa.text(
            "SELECT fid, feature_id::text FROM parts WHERE source_id = 'P2' AND valid_to IS NULL")).all()
        # an edit in place keeps the old version (revision 0002's rule, on a partitioned table)
        conn.execute(sa.text("UPDATE parts SET status = '破损' WHERE fid = :f"), {"f": fid})
        # an edit that changes the district: the row cannot move partitions from a BEFORE trigger, so the old
        # version is closed where it is and the new one inserted in the other district's partition
        conn.execute(sa.text("UPDATE parts SET district_code = :d, street_code = :s WHERE fid = :f"),
                     {"d": CHANGNING, "s": f"{CHANGNING}001", "f": fid})
    versions = owner(base, "SELECT tableoid::regclass::text, status, valid_to IS NULL, feature_id::text, fid = :f "
                           "FROM parts WHERE source_id = 'P2' ORDER BY valid_from, fid", f=fid)
    assert [(v[0], v[1], v[2], v[3]) for v in versions] == [
        (f"parts_{XUHUI}", None, False, feature_id),
        (f"parts_{XUHUI}", "破损", False, feature_id),
        (f"parts_{CHANGNING}", "破损", True, feature_id)]
    with base.begin() as conn:  # a DELETE terminates the feature, wherever it now lies
        assert conn.execute(sa.text("DELETE FROM parts WHERE source_id = 'P2'")).rowcount == 0
    assert owner(base, "SELECT count(*) FROM parts WHERE source_id = 'P2' AND valid_to IS NULL")[0][0] == 0
    assert owner(base, "SELECT count(*) FROM parts WHERE source_id = 'P2'")[0][0] == 3


def test_a_new_district_gets_its_partition_inside_the_load(base, folder, monkeypatch):
    # a part written by hand for a district that has no partition yet waits in DEFAULT
    with base.begin() as conn:
        handmade = conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, geom) "
            "SELECT 'HAND-1', '3101060101000500', '01', '0101', :d, geom FROM parts WHERE source_id = 'P3' "
            "AND valid_to IS NULL RETURNING fid, tableoid::regclass::text"), {"d": JINGAN}).one()
    assert handmade[1] == "parts_default"
    _load(base, "districts", _write(folder / "districts-more.geojson",
                                    [({"code": JINGAN, "name": "静安区"}, _square(SQUARES[JINGAN]))]))
    # without the partitions made before the load's lock, the load makes them itself, inside its transaction
    monkeypatch.setattr(merge, "prepare_partitions", lambda engine, table: [])
    report = _load(base, "parts", _write(folder / "parts-jingan.geojson", [_part("J1", JINGAN, 0.0)]),
                   mode="append")
    assert report.inserted == 1
    assert _versions(base, "J1")[0][:2] == (f"parts_{JINGAN}", JINGAN)
    # the hand-written row moved with its district, as it was
    assert owner(base, "SELECT fid, tableoid::regclass::text FROM parts WHERE source_id = 'HAND-1'") == [
        (handmade[0], f"parts_{JINGAN}")]
    assert owner(base, "SELECT count(*) FROM parts_default")[0][0] == 0
    # a first load (COPY straight into the table, ingest.merge.DirectLoad) does the same
    line = {"type": "LineString", "coordinates": [[SQUARES[JINGAN] + 0.005, 31.21], [SQUARES[JINGAN] + 0.006, 31.21]]}
    assert _load(base, "pipelines", _write(folder / "pipes.geojson", [
        ({"source_id": "L1", "kind": "给水", "start_depth": 1.2, "end_depth": 1.3}, line)])).inserted == 1
    assert owner(base, "SELECT tableoid::regclass::text FROM pipelines") == [(f"pipelines_{JINGAN}",)]


def test_rows_waiting_in_default_move_before_the_next_load(base, folder):
    """A code the districts layer does not hold (written by hand, or — on Citus — loaded): the next load of the
    layer gives it its partition before it starts, and its rows move there."""
    with base.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, geom) "
            "SELECT 'HAND-2', '3101070101000001', '01', '0101', '310107', geom FROM parts WHERE source_id = 'P3' "
            "AND valid_to IS NULL"))
    assert owner(base, "SELECT count(*) FROM parts_default")[0][0] == 1
    _load(base, "parts", _write(folder / "parts-jingan-2.geojson", [_part("J2", JINGAN, 0.001)]), mode="append")
    assert owner(base, "SELECT tableoid::regclass::text FROM parts WHERE source_id = 'HAND-2'") == [("parts_310107",)]
    assert owner(base, "SELECT count(*) FROM parts_default")[0][0] == 0
    with base.begin() as conn:  # gone again, so that the pruning test below counts the partitions it expects
        conn.execute(sa.text("ALTER TABLE parts DETACH PARTITION parts_310107"))
        conn.execute(sa.text("DROP TABLE parts_310107"))


def _plan(engine, scope: Scope, sql: str) -> str:
    scoped = engine_for(engine.url.render_as_string(hide_password=False), scoped=True)
    with acting_as(scope), scoped.begin() as conn:
        return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) {sql}"))


def test_a_street_scoped_query_reads_one_partition(base):
    street = f"{XUHUI}001"
    plan = _plan(base, Scope("area", street=street), "SELECT count(*) FROM parts WHERE valid_to IS NULL")
    scanned = {p for p in (f"parts_{XUHUI}", f"parts_{CHANGNING}", f"parts_{JINGAN}", "parts_default")
               if f" {p} " in plan + " "}
    assert scanned == {f"parts_{XUHUI}"} and "Subplans Removed: 3" in plan, plan
    # the district of a district-scoped caller, too; the city reads every partition
    district = _plan(base, Scope("area", district=CHANGNING), "SELECT count(*) FROM parts")
    assert f"parts_{CHANGNING}" in district and f"parts_{XUHUI}" not in district, district
    # grids: when every grid code begins with one district's code, that district's partition alone
    grids = _plan(base, Scope("area", grids=(f"{XUHUI}00100101", f"{XUHUI}00100102")), "SELECT count(*) FROM parts")
    assert "Subplans Removed: 3" in grids and f"parts_{XUHUI}" in grids, grids
    across = _plan(base, Scope("area", grids=(f"{XUHUI}00100101", f"{CHANGNING}00100101")), "SELECT 1 FROM parts")
    assert "Subplans Removed" not in across, across
    city = _plan(base, Scope("city", role="admin"), "SELECT count(*) FROM parts")
    assert "Subplans Removed" not in city and "parts_default" in city, city
    # and the answers are the street's rows, no more, no fewer
    scoped = engine_for(base.url.render_as_string(hide_password=False), scoped=True)
    with acting_as(Scope("area", street=street)), scoped.connect() as conn:
        seen = conn.execute(sa.text("SELECT count(*) FROM parts WHERE valid_to IS NULL")).scalar()
    assert seen == owner(base, "SELECT count(*) FROM parts WHERE valid_to IS NULL AND street_code = :s",
                         s=street)[0][0] > 0


def _migration(name: str):
    import importlib.util

    path = Path(cim.schema.__file__).parent / "migrations" / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_policy_reads_the_callers_district_from_one_setting(base):
    """Revision 0012: the partitioned tables' policies compare the partition key with ``cim.partition``, which the
    scope sets once (Scope.one_district), instead of working the district out in SQL on every row read (two
    regular expressions a row). Same district as revision 0008's rule for every kind of scope, the same rows and
    pruning after a downgrade and an upgrade again."""
    qual = owner(base, "SELECT qual FROM pg_policies WHERE tablename = 'parts' AND policyname = 'cim_read'")[0][0]
    assert "cim.partition" in qual and "cim.grids" not in qual and " ~ " not in qual, qual
    rule = _migration("0012_policy_partition")._SCOPE_DISTRICT_0008
    scopes = [Scope("city", role="admin"), Scope("public"), Scope("area", district=CHANGNING),
              Scope("area", street=f"{XUHUI}001"), Scope("area", district=XUHUI, street=f"{CHANGNING}001"),
              Scope("area", grids=(f"{XUHUI}00100101", f"{XUHUI}00100102")),
              Scope("area", grids=(f"{XUHUI}00100101", f"{CHANGNING}00100101")), Scope("area", grids=("31a10400",)),
              Scope("area", grids=(f"{XUHUI}00100101", "")), Scope("area", department="D1")]
    scoped = engine_for(base.url.render_as_string(hide_password=False), scoped=True)
    for scope in scopes:
        with acting_as(scope), scoped.connect() as conn:
            in_sql, setting = conn.execute(sa.text(f"SELECT {rule}, current_setting('cim.partition')")).one()
        assert (in_sql or "") == setting == (scope.one_district() or ""), scope
    street = Scope("area", street=f"{XUHUI}001")
    query = "SELECT count(*) FROM parts WHERE valid_to IS NULL"
    with acting_as(street), scoped.connect() as conn:
        seen = conn.execute(sa.text(query)).scalar()
    policies = "SELECT tablename, policyname, qual, with_check FROM pg_policies ORDER BY 1, 2"
    now = owner(base, policies)
    downgrade(base, "0011_case_keys")
    assert " ~ " in owner(base, "SELECT qual FROM pg_policies WHERE tablename = 'parts' AND policyname = 'cim_read'")[0][0]
    with acting_as(street), scoped.connect() as conn:
        assert conn.execute(sa.text(query)).scalar() == seen > 0
    initialise(base)
    assert owner(base, policies) == now
    assert "Subplans Removed: 3" in _plan(base, street, query)


# --- migration 0008 on a base made at 0007 ----------------------------------------------------------------

def _schema(engine) -> dict:
    """What must be the same in a new and an upgraded base: the partitioned tables (columns, keys, indexes,
    triggers, policies, rights), their DEFAULT partitions, and the history functions."""
    out = {}
    for table in DISTRICT_PARTITIONED:
        out[table] = {
            "columns": owner(engine, "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attidentity, "
                                     "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d "
                                     "ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = "
                                     "CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY attnum",
                             t=table),
            **{f"{kind}:{name}": owner(engine, sql, t=name) for name in (table, f"{table}_default") for kind, sql in {
                "constraints": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                               "WHERE conrelid = CAST(:t AS regclass) ORDER BY 1",
                "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t ORDER BY 1",
                "triggers": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                            "WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal ORDER BY 1",
                "policies": "SELECT policyname, cmd, roles::text, qual, with_check FROM pg_policies "
                            "WHERE tablename = :t ORDER BY 1",
                "relation": "SELECT relrowsecurity, relacl::text, pg_get_partkeydef(oid) FROM pg_class "
                            "WHERE oid = CAST(:t AS regclass)",
            }.items()},
            "history": owner(engine, "SELECT pg_get_functiondef(CAST(:f AS regprocedure))",
                             f=f"{table}_keep_history()"),
        }
    return out


@pytest.fixture(scope="module")
def base_at_0007(server_url):
    """A base made by revisions 0001–0007 as they were before partitioning, with rows and history."""
    url = create_database(server_url)
    engine = engine_for(url)
    patch = pytest.MonkeyPatch()
    patch.setattr(cim.schema, "DISTRICT_PARTITIONED", ())  # the tables as 0001 made them then
    patch.setattr(cim.jurisdiction, "DISTRICT_PARTITIONED", ())  # and 0006's policies
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn, 4549), "0007_scenario_jurisdiction")
    finally:
        patch.undo()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO part_classes (code, name) VALUES ('01', '公用设施')"))
        conn.execute(sa.text("INSERT INTO part_classes (code, name, parent_code) "
                             "VALUES ('0101', '上水井盖', '01')"))
        for i, district in enumerate([XUHUI, XUHUI, CHANGNING, None]):
            conn.execute(sa.text(
                "INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, street_code, "
                "geom) "
                "VALUES (:s, :c, '01', '0101', :d, :st, ST_SetSRID(ST_MakePoint(500000 + :i, 3450000, 0), 4549))"),
                {"s": f"OLD-{i}", "c": f"31010401010000{i:02d}", "d": district,
                 "st": district and f"{district}001", "i": i})
        conn.execute(sa.text("UPDATE parts SET name = '改' WHERE source_id = 'OLD-0'"))  # history: 2 versions
        conn.execute(sa.text("DELETE FROM parts WHERE source_id = 'OLD-1'"))  # terminated
        conn.execute(sa.text("CREATE VIEW current_parts WITH (security_invoker = true) AS "
                             "SELECT fid, source_id, district_code FROM parts WHERE valid_to IS NULL"))
        conn.execute(sa.text("GRANT SELECT ON current_parts TO cim_api"))
        assert conn.execute(sa.text("SELECT relkind FROM pg_class WHERE relname = 'parts'")).scalar() == "r"
    return engine


def test_migration_0008_converts_a_base_with_rows(base_at_0007, base):
    old = base_at_0007
    rows = "SELECT fid, feature_id::text, source_id, coalesce(name, ''), valid_from, valid_to FROM parts ORDER BY fid"
    before = owner(old, rows)
    assert len(before) == 5
    initialise(old)  # the upgrade, as cim init runs it
    assert owner(old, rows) == before  # every version, fid, feature id and validity as it was
    placed = owner(old, "SELECT source_id, tableoid::regclass::text, district_code FROM parts "
                        "WHERE valid_to IS NULL ORDER BY 1")
    assert placed == [("OLD-0", f"parts_{XUHUI}", XUHUI), ("OLD-2", f"parts_{CHANGNING}", CHANGNING),
                      ("OLD-3", "parts_default", "")]
    with old.begin() as conn:  # new rows continue the fids; the history trigger still keeps versions
        fid = conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, geom) VALUES "
            "('NEW', '3101040101000099', '01', '0101', :d, ST_SetSRID(ST_MakePoint(500000, 3450000, 0), 4549)) "
            "RETURNING fid"), {"d": XUHUI}).scalar()
        assert fid > max(r[0] for r in before)
        conn.execute(sa.text("UPDATE parts SET name = '又改' WHERE source_id = 'OLD-0' AND valid_to IS NULL"))
    assert owner(old, "SELECT count(*) FROM parts WHERE source_id = 'OLD-0'")[0][0] == 3
    # the dependent view is back, as the API role may read it, under the policies
    assert owner(old, "SELECT count(*) FROM current_parts")[0][0] == 4
    assert owner(old, "SELECT has_table_privilege('cim_api', 'current_parts', 'SELECT')")[0][0]
    # the same schema as a new base's
    upgraded = _schema(old)
    # (8 indexes: the N-D GiST is no more, revision 0013_nearby_2d)
    assert len(upgraded["parts"]["indexes:parts_default"]) == 8 and upgraded["parts"]["policies:parts"]
    assert upgraded == _schema(base)
