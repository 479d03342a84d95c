"""The case loop (issue 11) on a real PostGIS: the sample city (徐汇区 with 汾阳路, its grids and
responsibility chains, loaded with the real loader); intake, machine dispatch, the lifecycle,
deadlines, escalation, duplicates, racing actions, attachments, evaluation and the CLI.

Times are fixed instants passed in (``now``): nothing here depends on the wall clock.
"""
from __future__ import annotations

import csv
import hashlib
import json
import threading
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa

from cases.attachments import UnsupportedMediaTypeError, add_attachment, attachments_of
from cases.calendar import LOCAL, WorkingCalendar, load_calendar
from cases.catalogue import all_classes, class_by_code
from cases.evaluation import evaluate
from cases.intake import CaseReport, intake
from cases.lifecycle import Action, RoleError, act, merge, tick, verifiers
from cases.model import case_log, get_case
from cim.database import engine_for
from cim.errors import ConflictError, ParameterError, PayloadTooLargeError, UserError
from cim.grid import lookup_points
from tests.conftest import PROJECT, run_cim
from tests.test_geocode import load_city

SRID = 4549
MONDAY_10 = datetime(2026, 11, 30, 10, 0, tzinfo=LOCAL)  # a Monday


@pytest.fixture(scope="module")
def city(engine):
    load_city(engine)
    return engine


def _intake(engine, now=MONDAY_10, **kw):
    kw.setdefault("channel", "vehicle_patrol")
    kw.setdefault("class_code", "道路破损")
    with engine.begin() as conn:
        return intake(conn, CaseReport(**kw), now=now)


def _act(engine, case_id, action, actor=None, role="department", note=None, now=MONDAY_10, **data):
    with engine.begin() as conn:
        if actor is None:  # a verification is the grid worker's; anything else anyone's of the role
            actor = verifiers(conn, get_case(conn, case_id))[0] if action == "verify" else "tester"
        return act(conn, case_id, Action(action, actor, role, note, data), now=now)


def _log(engine, case_id):
    with engine.connect() as conn:
        return case_log(conn, case_id)


# --- catalogue ----------------------------------------------------------------------------------

def test_catalogue_follows_gbt_30428_and_keeps_the_part_codes(city):
    with city.connect() as conn:
        classes = all_classes(conn)
        part_codes = set(conn.execute(sa.text("SELECT code FROM part_classes")).scalars())
    majors = {(c.kind, c.name) for c in classes if c.parent_code is None}
    for name in ("公用设施", "道路交通", "市容环境", "园林绿化", "房屋土地"):
        assert ("部件", name) in majors
    for name in ("市容环境", "宣传广告", "施工管理", "突发事件", "街面秩序", "其他/扩展"):
        assert ("事件", name) in majors
    assert {c.code for c in classes if c.is_part} == part_codes
    names = {c.name for c in classes}
    assert {"道路破损", "暴露垃圾", "违法搭建", "群租", "道路积水", "幕墙玻璃破损", "井盖缺失"} <= names
    road = next(c for c in classes if c.name == "道路破损")
    assert road.department_kind == "道路养护" and road.duplicate_radius_m == 50
    assert road.limit("emergency")[1] == "24x7" and road.limit("normal") == (40, "working")


def test_unknown_class_lists_the_valid_ones(city):
    with pytest.raises(ParameterError) as exc:
        _intake(city, class_code="路面有坑", address_text="汾阳路150号")
    assert exc.value.parameter == "class"
    assert "unknown case class '路面有坑'" in str(exc.value) and "E0105 道路破损" in str(exc.value)
    with city.connect() as conn:
        with pytest.raises(ParameterError, match="names 2 小类|give the code|unknown"):
            class_by_code(conn, "E01")  # a 大类 is not something a case is filed under


# --- the worked example -------------------------------------------------------------------------

