"""RFC 3339 instants as requests write them: the one time parser of the platform.

Used by the OGC ``datetime`` parameter, CQL2 ``TIMESTAMP``/``DATE``/``INTERVAL`` literals, property
equality on date/time queryables and the IoT reading windows, so a time means the same everywhere.

The rule: a timestamp must carry its UTC offset (``Z`` or e.g. ``+08:00``), as RFC 3339 requires.
A timestamp without one is refused with a message saying so, never guessed: on a Shanghai platform
"UTC" and "local time" are eight hours apart, and either guess would silently select the wrong
versions. A date (``2024-05-01``) means that whole day in UTC. Every timestamp comes back as an
aware datetime in UTC. Instants that cannot be represented (``9999-12-31T23:59:59-14:00`` is
after year 9999 in UTC) are refused too, instead of overflowing later.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

from cim.errors import ParameterError

__all__ = ["day_start", "next_day", "parse_instant", "to_utc"]

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# RFC 3339 date-time: the T may be a space or lower case (RFC 3339 §5.6 note), fractions optional
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?")
_EXAMPLE = "2024-05-01T08:00:00Z or 2024-05-01T16:00:00+08:00"


def _out_of_range(text: str, parameter: str) -> ParameterError:
    return ParameterError(parameter, f"{text!r} is outside the supported time range (years 1 to 9999 in UTC)")


def to_utc(value: datetime, parameter: str, text: str | None = None) -> datetime:
    """An aware datetime in UTC; a naive one, or one that overflows in UTC, is a ParameterError."""
    shown = text if text is not None else value.isoformat()
    if value.tzinfo is None or value.utcoffset() is None:
        raise ParameterError(parameter, f"{shown!r} has no UTC offset: add Z or e.g. +08:00 (RFC 3339), "
                                        f"as in {_EXAMPLE}")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise _out_of_range(shown, parameter) from None


def parse_instant(text: str, parameter: str) -> date | datetime:
    """A date (``YYYY-MM-DD``: a whole day) or an RFC 3339 timestamp with offset, in UTC.

    Anything else — a naive timestamp, a malformed one, one out of range — is a
    :class:`ParameterError` naming ``parameter``.
    """
    stripped = text.strip()
    if _DATE.fullmatch(stripped):
        try:
            return date.fromisoformat(stripped)
        except ValueError:
            raise ParameterError(parameter, f"{text!r} is not a valid date (YYYY-MM-DD)") from None
    if not _TIMESTAMP.fullmatch(stripped):
        raise ParameterError(parameter, f"{text!r} is not an RFC 3339 date-time ({_EXAMPLE}) "
                                        "or date (2024-05-01)")
    normalised = stripped.replace("z", "Z").replace("t", "T").replace(" ", "T")
    try:
        value = datetime.fromisoformat(normalised)
    except ValueError:
        raise ParameterError(parameter, f"{text!r} is not a valid RFC 3339 date-time ({_EXAMPLE})") from None
    except OverflowError:
        raise _out_of_range(text, parameter) from None
    return to_utc(value, parameter, text)


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def next_day(day: date, parameter: str) -> date:
    """The day after ``day`` (where a whole day ends, excluded); 9999-12-31 has none."""
    try:
        return day + timedelta(days=1)
    except OverflowError:
        raise _out_of_range(day.isoformat(), parameter) from None


def parse_instants(texts: "pd.Series") -> "tuple[pd.Series, pd.Series]":  # noqa: F821 (pandas, imported lazily)
    """Many timestamps at once by the same rule as :func:`parse_instant` (offset required): returns
    (times in UTC, ``NaT`` where refused; a boolean mask of the refused). For bulk intake, where a
    Python call per value would cost more than storing it. Dates alone are refused: a reading has
    an instant, not a day."""
    import pandas as pd

    text = texts.astype("string").str.strip()
    shaped = text.str.fullmatch(_TIMESTAMP.pattern).fillna(False) & text.str.contains(r"(?:[Zz]|[+-]\d{2}:?\d{2})$",
                                                                                     regex=True).fillna(False)
    normalised = text.where(shaped).str.replace(" ", "T", regex=False)
    times = pd.to_datetime(normalised, utc=True, errors="coerce", format="ISO8601")
    return times, times.isna().to_numpy()
