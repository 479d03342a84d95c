"""``cim vitals load FILE``: values of the fed indicators (those a city fills from its own feeds: air
quality, traffic, hospital beds …) per area and time, from a CSV with the columns
``indicator, level, area_code, time, value``.

The file is taken whole or not at all: an unknown indicator, an indicator the platform computes
itself, a level the indicator is not kept at, an area that is not in the base, a time without offset
(:func:`cim.times.parse_instant`) or a value that is not a finite number rejects the file, naming
every row and field at fault (up to :data:`MAX_ERRORS`). A row for a key already stored replaces it.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.textfile import read_text_file
from cim.errors import UserError
from cim.times import day_start, parse_instant
from vitals.catalogue import ensure_catalogue, list_indicators
from vitals.compute import CITY_CODE

COLUMNS = ("indicator", "level", "area_code", "time", "value")
MAX_ERRORS = 20
#: the areas of a level the base holds now
_AREAS = {
    "district": "SELECT DISTINCT code FROM districts WHERE valid_to IS NULL",
    "street": "SELECT DISTINCT code FROM streets WHERE valid_to IS NULL",
    "grid": "SELECT DISTINCT grid_code FROM grids WHERE valid_to IS NULL",
}


@dataclass
class FeedReport:
    file: str
    rows: int
    written: int  # new or replaced values

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "rows": self.rows, "written": self.written}


def parse_feed(conn: Connection, text: str, source: str) -> list[dict[str, object]]:
    """The rows of a feed file, every one checked against the catalogue and the base's areas."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    indicators = {i.code: i for i in list_indicators(conn)}
    areas: dict[str, set[str]] = {"city": {CITY_CODE}}
    errors: list[str] = []
    rows: list[dict[str, object]] = []
    for n, row in enumerate(reader, start=2):
        where = f"{source}, row {n}"
        if len(errors) >= MAX_ERRORS:
            errors.append(f"{source}: … (stopped after {MAX_ERRORS} errors)")
            break
        code, level, area = ((row.get(k) or "").strip() for k in ("indicator", "level", "area_code"))
        ind = indicators.get(code)
        if ind is None:
            errors.append(f"{where}: field indicator: {code!r} is not in the catalogue")
            continue
        if not ind.fed:
            errors.append(f"{where}: field indicator: {code} is computed by the platform ({ind.compute}), "
                          "not fed from a file")
            continue
        if level not in ind.levels:
            errors.append(f"{where}: field level: {level!r} is not a level of {code} ({', '.join(ind.levels)})")
            continue
        if level not in areas:
            areas[level] = set(conn.execute(sa.text(_AREAS[level])).scalars())
        if area not in areas[level]:
            errors.append(f"{where}: field area_code: no {level} {area!r} in the base")
            continue
        try:
            when = parse_instant(row.get("time") or "", "time")
        except UserError as exc:
            errors.append(f"{where}: field time: {exc}")
            continue
        at = when if isinstance(when, datetime) else day_start(when)
        text_value = (row.get("value") or "").strip()
        try:
            value = float(text_value)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            errors.append(f"{where}: field value: {text_value!r} is not a finite number")
            continue
        rows.append({"indicator": code, "level": level, "area_code": area, "at": at, "value": value,
                     "direction": ind.direction, "yellow": ind.yellow, "red": ind.red})
    if errors:
        raise UserError(f"{source}: file rejected, nothing loaded:\n" + "\n".join(errors))
    return rows


def load_feed(conn: Connection, path: Path) -> FeedReport:
    """Check and store a feed file in the caller's transaction."""
    ensure_catalogue(conn)
    rows = parse_feed(conn, read_text_file(path), str(path))
    if rows:
        conn.execute(sa.text(
            "INSERT INTO vital_values (indicator, level, area_code, at, value, status, source) "
            "VALUES (:indicator, :level, :area_code, :at, :value, vital_status(:value, :direction, :yellow, :red), "
            "'fed') ON CONFLICT (indicator, level, area_code, at) DO UPDATE SET value = EXCLUDED.value, "
            "status = EXCLUDED.status, written_at = now()"), rows)
    return FeedReport(str(path), len(rows), len(rows))
