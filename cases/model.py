"""Cases and their log as typed values, read from the base; the one place that writes a log row.

Every function takes a SQLAlchemy :class:`Connection` inside the caller's transaction, so an API
layer is a thin adapter: it opens the transaction, calls, and serialises the dataclasses.
"""
from __future__ import annotations

from collections.abc import Sequence

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.distribution import on_citus
from cim.errors import NotFoundError

#: statuses in which a case still waits for someone
OPEN_STATUSES = ("reported", "registered", "dispatched", "accepted", "returned", "handled", "suspended")
TERMINAL_STATUSES = ("not_registered", "closed", "merged")

_CASE_COLUMNS = (
    "id", "channel", "external_id", "class_code", "urgency", "description", "address_text",
    "geocode", "district_code", "street_code", "community_code", "grid_code", "part_object_code",
    "reporter_contact", "status", "suspended_status", "reported_at", "registered_at", "dispatched_at",
    "handled_at", "closed_at", "due_at", "remaining_hours", "overdue", "escalation_level",
    "department_code", "department_name", "post_code", "person_name", "person_contact", "dispatch_reason",
    "manual_reason", "returned_departments", "rework_count", "extension_count", "extension_requested_hours",
    "merged_into", "version", "attributes")
ESCALATION_LEVELS = ("street", "district", "city")


@dataclass(frozen=True)
class Case:
    id: int
    channel: str
    external_id: str | None
    class_code: str
    urgency: str
    description: str | None
    address_text: str | None
    geocode: dict[str, Any] | None
    district_code: str | None
    street_code: str | None
    community_code: str | None
    grid_code: str | None
    part_object_code: str | None
    reporter_contact: str | None
    status: str
    suspended_status: str | None
    reported_at: datetime
    registered_at: datetime | None
    dispatched_at: datetime | None
    handled_at: datetime | None
    closed_at: datetime | None
    due_at: datetime | None
    remaining_hours: float | None
    overdue: bool
    escalation_level: int
    department_code: str | None
    department_name: str | None
    post_code: str | None
    person_name: str | None
    person_contact: str | None
    dispatch_reason: str | None
    manual_reason: str | None
    returned_departments: list[str]
    rework_count: int
    extension_count: int
    extension_requested_hours: float | None
    merged_into: int | None
    version: int
    attributes: dict[str, Any]
    x: float | None = None  # storage CRS
    y: float | None = None
    z: float | None = None

    @property
    def district(self) -> str:
        """The district as stored ('' for none): the jurisdiction key its rows and its log carry."""
        return self.district_code or ""

    @property
    def escalated_to(self) -> str:
        return ESCALATION_LEVELS[self.escalation_level]

    def to_dict(self, mask_contact: bool = False) -> dict[str, Any]:
        """The case's fields, times as ISO text, for JSON. Shallow: the geocode answer and the attributes are
        the case's own dicts (the case is frozen; serialise them, don't change them): ``dataclasses.asdict``
        deep-copied them field by field, which cost more than the rest of an answer to ``POST /cases``."""
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        out["returned_departments"] = list(self.returned_departments)
        out["escalated_to"] = self.escalated_to
        if mask_contact:
            out["reporter_contact"] = mask(self.reporter_contact)
        return out


_FIELD_NAMES = tuple(f.name for f in fields(Case))


@dataclass(frozen=True)
class CaseEvent:
    id: int
    case_id: int
    at: datetime
    actor: str
    role: str
    action: str
    from_status: str | None
    to_status: str | None
    note: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


def mask(contact: str | None) -> str | None:
    """A reporter's contact as lists show it: 139****5678."""
    if not contact:
        return contact
    keep = 3 if len(contact) >= 10 else 1
    return contact[:keep] + "*" * max(len(contact) - keep - 4, 1) + contact[-4:] if len(contact) > 5 else "*" * len(contact)


_SELECT = (f"SELECT {', '.join('c.' + c for c in _CASE_COLUMNS)}, ST_X(c.geom) AS x, ST_Y(c.geom) AS y, "
           "ST_Z(c.geom) AS z FROM cases c")


def _case(row: sa.Row) -> Case:
    values = row._asdict()
    # stored as '' (the jurisdiction column is NOT NULL: migration 0009), served as before: no district
    values["district_code"] = values["district_code"] or None
    return Case(**values)


def _districts_of(conn: Connection, case_ids: Sequence[int]) -> dict[int, str]:
    """The stored district ('' for none) of each case: on Citus, the shard a row lock must be asked of."""
    return dict(conn.execute(sa.text("SELECT id, district_code FROM cases WHERE id = ANY(:ids)"),
                             {"ids": list(case_ids)}).all())


