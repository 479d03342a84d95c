"""Geocode a CSV file in streaming chunks: every input row is written back with all its columns
plus the answer's columns, so a file of millions of rows needs the memory of one chunk.

Each chunk costs a few statements (see :mod:`cim.gazetteer.geocode`), not one per row.
"""
from __future__ import annotations

import csv
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy.engine import Connection

from cim.errors import ParameterError
from cim.gazetteer.geocode import MATCH_LEVELS, GeocodeResult, geocode_many

#: columns added to every row, after the input's own (lon/lat are WGS84)
ADDED_COLUMNS = ("lon", "lat", "match_level", "score", "standard_address", "district_code", "street_code",
                 "community_code", "grid_code")
DEFAULT_CHUNK_ROWS = 5_000

Progress = Callable[[int], None]


@dataclass
class BatchSummary:
    rows: int = 0
    seconds: float = 0.0
    ambiguous: int = 0
    levels: Counter = field(default_factory=Counter)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "seconds": round(self.seconds, 3), "rows_per_second": round(self.rows_per_second),
                "ambiguous": self.ambiguous, "match_levels": {k: self.levels.get(k, 0) for k in MATCH_LEVELS}}


def added_values(r: GeocodeResult) -> list[str]:
    """The added columns of one answer, as CSV text (empty for what is unknown)."""
    codes = r.codes()
    lon = lat = ""
    if r.x is not None and r.y is not None:
        lon, lat = f"{r.x:.7f}", f"{r.y:.7f}"
    return [lon, lat, r.match_level, f"{r.score:g}", r.standard_address or "", codes["district_code"] or "",
            codes["street_code"] or "", codes["community_code"] or "", codes["grid_code"] or ""]


def added_header(header: list[str]) -> list[str]:
    """The added column names; one the input already has is written as ``geocode_<name>``."""
    taken = set(header)
    return [f"geocode_{name}" if name in taken else name for name in ADDED_COLUMNS]


def _rows(reader: Any, width: int, max_rows: int | None) -> Iterator[list[str]]:
    n = 0
    try:
        for row in reader:
            if not row:
                continue  # a blank line is not a row
            n += 1
            if max_rows is not None and n > max_rows:
                raise ParameterError("file", f"rows: at most {max_rows:,} rows per batch; split the file")
            if len(row) > width:
                raise ParameterError("file", f"line {reader.line_num}: {len(row)} fields but the header has {width}; "
                                "is a field with a comma not quoted?")
            yield row + [""] * (width - len(row))
    except csv.Error as exc:
        raise ParameterError("file", f"line {reader.line_num}: malformed CSV ({exc})") from None


def read_header(reader: Any, column: str) -> tuple[list[str], int]:
    """The header row and the index of the address column, or a clear error."""
    try:
        header = next(reader)
    except StopIteration:
        raise ParameterError("file", "the CSV file is empty: it has no header row") from None
    except csv.Error as exc:
        raise ParameterError("file", f"line 1: malformed CSV header ({exc})") from None
    if header:
        header[0] = header[0].lstrip("\ufeff")  # a UTF-8 BOM read as text
    if column not in header:
        raise ParameterError("column", f"column: {column!r} is not a column of the file (columns: {', '.join(header) or 'none'})")
    return header, header.index(column)


def geocode_csv(src: TextIO, dst: TextIO, column: str, conn: Connection, *,
                chunk_rows: int = DEFAULT_CHUNK_ROWS, max_rows: int | None = None,
                progress: Progress | None = None) -> BatchSummary:
    """Read CSV text from ``src`` (header row; addresses in ``column``), write it to ``dst`` with
    :data:`ADDED_COLUMNS` appended. Raises :class:`ParameterError` for a missing column, malformed CSV
    (naming the line) or more than ``max_rows`` rows."""
    if chunk_rows < 1:
        raise ParameterError("chunk_rows", f"chunk_rows: must be at least 1, got {chunk_rows}")
    started = time.perf_counter()
    reader = csv.reader(src, strict=True)
    summary = BatchSummary()
    try:
        header, index = read_header(reader, column)
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow(header + added_header(header))
        rows = _rows(reader, len(header), max_rows)
        while chunk := list(itertools.islice(rows, chunk_rows)):
            results = geocode_many(conn, [row[index] for row in chunk], "EPSG:4326")
            writer.writerows(row + added_values(r) for row, r in zip(chunk, results))
            summary.rows += len(chunk)
            summary.ambiguous += sum(r.ambiguous for r in results)
            summary.levels.update(r.match_level for r in results)
            if progress:
                progress(len(chunk))
    except UnicodeDecodeError as exc:
        raise ParameterError("encoding", f"encoding: the file is not {exc.encoding} ({exc.reason} near line {reader.line_num + 1}); "
                        "give the right encoding, e.g. gbk") from None
    summary.seconds = time.perf_counter() - started
    return summary
