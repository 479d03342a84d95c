"""``cim samples load``: the sample city, file by file, through the ordinary loaders."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from cim.errors import UserError
from ingest.report import IngestReport
from ingest.run import IngestOptions, ingest_files


def load_samples(directory: Path, engine: Engine,
                 on_report: Callable[[IngestReport], None] | None = None) -> list[IngestReport]:
    manifest = directory / "manifest.json"
    if not manifest.exists():
        raise UserError(f"{manifest}: not found (run from the project root or pass --directory)")
    reports = []
    for entry in json.loads(manifest.read_text(encoding="utf-8")):
        options = IngestOptions(crs=entry.get("crs"), encoding=entry.get("encoding"),
                                layer_name=entry.get("layer_name"), x=entry.get("x"), y=entry.get("y"),
                                z=entry.get("z"), wkt=entry.get("wkt"), address_column=entry.get("address_column"),
                                mapping=entry.get("map") or {}, operator="cim samples load")
        report = ingest_files(entry["layer"], [directory / entry["path"]], options, engine)
        reports.append(report)
        if on_report:
            on_report(report)
    return reports
