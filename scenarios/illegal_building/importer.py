"""Clue files: ``cim scenarios illegal-building import FILE`` (CSV or JSON of clues from any channel)
and ``… changes FILE`` (a remote-sensing change-polygon file: GeoJSON, Shapefile, GeoPackage …).
Every row is checked before anything is stored; an error names the file, row and field; a file is
taken in as one transaction, so a refused file leaves nothing behind."""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import shapely

from cases.importer import number_field
from cases.textfile import read_records
from cim.errors import ParameterError, UserError
from cim.times import day_start, parse_instant

from scenarios.illegal_building.clues import CHANNELS, Clue

FIELDS = ("channel", "lon", "lat", "x", "y", "crs", "address", "description", "external_id", "reported_at")


def instant(where: str, field: str, text: str) -> datetime:
    """An RFC 3339 time with offset, or a date (its start, UTC), as one rule: :mod:`cim.times`."""
    try:
        value = parse_instant(text, field)
    except ParameterError as exc:
        raise UserError(f"{where}: field {field}: {exc}") from None
    return value if isinstance(value, datetime) else day_start(value)


def to_clue(where: str, row: dict[str, Any]) -> Clue:
    def text(key: str) -> str | None:
        value = row.get(key)
        if value not in (None, "") and "\x00" in str(value):
            raise UserError(f"{where}: field {key}: contains a NUL character (U+0000)")
        return None if value in (None, "") else str(value).strip()

    channel = text("channel") or ""
    if channel not in CHANNELS:
        raise UserError(f"{where}: field channel: {channel!r} is not one of {', '.join(CHANNELS)}")
    x = number_field(where, "lon", row.get("lon")) if text("lon") is not None else number_field(where, "x", row.get("x"))
    y = number_field(where, "lat", row.get("lat")) if text("lat") is not None else number_field(where, "y", row.get("y"))
    if (x is None) != (y is None):
        raise UserError(f"{where}: fields lon, lat: give both or neither")
    if x is None and not text("address"):
        raise UserError(f"{where}: a clue needs lon/lat (or x/y) or an address")
    reported = text("reported_at")
    return Clue(channel=channel, x=x, y=y, crs=text("crs") or "EPSG:4326", address_text=text("address"),
                description=text("description"), external_id=text("external_id"),
                reported_at=instant(where, "reported_at", reported) if reported else None,
                attributes={k: v for k, v in row.items() if k not in FIELDS and v not in (None, "")})


def read_clues(path: Path) -> list[tuple[str, Clue]]:
    """A CSV (header ``channel,lon,lat,address,description,external_id,reported_at``…) or a JSON
    array of objects with the same keys."""
    return [(where, to_clue(where, row))
            for where, row in read_records(path, one="clue", needed=("channel",), columns=FIELDS)]


def read_changes(path: Path, crs: str | None = None, id_field: str = "id",
                 time_field: str = "detected_at") -> list[tuple[str, Clue]]:
    """Change polygons of a remote-sensing comparison (drone or satellite): each polygon one clue of
    channel ``remote_sensing``, its id the external id, its detection time the report time."""
    import pyogrio

    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        frame = pyogrio.read_dataframe(path, datetime_as_string=True)
    except Exception as exc:  # pyogrio names the driver's trouble
        raise UserError(f"{path}: cannot be read as a vector file: {exc}") from None
    source_crs = crs or (frame.crs.to_wkt() if frame.crs is not None else None)
    if source_crs is None:
        raise UserError(f"{path}: the file declares no CRS; give one with --crs")
    if time_field not in frame.columns:
        raise UserError(f"{path}: missing column {time_field!r} (when the change was detected)")
    out = []
    for n, (record, geom) in enumerate(zip(frame.drop(columns="geometry").to_dict("records"),
                                           frame.geometry.values), start=1):
        where = f"{path}, feature {n}"
        if geom is None or geom.is_empty:
            raise UserError(f"{where}: geometry: empty")
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise UserError(f"{where}: geometry: a change is a polygon, got {geom.geom_type}")
        when = record.get(time_field)
        if when in (None, ""):
            raise UserError(f"{where}: field {time_field}: empty")
        reported = instant(where, time_field, when.isoformat() if isinstance(when, date) else str(when))
        ident = record.get(id_field)
        out.append((where, Clue(channel="remote_sensing", polygon=shapely.force_2d(geom), crs=source_crs,
                                external_id=None if ident in (None, "") else str(ident), reported_at=reported,
                                description=str(record.get("description") or "遥感变化图斑"),
                                attributes={k: (v.isoformat() if isinstance(v, (date, datetime)) else v)
                                            for k, v in record.items()
                                            if k not in (id_field, time_field, "description") and v not in (None, "")})))
    return out
