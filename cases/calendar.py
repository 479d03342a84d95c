"""Time limits on a working calendar: working hours on working days (Monday–Friday, minus public
holidays, plus make-up working days), or round the clock (``24x7``, emergencies).

The calendar lives in the base (``case_calendar``: holidays and make-up working days, loadable from
a CSV; ``case_working_hours``: the day's working periods) and is read once per operation.
Days are Shanghai days (Asia/Shanghai); instants are timezone-aware.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.textfile import read_text_file
from cim.errors import UserError

LOCAL = ZoneInfo("Asia/Shanghai")
#: the furthest a deadline is searched for: a limit longer than this is a catalogue error
_MAX_DAYS = 3660


@dataclass(frozen=True)
class WorkingCalendar:
    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()  # make-up working days (调休上班) on weekends
    periods: tuple[tuple[time, time], ...] = ((time(9), time(12)), (time(13), time(18)))
    names: dict[date, str] = field(default_factory=dict, compare=False)

    def is_working_day(self, day: date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def _periods_of(self, day: date) -> list[tuple[datetime, datetime]]:
        if not self.is_working_day(day):
            return []
        return [(datetime.combine(day, s, LOCAL), datetime.combine(day, e, LOCAL)) for s, e in self.periods]

    def add(self, start: datetime, hours: float, calendar: str = "working") -> datetime:
        """The instant ``hours`` of (working or round-the-clock) time after ``start``."""
        _aware(start)
        if calendar == "24x7":
            return start + timedelta(hours=hours)
        remaining = timedelta(hours=hours)
        cursor = start.astimezone(LOCAL)
        day = cursor.date()
        for _ in range(_MAX_DAYS):
            for begin, end in self._periods_of(day):
                if cursor >= end:
                    continue
                begin = max(begin, cursor)
                if remaining <= end - begin:
                    return (begin + remaining).astimezone(start.tzinfo)
                remaining -= end - begin
            day += timedelta(days=1)
            cursor = datetime.combine(day, time(0), LOCAL)
        raise UserError(f"no deadline within {_MAX_DAYS} days: check the working calendar and hours")

    def hours_between(self, start: datetime, end: datetime, calendar: str = "working") -> float:
        """Working (or round-the-clock) hours from ``start`` to ``end``; negative when end < start."""
        _aware(start)
        _aware(end)
        if calendar == "24x7":
            return (end - start).total_seconds() / 3600
        if end < start:
            return -self.hours_between(end, start, calendar)
        total = timedelta()
        day = start.astimezone(LOCAL).date()
        last = end.astimezone(LOCAL).date()
        while day <= last:
            for begin, stop in self._periods_of(day):
                lo, hi = max(begin, start), min(stop, end)
                if hi > lo:
                    total += hi - lo
            day += timedelta(days=1)
        return total.total_seconds() / 3600


def _aware(instant: datetime) -> None:
    if instant.tzinfo is None:
        raise UserError(f"time {instant.isoformat()} has no time zone")


def load_calendar(conn: Connection) -> WorkingCalendar:
    days = conn.execute(sa.text("SELECT day, kind, name FROM case_calendar")).all()
    periods = conn.execute(sa.text("SELECT start_time, end_time FROM case_working_hours ORDER BY start_time")).all()
    return WorkingCalendar(
        holidays=frozenset(d for d, k, _ in days if k == "holiday"),
        workdays=frozenset(d for d, k, _ in days if k == "workday"),
        periods=tuple((s, e) for s, e in periods) or WorkingCalendar.periods,
        names={d: n for d, _, n in days if n})


def load_calendar_file(conn: Connection, path: Path) -> int:
    """``cim cases calendar load FILE``: a CSV ``day,kind,name`` (kind holiday | workday) upserted."""
    text = read_text_file(path)
    reader = csv.DictReader(io.StringIO(text))
    if not {"day", "kind"} <= set(reader.fieldnames or []):
        raise UserError(f"{path}: needs the columns day,kind[,name]")
    rows = []
    for n, row in enumerate(reader, start=2):
        try:
            day = date.fromisoformat((row["day"] or "").strip())
        except ValueError:
            raise UserError(f"{path}, row {n}: field day: {row['day']!r} is not a date (YYYY-MM-DD)") from None
        kind = (row["kind"] or "").strip()
        if kind not in ("holiday", "workday"):
            raise UserError(f"{path}, row {n}: field kind: {kind!r} is not holiday or workday")
        rows.append({"day": day, "kind": kind, "name": (row.get("name") or "").strip() or None})
    if rows:
        conn.execute(sa.text("INSERT INTO case_calendar (day, kind, name) VALUES (:day, :kind, :name) "
                             "ON CONFLICT (day) DO UPDATE SET kind = EXCLUDED.kind, name = EXCLUDED.name"), rows)
    return len(rows)
