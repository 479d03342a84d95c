"""The case lifecycle as an explicit state machine (GB/T 30428: 立案 → 派遣 → 处置 → 核查 → 结案).

::

    reported ─register→ registered ─dispatch→ dispatched ─accept→ accepted ─handle→ handled
        │                    ▲  ▲                 │                  │                │
        └reject→ not_registered │                 └──────return──────┴→ returned ─────┘verify
                                └──────────── dispatch (again, 退单 departments left out) ◀┘
    handled ─verify passed→ closed          handled ─verify failed→ accepted (返工, rework + 1)
    registered/dispatched/accepted/returned ─suspend→ suspended ─resume→ (where it was)
    any open ─merge→ merged (into the first of its duplicates)

Extensions (延期) are requested by the department and approved or refused by the platform; they
move the deadline, not the status. Every action needs its role, takes the case's row lock (two
actions racing on one case: the second sees the first's result and, if its transition is no
longer legal, gets a 409; a stale ``expected_version`` is a 409 too), and writes its log row in the
same transaction as the change.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim import extensions
from cim.distribution import on_citus
from cim.errors import ConflictError, ParameterError, UserError
from cim.grid import Responsibility, responsibility_for

from cases.calendar import WorkingCalendar, load_calendar
from cases.catalogue import CaseClass, class_by_code, classes_for, department_kinds
from cases.dispatch import GRID_WORKER_POST, PLATFORM_DEPARTMENT, Assignment, choose
from cases.model import OPEN_STATUSES, Case, cases_changed, get_case, get_cases, write_event

ROLES = ("system", "platform", "department", "supervisor", "reporter")


class RoleError(UserError):
    """The action is not one the actor's role may take (HTTP 403)."""

    status = 403
    title = "Forbidden"


@dataclass(frozen=True)
class Transition:
    sources: tuple[str, ...]
    target: str | None  # None: the status does not change
    roles: tuple[str, ...]
    needs_note: bool = False


TRANSITIONS: dict[str, Transition] = {
    "register": Transition(("reported",), "registered", ("system", "platform")),
    "reject": Transition(("reported",), "not_registered", ("system", "platform"), needs_note=True),
    "dispatch": Transition(("registered", "returned"), "dispatched", ("system", "platform")),
    "accept": Transition(("dispatched",), "accepted", ("department",)),
    "return": Transition(("dispatched", "accepted"), "returned", ("department",), needs_note=True),
    "handle": Transition(("accepted",), "handled", ("department",), needs_note=True),
    "verify": Transition(("handled",), None, ("supervisor",)),  # closed or back to accepted
    "request_extension": Transition(("dispatched", "accepted"), None, ("department",), needs_note=True),
    "approve_extension": Transition(("dispatched", "accepted"), None, ("platform",)),
    "refuse_extension": Transition(("dispatched", "accepted"), None, ("platform",)),
    "suspend": Transition(("registered", "dispatched", "accepted", "returned"), "suspended", ("platform",),
                          needs_note=True),
    "resume": Transition(("suspended",), None, ("platform",)),
    "merge": Transition(tuple(s for s in OPEN_STATUSES if s != "handled"), "merged", ("system", "platform")),
    "comment": Transition(OPEN_STATUSES + ("closed", "not_registered", "merged"), None, ROLES),
}
ACTIONS = tuple(TRANSITIONS)
#: statuses whose deadline runs: the case is with a department or waits for (re-)dispatch
CLOCK_STATUSES = ("dispatched", "accepted", "returned")


@dataclass(frozen=True)
class Action:
    """One action on a case, as an API or the CLI receives it."""

    action: str
    actor: str
    role: str
    note: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    expected_version: int | None = None


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _check(case: Case, act: Action) -> Transition:
    if act.action not in TRANSITIONS:
        raise ParameterError("action", f"action: unknown action {act.action!r}; valid: {', '.join(ACTIONS)}")
    if act.role not in ROLES:
        raise ParameterError("role", f"role: unknown role {act.role!r}; valid: {', '.join(ROLES)}")
    if not act.actor or not act.actor.strip():
        raise ParameterError("actor", "actor: who acts must be named")
    rule = TRANSITIONS[act.action]
    if act.role not in rule.roles:
        raise RoleError(f"action {act.action} needs role {' or '.join(rule.roles)}, not {act.role}")
    if act.expected_version is not None and act.expected_version != case.version:
        raise ConflictError(f"case {case.id} is at version {case.version}, not {act.expected_version}: "
                            "it changed meanwhile; reload it and retry")
    if case.status not in rule.sources:
        raise ConflictError(f"case {case.id} is {case.status}: action {act.action} needs it "
                            f"{' or '.join(rule.sources)}")
    if rule.needs_note and not (act.note and act.note.strip()):
        raise ParameterError("note", f"note: action {act.action} needs a note (reason or evidence)")
    return rule


