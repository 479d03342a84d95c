"""``cim cases import FILE``: a hotline system's export (CSV with a header row, or a JSON array of
objects) taken in as cases.

Every row is checked first (an error names the file, row and field, and nothing is written); then
the rows go in chunks, each chunk one transaction taken in set-based (:mod:`cases.batch`): a killed
import leaves whole chunks, never a half-written case, and a rerun skips the cases already in
(their external ids are known).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from cim.errors import UserError

from cases.batch import TicketRaced, intake_batch
from cases.calendar import load_calendar
from cases.catalogue import CaseClass, class_by_code
from cases.textfile import read_text_file
from cases.intake import CHANNELS, URGENCIES, CaseReport, intake

FIELDS = ("channel", "class", "description", "address", "x", "y", "z", "crs", "urgency", "external_id",
          "reporter_contact", "reported_at")
CHUNK = 2000


@dataclass(frozen=True)
class ImportReport:
    read: int
    created: int
    known: int  # external id already in: the existing case was kept
    dispatched: int
    manual: int


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    text = read_text_file(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: expected a JSON array of objects, one per case")
        yield from ((i, r) for i, r in enumerate(data, start=1))
        return
    reader = csv.DictReader(io.StringIO(text))
    for needed in ("channel", "class"):
        if needed not in (reader.fieldnames or []):
            raise UserError(f"{path}: missing column {needed!r}; columns are {', '.join(FIELDS)}")
    yield from ((i, r) for i, r in enumerate(reader, start=2))


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
    def text(key: str) -> str | None:
        value = row.get(key)
        return None if value in (None, "") else str(value).strip()

    channel, urgency = text("channel") or "", text("urgency") or "normal"
    if channel not in CHANNELS:
        raise UserError(f"{where}: field channel: {channel!r} is not one of {', '.join(CHANNELS)}")
    if urgency not in URGENCIES:
        raise UserError(f"{where}: field urgency: {urgency!r} is not one of {', '.join(URGENCIES)}")
    reported_at = None
    if text("reported_at"):
        try:
            reported_at = datetime.fromisoformat(text("reported_at") or "")
        except ValueError:
            raise UserError(f"{where}: field reported_at: {row['reported_at']!r} is not an ISO 8601 time") from None
        if reported_at.tzinfo is None:
            raise UserError(f"{where}: field reported_at: {row['reported_at']!r} has no time zone")
    x, y = number_field(where, "x", row.get("x")), number_field(where, "y", row.get("y"))
    if (x is None) != (y is None):
        raise UserError(f"{where}: fields x, y: give both or neither")
    extra = {k: v for k, v in row.items() if k not in FIELDS and v not in (None, "")}
    return CaseReport(channel=channel, class_code=text("class") or "", description=text("description"),
                      address_text=text("address"), x=x, y=y, z=number_field(where, "z", row.get("z")),
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
    classes: dict[str, CaseClass] = {}  # class code or name → class: one query per distinct one
    with engine.connect() as conn:
        for n, row in _rows(path):
            where = f"{path}, row {n}"
            report = to_report(where, row)
            if report.class_code not in classes:
                try:
                    classes[report.class_code] = class_by_code(conn, report.class_code, parameter="class")
                except UserError as exc:
                    raise UserError(f"{where}: field {exc}") from None
            reports.append(report)
        conn.commit()  # the catalogue may have been seeded on first use
    created = known = dispatched = manual = 0
    for start in range(0, len(reports), chunk):
        part = reports[start:start + chunk]
        if one_by_one:
            with engine.begin() as conn:
                calendar = load_calendar(conn)
                for report in part:
                    result = intake(conn, report, now=now, calendar=calendar)
                    created += result.created
                    known += not result.created
                    dispatched += result.created and result.case.status == "dispatched"
                    manual += result.created and result.case.manual_reason is not None
            continue
        for attempt in (1, 2):
            try:
                with engine.begin() as conn:
                    outcomes = intake_batch(conn, part, now=now, classes=classes)
                break
            except TicketRaced:  # another intake took one of the chunk's tickets: now it is known
                if attempt == 2:
                    raise
        created += sum(o.created for o in outcomes)
        known += sum(not o.created for o in outcomes)
        dispatched += sum(o.status == "dispatched" for o in outcomes)
        manual += sum(o.created and o.manual_reason is not None for o in outcomes)
    return ImportReport(len(reports), created, known, dispatched, manual)
