"""The class catalogue: 部件 and 事件 classes (大类/小类) with 立案/结案 conditions, time limits,
the kind of department that handles them and the duplicate radius/window.

The packaged CSV (``cases/data/case_classes.csv``, after GB/T 30428.2; part classes keep the
codes of the base's part catalogue) seeds a base on first use; a city replaces or extends it with
``cim ingest case-classes FILE`` (also ``cim cases classes load``). Department kinds are recognised in department names by the
patterns of ``cases/data/department_kinds.csv`` (the names every responsibility chain carries).
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.textfile import read_text_file
from cim.errors import ParameterError, UserError

KINDS = ("部件", "事件")
CALENDARS = ("working", "24x7")
CLASS_COLUMNS = ("code", "kind", "name", "parent_code", "register_condition", "close_condition",
                 "emergency_hours", "emergency_calendar", "normal_hours", "normal_calendar",
                 "department_kind", "duplicate_radius_m", "duplicate_window_h")
_CODE = {"部件": re.compile(r"^[0-9]{2}([0-9]{2})?$"), "事件": re.compile(r"^E[0-9]{2}([0-9]{2})?$")}


@dataclass(frozen=True)
class CaseClass:
    """One 小类 (or 大类) of the catalogue."""

    code: str
    kind: str
    name: str
    parent_code: str | None
    register_condition: str | None
    close_condition: str | None
    emergency_hours: float | None
    emergency_calendar: str
    normal_hours: float | None
    normal_calendar: str
    department_kind: str | None
    duplicate_radius_m: float
    duplicate_window_h: float

    @property
    def is_part(self) -> bool:
        return self.kind == "部件"

    def limit(self, urgency: str) -> tuple[float | None, str]:
        """(hours, calendar) of the handling time limit for an urgency."""
        if urgency == "emergency":
            return self.emergency_hours, self.emergency_calendar
        return self.normal_hours, self.normal_calendar


def _text(row: dict[str, str | None], key: str) -> str | None:
    value = (row.get(key) or "").strip()
    return value or None


def _number(where: str, row: dict[str, str | None], key: str, default: float | None) -> float | None:
    value = _text(row, key)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{where}: field {key}: {value!r} is not a number") from None
    if number < 0 or (number == 0 and key.endswith("_hours")):
        raise UserError(f"{where}: field {key}: must be positive, got {value}")
    return number


def parse_classes(text: str, source: str, known: frozenset[str] = frozenset()) -> list[CaseClass]:
    """Rows of a catalogue CSV, checked: every error names the file, row and field. A 小类's 大类
    is in the file or among ``known`` (the codes already in the base, when extending it)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("code", "kind", "name") if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(CLASS_COLUMNS)}")
    out: list[CaseClass] = []
    seen: set[str] = set()
    for n, row in enumerate(reader, start=2):
        where = f"{source}, row {n}"
        code, kind, name = _text(row, "code"), _text(row, "kind"), _text(row, "name")
        if kind not in KINDS:
            raise UserError(f"{where}: field kind: {kind!r} is not one of {', '.join(KINDS)}")
        if code is None or not _CODE[kind].match(code):
            raise UserError(f"{where}: field code: {code!r} is not a {kind} code "
                            f"({'2 or 4 digits' if kind == '部件' else 'E + 2 or 4 digits'})")
        if name is None:
            raise UserError(f"{where}: field name: empty")
        if code in seen:
            raise UserError(f"{where}: field code: {code} appears twice")
        seen.add(code)
        parent = _text(row, "parent_code")
        is_sub = len(code.lstrip("E")) == 4
        if is_sub and parent != code[:-2]:
            raise UserError(f"{where}: field parent_code: a 小类 {code} belongs to 大类 {code[:-2]}, got {parent!r}")
        if not is_sub and parent is not None:
            raise UserError(f"{where}: field parent_code: a 大类 has no parent, got {parent!r}")
        calendars = {}
        for key in ("emergency_calendar", "normal_calendar"):
            value = _text(row, key) or ("24x7" if key == "emergency_calendar" else "working")
            if value not in CALENDARS:
                raise UserError(f"{where}: field {key}: {value!r} is not one of {', '.join(CALENDARS)}")
            calendars[key] = value
        cls = CaseClass(
            code=code, kind=kind, name=name, parent_code=parent,
            register_condition=_text(row, "register_condition"), close_condition=_text(row, "close_condition"),
            emergency_hours=_number(where, row, "emergency_hours", None),
            normal_hours=_number(where, row, "normal_hours", None),
            department_kind=_text(row, "department_kind"),
            duplicate_radius_m=_number(where, row, "duplicate_radius_m", 50.0) or 0.0,
            duplicate_window_h=_number(where, row, "duplicate_window_h", 72.0) or 0.0,
            **calendars)
        if is_sub and (cls.normal_hours is None or cls.emergency_hours is None):
            raise UserError(f"{where}: a 小类 needs emergency_hours and normal_hours")
        out.append(cls)
    codes = {c.code for c in out} | known
    for n, cls in enumerate(out, start=2):
        if cls.parent_code is not None and cls.parent_code not in codes:
            raise UserError(f"{source}, row {n}: field parent_code: 大类 {cls.parent_code} is neither in the file "
                            "nor in the catalogue")
    return out


