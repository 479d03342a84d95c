"""Curtain-wall records ("一楼一档"): one dossier per building with a glass curtain wall, read from a
CSV or GeoJSON file and checked as a whole before anything is written.

A field may be empty (the scoring model counts it missing and lowers its confidence); a value that is
there must make sense. A bad row refuses the file with every problem named by file, line (CSV) or
feature (GeoJSON) and field — nothing is written half. Categories take the platform's English codes
or the words Shanghai's dossiers use (明框/隐框 → frame, 点支式 → point, 钢化 → tempered …).
Columns the dossier has no field for are kept in ``attributes``.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from psycopg2.extras import execute_values
from sqlalchemy.engine import Connection

from cim.errors import UserError

SUPPORT_TYPES = ("frame", "point", "cable", "unitised")
GLASS_TYPES = ("tempered", "laminated", "ordinary")
SEALANT_TYPES = ("structural_silicone", "weatherproof")
FINDINGS = ("none", "minor", "major")
WIND_EXPOSURES = ("sheltered", "normal", "exposed")
USES_BELOW = ("street", "entrance", "plaza", "podium", "enclosed")

#: words of Shanghai's dossiers → the codes (matched as substrings, first hit wins; English codes always work)
SYNONYMS: dict[str, tuple[tuple[str, str], ...]] = {
    "support_type": (("单元", "unitised"), ("索", "cable"), ("点支", "point"), ("点式", "point"),
                     ("明框", "frame"), ("隐框", "frame"), ("框", "frame"), ("unitized", "unitised")),
    "glass_type": (("夹胶", "laminated"), ("夹层", "laminated"), ("钢化", "tempered"), ("普通", "ordinary"),
                   ("浮法", "ordinary"), ("平板", "ordinary")),
    "sealant_type": (("结构", "structural_silicone"), ("耐候", "weatherproof"), ("structural", "structural_silicone"),
                     ("weather", "weatherproof")),
    "last_inspection_findings": (("不合格", "major"), ("严重", "major"), ("危险", "major"), ("需整改", "minor"),
                                 ("一般", "minor"), ("合格", "none"), ("无", "none")),
    "wind_exposure": (("遮挡", "sheltered"), ("一般", "normal"), ("开阔", "exposed"), ("迎风", "exposed"),
                      ("临江", "exposed")),
    "use_below": (("人行道", "street"), ("道路", "street"), ("街", "street"), ("出入口", "entrance"),
                  ("广场", "plaza"), ("裙房", "podium"), ("封闭", "enclosed"), ("绿地", "enclosed")),
}
CATEGORIES: dict[str, tuple[str, ...]] = {
    "support_type": SUPPORT_TYPES, "glass_type": GLASS_TYPES, "sealant_type": SEALANT_TYPES,
    "last_inspection_findings": FINDINGS, "wind_exposure": WIND_EXPOSURES, "use_below": USES_BELOW,
}
DATES = ("last_inspection_date", "last_sealant_sampling_date", "last_breakage_date", "last_storm_date",
         "last_fire_date", "last_appraisal_date")
YEARS = ("sealant_year", "completion_year")
#: the dossier's fields, in the order of the sample file
FIELDS = ("building_id", "wall_area_m2", "support_type", "glass_type", "sealant_type", "sealant_year", "height_m",
          "completion_year", "design_life_years", "owner", "last_inspection_date", "last_inspection_findings",
          "last_sealant_sampling_date", "breakage_count", "last_breakage_date", "last_storm_date", "last_fire_date",
          "last_appraisal_date", "wind_exposure", "use_below")
#: other spellings of the key column
BUILDING_ALIASES = ("building_id", "building_source_id", "building")
MAX_LISTED = 20


class RecordsFileError(UserError):
    """A records file that cannot be loaded; the message lists each problem by line/feature and field."""


@dataclass(frozen=True)
class LoadReport:
    file: str
    read: int
    inserted: int
    updated: int
    removed: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _category(field: str, text: str) -> str:
    low = text.strip().lower()
    if low in CATEGORIES[field]:
        return low
    for word, code in SYNONYMS[field]:
        if word in low:
            return code
    raise ValueError(f"unknown {field.replace('_', ' ')} {text!r} (one of {', '.join(CATEGORIES[field])})")


def _number(text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not low < value <= high:
        raise ValueError(f"{what} {value:g} outside ({low:g}, {high:g}]")
    return value


def _whole(text: str, low: int, high: int, what: str) -> int:
    if not re.fullmatch(r"[+-]?\d+(\.0*)?", text.strip()):
        raise ValueError(f"{text!r} is not a whole number")
    value = int(float(text))
    if not low <= value <= high:
        raise ValueError(f"{what} {value} outside {low}–{high}")
    return value


def _date(text: str) -> date:
    stripped = text.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", stripped):
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(stripped)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date (YYYY-MM-DD)") from None


PARSERS: dict[str, Callable[[str], Any]] = {
    "wall_area_m2": lambda t: _number(t, 0, 1e6, "area"),
    "height_m": lambda t: _number(t, 0, 700, "height"),
    "design_life_years": lambda t: _whole(t, 1, 200, "design life"),
    "breakage_count": lambda t: _whole(t, 0, 10_000, "breakage count"),
    "owner": lambda t: t.strip(),
    **{f: (lambda t: _whole(t, 1900, 2200, "year")) for f in YEARS},
    **{f: _date for f in DATES},
    **{f: (lambda t, f=f: _category(f, t)) for f in CATEGORIES},
}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, fields) for each row of a CSV (``line N``) or GeoJSON (``feature N``) file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecordsFileError(f"{path}: no such file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecordsFileError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordsFileError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
            raise RecordsFileError(f"{path}: a GeoJSON FeatureCollection is expected")
        for n, feature in enumerate(doc["features"], start=1):
            props = feature.get("properties") if isinstance(feature, dict) else None
            yield f"feature {n}", props if isinstance(props, dict) else {}
        return
    if path.suffix.lower() != ".csv":
        raise RecordsFileError(f"{path}: a .csv or .geojson file is expected")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise RecordsFileError(f"{path}: empty file (no header line)")
    for row in reader:
        extra = row.pop(None, None)
        if extra:
            yield f"line {reader.line_num}", {"__extra__": extra}
            continue
        yield f"line {reader.line_num}", row


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every row of the file as the table's values, or a :class:`RecordsFileError` listing what is wrong."""
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for where, row in _rows(path):
        if "__extra__" in row:
            problems.append(f"{where}: more values than header columns")
            continue
        key = next((k for k in BUILDING_ALIASES if _text(row.get(k))), None)
        building = _text(row.get(key)) if key else None
        if building is None:
            problems.append(f"{where}, field building_id: missing (the building's source id)")
            continue
        if building in seen:
            problems.append(f"{where}, field building_id: building {building!r} repeated (also at {seen[building]})")
            continue
        seen[building] = where
        record: dict[str, Any] = {"building_source_id": building, "where": where}
        attributes = {}
        for name, value in row.items():
            if name in BUILDING_ALIASES:
                continue
            text = _text(value)
            if name not in PARSERS:
                if text is not None:
                    attributes[name] = value
                continue
            if text is None:
                record[name] = None
                continue
            try:
                record[name] = PARSERS[name](text)
            except ValueError as exc:
                problems.append(f"{where}, field {name}: {exc}")
        record["attributes"] = attributes
        records.append(record)
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise RecordsFileError(f"{path}: {len(problems)} problem(s), nothing loaded:\n  {shown}{more}")
    return records


