"""Set-based intake: a chunk of reports taken in with a few statements in all, not ~35 per case.

The result is the one :func:`cases.intake.intake` gives for the same reports taken one after the
other (same ids, grids, parts, departments, persons, reasons, deadlines, duplicates and log); what
differs is only how it is computed:

* the addresses are geocoded in one :func:`~cim.gazetteer.geocode.geocode_many` call and the
  points put in their grids in one :func:`~cim.grid.lookup_points` call per coordinate system;
* the parts are bound in one statement (a LATERAL nearest-part join, :data:`PART_SQL`);
* the dispatch rule (:func:`cases.dispatch.rank`) runs once per distinct (grid, class), only the
  person (in turn by case id) per case; the case ids are drawn from the sequence first, in input
  order, so the person is the one the single intake would pick;
* the cases and their log rows go in with one COPY each.

All inside the caller's transaction: a chunk is in whole or not at all.
"""
from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import stored_settings
from cim.errors import UserError
from cim.gazetteer.geocode import GeocodeResult, geocode_many
from cim.gazetteer.store import LayerVersions
from cim.grid import MAX_POINTS, ChainSource, lookup_points, responsibility_for
from cim.jurisdiction import under_policies
from cim.spatial import to_storage

from cases.calendar import WorkingCalendar, load_calendar
from cases.catalogue import CaseClass, class_by_code, department_kinds
from cases.constants import IntakeConstants, classes_of
from cases.dispatch import NoDecision, Ranked, assign, rank
from cases.duplicates import ImportDuplicates
from cases.intake import (MACHINE, PART_SNAP_M, PART_SQL, CaseReport, IntakeResult, _at_point, _geocoded,
                          _Location, _unreadable, _validate, register_note)
from cases.lifecycle import now_utc
from cases.model import Case, bump_cases_layer, cases_changed, defer_cases_bump, get_cases, leading_ids


#: From this many new cases a chunk bumps the cases layer's version itself (:func:`cases.model.defer_cases_bump`
#: before its COPY, :func:`cases.model.bump_cases_layer` after: two statements, measured ~0.6 ms of the writer's
#: CPU and ~0.4 ms of the database's a chunk) instead of leaving it to the per-row trigger, whose queued calls
#: cost the database ~2.5 µs a row at the commit (4,000 in 10 ms). The API's groups of concurrent reports
#: (tens) stay below it, as before migration 0010; an import's chunks (500 and more) are above it.
SET_BASED_BUMP_ROWS = 400


