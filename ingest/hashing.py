"""The content hash of a prepared batch: a stable per-row fingerprint of everything a delivery says about a feature.

Its definition is fixed by the hashes stored in every base (a re-load compares against them to tell "unchanged"):
pandas' ``hash_pandas_object`` of each value as text (pandas' fixed SipHash key), the columns combined row-wise by
``combine_hash_arrays``, the geometry's hex EWKB last, written as 16 hex digits. What changes here is only how
fast the same numbers are made (tests/test_ingest_speed.py and tests/test_ingest_arrow.py check them against the
definition).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.core.util.hashing import combine_hash_arrays, hash_array

_HASH_KEY = "0123456789123456"  # pandas' default key: the hashes stored in every base were made with it
_NULL_HASH = np.iinfo(np.uint64).max  # what hash_pandas_object gives a missing value of a text column
#: rows looked at to tell a column of few distinct values (a status, a class, a district) from one of many (ids)
_SAMPLE = 2048


def content_hash(frame: pd.DataFrame, ewkb: np.ndarray | None) -> pd.arrays.ArrowExtensionArray:
    """The rows' hashes as 16 lowercase hex digits each, in one Arrow text array (no Python string per row: the
    COPY takes the array as it is)."""
    hashes = [_text_hash(frame[column]) for column in frame.columns]
    if ewkb is not None:
        hashes.append(_text_hash(pd.Series(ewkb, dtype=object)))
    combined = combine_hash_arrays(iter(hashes), len(hashes), len(frame))
    digits = combined.astype(">u8").tobytes().hex().encode("ascii")
    offsets = np.arange(0, 16 * len(frame) + 1, 16, dtype=np.int32)
    array = pa.Array.from_buffers(pa.string(), len(frame), [None, pa.py_buffer(offsets), pa.py_buffer(digits)])
    return pd.arrays.ArrowExtensionArray(array)


def _text_hash(series: pd.Series) -> np.ndarray:
    """``hash_pandas_object(series.astype("string"), index=False)``, the short ways for text columns.

    A column of few distinct values (most of a batch's: classes, status, names, area codes) is dictionary-encoded
    by Arrow and only its distinct values are hashed: the hash of a value is a function of the value alone, so
    the numbers are the same, for ~0.02 µs a row instead of ~0.2 (a Python string per value, then its SipHash).
    Pandas' text backed by Arrow (what the CSV reader and the coercion give) is hashed from Arrow without a
    Python string per value when its values repeat; other columns as pandas does."""
    arrow = _arrow_backed_text(series)
    if arrow is not None and _repetitive(arrow.slice(0, _SAMPLE).to_pylist()):
        return _dictionary_hash(arrow)
    if arrow is not None and not arrow.null_count:
        return utf8_hash(arrow)
    values = series.to_numpy()
    if values.dtype == object:
        nulls = pd.isna(values)
        if len(values) > _SAMPLE and _repetitive(values[:_SAMPLE]):
            try:
                return _dictionary_hash(pa.array(values, type=pa.string(), from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                pass  # not all text (bytes, numbers): the ways below
        if not nulls.any():
            try:  # every value text (or bytes: the 3D points' EWKB): hashed directly (SipHash of the UTF-8 bytes)
                return hash_array(values, hash_key=_HASH_KEY, categorize=False)
            except (TypeError, ValueError):  # not all text (numbers, lists…): the long way
                pass
        else:
            try:
                text = pa.array(values, type=pa.string(), from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                text = None
            if text is not None:
                return _dictionary_hash(text)
    return pd.util.hash_pandas_object(series.astype("string"), index=False).to_numpy()


def utf8_bytes(text: pa.Array) -> np.ndarray:
    """Each value's UTF-8 bytes, an object array of ``bytes`` (Arrow's text seen as binary, no copy of the data):
    what ``hash_array`` hashes as it is, where a Python string would be made and then encoded first."""
    return text.cast(pa.binary()).to_numpy(zero_copy_only=False)


def utf8_hash(text: pa.Array, key: str = _HASH_KEY) -> np.ndarray:
    """The SipHash of each value's UTF-8 bytes (no nulls), what ``hash_array`` gives its text, from
    :func:`utf8_bytes` (~0.07 µs a value instead of ~0.17)."""
    return hash_array(utf8_bytes(text), hash_key=key, categorize=False)


def _repetitive(sample: list | np.ndarray) -> bool:
    """Whether a sample of a column holds each value ~4 times or more on average (then hashing its distinct
    values only pays; for ids, every value distinct, it does not)."""
    try:
        return len(sample) > 0 and 4 * len(set(sample)) <= len(sample)
    except TypeError:  # unhashable values (lists, dicts): the general way
        return False


def _arrow_backed_text(series: pd.Series) -> pa.Array | None:
    """The column's Arrow string array when pandas keeps it in Arrow (no copy), else None."""
    if not (isinstance(series.dtype, (pd.ArrowDtype, pd.StringDtype))
            and getattr(series.dtype, "storage", "pyarrow") == "pyarrow"):
        return None
    array = pa.array(series.array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    return array if pa.types.is_string(array.type) else None


def _dictionary_hash(text: pa.Array) -> np.ndarray:
    """The hash of each value of an Arrow text array, computed once per distinct value; nulls as pandas hashes them."""
    encoded = pc.dictionary_encode(text)
    distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
    hashed = hash_array(distinct, hash_key=_HASH_KEY, categorize=False) if len(distinct) else np.zeros(1, np.uint64)
    indices = encoded.indices
    out = hashed[pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)]
    if indices.null_count:
        out[pc.is_null(indices).to_numpy(zero_copy_only=False)] = _NULL_HASH
    return out

