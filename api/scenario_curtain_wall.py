"""``/scenarios/curtain-wall/…``: the curtain-wall risk scenario over HTTP. The work is in
:mod:`scenarios.curtain_wall`; these routes read requests and write answers.

* ``GET …/ranking`` — buildings by risk with score, confidence and reasons (``f=geojson``: footprints in
  WGS84 for the viewer's risk layer);
* ``GET …/overdue`` — inspections, sealant samplings and appraisals past due under 沪府令77号;
* ``GET …/precision`` — confirmed among inspected pushes (the seed's 648/904), per model version;
* ``GET …/model`` — the scoring model in force: version, factors, weights, bands, schedule;
* ``POST …/push`` (role ``loader``) — inspection cases for the top-risk buildings through the case loop;
* ``POST …/outcome`` (role ``loader``) — an inspection's outcome, confirmed or not.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request

from api import auth
from api.deps import get_state
from api.limits import MAX_DATETIME_CHARS, MAX_NAME_CHARS
from api.problems import bad_parameter
from cim.apikeys import ApiKey
from scenarios.curtain_wall.days import as_of_day
from scenarios.curtain_wall.model import Model, load_model
from scenarios.curtain_wall.push import precision, push_top, record_outcome
from scenarios.curtain_wall.scoring import RISK_CLASSES, rank_buildings
from scenarios.curtain_wall.service import overdue, ranking_features

PREFIX = "/scenarios/curtain-wall"
MAX_RANKING = 50_000
router = APIRouter(prefix=PREFIX, tags=["scenarios: curtain walls"])
AS_OF = Query(None, max_length=MAX_DATETIME_CHARS, description="Score as of this day (YYYY-MM-DD); default today.")


@lru_cache(maxsize=1)
def _model() -> Model:
    """The packaged scoring model, read and checked once per process."""
    return load_model()


@router.get("/ranking", summary="Buildings by risk of glass breakage, with score, confidence and reasons")
def get_ranking(request: Request, as_of: str | None = AS_OF, limit: int = Query(100, ge=1, le=MAX_RANKING),
                offset: int = Query(0, ge=0, le=MAX_RANKING),
                risk_class: str | None = Query(None, alias="class", max_length=MAX_NAME_CHARS,
                                               description="high | medium | low"),
                f: str = Query("json", max_length=MAX_NAME_CHARS, description="json | geojson")) -> Any:
    if risk_class is not None and risk_class not in RISK_CLASSES:
        raise bad_parameter("class", f"class: {risk_class!r} is not one of {', '.join(RISK_CLASSES)}")
    if f not in ("json", "geojson"):
        raise bad_parameter("f", f"f: {f!r} is not json or geojson")
    model, day = _model(), as_of_day(as_of)
    with get_state(request).engine.connect() as conn:
        ranking = rank_buildings(conn, model, day)
        rows = ranking.rows(limit, offset, risk_class)
        if f == "geojson":
            return ranking_features(conn, ranking, rows)
    return {"as_of": day.isoformat(), "model_version": model.version, "total": len(ranking.score),
            "counts": ranking.counts(), "offset": offset, "buildings": rows}


@router.get("/overdue", summary="Inspections, sealant samplings and appraisals past due (沪府令77号)")
def get_overdue(request: Request, as_of: str | None = AS_OF) -> Any:
    with get_state(request).engine.connect() as conn:
        return overdue(conn, _model(), as_of_day(as_of))


@router.get("/precision", summary="Confirmed among inspected pushes, overall and per model version")
def get_precision(request: Request) -> Any:
    with get_state(request).engine.connect() as conn:
        return precision(conn)


@router.get("/model", summary="The scoring model in force: version, factors, weights, bands, levels, schedule")
def get_model() -> Any:
    described = _model().describe()
    described.pop("source", None)  # a server path is no business of a client
    return described


@router.post("/push", summary="Open inspection cases for the top-risk buildings (role loader)")
def post_push(request: Request, body: dict[str, Any] = Body(..., examples=[{"top": 10, "min_score": 55}]),
              key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    unknown = set(body) - {"top", "min_score", "as_of"}
    if unknown:
        raise bad_parameter(sorted(unknown)[0], f"unknown field(s) {', '.join(sorted(unknown))}; "
                                                "fields: top, min_score, as_of")
    top, min_score = body.get("top", 10), body.get("min_score")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
        raise bad_parameter("top", f"top: a whole number from 1 to 1000, not {top!r}")
    if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))):
        raise bad_parameter("min_score", f"min_score: a number, not {min_score!r}")
    as_of = body.get("as_of")
    if as_of is not None and not isinstance(as_of, str):
        raise bad_parameter("as_of", f"as_of: a date (YYYY-MM-DD), not {as_of!r}")
    with get_state(request).engine.begin() as conn:
        return push_top(conn, _model(), as_of_day(as_of), top, min_score).as_dict()


@router.post("/outcome", summary="Record an inspection's outcome for a pushed case (role loader)")
def post_outcome(request: Request, body: dict[str, Any] = Body(..., examples=[
        {"case_id": 12, "confirmed": True, "note": "3 块玻璃自爆裂纹"}]),
        key: ApiKey = Depends(auth.require_role("loader"))) -> Any:
    unknown = set(body) - {"case_id", "building", "confirmed", "note", "by"}
    if unknown:
        raise bad_parameter(sorted(unknown)[0], f"unknown field(s) {', '.join(sorted(unknown))}; "
                                                "fields: case_id or building, confirmed, note, by")
    confirmed = body.get("confirmed")
    if not isinstance(confirmed, bool):
        raise bad_parameter("confirmed", f"confirmed: true or false, not {confirmed!r}")
    case_id, building = body.get("case_id"), body.get("building")
    if case_id is not None and (isinstance(case_id, bool) or not isinstance(case_id, int) or not 1 <= case_id < 2**63):
        raise bad_parameter("case_id", f"case_id: a case id, not {case_id!r}")
    for name in ("building", "note", "by"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME_CHARS * 8 or "\x00" in value):
            raise bad_parameter(name, f"{name}: text of at most {MAX_NAME_CHARS * 8} characters, without NUL")
    by = body.get("by") or key.name or f"api key {key.id}"
    with get_state(request).engine.begin() as conn:
        return record_outcome(conn, confirmed, by, case_id=case_id, building=building, note=body.get("note"))


def install(app: FastAPI) -> None:
    app.include_router(router)
