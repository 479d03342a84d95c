"""Scoring (set-based, one INSERT … SELECT): every address's months in a window are averaged, each
factor of the model is computed from the averages, and

* a factor whose attributes are all missing in the window is **not computed**: its weight leaves
  the score's denominator and lowers the confidence; the missing attributes are listed;
* score = weight of the factors that fire / weight of the factors computed (0 when none is);
* confidence = weight of the factors computed / total weight of the model;
* flagged = score ≥ threshold and confidence ≥ min_confidence.

A run records the model's text, version and SHA-256, so every score can be explained later with
the exact rules it was made with (:func:`explain`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import NotFoundError, ParameterError

from scenarios.group_rental.model import ATTRIBUTES, Model, parse_model


@dataclass(frozen=True)
class Run:
    id: int
    model_version: str
    month_from: date
    month_to: date
    addresses: int
    flagged: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "month_from": self.month_from.isoformat()[:7], "month_to": self.month_to.isoformat()[:7]}


def month_of(text: str, parameter: str) -> date:
    parts = (text or "").strip().split("-")
    try:
        if len(parts) != 2:
            raise ValueError
        return date(int(parts[0]), int(parts[1]), 1)
    except ValueError:
        raise ParameterError(parameter, f"{parameter}: {text!r} is not a month (YYYY-MM)") from None


def _scoring_sql(model: Model) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"threshold": model.threshold, "min_confidence": model.min_confidence,
                              "total": model.total_weight}
    values, fired_w, avail_w, fired, attrs_missing = [], [], [], [], []
    for i, f in enumerate(model.factors):
        params[f"w{i}"], params[f"t{i}"], params[f"n{i}"] = f.weight, f.above, f.name
        present = " AND ".join(f"{ATTRIBUTES[a]} IS NOT NULL" for a in f.spec.needs)
        values.append(f"CASE WHEN {present} THEN {f.spec.sql} END AS v{i}")
        fired_w.append(f"CASE WHEN v{i} > :t{i} THEN CAST(:w{i} AS float8) ELSE 0 END")
        avail_w.append(f"CASE WHEN v{i} IS NOT NULL THEN CAST(:w{i} AS float8) ELSE 0 END")
        fired.append(f"CASE WHEN v{i} > :t{i} THEN CAST(:n{i} AS text) END")
    needed = sorted({a for f in model.factors for a in f.spec.needs})
    for a in needed:
        attrs_missing.append(f"CASE WHEN {ATTRIBUTES[a]} IS NULL THEN '{a}' END")
    sql = f"""
        INSERT INTO rental_scores (run_id, address_id, months, water_m3, electricity_kwh, gas_m3,
                                   registered_population, deliveries, score, confidence, fired, missing, flagged)
        SELECT :run, address_id, months, w, e, g, r, d, score, confidence, fired, missing,
               score >= :threshold AND confidence >= :min_confidence - 1e-9
        FROM (
            SELECT address_id, months, w, e, g, r, d,
                   CASE WHEN avail > 0 THEN fired_w / avail ELSE 0 END AS score, avail / :total AS confidence,
                   fired, missing
            FROM (
                SELECT address_id, months, w, e, g, r, d,
                       {' + '.join(fired_w)} AS fired_w, {' + '.join(avail_w)} AS avail,
                       array_remove(ARRAY[{', '.join(fired)}], NULL) AS fired,
                       array_remove(ARRAY[{', '.join(attrs_missing)}]::text[], NULL) AS missing
                FROM (
                    SELECT address_id, months, w, e, g, r, d, {', '.join(values)}
                    FROM (
                        SELECT address_id, count(*) AS months, avg(water_m3::float8) AS w,
                               avg(electricity_kwh::float8) AS e, avg(gas_m3::float8) AS g,
                               avg(registered_population::float8) AS r, avg(deliveries::float8) AS d
                        FROM rental_observations WHERE month BETWEEN :month_from AND :month_to
                        GROUP BY address_id) AS averages) AS factor_values) AS weighed) AS scored"""
    return sql, params


def score(conn: Connection, model: Model, month_from: date | None = None, month_to: date | None = None) -> Run:
    """Score every address with observations in [month_from, month_to] (default: the latest three
    months loaded) as one run, inside the caller's transaction."""
    if month_to is None:
        month_to = conn.execute(sa.text("SELECT max(month) FROM rental_observations")).scalar()
        if month_to is None:
            raise ParameterError("to", "to: no utility data loaded yet (cim scenarios group-rental load FILE)")
    if month_from is None:
        month_from = conn.execute(sa.text("SELECT CAST(:t AS date) - interval '2 months'"), {"t": month_to}).scalar()
        month_from = month_from.date() if hasattr(month_from, "date") else month_from
    if month_from > month_to:
        raise ParameterError("from", "from: the first month is after the last")
    run_id = conn.execute(sa.text(
        "INSERT INTO rental_score_runs (model_version, model_sha256, model_text, month_from, month_to) "
        "VALUES (:v, :sha, :text, :f, :t) RETURNING id"),
        {"v": model.version, "sha": model.sha256, "text": model.text, "f": month_from, "t": month_to}).scalar_one()
    # a big window's aggregate would spill to disk with the default 4 MB of work memory
    conn.execute(sa.text("SET LOCAL work_mem = '256MB'"))
    sql, params = _scoring_sql(model)
    conn.execute(sa.text(sql), {**params, "run": run_id, "month_from": month_from, "month_to": month_to})
    counts = conn.execute(sa.text(
        "UPDATE rental_score_runs r SET addresses = s.n, flagged = s.f FROM (SELECT count(*) AS n, "
        "count(*) FILTER (WHERE flagged) AS f FROM rental_scores WHERE run_id = :run) s WHERE r.id = :run "
        "RETURNING s.n, s.f"), {"run": run_id}).one()
    return Run(run_id, model.version, month_from, month_to, counts.n, counts.f)


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _value_columns(model: Model) -> str:
    """The factors' values over a score row's averages: the same SQL as the scoring (one formula)."""
    return ", ".join(
        f"CASE WHEN {' AND '.join(f'{ATTRIBUTES[a]} IS NOT NULL' for a in f.spec.needs)} THEN {f.spec.sql} END "
        f"AS v{i}" for i, f in enumerate(model.factors))


