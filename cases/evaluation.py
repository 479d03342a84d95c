"""Evaluation (综合评价) per department, district, street, grid or person over a period, in one SQL
statement.

The cohort is the cases registered (立案) in ``[start, end)``, merged and not-registered ones left
out; each indicator counts what had happened by ``end``:

* registered — cases in the cohort; closed — of them, closed before ``end``
* 结案率 closure_rate = closed / registered
* 按期结案率 on_time_rate = closed no later than their deadline / registered
* 返工率 rework_rate = cases with at least one failed verification / registered
* 延期率 extension_rate = cases with at least one approved extension / registered
* mean / p90 hours to close — clock hours from 立案 to 结案, over the closed ones
* overdue — closed after the deadline, or still open with the deadline before ``end``
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import ParameterError

#: unit → (key expression, name expression) over ``cases c``
UNITS = {
    "department": ("c.department_code", "max(c.department_name)"),
    "district": ("nullif(c.district_code, '')", "NULL"),  # '' (none, migration 0009) grouped as before: null
    "street": ("c.street_code", "NULL"),
    "grid": ("c.grid_code", "NULL"),
    "person": ("c.person_name || ' ' || coalesce(c.person_contact, '')", "max(c.person_name)"),
}


@dataclass(frozen=True)
class Indicators:
    unit: str
    key: str | None
    name: str | None
    registered: int
    closed: int
    closed_on_time: int
    reworked: int
    extended: int
    overdue: int
    closure_rate: float | None
    on_time_rate: float | None
    rework_rate: float | None
    extension_rate: float | None
    mean_hours_to_close: float | None
    p90_hours_to_close: float | None


# Grouped under the "C" collation (the same groups: equality is bytewise under any deterministic
# collation) because sorting ~1M text keys under the database's locale costs more than the whole
# aggregation; the ≤ thousands of result rows are then ordered in the locale. date_part, not
# extract: extract returns numeric (PostgreSQL ≥ 14), ~3× slower over a million rows.
_SQL = """
SELECT * FROM (
SELECT c.k COLLATE "C" AS key, {name} AS name,
       count(*) AS registered,
       count(*) FILTER (WHERE closed) AS closed,
       count(*) FILTER (WHERE closed AND c.closed_at <= c.due_at) AS closed_on_time,
       count(*) FILTER (WHERE c.rework_count > 0) AS reworked,
       count(*) FILTER (WHERE c.extension_count > 0) AS extended,
       count(*) FILTER (WHERE c.due_at < :end AND (NOT closed OR c.closed_at > c.due_at)) AS overdue,
       round(count(*) FILTER (WHERE closed)::numeric / count(*), 4)::float8 AS closure_rate,
       round(count(*) FILTER (WHERE closed AND c.closed_at <= c.due_at)::numeric / count(*), 4)::float8
           AS on_time_rate,
       round(count(*) FILTER (WHERE c.rework_count > 0)::numeric / count(*), 4)::float8 AS rework_rate,
       round(count(*) FILTER (WHERE c.extension_count > 0)::numeric / count(*), 4)::float8 AS extension_rate,
       avg(hours) FILTER (WHERE closed) AS mean_hours_to_close,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY hours) FILTER (WHERE closed) AS p90_hours_to_close
FROM (SELECT c.*, {key} AS k, coalesce(c.closed_at < :end, false) AS closed,
             date_part('epoch', c.closed_at - c.registered_at) / 3600 AS hours
      FROM cases c
      WHERE c.registered_at >= :start AND c.registered_at < :end
        AND c.status NOT IN ('merged', 'not_registered')) AS c
GROUP BY c.k COLLATE "C") AS u
ORDER BY key COLLATE "default" NULLS LAST
"""


def evaluate(conn: Connection, unit: str, start: datetime, end: datetime) -> list[Indicators]:
    """The indicators of every ``unit`` (department, district, street, grid, person) with cases
    registered in ``[start, end)``; cases with no such unit (not dispatched, no grid) come last,
    under key None."""
    if unit not in UNITS:
        raise ParameterError("by", f"by: unknown unit {unit!r}; valid: {', '.join(UNITS)}")
    if start.tzinfo is None or end.tzinfo is None:
        raise ParameterError("period", "period: start and end need a time zone")
    if end <= start:
        raise ParameterError("period", f"period: end {end.isoformat()} is not after start {start.isoformat()}")
    key, name = UNITS[unit]
    rows = conn.execute(sa.text(_SQL.format(key=key, name=name)), {"start": start, "end": end})
    return [Indicators(unit=unit, **r._asdict()) for r in rows]


def to_csv(rows: list[Indicators]) -> str:
    """The indicators as CSV (header: the field names of :class:`Indicators`), for the CLI and the API."""
    out = io.StringIO()
    writer = csv.DictWriter(out, [f.name for f in fields(Indicators)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return out.getvalue()