def test_worked_example_fenyang_road_crack_end_to_end(city):
    with city.connect() as conn:  # the sample city's door 汾阳路150号, and who answers for its grid
        x, y = conn.execute(sa.text("SELECT ST_X(geom), ST_Y(geom) FROM addresses WHERE valid_to IS NULL "
                                    "AND road = '汾阳路' AND door_number = '150'")).one()
        expected = lookup_points(conn, [x], [y], f"EPSG:{SRID}")[0]
    assert expected.grid is not None
    road_posts = [r for r in expected.responsibility if "建管委" in r.department.name]
    assert road_posts, "the sample grid has a road department"

    got = _intake(city, address_text="汾阳路150号附近", description="汾阳路150号附近路面龟裂",
                  external_id="VP-20261130-0001")
    case = got.case
    assert got.created and case.status == "dispatched"
    assert case.grid_code == expected.grid.code and case.street_code == expected.street.code
    assert case.geocode["match_level"] == "door"
    assert case.department_code == road_posts[0].department.code
    assert case.post_code == road_posts[0].post.code
    assert case.person_name in {p.name for p in road_posts[0].persons}
    assert "道路养护" in case.dispatch_reason and expected.grid.code in case.dispatch_reason
    # 40 working hours (5 days of 8 h) from Monday 10:00 → the next Monday 10:00
    assert case.due_at == MONDAY_10 + timedelta(days=7)

    _act(city, case.id, "accept", now=MONDAY_10 + timedelta(hours=1))
    _act(city, case.id, "handle", note="路面已修补，附照片", now=MONDAY_10 + timedelta(days=3))
    done = _act(city, case.id, "verify", role="supervisor", now=MONDAY_10 + timedelta(days=4), passed=True)
    assert done.status == "closed" and done.rework_count == 0 and done.closed_at == MONDAY_10 + timedelta(days=4)

    log = _log(city, case.id)
    assert [(e.action, e.from_status, e.to_status) for e in log] == [
        ("report", None, "reported"), ("register", "reported", "registered"),
        ("dispatch", "registered", "dispatched"), ("accept", "dispatched", "accepted"),
        ("handle", "accepted", "handled"), ("verify", "handled", "closed")]
    assert log[0].note == "汾阳路150号附近路面龟裂" and log[2].actor == "machine"
    assert log[5].role == "supervisor" and log[5].data == {"passed": True}
    # a hotline operator who pastes the whole sentence as the address gets the same grid and department
    pasted = _intake(city, address_text="汾阳路150号附近路面龟裂", channel="hotline_12345").case
    assert (pasted.grid_code, pasted.department_code) == (case.grid_code, case.department_code)


def test_a_part_case_is_bound_to_the_nearest_part_of_its_class(city):
    with city.begin() as conn:
        x, y = conn.execute(sa.text("SELECT ST_X(geom), ST_Y(geom) FROM addresses WHERE valid_to IS NULL "
                                    "AND road = '汾阳路' AND door_number = '50'")).one()
        for code, subclass, dx in (("3101040202000901", "0202", 3.0), ("3101040202000902", "0202", 4.5),
                                   ("3101040302000901", "0302", 1.0)):
            conn.execute(sa.text(
                "INSERT INTO parts (source_id, object_code, part_class, part_subclass, name, geom) "
                "VALUES (:c, :c, :k, :s, 'test', ST_SetSRID(ST_MakePoint(:x, :y, 0), 4549))"),
                {"c": code, "k": subclass[:2], "s": subclass, "x": x + dx, "y": y})
    lamp = _intake(city, class_code="0202", description="路灯不亮", x=x, y=y, crs=f"EPSG:{SRID}").case
    assert lamp.part_object_code == "3101040202000901"  # the nearest 路灯, not the nearer 垃圾箱
    assert lamp.status == "dispatched" and lamp.department_name == "区建管委"
    assert "handles part class 0202" in lamp.dispatch_reason
    far = _intake(city, class_code="0202", x=x - 10.0, y=y, crs=f"EPSG:{SRID}").case
    assert far.part_object_code is None  # 13 m away: no part is "the" part
    event = _intake(city, class_code="道路破损", x=x, y=y, crs=f"EPSG:{SRID}").case
    assert event.part_object_code is None  # an event class concerns no part


def test_same_external_id_gives_the_same_case(city):
    first = _intake(city, address_text="汾阳路20号", external_id="12345-0001", channel="hotline_12345")
    again = _intake(city, address_text="汾阳路20号", external_id="12345-0001", channel="hotline_12345")
    assert again.case.id == first.case.id and not again.created
    with city.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM cases WHERE external_id = '12345-0001'")).scalar()
    assert n == 1


def test_failed_verification_is_rework(city):
    case = _intake(city, address_text="汾阳路40号").case
    _act(city, case.id, "accept")
    _act(city, case.id, "handle", note="已修")
    back = _act(city, case.id, "verify", role="supervisor", note="仍有坑洼", passed=False)
    assert back.status == "accepted" and back.rework_count == 1
    _act(city, case.id, "handle", note="重新修补")
    closed = _act(city, case.id, "verify", role="supervisor", passed=True)
    assert closed.status == "closed" and closed.rework_count == 1
    verifies = [(e.to_status, e.data.get("rework")) for e in _log(city, case.id) if e.action == "verify"]
    assert verifies == [("accepted", 1), ("closed", None)]


