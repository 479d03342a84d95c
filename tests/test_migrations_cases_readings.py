"""Migration 0009_cases_readings_district on a base made at 0008 with rows: cases, their log and readings get
the jurisdiction column filled (a case's log from its case, a reading from its device; '' where there is none),
the merge link between two cases is kept as a value, the log stays append-only — and the converted schema is
the same as a new base's.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import DBAPIError

from cim.bootstrap import _alembic_config, initialise
from cim.database import engine_for
from tests.conftest import create_database

XUHUI = "310104"
TABLES = ("cases", "case_events", "iot_readings", "iot_readings_default")


def owner(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def _schema(engine) -> dict:
    """What must be the same in a new and an upgraded base: the tables' columns, keys, indexes, triggers and
    policies."""
    queries = {
        "columns": "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attidentity, "
                   "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d "
                   "ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = CAST(:t AS regclass) "
                   "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY attnum",
        "constraints": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                       "WHERE conrelid = CAST(:t AS regclass) ORDER BY 1",
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t ORDER BY 1",
        "triggers": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                    "WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal ORDER BY 1",
        "policies": "SELECT policyname, cmd, roles::text, qual, with_check FROM pg_policies WHERE tablename = :t "
                    "ORDER BY 1",
    }
    return {f"{kind}:{table}": owner(engine, sql, t=table) for table in TABLES for kind, sql in queries.items()}


@pytest.fixture(scope="module")
def base_at_0008(server_url):
    """A base made by revisions 0001–0008, with cases (one merged into the other, one without a district), their
    log, a device and its readings, and a reading of a device the base does not know."""
    engine = engine_for(create_database(server_url))
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn, 4549), "0008_partition_by_district")
    with engine.begin() as conn:
        x = lambda sql, **p: conn.execute(sa.text(sql), p)  # noqa: E731
        x("INSERT INTO case_classes (code, kind, name) VALUES ('E01', '事件', '市容环境')")
        kept = x("INSERT INTO cases (channel, class_code, status, reported_at, district_code, street_code) "
                 "VALUES ('hotline', 'E01', 'dispatched', now(), :d, :s) RETURNING id", d=XUHUI, s=f"{XUHUI}003").scalar()
        nowhere = x("INSERT INTO cases (channel, class_code, status, reported_at, merged_into) "
                    "VALUES ('hotline', 'E01', 'merged', now(), :k) RETURNING id", k=kept).scalar()
        for case, action in ((kept, "report"), (kept, "dispatch"), (nowhere, "report")):
            x("INSERT INTO case_events (case_id, at, actor, role, action) VALUES (:c, now(), 'tester', 'system', :a)",
              c=case, a=action)
        x("INSERT INTO iot_devices (source_id, device_type, district_code, geom) "
          "VALUES ('D1', 'water_level', :d, ST_SetSRID(ST_MakePoint(500000, 3450000, 0), 4549))", d=XUHUI)
        for device, minute in (("D1", 0), ("D1", 1), ("GONE", 0)):
            x("INSERT INTO iot_readings (device_id, time, quantity, value) "
              "VALUES (:d, make_timestamptz(2026, 12, 1, 8, :m, 0, 'UTC'), 'water_level', 1.0)", d=device, m=minute)
    yield engine, kept, nowhere
    engine.dispose()


def test_migration_0009_fills_the_district_and_matches_a_new_base(base_at_0008, engine):
    old, kept, nowhere = base_at_0008
    initialise(old)  # the upgrade, as cim init runs it
    assert owner(old, "SELECT id, district_code, merged_into FROM cases ORDER BY id") == [
        (kept, XUHUI, None), (nowhere, "", kept)]
    assert owner(old, "SELECT case_id, action, district_code FROM case_events ORDER BY id") == [
        (kept, "report", XUHUI), (kept, "dispatch", XUHUI), (nowhere, "report", "")]
    assert owner(old, "SELECT device_id, district_code, count(*) FROM iot_readings GROUP BY 1, 2 ORDER BY 1") == [
        ("D1", XUHUI, 2), ("GONE", "", 1)]
    # the log is still append-only (its triggers were only set aside for the fill)
    with pytest.raises(DBAPIError, match="append-only"):
        with old.begin() as conn:
            conn.execute(sa.text("UPDATE case_events SET note = 'x'"))
    # the merge link is a value now: no foreign key a distributed table could not keep
    assert not owner(old, "SELECT 1 FROM pg_constraint WHERE conrelid = 'cases'::regclass "
                          "AND confrelid = 'cases'::regclass")
    # a new case without a district: stored with '' (the column is NOT NULL), read back as no district
    with old.begin() as conn:
        conn.execute(sa.text("INSERT INTO cases (channel, class_code, status, reported_at) "
                             "VALUES ('hotline', 'E01', 'reported', now())"))
    assert owner(old, "SELECT count(*) FROM cases WHERE district_code = ''")[0][0] == 2
    assert _schema(old) == _schema(engine)
