"""``/cases``: the city-management case loop over HTTP, a thin adapter over :mod:`cases`.

- ``POST /cases`` — a report (JSON, or multipart/form-data with ``photos``) → the located,
  registered, machine-dispatched case (201; 200 with the same case when its external id is known).
- ``GET /cases`` — filtered, paged list (reporter contact masked); ``GET /cases/{id}`` with its log
  (contacts masked too, unless the caller's role needs them: the read is then audited).
- ``POST /cases/{id}/actions`` — one lifecycle action as a case role.
- ``GET /cases/stats`` — the evaluation indicators (综合评价), JSON or CSV.

Who may do what. Per-user jurisdiction is a later issue; today the API key's role bounds the case
role a caller may act in (:data:`KEY_ROLE_FOR_CASE_ROLE`): any valid key (``reader``) may report a
case and comment as a ``reporter``; a ``loader`` key is a field key, for the handling department
(``department``) and the grid's supervisor (``supervisor``); an ``admin`` key is the platform's
(``platform``: 立案, 派遣, extensions, merge) and the machine's (``system``). Whether the case role
may take the action at all is the core's rule (a wrong role is its ``RoleError``, 403).

Errors are the core's (``cim.errors`` and subclasses), mapped once by :mod:`api.problems`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import Histogram
from sqlalchemy.engine import Connection, Engine
from starlette.concurrency import run_in_threadpool

from api import auth
from api.deps import get_state
from api.features import MAX_OFFSET
from api.group_commit import GroupCommit
from api.limits import MAX_BBOX_CHARS, MAX_DATETIME_CHARS, MAX_NAME_CHARS, MAX_PHOTOS_PER_REPORT
from api.ops import REGISTRY
from api.params import body_json, body_text
from api.responses import OrjsonResponse
from cases.attachments import MAX_BYTES, Attachment, add_attachment, attachments_of, default_root
from cases.batch import TicketRaced, intake_each
from cases.catalogue import class_by_code
from cases.constants import ConstantsCache
from cases.evaluation import UNITS, evaluate, to_csv
from cases.intake import CaseReport, IntakeResult, intake
from cases.lifecycle import ROLES, Action, act
from cases.model import Case, CaseFilter, case_log, get_case, list_cases, mask
from cim.apikeys import ApiKey, role_allows
from cim.audit import record_unmasked_read
from cim.crs import transform_coords
from cim.errors import ParameterError, PayloadTooLargeError, UserError
from cim.features import parse_datetime
from cim.jurisdiction import as_owner, current_scope
from cim.spatial import to_storage

router = APIRouter(tags=["cases"])

#: the least API-key role that may act in each case role (see the module's docstring)
KEY_ROLE_FOR_CASE_ROLE = {"reporter": "reader", "department": "loader", "supervisor": "loader",
                          "platform": "admin", "system": "admin"}
MAX_LIMIT = 1000
_EPSILON = timedelta(microseconds=1)
#: where a grouped report's time goes (``/metrics``): waiting for its group to start, then the group's run (locate,
#: dispatch, write, commit); and how many reports a group holds
_MS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)
GROUP_WAIT = Histogram("cim_case_group_wait_seconds", "POST /cases: a report's wait for its group to start",
                       registry=REGISTRY, buckets=_MS)
GROUP_RUN = Histogram("cim_case_group_run_seconds", "POST /cases: a group's run, commit included",
                      registry=REGISTRY, buckets=_MS)
GROUP_SIZE = Histogram("cim_case_group_size", "POST /cases: reports in a group", registry=REGISTRY,
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
#: report fields and the names a client may use for them (JSON keys or form fields)
_TEXT_FIELDS = {"channel": ("channel",), "class_code": ("class", "class_code"), "description": ("description",),
                "address_text": ("address", "address_text"), "crs": ("crs",), "urgency": ("urgency",),
                "external_id": ("external_id",), "reporter_contact": ("reporter_contact", "contact")}
_NUMBER_FIELDS = {"x": ("lon", "x"), "y": ("lat", "y"), "z": ("z", "height")}


def actor_of(key: ApiKey) -> str:
    return key.name or f"api key {key.id}"


def _pick(data: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = data.get(name)
        if value is not None and value != "":
            return value
    return None


def report_from(data: Mapping[str, Any], default_channel: str = "public") -> CaseReport:
    """A :class:`CaseReport` from JSON keys or form fields, each wrong one named."""
    values: dict[str, Any] = {}
    for field, names in _TEXT_FIELDS.items():
        value = _pick(data, names)
        if value is not None:
            if not isinstance(value, str):
                raise ParameterError(names[0], f"{names[0]}: expected text, got {type(value).__name__}")
            values[field] = body_text(names[0], value)
    for field, names in _NUMBER_FIELDS.items():
        value = _pick(data, names)
        if value is not None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ParameterError(names[0], f"{names[0]}: {value!r} is not a number") from None
            if isinstance(value, bool) or number != number or number in (float("inf"), float("-inf")):
                raise ParameterError(names[0], f"{names[0]}: {value!r} is not a finite number")
            values[field] = number
    if "class_code" not in values:
        raise ParameterError("class", "class: the case class (小类 code or name) is required")
    values.setdefault("channel", default_channel)
    reported = _pick(data, ("reported_at",))
    if reported is not None:
        when = parse_datetime(str(reported))
        if when is None or when.start is None or when.start != when.end:
            raise ParameterError("reported_at", f"reported_at: {reported!r} is not one RFC 3339 date-time")
        values["reported_at"] = when.start
    attributes = data.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise ParameterError("attributes", "attributes: expected a JSON object")
    return CaseReport(**values, attributes=body_json("attributes", attributes) or {})


def case_json(case: Case, srid: int, mask_contact: bool = False) -> dict[str, Any]:
    """A case for the API: its fields, and its point as lon/lat (WGS84) beside the storage x/y."""
    return cases_json([case], srid, mask_contact)[0]


def cases_json(cases: Sequence[Case], srid: int, mask_contact: bool = False) -> list[dict[str, Any]]:
    """:func:`case_json` of each case, their points put in WGS84 by one transform for all (a call costs ~40 µs
    whatever it carries: a page of 1,000 cases or a group of reports pays it once, not once a case)."""
    out = []
    for case in cases:
        answer = case.to_dict(mask_contact=mask_contact)
        if mask_contact:  # the responsible person's phone is personal data too
            answer["person_contact"] = mask(case.person_contact)
        answer["lon"] = answer["lat"] = None
        out.append(answer)
    located = [k for k, case in enumerate(cases) if case.x is not None and case.y is not None]
    if located:
        lon, lat, _ = transform_coords([cases[k].x for k in located], [cases[k].y for k in located], None,
                                       f"EPSG:{srid}", "EPSG:4326")
        for j, k in enumerate(located):
            out[k]["lon"], out[k]["lat"] = round(float(lon[j]), 7), round(float(lat[j]), 7)
    return out


def _attachment_json(att: Attachment) -> dict[str, Any]:
    return {"id": att.id, "content_hash": att.content_hash, "media_type": att.media_type,
            "size_bytes": att.size_bytes}


def create_case(conn: Connection, report: CaseReport, photos: list[bytes], key: ApiKey,
                role: str = "reporter") -> tuple[IntakeResult, list[Attachment]]:
    """Intake and the photos in one transaction: a refused photo (413/415) leaves no case behind."""
    result = intake(conn, report)
    added = [add_attachment(conn, result.case.id, photo, default_root(), actor_of(key), role)
             for photo in photos] if result.created else []
    return result, added


async def _read_photo(upload: Any) -> bytes:
    """At most one byte more than the limit: enough to know it is too large without reading it all."""
    content = await upload.read(MAX_BYTES + 1)
    if len(content) > MAX_BYTES:
        raise PayloadTooLargeError(f"photos: {upload.filename or 'a photo'} is larger than {MAX_BYTES:,} bytes")
    return content


async def report_and_photos(request: Request) -> tuple[dict[str, Any], list[bytes]]:
    """The request's fields (JSON object or form) and its photos (multipart ``photos`` parts)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data" or ctype == "application/x-www-form-urlencoded":
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        uploads = [v for k, v in form.multi_items() if k in ("photos", "photo", "media") and not isinstance(v, str)]
        if len(uploads) > MAX_PHOTOS_PER_REPORT:  # the body limit is sized for this many
            raise ParameterError("photos", f"photos: at most {MAX_PHOTOS_PER_REPORT} per report, "
                                           f"this one has {len(uploads)}")
        return fields, [await _read_photo(v) for v in uploads]
    if ctype not in ("application/json", ""):
        raise ParameterError("Content-Type", f"Content-Type: {ctype!r}; send application/json or "
                                             "multipart/form-data")
    try:
        data = await request.json()
    except ValueError:
        raise ParameterError("body", "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise ParameterError("body", "body: expected a JSON object")
    return data, []


_TEXT = {"type": "string", "maxLength": MAX_NAME_CHARS}
_REPORT_FIELDS: dict[str, Any] = {
    "class": {**_TEXT, "description": "The case class: 小类 code or name."},
    "channel": _TEXT, "description": {"type": "string"}, "address": {"type": "string"},
    "lon": {"type": "number", "description": "With lat: the place, in crs (default WGS84)."},
    "lat": {"type": "number"}, "z": {"type": "number"}, "crs": _TEXT, "urgency": _TEXT,
    "external_id": _TEXT, "reporter_contact": _TEXT,
    "reported_at": {"type": "string", "format": "date-time"},
}
#: the body as the route reads it (by hand, to take JSON or a form), so that clients and contract
#: tests see it
_REPORT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["class"], "properties": {
        **_REPORT_FIELDS, "attributes": {"type": "object"}}}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["class"], "properties": {
        **_REPORT_FIELDS, "photos": {"type": "array", "maxItems": MAX_PHOTOS_PER_REPORT,
                                     "items": {"type": "string", "format": "binary"}}}}},
}}}
_CASE_ANSWER = {"content": {"application/json": {"schema": {"type": "object"}}}}