def reasons(model: Model, row: Any) -> list[str]:
    """The score in words: each factor fired, not fired or not computed (which attributes are missing)."""
    averages = {a: getattr(row, a) for a in ATTRIBUTES}
    out = []
    for i, f in enumerate(model.factors):
        gone = [a for a in f.spec.needs if averages[a] is None]
        if gone:
            out.append(f"{f.name} not computed: missing {', '.join(gone)} (confidence −{f.weight / model.total_weight:.2f})")
            continue
        value = float(getattr(row, f"v{i}"))
        fired = f.name in row.fired
        out.append(f"{f.name} = {_fmt(value)} {f.spec.unit} {'>' if fired else '≤'} {_fmt(f.above)}"
                   f"{f' (+{f.weight:.2f})' if fired else ''}: {f.spec.meaning}")
    return out


def run_model(conn: Connection, run_id: int) -> Model:
    row = conn.execute(sa.text("SELECT model_text FROM rental_score_runs WHERE id = :id"), {"id": run_id}).one_or_none()
    if row is None:
        raise NotFoundError(f"scoring run {run_id} does not exist")
    return parse_model(row.model_text, f"model of run {run_id}")


def latest_run(conn: Connection) -> int:
    run_id = conn.execute(sa.text("SELECT max(id) FROM rental_score_runs")).scalar()
    if run_id is None:
        raise NotFoundError("no scoring run yet (cim scenarios group-rental score)")
    return int(run_id)


def explain(conn: Connection, run_id: int | None = None, flagged_only: bool = False,
            address_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Scores of a run (default the latest), highest first, each with its reasons."""
    run_id = run_id or latest_run(conn)
    model = run_model(conn, run_id)
    rows = conn.execute(sa.text(
        f"SELECT s.*, {_value_columns(model)} FROM (SELECT s.*, s.water_m3 AS w, s.electricity_kwh AS e, "
        "s.gas_m3 AS g, s.registered_population AS r, s.deliveries AS d, a.standard_address, a.room, "
        "a.address_feature_id, a.grid_code, a.street_code "
        "FROM rental_scores s JOIN rental_addresses a ON a.id = s.address_id WHERE s.run_id = :run "
        "AND (NOT :fo OR s.flagged) AND (CAST(:a AS integer) IS NULL OR s.address_id = :a) "
        "ORDER BY s.score DESC, s.confidence DESC, s.address_id LIMIT :limit) AS s "
        "ORDER BY s.score DESC, s.confidence DESC, s.address_id"),
        {"run": run_id, "fo": flagged_only, "a": address_id, "limit": limit}).all()
    return [{"run_id": run_id, "address_id": r.address_id, "address": r.standard_address, "room": r.room or None,
             "address_feature_id": r.address_feature_id, "grid_code": r.grid_code, "street_code": r.street_code,
             "months": r.months, "score": round(float(r.score), 4), "confidence": round(float(r.confidence), 4),
             "flagged": r.flagged, "verdict": verdict(model, r), "fired": list(r.fired), "missing": list(r.missing),
             "reasons": reasons(model, r)} for r in rows]


def suspects(conn: Connection, run_id: int | None = None, limit: int = 1000) -> dict[str, Any]:
    """A run's flagged addresses (default the latest run) as GeoJSON points in WGS84, with what
    :func:`explain` says of each (addresses only: the data hold no names); an address the gazetteer
    placed nowhere has a null geometry."""
    run_id = run_id or latest_run(conn)
    items = explain(conn, run_id, flagged_only=True, limit=limit)
    points = dict(conn.execute(sa.text(
        "SELECT id, ST_AsGeoJSON(ST_Transform(geom, 4326), 7) FROM rental_addresses "
        "WHERE id = ANY(:ids) AND geom IS NOT NULL"), {"ids": [i["address_id"] for i in items]}).all())
    return {"type": "FeatureCollection", "run_id": run_id, "features": [
        {"type": "Feature", "id": i["address_id"],
         "geometry": json.loads(points[i["address_id"]]) if i["address_id"] in points else None,
         "properties": i} for i in items]}


def verdict(model: Model, row: Any) -> str:
    """Why the address is (not) flagged, in one sentence."""
    score_ok, conf_ok = row.score >= model.threshold, row.confidence >= model.min_confidence - 1e-9
    parts = [f"score {row.score:.2f} {'≥' if score_ok else '<'} {model.threshold:g}",
             f"confidence {row.confidence:.2f} {'≥' if conf_ok else '<'} {model.min_confidence:g}"
             + (f" (missing {', '.join(row.missing)})" if row.missing else "")]
    return ("flagged: " if row.flagged else "not flagged: ") + " and ".join(parts)


__all__ = ["Run", "explain", "month_of", "reasons", "score", "suspects", "verdict"]
