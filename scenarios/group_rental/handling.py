"""From flagged addresses to cases at the street's 平安办, and the loop there, all through the case
loop's own actions (no new transitions are needed):

* :func:`push` — each flagged address of a run without an open case opens a case of class E9501
  at its door, registered and dispatched by the case loop to the 平安办 of the address's grid;
* 登记 — the 平安办 accepts the case (``accept``);
* :func:`visit` — the door visit (上门核查): a group rental found is logged and rectification is
  ordered; none found is the handling (``handle`` with ``finding=not_group_rental``);
* :func:`rectified` — the 平安办 reports the rectification done (``handle``, ``finding=rectified``);
* :func:`reverify` — the re-verification (复核): passed closes the case; not rectified sends it
  back to handling (``verify`` failed: 返工, counted), again until it is (督办).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.intake import CaseReport, intake
from cases.lifecycle import Action, act, now_utc
from cases.model import Case
from cim.bootstrap import stored_settings
from cim.errors import ParameterError

from scenarios.group_rental.catalogue import RENTAL_CLASS, ensure_catalogue
from scenarios.group_rental.score import explain, latest_run

VISIT_FINDINGS = ("group_rental", "not_group_rental")


def push(conn: Connection, run_id: int | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """Open a case for every flagged address of the run that has no open case yet."""
    ensure_catalogue(conn)
    run_id = run_id or latest_run(conn)
    now = now or now_utc()
    srid = stored_settings(conn).srid  # type: ignore[union-attr]
    waiting = conn.execute(sa.text(
        "SELECT s.address_id FROM rental_scores s WHERE s.run_id = :run AND s.flagged AND NOT EXISTS ("
        "SELECT 1 FROM rental_cases rc JOIN cases c ON c.id = rc.case_id WHERE rc.address_id = s.address_id "
        "AND c.status NOT IN ('closed', 'not_registered', 'merged')) ORDER BY s.score DESC, s.address_id"),
        {"run": run_id}).scalars().all()
    out = []
    for address_id in waiting:
        scored = explain(conn, run_id, address_id=address_id)[0]
        point = conn.execute(sa.text("SELECT ST_X(geom) AS x, ST_Y(geom) AS y FROM rental_addresses WHERE id = :a"),
                             {"a": address_id}).one()
        where = scored["address"]
        result = intake(conn, CaseReport(
            channel="other", class_code=RENTAL_CLASS, address_text=where,
            description=f"疑似群租 (score {scored['score']:.2f}, confidence {scored['confidence']:.2f}): "
                        + "; ".join(r for r in scored["reasons"] if "(+" in r),
            x=point.x, y=point.y, crs=f"EPSG:{srid}", external_id=f"group-rental-run{run_id}-address{address_id}",
            reported_at=now, attributes={"scenario": "group_rental", "run_id": run_id, "address_id": address_id,
                                         "room": scored["room"], "score": scored["score"],
                                         "confidence": scored["confidence"], "reasons": scored["reasons"]}), now=now)
        conn.execute(sa.text("INSERT INTO rental_cases (address_id, case_id, run_id) VALUES (:a, :c, :r) "
                             "ON CONFLICT DO NOTHING"), {"a": address_id, "c": result.case.id, "r": run_id})
        c = result.case
        out.append({"address_id": address_id, "address": where, "case_id": c.id, "status": c.status,
                    "grid_code": c.grid_code, "department_code": c.department_code,
                    "department_name": c.department_name, "manual_reason": c.manual_reason})
    return out


def _rental_case(conn: Connection, case_id: int) -> None:
    code = conn.execute(sa.text("SELECT class_code FROM cases WHERE id = :id"), {"id": case_id}).scalar()
    if code != RENTAL_CLASS:
        raise ParameterError("case", f"case: {case_id} is not a group-rental case ({RENTAL_CLASS})")


def register_case(conn: Connection, case_id: int, actor: str, now: datetime | None = None) -> Case:
    """登记: the 平安办 takes the case on."""
    _rental_case(conn, case_id)
    return act(conn, case_id, Action("accept", actor, "department", "平安办登记"), now)


def visit(conn: Connection, case_id: int, actor: str, finding: str, note: str,
          now: datetime | None = None) -> Case:
    """The door visit and what it found."""
    _rental_case(conn, case_id)
    if finding not in VISIT_FINDINGS:
        raise ParameterError("finding", f"finding: one of {', '.join(VISIT_FINDINGS)}, got {finding!r}")
    if not note.strip():
        raise ParameterError("note", "note: say what the door visit found")
    if finding == "not_group_rental":
        return act(conn, case_id, Action("handle", actor, "department", f"上门核查：{note}",
                                         {"finding": finding, "door_visit": True}), now)
    return act(conn, case_id, Action("comment", actor, "department", f"上门核查：{note}；责令整改",
                                     {"finding": finding, "door_visit": True}), now)


def rectified(conn: Connection, case_id: int, actor: str, note: str, now: datetime | None = None) -> Case:
    """The 平安办 reports the rectification done."""
    _rental_case(conn, case_id)
    return act(conn, case_id, Action("handle", actor, "department", note, {"finding": "rectified"}), now)


def reverify(conn: Connection, case_id: int, actor: str, passed: bool, note: str | None = None,
             now: datetime | None = None) -> Case:
    """复核: passed closes the case; not rectified goes back to handling (督办)."""
    _rental_case(conn, case_id)
    return act(conn, case_id, Action("verify", actor, "supervisor", note if passed else f"督办：{note or ''}".rstrip("："),
                                     {"passed": passed}), now)