@router.post("/cases", status_code=201, summary="Report a case (JSON, or multipart with photos)",
             openapi_extra=_REPORT_BODY,
             responses={200: {**_CASE_ANSWER, "description": "A case with this external_id already exists: it."},
                        201: {**_CASE_ANSWER, "description": "The case opened."}})
async def post_case(request: Request, key: ApiKey = Depends(auth.require_role("reader"))) -> Response:
    """The case as located and dispatched, with ``created`` and ``duplicates`` (merge candidates).
    The same ``external_id`` on the same channel again answers 200 with the case it opened."""
    data, photos = await report_and_photos(request)
    report = report_from(data)
    state = get_state(request)
    added: list[Attachment] = []
    if photos:
        def run() -> tuple[IntakeResult, list[Attachment]]:
            with state.engine.begin() as conn:
                return create_case(conn, report, photos, key)

        result, added = await run_in_threadpool(run)
        answer = case_json(result.case, state.settings.srid)
    else:  # the common report: gathered with the concurrent ones into one set-based transaction
        # grouped only with reports of the same caller's scope: the group runs under it (jurisdiction, audit);
        # its answer comes made by the group (_answered)
        result, answer = await request.app.state.case_intake.submit(report, key=current_scope())
    return case_response(result, answer, added)


def case_response(result: IntakeResult, answer: dict[str, Any], added: Sequence[Attachment] = ()) -> OrjsonResponse:
    """The answer to a report: its case (``answer``, as :func:`case_json` makes it) with ``created``, the duplicate
    suggestions and the photos added; 201 for a new case, 200 for one its external id had opened already."""
    body = {**answer, "created": result.created,
            "duplicates": result.duplicates, "attachments": [_attachment_json(a) for a in added]}
    return OrjsonResponse(body, status_code=201 if result.created else 200,
                          headers={"Location": f"/cases/{result.case.id}"})


