"""The day a ranking or schedule is computed for, read through the platform's one time parser."""
from __future__ import annotations

from datetime import date, datetime, timezone

from cim.errors import ParameterError
from cim.times import parse_instant

#: the days a score or schedule may be computed for (its windows reach two years back)
YEARS = (1900, 2200)


def as_of_day(text: str | None, parameter: str = "as_of") -> date:
    """The scoring day: a date, or the UTC day of an RFC 3339 instant (the platform's one time parser);
    today (UTC) when not given."""
    if text is None or not text.strip():
        return datetime.now(timezone.utc).date()
    value = parse_instant(text, parameter)
    day = value.date() if isinstance(value, datetime) else value
    if not YEARS[0] <= day.year <= YEARS[1]:
        raise ParameterError(parameter, f"{parameter}: {text!r} is outside the years {YEARS[0]}–{YEARS[1]}")
    return day
