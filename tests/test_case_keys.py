"""The case log's key to its case and a case's key to its class (migration 0011_case_keys: checked once per
statement by trigger, no longer per row by a foreign key) still hold for every writer, on the database's side:
a log row of a missing case or a case of an unknown class is refused (INSERT, COPY, a changed class), a
referenced case or class cannot go (DELETE, TRUNCATE, a changed key), a delete racing a log write cannot leave
an orphan — and a base made at 0010 is upgraded to the same schema as a new one, its rows kept.
"""
from __future__ import annotations

import io

import psycopg2.errors
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import DBAPIError, OperationalError

from cim.bootstrap import _alembic_config, initialise
from cim.database import engine_for
from tests.conftest import create_database

FK_VIOLATION = "23503"


def _sqlstate(exc: DBAPIError) -> str:
    return getattr(exc.orig, "pgcode", None) or ""


@pytest.fixture(scope="module")
def base(engine):
    """The module's base with one class and two cases: one with a log row, one without."""
    with engine.begin() as conn:
        x = lambda sql, **p: conn.execute(sa.text(sql), p)  # noqa: E731
        x("INSERT INTO case_classes (code, kind, name) VALUES ('E77', '事件', '测试大类'), ('E78', '事件', '未用大类') "
          "ON CONFLICT DO NOTHING")
        logged = x("INSERT INTO cases (channel, class_code, status, reported_at) VALUES ('hotline', 'E77', 'reported', "
                   "now()) RETURNING id").scalar()
        bare = x("INSERT INTO cases (channel, class_code, status, reported_at) VALUES ('hotline', 'E77', 'reported', "
                 "now()) RETURNING id").scalar()
        x("INSERT INTO case_events (case_id, at, actor, role, action) VALUES (:c, now(), 't', 'system', 'report')",
          c=logged)
    return engine, logged, bare


def _refused(engine, sql: str, **params) -> str:
    with pytest.raises(DBAPIError) as caught:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    assert _sqlstate(caught.value) == FK_VIOLATION, caught.value
    return str(caught.value.orig)


def _write(engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql))


def _copy(engine, table: str, columns: str, text: str) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", io.StringIO(text))
        raw.commit()
    finally:
        raw.rollback()
        raw.close()


def test_the_foreign_keys_are_replaced_by_statement_checks(base):
    engine, _, _ = base
    with engine.connect() as conn:
        keys = conn.execute(sa.text(
            "SELECT conrelid::regclass::text || '.' || confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid IN ('cases'::regclass, 'case_events'::regclass)")).scalars().all()
    assert "case_events.cases" not in keys and "cases.case_classes" not in keys


def test_a_log_row_of_a_missing_case_is_refused(base):
    engine, logged, _ = base
    message = _refused(engine, "INSERT INTO case_events (case_id, at, actor, role, action) "
                               "VALUES (:ok, now(), 't', 'system', 'note'), (-5, now(), 't', 'system', 'note')",
                       ok=logged)
    assert "case_id = -5" in message
    with pytest.raises(psycopg2.errors.ForeignKeyViolation, match="987654321"):  # COPY, as the import writes its log
        _copy(engine, "case_events", "case_id, at, actor, role, action",
              f"{logged}\t2026-12-01T00:00:00Z\tt\tsystem\tnote\n987654321\t2026-12-01T00:00:00Z\tt\tsystem\tnote\n")
    with engine.connect() as conn:  # the whole statement went, its good row too
        assert conn.execute(sa.text("SELECT count(*) FROM case_events WHERE case_id = :c"), {"c": logged}).scalar() == 1


def test_the_api_role_writes_through_the_checks_and_is_refused_too(base):
    engine, logged, _ = base
    as_api = "SELECT set_config('role', 'cim_api', true), set_config('cim.scope', 'city', true)"
    insert = "INSERT INTO case_events (case_id, at, actor, role, action) VALUES (:c, now(), 't', 'system', 'note')"
    with engine.connect() as conn:
        conn.execute(sa.text(as_api))
        conn.execute(sa.text(insert), {"c": logged})  # the API's role may run the check
        conn.rollback()
        conn.execute(sa.text(as_api))
        with pytest.raises(DBAPIError) as caught:
            conn.execute(sa.text(insert), {"c": -6})
        assert _sqlstate(caught.value) == FK_VIOLATION
        conn.rollback()