def _bbox(text: str, srid: int) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 4 or numbers[0] > numbers[2] or numbers[1] > numbers[3]:
        raise ParameterError("bbox", f"bbox: {text!r} is not minlon,minlat,maxlon,maxlat (WGS84)")
    xs, ys = to_storage([numbers[0], numbers[2], numbers[0], numbers[2]],
                        [numbers[1], numbers[1], numbers[3], numbers[3]], "EPSG:4326", srid)
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def _page_link(request: Request, rel: str, offset: int) -> dict[str, str]:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "offset"] + [("offset", str(offset))]
    return {"rel": rel, "href": f"{request.url.path}?{urlencode(params)}", "type": "application/json"}


@router.get("/cases", summary="Cases, filtered and paged (reporter contact masked)")
def get_cases(request: Request,
              status: str | None = Query(None, max_length=MAX_NAME_CHARS, description="reported, registered, dispatched, accepted, returned, "
                                                           "handled, suspended, closed, not_registered, merged"),
              class_: str | None = Query(None, alias="class", max_length=MAX_NAME_CHARS, description="小类 code or name."),
              channel: str | None = Query(None, max_length=MAX_NAME_CHARS),
              grid: str | None = Query(None, max_length=MAX_NAME_CHARS, description="Unit grid code."),
              street: str | None = Query(None, max_length=MAX_NAME_CHARS, description="Street code."),
              district: str | None = Query(None, max_length=MAX_NAME_CHARS, description="District code."),
              department: str | None = Query(None, max_length=MAX_NAME_CHARS,
                                             description="Department code of the assignee."),
              manual: bool | None = Query(None, description="Only cases in (true) or out of (false) the manual "
                                                            "queue."),
              overdue: bool | None = Query(None),
              bbox: str | None = Query(None, max_length=MAX_BBOX_CHARS, description="minlon,minlat,maxlon,maxlat (WGS84)."),
              datetime_: str | None = Query(None, alias="datetime", max_length=MAX_DATETIME_CHARS,
                                            description="Reported at: an RFC 3339 instant or interval a/b."),
              limit: int = Query(100, ge=1, le=MAX_LIMIT),
              offset: int = Query(0, ge=0, le=MAX_OFFSET,
                                  description=f"Cases to skip, 0 to {MAX_OFFSET:,}; to go deeper narrow the "
                                              "filters.")) -> dict[str, Any]:
    state = get_state(request)
    srid = state.settings.srid
    when = parse_datetime(datetime_)
    reported_from = when.start if when else None
    reported_to = None
    if when is not None and when.end is not None:
        # an instant selects that instant; the store's filter is [from, to)
        reported_to = when.end if when.end_exclusive else when.end + _EPSILON
    box = _bbox(bbox, srid) if bbox else None
    with state.engine.connect() as conn:
        class_code = class_by_code(conn, class_).code if class_ else None
        where = CaseFilter(status=status, class_code=class_code, channel=channel, district_code=district,
                           street_code=street, grid_code=grid, department_code=department, manual=manual,
                           overdue=overdue, reported_from=reported_from, reported_to=reported_to,
                           bbox=box, bbox_srid=srid if box else None)
        found = list_cases(conn, where, limit + 1, offset)
    page = found[:limit]
    links = [_page_link(request, "self", offset)]
    if len(found) > limit:
        links.append(_page_link(request, "next", offset + limit))
    if offset > 0:
        links.append(_page_link(request, "prev", max(offset - limit, 0)))
    return {"cases": cases_json(page, srid, mask_contact=True), "numberReturned": len(page),
            "links": links}