class TicketRaced(Exception):
    """A ticket of the chunk was taken in by someone else meanwhile: roll back and take the chunk again."""


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one report of the chunk."""

    case_id: int
    created: bool  # False: its ticket was in already (or earlier in the chunk)
    status: str | None  # of a created case
    manual_reason: str | None
    duplicates: tuple[int, ...] = ()  # of a created case: open cases of its class nearby (merge candidates)


#: orjson as write_event's ``json.dumps(ensure_ascii=False, default=str)`` serialises: times (and
#: anything else it does not know) through ``str``, so a batch log row equals a single intake's
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


@dataclass
class BatchMemo:
    """What the chunks of one import (or the windows of one simulation) share instead of computing
    it again per chunk: the answer for each address text, the dispatch rule's post per (grid,
    class), the deadlines per (time, limit), the department kinds and the calendar. Valid while
    the gazetteer, the responsibility chains and the catalogue stay as they are: one run's length.
    A caller that keeps the gazetteer's layer versions and the grids' responsibility chains itself (the
    API's case intake, :mod:`cases.constants`) hands them in: the geocoder then reads neither again."""

    geocoded: dict[str, GeocodeResult] = field(default_factory=dict)
    ranked: dict[tuple[str, str], Ranked | NoDecision] = field(default_factory=dict)
    dues: dict[tuple[datetime, float | None, str], datetime] = field(default_factory=dict)
    kinds: dict[str, re.Pattern[str]] | None = None
    calendar: WorkingCalendar | None = None
    layer_versions: LayerVersions | None = None
    responsibility: ChainSource = responsibility_for


def _dumps(value: Any) -> str:
    """JSON text of a value, as write_event writes it; orjson (a tenth of json's time: every case
    carries its geocode answer twice, in its row and its report's log row), json for what orjson
    refuses (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=False, default=str)


#: the tickets of a chunk already in, and the ids of the cases it opens, in one statement (one round trip of a
#: group's ~8): a ticket already in, or given twice, opens no case, so the chunk opens one case for each report
#: without a ticket and one for each of its distinct tickets not found. The ids are drawn in order, as that many
#: single INSERTs would draw them, and come back after the tickets found (channel and ticket NULL). Each part a
#: materialised CTE: on Citus the tickets are an intermediate result joined with every shard, the draw the
#: coordinator's (docs/citus.md).
_KNOWN_AND_IDS = (
    "WITH q AS MATERIALIZED (SELECT * FROM json_to_recordset(CAST(:keys AS json)) "
    "AS q(channel text, external_id text)), "
    "found AS MATERIALIZED (SELECT c.channel, c.external_id, c.id FROM q JOIN cases c USING (channel, external_id)), "
    "drawn AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('cases', 'id')) AS id FROM generate_series(1, "
    "CAST(:ticketless AS integer) + (SELECT count(*) FROM q) "
    "- (SELECT count(*) FROM (SELECT DISTINCT channel, external_id FROM found) AS k)) ORDER BY 1) "
    "SELECT channel, external_id, id FROM found UNION ALL SELECT NULL, NULL, id FROM drawn")


def _known_and_ids(conn: Connection, reports: Sequence[CaseReport]) -> tuple[dict[tuple[str, str], int], list[int]]:
    """(channel, ticket) → the id of the case it leads to (through merges), for tickets already in; and the ids of
    the cases the reports open, drawn from the cases' sequence in order (:data:`_KNOWN_AND_IDS`)."""
    keys = sorted({(r.channel, r.external_id) for r in reports if r.external_id})
    rows = conn.execute(sa.text(_KNOWN_AND_IDS), {
        "keys": _dumps([{"channel": c, "external_id": e} for c, e in keys]),
        "ticketless": sum(1 for r in reports if not r.external_id)}).all()
    ids = sorted(r.id for r in rows if r.channel is None)
    found = [r for r in rows if r.channel is not None]
    return _leading(conn, found), ids


def _leading(conn: Connection, rows: Sequence[Any]) -> dict[tuple[str, str], int]:
    """(channel, ticket) → the case each found ticket's case leads to."""
    if not rows:
        return {}
    lead = leading_ids(conn, [r.id for r in rows])  # through merges (no recursive query: Citus runs none)
    return {(r.channel, r.external_id): lead[r.id] for r in rows}


def _locate_all(conn: Connection, reports: Sequence[CaseReport], srid: int,
                memo: BatchMemo | None = None) -> list[_Location]:
    """Each report's location, as :func:`cases.intake._locate` finds it, with a few statements;
    ``memo.geocoded`` (address text → answer, kept by the caller) is used and filled, so an address
    text is geocoded once per run, not once per chunk it appears in."""
    memo = BatchMemo() if memo is None else memo
    geocoded = memo.geocoded
    storage = f"EPSG:{srid}"
    out: list[_Location | None] = [None] * len(reports)
    by_crs: dict[str, list[int]] = {}
    texts: list[tuple[int, str]] = []
    for i, r in enumerate(reports):
        if r.x is not None and r.y is not None:
            by_crs.setdefault(r.crs, []).append(i)
            continue
        text = (r.address_text or "").strip()
        out[i] = _unreadable(text)
        if out[i] is None:
            texts.append((i, text))
    for crs, idx in by_crs.items():
        sx, sy = to_storage([reports[i].x for i in idx], [reports[i].y for i in idx], crs, srid)
        for start in range(0, len(idx), MAX_POINTS):
            part = slice(start, start + MAX_POINTS)
            answers = lookup_points(conn, sx[part], sy[part], storage)
            for i, x, y, answer in zip(idx[part], sx[part], sy[part], answers):
                out[i] = _at_point(float(x), float(y), float(reports[i].z or 0.0), answer, storage)
    if texts:
        unknown = list(dict.fromkeys(t for _, t in texts if t not in geocoded))
        if unknown:  # _geocoded only reads an answer, so reports of the same text share it
            geocoded.update(zip(unknown, geocode_many(conn, unknown, storage, versions=memo.layer_versions,
                                                      responsibility=memo.responsibility)))
        for i, text in texts:
            out[i] = _geocoded(text, geocoded[text], float(reports[i].z or 0.0))
    return [loc for loc in out if loc is not None]


def _parts(conn: Connection, wanted: list[tuple[int, str, _Location]], srid: int) -> dict[int, str]:
    """Row number → the part's object code, for the part class cases with a point; one statement."""
    if not wanted:
        return {}
    rows = conn.execute(sa.text(
        "SELECT q.i, p.object_code FROM json_to_recordset(CAST(:q AS json)) AS q(i int, c text, x float8, "
        "y float8, z float8) CROSS JOIN LATERAL ("
        + PART_SQL.format(cls="q.c", point="ST_SetSRID(ST_MakePoint(q.x, q.y, q.z), :srid)") + ") AS p"),
        {"q": _dumps([{"i": i, "c": c, "x": loc.x, "y": loc.y, "z": loc.z} for i, c, loc in wanted]),
         "srid": srid, "r": PART_SNAP_M}).all()
    return {r.i: r.object_code for r in rows}


#: the columns a new case's row fills (the rest keep their defaults), geom last
_COLUMNS = (
    "id", "channel", "external_id", "class_code", "urgency", "description", "address_text", "geocode",
    "district_code", "street_code", "community_code", "grid_code", "part_object_code", "reporter_contact", "status",
    "reported_at", "registered_at", "dispatched_at", "due_at", "department_code", "department_name", "post_code",
    "person_name", "person_contact", "dispatch_reason", "manual_reason", "attributes", "version", "geom")
_ROW_COLUMNS = _COLUMNS[:-1]  # those a row of prepare_batch holds as they are (the point is made of x, y, z)
_EVENT_COLUMNS = ["case_id", "at", "actor", "role", "action", "from_status", "to_status", "note", "data",
                  "district_code"]
#: duplicates_of for every new case at once: the open cases that were in when it came in (lower ids). The new
#: cases' class, time and point come with the statement (they were just written, so they equal the rows): a
#: join back to ``cases`` by id would scan the whole table once per chunk. Each new case then probes the index of
#: the open cases by class and place (``ix_cases_open_class_geom``, migration 0014_case_duplicates: its
#: predicate is the status test below, word for word) and checks the time on the few cases found there. The
#: spatial index of all cases read every case ever reported at the place, and the (class_code, reported_at)
#: index every case of the class in the window — both grow with the cases (docs/benchmarks.md). A materialised
#: CTE: on Citus an intermediate result joined with every shard (docs/citus.md).
_DUPLICATES = (
    "WITH c AS MATERIALIZED (SELECT q.id, q.k, q.at, CAST(q.g AS geometry) AS geom, q.w, q.r "
    "FROM json_to_recordset(CAST(:q AS json)) AS q(id bigint, k text, at timestamptz, g text, w float8, r float8)) "
    "SELECT c.id, array_agg(o.id ORDER BY o.reported_at, o.id) AS dups FROM c "
    "JOIN cases o ON o.class_code = c.k AND ST_DWithin(o.geom, c.geom, c.r) AND o.id < c.id "
    "AND o.status NOT IN ('closed', 'not_registered', 'merged') "
    "AND o.reported_at BETWEEN c.at - make_interval(secs => c.w * 3600) AND c.at GROUP BY c.id")


def _point(x: float | None, y: float | None, z: float | None, srid: int) -> str | None:
    """The point as hex EWKB (POINT Z with SRID): exact for every float, infinity included."""
    if x is None or y is None:
        return None
    return struct.pack("<BIIddd", 1, 0xA0000001, srid, x, y, z or 0.0).hex()


#: what COPY's text format escapes; most values hold none of it, and are sent as they are
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _field(value: Any) -> str:
    """One value in COPY's text format, escaped."""
    if value is None:
        return "\\N"
    text = value if type(value) is str else _plain(value)
    return text.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(text) else text


def _plain(value: Any) -> str:
    """A value that is neither text nor None as text (escaped later only if it needs it)."""
    kind = type(value)
    if kind is int:  # ids, versions: every row has two
        return str(value)
    if kind is datetime:
        return value.isoformat()
    if kind is float:
        return repr(value)
    if kind is dict or kind is list or isinstance(value, dict | list):
        return _dumps(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _lines(rows: list[list[Any]]) -> list[str]:
    """The rows as lines of COPY's text format. A row is joined as it is, then checked as a whole
    (its tabs are exactly the separators, its backslashes exactly the NULL markers, no line break):
    nearly every row passes, and only the others are escaped value by value with :func:`_field`."""
    out = []
    times: dict[datetime, str] = {}  # most rows share their times (the intake's now, a few deadlines)

    def plain(value: Any) -> str:
        if type(value) is datetime:
            text = times.get(value)
            if text is None:
                text = times[value] = value.isoformat()
            return text
        return _plain(value)

    for row in rows:
        line = "\t".join(["\\N" if v is None else v if type(v) is str else plain(v) for v in row])
        if (line.count("\t") != len(row) - 1 or line.count("\\") != row.count(None)
                or "\n" in line or "\r" in line):
            line = "\t".join(map(_field, row))
        out.append(line + "\n")
    return out


def _copy(conn: Connection, table: str, columns: Sequence[str], rows: list[list[Any]],
          lines: list[str] | None = None) -> None:
    """COPY rows into a table (the cheapest way in: a third of a multi-row INSERT's time); under
    row-level security, where PostgreSQL refuses COPY, one INSERT of all rows from a JSON document
    (typed by the table's own columns), which the policies check row by row. ``lines``: the rows as
    COPY text, when the caller built them beforehand (:func:`_lines`)."""
    if under_policies(conn):
        body = _dumps([dict(zip(columns, row)) for row in rows])
        names = ", ".join(columns)
        try:
            # the ids were drawn from the sequences beforehand, as for COPY (which takes them as they are)
            conn.execute(sa.text(f"INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE SELECT {names} FROM "
                                 f"json_populate_recordset(NULL::{table}, CAST(:rows AS json))"), {"rows": body})
        except sa.exc.IntegrityError as exc:
            if isinstance(exc.orig, psycopg2.errors.UniqueViolation):
                raise TicketRaced(str(exc.orig).splitlines()[0]) from None
            raise
        return
    buf = io.StringIO()
    buf.writelines(_lines(rows) if lines is None else lines)
    buf.seek(0)
    cursor = conn.connection.cursor()
    try:
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)
    except psycopg2.errors.UniqueViolation as exc:  # a ticket came in meanwhile (cases' unique index)
        raise TicketRaced(str(exc).splitlines()[0]) from None
    finally:
        cursor.close()


@dataclass
class PreparedBatch:
    """A chunk worked out (:func:`prepare_batch`: read-only, apart from drawing case ids) and not yet
    written (:func:`write_batch`)."""

    reports: Sequence[CaseReport]
    now: datetime
    classes: dict[str, CaseClass]
    known: dict[tuple[str, str], int]  # tickets already in → their case
    first_of: dict[tuple[str, str], int]  # ticket → the row number that opens its case
    new: list[int]  # row numbers of the reports that open a case
    fresh: list[CaseReport]  # those reports
    locs: list[_Location]
    case_rows: list[dict[str, Any]]
    copy_rows: list[list[Any]]  # the cases as :data:`_COLUMNS` values
    copy_lines: list[str] | None  # … and as COPY text, built beforehand (None under row-level security)
    #: their log rows as COPY text, built beforehand (None under row-level security): the report rows' duplicate
    #: suggestions, known only once the cases are in, are filled in by :func:`write_batch` (:func:`_with_duplicates`)
    event_lines: list[str] | None = None
    #: the new cases' duplicate suggestions when found beside the writer (:mod:`cases.duplicates`, an import's);
    #: None: the writer asks for them once the cases are in
    duplicates: dict[int, list[int]] | None = None


def intake_batch(conn: Connection, reports: Sequence[CaseReport], now: datetime | None = None,
                 calendar: WorkingCalendar | None = None,
                 classes: Mapping[str, CaseClass] | None = None, srid: int | None = None,
                 memo: BatchMemo | None = None) -> list[BatchOutcome]:
    """Take a chunk of reports in as cases, registered and dispatched by machine (or put in the
    manual queue), inside the caller's transaction; one outcome per report, in order. ``classes``
    (a report's class code or name → its class, as :func:`class_by_code` resolves it) may be
    passed by a caller that has them, and so may ``srid`` (the base's storage CRS) and ``memo``
    (what the chunks of one run share). Raises :class:`TicketRaced` if another intake took one of
    the chunk's tickets in meanwhile."""
    return write_batch(conn, prepare_batch(conn, reports, now, calendar, classes, srid, memo))


def prepare_batch(conn: Connection, reports: Sequence[CaseReport], now: datetime | None = None,
                  calendar: WorkingCalendar | None = None,
                  classes: Mapping[str, CaseClass] | None = None, srid: int | None = None,
                  memo: BatchMemo | None = None, duplicates: ImportDuplicates | None = None) -> PreparedBatch:
    """The first half of :func:`intake_batch`: check, locate, bind parts, draw ids, dispatch and
    build the cases' rows — reading only, so a caller may prepare the next chunk on another
    connection while the previous one is written (:func:`write_batch`). ``duplicates`` (an import's,
    kept over its chunks) finds the duplicate suggestions here instead of in :func:`write_batch`.
    It is :func:`locate_batch` (the statements) then :func:`build_batch` (Python only), which an
    import runs on two threads, a chunk apart."""
    return build_batch(locate_batch(conn, reports, now, calendar, classes, srid, memo, duplicates), duplicates)


@dataclass
class LocatedBatch:
    """A chunk checked, located, its parts bound and its ids drawn (:func:`locate_batch`), not yet dispatched
    nor turned into rows (:func:`build_batch`)."""

    reports: Sequence[CaseReport]
    now: datetime
    srid: int
    classes: dict[str, CaseClass]
    calendar: WorkingCalendar
    memo: BatchMemo
    known: dict[tuple[str, str], int]
    first_of: dict[tuple[str, str], int]
    new: list[int]
    fresh: list[CaseReport]
    locs: list[_Location]
    parts: dict[int, str]
    ids: list[int]
    chains: dict[str, Any]
    policies: bool  # the reading connection ran under row-level security: no COPY text
    earlier: dict[int, list[tuple[datetime, int]]] | None  # duplicate suggestions from before the import


def locate_batch(conn: Connection, reports: Sequence[CaseReport], now: datetime | None = None,
                 calendar: WorkingCalendar | None = None,
                 classes: Mapping[str, CaseClass] | None = None, srid: int | None = None,
                 memo: BatchMemo | None = None, duplicates: ImportDuplicates | None = None) -> LocatedBatch:
    """What :func:`prepare_batch` asks of the database: check, locate, bind parts, draw ids (and, with
    ``duplicates``, ask for the suggestions among the cases that were in before the import)."""
    for report in reports:
        _validate(report)
    if srid is None:  # a caller that knows the base's storage CRS saves the queries
        settings = stored_settings(conn)
        if settings is None:
            raise UserError("the city base is not initialised: run 'cim init'")
        srid = settings.srid
    now = now or now_utc()
    memo = memo or BatchMemo()
    calendar = calendar or memo.calendar or load_calendar(conn)
    memo.calendar = calendar
    classes = dict(classes or {})
    for report in reports:
        if report.class_code not in classes:
            classes[report.class_code] = class_by_code(conn, report.class_code)

    known, ids = _known_and_ids(conn, reports)
    new: list[int] = []  # row numbers of the reports that open a case
    first_of: dict[tuple[str, str], int] = {}
    for i, r in enumerate(reports):
        key = (r.channel, r.external_id or "")
        if r.external_id and (key in known or key in first_of):
            continue
        if r.external_id:
            first_of[key] = i
        new.append(i)
    fresh = [reports[i] for i in new]
    if len(ids) != len(fresh):  # the statement counts the reports that open a case as the loop above does
        raise RuntimeError(f"{len(ids)} case ids drawn for {len(fresh)} new cases")
    locs = _locate_all(conn, fresh, srid, memo)
    parts = _parts(conn, [(j, classes[r.class_code].code, loc) for j, (r, loc) in enumerate(zip(fresh, locs))
                          if classes[r.class_code].is_part and loc.x is not None], srid)
    # the geocoder and the grid lookup answered each grid's responsibility chain already
    chains = {loc.answer.grid.code: loc.answer.responsibility for loc in locs
              if loc.problem is None and loc.answer.grid}
    if chains and memo.kinds is None:
        memo.kinds = department_kinds(conn)
    earlier = None if duplicates is None else duplicates.earlier(
        conn, [(case_id, classes[r.class_code], loc.x, loc.y, r.reported_at or now)
               for r, loc, case_id in zip(fresh, locs, ids)])
    return LocatedBatch(reports, now, srid, classes, calendar, memo, known, first_of, new, fresh, locs, parts, ids,
                        chains, under_policies(conn), earlier)


def build_batch(located: LocatedBatch, duplicates: ImportDuplicates | None = None) -> PreparedBatch:
    """The rest of :func:`prepare_batch`, without a statement: dispatch, the cases' rows, their COPY text and
    log lines (and, with ``duplicates``, the suggestions among the import's own earlier cases). Chunks are
    built in the order they were located."""
    p = located
    now, srid, classes, calendar, chains, parts = p.now, p.srid, p.classes, p.calendar, p.chains, p.parts
    fresh, locs, ids = p.fresh, p.locs, p.ids
    kinds = p.memo.kinds or {}
    ranked, dues = p.memo.ranked, p.memo.dues

    case_rows: list[dict[str, Any]] = []
    for j, (r, loc, case_id) in enumerate(zip(fresh, locs, ids)):
        cls, a = classes[r.class_code], loc.answer
        row: dict[str, Any] = {
            "id": case_id, "channel": r.channel, "external_id": r.external_id or None, "class_code": cls.code,
            "urgency": r.urgency, "description": r.description, "address_text": r.address_text,
            "x": loc.x, "y": loc.y, "z": loc.z,
            "geocode": loc.geocode,
            "district_code": a.district.code if a.district else "",  # NOT NULL: '' for none (migration 0009)
            "street_code": a.street.code if a.street else None,
            "community_code": a.community.code if a.community else None,
            "grid_code": a.grid.code if a.grid else None, "part_object_code": parts.get(j),
            "reporter_contact": r.reporter_contact, "reported_at": r.reported_at or now,
            "registered_at": now, "attributes": r.attributes, "status": "registered",
            "manual_reason": loc.problem, "version": 2}
        if loc.problem is None:
            grid = row["grid_code"]
            found = ranked.get((grid, cls.code))
            if found is None:
                found = ranked[(grid, cls.code)] = rank(cls, grid, chains[grid], kinds)
            if isinstance(found, NoDecision):
                row.update(manual_reason=found.reason, version=3)
            else:
                chosen = assign(case_id, found)
                hours, kind = cls.limit(r.urgency)
                due = dues.get((now, hours, kind))
                if due is None:
                    due = dues[(now, hours, kind)] = calendar.add(now, hours or 0, kind)
                row.update(status="dispatched", department_code=chosen.department_code,
                           department_name=chosen.department_name, post_code=chosen.post_code,
                           person_name=chosen.person_name, person_contact=chosen.person_contact,
                           dispatch_reason=chosen.reason, dispatched_at=now, due_at=due, version=3)
        case_rows.append(row)
    copy_rows = [[*map(row.get, _ROW_COLUMNS), _point(row["x"], row["y"], row["z"], srid)]
                 for row in case_rows]
    dups = None if duplicates is None else \
        duplicates.within(case_rows, [classes[r.class_code] for r in fresh], p.earlier or {})
    policies = p.policies
    lines = None if policies else _lines(copy_rows)
    event_lines = None if policies else _event_lines(case_rows, fresh, locs, classes, now, dups)
    return PreparedBatch(p.reports, now, classes, p.known, p.first_of, p.new, fresh, locs, case_rows, copy_rows, lines,
                         event_lines, dups)


def write_batch(conn: Connection, prepared: PreparedBatch) -> list[BatchOutcome]:
    """The second half of :func:`intake_batch`: the cases and their log written (COPY), their
    duplicate suggestions found; one outcome per report of the chunk, in order. Raises
    :class:`TicketRaced` if another intake took one of the chunk's tickets in since it was prepared."""
    p = prepared
    case_rows = p.case_rows
    set_based_bump = len(case_rows) >= SET_BASED_BUMP_ROWS
    if case_rows:
        if set_based_bump:
            defer_cases_bump(conn)  # one set-based bump below, not a queued trigger call per case
        _copy(conn, "cases", _COLUMNS, p.copy_rows, p.copy_lines)
    if p.duplicates is not None:  # found while it was prepared; its log lines hold them already
        dups = p.duplicates
    else:
        dups = _duplicates(conn, [(row, p.classes[r.class_code], copy_row[-1]) for row, r, copy_row
                                  in zip(case_rows, p.fresh, p.copy_rows) if copy_row[-1] is not None])
    if case_rows:
        # no COPY under the policies (the rows themselves go in), nor for a log the marker was not found in
        event_lines = None if p.event_lines is None or under_policies(conn) else \
            p.event_lines if p.duplicates is not None else _with_duplicates(p.event_lines, case_rows, dups)
        if event_lines is None:
            _copy(conn, "case_events", _EVENT_COLUMNS, _events(case_rows, p.fresh, p.locs, p.classes, dups, p.now))
        else:
            _copy(conn, "case_events", _EVENT_COLUMNS, [], event_lines)
        if set_based_bump:
            bump_cases_layer(conn)
        else:  # one node: the rows' trigger bumps the version at the commit; Citus (no trigger): bumped here
            cases_changed(conn)

    outcomes: list[BatchOutcome | None] = [None] * len(p.reports)
    for i, row in zip(p.new, case_rows):
        outcomes[i] = BatchOutcome(row["id"], True, row["status"], row["manual_reason"],
                                   tuple(dups.get(row["id"], ())))
    for i, r in enumerate(p.reports):
        if outcomes[i] is None:
            key = (r.channel, r.external_id or "")
            first = p.first_of.get(key)
            case_id = p.known[key] if key in p.known else outcomes[first].case_id  # type: ignore[union-attr]
            outcomes[i] = BatchOutcome(case_id, False, None, None)
    return [o for o in outcomes if o is not None]


def _duplicates(conn: Connection, cases: list[tuple[dict[str, Any], CaseClass, str]]) -> dict[int, list[int]]:
    """Case id → its duplicate suggestions, for new cases given as (their row, class, point as hex EWKB)."""
    if not cases:
        return {}
    rows = conn.execute(sa.text(_DUPLICATES), {"q": _dumps(
        [{"id": row["id"], "k": cls.code, "at": row["reported_at"], "g": point, "w": cls.duplicate_window_h,
          "r": cls.duplicate_radius_m} for row, cls, point in cases])})
    return {r.id: list(r.dups) for r in rows}


#: how a report row's log data ends before its duplicate suggestions are known (:func:`_events` puts the key last)
_NO_DUPLICATES = '"possible_duplicates":[]}'


def _event_lines(case_rows: list[dict[str, Any]], reports: Sequence[CaseReport], locs: Sequence[_Location],
                 classes: dict[str, CaseClass], now: datetime,
                 dups: dict[int, list[int]] | None = None) -> list[str]:
    """The rows of :func:`_events` (no duplicate suggestions yet) as COPY lines, written straight from their
    values: of the ten columns of a log row most are the same for every case (the time, the machine, actions
    and statuses, each class's note), and only the free texts and the data are escaped, each value as
    :func:`_field` escapes it — what :func:`_lines` makes of :func:`_events`'s rows (tests/test_cases_batch.py
    compares the two), at a fraction of its time."""
    at = now.isoformat()
    notes: dict[str, str] = {}  # the register line's middle, per class
    out: list[str] = []
    append = out.append
    for row, r, loc in zip(case_rows, reports, locs):
        code = classes[r.class_code].code
        note = notes.get(code)
        if note is None:
            note = notes[code] = _field(register_note(classes[r.class_code]))
        head, tail = f"{row['id']}\t{at}\t", f"\t{_field(row['district_code'])}\n"
        data = {"geocode": loc.geocode, "part_object_code": row["part_object_code"], "manual_reason": loc.problem,
                "possible_duplicates": dups.get(row["id"], []) if dups else []}
        append(f"{head}{_field(r.channel)}\treporter\treport\t\\N\treported\t{_field(r.description)}\t"
               f"{_field(_dumps(data))}{tail}")
        append(f"{head}{MACHINE}\tsystem\tregister\treported\tregistered\t{note}\t{{}}{tail}")
        if row["status"] == "dispatched":
            data = {"department_code": row["department_code"], "post_code": row["post_code"],
                    "person_name": row["person_name"], "due_at": row["due_at"]}
            append(f"{head}{MACHINE}\tsystem\tdispatch\tregistered\tdispatched\t{_field(row['dispatch_reason'])}\t"
                   f"{_field(_dumps(data))}{tail}")
        else:
            append(f"{head}{MACHINE}\tsystem\tto_manual_queue\tregistered\tregistered\t"
                   f"{_field(row['manual_reason'])}\t{{}}{tail}")
    return out


def _with_duplicates(lines: list[str], case_rows: list[dict[str, Any]],
                     dups: dict[int, list[int]]) -> list[str] | None:
    """The log's COPY lines (three a case, the report first, as :func:`_events` makes them) with each report's
    duplicate suggestions filled in; None if a report's line does not end its data as orjson writes it."""
    if not dups:
        return lines
    out = list(lines)
    for k, row in enumerate(case_rows):
        found = dups.get(row["id"])
        if found:
            line = out[3 * k]
            at = line.rfind(_NO_DUPLICATES)
            if at < 0:
                return None
            out[3 * k] = (f'{line[:at]}"possible_duplicates":[{",".join(map(str, found))}]}}'
                          f'{line[at + len(_NO_DUPLICATES):]}')
    return out


def _events(case_rows: list[dict[str, Any]], reports: Sequence[CaseReport], locs: Sequence[_Location],
            classes: dict[str, CaseClass], dups: dict[int, list[int]], now: datetime) -> list[list[Any]]:
    """The log rows the single intake writes, as :data:`_EVENT_COLUMNS` lists: report, register,
    then dispatch or to_manual_queue."""
    out: list[list[Any]] = []
    notes: dict[str, str] = {}  # the register note of each class
    for row, r, loc in zip(case_rows, reports, locs):
        case_id, cls = row["id"], classes[r.class_code]
        note = notes.get(cls.code)
        if note is None:
            note = notes[cls.code] = register_note(cls)
        out.append([case_id, now, r.channel, "reporter", "report", None, "reported", r.description,
                    {"geocode": loc.geocode, "part_object_code": row["part_object_code"],
                     "manual_reason": loc.problem, "possible_duplicates": dups.get(case_id, [])},
                    row["district_code"]])
        out.append([case_id, now, MACHINE, "system", "register", "reported", "registered", note, {},
                    row["district_code"]])
        if row["status"] == "dispatched":
            out.append([case_id, now, MACHINE, "system", "dispatch", "registered", "dispatched", row["dispatch_reason"],
                        {"department_code": row["department_code"], "post_code": row["post_code"],
                         "person_name": row["person_name"], "due_at": row["due_at"]}, row["district_code"]])
        else:
            out.append([case_id, now, MACHINE, "system", "to_manual_queue", "registered", "registered",
                        row["manual_reason"], {}, row["district_code"]])
    return out


def intake_each(conn: Connection, reports: Sequence[CaseReport], now: datetime | None = None,
                srid: int | None = None, constants: IntakeConstants | None = None) -> list[IntakeResult | UserError]:
    """Independent reports (concurrent HTTP requests gathered into one transaction) taken in as one
    batch: per report its :class:`IntakeResult` — as :func:`cases.intake.intake` gives it — or the
    :class:`UserError` that report alone raises (bad channel, unknown class …), which does not
    keep the others out. ``constants`` (kept by a server, :mod:`cases.constants`) spare reading the
    catalogue, department kinds and calendar again. A new case is answered from the row the batch
    wrote, not read back; a ticket already in, from the database. Raises :class:`TicketRaced` like
    :func:`intake_batch`."""
    out: list[IntakeResult | UserError | None] = [None] * len(reports)
    classes: dict[str, CaseClass] = {}
    found = classes_of(conn, sorted({r.class_code for r in reports}), constants)
    for i, report in enumerate(reports):
        try:
            _validate(report)
            cls = found[report.class_code]
            if isinstance(cls, UserError):
                raise cls
            classes[report.class_code] = cls
        except UserError as exc:
            out[i] = exc
    ok = [i for i, o in enumerate(out) if o is None]
    if not ok:
        return [o for o in out if o is not None]
    memo = None if constants is None else BatchMemo(kinds=constants.kinds, calendar=constants.calendar,
                                                    layer_versions=constants.layer_versions,
                                                    responsibility=constants.chains)
    prepared = prepare_batch(conn, [reports[i] for i in ok], now, classes=classes, srid=srid, memo=memo)
    outcomes = write_batch(conn, prepared)
    zone = _session_zone(conn)
    cases = {row["id"]: case_of_row(row, zone) for row in prepared.case_rows}
    cases.update(get_cases(conn, sorted({o.case_id for o in outcomes} - set(cases))))
    for i, o in zip(ok, outcomes):
        out[i] = IntakeResult(cases[o.case_id], o.created, list(o.duplicates))
    return [o for o in out if o is not None]


#: a new case's columns that the batch's row leaves to the table's defaults, as the table fills them
_DEFAULTS = {"suspended_status": None, "handled_at": None, "closed_at": None, "remaining_hours": None,
             "overdue": False, "escalation_level": 0, "returned_departments": [], "rework_count": 0,
             "extension_count": 0, "extension_requested_hours": None, "merged_into": None}
_CASE_FIELDS = tuple(f.name for f in fields(Case))
_ZONE = "cases.batch.session_zone"  # conn.info key: the session's time zone


def _session_zone(conn: Connection) -> tzinfo | None:
    """The time zone the connection's session gives times in (learnt once per database connection), so
    an answer built here writes its times as one read back would; None if Python does not know it."""
    if _ZONE not in conn.info:
        name = conn.execute(sa.text("SHOW TimeZone")).scalar()
        try:
            conn.info[_ZONE] = ZoneInfo(name)
        except (ValueError, ZoneInfoNotFoundError):
            conn.info[_ZONE] = None
    return conn.info[_ZONE]


def case_of_row(row: Mapping[str, Any], zone: tzinfo | None = None) -> Case:
    """The :class:`Case` a row of :func:`prepare_batch` becomes once written — what reading it back
    would give (tests/test_cases_batch.py compares the two), without the statement; times in ``zone``
    (the session's, as the database gives them)."""
    values = {**_DEFAULTS, **{name: row.get(name) for name in _CASE_FIELDS if name in row}}
    if zone is not None:
        values.update({k: v.astimezone(zone) for k, v in values.items() if isinstance(v, datetime)})
    values["returned_departments"] = list(values["returned_departments"])
    if row.get("x") is None:  # no point: no geometry, so no coordinates either
        values.update(x=None, y=None, z=None)
    values["district_code"] = values["district_code"] or None  # written as '', read back as no district
    return Case(**{name: values.get(name) for name in _CASE_FIELDS})