def test_a_case_of_an_unknown_class_is_refused(base):
    engine, logged, _ = base
    message = _refused(engine, "INSERT INTO cases (channel, class_code, status, reported_at) "
                               "VALUES ('hotline', 'E77', 'reported', now()), ('hotline', 'NOPE', 'reported', now())")
    assert "class_code = NOPE" in message
    with pytest.raises(psycopg2.errors.ForeignKeyViolation, match="NOPE2"):
        _copy(engine, "cases", "channel, class_code, status, reported_at",
              "hotline\tNOPE2\treported\t2026-12-01T00:00:00Z\n")
    _refused(engine, "UPDATE cases SET class_code = 'NOPE3' WHERE id = :c", c=logged)
    with engine.begin() as conn:  # a change to a known class, or of another column, goes through
        conn.execute(sa.text("UPDATE cases SET class_code = 'E78', description = 'x' WHERE id = :c"), {"c": logged})
        conn.execute(sa.text("UPDATE cases SET class_code = 'E77' WHERE id = :c"), {"c": logged})


def test_a_referenced_case_or_class_cannot_go(base):
    engine, logged, bare = base
    _refused(engine, "DELETE FROM cases WHERE id = :c", c=logged)
    _refused(engine, "UPDATE case_classes SET code = 'E79' WHERE code = 'E77'")
    _refused(engine, "DELETE FROM case_classes WHERE code = 'E77'")
    _refused(engine, "TRUNCATE case_classes CASCADE")
    with engine.begin() as conn:  # what nothing refers to may go (and comes back for the other tests)
        conn.execute(sa.text("DELETE FROM case_classes WHERE code = 'E78'"))
        conn.execute(sa.text("INSERT INTO case_classes (code, kind, name) VALUES ('E78', '事件', '未用大类')"))
        conn.execute(sa.text("SAVEPOINT s"))
        conn.execute(sa.text("DELETE FROM cases WHERE id = :c"), {"c": bare})
        conn.execute(sa.text("ROLLBACK TO SAVEPOINT s"))
    with pytest.raises(DBAPIError) as caught:  # an older snapshot could miss a log row written meanwhile
        with engine.begin() as conn:
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            conn.execute(sa.text("DELETE FROM cases WHERE id = :c"), {"c": bare})
    assert _sqlstate(caught.value) == FK_VIOLATION