@router.get("/cases/stats", summary="Evaluation indicators (综合评价) per unit, JSON or CSV")
def get_stats(request: Request,
              by: str = Query("department", max_length=MAX_NAME_CHARS,
                              description=f"One of {', '.join(UNITS)}."),
              datetime_: str = Query(..., alias="datetime", max_length=MAX_DATETIME_CHARS,
                                     description="The period: cases registered in start/end (RFC 3339)."),
              f: str = Query("json", max_length=MAX_NAME_CHARS, description="json or csv.")) -> Response:
    when = parse_datetime(datetime_)
    if when is None or when.start is None or when.end is None or when.start == when.end:
        raise ParameterError("datetime", f"datetime: {datetime_!r} must be a closed interval start/end")
    if f not in ("json", "csv"):
        raise ParameterError("f", f"f: {f!r} is not json or csv")
    with get_state(request).engine.connect() as conn:
        rows = evaluate(conn, by, when.start, when.end)
    if f == "csv":
        return Response(to_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="cases-stats-{by}.csv"'})
    return OrjsonResponse({"by": by, "from": when.start.isoformat(), "to": when.end.isoformat(),
                           "indicators": [r.__dict__ for r in rows]})


@router.get("/cases/{case_id}", summary="One case with its complete log and attachments")
def get_one(request: Request, case_id: int) -> dict[str, Any]:
    """Contacts (reporter's, responsible person's) are masked unless the caller's role needs them
    (:data:`cim.users.PERSONAL_DATA_ROLES`, or a key without a user of role loader or higher); each
    unmasked answer is recorded in the audit trail. A case outside the caller's jurisdiction is a 404."""
    state = get_state(request)
    with state.engine.connect() as conn:
        case = get_case(conn, case_id)
        log = case_log(conn, case_id)
        atts = attachments_of(conn, case_id)
    unmasked = current_scope().personal_data
    if unmasked and (case.reporter_contact or case.person_contact):
        record_unmasked_read(state.engine, "cases", {"case": case_id})
    return {**case_json(case, state.settings.srid, mask_contact=not unmasked), "log": [e.to_dict() for e in log],
            "attachments": [_attachment_json(a) for a in atts]}


def check_case_role(key: ApiKey, role: str) -> None:
    """403 when the key's role may not act in this case role; an unknown role is a 400."""
    if role not in KEY_ROLE_FOR_CASE_ROLE:
        raise ParameterError("role", f"role: unknown role {role!r}; valid: {', '.join(ROLES)}")
    needed = KEY_ROLE_FOR_CASE_ROLE[role]
    if not role_allows(key.role, needed):
        raise CaseRoleForbidden(f"acting as {role} needs an API key with role {needed} or higher; "
                                f"this key has role {key.role}")


class CaseRoleForbidden(UserError):
    """The API key may not act in the case role it claims (HTTP 403)."""

    status = 403
    title = "Forbidden"


def action_from(data: Any, key: ApiKey) -> Action:
    if not isinstance(data, dict):
        raise ParameterError("body", "body: expected a JSON object")
    name = data.get("action")
    if not isinstance(name, str) or not name:
        raise ParameterError("action", "action: which action to take is required")
    role = data.get("role")
    if not isinstance(role, str):
        raise ParameterError("role", f"role: the case role to act in is required; one of {', '.join(ROLES)}")
    check_case_role(key, role)
    payload = data.get("data") or {}
    if not isinstance(payload, dict):
        raise ParameterError("data", "data: expected a JSON object")
    version = data.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ParameterError("version", "version: expected an integer (the case's version you acted on)")
    note = data.get("note")
    if note is not None and not isinstance(note, str):
        raise ParameterError("note", "note: expected text")
    actor = data.get("actor") or actor_of(key)
    if not isinstance(actor, str):
        raise ParameterError("actor", "actor: expected text")
    return Action(name, actor, role, note, payload, version)


_ACTION_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["action", "role"], "properties": {
        "action": _TEXT, "role": {"type": "string", "enum": list(KEY_ROLE_FOR_CASE_ROLE)},
        "note": {"type": "string"}, "data": {"type": "object"}, "version": {"type": "integer"}, "actor": _TEXT}}}}}}