def _update(conn: Connection, case: Case, **values: Any) -> None:
    """Change a case's row and bump its version (the caller holds the row lock)."""
    sets = ", ".join(f"{k} = :{k}" for k in values)
    # the district too: on Citus the statement goes to the case's shard only
    conn.execute(sa.text(f"UPDATE cases SET {sets}{', ' if sets else ''}version = version + 1 "
                         "WHERE id = :_id AND district_code = :_district"), {**values, "_id": case.id,
                                                                             "_district": case.district})


def act(conn: Connection, case_id: int, action: Action, now: datetime | None = None,
        calendar: WorkingCalendar | None = None, cls: CaseClass | None = None) -> Case:
    """Carry out one action on a case; returns the case after it. Raises ConflictError (409) for a
    transition the case's status does not allow or a stale version. ``calendar`` and ``cls`` (the
    case's class) may be passed by a caller that has them, to save their queries."""
    now = now or now_utc()
    case = get_case(conn, case_id, lock=True)
    seen = {case.id}
    while action.action == "comment" and case.merged_into is not None and case.merged_into not in seen:
        # a reporter's update of a merged case goes to the case it was merged into
        case = get_case(conn, case.merged_into, lock=True)
        seen.add(case.id)
    case_id = case.id
    rule = _check(case, action)
    calendar = calendar or load_calendar(conn)
    if cls is None or cls.code != case.class_code:
        cls = class_by_code(conn, case.class_code)
    if action.action in PLANNERS:
        if action.action == "verify":
            problem = verifier_problem(case, action, verifiers_by_scope(conn, [case]))
            if problem is not None:
                raise problem
        _apply(conn, case, action, now, PLANNERS[action.action](case, cls, rule, action, now, calendar))
    else:
        _HANDLERS[action.action](conn, case, cls, rule, action, now, calendar)
    after = get_case(conn, case_id, district=case.district)
    run_hooks(conn, after, action, now)
    return after


#: What a scenario adds to an action on its own classes: called after the action, in the same
#: transaction, with the case after it; an error it raises undoes the action too (so a hook may
#: also refuse an action whose ``data`` its flow cannot use).
ActionHook = Callable[[Connection, Case, "Action", datetime], None]
_HOOKS: dict[tuple[str, str], list[ActionHook]] = {}


def on_action(class_codes: Iterable[str], actions: Iterable[str], hook: ActionHook) -> None:
    """Run ``hook`` after each of ``actions`` on a case of one of ``class_codes`` (the one extension
    point of the state machine: a scenario's flow branches on an action's outcome, e.g. a
    verification's finding opens the next case, without forking the transitions). Registering the
    same hook twice is a no-op."""
    for code in class_codes:
        for name in actions:
            if name not in TRANSITIONS:
                raise ValueError(f"on_action: unknown action {name!r}")
            hooks = _HOOKS.setdefault((code, name), [])
            if hook not in hooks:
                hooks.append(hook)


def has_hooks(class_code: str, action: str) -> bool:
    extensions.load(extensions.CASE_HOOKS)  # the packages that register hooks, if their import was deferred
    return bool(_HOOKS.get((class_code, action)))


def run_hooks(conn: Connection, case: Case, action: "Action", now: datetime) -> None:
    """The hooks registered for ``case``'s class and ``action`` (by :func:`act` and, for each case it
    changed, :func:`cases.bulk.act_many`)."""
    extensions.load(extensions.CASE_HOOKS)
    for hook in _HOOKS.get((case.class_code, action.action), ()):
        hook(conn, case, action, now)


@dataclass(frozen=True)
class Change:
    """What an action does to a case, computed without the database (so one action's rule serves
    :func:`act` and the set-based :func:`cases.bulk.act_many` alike): the columns it sets, the status
    it leads to, its log row's note (None: the action's) and data (added to the action's)."""

    values: dict[str, Any]
    to_status: str
    note: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def log_row(case: Case, action: Action, change: Change) -> tuple[str | None, str, str | None, dict[str, Any]]:
    """(from status, to status, note, data) of the log row ``change`` of ``case`` writes."""
    note = change.note if change.note is not None else action.note
    return case.status, change.to_status, note, {**action.data, **change.data}