def _packaged(name: str) -> str:
    return resources.files("cases.data").joinpath(name).read_text(encoding="utf-8")


def write_classes(conn: Connection, classes: list[CaseClass]) -> int:
    """Insert or update the classes (大类 first); returns the number of rows written."""
    n = 0
    for cls in sorted(classes, key=lambda c: len(c.code)):
        values = {k: getattr(cls, k) for k in CLASS_COLUMNS}
        n += conn.execute(sa.text(
            f"INSERT INTO case_classes ({', '.join(CLASS_COLUMNS)}) "
            f"VALUES ({', '.join(':' + k for k in CLASS_COLUMNS)}) ON CONFLICT (code) DO UPDATE SET "
            + ", ".join(f"{k} = EXCLUDED.{k}" for k in CLASS_COLUMNS[1:])
            + f" WHERE ({', '.join('case_classes.' + k for k in CLASS_COLUMNS[1:])}) IS DISTINCT FROM "
              f"({', '.join('EXCLUDED.' + k for k in CLASS_COLUMNS[1:])})"), values).rowcount
    return n


def load_classes_file(conn: Connection, path: Path) -> int:
    """``cim cases classes load FILE``: replace or extend the catalogue from a CSV (UTF-8)."""
    text = read_text_file(path)
    ensure_seeded(conn)
    known = frozenset(conn.execute(sa.text("SELECT code FROM case_classes WHERE parent_code IS NULL")).scalars())
    return write_classes(conn, parse_classes(text, str(path), known))


_SEEDED = "cases.catalogue.seeded"


def ensure_seeded(conn: Connection) -> None:
    """Seed the packaged catalogue and department kinds into a base that has none yet.

    A database connection that once found both seeded remembers it (``conn.info`` lives with the
    DBAPI connection), so intake does not ask again for every case; the mark is set only when the
    rows were there before this transaction, so a rolled-back seeding is never remembered."""
    if conn.info.get(_SEEDED):
        return
    if conn.execute(sa.text("SELECT to_regclass('case_classes') IS NULL")).scalar():
        raise UserError("the base has no case tables: run 'cim init' to bring it to the current schema")
    if conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM case_classes) AND EXISTS (SELECT 1 FROM "
                            "case_department_kinds)")).scalar():
        conn.info[_SEEDED] = True
        return
    if conn.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM case_classes)")).scalar():
        # one seeder at a time: two first intakes must not both insert
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(4549011)"))
        if conn.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM case_classes)")).scalar():
            write_classes(conn, parse_classes(_packaged("case_classes.csv"), "cases/data/case_classes.csv"))
    if conn.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM case_department_kinds)")).scalar():
        rows = list(csv.DictReader(io.StringIO(_packaged("department_kinds.csv"))))
        conn.execute(sa.text("INSERT INTO case_department_kinds (kind, name_pattern) VALUES (:kind, :name_pattern) "
                             "ON CONFLICT (kind) DO NOTHING"), rows)


def _from_row(row: sa.Row) -> CaseClass:
    return CaseClass(**{k: getattr(row, k) for k in CLASS_COLUMNS})


def all_classes(conn: Connection) -> list[CaseClass]:
    ensure_seeded(conn)
    rows = conn.execute(sa.text(f"SELECT {', '.join(CLASS_COLUMNS)} FROM case_classes ORDER BY kind DESC, code"))
    return [_from_row(r) for r in rows]