def get_case(conn: Connection, case_id: int, lock: bool = False, district: str | None = None) -> Case:
    """One case; ``lock`` takes its row lock until the transaction ends (actions serialise on it). ``district``
    (:attr:`Case.district`), when the caller knows it: on Citus the statement goes to that one shard."""
    if district is not None:
        row = conn.execute(sa.text(_SELECT + " WHERE c.id = :id AND c.district_code = :d"
                                   + (" FOR UPDATE" if lock else "")), {"id": case_id, "d": district}).one_or_none()
        return _case(row) if row is not None else _not_found(case_id)
    if lock and on_citus(conn):
        # Citus locks rows only in a statement routed to one shard: name the case's district (it never changes)
        return get_cases(conn, [case_id], lock=True).get(case_id) or _not_found(case_id)
    row = conn.execute(sa.text(_SELECT + " WHERE c.id = :id" + (" FOR UPDATE" if lock else "")),
                       {"id": case_id}).one_or_none()
    if row is None:
        _not_found(case_id)
    return _case(row)


def _not_found(case_id: int) -> Case:
    raise NotFoundError(f"case {case_id} does not exist")


def get_cases(conn: Connection, case_ids: Sequence[int], lock: bool = False) -> dict[int, Case]:
    """Several cases by id in one statement (ids not found are left out); ``lock`` takes their row
    locks in id order (so two such calls cannot deadlock)."""
    if not case_ids:
        return {}
    if lock and on_citus(conn):
        # one statement per district, each routed to its shard (Citus locks rows only so), in district order
        by_district: dict[str, list[int]] = {}
        for case_id, district in sorted(_districts_of(conn, case_ids).items()):
            by_district.setdefault(district, []).append(case_id)
        found: dict[int, Case] = {}
        for district, ids in sorted(by_district.items()):
            rows = conn.execute(sa.text(_SELECT + " WHERE c.district_code = :d AND c.id = ANY(:ids) ORDER BY c.id "
                                        "FOR UPDATE"), {"d": district, "ids": ids})
            found.update((case.id, case) for case in map(_case, rows))
        return dict(sorted(found.items()))
    rows = conn.execute(sa.text(_SELECT + " WHERE c.id = ANY(:ids) ORDER BY c.id" + (" FOR UPDATE" if lock else "")),
                        {"ids": list(case_ids)})
    return {case.id: case for case in map(_case, rows)}


def leading_ids(conn: Connection, case_ids: Sequence[int]) -> dict[int, int]:
    """Each case → the case its merges lead to (itself when it was not merged; where merges loop, the last
    before the loop closes). Followed a step at a time for all at once, not by a recursive query: Citus runs
    none over a distributed table."""
    lead = {i: i for i in case_ids}
    seen = {i: {i} for i in case_ids}
    todo = set(case_ids)
    while todo:
        step = dict(conn.execute(sa.text("SELECT id, merged_into FROM cases WHERE id = ANY(:ids) "
                                         "AND merged_into IS NOT NULL"), {"ids": sorted({lead[i] for i in todo})}).all())
        moved = set()
        for i in todo:
            into = step.get(lead[i])
            if into is not None and into not in seen[i]:
                lead[i] = into
                seen[i].add(into)
                moved.add(i)
        todo = moved
    return lead


def case_log(conn: Connection, case_id: int) -> list[CaseEvent]:
    rows = conn.execute(sa.text("SELECT id, case_id, at, actor, role, action, from_status, to_status, note, data "
                                "FROM case_events WHERE case_id = :id ORDER BY id"), {"id": case_id})
    return [CaseEvent(**r._asdict()) for r in rows]


def cases_changed(conn: Connection) -> None:
    """Bump the cases layer's version (tiles and ETags key on it) once in this transaction — on Citus only, where
    the writers do what the deferred trigger ``cases_bump_layer_version`` (migration 0005_case_features) does on
    one node: that trigger would run on a shard, which has no ``layers``. Every change of a case writes its log,
    so the writers of the log call this."""
    if not on_citus(conn) or conn.execute(sa.text(
            "SELECT current_setting('cim.case_features_bumped', true)")).scalar() == "1":
        return
    conn.execute(sa.text("SELECT set_config('cim.case_features_bumped', '1', true)"))
    conn.execute(sa.text("UPDATE layers SET version = version + 1, updated_at = now() "
                         "WHERE table_name = 'case_features'"))


