"""Issue 2: the city base — cluster, schema, migrations, history, 3D distance, idempotent init."""
from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from cim.bootstrap import InitError, downgrade, head_revision, initialise
from cim.database import engine_for
from cim.schema import FEATURE_TABLES, build_metadata
from tests.conftest import create_database, run_cim
from tests.test_partitioning import _migration

EXPECTED_TABLES = set(FEATURE_TABLES) | {
    "cim_settings", "ingest_runs", "layers", "part_classes", "admin_aliases", "departments", "posts",
    "persons", "post_persons", "grid_posts", "address_aliases", "iot_readings", "api_keys",
}


def _tables(engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_every_table_geometry_type_srid_and_index(engine):
    nd = _migration("0013_nearby_2d")
    assert EXPECTED_TABLES <= _tables(engine)
    with engine.connect() as conn:
        cols = {r.f_table_name: r for r in conn.execute(sa.text(
            "SELECT f_table_name, type, srid, coord_dimension FROM geometry_columns"))}
        indexes = {r.indexname: r.indexdef for r in conn.execute(sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"))}
        partitioned = conn.execute(sa.text(
            "SELECT partstrat FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = 'iot_readings'")).scalar()
    for table, gtype in FEATURE_TABLES.items():
        assert cols[table].type == gtype.removesuffix("Z"), table
        assert cols[table].srid == 4549, table
        assert cols[table].coord_dimension == 3, table
        assert "USING gist (geom)" in indexes[f"ix_{table}_geom"], table
        # /nearby in 3D walks the 2D GiST: the N-D one is gone (revision 0013_nearby_2d)
        assert not any(nd.OPCLASS in definition for definition in indexes.values()), table
        assert "WHERE (valid_to IS NULL)" in indexes[f"ix_{table}_current_source_id"]
    assert partitioned == "r"
    assert "USING brin" in indexes["ix_iot_readings_time_brin"]


def test_part_classes_and_layers_are_seeded(engine):
    with engine.connect() as conn:
        classes = dict(conn.execute(sa.text("SELECT code, name FROM part_classes")).all())
        layers = {r[0] for r in conn.execute(sa.text("SELECT name FROM layers"))}
    assert {classes[c] for c in ("01", "02", "03", "04", "05", "06")} == {
        "公用设施", "道路交通", "市容环境", "园林绿化", "房屋土地", "其他设施"}
    assert classes["0101"] == "上水井盖" and classes["0102"] == "污水井盖"
    assert layers == {"districts", "streets", "communities", "grids", "addresses", "buildings",
                      "curtain-walls", "parts", "pipelines", "iot-devices", "cases", "alerts"}


def test_3d_distance_between_pipeline_at_depth_and_point(engine):
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO pipelines (source_id, kind, diameter_mm, geom) VALUES "
            "('P-3D', '燃气', 300, ST_GeomFromText('LINESTRING Z (640000 3457000 -5, 640100 3457000 -5)', 4549))"))
        # a point 5 m above the pipe's axis and 30 m to the side of it
        d3, d2 = conn.execute(sa.text(
            "SELECT ST_3DDistance(geom, ST_GeomFromText('POINT Z (640050 3457030 0)', 4549)), "
            "ST_Distance(geom, ST_GeomFromText('POINT Z (640050 3457030 0)', 4549)) "
            "FROM pipelines WHERE source_id = 'P-3D'")).one()
    assert d2 == pytest.approx(30.0)
    assert d3 == pytest.approx((30.0 ** 2 + 5.0 ** 2) ** 0.5)


def test_update_keeps_history_and_delete_terminates(engine):
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, name, status, geom) VALUES "
            "('H-1', '3101040101000001', '01', '0101', '上水井盖', '完好', "
            "ST_GeomFromText('POINT Z (640000 3457000 4.2)', 4549))"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE parts SET status = '破损' WHERE source_id = 'H-1' AND valid_to IS NULL"))
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT status, valid_to IS NULL AS current, feature_id FROM parts WHERE source_id = 'H-1' "
            "ORDER BY valid_from, valid_to NULLS LAST")).all()
    assert [(r.status, r.current) for r in rows] == [("完好", False), ("破损", True)]
    assert rows[0].feature_id == rows[1].feature_id  # one feature, two versions
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM parts WHERE source_id = 'H-1'"))
    with engine.connect() as conn:
        n_rows, n_current = conn.execute(sa.text(
            "SELECT count(*), count(*) FILTER (WHERE valid_to IS NULL) FROM parts WHERE source_id = 'H-1'")).one()
    assert (n_rows, n_current) == (2, 0)  # terminated, not deleted


