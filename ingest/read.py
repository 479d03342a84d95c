"""Opening a delivery: any OGR format through pyogrio (streamed as Arrow batches), or CSV with
coordinate or WKT columns. Yields batches of attributes + shapely geometries + source row numbers,
and says which CRS and encoding the file declared."""
from __future__ import annotations

import codecs
import csv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyogrio
import shapely

from cim.errors import UserError
from ingest.columns import arrow_floats, line_breaks, merged_rows_reason
from ingest.encoding import (BYTES_AS_TEXT, DBF_SAMPLE_BYTES, EncodingProblem, decode_column, guess_dbf_encoding,
                             repair_column)
from ingest.sequence import number_by_line, scan_sequence

BATCH_ROWS = 100_000
ARROW_BLOCK_BYTES = 8 << 20  # what Arrow's CSV reader parses at a time
OGR_SUFFIXES = {".geojson", ".json", ".geojsonl", ".geojsons", ".jsonl", ".shp", ".gpkg", ".fgb", ".zip", ".gml", ".kml", ".tab", ".mif", ".sqlite", ".gdb"}


class ReadError(UserError):
    """The file cannot be read as given; the message names the file and what to change."""


@dataclass(frozen=True)
class ReadOptions:
    layer_name: str | None = None  # GeoPackage / multi-layer sources
    encoding: str | None = None
    x: str | None = None
    y: str | None = None
    z: str | None = None
    wkt: str | None = None
    batch_rows: int = BATCH_ROWS


@dataclass
class Batch:
    attributes: pd.DataFrame  # source columns, original names
    geometry: np.ndarray | None  # shapely geometries (None entries allowed); None: no geometry at all
    rows: np.ndarray  # 1-based row number in the source
    errors: dict[int, str] = field(default_factory=dict)  # position in batch -> reason (unparsable geometry)


@dataclass
class Source:
    path: Path
    format: str
    declared_crs: str | None  # from .prj / crs member / GeoPackage SRS
    encoding: str | None
    notes: list[str]
    batches: Iterator[Batch]
    unreadable: int = 0  # records that could not be read at all (each one a reject with its line number)


def open_source(path: Path, options: ReadOptions) -> Source:
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        return _open_csv(path, options)
    if suffix in (".parquet", ".geoparquet"):
        return _open_geoparquet(path, options)
    if suffix not in OGR_SUFFIXES:
        raise ReadError(f"{path}: unsupported file type {suffix!r} (GeoJSON, Shapefile, zipped Shapefile, "
                        "GeoPackage, FlatGeobuf, GeoParquet or CSV)")
    return _open_ogr(path, options)


def _ogr_path(path: Path, options: ReadOptions) -> str:
    if path.suffix.lower() != ".zip":
        return str(path)
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile as exc:
        raise ReadError(f"{path}: not a valid zip file ({exc})") from exc
    shps = [n for n in names if n.lower().endswith(".shp")]
    if not shps:
        raise ReadError(f"{path}: the zip holds no .shp file")
    if len(shps) > 1 and not options.layer_name:
        raise ReadError(f"{path}: the zip holds several Shapefiles ({', '.join(shps)}); choose one with --layer")
    chosen = next((s for s in shps if Path(s).stem == options.layer_name), shps[0])
    return f"/vsizip/{path}/{chosen}"


def _open_ogr(path: Path, options: ReadOptions) -> Source:
    ogr_path = _ogr_path(path, options)
    layer = options.layer_name if path.suffix.lower() != ".zip" else None
    try:
        layers = pyogrio.list_layers(ogr_path)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise ReadError(f"{path}: cannot open ({exc})") from exc
    if layer is None and len(layers) > 1:
        names = ", ".join(str(n) for n, _ in layers)
        raise ReadError(f"{path}: has several layers ({names}); choose one with --layer")
    if layer is not None and layer not in {str(n) for n, _ in layers}:
        raise ReadError(f"{path}: no layer {layer!r} (layers: {', '.join(str(n) for n, _ in layers)})")
    if options.encoding:
        try:
            codecs.lookup(options.encoding)
        except LookupError as exc:
            raise ReadError(f"{path}: unknown encoding {options.encoding!r} (e.g. GBK, GB18030, UTF-8)") from exc
    notes: list[str] = []
    guessed = None if options.encoding else _undeclared_shapefile_encoding(path, ogr_path)
    if guessed:
        options = replace(options, encoding=guessed)
        notes.append(f"no .cpg says how the text is encoded; it decodes as {guessed}, so it was read as {guessed} "
                     "(pass --encoding to choose another)")
    info = pyogrio.read_info(ogr_path, layer=layer, encoding=options.encoding)
    cpg = path.with_suffix(".cpg")
    declared_encoding = options.encoding or (cpg.read_text().strip() if cpg.exists() else info.get("encoding"))
    # an explicit encoding of a DBF is applied by us to the bytes as stored, exactly once: GDAL would
    # apply it to whatever the file holds, even text already mis-decoded and re-saved as UTF-8
    explicit = options.encoding if options.encoding and info.get("driver") == "ESRI Shapefile" else None
    batches = _ogr_batches(ogr_path, layer, options, notes, path, explicit)
    unreadable = 0
    if info.get("driver") == "GeoJSONSeq":
        scan = scan_sequence(path)
        batches, unreadable = number_by_line(batches, scan, path, Batch), len(scan.unreadable)
    return Source(path=path, format=info.get("driver") or path.suffix.lstrip("."),
                  declared_crs=info.get("crs"), encoding=declared_encoding, notes=notes,
                  batches=batches, unreadable=unreadable)