def _apply(conn: Connection, case: Case, action: Action, now: datetime, change: Change) -> None:
    _update(conn, case, **change.values)
    frm, to, note, data = log_row(case, action, change)
    write_event(conn, case.id, now, action.actor, action.role, action.action, frm, to, note, data,
                district=case.district)


def _simple(case, cls, rule, action, now, calendar) -> Change:
    target = rule.target or case.status
    values: dict[str, Any] = {}
    if action.action == "register":
        values["registered_at"] = now
    if target != case.status:
        values["status"] = target
    return Change(values, target)


def _dispatch(conn, case, cls, rule, action, now, calendar) -> None:
    dept = action.data.get("department_code")
    if dept:
        found = _manual_assignment(conn, case, str(dept), action)
    else:
        found = machine_assignment(conn, case, cls)
    if not isinstance(found, Assignment):
        if case.manual_reason != found:
            _update(conn, case, manual_reason=found)
        write_event(conn, case.id, now, action.actor, action.role, "to_manual_queue", case.status,
                    case.status, found, {}, district=case.district)
        return
    _apply(conn, case, action, now, plan_dispatch(case, cls, found, action, now, calendar))


def plan_dispatch(case: Case, cls: CaseClass, found: Assignment, action: "Action", now: datetime,
                  calendar: WorkingCalendar) -> Change:
    """What dispatching ``case`` to ``found`` changes (for :func:`act` and :func:`cases.bulk.act_many`)."""
    values: dict[str, Any] = dict(
        status="dispatched", department_code=found.department_code, department_name=found.department_name,
        post_code=found.post_code, person_name=found.person_name, person_contact=found.person_contact,
        dispatch_reason=found.reason, manual_reason=None, dispatched_at=now)
    if case.due_at is None:  # the handling clock starts at the first dispatch; a 退单 does not reset it
        hours, kind = cls.limit(case.urgency)
        values["due_at"] = calendar.add(now, hours or 0, kind)
    return Change(values, "dispatched", action.note or found.reason, dict(
        department_code=found.department_code, post_code=found.post_code, person_name=found.person_name,
        due_at=values.get("due_at", case.due_at)))


def machine_assignment(conn: Connection, case: Case, cls: CaseClass) -> Assignment | str:
    """The machine's choice for a case, or the reason it has none (for the manual queue)."""
    chains = responsibility_for(conn, [case.grid_code]) if case.grid_code is not None else {}
    return machine_choice(case, cls, chains, department_kinds(conn))


def machine_choice(case: Case, cls: CaseClass, chains: dict[str, tuple[Responsibility, ...]],
                   kinds: dict[str, re.Pattern[str]]) -> Assignment | str:
    """:func:`machine_assignment` with the chains of the case's grid and the kind patterns given
    (a set-based caller fetches them once for many cases)."""
    if case.grid_code is None:
        return case.manual_reason or "the case lies in no grid"
    found = choose(case.id, cls, case.grid_code, chains[case.grid_code], kinds, case.returned_departments)
    return found if isinstance(found, Assignment) else found.reason


def _manual_assignment(conn: Connection, case: Case, department_code: str, action: Action) -> Assignment:
    """A dispatcher's explicit choice: the department's post in the case's grid chain if it has one
    there, else its first post; the person named in ``data.person_name`` or the post's first."""
    row = conn.execute(sa.text(
        "SELECT d.code, d.name, p.code AS post_code, pe.name AS person_name, pe.contact "
        "FROM departments d JOIN posts p ON p.department_id = d.id "
        "LEFT JOIN post_persons pp ON pp.post_id = p.id LEFT JOIN persons pe ON pe.id = pp.person_id "
        "WHERE d.code = :d AND (CAST(:person AS text) IS NULL OR pe.name = :person) "
        "ORDER BY EXISTS (SELECT 1 FROM grid_posts gp WHERE gp.post_id = p.id AND gp.grid_code = :g) DESC, "
        "p.code, pe.name LIMIT 1"),
        {"d": department_code, "g": case.grid_code, "person": action.data.get("person_name")}).one_or_none()
    if row is None:
        raise ParameterError("department_code", f"department_code: no department {department_code!r} with a post"
                             + (f" held by {action.data['person_name']}" if action.data.get("person_name") else ""))
    return Assignment(row.code, row.name, row.post_code, row.person_name, row.contact,
                      f"dispatched by hand by {action.actor} to {row.code} {row.name}, post {row.post_code}")