_COLUMNS = tuple(f for f in FIELDS if f != "building_id")


def load_records(conn: Connection, path: Path, replace: bool = False) -> LoadReport:
    """Check the whole file, then upsert its dossiers (inside the caller's transaction); with ``replace``
    the dossiers of buildings absent from the file are removed. Each building must be a current one."""
    records = read_records(path)
    wanted = [r["building_source_id"] for r in records]
    known = dict(conn.execute(sa.text(
        "SELECT source_id, feature_id FROM buildings WHERE valid_to IS NULL AND source_id = ANY(:ids)"),
        {"ids": wanted}).all())
    unknown = [f"{r['where']}, field building_id: unknown building {r['building_source_id']!r} (load buildings first)"
               for r in records if r["building_source_id"] not in known]
    if unknown:
        shown = "\n  ".join(unknown[:MAX_LISTED])
        more = f"\n  … and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        raise RecordsFileError(f"{path}: {len(unknown)} problem(s), nothing loaded:\n  {shown}{more}")
    existing = set(conn.execute(sa.text(
        "SELECT building_source_id FROM curtain_wall_records WHERE building_source_id = ANY(:ids)"),
        {"ids": wanted}).scalars())
    rows = [(r["building_source_id"], known[r["building_source_id"]], *(r.get(c) for c in _COLUMNS),
             json.dumps(r["attributes"], ensure_ascii=False), path.name) for r in records]
    if rows:
        # one statement per thousand rows (psycopg2's execute_values), not one round trip per row
        cols = ", ".join(_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*_COLUMNS, "attributes", "source_file", "loaded_at"))
        cur = conn.connection.dbapi_connection.cursor()
        execute_values(cur, f"INSERT INTO curtain_wall_records (building_source_id, building_feature_id, {cols}, "
                            f"attributes, source_file, loaded_at) VALUES %s ON CONFLICT (building_source_id) DO UPDATE "
                            f"SET building_feature_id = EXCLUDED.building_feature_id, {updates}", rows,
                       template="(" + ", ".join(["%s"] * (len(_COLUMNS) + 2)) + ", %s::jsonb, %s, now())",
                       page_size=1000)
    removed = 0
    if replace:
        removed = conn.execute(sa.text("DELETE FROM curtain_wall_records WHERE NOT building_source_id = ANY(:ids)"),
                               {"ids": wanted}).rowcount
    return LoadReport(str(path), len(records), len(records) - len(existing), len(existing), removed)