def class_by_code(conn: Connection, code_or_name: str, parameter: str = "class") -> CaseClass:
    """The 小类 a case is filed under, by code (``E0105``, ``0101``) or unique name (``道路破损``).

    Anything else is a :class:`ParameterError` that lists the valid 小类."""
    ensure_seeded(conn)
    key = (code_or_name or "").strip()
    rows = conn.execute(sa.text(
        f"SELECT {', '.join(CLASS_COLUMNS)} FROM case_classes WHERE parent_code IS NOT NULL "
        "AND (code = :k OR name = :k) ORDER BY code"), {"k": key}).all()
    if len(rows) == 1:
        return _from_row(rows[0])
    valid = conn.execute(sa.text("SELECT code || ' ' || name FROM case_classes WHERE parent_code IS NOT NULL "
                                 "ORDER BY kind DESC, code")).scalars().all()
    why = f"{key!r} names {len(rows)} 小类, give the code" if rows else f"unknown case class {key!r}"
    raise ParameterError(parameter, f"{parameter}: {why}; valid 小类: {', '.join(valid)}")


def classes_for(conn: Connection, keys: Sequence[str], parameter: str = "class") -> dict[str, CaseClass | UserError]:
    """:func:`class_by_code` for many keys with one statement: each key → its 小类, or the error
    :func:`class_by_code` raises for it (unknown, or a name several 小类 share)."""
    by_key = class_index(conn)
    out: dict[str, CaseClass | UserError] = {}
    for key in keys:
        found = by_key.get((key or "").strip())
        if found is not None:
            out[key] = found
            continue
        try:  # the rare miss: the single lookup words the error (and lists the valid 小类)
            out[key] = class_by_code(conn, key, parameter)
        except UserError as exc:
            out[key] = exc
    return out


def class_index(conn: Connection) -> dict[str, CaseClass]:
    """Every 小类 by its code and by its name where no other 小类 has that name (one statement): the
    keys :func:`class_by_code` resolves without an error."""
    ensure_seeded(conn)
    rows = conn.execute(sa.text(f"SELECT {', '.join(CLASS_COLUMNS)} FROM case_classes WHERE parent_code IS NOT NULL"))
    by_key: dict[str, list[CaseClass]] = {}
    for cls in map(_from_row, rows):
        by_key.setdefault(cls.code, []).append(cls)
        if cls.name != cls.code:
            by_key.setdefault(cls.name, []).append(cls)
    return {key: found[0] for key, found in by_key.items() if len(found) == 1}


def department_kinds(conn: Connection) -> dict[str, re.Pattern[str]]:
    """Department kind → the compiled pattern recognising it in a department's name."""
    ensure_seeded(conn)
    rows = conn.execute(sa.text("SELECT kind, name_pattern FROM case_department_kinds")).all()
    return {kind: re.compile(pattern) for kind, pattern in rows}


def ensure_extension(conn: Connection, name: str, classes_text: str, kinds_text: str) -> None:
    """Add an edge's own classes and department kinds (a scenario's data files) to the catalogue,
    on top of the packaged one, once per database connection: existing rows of other codes and
    kinds are left alone; the extension's own rows are brought to the file's values."""
    ensure_seeded(conn)
    key = f"{_SEEDED}:{name}"
    if conn.info.get(key):
        return
    classes = parse_classes(classes_text, f"{name}: case_classes.csv",
                            frozenset(conn.execute(sa.text("SELECT code FROM case_classes "
                                                           "WHERE parent_code IS NULL")).scalars()))
    kinds = list(csv.DictReader(io.StringIO(kinds_text)))
    for n, row in enumerate(kinds, start=2):
        if not (row.get("kind") or "").strip() or not (row.get("name_pattern") or "").strip():
            raise UserError(f"{name}: department_kinds.csv, row {n}: kind and name_pattern are required")
        try:
            re.compile(row["name_pattern"])
        except re.error as exc:
            raise UserError(f"{name}: department_kinds.csv, row {n}: field name_pattern: {exc}") from None
    changed = write_classes(conn, classes)
    for row in kinds:
        changed += conn.execute(sa.text(
            "INSERT INTO case_department_kinds (kind, name_pattern) VALUES (:kind, :name_pattern) "
            "ON CONFLICT (kind) DO UPDATE SET name_pattern = EXCLUDED.name_pattern "
            "WHERE case_department_kinds.name_pattern IS DISTINCT FROM EXCLUDED.name_pattern"),
            {"kind": row["kind"].strip(), "name_pattern": row["name_pattern"].strip()}).rowcount
    if changed == 0:  # only rows that were there before this transaction are remembered
        conn.info[key] = True
