"""cim.times: the one RFC 3339 parser — offsets required, dates are whole UTC days, no overflow."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from cim.errors import ParameterError
from cim.times import next_day, parse_instant, to_utc

UTC = timezone.utc


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T08:00:00Z", datetime(2024, 5, 1, 8, tzinfo=UTC)),
    ("2024-05-01t08:00:00z", datetime(2024, 5, 1, 8, tzinfo=UTC)),
    ("2024-05-01 16:00:00+08:00", datetime(2024, 5, 1, 8, tzinfo=UTC)),
    ("2024-05-01T16:00+08:00", datetime(2024, 5, 1, 8, tzinfo=UTC)),
    ("2024-05-01T08:00:00.250Z", datetime(2024, 5, 1, 8, 0, 0, 250_000, tzinfo=UTC)),
    (" 2024-05-01 ", date(2024, 5, 1)),
])
def test_accepted_forms(text, expected):
    value = parse_instant(text, "datetime")
    assert value == expected and type(value) is type(expected)
    if isinstance(value, datetime):
        assert value.utcoffset() == timedelta(0)  # always returned in UTC


@pytest.mark.parametrize("text, words", [
    ("2024-05-01T08:00:00", "no UTC offset"),
    ("2024-05-01T08:00", "no UTC offset"),
    ("9999-12-31T23:59:59-14:00", "outside the supported time range"),
    ("0001-01-01T00:00:00+14:00", "outside the supported time range"),
    ("2024-02-30", "not a valid date"),
    ("2024-05-01T25:00:00Z", "not a valid RFC 3339"),
    ("yesterday", "not an RFC 3339"),
    ("20240501T080000Z", "not an RFC 3339"),
])
def test_refused_forms_name_the_parameter(text, words):
    with pytest.raises(ParameterError, match=words) as info:
        parse_instant(text, "from")
    assert info.value.parameter == "from"


def test_to_utc_and_next_day_guard_the_edges():
    with pytest.raises(ParameterError, match="no UTC offset"):
        to_utc(datetime(2024, 1, 1), "filter")
    assert next_day(date(2024, 2, 28), "datetime") == date(2024, 2, 29)
    with pytest.raises(ParameterError, match="outside the supported time range"):
        next_day(date(9999, 12, 31), "datetime")