def _return(case, cls, rule, action, now, calendar) -> Change:
    returned = list(case.returned_departments) + ([case.department_code] if case.department_code else [])
    return Change(dict(status="returned", returned_departments=returned), "returned",
                  data={"department_code": case.department_code})


def _handle(case, cls, rule, action, now, calendar) -> Change:
    return Change(dict(status="handled", handled_at=now), "handled")


#: who may verify at each escalation level: the case's own grid, then its district, then the city
_VERIFY_SCOPES = ("grid", "district", "city")


def verify_scope(case: Case) -> tuple[str, str | None]:
    """(level, code) of the units whose grid workers may verify ``case``: its grid; once escalated
    to the district platform, any grid worker of its district; at the city, any. A case placed in
    no grid (dispatched by hand) falls back to its street, then its district, then the city."""
    level = _VERIFY_SCOPES[min(case.escalation_level, 2)]
    if level == "grid" and case.grid_code is None:
        level = "street" if case.street_code else "district"
    if level == "street":
        return level, case.street_code
    if level == "district" and case.district_code is None:
        level = "city"
    return level, {"grid": case.grid_code, "district": case.district_code}.get(level)


_VERIFIERS_SQL = (
    "SELECT DISTINCT pe.name FROM grid_posts gp JOIN posts p ON p.id = gp.post_id "
    "JOIN departments d ON d.id = p.department_id JOIN post_persons pp ON pp.post_id = p.id "
    "JOIN persons pe ON pe.id = pp.person_id WHERE p.name ~ :post AND d.name ~ :platform AND {scope} ORDER BY 1")
_SCOPE_SQL = {"grid": "gp.grid_code = :code",
              "street": "gp.grid_code IN (SELECT grid_code FROM grids WHERE street_code = :code)",
              "district": "gp.grid_code IN (SELECT grid_code FROM grids WHERE district_code = :code)",
              "city": "true"}


def verifiers_by_scope(conn: Connection, cases: Sequence[Case]) -> dict[tuple[str, str | None], list[str]]:
    """For each verify scope of ``cases``: the persons holding a grid-worker post (网格监督员) of the
    grid platform there, by name. One statement for all grid scopes (the common case), one per other."""
    scopes = {verify_scope(c) for c in cases}
    out: dict[tuple[str, str | None], list[str]] = {s: [] for s in scopes}
    params = {"post": GRID_WORKER_POST.pattern, "platform": PLATFORM_DEPARTMENT.pattern}
    grids = sorted(code for level, code in scopes if level == "grid" and code)
    if grids:
        rows = conn.execute(sa.text(_VERIFIERS_SQL.replace("SELECT DISTINCT pe.name", "SELECT DISTINCT gp.grid_code, "
                                                           "pe.name").format(scope="gp.grid_code = ANY(:codes)")),
                            {**params, "codes": grids})
        for grid, name in sorted(rows):
            out[("grid", grid)].append(name)
    for level, code in scopes:
        if level != "grid":
            out[(level, code)] = list(conn.execute(sa.text(_VERIFIERS_SQL.format(scope=_SCOPE_SQL[level])),
                                                   {**params, "code": code}).scalars())
    return out


def verifiers(conn: Connection, case: Case) -> list[str]:
    """The persons who may verify ``case`` (核查), by name (see :func:`verify_scope`)."""
    return verifiers_by_scope(conn, [case])[verify_scope(case)]


def verifier_problem(case: Case, action: Action, allowed: dict[tuple[str, str | None], list[str]]) -> UserError | None:
    """The issue's rule: a handled case is verified by the grid's worker, not by anyone with the
    supervisor role — or, once the case is escalated, by a grid worker of the escalation level.
    None if ``action.actor`` may verify ``case``; else the error (403, or 409 when nobody may)."""
    level, code = verify_scope(case)
    names = allowed.get((level, code), [])
    where = f"{level} {code}" if code else "the city"
    if not names:
        return ConflictError(f"case {case.id}: no grid worker (网格监督员) holds a post in {where}, so nobody may "
                             "verify it yet; load the grid's responsibility chain, or escalate the case")
    if action.actor not in names:
        shown = ", ".join(names[:10]) + (f" … ({len(names)} in all)" if len(names) > 10 else "")
        return RoleError(f"case {case.id} is verified by a grid worker (网格监督员) of {where} ({shown}), "
                         f"not by {action.actor}")
    return None