def test_constraints_reject_malformed_codes_and_heights(engine):
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO parts (source_id, object_code, part_class, part_subclass, geom) VALUES "
                "('BAD', '31010401', '01', '0101', ST_GeomFromText('POINT Z (0 0 0)', 4549))"))
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO buildings (source_id, height, geom) VALUES ('B', 800, "
                "ST_GeomFromText('MULTIPOLYGON Z (((0 0 0, 1 0 0, 1 1 0, 0 0 0)))', 4549))"))


def test_init_twice_changes_nothing_and_srid_is_fixed(server_url):
    url = create_database(server_url)
    first = run_cim("init", db_url=url)
    assert f"schema empty -> {head_revision()}" in first.stdout
    second = run_cim("init", db_url=url)
    assert "nothing to change" in second.stdout
    refused = run_cim("init", "--srid", "4528", db_url=url, check=False)
    assert refused.returncode == 1
    assert "cannot change" in refused.stderr and "Traceback" not in refused.stderr


def test_geographic_storage_crs_is_refused(server_url):
    url = create_database(server_url)
    with pytest.raises(InitError, match="geographic"):
        initialise(engine_for(url), srid=4490)
    proc = run_cim("init", "--srid", "4490", db_url=url, check=False)
    assert proc.returncode == 1 and "geographic" in proc.stderr and "Traceback" not in proc.stderr


def test_other_storage_srid(server_url):
    url = create_database(server_url)
    settings, _ = initialise(engine_for(url), srid=32651)
    assert settings.srid == 32651
    with engine_for(url).connect() as conn:
        assert conn.execute(sa.text("SELECT srid FROM geometry_columns WHERE f_table_name = 'parts'")).scalar() == 32651


def test_migrations_down_and_up(server_url):
    url = create_database(server_url)
    engine = engine_for(url)
    initialise(engine)
    downgrade(engine, "0001")
    with engine.connect() as conn:
        triggers = conn.execute(sa.text("SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%_history_%'")).scalar()
    assert triggers == 0
    downgrade(engine, "base")
    assert not (EXPECTED_TABLES & _tables(engine))
    _, changes = initialise(engine)
    assert f"schema empty -> {head_revision()}" in changes
    assert EXPECTED_TABLES <= _tables(engine)


#: columns that later migrations add to the tables of the models (which are migration 0001's schema)
ADDED_BY_MIGRATIONS = {"api_keys": {"user_id"},  # 0006_jurisdiction: the key's user
                       "iot_readings": {"district_code"}}  # 0009_cases_readings_district: the device's district


def test_schema_models_match_database(engine):
    """Every column of the models exists in the database with the same name, and the database has no
    other column than those the later migrations add."""
    md = build_metadata(4549)
    with engine.connect() as conn:
        insp = sa.inspect(conn)
        for name, table in md.tables.items():
            db_cols = {c["name"] for c in insp.get_columns(name)}
            assert {c.name for c in table.columns} | ADDED_BY_MIGRATIONS.get(name, set()) == db_cols, name


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the root path of the embedded cluster")
def test_db_up_as_root_status_url_down(tmp_path):
    env = {"CIM_HOME": str(tmp_path / "home")}
    try:
        up = run_cim("db", "up", env=env)
        assert "embedded PostGIS cluster up" in up.stdout
        url = run_cim("db", "url", env=env).stdout.strip()
        assert url.startswith("postgresql://cim:") and "127.0.0.1" in url
        run_cim("init", env=env)
        status = run_cim("db", "status", env=env).stdout
        assert "PostGIS: 3." in status and "EPSG:4549" in status
        # loopback only
        conf = (tmp_path / "home" / "pgdata" / "postgresql.auto.conf").read_text()
        assert "listen_addresses = '127.0.0.1'" in conf
    finally:
        run_cim("db", "down", env=env, check=False)
    down_status = run_cim("db", "status", env=env, check=False)
    assert down_status.returncode == 1 and "Traceback" not in down_status.stderr


@pytest.mark.skipif(bool(os.environ.get("CIM_TEST_DATABASE_URL")), reason="a server of one's own: its collation")
def test_the_embedded_cluster_compares_text_by_code_point_with_the_c_collation(engine):
    """Collation C (cim.cluster): codes and source ids index through memcmp, not strcoll; the order of any text,
    Chinese names among them, stays the code-point order C.UTF-8 gave."""
    texts = ["徐汇区", "黄浦区", "310104001", "31010400", "B3101010000002", "b310101", "汾阳路150号", "Ｂ", "ä", "Z", "-1"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT datcollate, datctype FROM pg_database WHERE datname = current_database()")
                            ).one() == ("C", "C.UTF-8")
        ordered = conn.execute(sa.text("SELECT t FROM unnest(CAST(:texts AS text[])) AS t ORDER BY t"),
                               {"texts": texts}).scalars().all()
        assert conn.execute(sa.text("SELECT upper('ä') = 'Ä'")).scalar()  # character classes are C.UTF-8's
    assert ordered == sorted(texts)
