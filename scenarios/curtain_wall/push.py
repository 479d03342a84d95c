"""From a suspected risk to an inspection case and back: the top-ranked buildings are pushed to the case
loop (``cases.intake``: located at a point on the building's footprint, so the case lands in the
building's grid and is dispatched by the grid's responsibility chain — for 幕墙 classes its 房屋管理
department), the inspection's outcome (confirmed or not) is recorded against the push, and the model's
precision is counted per model version, as the seed counts its 648 confirmed of 904 pushed.

A building whose earlier push still waits for its outcome is not pushed again (a partial unique index
holds that for concurrent pushes too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.catalogue import CaseClass, class_by_code
from cases.intake import CaseReport, intake
from cases.lifecycle import Action, act, now_utc
from cim.errors import ConflictError, NotFoundError, ParameterError, UserError

from scenarios.curtain_wall.model import Model
from scenarios.curtain_wall.scoring import Ranking, rank_buildings

#: the case loop's channel for pushes: a model's suspicion is none of the reporting channels
CHANNEL = "other"
OUTCOMES = ("confirmed", "not_confirmed")


@dataclass(frozen=True)
class PushReport:
    as_of: date
    model_version: str
    case_class: str
    min_score: float
    pushed: list[dict[str, Any]]
    pending_skipped: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"as_of": self.as_of.isoformat(), "model_version": self.model_version, "case_class": self.case_class,
                "min_score": self.min_score, "count": len(self.pushed), "pushed": self.pushed,
                "pending_skipped": self.pending_skipped}


def push_class(conn: Connection, model: Model) -> CaseClass:
    """The first of the model's push classes the catalogue has (an inspection class before 幕墙玻璃破损)."""
    for name in model.push_classes:
        try:
            return class_by_code(conn, name)
        except ParameterError:
            continue
    raise UserError(f"{model.source}: none of the push case classes {', '.join(model.push_classes)} is in the "
                    "case catalogue ('cim cases classes list')")


def _description(item: dict[str, Any]) -> str:
    top = [r for r in item["reasons"] if not r["missing"] and r["contribution"] > 0][:4]
    why = "; ".join(f"{r['factor']} {r['value']} +{r['contribution']:g}" for r in top)
    return (f"幕墙安全隐患排查 curtain-wall inspection: {item['building']} {item['name'] or ''} risk {item['score']:g} "
            f"({item['risk_class']}, confidence {item['confidence']:.0%}, model {item['model_version']}): {why}")


def push_top(conn: Connection, model: Model, as_of: date, top: int, min_score: float | None = None,
             now: datetime | None = None, ranking: Ranking | None = None) -> PushReport:
    """Open inspection cases for the ``top`` highest-risk buildings scoring at least ``min_score`` (the
    model's ``high`` threshold by default), inside the caller's transaction."""
    if top < 1:
        raise ParameterError("top", f"top: push at least 1 building, not {top}")
    threshold = model.high if min_score is None else float(min_score)
    now = now or now_utc()
    cls = push_class(conn, model)
    ranking = ranking or rank_buildings(conn, model, as_of)
    pending = dict(conn.execute(sa.text(
        "SELECT building_source_id, case_id FROM curtain_wall_pushes WHERE outcome IS NULL")).all())
    pushed: list[dict[str, Any]] = []
    skipped: list[str] = []
    for i in ranking.order:
        i = int(i)
        if len(pushed) >= top or ranking.score[i] < threshold:
            break
        building = ranking.frame.at[i, "building"]
        if building in pending:
            skipped.append(building)
            continue
        if not ranking.frame.at[i, "building_current"]:
            continue
        item = ranking.row(i, len(pushed) + 1)
        push_id = conn.execute(sa.text(
            "INSERT INTO curtain_wall_pushes (building_source_id, pushed_at, model_version, score, confidence, "
            "reasons) VALUES (:b, :at, :v, :s, :c, CAST(:r AS jsonb)) "
            "ON CONFLICT (building_source_id) WHERE outcome IS NULL DO NOTHING RETURNING id"),
            {"b": building, "at": now, "v": model.version, "s": item["score"], "c": item["confidence"],
             "r": json.dumps(item["reasons"], ensure_ascii=False)}).scalar()
        if push_id is None:  # pushed meanwhile by another session
            skipped.append(building)
            continue
        x, y, srid, address = conn.execute(sa.text(
            "SELECT ST_X(p), ST_Y(p), ST_SRID(p), a.standard_address FROM (SELECT ST_PointOnSurface(ST_Force2D(geom)) "
            "AS p, address_feature_id FROM buildings WHERE source_id = :b AND valid_to IS NULL) b "
            "LEFT JOIN addresses a ON a.feature_id = b.address_feature_id AND a.valid_to IS NULL"),
            {"b": building}).one()
        result = intake(conn, CaseReport(
            channel=CHANNEL, class_code=cls.code, description=_description(item), address_text=address,
            x=x, y=y, z=0.0, crs=f"EPSG:{srid}", external_id=f"curtain-wall-push-{push_id}", reported_at=now,
            attributes={"scenario": "curtain-wall", "push_id": push_id, "building": building, "score": item["score"],
                        "model_version": model.version}), now=now)
        case = result.case
        conn.execute(sa.text("UPDATE curtain_wall_pushes SET case_id = :c WHERE id = :id"), {"c": case.id, "id": push_id})
        pushed.append({"push_id": push_id, "building": building, "name": item["name"], "score": item["score"],
                       "confidence": item["confidence"], "risk_class": item["risk_class"], "case_id": case.id,
                       "case_status": case.status, "grid_code": case.grid_code, "street_code": case.street_code,
                       "department_code": case.department_code, "department_name": case.department_name,
                       "person_name": case.person_name, "manual_reason": case.manual_reason,
                       "reasons": item["reasons"]})
    return PushReport(as_of, model.version, f"{cls.code} {cls.name}", threshold, pushed, skipped)


