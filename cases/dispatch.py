"""Machine dispatch (机器派单): from a case's class and its grid's responsibility chain to one
department, post and person — with the reason in words — or to the manual queue with the reason
no rule could decide.

The rule, in order:

1. the class names a department kind (道路养护, 市容环卫 …); a post of the grid's chain whose
   department's name the kind's pattern recognises is a candidate;
2. for a 部件 class, a post whose department ``handles`` the part's 小类 (or its 大类) is a
   candidate too; a post matching both (1) and (2) comes first, then (1), then (2);
3. departments the case was returned from (退单) are left out, and so is the grid platform
   itself (网格化管理中心: it dispatches, it does not handle);
4. among equals the chain's order (post code) decides; the person is one of the post's holders,
   taken in turn by case id so a post's cases spread over its people.

Pure: no database access; callers pass the chain (:func:`cim.grid.lookup_points`) and the kind
patterns (:func:`cases.catalogue.department_kinds`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cim.grid import Responsibility

from cases.catalogue import CaseClass

#: the grid platform's own departments: they watch and verify, they are never dispatched to
PLATFORM_DEPARTMENT = re.compile(r"网格化管理中心|城运中心|城市运行管理中心")
#: the grid worker's post (网格监督员) at the grid platform: the one who verifies handled cases (核查);
#: only together with :data:`PLATFORM_DEPARTMENT`, so a 消防监督员 of the fire brigade is not one.
#: Both are used as PostgreSQL regular expressions too (plain alternations: the same meaning there).
GRID_WORKER_POST = re.compile(r"网格监督员|城管监督员|网格员")


@dataclass(frozen=True)
class Assignment:
    department_code: str
    department_name: str
    post_code: str
    person_name: str | None
    person_contact: str | None
    reason: str


@dataclass(frozen=True)
class NoDecision:
    reason: str


#: (pattern, department name) → whether the pattern finds the name: a chain's departments are asked about
#: again for every class and grid of a batch (an import of 20,000 cases ranks ~4,000 (grid, class) pairs over
#: chains of tens of posts), and departments are few
_FOUND: dict[tuple[re.Pattern[str], str], bool] = {}


def _found(pattern: re.Pattern[str], name: str) -> bool:
    found = _FOUND.get((pattern, name))
    if found is None:
        if len(_FOUND) > 100_000:  # a bound, for a server that runs for months over changing names
            _FOUND.clear()
        found = _FOUND[(pattern, name)] = pattern.search(name) is not None
    return found


def _handles(resp: Responsibility, code: str) -> bool:
    return any(code == h or (len(h) == 2 and code.startswith(h)) for h in resp.department.handles)


@dataclass(frozen=True)
class Ranked:
    """The post the rule picks for a (class, grid, excluded departments): everything of the choice
    but the person, who depends on the case id — so a batch computes it once per distinct key."""

    subject: str
    grid_code: str
    responsibility: Responsibility
    why: str


def rank(cls: CaseClass, grid_code: str, chain: Sequence[Responsibility], kinds: dict[str, re.Pattern[str]],
         excluded: Sequence[str] = ()) -> Ranked | NoDecision:
    """Rules 1–4 but the person: the post of ``grid_code``'s chain for a case of ``cls``, or why none."""
    pattern = kinds.get(cls.department_kind or "")
    ranked: list[tuple[int, int, Responsibility, str]] = []
    for order, resp in enumerate(chain):
        dept = resp.department
        if dept.code in excluded or _found(PLATFORM_DEPARTMENT, dept.name):
            continue
        by_kind = bool(pattern and _found(pattern, dept.name))
        by_part = cls.is_part and _handles(resp, cls.code)
        if not (by_kind or by_part):
            continue
        why = " and ".join(w for w, ok in (
            (f"its name matches department kind {cls.department_kind} (/{pattern.pattern if pattern else ''}/)",
             by_kind), (f"it handles part class {cls.code}", by_part)) if ok)
        ranked.append((0 if by_kind and by_part else 1 if by_kind else 2, order, resp, why))
    subject = f"class {cls.code} {cls.name}"
    if not ranked:
        if not cls.department_kind and not cls.is_part:
            return NoDecision(f"{subject} names no department kind")
        kind = f"kind {cls.department_kind}" if cls.department_kind else "a department"
        if cls.department_kind and pattern is None:
            return NoDecision(f"{subject}: department kind {cls.department_kind} has no name pattern "
                              "(case_department_kinds)")
        left_out = f" (returned by: {', '.join(excluded)})" if excluded else ""
        return NoDecision(f"no department of {kind} for {subject} in the responsibility chain of grid "
                          f"{grid_code}{left_out}")
    ranked.sort(key=lambda r: (r[0], r[1]))
    _, _, resp, why = ranked[0]
    return Ranked(subject, grid_code, resp, why)


def assign(case_id: int, ranked: Ranked) -> Assignment:
    """The person of the ranked post for one case (rule 4: the post's holders in turn by case id)."""
    resp = ranked.responsibility
    persons = resp.persons
    person = persons[case_id % len(persons)] if persons else None
    who = (f"person {person.name} (holder {case_id % len(persons) + 1} of {len(persons)}, in turn by case id)"
           if person else "no person holds the post: the department assigns one")
    reason = (f"{ranked.subject} → grid {ranked.grid_code} → post {resp.post.code} {resp.post.name} of department "
              f"{resp.department.code} {resp.department.name}, because {ranked.why}; {who}")
    return Assignment(resp.department.code, resp.department.name, resp.post.code,
                      person.name if person else None, person.contact if person else None, reason)


def choose(case_id: int, cls: CaseClass, grid_code: str, chain: Sequence[Responsibility],
           kinds: dict[str, re.Pattern[str]], excluded: Sequence[str] = ()) -> Assignment | NoDecision:
    """The department, post and person for a case of ``cls`` in ``grid_code``, or why none."""
    found = rank(cls, grid_code, chain, kinds, excluded)
    return assign(case_id, found) if isinstance(found, Ranked) else found
