"""Text files handed over by a user (catalogues, calendars, hotline exports): one way to read them."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cim.errors import UserError


def read_text_file(path: Path) -> str:
    """A UTF-8 (optionally BOM-marked) text file handed over by a user, or one clear error naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_records(path: Path, *, one: str, needed: Sequence[str], columns: Sequence[str]
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The records of a hotline-style export: a JSON array of objects (``*.json``) or a CSV with a header
    row, each with where it stands (``FILE, item N`` / ``FILE, row N``, the CSV header being row 1) for the
    errors the caller raises about it. ``one`` names a record in the errors ("case", "clue"); ``needed``
    are the CSV columns that must be there, ``columns`` the ones the error lists."""
    text = read_text_file(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: expected a JSON array of objects, one per {one}")
        yield from ((f"{path}, item {i}", r) for i, r in enumerate(data, start=1))
        return
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None) or []
    for column in needed:
        if column not in header:
            raise UserError(f"{path}: missing column {column!r}; columns are {', '.join(columns)}")
    # as csv.DictReader gives the rows (blank lines skipped, a short row's missing fields None, a long row's
    # extra ones in a list under None), at half its time: most rows are as long as the header
    width = len(header)
    n = 1
    for values in reader:
        if not values:
            continue
        n += 1
        row: dict[Any, Any] = dict(zip(header, values))
        if len(values) != width:
            if len(values) < width:
                row.update(dict.fromkeys(header[len(values):]))
            else:
                row[None] = values[width:]
        yield f"{path}, row {n}", row
