"""Intake (信息收集 → 立案 → 派遣): a report from any channel becomes a case, located (the point, or
the address text through the gazetteer), put in its grid, bound to the part it concerns, registered
and dispatched by machine — or, when a rule cannot decide, registered and put in the manual queue
with the reason. A case is never lost, and the same external id (a 12345 ticket) twice gives the
same case back (the case it was merged into, if it was).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import stored_settings
from cim.errors import ParameterError, UserError
from cim.gazetteer.geocode import MAX_QUERY_CHARS, POINT_LEVELS, GeocodeResult, geocode_many
from cim.grid import GridAnswer, lookup_points
from cim.schema import NO_DISTRICT
from cim.spatial import to_storage

from cases.calendar import WorkingCalendar, load_calendar
from cases.catalogue import CaseClass, class_by_code
from cases.lifecycle import Action, act, now_utc
from cases.model import Case, get_case, write_event

CHANNELS = ("grid_patrol", "vehicle_patrol", "hotline_12345", "police_110", "iot", "media", "public", "other")
URGENCIES = ("normal", "emergency")
#: a part class case concerns the nearest current part of its 小类 within this distance
PART_SNAP_M = 5.0
#: the part a case concerns: the nearest current part of its 小类 within ``:r`` metres of its point
#: (ties by object code); one text for the single intake and the batch's LATERAL join
PART_SQL = ("SELECT object_code FROM parts WHERE valid_to IS NULL AND part_subclass = {cls} "
            "AND ST_DWithin(geom, {point}, :r) ORDER BY ST_Distance(geom, {point}), object_code LIMIT 1")
#: how the machine acts in the log
MACHINE = "machine"


@dataclass(frozen=True)
class CaseReport:
    """What a channel reports. A point (``x``, ``y``, optional ``z`` in ``crs``) wins over the text."""

    channel: str
    class_code: str
    description: str | None = None
    address_text: str | None = None
    x: float | None = None
    y: float | None = None
    z: float | None = None
    crs: str = "EPSG:4326"
    urgency: str = "normal"
    external_id: str | None = None
    reporter_contact: str | None = None
    reported_at: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IntakeResult:
    case: Case
    created: bool  # False: the external id was known, this is the case it opened
    duplicates: list[int]  # open cases of the same class nearby: merge candidates


@dataclass(frozen=True)
class _Location:
    x: float | None = None
    y: float | None = None
    z: float = 0.0
    answer: GridAnswer = field(default_factory=GridAnswer)
    geocode: dict[str, Any] | None = None
    problem: str | None = None  # why no grid: the manual queue's reason


def _validate(report: CaseReport) -> None:
    if report.channel not in CHANNELS:
        raise ParameterError("channel", f"channel: unknown channel {report.channel!r}; valid: {', '.join(CHANNELS)}")
    if report.urgency not in URGENCIES:
        raise ParameterError("urgency", f"urgency: {report.urgency!r} is not one of {', '.join(URGENCIES)}")
    if (report.x is None) != (report.y is None):
        raise ParameterError("x", "x, y: give both coordinates of the point, or neither")
    if report.reported_at is not None and report.reported_at.tzinfo is None:
        raise ParameterError("reported_at", "reported_at: the time needs a time zone")


def _at_point(x: float, y: float, z: float, answer: GridAnswer, storage: str) -> _Location:
    """A point in storage coordinates and the grid answer for it."""
    problem = None if answer.grid else f"outside every grid: the point ({x:.1f}, {y:.1f}) in {storage} lies in no grid"
    return _Location(x, y, z, answer, None, problem)


def _unreadable(text: str) -> _Location | None:
    """The location of an address text the gazetteer is not even asked about, or None."""
    if not text:
        return _Location(problem="no address and no point given")
    if len(text) > MAX_QUERY_CHARS:
        return _Location(problem=f"address text longer than {MAX_QUERY_CHARS} characters")
    return None


def _geocoded(text: str, result: GeocodeResult, z: float) -> _Location:
    """The location an address text's geocode result gives, or why it gives none."""
    summary = result.summary()
    if result.match_level not in POINT_LEVELS or result.x is None:
        why = result.reason or "nothing of the gazetteer recognised"
        return _Location(geocode=summary, answer=result.assignment,
                         problem=f"address not found to a point: {text!r} matched at level {result.match_level} ({why})")
    if result.ambiguous:
        return _Location(geocode=summary, problem=f"address ambiguous: {text!r} lies in several districts")
    problem = None if result.assignment.grid else f"outside every grid: {text!r} geocodes to no grid"
    return _Location(result.x, result.y, z, result.assignment, summary, problem)


def _locate(conn: Connection, report: CaseReport, srid: int) -> _Location:
    storage = f"EPSG:{srid}"
    if report.x is not None and report.y is not None:
        sx, sy = to_storage([report.x], [report.y], report.crs, srid)
        answer = lookup_points(conn, sx, sy, storage)[0]
        return _at_point(float(sx[0]), float(sy[0]), float(report.z or 0.0), answer, storage)
    text = (report.address_text or "").strip()
    early = _unreadable(text)
    if early is not None:
        return early
    return _geocoded(text, geocode_many(conn, [text], storage)[0], float(report.z or 0.0))


def register_note(cls: CaseClass) -> str:
    """The machine's note when it registers (立案) a case of ``cls``."""
    return f"立案: class {cls.code} {cls.name}; 立案条件: {cls.register_condition or '-'}"


def _existing(conn: Connection, channel: str, external_id: str) -> int | None:
    return conn.execute(sa.text("SELECT id FROM cases WHERE channel = :c AND external_id = :e"),
                        {"c": channel, "e": external_id}).scalar()


