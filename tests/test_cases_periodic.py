"""The server's periodic jobs (``api/periodic.py``) on a real PostGIS: with ``CIM_CASES_TICK_S`` set,
the running app marks an overdue case and escalates it by itself; a job another process is
running (its advisory lock held) is skipped; every job's interval is a deployment setting.

Nothing asserts on time: the test polls the database for the effect (with a generous bound
after which it fails)."""
from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.periodic import LOCK_NAMESPACE, PERIODIC_JOBS, enabled_jobs, lock_key, run_once
from cases.calendar import LOCAL
from cases.intake import CaseReport, intake
from cases.lifecycle import Action, act
from cases.model import case_log, get_case
from cim.config import DeploymentSettings, load_settings

PAST = datetime(2026, 3, 2, 10, 0, tzinfo=LOCAL)  # a Monday long gone: any deadline from it has passed


@pytest.fixture(scope="module")
def base(engine):
    # a department with one post is all a hand dispatch needs; no city is loaded
    with engine.begin() as conn:
        dept = conn.execute(sa.text("INSERT INTO departments (code, name) VALUES ('T-ROAD', '区建管委') "
                                    "RETURNING id")).scalar_one()
        conn.execute(sa.text("INSERT INTO posts (code, name, department_id) VALUES ('T-P1', '道路养护员', :d)"),
                     {"d": dept})
    return engine


def _overdue_case(engine) -> int:
    """A case dispatched by hand on a Monday long gone: its deadline has passed, nobody ticked yet."""
    with engine.begin() as conn:
        case = intake(conn, CaseReport(channel="hotline_12345", class_code="道路破损", description="坑"),
                      now=PAST).case
        assert case.manual_reason  # no address: the manual queue
        act(conn, case.id, Action("dispatch", "调度员", "platform", None, {"department_code": "T-ROAD"}), now=PAST)
    return case.id


def _wait_for(predicate, what: str, bound_s: float = 60.0) -> None:
    deadline = time.monotonic() + bound_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {bound_s:.0f} s")
        time.sleep(0.05)


def test_every_job_has_its_interval_setting():
    fields = DeploymentSettings.model_fields
    assert PERIODIC_JOBS and all(job.interval_setting in fields for job in PERIODIC_JOBS)
    assert enabled_jobs(load_settings(cases_tick_s=0)) == []  # 0 = off: the default
    assert [j.name for j, s in enabled_jobs(load_settings(cases_tick_s=0.5))] == ["cases.tick"]


def test_the_server_ticks_by_itself_and_escalates_an_overdue_case(base):
    case_id = _overdue_case(base)
    with base.connect() as conn:
        assert not get_case(conn, case_id).overdue
    app = create_app(base, load_settings(cases_tick_s=0.1))

    def escalated() -> bool:
        with base.connect() as conn:
            case = get_case(conn, case_id)
        return case.overdue and case.escalation_level >= 1

    with TestClient(app):  # the lifespan runs: the periodic jobs start
        _wait_for(escalated, f"case {case_id} overdue and escalated by the server's tick")
    with base.connect() as conn:
        log = [(e.action, e.actor) for e in case_log(conn, case_id)]
    assert ("overdue", "tick") in log and ("escalate", "tick") in log
    # the tick ran more than once meanwhile, yet each step is logged once
    assert [a for a, _ in log].count("overdue") == 1


def test_a_job_another_process_runs_is_skipped(base):
    case_id = _overdue_case(base)
    (tick_job,) = [j for j in PERIODIC_JOBS if j.name == "cases.tick"]
    with base.connect() as other:  # "another server process" holds the job's lock
        assert other.execute(sa.text("SELECT pg_try_advisory_lock(:n, :k)"),
                             {"n": LOCK_NAMESPACE, "k": lock_key("cases.tick")}).scalar()
        other.commit()
        assert run_once(base, tick_job, PAST + timedelta(days=30)) is False
        with base.connect() as conn:
            assert not get_case(conn, case_id).overdue
        other.execute(sa.text("SELECT pg_advisory_unlock(:n, :k)"), {"n": LOCK_NAMESPACE, "k": lock_key("cases.tick")})
        other.commit()
    assert run_once(base, tick_job, PAST + timedelta(days=30)) is True
    with base.connect() as conn:
        assert get_case(conn, case_id).overdue