def test_only_the_grids_worker_verifies_or_after_escalation_the_districts(city):
    case = _intake(city, address_text="汾阳路60号").case
    _act(city, case.id, "accept")
    _act(city, case.id, "handle", note="已修")
    with city.connect() as conn:
        own = verifiers(conn, case)
        others = conn.execute(sa.text(
            "SELECT DISTINCT pe.name FROM grid_posts gp JOIN posts p ON p.id = gp.post_id "
            "JOIN post_persons pp ON pp.post_id = p.id JOIN persons pe ON pe.id = pp.person_id "
            "JOIN grids g ON g.grid_code = gp.grid_code WHERE p.name = '网格监督员' AND g.district_code = :d "
            "AND gp.grid_code <> :g ORDER BY 1"), {"d": case.district_code, "g": case.grid_code}).scalars().all()
        fire = conn.execute(sa.text(
            "SELECT pe.name FROM grid_posts gp JOIN posts p ON p.id = gp.post_id JOIN post_persons pp "
            "ON pp.post_id = p.id JOIN persons pe ON pe.id = pp.person_id WHERE gp.grid_code = :g "
            "AND p.name = '消防监督员' LIMIT 1"), {"g": case.grid_code}).scalar_one()
    stranger = next(n for n in others if n not in own)
    assert own and fire not in own
    for who in ("tester", stranger, fire):  # anyone with the role, another grid's worker, a 消防监督员
        with pytest.raises(RoleError, match="网格监督员") as exc:
            _act(city, case.id, "verify", actor=who, role="supervisor", passed=True)
        assert exc.value.status == 403
    # a grid whose chain has no grid worker: nobody may verify yet (409), the case is not lost
    with city.connect() as conn, conn.begin() as tx:
        conn.execute(sa.text("DELETE FROM grid_posts gp USING posts p WHERE p.id = gp.post_id "
                             "AND gp.grid_code = :g AND p.name = '网格监督员'"), {"g": case.grid_code})
        with pytest.raises(ConflictError, match="no grid worker"):
            act(conn, case.id, Action("verify", own[0], "supervisor", None, {"passed": True}), now=MONDAY_10)
        tx.rollback()
    # escalated to the district platform: a grid worker of the district may verify it
    urgent = _intake(city, address_text="汾阳路60号", urgency="emergency").case
    _act(city, urgent.id, "accept")
    with city.begin() as conn:
        assert (urgent.id, "district") in tick(conn, MONDAY_10 + timedelta(hours=5)).escalated
    _act(city, urgent.id, "handle", note="已修", now=MONDAY_10 + timedelta(hours=6))
    done = _act(city, urgent.id, "verify", actor=stranger, role="supervisor", passed=True,
                now=MONDAY_10 + timedelta(hours=7))
    assert done.status == "closed" and _log(city, urgent.id)[-1].actor == stranger


def test_return_goes_back_for_dispatch_to_another_department(city):
    case = _intake(city, address_text="汾阳路60号").case
    first = case.department_code
    returned = _act(city, case.id, "return", note="非本部门职责")
    assert returned.status == "returned" and returned.returned_departments == [first]
    again = _act(city, case.id, "dispatch", role="system", actor="machine")
    # no other road department in this grid's chain: the manual queue, with the reason
    assert again.status == "returned" and "no department of kind 道路养护" in again.manual_reason
    assert first in again.manual_reason and _log(city, case.id)[-1].action == "to_manual_queue"
    by_hand = _act(city, case.id, "dispatch", role="platform", actor="张调度", department_code="310104-CGZF")
    assert by_hand.status == "dispatched" and by_hand.department_code == "310104-CGZF"
    assert by_hand.manual_reason is None and by_hand.due_at == case.due_at  # 退单 does not reset the clock
    assert "by hand by 张调度" in by_hand.dispatch_reason


def test_operator_registers_or_rejects_a_reported_case(city):
    with city.begin() as conn:
        kept = intake(conn, CaseReport("public", "道路破损", "人行道地砖松动", "汾阳路44号"), now=MONDAY_10,
                      auto_register=False).case
        dropped = intake(conn, CaseReport("public", "道路破损", "路面不平", "汾阳路46号"), now=MONDAY_10,
                         auto_register=False).case
    assert kept.status == dropped.status == "reported" and kept.due_at is None
    with pytest.raises(ParameterError, match="needs a note"):
        _act(city, dropped.id, "reject", role="platform")
    rejected = _act(city, dropped.id, "reject", role="platform", note="不符合立案条件：路面平整度在允许范围内")
    assert rejected.status == "not_registered"
    with pytest.raises(ConflictError):
        _act(city, dropped.id, "register", role="platform")
    _act(city, kept.id, "register", role="platform", actor="王受理")
    sent = _act(city, kept.id, "dispatch", role="platform", actor="王受理")
    assert sent.status == "dispatched" and sent.department_name == "区建管委"
    assert [(e.action, e.actor) for e in _log(city, kept.id)][1:] == [("register", "王受理"), ("dispatch", "王受理")]