def _undeclared_shapefile_encoding(path: Path, ogr_path: str) -> str | None:
    """For a Shapefile (plain or zipped) that has no .cpg: the encoding its .dbf's text decodes as, if not UTF-8."""
    if not ogr_path.lower().endswith(".shp"):
        return None
    if ogr_path.startswith("/vsizip/"):
        member = ogr_path[len(f"/vsizip/{path}/"):]
        with zipfile.ZipFile(path) as archive:
            names = {n.lower(): n for n in archive.namelist()}
            stem = member[:-4].lower()
            dbf = names.get(stem + ".dbf")
            if stem + ".cpg" in names or dbf is None:
                return None
            with archive.open(dbf) as f:
                return guess_dbf_encoding(f.read(DBF_SAMPLE_BYTES + 65536))
    if path.with_suffix(".cpg").exists() or path.with_suffix(".CPG").exists():
        return None
    dbf = next((p for p in (path.with_suffix(".dbf"), path.with_suffix(".DBF")) if p.exists()), None)
    if dbf is None:
        return None
    with open(dbf, "rb") as f:
        return guess_dbf_encoding(f.read(DBF_SAMPLE_BYTES + 65536))


def _ogr_batches(ogr_path: str, layer: str | None, options: ReadOptions, notes: list[str],
                 path: Path, explicit: str | None) -> Iterator[Batch]:
    start = 1
    repaired: dict[str, str] = {}
    read_as = BYTES_AS_TEXT if explicit else options.encoding
    with pyogrio.open_arrow(ogr_path, layer=layer, encoding=read_as, use_pyarrow=True,
                            batch_size=options.batch_rows) as (meta, reader):
        geom_col = meta["geometry_name"] or "wkb_geometry"
        for record_batch in reader:
            n = record_batch.num_rows
            columns = [c for c in record_batch.schema.names if c != geom_col]
            try:
                frame = record_batch.select(columns).to_pandas() if columns else pd.DataFrame(index=range(n))
                if explicit:
                    _decode_text(frame, path, explicit, repaired, notes)
                elif options.encoding is None:
                    _repair_text(frame, path, repaired, notes)
            except (pa.ArrowInvalid, UnicodeDecodeError) as exc:  # undecoded bytes of an undeclared code page
                raise ReadError(f"{path}: text near row {start} is not UTF-8 and nothing declares its encoding "
                                f"({exc}); pass it with --encoding (e.g. --encoding gbk)") from None
            geometry = None
            if geom_col in record_batch.schema.names:
                geometry = shapely.from_wkb(record_batch.column(geom_col).to_numpy(zero_copy_only=False))
            yield Batch(attributes=frame, geometry=geometry, rows=np.arange(start, start + n))
            start += n


def _decode_text(frame: pd.DataFrame, path: Path, encoding: str, peeled: dict[str, str],
                 notes: list[str]) -> None:
    try:  # the DBF's field names are in the same encoding as its values
        names, _ = decode_column(pd.Series(list(frame.columns), dtype=object), "(field names)", encoding)
    except EncodingProblem as exc:
        raise ReadError(f"{path}: field name {exc.sample!r} is not valid {encoding}; check --encoding") from exc
    frame.columns = list(names)
    for column in _text_columns(frame):
        try:
            frame[column], layers = decode_column(frame[column], column, encoding)
        except EncodingProblem as exc:
            raise ReadError(f"{path}: column {exc.column!r} is not valid {encoding} (e.g. {exc.sample!r}); "
                            "check --encoding") from exc
        if layers and column not in peeled:
            peeled[column] = encoding
            notes.append(f"column {column!r}: {encoding} text that had been read as Latin-1 and saved as UTF-8 "
                         f"({layers}×): undone, then decoded as {encoding}")


def _text_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns
            if pd.api.types.is_object_dtype(frame[c]) or pd.api.types.is_string_dtype(frame[c])]


