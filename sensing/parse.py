"""A batch of readings as one table of text: from a JSON array, NDJSON or CSV.

Each reading has ``device_id``, ``time`` (RFC 3339 with offset), ``quantity``, ``value`` and
optionally ``unit``. Parsing only shapes the batch; every check of a row's content is in
:mod:`sensing.intake`, so a bad row is rejected with its reason, never by a parse error of the
whole batch. A batch that is not JSON/NDJSON/CSV at all is a :class:`~cim.errors.UserError`.
"""
from __future__ import annotations

import io

import orjson
import pandas as pd

from cim.errors import UserError

COLUMNS = ("device_id", "time", "quantity", "value", "unit")
REQUIRED = ("device_id", "time", "quantity", "value")

#: media types of a batch, and the short names the CLI takes
FORMATS = {"application/json": "json", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson",
           "application/jsonl": "ndjson", "text/csv": "csv", "application/csv": "csv"}


class BatchFormatError(UserError):
    """The batch as a whole cannot be read (not JSON, not CSV, missing columns)."""


def format_of(content_type: str | None, body: bytes) -> str:
    """json | ndjson | csv, from the media type, else sniffed from the first character."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in FORMATS:
        return FORMATS[media]
    head = body.lstrip()[:1]
    if head == b"[":
        return "json"
    if head == b"{":
        return "ndjson"
    return "csv"


def _records_frame(records: list, where: str) -> pd.DataFrame:
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise BatchFormatError(f"{where}: reading {bad + 1} is not a JSON object")
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=list(REQUIRED))
    return frame


def parse_batch(body: bytes, fmt: str, where: str = "batch") -> pd.DataFrame:
    """The batch as a frame of the :data:`COLUMNS` (object dtype; missing values None/NaN)."""
    if fmt == "json":
        try:
            records = orjson.loads(body) if body.strip() else []
        except orjson.JSONDecodeError as exc:
            raise BatchFormatError(f"{where}: not valid JSON ({exc})") from None
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list):
            raise BatchFormatError(f"{where}: a JSON array of readings is expected")
        frame = _records_frame(records, where)
    elif fmt == "ndjson":
        records = []
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise BatchFormatError(f"{where}: line {number} is not valid JSON ({exc})") from None
        frame = _records_frame(records, where)
    elif fmt == "csv":
        try:
            frame = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False, na_values=[""],
                                skipinitialspace=True)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise BatchFormatError(f"{where}: not readable as CSV ({exc})") from None
        frame.columns = [str(c).strip() for c in frame.columns]
    else:
        raise BatchFormatError(f"{where}: unknown format {fmt!r} (json, ndjson or csv)")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing and len(frame):
        raise BatchFormatError(f"{where}: missing column(s) {', '.join(missing)}; a reading has "
                               f"{', '.join(REQUIRED)} and optionally unit")
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame[list(COLUMNS)].reset_index(drop=True)