def test_the_same_ticket_racing_in_twice_makes_one_case(city):
    barrier = threading.Barrier(2)
    ids: list[int] = []

    def report() -> None:
        barrier.wait()
        ids.append(_intake(city, address_text="汾阳路48号", external_id="12345-RACE",
                           channel="hotline_12345").case.id)

    threads = [threading.Thread(target=report) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 2 and ids[0] == ids[1]
    with city.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cases WHERE external_id = '12345-RACE'")).scalar() == 1


# --- bad input and the manual queue ----------------------------------------------------------------

def test_unlocatable_address_goes_to_the_manual_queue(city):
    got = _intake(city, address_text="火星路999号", description="路面龟裂")
    case = got.case
    assert case.status == "registered" and case.grid_code is None
    assert case.manual_reason.startswith("address not found to a point")
    assert [e.action for e in _log(city, case.id)] == ["report", "register", "to_manual_queue"]


def test_point_outside_every_grid_goes_to_the_manual_queue(city):
    got = _intake(city, x=121.60, y=31.30, address_text=None)  # 浦东, outside the sample city
    assert got.case.status == "registered" and got.case.manual_reason.startswith("outside every grid")


def test_no_address_at_all_is_still_registered(city):
    got = _intake(city, channel="hotline_12345", description="来电称路面破损，未说明地点")
    assert got.case.status == "registered" and got.case.manual_reason == "no address and no point given"


def test_bad_channel_and_urgency_name_the_parameter(city):
    with pytest.raises(ParameterError) as exc:
        _intake(city, channel="fax", address_text="汾阳路1号")
    assert exc.value.parameter == "channel" and "hotline_12345" in str(exc.value)
    with pytest.raises(ParameterError) as exc:
        _intake(city, urgency="asap", address_text="汾阳路1号")
    assert exc.value.parameter == "urgency"


def test_illegal_transition_and_wrong_role(city):
    case = _intake(city, address_text="汾阳路80号").case
    with pytest.raises(ConflictError) as exc:
        _act(city, case.id, "handle", note="x")  # not accepted yet
    assert exc.value.status == 409 and "dispatched" in str(exc.value)
    with pytest.raises(RoleError, match="needs role supervisor") as exc:
        _act(city, case.id, "verify", role="department", passed=True)
    assert exc.value.status == 403
    with pytest.raises(ConflictError, match="version"):
        with city.begin() as conn:
            act(conn, case.id, Action("accept", "x", "department", expected_version=case.version - 1))
    assert _act(city, case.id, "accept").status == "accepted"


def test_the_log_is_append_only(city):
    case = _intake(city, address_text="汾阳路90号").case
    for sql in ("UPDATE case_events SET note = 'x' WHERE case_id = :id", "DELETE FROM case_events WHERE case_id = :id"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with city.begin() as conn:
                conn.execute(sa.text(sql), {"id": case.id})
    assert len(_log(city, case.id)) == 3


def test_two_racing_actions_one_wins_the_other_gets_409(city):
    case = _intake(city, address_text="汾阳路100号").case
    barrier = threading.Barrier(2)
    results: list[object] = []

    def accept(who: str) -> None:
        barrier.wait()
        try:
            results.append(_act(city, case.id, "accept", actor=who).status)
        except ConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=accept, args=(w,)) for w in ("甲", "乙")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "str"]
    assert [e.action for e in _log(city, case.id)].count("accept") == 1


# --- time limits, escalation --------------------------------------------------------------------------

def test_deadline_across_a_weekend_and_a_holiday(city):
    cal = WorkingCalendar(holidays=frozenset({date(2026, 12, 7)}))  # the next Monday is a holiday
    friday_16 = datetime(2026, 12, 4, 16, 0, tzinfo=LOCAL)
    # 2 h on Friday (16–18), weekend off, Monday off, then 6 h on Tuesday: 9–12, 13–16
    assert cal.add(friday_16, 8) == datetime(2026, 12, 8, 16, 0, tzinfo=LOCAL)
    assert cal.add(friday_16, 8, "24x7") == friday_16 + timedelta(hours=8)
    assert cal.hours_between(friday_16, datetime(2026, 12, 8, 16, 0, tzinfo=LOCAL)) == 8
    # a make-up working Saturday counts
    cal2 = WorkingCalendar(workdays=frozenset({date(2026, 12, 5)}))
    assert cal2.add(friday_16, 8) == datetime(2026, 12, 5, 16, 0, tzinfo=LOCAL)  # 2 h + 3 h + 3 h

    with city.begin() as conn:
        conn.execute(sa.text("INSERT INTO case_calendar VALUES ('2026-12-07', 'holiday', '测试假日')"))
    try:
        case = _intake(city, address_text="汾阳路110号", now=friday_16).case
        assert case.due_at == cal.add(friday_16, 40)
        assert case.due_at == datetime(2026, 12, 14, 16, 0, tzinfo=LOCAL)  # + a working week, Monday 7th off
        urgent = _intake(city, address_text="汾阳路112号", urgency="emergency", now=friday_16).case
        assert urgent.due_at == friday_16 + timedelta(hours=4)  # emergencies run 24×7
    finally:
        with city.begin() as conn:
            conn.execute(sa.text("DELETE FROM case_calendar WHERE day = '2026-12-07'"))
            assert load_calendar(conn).holidays == frozenset()