def _verify(case, cls, rule, action, now, calendar) -> Change:
    passed = action.data.get("passed")
    if not isinstance(passed, bool):
        raise ParameterError("passed", "passed: verify needs data.passed true (结案) or false (返工)")
    if passed:
        return Change(dict(status="closed", closed_at=now), "closed")
    if not (action.note and action.note.strip()):
        raise ParameterError("note", "note: a failed verification needs a note saying what is wrong")
    return Change(dict(status="accepted", rework_count=case.rework_count + 1, handled_at=None), "accepted",
                  data={"rework": case.rework_count + 1})


def _request_extension(case, cls, rule, action, now, calendar) -> Change:
    hours = action.data.get("hours")
    if not isinstance(hours, int | float) or isinstance(hours, bool) or hours <= 0:
        raise ParameterError("hours", "hours: an extension request needs data.hours > 0")
    if case.extension_requested_hours is not None:
        raise ConflictError(f"case {case.id} already has an extension request pending")
    return Change(dict(extension_requested_hours=float(hours)), case.status)


def _decide_extension(case, cls, rule, action, now, calendar) -> Change:
    if case.extension_requested_hours is None:
        raise ConflictError(f"case {case.id} has no extension request to decide")
    if action.action == "refuse_extension":
        return Change(dict(extension_requested_hours=None), case.status)
    _, kind = cls.limit(case.urgency)
    due = calendar.add(case.due_at or now, case.extension_requested_hours, kind)
    return Change(dict(extension_requested_hours=None, extension_count=case.extension_count + 1, due_at=due,
                       overdue=due < now), case.status, data={"hours": case.extension_requested_hours, "due_at": due})


def _suspend(case, cls, rule, action, now, calendar) -> Change:
    _, kind = cls.limit(case.urgency)
    remaining = calendar.hours_between(now, case.due_at, kind) if case.due_at else None
    return Change(dict(status="suspended", suspended_status=case.status, remaining_hours=remaining), "suspended",
                  data={"remaining_hours": remaining})


def _resume(case, cls, rule, action, now, calendar) -> Change:
    # the clock stood still while suspended: the deadline moves by the time it was stopped
    _, kind = cls.limit(case.urgency)
    due = case.due_at
    if case.remaining_hours is not None:
        due = calendar.add(now, case.remaining_hours, kind) if case.remaining_hours > 0 else case.due_at
    target = case.suspended_status or "registered"
    return Change(dict(status=target, suspended_status=None, remaining_hours=None, due_at=due), target,
                  data={"due_at": due})


def merge_target(case: Case, action: Action) -> int:
    """The id of the case a merge of ``case`` keeps (``data.into``), checked."""
    into = action.data.get("into")
    if not isinstance(into, int) or isinstance(into, bool) or into == case.id:
        raise ParameterError("into", "into: merge needs data.into, the id of another case")
    return into


def plan_merge(case: Case, keep: Case, action: Action) -> Change:
    """The change a merge of ``case`` into ``keep`` makes (the kept case's log gets ``merged_from``)."""
    if keep.status in ("merged", "not_registered"):
        raise ConflictError(f"case {keep.id} is {keep.status}: merge into the case it leads to instead")
    if keep.class_code != case.class_code:
        raise ConflictError(f"case {keep.id} is of class {keep.class_code}, case {case.id} of {case.class_code}")
    return Change(dict(status="merged", merged_into=keep.id), "merged")


def _merge(conn, case, cls, rule, action, now, calendar) -> None:
    keep = get_case(conn, merge_target(case, action))
    _apply(conn, case, action, now, plan_merge(case, keep, action))
    write_event(conn, keep.id, now, action.actor, action.role, "merged_from", keep.status, keep.status,
                action.note, {"case_id": case.id}, district=keep.district)


#: actions whose change is computed without the database (``act`` and ``cases.bulk.act_many`` share them)
PLANNERS = {"register": _simple, "reject": _simple, "accept": _simple, "return": _return, "handle": _handle,
            "verify": _verify, "request_extension": _request_extension, "approve_extension": _decide_extension,
            "refuse_extension": _decide_extension, "suspend": _suspend, "resume": _resume, "comment": _simple}
#: actions that look things up (the responsibility chain, the case merged into)
_HANDLERS = {"dispatch": _dispatch, "merge": _merge}