def test_a_delete_racing_a_log_write_leaves_no_orphan(base):
    engine, _, bare = base
    writer, deleter = engine.connect(), engine.connect()
    try:
        # a log row in flight: the delete waits for it (here: gives up waiting) instead of missing it
        writer.execute(sa.text("INSERT INTO case_events (case_id, at, actor, role, action) "
                               "VALUES (:c, now(), 't', 'system', 'note')"), {"c": bare})
        deleter.execute(sa.text("SET lock_timeout = '300ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            deleter.execute(sa.text("DELETE FROM cases WHERE id = :c"), {"c": bare})
        deleter.rollback()
        writer.rollback()
        # a delete in flight: a log row for its case waits for it, and once it committed is refused
        deleter.execute(sa.text("DELETE FROM cases WHERE id = :c"), {"c": bare})
        writer.execute(sa.text("SET lock_timeout = '300ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            writer.execute(sa.text("INSERT INTO case_events (case_id, at, actor, role, action) "
                                   "VALUES (:c, now(), 't', 'system', 'note')"), {"c": bare})
        writer.rollback()
        deleter.commit()
        writer.execute(sa.text("SET lock_timeout = 0"))
        with pytest.raises(DBAPIError) as caught:
            writer.execute(sa.text("INSERT INTO case_events (case_id, at, actor, role, action) "
                                   "VALUES (:c, now(), 't', 'system', 'note')"), {"c": bare})
        assert _sqlstate(caught.value) == FK_VIOLATION
        writer.rollback()
    finally:
        writer.close()
        deleter.close()


def _keys_and_triggers(engine) -> dict:
    with engine.connect() as conn:
        return {table: conn.execute(sa.text(
            "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
            "UNION ALL SELECT tgname || ' ' || pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal ORDER BY 1"), {"t": table}).scalars().all()
            for table in ("cases", "case_events", "case_classes")}


def test_migration_0011_on_a_base_with_cases_matches_a_new_base(server_url, base):
    engine, _, _ = base
    old = engine_for(create_database(server_url))
    try:
        with old.begin() as conn:
            command.upgrade(_alembic_config(conn, 4549), "0010_case_import")
        with old.begin() as conn:
            x = lambda sql, **p: conn.execute(sa.text(sql), p)  # noqa: E731
            x("INSERT INTO case_classes (code, kind, name) VALUES ('E01', '事件', '市容环境')")
            case = x("INSERT INTO cases (channel, class_code, status, reported_at) "
                     "VALUES ('hotline', 'E01', 'reported', now()) RETURNING id").scalar()
            x("INSERT INTO case_events (case_id, at, actor, role, action) VALUES (:c, now(), 't', 'system', 'report')",
              c=case)
        initialise(old)  # the upgrade, as cim init runs it
        assert _keys_and_triggers(old) == _keys_and_triggers(engine)
        with old.connect() as conn:
            assert conn.execute(sa.text("SELECT case_id, action FROM case_events")).all() == [(case, "report")]
        _refused(old, "INSERT INTO case_events (case_id, at, actor, role, action) VALUES (-1, now(), 't', 's', 'x')")
        _refused(old, "DELETE FROM cases WHERE id = :c", c=case)
        with old.begin() as conn:  # and back: the foreign keys again
            command.downgrade(_alembic_config(conn, 4549), "0010_case_import")
        with pytest.raises(DBAPIError) as caught:
            with old.begin() as conn:
                conn.execute(sa.text("INSERT INTO case_events (case_id, at, actor, role, action) "
                                     "VALUES (-1, now(), 't', 's', 'x')"))
        assert "case_events_case_id_fkey" in str(caught.value.orig)
    finally:
        old.dispose()


def test_the_insert_checks_run_a_function_per_key_and_refuse_as_the_generic_one_did(server_url, base):
    """Migration 0015_static_checks: each key's insert check is a function of its own (static SQL, its plan kept),
    and refuses with the error the generic function of 0011 gave — the same SQLSTATE and message, by INSERT and
    by COPY; the audit row of each statement is still written. Down to 0014 the generic function is back."""
    engine, _, _ = base
    db = engine_for(create_database(server_url))
    said: dict[str, list[tuple]] = {}

    def refused(write) -> tuple:  # what the error says, but where in which function it was raised
        with pytest.raises((DBAPIError, psycopg2.Error)) as caught:
            write()
        error = getattr(caught.value, "orig", caught.value)
        d = error.diag
        return error.pgcode, d.message_primary, d.table_name, d.column_name, d.constraint_name
    try:
        initialise(db)
        with db.begin() as conn:
            conn.execute(sa.text("INSERT INTO case_classes (code, kind, name) VALUES ('E01', '事件', '市容环境')"))
        for revision in ("0015_static_checks", "0014_case_duplicates"):
            with db.connect() as conn:
                functions = conn.execute(sa.text(
                    "SELECT t.tgname || ' ' || p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                    "WHERE t.tgname IN ('case_events_case_id_key', 'cases_class_code_key') ORDER BY 1")).scalars().all()
                audited = conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar()
            static = revision == "0015_static_checks"
            assert functions == (["case_events_case_id_key case_key_check_new_case_events_case_id",
                                  "cases_class_code_key case_key_check_new_cases_class_code"] if static else
                                 ["case_events_case_id_key case_key_check_new", "cases_class_code_key case_key_check_new"])
            said[revision] = [
                refused(lambda: _write(db, "INSERT INTO case_events (case_id, at, actor, role, action) "
                                           "VALUES (-7, now(), 't', 's', 'x')")),
                refused(lambda: _write(db, "INSERT INTO cases (channel, class_code, status, reported_at) "
                                           "VALUES ('hotline', 'E99', 'reported', now())")),
                refused(lambda: _copy(db, "case_events", "case_id, at, actor, role, action",
                                      "-8\t2024-05-01\tt\ts\tx\n"))]
            with db.begin() as conn:  # a good write passes both checks and is audited
                case = conn.execute(sa.text("INSERT INTO cases (channel, class_code, status, reported_at) "
                                            "VALUES ('hotline', 'E01', 'reported', now()) RETURNING id")).scalar()
                conn.execute(sa.text("INSERT INTO case_events (case_id, at, actor, role, action) "
                                     "VALUES (:c, now(), 't', 'system', 'report')"), {"c": case})
            with db.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar() == audited + 2
            if static:
                with db.begin() as conn:
                    command.downgrade(_alembic_config(conn, 4549), "0014_case_duplicates")
        assert said["0015_static_checks"] == said["0014_case_duplicates"]
        assert said["0015_static_checks"][0] == (
            FK_VIOLATION, 'insert or update on table "case_events" violates key "case_events_case_id_key": case_id = -7 '
            "is not in cases", "case_events", "case_id", "case_events_case_id_key")
        assert [error[0] for error in said["0015_static_checks"]] == [FK_VIOLATION] * 3
    finally:
        db.dispose()