def test_overdue_case_escalates_street_district_city(city):
    start = datetime(2026, 6, 1, 9, 0, tzinfo=LOCAL)  # a Monday
    case = _intake(city, address_text="汾阳路120号", urgency="emergency", now=start).case
    assert case.due_at == start + timedelta(hours=4) and case.escalated_to == "street"
    with city.begin() as conn:
        report = tick(conn, now=start + timedelta(hours=3))
    assert case.id not in report.overdue
    with city.begin() as conn:
        report = tick(conn, now=start + timedelta(hours=5))
    assert case.id in report.overdue and (case.id, "district") in report.escalated
    with city.begin() as conn:
        again = tick(conn, now=start + timedelta(hours=6))
    assert case.id not in again.overdue and all(c != case.id for c, _ in again.escalated)
    with city.begin() as conn:
        report = tick(conn, now=start + timedelta(hours=8, minutes=1))  # a whole further limit past due
    assert (case.id, "city") in report.escalated
    with city.connect() as conn:
        after = get_case(conn, case.id)
    assert after.overdue and after.escalated_to == "city"
    assert [e.action for e in _log(city, case.id)][-3:] == ["overdue", "escalate", "escalate"]


def test_extension_moves_the_deadline_and_suspension_stops_the_clock(city):
    case = _intake(city, address_text="汾阳路130号").case
    _act(city, case.id, "request_extension", note="需调配材料", hours=8)
    with pytest.raises(UserError, match="role platform"):
        _act(city, case.id, "approve_extension")
    longer = _act(city, case.id, "approve_extension", role="platform")
    assert longer.extension_count == 1 and longer.due_at == case.due_at + timedelta(days=1)
    with pytest.raises(ConflictError, match="no extension request"):
        _act(city, case.id, "approve_extension", role="platform")
    paused = _act(city, case.id, "suspend", role="platform", note="待产权单位确认")
    assert paused.status == "suspended" and paused.remaining_hours == 48
    resumed = _act(city, case.id, "resume", role="platform", now=MONDAY_10 + timedelta(days=7))
    assert resumed.status == "dispatched" and resumed.due_at == longer.due_at + timedelta(days=7)


# --- duplicates ------------------------------------------------------------------------------------------

def test_duplicates_are_suggested_and_merged_into_the_first(city):
    t0 = datetime(2026, 7, 6, 10, 0, tzinfo=LOCAL)
    first = _intake(city, address_text="汾阳路170号", now=t0, channel="grid_patrol").case
    second = _intake(city, address_text="汾阳路172号", now=t0 + timedelta(hours=1),
                     external_id="12345-DUP", channel="hotline_12345")
    far = _intake(city, address_text="汾阳路20号", now=t0 + timedelta(hours=1))
    assert second.duplicates == [first.id] and first.id not in far.duplicates
    with city.begin() as conn:
        kept = merge(conn, first.id, [second.case.id], actor="张调度", note="同一处路面")
    assert kept.id == first.id
    with city.connect() as conn:
        merged = get_case(conn, second.case.id)
    assert merged.status == "merged" and merged.merged_into == first.id
    assert [e.action for e in _log(city, first.id)][-1] == "merged_from"
    # the reporter's ticket now leads to the case it was merged into
    again = _intake(city, address_text="汾阳路172号", external_id="12345-DUP", channel="hotline_12345")
    assert again.case.id == first.id and not again.created
    with pytest.raises(ConflictError):
        _act(city, second.case.id, "accept")
    # and a reporter's update of the merged case is logged on the first
    noted = _act(city, second.case.id, "comment", actor="hotline_12345", role="reporter", note="坑越来越大了")
    assert noted.id == first.id and _log(city, first.id)[-1].note == "坑越来越大了"


# --- evaluation ----------------------------------------------------------------------------------------