def _leading(conn: Connection, case_id: int) -> Case:
    """The case a (possibly merged) case leads to."""
    case = get_case(conn, case_id)
    seen = {case.id}
    while case.merged_into is not None and case.merged_into not in seen:
        case = get_case(conn, case.merged_into)
        seen.add(case.id)
    return case


def _part(conn: Connection, cls: CaseClass, loc: _Location, srid: int) -> str | None:
    if not cls.is_part or loc.x is None:
        return None
    return conn.execute(sa.text(PART_SQL.format(cls=":c", point="ST_SetSRID(ST_MakePoint(:x, :y, :z), :srid)")),
                        {"c": cls.code, "x": loc.x, "y": loc.y, "z": loc.z, "srid": srid, "r": PART_SNAP_M}).scalar()


def duplicates_of(conn: Connection, case: Case, cls: CaseClass) -> list[int]:
    """Open cases of the same class within the class's radius, reported within its window before."""
    if case.x is None:
        return []
    return list(conn.execute(sa.text(
        # the case as a materialised CTE: on Citus an intermediate result, joined with every shard of cases (a
        # self-join of a distributed table on anything but the district is refused)
        "WITH c AS MATERIALIZED (SELECT id, class_code, reported_at, geom FROM cases WHERE id = :id) "
        "SELECT o.id FROM cases o, c WHERE o.id <> c.id AND o.class_code = c.class_code "
        "AND o.status NOT IN ('closed', 'not_registered', 'merged') "
        "AND o.reported_at BETWEEN c.reported_at - make_interval(secs => :w * 3600) AND c.reported_at "
        "AND ST_DWithin(o.geom, c.geom, :r) ORDER BY o.reported_at, o.id"),
        {"id": case.id, "w": cls.duplicate_window_h, "r": cls.duplicate_radius_m}).scalars())


def intake(conn: Connection, report: CaseReport, now: datetime | None = None,
           calendar: WorkingCalendar | None = None, auto_register: bool = True) -> IntakeResult:
    """Take one report in as a case (inside the caller's transaction). With ``auto_register`` (a
    channel whose reports meet the 立案条件 by themselves: grid patrols, sensors) the machine
    registers and dispatches it; without, it waits as ``reported`` for an operator to register
    (立案) or reject (不予立案) it."""
    _validate(report)
    cls = class_by_code(conn, report.class_code)
    settings = stored_settings(conn)
    if settings is None:
        raise UserError("the city base is not initialised: run 'cim init'")
    if report.external_id:
        found = _existing(conn, report.channel, report.external_id)
        if found is not None:
            return IntakeResult(_leading(conn, found), False, [])
    now = now or now_utc()
    loc = _locate(conn, report, settings.srid)
    a = loc.answer
    values = {
        "channel": report.channel, "external_id": report.external_id or None, "class_code": cls.code,
        "urgency": report.urgency, "description": report.description, "address_text": report.address_text,
        "x": loc.x, "y": loc.y, "z": loc.z, "srid": settings.srid,
        "geocode": None if loc.geocode is None else json.dumps(loc.geocode, ensure_ascii=False),
        "district_code": a.district.code if a.district else NO_DISTRICT, "street_code": a.street.code if a.street else None,
        "community_code": a.community.code if a.community else None, "grid_code": a.grid.code if a.grid else None,
        "part_object_code": _part(conn, cls, loc, settings.srid), "reporter_contact": report.reporter_contact,
        "reported_at": report.reported_at or now,
        "attributes": json.dumps(report.attributes, ensure_ascii=False, default=str),
        "manual_reason": loc.problem,  # why the machine cannot dispatch it: the manual queue's reason
    }
    # ON CONFLICT: two intakes of one ticket racing — the loser reads the winner's case
    case_id = conn.execute(sa.text(
        "INSERT INTO cases (channel, external_id, class_code, urgency, description, address_text, geom, geocode, "
        "district_code, street_code, community_code, grid_code, part_object_code, reporter_contact, status, "
        "reported_at, attributes, manual_reason) VALUES (:channel, :external_id, :class_code, :urgency, :description, "
        ":address_text, CASE WHEN CAST(:x AS float8) IS NULL THEN NULL "
        "ELSE ST_SetSRID(ST_MakePoint(:x, :y, :z), CAST(:srid AS integer)) END, CAST(:geocode AS jsonb), "
        ":district_code, :street_code, :community_code, :grid_code, :part_object_code, :reporter_contact, "
        "'reported', :reported_at, CAST(:attributes AS jsonb), :manual_reason) "
        "ON CONFLICT (channel, external_id, district_code) WHERE external_id IS NOT NULL DO NOTHING RETURNING id"),
        values).scalar()
    if case_id is None:
        return IntakeResult(_leading(conn, _existing(conn, report.channel, report.external_id or "")), False, [])
    case = get_case(conn, case_id)
    dups = duplicates_of(conn, case, cls)
    write_event(conn, case_id, now, f"{report.channel}", "reporter", "report", None, "reported",
                report.description, {"geocode": loc.geocode, "part_object_code": values["part_object_code"],
                                     "possible_duplicates": dups, "manual_reason": loc.problem},
                district=case.district)
    if not auto_register:
        return IntakeResult(get_case(conn, case_id), True, dups)
    calendar = calendar or load_calendar(conn)
    act(conn, case_id, Action("register", MACHINE, "system", register_note(cls)), now, calendar, cls)
    if loc.problem is not None:
        write_event(conn, case_id, now, MACHINE, "system", "to_manual_queue", "registered", "registered",
                    loc.problem, {}, district=case.district)
    else:
        act(conn, case_id, Action("dispatch", MACHINE, "system"), now, calendar, cls)
    return IntakeResult(get_case(conn, case_id), True, dups)