@router.post("/cases/{case_id}/actions", summary="Take one lifecycle action on a case", openapi_extra=_ACTION_BODY)
async def post_action(request: Request, case_id: int,
                      key: ApiKey = Depends(auth.require_role("reader"))) -> dict[str, Any]:
    """Body ``{"action": "accept", "role": "department", "note": …, "data": {…}, "version": n}``.
    An action the case's status does not allow (or a stale ``version``) is a 409; a role that may not
    take it a 403. Answers the case after the action with its log."""
    try:
        data = await request.json()
    except ValueError:
        raise ParameterError("body", "body: not valid JSON") from None
    action = action_from(data, key)
    state = get_state(request)

    def run() -> tuple[Case, list]:
        with state.engine.begin() as conn:
            case = act(conn, case_id, action)
            return case, case_log(conn, case_id)

    case, log = await run_in_threadpool(run)
    return {**case_json(case, state.settings.srid), "log": [e.to_dict() for e in log]}


def intake_group(engine: Engine, reports: Sequence[CaseReport], srid: int | None = None,
                 constants: ConstantsCache | None = None) -> list[IntakeResult | Exception]:
    """Concurrent reports in one transaction through the set-based intake (:func:`intake_each`): one
    geocode pass, one grid lookup, one dispatch per grid and class, one COPY; the catalogue, department
    kinds and calendar from the server's ``constants`` (re-read every CIM_LAYER_CACHE_S). A report's own error
    (unknown class …) goes to its request only. Should the group fail as a whole — a ticket taken in
    meanwhile by another process, or anything unforeseen — each report is taken in alone, in its own
    transaction, so only the report at fault hears of it."""
    try:
        with _writer(), engine.begin() as conn:
            return list(intake_each(conn, reports, srid=srid,
                                    constants=constants.get(conn) if constants is not None else None))
    except Exception as exc:  # TicketRaced included
        if len(reports) > 1 or isinstance(exc, TicketRaced):
            return [_intake_alone(engine, report) for report in reports]
        return [exc]