def test_indicators_checked_by_hand(city):
    """Four cases registered in March 2026 in one grid and road department, by hand:
    A closed on time, B closed late after one rework, C open past its deadline, D open and extended."""
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=LOCAL)  # Monday; 40 working hours → due Monday 9th 09:00
    ids = [_intake(city, address_text=f"汾阳路{n}号", now=t0 + timedelta(minutes=i)).case.id
           for i, n in enumerate((141, 143, 145, 147))]
    a, b, c, d = ids
    _act(city, a, "accept", now=t0 + timedelta(hours=1))
    _act(city, a, "handle", note="修好", now=t0 + timedelta(hours=20))
    _act(city, a, "verify", role="supervisor", passed=True, now=t0 + timedelta(hours=24))  # 24 h
    _act(city, b, "accept", now=t0 + timedelta(hours=1))
    _act(city, b, "handle", note="修好", now=t0 + timedelta(days=2))
    _act(city, b, "verify", role="supervisor", note="未修好", passed=False, now=t0 + timedelta(days=3))
    _act(city, b, "handle", note="再修", now=t0 + timedelta(days=9))
    _act(city, b, "verify", role="supervisor", passed=True, now=t0 + timedelta(days=10))  # 240 h, late
    _act(city, d, "request_extension", note="等材料", hours=80, now=t0 + timedelta(hours=2))
    _act(city, d, "approve_extension", role="platform", now=t0 + timedelta(hours=3))
    with city.connect() as conn:
        grid = get_case(conn, a).grid_code
        rows = evaluate(conn, "grid", datetime(2026, 3, 1, tzinfo=LOCAL), datetime(2026, 4, 1, tzinfo=LOCAL))
        dept = evaluate(conn, "department", datetime(2026, 3, 1, tzinfo=LOCAL), datetime(2026, 4, 1, tzinfo=LOCAL))
    (g,) = [r for r in rows if r.key == grid]
    assert (g.registered, g.closed, g.closed_on_time, g.reworked, g.extended) == (4, 2, 1, 1, 1)
    assert (g.closure_rate, g.on_time_rate, g.rework_rate, g.extension_rate) == (0.5, 0.25, 0.25, 0.25)
    assert g.overdue == 3  # B closed late; C open past due; D extended to 23 March, still open on 1 April
    assert g.mean_hours_to_close == pytest.approx((24 - 0 + 240 - 1 / 60) / 2)
    # p90 of {24, 239.98} by linear interpolation: 24 + 0.9 × (239.98 − 24)
    assert g.p90_hours_to_close == pytest.approx(24 + 0.9 * (240 - 1 / 60 - 24))
    assert [r.registered for r in dept] == [4] and dept[0].name == "区建管委"
    with city.connect() as conn, pytest.raises(ParameterError, match="valid: department"):
        evaluate(conn, "planet", datetime(2026, 3, 1, tzinfo=LOCAL), datetime(2026, 4, 1, tzinfo=LOCAL))


def test_a_base_without_the_case_tables_says_run_cim_init(server_url):
    from tests.conftest import create_database

    with engine_for(create_database(server_url)).connect() as conn:  # created, never initialised
        with pytest.raises(UserError, match="run 'cim init'"):
            class_by_code(conn, "E0105")


def test_packaged_catalogue_is_valid():
    from cases.catalogue import parse_classes

    text = (PROJECT / "cases" / "data" / "case_classes.csv").read_text(encoding="utf-8")
    assert len(parse_classes(text, "case_classes.csv")) > 60
    with pytest.raises(UserError, match=r"x.csv, row 2: field kind"):
        parse_classes("code,kind,name\n01,部,x\n", "x.csv")


def _one_line(text: str) -> str:
    """The CLI's message without the terminal's line wrapping."""
    return " ".join(text.split())


# --- the command line --------------------------------------------------------------------------------

