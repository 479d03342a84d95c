"""``cim cases import FILE``: a hotline system's export (CSV with a header row, or a JSON array of
objects) taken in as cases.

Every row is checked first (an error names the file, row and field, and nothing is written); then
the rows go in chunks, each chunk one transaction taken in set-based (:mod:`cases.batch`): a killed
import leaves whole chunks, never a half-written case, and a rerun skips the cases already in
(their external ids are known).
"""
from __future__ import annotations

import contextvars
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cim.bootstrap import stored_settings
from cim.errors import UserError

from cases.batch import (BatchMemo, BatchOutcome, LocatedBatch, PreparedBatch, TicketRaced, build_batch, intake_batch,
                          locate_batch, prepare_batch, write_batch)
from cases.calendar import load_calendar
from cases.model import bump_cases_layer
from cases.catalogue import CaseClass, classes_for
from cases.duplicates import ImportDuplicates
from cases.lifecycle import now_utc
from cases.textfile import read_records
from cases.intake import CHANNELS, URGENCIES, CaseReport, intake

FIELDS = ("channel", "class", "description", "address", "x", "y", "z", "crs", "urgency", "external_id",
          "reporter_contact", "reported_at")
_KNOWN = frozenset(FIELDS)
CHUNK = 2000
T = TypeVar("T")
#: the smallest chunk the pipeline's start and end are cut into (:func:`chunk_spans`)
RAMP_MIN = 200


@dataclass(frozen=True)
class ImportReport:
    read: int
    created: int
    known: int  # external id already in: the existing case was kept
    dispatched: int
    manual: int


def number_field(where: str, key: str, value: Any) -> float | None:
    """An optional number field of a row: empty is None; anything else must be a number (the error names
    the row and the field)."""
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: field {key}: {value!r} is not a number") from None


def to_report(where: str, row: dict[str, Any]) -> CaseReport:
    """One row as a report, checked; errors name the row and field."""
    get = row.get

    def text(key: str) -> str | None:
        value = get(key)
        return None if value is None or value == "" else str(value).strip()

    channel, urgency = text("channel") or "", text("urgency") or "normal"
    if channel not in CHANNELS:
        raise UserError(f"{where}: field channel: {channel!r} is not one of {', '.join(CHANNELS)}")
    if urgency not in URGENCIES:
        raise UserError(f"{where}: field urgency: {urgency!r} is not one of {', '.join(URGENCIES)}")
    reported_at = None
    when = text("reported_at")
    if when:
        try:
            reported_at = datetime.fromisoformat(when)
        except ValueError:
            raise UserError(f"{where}: field reported_at: {row['reported_at']!r} is not an ISO 8601 time") from None
        if reported_at.tzinfo is None:
            raise UserError(f"{where}: field reported_at: {row['reported_at']!r} has no time zone")
    x, y = number_field(where, "x", get("x")), number_field(where, "y", get("y"))
    if (x is None) != (y is None):
        raise UserError(f"{where}: fields x, y: give both or neither")
    # a CSV row holds the columns of its header, nearly always FIELDS or fewer: no extra to look for then
    extra = {} if _KNOWN.issuperset(row) else \
        {k: v for k, v in row.items() if k not in _KNOWN and v is not None and v != ""}
    return CaseReport(channel=channel, class_code=text("class") or "", description=text("description"),
                      address_text=text("address"), x=x, y=y, z=number_field(where, "z", get("z")),
                      crs=text("crs") or "EPSG:4326", urgency=urgency, external_id=text("external_id"),
                      reporter_contact=text("reporter_contact"), reported_at=reported_at, attributes=extra)


def import_cases(engine: Engine, path: Path, now: datetime | None = None, chunk: int = CHUNK,
                 one_by_one: bool = False) -> ImportReport:
    """Take the file's rows in as cases, ``chunk`` rows per transaction, set-based
    (:func:`cases.batch.intake_batch`) or, with ``one_by_one``, through the single intake (the
    reference the batch must equal, kept for comparison and the benchmark)."""
    if chunk < 1:
        raise UserError(f"chunk: {chunk} is not a positive number of rows")
    reports: list[CaseReport] = []
    wheres: list[str] = []
    row_error: UserError | None = None  # the first row that is wrong in itself; rows after it are not read
    for where, row in read_records(path, one="case", needed=("channel", "class"), columns=FIELDS):
        try:
            reports.append(to_report(where, row))
        except UserError as exc:
            row_error = exc
            break
        wheres.append(where)
    with engine.connect() as conn:  # every class code or name of the file in one statement
        found = classes_for(conn, list(dict.fromkeys(r.class_code for r in reports)), parameter="class")
        conn.commit()  # the catalogue may have been seeded on first use
    for report, where in zip(reports, wheres):  # the first error in row order wins
        cls = found[report.class_code]
        if isinstance(cls, UserError):
            raise UserError(f"{where}: field {cls}") from None
    if row_error is not None:
        raise row_error
    classes: dict[str, CaseClass] = {key: cls for key, cls in found.items() if isinstance(cls, CaseClass)}
    if one_by_one:
        return _one_by_one(engine, reports, now, chunk)
    with _collections_paused():
        return _pipelined(engine, reports, now, chunk, classes)