def _writer() -> contextlib.AbstractContextManager[None]:
    """A city-wide caller's group is written as the owner (:func:`cim.jurisdiction.as_owner`, the API's rule
    for bulk work; the caller stays the one the audit trail names): COPY instead of one INSERT checked
    row by row against the policies, and the duplicate search may use the cases' spatial index (under the
    policies only a LEAKPROOF condition may). Every row a city-wide caller writes passes the policies
    anyway — unless a department bounds the caller, whose group stays under them."""
    scope = current_scope()
    if scope.kind == "city" and not scope.department:
        return as_owner("a group of case reports")
    return contextlib.nullcontext()


def _intake_alone(engine: Engine, report: CaseReport) -> IntakeResult | Exception:
    try:
        with engine.begin() as conn:
            return intake(conn, report)  # ON CONFLICT: a ticket racing in gives the winner's case
    except Exception as exc:
        return exc


class AnswerError(RuntimeError):
    """The group's cases are written and committed, but their answers could not be made. Unlike an intake's
    error (its transaction rolled back), a report that hears this must not be taken in again: it would open a
    second case (:class:`api.case_fast_path.CaseReportMiddleware` answers it with the app's 500 problem)."""


def _answered(results: Sequence[IntakeResult | Exception], srid: int) -> list[tuple[IntakeResult, dict[str, Any]]
                                                                            | Exception]:
    """Each intake result with its case's answer, made in the group's thread with one transform for the group
    (the event loop then only sends them), or the report's exception as it was."""
    try:
        made = iter(cases_json([r.case for r in results if isinstance(r, IntakeResult)], srid))
    except Exception as exc:  # after the commit: see AnswerError
        raise AnswerError(f"{len(results)} reports were taken in, their answers failed: {exc}") from exc
    return [(r, next(made)) if isinstance(r, IntakeResult) else r for r in results]


def _observe_group(waits: Sequence[float], run_s: float) -> None:
    for wait in waits:
        GROUP_WAIT.observe(wait)
    GROUP_RUN.observe(run_s)
    GROUP_SIZE.observe(len(waits))


def install(app: FastAPI) -> None:
    state = app.state.cim
    constants = ConstantsCache(state.deployment.layer_cache_s)
    deployment = state.deployment
    app.state.case_intake = GroupCommit(lambda reports: _answered(intake_group(state.engine, reports,
                                                                               state.settings.srid, constants),
                                                                  state.settings.srid),
                                        window_s=deployment.case_group_window_ms / 1000,
                                        max_group=deployment.case_group_max,
                                        workers=deployment.case_groups_in_flight, observe=_observe_group)
    app.include_router(router)