def test_cli_import_is_idempotent_and_checks_every_row_first(city, db_url, tmp_path):
    src = tmp_path / "hotline.csv"
    src.write_text(
        "channel,class,description,address,x,y,urgency,external_id,reporter_contact,reported_at,工单来源\n"
        "hotline_12345,道路破损,路面坑洼,汾阳路61号,,,normal,H-1,13912345678,2026-05-04T10:00:00+08:00,市民热线\n"
        "hotline_12345,暴露垃圾,垃圾无人清运,月球路1号,,,normal,H-2,,2026-05-04T10:05:00+08:00,\n"
        "iot,E0401,积水传感器报警,,121.4505,31.2150,emergency,H-3,,2026-05-04T10:06:00+08:00,\n",
        encoding="utf-8")
    now = ["--now", "2026-05-04T10:10:00+08:00"]
    first = run_cim("cases", "import", str(src), *now, db_url=db_url)
    assert "3 read, 3 new, 0 already in, 2 dispatched by machine, 1 in the manual queue" in first.stdout
    again = run_cim("cases", "import", str(src), *now, db_url=db_url)
    assert "3 read, 0 new, 3 already in" in again.stdout
    with city.connect() as conn:
        attrs = conn.execute(sa.text("SELECT attributes FROM cases WHERE external_id = 'H-1'")).scalar()
    assert attrs == {"工单来源": "市民热线"}

    bad = tmp_path / "bad.csv"
    bad.write_text("channel,class,address,external_id\nhotline_12345,道路破损,汾阳路3号,B-1\n"
                   "hotline_12345,路面有坑,汾阳路5号,B-2\n", encoding="utf-8")
    proc = run_cim("cases", "import", str(bad), db_url=db_url, check=False)
    assert proc.returncode == 1 and "bad.csv, row 3: field class" in _one_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    with city.connect() as conn:  # nothing of the file was written
        assert conn.execute(sa.text("SELECT count(*) FROM cases WHERE external_id LIKE 'B-%'")).scalar() == 0


def test_json_import_takes_points_in_gcj02(city, tmp_path):
    from cases.importer import import_cases
    from cim.crs import wgs84_to_gcj02

    with city.connect() as conn:
        lon, lat = conn.execute(sa.text(
            "SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(geom, 4326) AS p FROM addresses "
            "WHERE valid_to IS NULL AND road = '汾阳路' AND door_number = '101') AS a")).one()
    glon, glat = wgs84_to_gcj02(lon, lat)
    src = tmp_path / "app.json"
    src.write_text(json.dumps([{"channel": "public", "class": "E0102", "x": float(glon), "y": float(glat),
                                "crs": "gcj02", "external_id": "APP-1", "description": "垃圾堆放"}]), encoding="utf-8")
    report = import_cases(city, src, now=MONDAY_10)
    assert (report.created, report.dispatched) == (1, 1)
    with city.connect() as conn:
        case_id = conn.execute(sa.text("SELECT id FROM cases WHERE external_id = 'APP-1'")).scalar()
        case = get_case(conn, case_id)
        expected = lookup_points(conn, [lon], [lat], "EPSG:4326")[0]
    assert case.grid_code == expected.grid.code and case.department_name == "区市容绿化局"
    src.write_text('[{"channel": "public", "class": "E0102"', encoding="utf-8")
    with pytest.raises(UserError, match="app.json: not JSON"):
        import_cases(city, src)
    # a JSON record is named by its place in the array
    src.write_text(json.dumps([{"channel": "public", "class": "E0102", "address": "汾阳路3号"},
                               {"channel": "public", "class": "E0102", "x": "east", "y": 31.2}]), encoding="utf-8")
    with pytest.raises(UserError, match=r"app.json, item 2: field x"):
        import_cases(city, src)


def test_cli_list_show_act_tick_stats(city, db_url, tmp_path):
    case = _intake(city, address_text="汾阳路190号", reporter_contact="13812345678", external_id="CLI-1",
                   now=datetime(2026, 9, 7, 9, 0, tzinfo=LOCAL)).case
    listed = run_cim("cases", "list", "--status", "dispatched", "--limit", "1000", db_url=db_url).stdout
    mine = [json.loads(line) for line in listed.splitlines() if json.loads(line)["id"] == case.id]
    assert mine and mine[0]["reporter_contact"] == "138****5678"
    run_cim("cases", "act", str(case.id), "accept", "--actor", "李工", "--role", "department", db_url=db_url)
    refused = run_cim("cases", "act", str(case.id), "accept", "--actor", "李工", "--role", "department",
                      db_url=db_url, check=False)
    assert refused.returncode == 1 and f"case {case.id} is accepted" in _one_line(refused.stderr)
    ticked = run_cim("cases", "tick", "--now", "2026-09-30T09:00:00+08:00", db_url=db_url).stdout
    assert f"case {case.id} → city" in ticked
    photo = tmp_path / "crack.png"
    photo.write_bytes(PNG)
    run_cim("cases", "attach", str(case.id), str(photo), "--actor", "李工", "--role", "department",
            "--dir", str(tmp_path / "store"), db_url=db_url)
    shown = json.loads(run_cim("cases", "show", str(case.id), db_url=db_url).stdout)
    assert shown["case"]["escalated_to"] == "city"
    assert [e["action"] for e in shown["log"]] == ["report", "register", "dispatch", "accept", "overdue", "escalate",
                                                   "attach"]
    assert shown["attachments"][0]["media_type"] == "image/png"
    out = tmp_path / "stats.csv"
    run_cim("cases", "stats", "--by", "street", "--from", "2026-09-01T00:00:00+08:00",
            "--to", "2026-10-01T00:00:00+08:00", "--csv", str(out), db_url=db_url)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    (row,) = [r for r in rows if r["key"] == case.street_code]
    assert (row["registered"], row["closed"], row["overdue"]) == ("1", "0", "1")


