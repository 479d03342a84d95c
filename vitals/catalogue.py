"""The indicator catalogue (城市生命体征指标): code, names, dimension of the six, unit, how it is computed,
thresholds with their direction, the levels it is computed at and the window it looks back over.

The packaged CSV (``vitals/data/indicators.csv``) seeds a base on first use, like the case catalogue;
``cim vitals catalogue load [FILE]`` writes it again (or a city's own file: new indicators, other
thresholds). ``compute`` names a measure of :mod:`vitals.measures` (the platform computes it) or is
``fed``: the city fills its values from its own feeds (``cim vitals load``).
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.textfile import read_text_file
from cim.errors import ParameterError, UserError
from vitals.measures import known_computations

DIMENSIONS = ("基础设施", "城市环境", "城市交通", "城市保障", "城市安全", "城市活力")
DIMENSION_EN = {"基础设施": "infrastructure", "城市环境": "environment", "城市交通": "traffic",
                "城市保障": "services", "城市安全": "safety", "城市活力": "vitality"}
LEVELS = ("city", "district", "street", "grid")
DIRECTIONS = ("higher_worse", "lower_worse")
FED = "fed"
COLUMNS = ("code", "name_zh", "name_en", "dimension", "unit", "compute", "direction", "yellow", "red", "levels",
           "window", "description")
_CODE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_WINDOW = re.compile(r"^[1-9][0-9]{0,4} (minutes|hours|days)$")


@dataclass(frozen=True)
class Indicator:
    code: str
    name_zh: str
    name_en: str
    dimension: str
    unit: str
    compute: str
    direction: str
    yellow: float | None
    red: float | None
    levels: tuple[str, ...]
    window: str | None
    description: str | None

    @property
    def fed(self) -> bool:
        return self.compute == FED

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = list(self.levels)
        out["dimension_en"] = DIMENSION_EN[self.dimension]
        out["source"] = "fed" if self.fed else "computed"
        return out


def _field(row: dict[str, str | None], key: str) -> str | None:
    value = (row.get(key) or "").strip()
    return value or None


def _threshold(where: str, row: dict[str, str | None], key: str) -> float | None:
    text = _field(row, key)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: field {key}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: field {key}: {text!r} is not a finite number")
    return value


def parse_indicators(text: str, source: str) -> list[Indicator]:
    """The rows of a catalogue CSV, checked; every error names the file, row and field."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    computations = known_computations()
    out: list[Indicator] = []
    seen: set[str] = set()
    for n, row in enumerate(reader, start=2):
        where = f"{source}, row {n}"
        code = _field(row, "code")
        if code is None or not _CODE.match(code):
            raise UserError(f"{where}: field code: {code!r} is not a code (lower-case letters, digits, _; "
                            "starting with a letter)")
        if code in seen:
            raise UserError(f"{where}: field code: {code} appears twice")
        seen.add(code)
        for key in ("name_zh", "name_en", "unit"):
            if _field(row, key) is None:
                raise UserError(f"{where}: field {key}: empty")
        dimension = _field(row, "dimension")
        if dimension not in DIMENSIONS:
            raise UserError(f"{where}: field dimension: {dimension!r} is not one of {', '.join(DIMENSIONS)}")
        compute = _field(row, "compute")
        if compute != FED and compute not in computations:
            raise UserError(f"{where}: field compute: {compute!r} is neither 'fed' nor a measure of vitals.measures "
                            f"({', '.join(sorted(computations))})")
        direction = _field(row, "direction")
        if direction not in DIRECTIONS:
            raise UserError(f"{where}: field direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")
        yellow, red = _threshold(where, row, "yellow"), _threshold(where, row, "red")
        if (yellow is None) != (red is None):
            raise UserError(f"{where}: fields yellow, red: give both thresholds or neither")
        if yellow is not None and red is not None and (red < yellow if direction == "higher_worse" else red > yellow):
            raise UserError(f"{where}: fields yellow, red: with direction {direction} red ({red:g}) must be "
                            f"{'at or above' if direction == 'higher_worse' else 'at or below'} yellow ({yellow:g})")
        levels = tuple(x.strip() for x in (_field(row, "levels") or "").split(";") if x.strip())
        bad = [x for x in levels if x not in LEVELS]
        if not levels or bad:
            raise UserError(f"{where}: field levels: {_field(row, 'levels')!r}: a ';' list of "
                            f"{', '.join(LEVELS)}")
        window = _field(row, "window")
        if window is not None and not _WINDOW.match(window):
            raise UserError(f"{where}: field window: {window!r} is not like '60 minutes', '24 hours' or '30 days'")
        out.append(Indicator(code=code, name_zh=_field(row, "name_zh"), name_en=_field(row, "name_en"),  # type: ignore[arg-type]
                             dimension=dimension, unit=_field(row, "unit"), compute=compute,  # type: ignore[arg-type]
                             direction=direction, yellow=yellow, red=red, levels=levels, window=window,
                             description=_field(row, "description")))
    return out


