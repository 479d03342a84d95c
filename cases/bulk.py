"""Set-based lifecycle actions: many cases' accept, handle, verify, return, extension … in a few
statements, not ~10 each — for a day of a megacity's cases (the simulated Shanghai day, a
department's app syncing a shift's work).

The rules are :mod:`cases.lifecycle`'s, not a copy: each action is checked by its ``_check``
(status, role, version, note), the verifier by its grid-worker rule and the change computed by the
same planner :func:`cases.lifecycle.act` applies; only the writing differs — the cases' rows are
locked and read in one statement, updated in one, and the log rows go in with one COPY. A case
named twice sees its first action's result. An action the rules refuse is that item's error; the
others go ahead. All inside the caller's transaction.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import NotFoundError, ParameterError, UserError
from cim.grid import responsibility_for

from cases.batch import _EVENT_COLUMNS, _copy
from cases.calendar import WorkingCalendar, load_calendar
from cases.catalogue import CaseClass, classes_for, department_kinds
from cases.dispatch import Assignment
from cases.lifecycle import (PLANNERS, Action, _check, _manual_assignment, has_hooks, log_row, machine_choice,
                             merge_target, plan_dispatch, plan_merge, run_hooks, verifier_problem, verifiers_by_scope)
from cases.model import Case, cases_changed, get_cases

#: the columns an action's change may set (and so the set-based UPDATE writes)
_MUTABLE = ("status", "registered_at", "handled_at", "closed_at", "rework_count", "returned_departments",
            "extension_requested_hours", "extension_count", "due_at", "overdue", "suspended_status",
            "remaining_hours", "merged_into", "version", "department_code", "department_name", "post_code",
            "person_name", "person_contact", "dispatch_reason", "manual_reason", "dispatched_at")
_TYPES = {"status": "text", "registered_at": "timestamptz", "handled_at": "timestamptz", "closed_at": "timestamptz",
          "rework_count": "int", "returned_departments": "jsonb", "extension_requested_hours": "float8",
          "extension_count": "int", "due_at": "timestamptz", "overdue": "boolean", "suspended_status": "text",
          "remaining_hours": "float8", "merged_into": "bigint", "version": "int", "department_code": "text",
          "department_name": "text", "post_code": "text", "person_name": "text", "person_contact": "text",
          "dispatch_reason": "text", "manual_reason": "text", "dispatched_at": "timestamptz"}


@dataclass(frozen=True)
class BulkItem:
    """One action on one case."""

    case_id: int
    action: Action
    at: datetime | None = None  # default: the call's ``now``


@dataclass
class BulkResult:
    cases: dict[int, Case] = field(default_factory=dict)  # each touched case after its actions
    errors: dict[int, UserError] = field(default_factory=dict)  # item number → why the rules refused it


def act_many(conn: Connection, items: Sequence[BulkItem], now: datetime,
             calendar: WorkingCalendar | None = None) -> BulkResult:
    """Carry out many actions at once (see the module's docstring); the actions must be ones with
    a planner (:data:`cases.lifecycle.PLANNERS`), merge or dispatch (by machine: the chains of all
    the cases' grids in one statement; to a department named in ``data``: its post looked up per case)."""
    out = BulkResult()
    if not items:
        return out
    for item in items:
        if item.action.action not in PLANNERS and item.action.action not in ("merge", "dispatch"):
            raise ParameterError("action", f"action: {item.action.action} cannot be taken in bulk; valid: "
                                           f"{', '.join(PLANNERS)}, merge, dispatch")
    calendar = calendar or load_calendar(conn)
    ids = sorted({item.case_id for item in items})
    kept = {i.action.data.get("into") for i in items if i.action.action == "merge"}
    # the cases merged into are read (and locked, in the same id order) with the rest
    cases = get_cases(conn, sorted(set(ids) | {k for k in kept if isinstance(k, int) and not isinstance(k, bool)}),
                      lock=True)
    classes: dict[str, CaseClass] = {}
    for code, cls in classes_for(conn, sorted({c.class_code for c in cases.values()})).items():
        if isinstance(cls, UserError):
            raise cls
        classes[code] = cls
    verifying = [cases[i.case_id] for i in items if i.action.action == "verify" and i.case_id in cases]
    allowed = verifiers_by_scope(conn, verifying)
    by_machine = [cases[i.case_id] for i in items if i.action.action == "dispatch" and i.case_id in cases
                  and not i.action.data.get("department_code")]
    grids = sorted({c.grid_code for c in by_machine if c.grid_code is not None})
    chains = responsibility_for(conn, grids) if grids else {}
    kinds = department_kinds(conn) if by_machine else {}
    before = dict(cases)
    events: list[list[Any]] = []
    hooked: list[tuple[int, BulkItem]] = []  # items whose class has hooks (a scenario's flow), run after the write
    for n, item in enumerate(items):
        case = cases.get(item.case_id)
        at = item.at or now
        try:
            if case is None:
                raise ParameterError("case", f"case {item.case_id} does not exist")
            rule = _check(case, item.action)
            if item.action.action == "verify":
                problem = verifier_problem(case, item.action, allowed)
                if problem is not None:
                    raise problem
            keep = None
            if item.action.action == "dispatch":  # as lifecycle's _dispatch
                cls = classes[case.class_code]
                dept = item.action.data.get("department_code")
                found = (_manual_assignment(conn, case, str(dept), item.action) if dept else
                         machine_choice(case, cls, chains, kinds))
                if not isinstance(found, Assignment):  # the manual queue, with the reason
                    events.append([case.id, at, item.action.actor, item.action.role, "to_manual_queue", case.status,
                                   case.status, found, {}, case.district])
                    if case.manual_reason != found:
                        cases[case.id] = dataclasses.replace(case, manual_reason=found, version=case.version + 1)
                    if has_hooks(case.class_code, "dispatch"):
                        hooked.append((n, item))
                    continue
                change = plan_dispatch(case, cls, found, item.action, at, calendar)
            elif item.action.action == "merge":
                into = merge_target(case, item.action)
                keep = cases.get(into)
                if keep is None:
                    raise NotFoundError(f"case {into} does not exist")
                change = plan_merge(case, keep, item.action)
            else:
                change = PLANNERS[item.action.action](case, classes[case.class_code], rule, item.action, at,
                                                      calendar)
        except UserError as exc:
            out.errors[n] = exc
            continue
        frm, to, note, data = log_row(case, item.action, change)
        events.append([case.id, at, item.action.actor, item.action.role, item.action.action, frm, to, note, data,
                       case.district])
        if keep is not None:  # as lifecycle's merge: a log row on the case kept, which does not change
            events.append([keep.id, at, item.action.actor, item.action.role, "merged_from", keep.status,
                           keep.status, item.action.note, {"case_id": case.id}, keep.district])
        cases[case.id] = dataclasses.replace(case, **change.values, version=case.version + 1)
        if has_hooks(case.class_code, item.action.action):
            hooked.append((n, item))
    changed = [c for c in cases.values() if c is not before[c.id]]
    if changed:
        _write(conn, changed)
    if events:  # a dispatch to the manual queue may log without changing the case
        _copy(conn, "case_events", _EVENT_COLUMNS, events)
        cases_changed(conn)
    for n, item in hooked:  # as act does: after the action, in the same transaction, with the case after it
        run_hooks(conn, get_cases(conn, [item.case_id])[item.case_id], item.action, item.at or now)
    out.cases = {i: cases[i] for i in ids if i in cases}
    return out


def _write(conn: Connection, changed: list[Case]) -> None:
    """One UPDATE of every changed case's mutable columns to their new values."""
    rows = []
    for case in changed:
        row: dict[str, Any] = {"id": case.id}
        for col in _MUTABLE:
            value = getattr(case, col)
            row[col] = value.isoformat() if isinstance(value, datetime) else value
        rows.append(row)
    sets = ", ".join(
        f"{c} = ARRAY(SELECT jsonb_array_elements_text(v.{c}))" if _TYPES[c] == "jsonb" else f"{c} = v.{c}"
        for c in _MUTABLE)
    cols = ", ".join(f"{c} {_TYPES[c]}" for c in _MUTABLE)
    conn.execute(sa.text(f"UPDATE cases SET {sets} FROM json_to_recordset(CAST(:rows AS json)) "
                         f"AS v(id bigint, {cols}) WHERE cases.id = v.id"),
                 {"rows": json.dumps(rows, ensure_ascii=False, default=str)})