def test_cli_classes_and_calendar_load(city, db_url, tmp_path):
    classes = tmp_path / "extra.csv"
    classes.write_text("code,kind,name,parent_code,emergency_hours,normal_hours,department_kind\n"
                       "E9904,事件,共享单车堆积,E99,2,8,交通管理\n", encoding="utf-8")
    assert "1 classes written" in run_cim("cases", "classes", "load", str(classes), db_url=db_url).stdout
    assert _intake(city, class_code="共享单车堆积", address_text="汾阳路30号").case.class_code == "E9904"
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("code,kind,name,parent_code\nE9905,事件,x,E98\n", encoding="utf-8")
    proc = run_cim("cases", "classes", "load", str(wrong), db_url=db_url, check=False)
    assert proc.returncode == 1 and "wrong.csv, row 2: field parent_code" in _one_line(proc.stderr)
    days = tmp_path / "holidays.csv"
    days.write_text("day,kind,name\n2027-01-01,holiday,元旦\n2027-01-04,workday,调休\n", encoding="utf-8")
    assert "2 days written" in run_cim("cases", "calendar", "load", str(days), db_url=db_url).stdout
    with city.begin() as conn:
        cal = load_calendar(conn)
        conn.execute(sa.text("DELETE FROM case_calendar WHERE day >= '2027-01-01'"))
    assert date(2027, 1, 1) in cal.holidays and date(2027, 1, 4) in cal.workdays


def test_cim_ingest_case_classes_is_the_same_loader(city, db_url, tmp_path):
    """The issue's spelling, ``cim ingest case-classes FILE``, loads the catalogue like
    ``cim cases classes load`` (one implementation) and names a bad row the same way."""
    extra = tmp_path / "more.csv"
    extra.write_text("code,kind,name,parent_code,emergency_hours,normal_hours,department_kind\n"
                     "E9906,事件,外卖电动车乱停,E99,2,8,交通管理\n", encoding="utf-8")
    assert "1 classes written" in run_cim("ingest", "case-classes", str(extra), db_url=db_url).stdout
    with city.connect() as conn:
        assert class_by_code(conn, "外卖电动车乱停").code == "E9906"
    wrong = tmp_path / "bad.csv"
    wrong.write_text("code,kind,name\nE9907,事件,\n", encoding="utf-8")
    proc = run_cim("ingest", "case-classes", str(wrong), db_url=db_url, check=False)
    assert proc.returncode == 1 and "bad.csv, row 2: field name" in _one_line(proc.stderr)
    assert "case-classes" in run_cim("ingest", "--help").stdout


# --- attachments -----------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)


def test_photos_are_stored_once_by_hash_and_logged(city, tmp_path):
    case = _intake(city, address_text="汾阳路150号").case
    with city.begin() as conn:
        a = add_attachment(conn, case.id, PNG, tmp_path, "张巡查", "reporter")
        b = add_attachment(conn, case.id, PNG, tmp_path, "李工", "department")
    assert a.content_hash == b.content_hash == hashlib.sha256(PNG).hexdigest() and a.id != b.id
    assert a.media_type == "image/png" and (tmp_path / a.path).read_bytes() == PNG
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / a.path]
    assert [e.action for e in _log(city, case.id)][-2:] == ["attach", "attach"]
    with pytest.raises(UnsupportedMediaTypeError) as exc, city.begin() as conn:
        add_attachment(conn, case.id, b"%PDF-1.7 not a photo", tmp_path, "x", "reporter")
    assert exc.value.status == 415
    with pytest.raises(PayloadTooLargeError) as exc, city.begin() as conn:
        add_attachment(conn, case.id, PNG + bytes(100), tmp_path, "x", "reporter", max_bytes=64)
    assert exc.value.status == 413
    with city.connect() as conn:
        assert len(attachments_of(conn, case.id)) == 2


def test_a_calendar_file_that_is_not_utf8_is_one_clear_error(tmp_path, engine):
    """A GBK-saved calendar (as an office suite writes it) is named, not a UnicodeDecodeError traceback."""
    from cases.calendar import load_calendar_file

    path = tmp_path / "holidays.csv"
    path.write_bytes("day,kind,name\n2026-10-01,holiday,国庆节\n".encode("gbk"))
    with pytest.raises(UserError, match="holidays.csv: not UTF-8"), engine.begin() as conn:
        load_calendar_file(conn, path)