def packaged_text() -> str:
    return resources.files("vitals.data").joinpath("indicators.csv").read_text(encoding="utf-8")


def write_indicators(conn: Connection, indicators: list[Indicator]) -> int:
    """Insert or update the indicators; returns how many rows changed. Statuses already stored keep
    the thresholds they were computed with (a time series records what was said then)."""
    rows = [{**asdict(i), "levels": list(i.levels)} for i in indicators]
    if not rows:
        return 0
    cols = ("code", "name_zh", "name_en", "dimension", "unit", "compute", "direction", "yellow", "red", "levels",
            "window_text", "description")
    result = conn.execute(sa.text(
        f"INSERT INTO vital_indicators ({', '.join(cols)}) VALUES (:code, :name_zh, :name_en, :dimension, :unit, "
        ":compute, :direction, :yellow, :red, :levels, :window, :description) ON CONFLICT (code) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[1:])
        + f" WHERE ({', '.join('vital_indicators.' + c for c in cols[1:])}) IS DISTINCT FROM "
          f"({', '.join('EXCLUDED.' + c for c in cols[1:])})"), rows)
    return result.rowcount


def load_catalogue(conn: Connection, path: Path | None = None) -> int:
    """``cim vitals catalogue load [FILE]``: the packaged catalogue, or a city's CSV (UTF-8)."""
    if path is None:
        return write_indicators(conn, parse_indicators(packaged_text(), "vitals/data/indicators.csv"))
    return write_indicators(conn, parse_indicators(read_text_file(path), str(path)))


_SEEDED = "vitals.catalogue.seeded"


def ensure_catalogue(conn: Connection) -> None:
    """Seed the packaged catalogue into a base that has none yet (once per database connection)."""
    if conn.info.get(_SEEDED):
        return
    if conn.execute(sa.text("SELECT to_regclass('vital_indicators') IS NULL")).scalar():
        raise UserError("the base has no vital-sign tables: run 'cim init' to bring it to the current schema")
    if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM vital_indicators)")).scalar():
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(4549013)"))  # one seeder at a time
        if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM vital_indicators)")).scalar():
            load_catalogue(conn)
            return  # not remembered: this transaction may still roll back
    conn.info[_SEEDED] = True


def _from_row(row: sa.Row) -> Indicator:
    return Indicator(code=row.code, name_zh=row.name_zh, name_en=row.name_en, dimension=row.dimension, unit=row.unit,
                     compute=row.compute, direction=row.direction, yellow=row.yellow, red=row.red,
                     levels=tuple(row.levels), window=row.window_text, description=row.description)


def list_indicators(conn: Connection, dimension: str | None = None, source: str | None = None) -> list[Indicator]:
    """The catalogue, by dimension (in the order of the six) and code; ``source`` computed or fed."""
    ensure_catalogue(conn)
    if dimension is not None and dimension not in DIMENSIONS:
        english = {v: k for k, v in DIMENSION_EN.items()}
        if dimension not in english:
            raise ParameterError("dimension", f"dimension: {dimension!r} is not one of "
                                              f"{', '.join(DIMENSIONS)} ({', '.join(english)})")
        dimension = english[dimension]
    if source is not None and source not in ("computed", "fed"):
        raise ParameterError("source", f"source: {source!r} is not computed or fed")
    rows = conn.execute(sa.text(
        "SELECT * FROM vital_indicators WHERE (CAST(:d AS text) IS NULL OR dimension = :d) "
        "AND (CAST(:s AS text) IS NULL OR (compute = 'fed') = (CAST(:s AS text) = 'fed')) "
        "ORDER BY array_position(CAST(:dims AS text[]), dimension), code"),
        {"d": dimension, "s": source, "dims": list(DIMENSIONS)})
    return [_from_row(r) for r in rows]


def get_indicator(conn: Connection, code: str, parameter: str = "indicator") -> Indicator:
    if "\x00" in code:  # PostgreSQL text cannot hold NUL
        raise ParameterError(parameter, f"{parameter} contains a NUL character (U+0000)")
    ensure_catalogue(conn)
    row = conn.execute(sa.text("SELECT * FROM vital_indicators WHERE code = :c"), {"c": code}).first()
    if row is None:
        raise ParameterError(parameter, f"{parameter}: no indicator {code!r} in the catalogue "
                                        "(GET /vitals/indicators lists them)")
    return _from_row(row)
