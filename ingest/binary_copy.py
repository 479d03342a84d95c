"""A prepared batch as ``COPY … (FORMAT binary)``: the columns go to Arrow arrays (no text per value), pgpq
(Rust) writes PostgreSQL's binary tuple format from them, and the geometry travels as EWKB bytes.

Why: the text COPY made every value a string twice (pandas → CSV, then the server's input functions) and sent
the geometry as hex; the server's text parsing competes with the loader's Python for the machine's two cores.
Only the column types below (and ``uuid``, as its 16 bytes) are written in binary (those of the feature tables' loaded columns); a batch with
a value of any other type for a column that is not empty goes the text way (:func:`ingest.merge.copy_rows`).
"""
from __future__ import annotations

import binascii
import io

import numpy as np
import pandas as pd
import pgpq
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
from pgpq.encoders import StringEncoderBuilder
from pgpq.schema import Jsonb

#: PostgreSQL type name -> the Arrow type pgpq writes as that type's binary form
ARROW_TYPES = {"text": pa.string(), "varchar": pa.string(), "int4": pa.int32(), "int8": pa.int64(),
               "float8": pa.float64(), "bool": pa.bool_(), "jsonb": pa.string(), "geometry": pa.binary()}


def column_types(cur, table: str, columns: list[str]) -> dict[str, str]:  # noqa: ANN001 (a DBAPI cursor)
    """The type name (``pg_type.typname``) of each of ``columns`` of ``table``."""
    cur.execute("SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped", (table,))
    types = dict(cur.fetchall())
    return {c: types[c] for c in columns if c in types}


def encode(frame: pd.DataFrame, ewkb: np.ndarray | None, columns: list[str],
           types: dict[str, str]) -> io.BytesIO | None:
    """The whole COPY stream (header, rows, trailer) of ``frame``'s ``columns``; None when a column's values
    cannot be written in binary (the caller sends text instead)."""
    arrays, encoders = [], {}
    for column in columns:
        kind = types.get(column)
        if column == "geom":
            array = _ewkb_bytes(ewkb, len(frame))
        elif column not in frame.columns:
            array = pa.nulls(len(frame), type=pa.string())  # NULL is NULL whatever the column's type
        elif kind == "uuid":
            array = _uuid_bytes(frame[column])
        else:
            array = _array(frame[column], kind)
        if array is None:
            return None
        if kind == "jsonb" and pa.types.is_string(array.type):
            encoders[column] = StringEncoderBuilder.new_with_output(pa.field(column, pa.string()), Jsonb())
        arrays.append(array)
    table = pa.Table.from_arrays(arrays, names=columns)
    fields = {f.name: encoders.get(f.name) or pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(f)
              for f in table.schema}
    encoder = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(table.schema, fields)
    buffer = io.BytesIO()
    buffer.write(encoder.write_header())
    for batch in table.to_batches():
        buffer.write(encoder.write_batch(batch))
    buffer.write(encoder.finish())
    buffer.seek(0)
    return buffer


def _array(series: pd.Series, kind: str | None) -> pa.Array | None:
    if kind is None or kind not in ARROW_TYPES:
        return pa.nulls(len(series), type=pa.string()) if series.isna().all() else None
    try:
        return pa.array(series, type=ARROW_TYPES[kind], from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        return None  # e.g. numbers in a text column: the text COPY writes them as pandas would


def _uuid_bytes(series: pd.Series) -> pa.Array | None:
    """UUIDs as their 16 bytes, what ``uuid_recv`` reads: the loader's own (an Arrow array of 16-byte values,
    ingest.merge.random_uuids) as they are; None for anything else (the text COPY then takes them)."""
    if not (isinstance(series.dtype, pd.ArrowDtype) and pa.types.is_binary(series.dtype.pyarrow_dtype)):
        return None
    array = pa.array(series.array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count or not pa.compute.all(pa.compute.equal(pa.compute.binary_length(array), 16)).as_py():
        return None
    return array


def _ewkb_bytes(ewkb: np.ndarray | None, n: int) -> pa.Array:
    """Hex EWKB (what the content hash reads) as bytes, decoded in one call rather than one per geometry."""
    if ewkb is None:
        return pa.nulls(n, type=pa.binary())
    hexes = np.asarray(ewkb, dtype=object)
    if len(hexes) and isinstance(hexes[0], bytes):  # 3D points (ingest.merge._point_z_ewkb_hex): all ASCII bytes
        lengths = np.fromiter(map(len, hexes), dtype=np.int64, count=len(hexes)) // 2
        offsets = np.zeros(len(hexes) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        return pa.Array.from_buffers(pa.binary(), len(hexes), [None, pa.py_buffer(offsets),
                                                                pa.py_buffer(binascii.unhexlify(b"".join(hexes)))])
    present = ~pd.isna(hexes)
    text = np.where(present, hexes, "")
    lengths = np.fromiter(map(len, text), dtype=np.int64, count=len(text)) // 2
    offsets = np.zeros(len(text) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = bytes.fromhex("".join(text))
    validity = None if present.all() else pa.array(present).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), len(text), [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=int((~present).sum()))
