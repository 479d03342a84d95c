"""An Open311 GeoReport v2 facade over the case loop, so existing 311 clients work (JSON format).

- ``GET /open311/v2/services.json`` — the catalogue's 小类 as services (``service_code`` is the
  class code, ``group`` its 大类).
- ``GET /open311/v2/requests.json`` — ``service_request_id``, ``service_code`` (comma-separated),
  ``start_date``/``end_date`` (on the requested time; without ids or dates the last 90 days),
  ``status`` (``open``, ``closed``, comma-separated); at most 1000, newest first.
- ``POST /open311/v2/requests.json`` — form-encoded ``api_key``, ``service_code``, ``lat``+``long``
  or ``address_string``, optional ``description``, ``email``/``phone`` (the reporter contact),
  ``first_name``/``last_name``, ``media_url``, ``attribute[…]``; the report is taken in exactly as
  ``POST /cases`` takes it (channel ``public``, role ``reporter``), and answers
  ``[{"service_request_id": …, "service_notice": …, "account_id": null}]``.
- ``GET /open311/v2/requests/{id}.json`` — a list holding that one request.

The loop's statuses map onto the spec's two: closed, not registered and merged cases are
``closed``; every other is ``open`` (``status_notes`` says where it is). Errors keep their status
from :mod:`api.problems`'s one mapping but are written in the spec's format,
``[{"code": 400, "description": "…"}]``; a missing or unknown ``api_key`` is the spec's 403.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Path, Query, Request
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool

from api import auth
from api.cases import case_json, report_from
from api.deps import get_state
from api.limits import MAX_DATETIME_CHARS, MAX_LIST_CHARS, MAX_NAME_CHARS
from api.problems import ErrorFormat, Problem, register_error_format
from api.responses import OrjsonResponse
from cases.catalogue import all_classes
from cases.model import OPEN_STATUSES, TERMINAL_STATUSES, Case, CaseFilter, list_cases
from cim.apikeys import ApiKey
from cim.errors import NotFoundError, ParameterError
from cim.features import parse_datetime
from cim.jurisdiction import acting_as, current_scope

PREFIX = "/open311/v2"
router = APIRouter(prefix=PREFIX, tags=["open311"])
MAX_REQUESTS = 1000
DEFAULT_WINDOW = timedelta(days=90)
SPEC_STATUSES = {"open": OPEN_STATUSES, "closed": TERMINAL_STATUSES}


def error_list(status: int, title: str, detail: str, parameter: str | None,
               headers: dict[str, str] | None) -> OrjsonResponse:
    """GeoReport v2 errors: a list of ``{code, description}``."""
    return OrjsonResponse([{"code": status, "description": detail}], status_code=status, headers=headers)


#: the spec's error answer, for the OpenAPI document (:mod:`api.openapi_errors`)
OPEN311_ERRORS = ErrorFormat(error_list, "application/json", "Open311Errors", {
    "type": "array", "description": "GeoReport v2 errors (the HTTP status is the code of each).",
    "items": {"type": "object", "required": ["code", "description"],
              "properties": {"code": {"type": "integer"}, "description": {"type": "string"}}}})


@router.get("/services.json", summary="Open311: the service list (the catalogue's 小类)")
def services(request: Request, jurisdiction_id: str | None = Query(None, max_length=MAX_NAME_CHARS)) -> list[dict[str, Any]]:
    with get_state(request).engine.connect() as conn:
        classes = all_classes(conn)
    names = {c.code: c.name for c in classes}
    return [{"service_code": c.code, "service_name": c.name, "description": c.register_condition or c.name,
             "metadata": False, "type": "realtime", "keywords": c.kind,
             "group": f"{c.kind}/{names.get(c.parent_code, c.parent_code)}"}
            for c in classes if c.parent_code is not None]


def _class_names(conn: Connection) -> dict[str, str]:
    return {c.code: c.name for c in all_classes(conn)}


def _updated(case: Case) -> datetime:
    times = [t for t in (case.reported_at, case.registered_at, case.dispatched_at, case.handled_at, case.closed_at)
             if t is not None]
    return max(times)


def request_json(case: Case, srid: int, names: dict[str, str]) -> dict[str, Any]:
    """A case as a GeoReport v2 service request (``names``: class code → 小类 name)."""
    base = case_json(case, srid)
    notes = case.status + (f": {case.manual_reason}" if case.manual_reason else
                           f" to {case.department_name}" if case.department_name and case.status != "closed" else "")
    return {"service_request_id": str(case.id), "status": "closed" if case.status in TERMINAL_STATUSES else "open",
            "status_notes": notes, "service_name": names.get(case.class_code, case.class_code),
            "service_code": case.class_code, "description": case.description,
            "agency_responsible": case.department_name, "service_notice": case.dispatch_reason,
            "requested_datetime": case.reported_at.isoformat(), "updated_datetime": _updated(case).isoformat(),
            "expected_datetime": case.due_at.isoformat() if case.due_at else None,
            "address": case.address_text, "address_id": None, "zipcode": None,
            "lat": base["lat"], "long": base["lon"], "media_url": case.attributes.get("media_url")}


def _list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    return values or None


def _instant(text: str | None, parameter: str) -> datetime | None:
    if text is None:
        return None
    when = parse_datetime(text)
    one_instant = when is not None and when.start is not None and (when.start == when.end or when.end_exclusive)
    if not one_instant or "/" in text:
        raise ParameterError(parameter, f"{parameter}: {text!r} is not a w3c date-time (1994-11-05T13:15:30Z)")
    return when.start


@router.get("/requests.json", summary="Open311: service requests")
def requests_(request: Request,
              service_request_id: str | None = Query(None, max_length=MAX_LIST_CHARS,
                                                     description="Comma-separated ids."),
              service_code: str | None = Query(None, max_length=MAX_LIST_CHARS,
                                               description="Comma-separated service codes."),
              start_date: str | None = Query(None, max_length=MAX_DATETIME_CHARS),
              end_date: str | None = Query(None, max_length=MAX_DATETIME_CHARS),
              status: str | None = Query(None, max_length=MAX_NAME_CHARS,
                                         description="open, closed (comma-separated)."),
              jurisdiction_id: str | None = Query(None, max_length=MAX_NAME_CHARS)) -> list[dict[str, Any]]:
    ids = _list(service_request_id)
    if ids is not None and not all(i.isascii() and i.isdigit() for i in ids):
        raise ParameterError("service_request_id", f"service_request_id: {service_request_id!r} is not a list "
                                                   "of request ids")
    statuses: tuple[str, ...] | None = None
    for value in _list(status) or ():
        if value not in SPEC_STATUSES:
            raise ParameterError("status", f"status: {value!r} is not open or closed")
        statuses = (statuses or ()) + SPEC_STATUSES[value]
    start, end = _instant(start_date, "start_date"), _instant(end_date, "end_date")
    if ids is None and start is None and end is None:
        start = datetime.now().astimezone() - DEFAULT_WINDOW
    state = get_state(request)
    where = CaseFilter(ids=tuple(int(i) for i in ids) if ids else None, statuses=statuses,
                       class_codes=_list(service_code), reported_from=start,
                       reported_to=end + timedelta(microseconds=1) if end else None)
    with state.engine.connect() as conn:
        found = list_cases(conn, where, MAX_REQUESTS)
        names = _class_names(conn)
    return [request_json(c, state.settings.srid, names) for c in found]


@router.get("/requests/{service_request_id}.json", summary="Open311: one service request")
def one_request(request: Request, service_request_id: str = Path(..., max_length=MAX_NAME_CHARS),
                jurisdiction_id: str | None = Query(None, max_length=MAX_NAME_CHARS)) -> list[dict[str, Any]]:
    if not (service_request_id.isascii() and service_request_id.isdigit()):  # "²" is a digit, not a number
        raise ParameterError("service_request_id", f"service_request_id: {service_request_id!r} is not a request id")
    state = get_state(request)
    with state.engine.connect() as conn:
        found = list_cases(conn, CaseFilter(ids=(int(service_request_id),)), 1)
        names = _class_names(conn)
    if not found:
        raise NotFoundError(f"service request {service_request_id} does not exist")
    return [request_json(found[0], state.settings.srid, names)]


def _key(request: Request, form_key: str | None) -> ApiKey:
    key = form_key or auth.key_from_headers(request.headers.get("x-api-key"), request.headers.get("authorization"))
    record = auth.lookup_key(get_state(request), key) if key else None
    if record is None:  # the spec's answer for a missing or invalid key is 403, not 401
        raise Problem(403, "Forbidden", "api_key was not provided or is invalid")
    return record


_FIELD = {"type": "string", "maxLength": MAX_NAME_CHARS}
#: the spec's form, as the route reads it (by hand: ``attribute[…]`` names are open-ended)
_REQUEST_FORM = {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
    "type": "object", "required": ["service_code"], "properties": {
        "api_key": _FIELD, "service_code": _FIELD, "lat": {"type": "number"}, "long": {"type": "number"},
        "address_string": {"type": "string"}, "description": {"type": "string"}, "email": _FIELD, "phone": _FIELD,
        "first_name": _FIELD, "last_name": _FIELD, "media_url": {"type": "string"}, "device_id": _FIELD,
        "account_id": _FIELD}}}}}}


@router.post("/requests.json", status_code=201, summary="Open311: create a service request",
             openapi_extra=_REQUEST_FORM)
async def post_request(request: Request) -> OrjsonResponse:
    form = await request.form()
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    key = await run_in_threadpool(_key, request, fields.get("api_key"))
    if not fields.get("service_code"):
        raise ParameterError("service_code", "service_code: required (see services.json)")
    has_point = fields.get("lat") and fields.get("long")
    if not has_point and not fields.get("address_string"):
        raise ParameterError("lat", "lat & long, or address_string: a location is required")
    for name in ("lat", "long") if has_point else ():
        try:
            float(fields[name])
        except ValueError:
            raise ParameterError(name, f"{name}: {fields[name]!r} is not a number (WGS84 degrees)") from None
    names = " ".join(v for v in (fields.get("first_name"), fields.get("last_name")) if v)
    attributes = {k: v for k, v in fields.items() if k.startswith("attribute[")}
    attributes.update({k: fields[k] for k in ("media_url", "device_id", "account_id", "email") if fields.get(k)})
    if names:
        attributes["reporter_name"] = names
    report = report_from({"channel": "public", "class": fields["service_code"],
                          "description": fields.get("description"), "address": fields.get("address_string"),
                          "lon": fields.get("long") if has_point else None,
                          "lat": fields.get("lat") if has_point else None,
                          "reporter_contact": fields.get("phone") or fields.get("email"),
                          "attributes": attributes})

    # the key may come in the form, where the access middleware does not look: its jurisdiction is set here
    caller = key.scope().with_request(current_scope().client, current_scope().request)

    with acting_as(caller):  # gathered with the concurrent reports of the same caller, as POST /cases
        result, _ = await request.app.state.case_intake.submit(report, key=caller)  # (the result, POST /cases' answer)
    case = result.case
    return OrjsonResponse([{"service_request_id": str(case.id), "service_notice": case.dispatch_reason
                            or case.manual_reason, "account_id": None}],
                          status_code=201, headers={"Location": f"{PREFIX}/requests/{case.id}.json"})


def install(app: FastAPI) -> None:
    register_error_format(PREFIX + "/", OPEN311_ERRORS)
    app.include_router(router)
