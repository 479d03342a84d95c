"""The duplicate search of a group of reports (cases/batch.py, ``_DUPLICATES``) probes the index of the open cases
by class and place (migration 0014_case_duplicates) and nothing else.

Tens of thousands of open cases of one class in the last hours, spread over 20 km, as many of another class and as
many closed ones at the same places: the suggestions for a new case are the few open ones of its class within
its radius. The planner cannot estimate a radius given per row, and once combined the (class_code, reported_at)
index with the spatial one — reading every case of the class in the window for each new case; the spatial index
alone read every case at the place, of any class and status. Both grew with the cases (docs/benchmarks.md,
issue 11). The statement must find exactly the cases a plain reading of the rule finds."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from cases.batch import _DUPLICATES, _dumps
from cases.catalogue import ensure_seeded

CASES = 30_000
SRID = 4549
CLASS = "道路破损"


@pytest.fixture(scope="module")
def crowded(engine):
    """CASES open cases of CLASS, one a second over the last ~8 hours, at random points of a 20 km square."""
    with engine.begin() as conn:
        ensure_seeded(conn)
        code = conn.execute(sa.text("SELECT code FROM case_classes WHERE name = :n"), {"n": CLASS}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO cases (id, channel, class_code, status, reported_at, geom) OVERRIDING SYSTEM VALUE "
            "SELECT i, 'hotline_12345', :k, 'dispatched', now() - make_interval(secs => i), "
            "ST_SetSRID(ST_MakePoint(500000 + 20000 * random(), 3450000 + 20000 * random(), 0), :srid) "
            "FROM generate_series(1, :n) AS i"), {"k": code, "srid": SRID, "n": CASES})
        # at the same places: as many cases of another class, and as many closed ones of this class
        other = conn.execute(sa.text("SELECT code FROM case_classes WHERE code <> :k ORDER BY code LIMIT 1"),
                             {"k": code}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO cases (id, channel, class_code, status, reported_at, geom) OVERRIDING SYSTEM VALUE "
            "SELECT id + :n * s, 'hotline_12345', CASE s WHEN 1 THEN :other ELSE class_code END, "
            "CASE s WHEN 1 THEN status ELSE 'closed' END, reported_at, geom FROM cases, generate_series(1, 2) AS s "
            "WHERE id <= :n"), {"other": other, "n": CASES})
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE cases"))
        conn.commit()
        rows = conn.execute(sa.text(
            "SELECT id, reported_at, encode(ST_AsEWKB(geom), 'hex') AS g FROM cases ORDER BY id LIMIT 16")).all()
    radius, window_h = 30.0, 72.0
    return _dumps([{"id": 3 * CASES + 1 + k, "k": code, "at": r.reported_at, "g": r.g, "w": window_h, "r": radius}
                   for k, r in enumerate(rows)])


def test_the_duplicate_search_probes_the_open_cases_of_the_class_only(engine, crowded):
    with engine.connect() as conn:
        plan = json.dumps(conn.execute(sa.text("EXPLAIN (FORMAT JSON) " + _DUPLICATES), {"q": crowded}).scalar())
    assert "ix_cases_open_class_geom" in plan, plan
    assert "ix_cases_class_reported" not in plan and "ix_cases_geom\"" not in plan, plan


def test_the_duplicate_search_finds_what_the_rule_says(engine, crowded):
    """Every open case of the class within the radius, reported in the window before the new case, lower id."""
    rule = ("SELECT c.id, array_agg(o.id ORDER BY o.reported_at, o.id) AS dups FROM json_to_recordset(CAST(:q AS "
            "json)) AS c(id bigint, k text, at timestamptz, g text, w float8, r float8) "
            "JOIN cases o ON o.class_code = c.k AND o.id < c.id AND o.status NOT IN ('closed', 'not_registered', "
            "'merged') AND o.reported_at BETWEEN c.at - make_interval(secs => c.w * 3600) AND c.at "
            "AND ST_Distance(o.geom, CAST(c.g AS geometry)) <= c.r GROUP BY c.id")
    with engine.connect() as conn:
        conn.execute(sa.text("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off"))
        want = {r.id: r.dups for r in conn.execute(sa.text(rule), {"q": crowded})}
        conn.rollback()
        got = {r.id: r.dups for r in conn.execute(sa.text(_DUPLICATES), {"q": crowded})}
    assert got == want
    assert want, "the new cases lie on old ones: each has at least that one as a suggestion"


def test_the_migration_down_drops_the_index_and_up_makes_it_again(engine, crowded):
    """Revision 0014_case_duplicates both ways; the suggestions are the same with and without the index. (Last
    in the module: it puts the base back at head.)"""
    from cim.bootstrap import downgrade, initialise

    def indexes(conn) -> set[str]:
        return set(conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'cases'")).scalars())

    with engine.connect() as conn:
        at_head = {r.id: r.dups for r in conn.execute(sa.text(_DUPLICATES), {"q": crowded})}
    downgrade(engine, "0013_nearby_2d")
    with engine.connect() as conn:
        assert "ix_cases_open_class_geom" not in indexes(conn) and "ix_cases_geom" in indexes(conn)
        assert {r.id: r.dups for r in conn.execute(sa.text(_DUPLICATES), {"q": crowded})} == at_head
    initialise(engine)
    with engine.connect() as conn:
        assert "ix_cases_open_class_geom" in indexes(conn)
        assert conn.execute(sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                                    "'ix_cases_open_class_geom'::regclass")).scalar() is True
