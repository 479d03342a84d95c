"""GeoJSON text sequences (``.geojsonl``, RFC 8142 ``.geojsons``): which line each feature is on, and
which lines cannot be read.

GDAL's GeoJSONSeq driver skips a line it cannot parse without a word, and numbers the features it
keeps 1, 2, 3… — so a cut line would vanish (and ``--mode replace`` would then close its feature),
and every later rejects row would name the wrong line. The file is scanned once here: each line
that does not hold a Feature becomes a reject with its line number, and the features GDAL reads
are numbered by the line they are on.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cim.errors import UserError

RECORD_SEPARATOR = b"\x1e"
_SHOWN = 80  # characters of an unreadable line quoted in its reject reason


@dataclass
class SequenceScan:
    feature_lines: list[int] = field(default_factory=list)  # 1-based line of each Feature, in file order
    unreadable: dict[int, str] = field(default_factory=dict)  # line -> why it cannot be read


def scan_sequence(path: Path) -> SequenceScan:
    scan = SequenceScan()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.strip().strip(RECORD_SEPARATOR).strip()
            if not text:
                continue
            reason = _unreadable(text)
            if reason is None:
                scan.feature_lines.append(number)
            else:
                shown = text.decode("utf-8", errors="replace")
                shown = shown if len(shown) <= _SHOWN else shown[:_SHOWN] + "…"
                scan.unreadable[number] = f"line {number}: {reason}: {shown}"
    return scan


def _unreadable(text: bytes) -> str | None:
    try:
        value = json.loads(text)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError as exc:  # json.JSONDecodeError
        cut = ", the line is cut off" if not text.endswith(b"}") else ""
        return f"not valid JSON ({exc.msg}: column {exc.colno}{cut})"
    if not isinstance(value, dict) or value.get("type") != "Feature":
        return "not a GeoJSON Feature"
    return None


def number_by_line(batches: Iterator, scan: SequenceScan, path: Path, batch_type) -> Iterator:
    """``batches`` (numbered 1, 2, 3… by the reader) numbered by their lines, then one batch holding
    the unreadable lines as rejects (same columns, no values, no geometry)."""
    lines = np.asarray(scan.feature_lines, dtype=np.int64)
    done = 0
    columns: list[str] = []
    for batch in batches:
        n = len(batch.rows)
        if done + n > len(lines):
            raise UserError(f"{path}: GDAL read more features than the file has Feature lines; "
                            "convert it to GeoJSON and load that")
        batch.rows = lines[done:done + n]
        done += n
        columns = list(batch.attributes.columns)
        yield batch
    if done != len(lines):
        raise UserError(f"{path}: only {done} of the {len(lines)} Feature lines could be read; "
                        "convert it to GeoJSON and load that")
    if scan.unreadable:
        if not columns:
            first = min(scan.unreadable)
            raise UserError(f"{path}: no line holds a readable feature ({scan.unreadable[first]})")
        numbers = sorted(scan.unreadable)
        yield batch_type(attributes=pd.DataFrame({c: [None] * len(numbers) for c in columns}, dtype=object),
                         geometry=np.full(len(numbers), None, dtype=object), rows=np.asarray(numbers),
                         errors={i: scan.unreadable[line] for i, line in enumerate(numbers)})