@contextmanager
def _collections_paused() -> Iterator[None]:
    """No cyclic garbage collection while the chunks go in. They make no reference cycles worth
    collecting, but hundreds of thousands of objects (rows, answers, COPY text) that live for a chunk
    each, and every full collection walked all of them and the file's reports: a sixth of the
    import's CPU time (measured, 20,000 rows). What cycles there are are collected afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _one_by_one(engine: Engine, reports: list[CaseReport], now: datetime | None, chunk: int) -> ImportReport:
    created = known = dispatched = manual = 0
    for start in range(0, len(reports), chunk):
        with engine.begin() as conn:
            calendar = load_calendar(conn)
            for report in reports[start:start + chunk]:
                result = intake(conn, report, now=now, calendar=calendar)
                created += result.created
                known += not result.created
                dispatched += result.created and result.case.status == "dispatched"
                manual += result.created and result.case.manual_reason is not None
    return ImportReport(len(reports), created, known, dispatched, manual)


def chunk_spans(n: int, chunk: int) -> list[tuple[int, int]]:
    """The (start, end) row ranges of the transactions, in order. The pipeline (:func:`_pipelined`) prepares a
    chunk while the one before it is written; the first chunk is prepared with nothing to write beside it, and
    the last one written with nothing to prepare — so the first and the last are a quarter of ``chunk`` (when
    that is at least :data:`RAMP_MIN` rows), and the two cores wait on each other for a quarter of a chunk at
    each end instead of a whole one. Not smaller nor more of them: every chunk costs its own statements (a
    geocoding pass, the tickets, the ids, the duplicates: ≈ 40 ms of the reading connection's CPU measured,
    20,000 rows in 15 chunks against 10). Every chunk is at most ``chunk`` rows, and each is one transaction."""
    ramp = [size for size in (chunk // 4,) if size >= RAMP_MIN]
    sizes: list[int] = []
    left = n
    for size in ramp:
        if left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
    tail: list[int] = []
    for size in ramp:  # taken from the end, the smallest last, while a whole chunk stays before them
        if left - size >= chunk:
            tail.insert(0, size)
            left -= size
    while left > 0:
        sizes.append(min(chunk, left))
        left -= sizes[-1]
    sizes += tail
    spans, start = [], 0
    for size in sizes:
        spans.append((start, start + size))
        start += size
    return spans


def _write(engine: Engine, prepared: PreparedBatch, last: bool) -> list[BatchOutcome]:
    """One chunk in one transaction: a killed import keeps whole chunks. Every chunk but the last commits
    without waiting for its WAL to reach the disk (``synchronous_commit = off`` for that transaction: still
    atomic, and the server's WAL writer flushes it within a fraction of a second); the last one waits, and
    its flush takes every chunk before it along (the WAL is one sequence) — so once the import reports,
    all of it is on disk, as before, without a disk wait per chunk on the writer's path."""
    with engine.begin() as conn:
        if not last:
            conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        outcomes = write_batch(conn, prepared)
        if last and not prepared.case_rows:
            # the last chunk wrote nothing (every ticket known), so its commit flushes nothing: write the
            # layer's version (one row), so this commit waits for the WAL of the chunks before it
            bump_cases_layer(conn)
        return outcomes


def _pipelined(engine: Engine, reports: list[CaseReport], now: datetime | None, chunk: int,
               classes: dict[str, CaseClass]) -> ImportReport:
    """The chunks set-based, three at a time: while one is written (COPY, log, commit — the database's
    work) on one connection, the next is built (dispatch, duplicate suggestions, the COPY text — Python's
    alone) and the one after it located on another connection (geocoding, grid lookup, parts, ids — the
    statements, while Python waits), so the two cores work at once and neither waits on the reading
    connection's statements.

    Preparing only reads, so it may run before the chunk ahead is committed; the one thing it
    could not see, a ticket that chunk opens, is kept out of the chunk beforehand (``seen``): the
    file's later rows of a ticket are "already in". A chunk whose write finds one of its tickets taken
    in meanwhile (another intake, :class:`TicketRaced`) is taken again alone, and the chunk
    prepared behind it is prepared again after it, so case ids keep the file's order."""
    created = known = dispatched = manual = 0
    memo = BatchMemo()  # an address text is geocoded, a (grid, class) ranked, once per import
    seen: set[tuple[str, str]] = set()
    srid: int | None = None
    # the duplicate suggestions found while preparing, not by the writer (cases.duplicates); after a chunk
    # whose ticket raced in (rare) the writer finds them again, as it sees what was really written
    duplicates: ImportDuplicates | None = None

    def fresh_part(start: int, end: int) -> list[CaseReport]:
        nonlocal known
        out = []
        for r in reports[start:end]:
            if r.external_id:
                key = (r.channel, r.external_id)
                if key in seen:
                    known += 1
                    continue
                seen.add(key)
            out.append(r)
        return out

    def prepare(reader: Connection, part: list[CaseReport]) -> PreparedBatch:
        try:
            return prepare_batch(reader, part, now=now, classes=classes, memo=memo, duplicates=duplicates,
                                 srid=srid)
        finally:
            reader.rollback()  # nothing to keep: it only read (case ids are drawn for good)

    def count(outcomes: list[BatchOutcome]) -> None:
        nonlocal created, known, dispatched, manual
        created += sum(o.created for o in outcomes)
        known += sum(not o.created for o in outcomes)
        dispatched += sum(o.status == "dispatched" for o in outcomes)
        manual += sum(o.created and o.manual_reason is not None for o in outcomes)

    def locate(reader: Connection, part: list[CaseReport]) -> LocatedBatch:
        try:
            return locate_batch(reader, part, now=now, classes=classes, memo=memo, duplicates=duplicates, srid=srid)
        finally:
            reader.rollback()

    def submit(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> Future[T]:
        # in this thread's context: the caller's jurisdiction (``cim --as``) and name go with the statements
        return executor.submit(contextvars.copy_context().run, fn, *args)

    spans = chunk_spans(len(reports), chunk)
    parts = [fresh_part(start, end) for start, end in spans]
    # the reader is closed last: the threads are done with it by then
    with engine.connect() as reader, ThreadPoolExecutor(1, thread_name_prefix="cases-import-writer") as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="cases-import-locator") as locator:
        if reports:
            earliest = min(r.reported_at or now or now_utc() for r in reports)
            settings = stored_settings(reader)
            if settings is None:
                raise UserError("the city base is not initialised: run 'cim init'")
            srid = settings.srid  # once, not per chunk
            duplicates = ImportDuplicates.start(reader, list(classes.values()), earliest, srid)
            reader.rollback()
        located = submit(locator, locate, reader, parts[0]) if parts else None
        ahead: tuple[list[CaseReport], Future[list[BatchOutcome]]] | None = None
        for k, part in enumerate(parts):
            here = located.result()  # type: ignore[union-attr]
            located = submit(locator, locate, reader, parts[k + 1]) if k + 1 < len(parts) else None
            prepared = build_batch(here, duplicates)
            if ahead is not None:
                part_ahead, written = ahead
                try:
                    count(written.result())
                except TicketRaced:  # taken in meanwhile: now known; this chunk (and the next) again behind it
                    duplicates = None
                    if located is not None:
                        wait([located])  # the reader is the locator's until it is done; its ids are not used
                    with engine.begin() as conn:
                        count(intake_batch(conn, part_ahead, now=now, classes=classes, memo=memo))
                    prepared = prepare(reader, part)
                    located = submit(locator, locate, reader, parts[k + 1]) if k + 1 < len(parts) else None
            ahead = (part, submit(writer, _write, engine, prepared, k == len(parts) - 1))
        if ahead is not None:
            part_ahead, written = ahead
            try:
                count(written.result())
            except TicketRaced:
                with engine.begin() as conn:
                    count(intake_batch(conn, part_ahead, now=now, classes=classes, memo=memo))
    return ImportReport(len(reports), created, known, dispatched, manual)
