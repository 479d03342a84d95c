"""Duplicate suggestions for an import's new cases, found beside the import instead of by the writer.

A new case's suggestions are the open cases of its class within the class's radius, reported within its
window before it, with a lower id (:data:`cases.batch._DUPLICATES`, :func:`cases.intake.duplicates_of`).
For an import those are of two kinds:

* cases that were in before the import began (ids below its first): asked of the database, on the
  preparing connection — and not at all when the database holds no open case of the file's classes
  in the file's time span with a point (one statement at the start: an import into a quiet base, or
  the first import of the day);
* the import's own earlier cases (its earlier chunks, and earlier rows of the same chunk): found here, in
  a grid of cells a class's radius wide, from the rows the import wrote — no statement at all.

The writer's connection then no longer probes the cases' spatial index once per new case (0.86 s of the
database's CPU for 20,000 cases, on the pipeline's slower stage). The answers are the writer's: the same
cases in the same order (reported time, then id); tests/test_cases_batch.py compares the import with the
one-at-a-time intake, and an import into a base that holds earlier cases. What this does not see, as the
writer's statement would: a case another writer takes in *while* the import runs.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.catalogue import CaseClass

_CLOSED = "('closed', 'not_registered', 'merged')"

#: is there any open case with a point that a case of these classes in this span could duplicate?
_ANY_EARLIER = (
    "SELECT EXISTS (SELECT 1 FROM cases WHERE class_code = ANY(CAST(:codes AS text[])) AND geom IS NOT NULL "
    f"AND status NOT IN {_CLOSED} AND reported_at >= :since)")

#: the earlier cases (ids below the import's first) near each new case, one row per pair
_EARLIER = (
    "WITH c AS MATERIALIZED (SELECT q.id, q.k, q.at, ST_SetSRID(ST_MakePoint(q.x, q.y), :srid) AS geom, q.w, q.r "
    "FROM json_to_recordset(CAST(:q AS json)) AS q(id bigint, k text, at timestamptz, x float8, y float8, w float8, "
    "r float8)) "
    "SELECT c.id, o.id AS dup, o.reported_at FROM c JOIN cases o ON ST_DWithin(o.geom, c.geom, c.r) "
    "AND o.id < :before AND o.class_code = c.k "
    f"AND o.status NOT IN {_CLOSED} "
    "AND o.reported_at BETWEEN c.at - make_interval(secs => c.w * 3600) AND c.at")


@dataclass
class _Seen:
    """One new case of the import, as a candidate for the later ones."""

    id: int
    x: float
    y: float
    at: datetime


@dataclass
class ImportDuplicates:
    """The import's own new cases so far, by class and cell, and whether the database must be asked too."""

    srid: int
    ask_database: bool
    before: int | None = None  # the import's first case id: the database is asked about lower ones only
    _cells: dict[str, dict[tuple[int, int], list[_Seen]]] = field(default_factory=lambda: defaultdict(dict))

    @classmethod
    def start(cls, conn: Connection, classes: Sequence[CaseClass], earliest: datetime, srid: int) -> ImportDuplicates:
        """Before the import writes anything: ``classes`` those of the file, ``earliest`` its earliest report time."""
        codes = sorted({c.code for c in classes})
        widest = max((c.duplicate_window_h for c in classes), default=0.0)
        ask = bool(codes) and bool(conn.execute(sa.text(_ANY_EARLIER), {
            "codes": codes, "since": earliest - timedelta(hours=widest)}).scalar())
        return cls(srid, ask)

    def earlier(self, conn: Connection, cases: Sequence[tuple[int, CaseClass, float | None, float | None, datetime]]
                ) -> dict[int, list[tuple[datetime, int]]]:
        """Case id → (reported time, id) of the suggestions among the cases that were in before the import, for
        new cases given as (id, class, x, y, reported time) in id order: one statement, or none when
        :meth:`start` found no case they could be."""
        if self.before is None and cases:
            self.before = cases[0][0]
        located = [c for c in cases
                   if c[2] is not None and math.isfinite(c[2]) and math.isfinite(c[3])]  # type: ignore[arg-type]
        if not self.ask_database or not located:
            return {}
        found: dict[int, list[tuple[datetime, int]]] = {}
        for r in conn.execute(sa.text(_EARLIER), {"srid": self.srid, "before": self.before, "q": _json(
                [{"id": i, "k": cls.code, "at": at, "x": x, "y": y, "w": cls.duplicate_window_h,
                  "r": cls.duplicate_radius_m} for i, cls, x, y, at in located])}):
            found.setdefault(r.id, []).append((r.reported_at, r.dup))
        return found

    def within(self, rows: Sequence[dict[str, Any]], classes: Sequence[CaseClass],
               earlier: dict[int, list[tuple[datetime, int]]]) -> dict[int, list[int]]:
        """Case id → its suggestions, for the chunk's new cases (rows of :func:`cases.batch.build_batch`, in id
        order, with their classes): those of :meth:`earlier` and the import's own earlier cases, in the order
        the writer's statement gives (reported time, then id). The chunk's cases are then candidates for the
        chunks after it, so chunks must come here in id order."""
        found = {case_id: list(pairs) for case_id, pairs in earlier.items()}
        hypot, floor, finite = math.hypot, math.floor, math.isfinite
        shapes: dict[str, tuple[float, float, timedelta, dict[tuple[int, int], list[_Seen]]]] = {}
        for row, cls in zip(rows, classes):
            x, y = row["x"], row["y"]
            if x is None or not finite(x) or not finite(y):
                continue
            shape = shapes.get(cls.code)
            if shape is None:  # a cell at least the radius wide: the 3 × 3 cells around hold every candidate
                shape = shapes[cls.code] = (cls.duplicate_radius_m, max(cls.duplicate_radius_m, 1.0),
                                            timedelta(hours=cls.duplicate_window_h), self._cells[cls.code])
            radius, size, window, cells = shape
            at = row["reported_at"]
            since = at - window
            cx, cy = floor(x / size), floor(y / size)
            near = None
            for key in ((cx - 1, cy - 1), (cx - 1, cy), (cx - 1, cy + 1), (cx, cy - 1), (cx, cy), (cx, cy + 1),
                        (cx + 1, cy - 1), (cx + 1, cy), (cx + 1, cy + 1)):
                seen = cells.get(key)
                if seen:
                    for o in seen:
                        if since <= o.at <= at and hypot(o.x - x, o.y - y) <= radius:
                            if near is None:
                                near = found.setdefault(row["id"], [])
                            near.append((o.at, o.id))
            here = cells.get((cx, cy))
            if here is None:
                cells[(cx, cy)] = [_Seen(row["id"], x, y, at)]
            else:
                here.append(_Seen(row["id"], x, y, at))
        return {case_id: [i for _, i in sorted(pairs)] for case_id, pairs in found.items()}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()  # times as RFC 3339, which timestamptz reads