PUSH_COLUMNS = ("id, building_source_id AS building, case_id, pushed_at, model_version, score, confidence, outcome, "
                "outcome_at, outcome_by, outcome_note")


def _push(conn: Connection, where: str, params: dict[str, Any], lock: bool = True) -> dict[str, Any] | None:
    row = conn.execute(sa.text(f"SELECT {PUSH_COLUMNS} FROM curtain_wall_pushes WHERE {where} ORDER BY id DESC "
                               f"LIMIT 1{' FOR UPDATE' if lock else ''}"), params).mappings().first()
    return dict(row) if row else None


def record_outcome(conn: Connection, confirmed: bool, by: str, case_id: int | None = None,
                   building: str | None = None, note: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Record an inspection's outcome on a push, found by its case or by the building's pending push; the
    case's log gets it as a comment. The same outcome twice is a no-op; a different one is a conflict."""
    if not by or not by.strip():
        raise ParameterError("by", "by: who inspected must be named")
    if (case_id is None) == (building is None):
        raise ParameterError("case_id", "case_id, building: name the pushed case or the building, one of them")
    now = now or now_utc()
    if case_id is not None:
        push = _push(conn, "case_id = :c", {"c": case_id})
        if push is None:
            raise NotFoundError(f"case {case_id} was not opened by a curtain-wall push")
    else:
        push = _push(conn, "building_source_id = :b AND outcome IS NULL", {"b": building})
        if push is None:
            raise NotFoundError(f"building {building!r} has no push waiting for its outcome")
    outcome = OUTCOMES[0] if confirmed else OUTCOMES[1]
    if push["outcome"] is not None:
        if push["outcome"] != outcome:
            raise ConflictError(f"push {push['id']} (case {push['case_id']}) already has outcome {push['outcome']} "
                                f"({push['outcome_at'].isoformat()}, {push['outcome_by']})")
        return {**push, "unchanged": True}
    conn.execute(sa.text("UPDATE curtain_wall_pushes SET outcome = :o, outcome_at = :at, outcome_by = :by, "
                         "outcome_note = :n WHERE id = :id"),
                 {"o": outcome, "at": now, "by": by.strip(), "n": note, "id": push["id"]})
    if push["case_id"] is not None:
        words = "隐患属实 confirmed" if confirmed else "未发现隐患 not confirmed"
        act(conn, push["case_id"], Action("comment", by.strip(), "supervisor",
                                          f"幕墙检查结果 inspection outcome: {words}" + (f" — {note}" if note else "")), now)
    return {**_push(conn, "id = :id", {"id": push["id"]}, lock=False), "unchanged": False}


def precision(conn: Connection) -> dict[str, Any]:
    """Confirmed among inspected pushes, overall and per model version (pending ones counted apart)."""
    rows = conn.execute(sa.text(
        "SELECT model_version, count(*) AS pushed, count(*) FILTER (WHERE outcome = 'confirmed') AS confirmed, "
        "count(*) FILTER (WHERE outcome = 'not_confirmed') AS not_confirmed, "
        "count(*) FILTER (WHERE outcome IS NULL) AS pending, min(pushed_at) AS first_push, max(pushed_at) AS last_push "
        "FROM curtain_wall_pushes GROUP BY model_version ORDER BY min(pushed_at)")).mappings().all()

    def summary(pushed: int, confirmed: int, not_confirmed: int, pending: int) -> dict[str, Any]:
        inspected = confirmed + not_confirmed
        share = confirmed / inspected if inspected else None
        text = (f"{confirmed}/{inspected} confirmed on inspection ({share:.1%})" if inspected
                else "no outcome recorded yet") + (f"; {pending} of {pushed} pushed await inspection" if pending else "")
        return {"pushed": pushed, "inspected": inspected, "confirmed": confirmed, "not_confirmed": not_confirmed,
                "pending": pending, "precision": None if share is None else round(share, 4), "summary": text}

    per = [{"model_version": r["model_version"], **summary(r["pushed"], r["confirmed"], r["not_confirmed"], r["pending"])}
           for r in rows]
    total = summary(*(sum(r[k] for r in rows) for k in ("pushed", "confirmed", "not_confirmed", "pending")))
    return {**total, "by_model_version": per}
