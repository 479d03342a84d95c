"""The machine-dispatch rule (``cases.dispatch``) among several candidates: a department matching both the
class's department kind and the part it handles comes first, then by kind, then by part; the grid platform and the
departments that returned the case are left out; among equals the chain's order; the person in turn by case id.
Pure: no database (the chains and kind patterns are built here)."""
from __future__ import annotations

import re

from cases.catalogue import CaseClass
from cases.dispatch import NoDecision, Ranked, choose, rank
from cim.grid import Area, Department, Person, Responsibility

KINDS = {"道路养护": re.compile("道路|市政")}


def _class(code: str, kind: str, department_kind: str | None) -> CaseClass:
    return CaseClass(code=code, kind=kind, name="测试", parent_code=code[:2], register_condition=None,
                     close_condition=None, emergency_hours=2, emergency_calendar="24x7", normal_hours=48,
                     normal_calendar="working", department_kind=department_kind, duplicate_radius_m=50,
                     duplicate_window_h=72)


def _post(post: str, dept: str, name: str, handles: tuple[str, ...] = (), persons: int = 1) -> Responsibility:
    return Responsibility(Area(post, f"岗位{post}"), Department(dept, name, handles),
                          tuple(Person(f"{dept}-{i}", None) for i in range(persons)))


MANHOLE = _class("0101", "部件", "道路养护")  # a part class whose kind is road upkeep
PLATFORM = _post("P0", "D0", "徐汇区网格化管理中心", handles=("0101",))
BY_PART = _post("P1", "D1", "自来水公司", handles=("01",))  # handles the whole 大类
BY_KIND = _post("P2", "D2", "区道路养护所")
BOTH = _post("P3", "D3", "市政工程管理所", handles=("0101",))
BY_KIND_LATER = _post("P4", "D4", "道路管理署")


def _chosen(chain, excluded=()) -> str:
    found = rank(MANHOLE, "G1", chain, KINDS, excluded)
    assert isinstance(found, Ranked), found
    return found.responsibility.department.code


def test_both_before_kind_before_part_and_the_platform_never():
    chain = (PLATFORM, BY_PART, BY_KIND, BOTH, BY_KIND_LATER)
    assert _chosen(chain) == "D3"
    assert _chosen(chain, excluded=("D3",)) == "D2"  # returned by D3: the first by kind in the chain's order
    assert _chosen(chain, excluded=("D3", "D2", "D4")) == "D1"  # only the part's handler is left
    assert isinstance(rank(MANHOLE, "G1", (PLATFORM,), KINDS), NoDecision)  # the platform dispatches, never handles


def test_an_event_class_goes_by_kind_only_and_says_why_not():
    pothole = _class("E0501", "事件", "道路养护")
    found = rank(pothole, "G1", (BY_PART, BY_KIND_LATER, BY_KIND), KINDS)
    assert isinstance(found, Ranked) and found.responsibility.department.code == "D4"  # chain order among equals
    none = rank(pothole, "G1", (BY_PART,), KINDS)
    assert isinstance(none, NoDecision) and "no department of kind 道路养护" in none.reason and "G1" in none.reason
    unnamed = rank(_class("E0502", "事件", None), "G1", (BY_KIND,), KINDS)
    assert isinstance(unnamed, NoDecision) and "names no department kind" in unnamed.reason


def test_the_post_holders_take_cases_in_turn_by_case_id():
    chain = (_post("P9", "D9", "道路养护所", persons=3),)
    people = [choose(case_id, MANHOLE, "G1", chain, KINDS).person_name for case_id in range(6)]
    assert people == ["D9-0", "D9-1", "D9-2", "D9-0", "D9-1", "D9-2"]
