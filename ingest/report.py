"""What a load did: the run record that provenance keeps, and the rejects file beside it."""
from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import shapely


@dataclass
class FileReport:
    path: str
    sha256: str
    format: str
    crs: str | None
    encoding: str | None
    read: int = 0
    rejected: int = 0
    notes: list[str] = field(default_factory=list)
    rejects_file: str | None = None


@dataclass
class IngestReport:
    layer: str
    mode: str
    run_id: int | None = None
    status: str = "running"
    dry_run: bool = False
    files: list[FileReport] = field(default_factory=list)
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0
    rejected: int = 0
    repaired: int = 0
    duration_s: float = 0.0
    message: str | None = None

    @property
    def changes(self) -> int:
        return self.inserted + self.updated + self.closed

    def as_dict(self) -> dict:
        return asdict(self) | {"changes": self.changes}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RejectsWriter:
    """Rejected rows of one file as CSV: row number, reason, then the row as it came in (+ WKT).

    Written under ``PATH.partial`` until :meth:`RejectsFiles.publish` gives it its own name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        self._file = None
        self._writer = None
        self.count = 0

    def write(self, attributes: pd.DataFrame, geometry: np.ndarray | None, rows: np.ndarray,
              reasons: dict[int, str]) -> None:
        if not reasons:
            return
        positions = sorted(reasons)
        out = attributes.iloc[positions].copy()
        out.insert(0, "reason", [reasons[i] for i in positions])
        out.insert(0, "row", rows[positions])
        picked = None if geometry is None else geometry[positions]
        # as read, in the file's own CRS, at full precision: the row can be corrected and delivered again
        out["geometry_wkt"] = "" if picked is None else [
            "" if g is None else shapely.to_wkt(g, rounding_precision=-1) for g in picked]
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.partial, "w", newline="", encoding="utf-8")
            out.to_csv(self._file, index=False)
            self._writer = csv.writer(self._file)
        else:
            out.to_csv(self._file, index=False, header=False)
        self.count += len(positions)

    def write_plain(self, row: int, reason: str) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.partial, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(["row", "reason"])
        self._writer.writerow([row, reason])
        self.count += 1

    def close(self) -> str | None:
        """The path the file will have once published (None when nothing was rejected)."""
        if self._file:
            self._file.close()
            return str(self.path)
        return None


PARTIAL_SUFFIX = ".partial"


class RejectsFiles:
    """The rejects files of one load. They take their own names only when the load ends with an outcome
    the report describes (committed, dry run, refused under --strict); a load that fails otherwise
    removes them, and one killed outright leaves them marked ``.partial``: no rejects file ever
    describes rows of a load that never happened."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writers: list[RejectsWriter] = []

    def writer(self, name: str) -> RejectsWriter:
        writer = RejectsWriter(self.directory / name)
        self._writers.append(writer)
        return writer

    def publish(self) -> None:
        for writer in self._writers:
            writer.close()
            if writer.partial.exists():
                writer.partial.replace(writer.path)

    def discard(self) -> None:
        for writer in self._writers:
            writer.close()
            writer.partial.unlink(missing_ok=True)