def _repair_text(frame: pd.DataFrame, path: Path, repaired: dict[str, str], notes: list[str]) -> None:
    for column in _text_columns(frame):
        try:
            fixed, how = repair_column(frame[column], column)
        except EncodingProblem as exc:
            raise ReadError(
                f"{path}: column {exc.column!r} holds text that looks mis-decoded (e.g. {exc.sample!r}) but is "
                "not clean GBK either; pass the real encoding with --encoding (e.g. --encoding GBK or GB18030)"
            ) from exc
        if how:
            frame[column] = fixed
            if column not in repaired:
                repaired[column] = how
                notes.append(f"column {column!r}: text was GBK mis-decoded as {how.split(' → ')[0]} "
                             f"(the .cpg/encoding label is wrong); repaired ({how})")


def _open_geoparquet(path: Path, options: ReadOptions) -> Source:
    """GeoParquet through pyarrow: pyogrio's bundled GDAL hands .parquet to its ADBC driver, which needs a
    DuckDB library the wheel does not ship; the format is simple enough to read directly."""
    import json

    import pyarrow.parquet as pq
    import pyproj

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError variants
        raise ReadError(f"{path}: not a readable Parquet file ({exc})") from exc
    geo_meta = json.loads((parquet.schema_arrow.metadata or {}).get(b"geo", b"{}"))
    column = geo_meta.get("primary_column")
    if not column:
        raise ReadError(f"{path}: Parquet without GeoParquet 'geo' metadata (no geometry column declared)")
    column_meta = geo_meta["columns"][column]
    if column_meta.get("encoding", "WKB").upper() != "WKB":
        raise ReadError(f"{path}: geometry encoding {column_meta['encoding']!r} is not supported (WKB only)")
    crs_json = column_meta.get("crs", "OGC:CRS84")  # GeoParquet: an absent crs means OGC:CRS84
    crs = None if crs_json is None else pyproj.CRS.from_user_input(crs_json)
    declared = None if crs is None else (f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_wkt())

    def batches() -> Iterator[Batch]:
        start = 1
        for record_batch in parquet.iter_batches(batch_size=options.batch_rows):
            n = record_batch.num_rows
            names = [c for c in record_batch.schema.names if c != column]
            frame = record_batch.select(names).to_pandas() if names else pd.DataFrame(index=range(n))
            geometry = shapely.from_wkb(record_batch.column(column).to_numpy(zero_copy_only=False))
            yield Batch(attributes=frame, geometry=geometry, rows=np.arange(start, start + n))
            start += n

    return Source(path=path, format="GeoParquet", declared_crs=declared, encoding="UTF-8", notes=[],
                  batches=batches())


def _open_csv(path: Path, options: ReadOptions) -> Source:
    encoding = options.encoding or "utf-8-sig"
    try:
        with open(path, encoding=encoding, newline="") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as exc:
        hint = ""
        raw = path.read_bytes()[:200_000]
        for candidate in ("gbk", "gb18030"):
            try:
                raw.decode(candidate)
                hint = f"; it decodes as {candidate.upper()}: pass --encoding {candidate.upper()}"
                break
            except UnicodeDecodeError:
                continue
        raise ReadError(f"{path}: not valid {encoding} (byte {exc.start}){hint}") from exc
    except LookupError as exc:
        raise ReadError(f"{path}: unknown encoding {encoding!r}") from exc
    if not header:
        raise ReadError(f"{path}: empty CSV file (no header row)")
    for option, column in (("--x", options.x), ("--y", options.y), ("--z", options.z), ("--wkt", options.wkt)):
        if column and column not in header:
            raise ReadError(f"{path}: {option} column {column!r} not found (columns: {', '.join(header)})")
    if bool(options.x) != bool(options.y):
        raise ReadError(f"{path}: give both --x and --y (or --wkt)")
    return Source(path=path, format="CSV", declared_crs=None, encoding=encoding, notes=[],
                  batches=_csv_batches(path, encoding, options, header))


def _csv_batches(path: Path, encoding: str, options: ReadOptions, header: list[str]) -> Iterator[Batch]:
    """UTF-8 files through Arrow's CSV reader (in C++, a third of pandas' parser's CPU on the parts delivery, and
    already the Arrow-backed text pandas would make); anything it refuses — another encoding, odd headers, a
    row it cannot parse — is read by pandas from that row on, which says which row is wrong or reads it as
    pandas always has (a short row's missing fields empty)."""
    done = 0
    if _arrow_reads(encoding, header):
        try:
            for batch in _arrow_csv_batches(path, options, header):
                yield batch
                done += len(batch.rows)
            return
        except pa.ArrowInvalid:
            pass
    yield from _pandas_csv_batches(path, encoding, options, skip=done)


