"""``cim cases simulate``: the synthetic stream over the sample city goes through the whole
lifecycle (every channel, merges, the manual queue, returns, extensions, rework, overdue and
escalation), leaves open and closed cases, is the same for the same seed, and a rerun takes in
nothing twice. Times are a fixed start passed in, never the wall clock."""
from __future__ import annotations

import json
from datetime import date

import pytest
import sqlalchemy as sa

from benchmarks.dispatch_check import check_dispatch
from cases.catalogue import all_classes
from cases.simulate import COMMON, simulate
from cim.database import engine_for
from tests.conftest import create_database, run_cim
from tests.test_geocode import load_city

START = date(2026, 11, 23)  # a Monday


@pytest.fixture(scope="module")
def city(engine):
    load_city(engine)
    return engine


def _history(engine, seed: int) -> list[tuple]:
    """The run as data: each case's channel, class, status, assignee and its log's actions."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT c.external_id, c.channel, c.class_code, c.status, c.department_code, c.rework_count, "
            "c.extension_count, c.overdue, c.escalation_level, "
            "(SELECT string_agg(e.action || ':' || e.at::text, ',' ORDER BY e.id) FROM case_events e "
            " WHERE e.case_id = c.id) FROM cases c WHERE c.external_id LIKE :p "
            "ORDER BY split_part(c.external_id, '-', 3)::int"), {"p": f"SIM-{seed}-%"})]


def test_the_everyday_classes_are_in_the_catalogue(city):
    with city.connect() as conn:
        assert set(COMMON) <= {c.name for c in all_classes(conn) if c.parent_code is not None}


def test_a_simulated_week_runs_the_whole_loop(city):
    report = simulate(city, days=5, seed=7, start=START, per_day=60)
    assert report.reported == 300 and report.created == 300 and report.known == 0
    assert set(report.by_channel) >= {"grid_patrol", "hotline_12345", "vehicle_patrol", "iot"}
    assert report.machine_dispatched > 0.8 * report.created
    for counter in ("manual_queue", "merged", "accepted", "returned", "handled", "verified_passed",
                    "verified_failed", "extensions_requested", "overdue_marked", "escalated"):
        assert getattr(report, counter) > 0, counter
    assert 0 < report.open_at_end < report.created
    with city.connect() as conn:
        statuses = dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM cases WHERE external_id LIKE 'SIM-7-%' GROUP BY 1")).all())
        assert statuses["closed"] == report.verified_passed
        assert statuses["merged"] == report.merged
        # every closed case went report → register → dispatch → accept → handle → verify in its log
        bad = conn.execute(sa.text(
            "SELECT c.id FROM cases c WHERE c.external_id LIKE 'SIM-7-%' AND c.status = 'closed' AND NOT "
            "(SELECT array_agg(DISTINCT e.action) FROM case_events e WHERE e.case_id = c.id) "
            "@> ARRAY['report', 'register', 'dispatch', 'accept', 'handle', 'verify']")).scalars().all()
        assert bad == []
        reworked = conn.execute(sa.text(
            "SELECT count(*) FROM cases WHERE external_id LIKE 'SIM-7-%' AND rework_count > 0")).scalar()
        assert reworked >= 1
        # each machine dispatch went where a second, hand-written reading of the rule (in SQL) sends it
        ids = list(conn.execute(sa.text("SELECT id FROM cases WHERE external_id LIKE 'SIM-7-%'")).scalars())
        checked = check_dispatch(conn, ids)
        assert checked.checked == report.machine_dispatched
        assert checked.disagreements == []
    again = simulate(city, days=5, seed=7, start=START, per_day=60)
    assert again.created == 0 and again.known == 300  # a rerun takes in nothing twice


def test_same_seed_same_run(server_url):
    runs = []
    for _ in range(2):
        url = create_database(server_url)
        run_cim("init", db_url=url)
        engine = engine_for(url)
        load_city(engine)
        out = run_cim("cases", "simulate", "--days", "2", "--seed", "3", "--per-day", "25",
                      "--start", START.isoformat(), db_url=url).stdout
        runs.append((json.loads(out), _history(engine, 3)))
        engine.dispose()
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert runs[0][0]["created"] == 50


def test_simulate_needs_a_city_with_addresses(server_url):
    url = create_database(server_url)
    run_cim("init", db_url=url)
    proc = run_cim("cases", "simulate", "--days", "1", db_url=url, check=False)
    assert proc.returncode != 0 and "cim samples load" in proc.stderr and "Traceback" not in proc.stderr