def merge(conn: Connection, keep_id: int, duplicate_ids: list[int], actor: str, role: str = "platform",
          note: str | None = None, now: datetime | None = None) -> Case:
    """Merge duplicates into the first case: each duplicate becomes ``merged`` and links to it."""
    for dup in duplicate_ids:
        act(conn, dup, Action("merge", actor, role, note, {"into": keep_id}), now)
    return get_case(conn, keep_id)


@dataclass(frozen=True)
class TickReport:
    overdue: list[int]
    escalated: list[tuple[int, str]]


def tick(conn: Connection, now: datetime | None = None) -> TickReport:
    """Mark cases past their deadline overdue and escalate them: at the deadline from the street
    platform to the district, and when a whole further time limit has passed, to the city.

    Set-based (a megacity's tick finds thousands): the cases are locked and read in one statement,
    their log rows go in with one INSERT and their changes with one UPDATE, in the order of their
    deadlines — the rows and log the per-case rule below gives."""
    now = now or now_utc()
    calendar = load_calendar(conn)
    due = "status = ANY(:s) AND due_at < :now AND escalation_level < 2"
    params = {"s": list(CLOCK_STATUSES), "now": now}
    if on_citus(conn):
        # Citus locks rows only in a statement routed to one shard: one per district with cases due
        found = []
        for district in conn.execute(sa.text(f"SELECT DISTINCT district_code FROM cases WHERE {due} ORDER BY 1"),
                                     params).scalars().all():
            found += conn.execute(sa.text(f"SELECT due_at, id FROM cases WHERE district_code = :d AND {due} "
                                          "FOR UPDATE SKIP LOCKED"), {**params, "d": district}).all()
        ids = [case_id for _due_at, case_id in sorted(found)]
    else:
        ids = conn.execute(sa.text(f"SELECT id FROM cases WHERE {due} ORDER BY due_at, id FOR UPDATE SKIP LOCKED"),
                           params).scalars().all()
    if not ids:
        return TickReport([], [])
    cases = get_cases(conn, ids)
    classes: dict[str, CaseClass] = {}
    for code, cls in classes_for(conn, sorted({c.class_code for c in cases.values()})).items():
        if isinstance(cls, UserError):
            raise cls
        classes[code] = cls
    overdue, escalated = [], []
    events: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    stamp = now.isoformat()
    for case_id in ids:
        case = cases[case_id]
        level = case.escalation_level
        if level == 0:
            level = 1
        hours, kind = classes[case.class_code].limit(case.urgency)
        if level == 1 and case.due_at is not None and calendar.add(case.due_at, hours or 0, kind) <= now:
            level = 2
        if not case.overdue:
            overdue.append(case.id)
            events.append({"case_id": case.id, "district": case.district, "at": stamp, "actor": "tick",
                           "role": "system", "action": "overdue",
                           "from_status": case.status, "to_status": case.status,
                           "note": f"deadline {case.due_at.isoformat() if case.due_at else '-'} passed", "data": {}})
        if level != case.escalation_level:
            where = ("street", "district", "city")[level]
            escalated.append((case.id, where))
            events.append({"case_id": case.id, "district": case.district, "at": stamp, "actor": "tick",
                           "role": "system", "action": "escalate",
                           "from_status": case.status, "to_status": case.status,
                           "note": f"escalated to the {where} platform",
                           "data": {"from_level": case.escalation_level, "to_level": level}})
        if not case.overdue or level != case.escalation_level:
            changes.append({"id": case.id, "level": level})
    if events:
        conn.execute(sa.text(
            # in the list's order, so each case's overdue row comes before its escalate row
            "INSERT INTO case_events (case_id, district_code, at, actor, role, action, from_status, to_status, note, "
            "data) SELECT r.case_id, r.district, r.at, r.actor, r.role, r.action, r.from_status, r.to_status, r.note, "
            "r.data FROM json_array_elements(CAST(:rows AS json)) WITH ORDINALITY AS e(v, n), "
            "json_to_record(e.v) AS r(case_id bigint, district text, at timestamptz, actor text, role text, "
            "action text, from_status text, to_status text, note text, data jsonb) ORDER BY e.n"),
            {"rows": json.dumps(events, ensure_ascii=False, default=str)})
        cases_changed(conn)
    if changes:
        conn.execute(sa.text(
            "UPDATE cases SET overdue = true, escalation_level = v.level, version = version + 1 "
            "FROM json_to_recordset(CAST(:rows AS json)) AS v(id bigint, level int) WHERE cases.id = v.id"),
            {"rows": json.dumps(changes)})
    return TickReport(overdue, escalated)