def _arrow_reads(encoding: str, header: list[str]) -> bool:
    """Whether Arrow reads this file as pandas would: UTF-8, and names pandas keeps as they are (no empty or
    repeated one, which pandas renames)."""
    utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    return utf8 and all(header) and len(set(header)) == len(header)


def _arrow_csv_batches(path: Path, options: ReadOptions, header: list[str]) -> Iterator[Batch]:
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(block_size=ARROW_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=False,
                                             quoted_strings_can_be_null=False))
    if reader.schema.names != header or any(t != pa.string() for t in reader.schema.types):
        raise pa.ArrowInvalid(f"{path}: Arrow reads another header than {header}")  # pandas reads the file
    text = pd.StringDtype("pyarrow", na_value=np.nan)  # what read_csv(dtype=str) makes
    start, pending, held = 1, [], 0
    for record_batch in reader:
        pending.append(record_batch)
        held += record_batch.num_rows
        while held >= options.batch_rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            chunk, rest = table.slice(0, options.batch_rows), table.slice(options.batch_rows)
            pending, held = rest.to_batches(), rest.num_rows
            yield _csv_batch(chunk.to_pandas(types_mapper={pa.string(): text}.get), start, options)
            start += chunk.num_rows
    if held:
        yield _csv_batch(pa.Table.from_batches(pending).to_pandas(types_mapper={pa.string(): text}.get), start, options)


def _csv_batch(chunk: pd.DataFrame, start: int, options: ReadOptions) -> Batch:
    geometry, errors = _csv_geometry(chunk, options)
    return Batch(attributes=chunk, geometry=geometry, rows=np.arange(start, start + len(chunk)), errors=errors)


def _pandas_csv_batches(path: Path, encoding: str, options: ReadOptions, skip: int = 0) -> Iterator[Batch]:
    """``skip``: rows already read (by Arrow) — parsed again, not yielded again."""
    start = 1
    try:
        chunks = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding,
                             chunksize=options.batch_rows)
        for chunk in chunks:
            n = len(chunk)
            if start + n <= skip + 1:
                start += n
                continue
            chunk = chunk.iloc[max(skip + 1 - start, 0):].reset_index(drop=True)
            start += n - len(chunk)
            yield _csv_batch(chunk, start, options)
            start += len(chunk)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ReadError(f"{path}: cannot parse CSV near row {start} ({exc})") from exc


def _csv_geometry(chunk: pd.DataFrame, options: ReadOptions) -> tuple[np.ndarray | None, dict[int, str]]:
    errors: dict[int, str] = {}
    for column in (options.x, options.y, options.z, options.wkt):
        if column:
            for i in line_breaks(chunk[column]):
                errors.setdefault(int(i), merged_rows_reason(column))
    if options.wkt:
        text = chunk[options.wkt].to_numpy(dtype=object)
        geometry = shapely.from_wkt(np.where(text == "", None, text), on_invalid="ignore")
        for i in np.flatnonzero(pd.isna(geometry) & (text != "")):
            errors.setdefault(int(i), f"field {options.wkt!r}: not valid WKT")
        return geometry, errors
    if not options.x:
        return None, errors
    coords = {}
    for axis, column in (("x", options.x), ("y", options.y), ("z", options.z)):
        if column is None:
            continue
        values = arrow_floats(chunk[column])
        if values is None:  # a blank or a word among them: pandas' parse, and the values it cannot read
            values = pd.to_numeric(chunk[column].str.strip(), errors="coerce").to_numpy(dtype=float)
            unread = np.isnan(values) & (chunk[column].str.strip() != "").to_numpy()
        else:
            unread = np.isnan(values)  # "nan" and the like: Arrow parses them as pandas does, to NaN
        for i in np.flatnonzero(unread):
            errors.setdefault(int(i), f"field {column!r}: {chunk[column].iat[int(i)]!r} is not a number")
        for i in np.flatnonzero(np.isinf(values)):  # "inf", "-Infinity", "1e999": no place on Earth
            errors.setdefault(int(i), f"field {column!r}: {chunk[column].iat[int(i)]!r} is not a finite number")
        coords[axis] = np.where(np.isinf(values), np.nan, values)
    ok = ~(np.isnan(coords["x"]) | np.isnan(coords["y"]))
    geometry = np.full(len(chunk), None, dtype=object)
    if "z" in coords:
        z = np.where(np.isnan(coords["z"]), 0.0, coords["z"])
        geometry[ok] = shapely.points(coords["x"][ok], coords["y"][ok], z[ok])
    else:
        geometry[ok] = shapely.points(coords["x"][ok], coords["y"][ok])
    return geometry, errors

