"""The verification flow (核查流程) as case classes and transitions of the case loop.

::

    clue spot ─► E9601 线索核查 (street 拆违办) ─handle finding=not_illegal─► E9602 区级复核 (district 拆违办)
                       │                                                       │ finding=not_illegal: ends
                       └─ finding=under_construction | existing ◀──────────────┘ (the district finds it illegal)
                              │ compared with the illegal-structures layer: linked if known, added if not
                              ├─ under_construction ─► E9603 在建快速处置 (fast procedure, 24 h around the clock)
                              └─ existing ──────────► E9604 存量一般处置 (normal procedure)
    E9603/E9604 handle finding=demolished: the structure is marked demolished (rectified: it stays)
    property certificate for a structure ─► E9605 产证复核 (district) ─ finding=legal: legalised │ illegal: as before

Every step is an ordinary action of the case loop (accept, handle, verify …); the branching is a
hook on ``handle`` of these classes (:func:`cases.lifecycle.on_action`): the department's finding
is ``data.finding`` of its handle action, checked there (a handle without a valid finding is
refused and changes nothing), and the next case opens in the same transaction.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.intake import CaseReport, intake
from cases.lifecycle import Action, now_utc, on_action
from cases.model import Case, write_event
from cim.bootstrap import stored_settings
from cim.errors import ConflictError, NotFoundError, ParameterError

from scenarios.illegal_building import structures
from scenarios.illegal_building.catalogue import (CERTIFICATE_CLASS, FAST_CLASS, NORMAL_CLASS, RECHECK_CLASS,
                                                  VERIFY_CLASS, ensure_catalogue)

FINDINGS: dict[str, tuple[str, ...]] = {
    VERIFY_CLASS: ("not_illegal", "under_construction", "existing"),
    RECHECK_CLASS: ("not_illegal", "under_construction", "existing"),
    FAST_CLASS: ("demolished", "rectified"),
    NORMAL_CLASS: ("demolished", "rectified"),
    CERTIFICATE_CLASS: ("legal", "illegal"),
}
#: the procedure each confirmed stage goes to
PROCEDURE = {"under_construction": FAST_CLASS, "existing": NORMAL_CLASS}


def _follow_up(conn: Connection, case: Case, class_code: str, now: datetime, description: str,
               **attributes: Any) -> int:
    """Open the next case of the flow at the same spot; returns its id."""
    srid = stored_settings(conn).srid  # type: ignore[union-attr]
    attrs = {"scenario": "illegal_building", "follows": case.id, **{k: v for k, v in case.attributes.items()
                                                                     if k in ("clue_id", "structure_code")},
             **attributes}
    result = intake(conn, CaseReport(
        channel="other", class_code=class_code, description=description, address_text=case.address_text,
        x=case.x, y=case.y, crs=f"EPSG:{srid}", external_id=f"illegal-building-{class_code}-after-{case.id}",
        reported_at=now, attributes=attrs), now=now)
    write_event(conn, case.id, now, "machine", "system", "follow_up", case.status, case.status,
                f"next step: case {result.case.id} ({class_code})", {"case_id": result.case.id})
    return result.case.id


def _confirmed(conn: Connection, case: Case, finding: str, now: datetime) -> None:
    clue_id = case.attributes.get("clue_id")
    if clue_id is not None:
        geom = structures.spot_geometry(conn, int(clue_id))
    else:
        geom = bytes(conn.execute(sa.text("SELECT ST_AsBinary(ST_Force2D(geom)) FROM cases WHERE id = :id"),
                                  {"id": case.id}).scalar_one())
    found = structures.compare(conn, geom, case.id, finding, now)
    write_event(conn, case.id, now, "machine", "system", "compare_layer", case.status, case.status,
                f"{'linked to known' if found.linked else 'added to the layer as'} structure {found.structure_code}",
                found.to_dict())
    _follow_up(conn, case, PROCEDURE[finding], now,
               f"{'在建' if finding == 'under_construction' else '存量'}违法建筑 {found.structure_code}",
               structure_code=found.structure_code, finding=finding, linked=found.linked)


def on_handle(conn: Connection, case: Case, action: Action, now: datetime) -> None:
    """The hook: the finding of a handle decides the next step."""
    allowed = FINDINGS[case.class_code]
    finding = action.data.get("finding")
    if finding not in allowed:
        raise ParameterError("finding", f"finding: a handle of a {case.class_code} case needs data.finding, "
                                        f"one of {', '.join(allowed)}; got {finding!r}")
    code = case.attributes.get("structure_code")
    if case.class_code in (VERIFY_CLASS, RECHECK_CLASS):
        if finding != "not_illegal":
            _confirmed(conn, case, finding, now)
        elif case.class_code == VERIFY_CLASS:
            _follow_up(conn, case, RECHECK_CLASS, now, "街道核查认定不违法，区级复核", street_finding=finding)
    elif case.class_code in (FAST_CLASS, NORMAL_CLASS):
        if finding == "demolished" and code:
            structures.set_status(conn, code, "demolished", case.id, now)
    elif case.class_code == CERTIFICATE_CLASS and code:
        previous = conn.execute(sa.text("SELECT status_before_recheck FROM ib_structures WHERE code = :c"),
                                {"c": code}).scalar()
        structures.set_status(conn, code, "legalised" if finding == "legal" else (previous or "existing"),
                              case.id, now)


def install_hooks() -> None:
    on_action(FINDINGS, ("handle",), on_handle)


def certificate(conn: Connection, structure_code: str, certificate_no: str, now: datetime | None = None) -> int:
    """A structure of the layer got a property certificate (产权证): it is re-checked by the district
    (E9605); returns the re-check case's id."""
    ensure_catalogue(conn)
    now = now or now_utc()
    if not certificate_no.strip():
        raise ParameterError("certificate_no", "certificate_no: empty")
    row = conn.execute(sa.text(
        "SELECT status, ST_X(ST_PointOnSurface(geom)) AS x, ST_Y(ST_PointOnSurface(geom)) AS y, case_ids "
        "FROM ib_structures WHERE code = :c FOR UPDATE"), {"c": structure_code}).one_or_none()
    if row is None:
        raise NotFoundError(f"no illegal structure {structure_code!r} in the layer")
    if row.status in ("rechecking", "demolished", "legalised"):
        raise ConflictError(f"structure {structure_code} is {row.status}: no re-check")
    conn.execute(sa.text("UPDATE ib_structures SET status = 'rechecking', status_before_recheck = status, "
                         "certificate_no = :n, updated_at = :now WHERE code = :c"),
                 {"n": certificate_no.strip(), "now": now, "c": structure_code})
    srid = stored_settings(conn).srid  # type: ignore[union-attr]
    result = intake(conn, CaseReport(
        channel="other", class_code=CERTIFICATE_CLASS, description=f"违法建筑 {structure_code} 取得产权证 {certificate_no}",
        x=row.x, y=row.y, crs=f"EPSG:{srid}", external_id=f"illegal-building-certificate-{structure_code}-{certificate_no}",
        reported_at=now, attributes={"scenario": "illegal_building", "structure_code": structure_code,
                                     "certificate_no": certificate_no}), now=now)
    return result.case.id
