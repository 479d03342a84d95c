"""What the scenario adds to a base before its first response: its case class for the streets (块:
``E0409 小区积水``, handled by the street's 办事处) and that department kind, from the scenario's own
CSV files through the case loop's catalogue, and the pgRouting extension where the server has it
(migration 0006_flood creates it already; this catches a server that gained it later)."""
from __future__ import annotations

import csv
import io
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.catalogue import ensure_seeded, parse_classes, write_classes

#: the 块's case: one per street concerned, dispatched to the street's 办事处
STREET_CASE_CLASS = "E0409"
#: the 条's case: 道路积水, dispatched to 水务 (an alarm's rule already opened it through sensing)
DEPARTMENT_CASE_CLASS = "E0401"


def _data(name: str) -> str:
    return resources.files("scenarios.flood.data").joinpath(name).read_text(encoding="utf-8")


def ensure_scenario(conn: Connection) -> dict[str, Any]:
    """Idempotent set-up; returns what it found or did."""
    ensure_seeded(conn)
    known = frozenset(conn.execute(sa.text("SELECT code FROM case_classes WHERE parent_code IS NULL")).scalars())
    classes = write_classes(conn, parse_classes(_data("case_classes.csv"), "scenarios/flood/data/case_classes.csv",
                                                known))
    kinds = list(csv.DictReader(io.StringIO(_data("department_kinds.csv"))))
    conn.execute(sa.text("INSERT INTO case_department_kinds (kind, name_pattern) VALUES (:kind, :name_pattern) "
                         "ON CONFLICT (kind) DO NOTHING"), kinds)
    pgrouting = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'pgrouting'")).scalar()
    if pgrouting is None and conn.execute(sa.text(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgrouting')")).scalar():
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pgrouting"))
        pgrouting = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'pgrouting'")).scalar()
    return {"case_classes_written": classes, "pgrouting": pgrouting}
