"""Revision 0016_object_code_check: the parts' object-code CHECK holds for exactly the values the regex it replaces
held for (16 ASCII digits), still names ``ck_parts_object_code`` when it refuses a row, and the migration swaps it
on the layer and every partition, down and up, keeping the rows."""
from __future__ import annotations

import psycopg2.errors
import pytest
import sqlalchemy as sa

from cim.bootstrap import downgrade, initialise
from cim.distribution import ensure_partitions
from cim.schema import OBJECT_CODE_CHECK
from tests.test_partitioning import _migration

MIGRATION = _migration("0016_object_code_check")

VALUES = [
    "3101040101000001", "0000000000000000", "9999999999999999",  # held
    "310104010100000", "31010401010000012", "", " 310104010100000", "310104010100000 ", "3101040101 00001",
    "310104010100000a", "A101040101000001", "3101040101000-01", "+101040101000001", "3101040101000\n01",
    "３１０１０４０１０１００００", "٣١٠١٠٤٠١٠١٠٠٠٠٠١", "31010401010000¹", "3101040101000.01", "1e15000000000000",
    "31010401010000０1", "\t101040101000001",
]


def test_the_check_holds_for_exactly_what_the_regex_held_for(engine):
    assert MIGRATION.AFTER == OBJECT_CODE_CHECK
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            f"SELECT object_code, object_code ~ '^[0-9]{{16}}$', {OBJECT_CODE_CHECK} "
            "FROM unnest(CAST(:v AS text[])) AS object_code"), {"v": VALUES}).all()
        # also as the column's type, and a NULL (both let it through: the column is NOT NULL anyway)
        typed = conn.execute(sa.text(
            f"SELECT object_code ~ '^[0-9]{{16}}$', {OBJECT_CODE_CHECK} FROM "
            "unnest(CAST(:v AS varchar(16)[])) AS object_code"), {"v": [v for v in VALUES if len(v) <= 16] + [None]}
        ).all()
    assert [regex for _v, regex, _new in got].count(True) == 3
    for value, regex, new in got:
        assert new is regex, value
    assert all(new is regex for regex, new in typed)


def test_a_part_with_a_bad_code_is_refused_by_the_named_constraint(engine):
    with pytest.raises(sa.exc.IntegrityError) as refused:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO parts (source_id, object_code, part_class, part_subclass, geom) VALUES "
                "('BAD', '３１０１０４０１０１００００', '01', '0101', "
                "ST_GeomFromText('POINT Z (640000 3457000 1)', 4549))"))
    assert isinstance(refused.value.orig, psycopg2.errors.CheckViolation)
    assert refused.value.orig.diag.constraint_name == "ck_parts_object_code"


def _checks(conn) -> dict[str, str]:
    return dict(conn.execute(sa.text(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conname = 'ck_parts_object_code'")).all())


def test_the_migration_down_and_up_swaps_the_check_on_the_layer_and_its_partitions(engine):
    """(Last in the module: it puts the base back at head.)"""
    with engine.begin() as conn:
        ensure_partitions(conn.connection.cursor(), "parts", {"310104"})
        conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, geom) VALUES "
            "('M-1', '3101040101000001', '01', '0101', '310104', "
            "ST_GeomFromText('POINT Z (640000 3457000 1)', 4549))"))
    with engine.connect() as conn:
        now = _checks(conn)
    assert set(now) >= {"parts", "parts_310104", "parts_default"}
    assert all("!~ '[^0-9]'" in d and "octet_length" in d for d in now.values()), now
    downgrade(engine, "0015_static_checks")
    with engine.connect() as conn:
        before = _checks(conn)
    assert set(before) == set(now)
    assert all("'^[0-9]{16}$'" in d and "octet_length" not in d for d in before.values()), before
    initialise(engine)
    with engine.connect() as conn:
        assert _checks(conn) == now
        assert conn.execute(sa.text("SELECT count(*) FROM parts WHERE source_id = 'M-1'")).scalar() == 1