def defer_cases_bump(conn: Connection) -> None:
    """For a set-based writer of many cases (:func:`cases.batch.write_batch`): the rows it writes from now on in
    this transaction are not queued for the per-row trigger ``cases_bump_layer_version`` (one node; its ``WHEN``
    condition, migration 0010_case_import) — the writer bumps the version once with :func:`bump_cases_layer`
    after its last write, in the same transaction, and a caller rolls the transaction back on any error before
    that, as for every write. On Citus there is no trigger (and the flag would keep :func:`cases_changed` from
    bumping): nothing to do."""
    if not on_citus(conn):
        conn.execute(sa.text("SELECT set_config('cim.case_features_bumped', '1', true)"))


def bump_cases_layer(conn: Connection) -> None:
    """Bump the cases layer's version now, once for everything this transaction wrote (one statement, set-based:
    what the per-row trigger does at the commit); later rows of the transaction are then not queued either."""
    conn.execute(sa.text("SELECT set_config('cim.case_features_bumped', '1', true); "
                         "UPDATE layers SET version = version + 1, updated_at = now() WHERE table_name = 'case_features'"))


def write_event(conn: Connection, case_id: int, at: datetime, actor: str, role: str, action: str,
                from_status: str | None, to_status: str | None, note: str | None = None,
                data: dict[str, Any] | None = None, *, district: str | None = None) -> int:
    """Append one row to the case's log (the table refuses anything but INSERT). ``district``: the case's
    (:attr:`Case.district`; ``''`` for none) — the log row carries it (on Citus, the shard it goes to); a caller
    without the case at hand leaves it out and it is read."""
    if district is None:
        district = _districts_of(conn, [case_id]).get(case_id, "")
    cases_changed(conn)
    return conn.execute(sa.text(
        "INSERT INTO case_events (case_id, at, actor, role, action, from_status, to_status, note, data, "
        "district_code) VALUES (:case_id, :at, :actor, :role, :action, :from_status, :to_status, :note, "
        "CAST(:data AS jsonb), :district) RETURNING id"),
        {"case_id": case_id, "at": at, "actor": actor, "role": role, "action": action, "from_status": from_status,
         "to_status": to_status, "note": note, "district": district,
         "data": json.dumps(data or {}, ensure_ascii=False, default=str)}).scalar_one()


@dataclass(frozen=True)
class CaseFilter:
    status: str | None = None
    class_code: str | None = None
    channel: str | None = None
    district_code: str | None = None
    street_code: str | None = None
    grid_code: str | None = None
    department_code: str | None = None
    manual: bool | None = None  # only cases in (True) or out of (False) the manual queue
    overdue: bool | None = None
    reported_from: datetime | None = None
    reported_to: datetime | None = None
    #: (xmin, ymin, xmax, ymax) in ``bbox_srid`` (the storage CRS: an API transforms a WGS84 box first)
    bbox: tuple[float, float, float, float] | None = None
    bbox_srid: int | None = None
    #: any of these (an Open311 client asks for several ids, classes or statuses at once)
    ids: tuple[int, ...] | None = None
    statuses: tuple[str, ...] | None = None
    class_codes: tuple[str, ...] | None = None


def list_cases(conn: Connection, where: CaseFilter = CaseFilter(), limit: int = 100, offset: int = 0) -> list[Case]:
    """Cases matching every given filter, newest first."""
    clauses, params = [], {"limit": limit, "offset": offset}
    for name in ("status", "class_code", "channel", "district_code", "street_code", "grid_code", "department_code"):
        value = getattr(where, name)
        if value is not None:
            clauses.append(f"c.{name} = :{name}")
            params[name] = value
    if where.manual is not None:
        clauses.append("c.manual_reason IS " + ("NOT NULL" if where.manual else "NULL"))
    if where.overdue is not None:
        clauses.append("c.overdue = :overdue")
        params["overdue"] = where.overdue
    if where.reported_from is not None:
        clauses.append("c.reported_at >= :rf")
        params["rf"] = where.reported_from
    if where.reported_to is not None:
        clauses.append("c.reported_at < :rt")
        params["rt"] = where.reported_to
    for name, column in (("ids", "id"), ("statuses", "status"), ("class_codes", "class_code")):
        values = getattr(where, name)
        if values is not None:
            clauses.append(f"c.{column} = ANY(:{name})")
            params[name] = list(values)
    if where.bbox is not None:
        clauses.append("c.geom && ST_MakeEnvelope(:b0, :b1, :b2, :b3, CAST(:bsrid AS integer))")
        params.update({f"b{i}": float(v) for i, v in enumerate(where.bbox)}, bsrid=where.bbox_srid)
    sql = _SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "") + \
        " ORDER BY c.reported_at DESC, c.id DESC LIMIT :limit OFFSET :offset"
    return [_case(r) for r in conn.execute(sa.text(sql), params)]
