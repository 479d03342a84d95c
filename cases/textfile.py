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
    reader = csv.DictReader(io.StringIO(text))
    for column in needed:
        if column not in (reader.fieldnames or []):
            raise UserError(f"{path}: missing column {column!r}; columns are {', '.join(columns)}")
    yield from ((f"{path}, row {n}", r) for n, r in enumerate(reader, start=2))
