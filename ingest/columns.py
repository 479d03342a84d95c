"""Mapping a delivery's columns onto a layer's canonical schema, and coercing their types.

Every source column that is not mapped is kept, as text or number, in the feature's JSONB
``attributes`` — no attribute is lost. A value that cannot be coerced rejects its row, naming
the field and the value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cim.errors import ParameterError, UserError
from ingest.specs import LayerSpec

_TRUE = {"1", "true", "t", "yes", "y", "是", "y1"}
_FALSE = {"0", "false", "f", "no", "n", "否", ""}


class MappingError(UserError):
    pass


@dataclass(frozen=True)
class ColumnPlan:
    mapped: dict[str, str]  # canonical -> source column
    extra: list[str]  # source columns kept in attributes


def plan_columns(spec: LayerSpec, source_columns: list[str], explicit: dict[str, str], file: str) -> ColumnPlan:
    """Explicit ``--map`` first, then exact canonical names (any case), then the layer's usual aliases."""
    by_lower = {c.lower(): c for c in source_columns}
    mapped: dict[str, str] = {}
    for target, source in explicit.items():
        if target not in spec.fields:
            raise MappingError(f"--map {target}={source}: {target!r} is not a field of layer {spec.name} "
                               f"(fields: {', '.join(spec.fields)})")
        if source not in source_columns:
            raise MappingError(f"{file}: --map {target}={source}: no column {source!r} "
                               f"(columns: {', '.join(source_columns)})")
        mapped[target] = source
    used = set(mapped.values())
    for target in spec.fields:
        if target in mapped:
            continue
        for candidate in (target, *spec.aliases.get(target, ())):
            source = by_lower.get(candidate.lower())
            if source and source not in used:
                mapped[target] = source
                used.add(source)
                break
    missing = [f for f in spec.required if f not in mapped]
    if missing:
        raise MappingError(f"{file}: layer {spec.name} needs column(s) {', '.join(missing)}; none found "
                           f"(columns: {', '.join(source_columns)}); map them with --map FIELD=COLUMN")
    extra = [c for c in source_columns if c not in used]
    return ColumnPlan(mapped=mapped, extra=extra)


def is_free_text(spec: LayerSpec, target: str) -> bool:
    """Whether a field may hold line breaks: text and JSON may; ids, codes, numbers and dates may not."""
    kind = spec.fields[target]
    if kind == "json":
        return True
    return kind == "str" and not (target == "source_id" or target.endswith("code") or target.endswith("_id"))


def line_breaks(values: pd.Series) -> np.ndarray:
    """Positions of values holding a line break."""
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return np.zeros(0, dtype=int)
    text = _arrow_text(values)
    if text is not None and not _holds_line_break_bytes(text):
        return np.zeros(0, dtype=int)
    if text is not None:  # the same test pandas makes of its Arrow-backed text, without making that copy first
        return np.flatnonzero(pc.fill_null(pc.match_substring_regex(text, r"[\r\n]"), False).to_numpy(
            zero_copy_only=False))
    return np.flatnonzero(values.astype("string").str.contains(r"[\r\n]", regex=True).fillna(False).to_numpy())


def _holds_line_break_bytes(text: pa.Array) -> bool:
    """Whether the bytes under an Arrow text array hold a CR or LF anywhere (perhaps outside a slice of it: then
    the regex looks): one memchr over the buffer rather than a regex per value, ~0.1 µs a value, in the usual
    case of a file with no line break in its values. In UTF-8 no other character's bytes hold 0x0A or 0x0D."""
    data = text.buffers()[2]
    if data is None:
        return False
    raw = data.to_pybytes()
    return b"\n" in raw or b"\r" in raw


def merged_rows_reason(column: str) -> str:
    return (f"field {column!r} holds a line break, which it cannot: an unbalanced quote in the file has "
            "probably merged the following rows into this one")


def coerce(frame: pd.DataFrame, spec: LayerSpec, plan: ColumnPlan) -> tuple[pd.DataFrame, dict[int, str]]:
    """Canonical columns with their types (missing ones are null), and per-row errors."""
    out = pd.DataFrame(index=frame.index)
    errors: dict[int, str] = {}
    for target, source in plan.mapped.items():  # first: such a row's other values are not its own either
        if not is_free_text(spec, target):
            for i in line_breaks(frame[source]):
                errors.setdefault(int(i), merged_rows_reason(source))
    for target, kind in spec.fields.items():
        source = plan.mapped.get(target)
        if source is None:
            out[target] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
            continue
        values, bad = _coerce_series(frame[source], kind, arrow=target in spec.passive_text)
        out[target] = values
        for i in np.flatnonzero(bad):
            errors.setdefault(int(i), f"field {source!r} ({target}): {frame[source].iat[int(i)]!r} is not "
                                      f"{_KIND_WORDS[kind]}")
    out["attributes"] = _attributes_json(frame, plan.extra, arrow="attributes" in spec.passive_text)
    return out, errors


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "a yes/no value", "date": "a date",
               "datetime": "a date-time", "json": "valid JSON", "str": "text"}


def _blank(series: pd.Series) -> np.ndarray:
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return series.isna().to_numpy()
    as_text = series.astype("string").str.strip()
    return (series.isna() | as_text.isin(["", "nan", "None", "NULL", "null"]).fillna(True)).to_numpy(dtype=bool)


_BLANKS = pa.array(["", "nan", "None", "NULL", "null"])


def _coerce_text(series: pd.Series, arrow: bool = False) -> pd.Series | None:
    """A text field whose values are all text or missing, the Arrow way: what the general way below makes (pandas'
    own strip of Arrow-backed text is ``utf8_trim_whitespace``), in one pass and one conversion to Python
    strings rather than three — or, with ``arrow``, none: the same values left in Arrow (``pd.ArrowDtype``, for
    fields no rule reads: the hash and the COPY take them as they are); None for anything else."""
    if pd.api.types.is_float_dtype(series):
        return None
    text = _arrow_text(series)
    if text is None:
        return None
    trimmed = pc.utf8_trim_whitespace(text)
    blank = pc.fill_null(pc.is_in(trimmed, value_set=_BLANKS), True)
    kept = pc.if_else(blank, pa.scalar(None, type=pa.string()), trimmed)
    if arrow:
        return pd.Series(pd.arrays.ArrowExtensionArray(kept), index=series.index)
    return pd.Series(kept.to_numpy(zero_copy_only=False), index=series.index, dtype=object)


def _arrow_float_field(series: pd.Series) -> pd.Series | None:
    """A numeric field every value of which is a number Arrow reads (:func:`arrow_floats`): what the general way
    below makes of it, ~10x cheaper; None when that way could make something else — a blank or NaN among
    them (a reject, or a null), or only integers (``pd.to_numeric`` then makes int64, whose text, and so the
    content hash, differs from a float's)."""
    parsed = _parsed_numbers(series, thousands=True)
    if parsed is None or not len(parsed[1]) or np.isnan(parsed[1]).any():
        return None
    text, values = parsed
    if _all_integers(text):
        return None
    return pd.Series(values, index=series.index, dtype=float)


def _coerce_series(series: pd.Series, kind: str, arrow: bool = False) -> tuple[pd.Series, np.ndarray]:
    """The field's values coerced to ``kind``, and which could not be; ``arrow``: a text field may stay in Arrow."""
    if kind == "str":
        text = _coerce_text(series, arrow)
        if text is not None:
            return text, np.zeros(len(series), dtype=bool)
    if kind == "float":
        numbers = _arrow_float_field(series)
        if numbers is not None:
            return numbers, np.zeros(len(series), dtype=bool)
    blank = _blank(series)
    if kind == "str":
        if pd.api.types.is_float_dtype(series):
            # numbers read from a DBF as floats (e.g. 310104.0) are codes, not quantities
            text = series.map(lambda v: str(int(v)) if float(v).is_integer() else str(v), na_action="ignore")
        else:
            text = series.astype("string").str.strip()
        text = text.astype(object)
        text[blank] = None
        return text, np.zeros(len(series), dtype=bool)
    if kind in ("int", "float"):
        numbers = pd.to_numeric(series.astype(str).str.strip().str.replace(",", "", regex=False), errors="coerce")
        bad = numbers.isna().to_numpy() & ~blank
        if kind == "int":
            frac = numbers.notna() & (numbers != numbers.round())
            bad |= frac.to_numpy()
            numbers = numbers.round().astype("Int64")
        return numbers.where(~(blank | bad), None), bad
    if kind == "bool":
        text = series.astype(str).str.strip().str.lower()
        result = pd.Series([None] * len(series), index=series.index, dtype=object)
        result[text.isin(_TRUE).to_numpy()] = True
        result[(text.isin(_FALSE) & ~pd.Series(blank, index=series.index)).to_numpy()] = False
        bad = ~(text.isin(_TRUE) | text.isin(_FALSE)).to_numpy() & ~blank
        return result, bad
    if kind in ("date", "datetime"):
        parsed = pd.to_datetime(series.where(~blank, None), errors="coerce", utc=(kind == "datetime"),
                                format="ISO8601")
        bad = parsed.isna().to_numpy() & ~blank
        if kind == "date":
            return parsed.dt.strftime("%Y-%m-%d").where(~(blank | bad), None), bad
        return parsed.map(lambda t: t.isoformat() if pd.notna(t) else None), bad
    if kind == "json":
        out, bad = [], np.zeros(len(series), dtype=bool)
        for i, (value, is_blank) in enumerate(zip(series, blank)):
            if is_blank:
                out.append(None)
                continue
            try:
                out.append(json.dumps(json.loads(value) if isinstance(value, str) else value, ensure_ascii=False))
            except (TypeError, ValueError):
                out.append(None)
                bad[i] = True
        return pd.Series(out, index=series.index, dtype=object), bad
    raise ValueError(f"unknown field kind {kind}")


def _attributes_json(frame: pd.DataFrame, extra: list[str], arrow: bool = False) -> pd.Series:
    """Each row's unmapped columns as JSON text; ``arrow``: left in Arrow when made there (no rule reads it)."""
    if not extra:
        return pd.Series(["{}"] * len(frame), index=frame.index, dtype=object)
    fast = _text_attributes_json(frame, extra, arrow)
    if fast is not None:
        return fast
    sub = frame[extra]
    records = sub.astype(object).where(sub.notna(), None).to_dict(orient="records")
    return pd.Series([json.dumps(_jsonable(r), ensure_ascii=False) for r in records], index=frame.index,
                     dtype=object)


#: what json.dumps(…, ensure_ascii=False) may escape (a superset: those values go through json.dumps itself), in RE2
_NEEDS_ESCAPE = r'["\\\x00-\x1f\x7f\x{2028}\x{2029}]'


def _text_attributes_json(frame: pd.DataFrame, extra: list[str], arrow: bool = False) -> pd.Series | None:
    """The same JSON text as ``json.dumps(record, ensure_ascii=False)`` per row, built a column at a time in Arrow
    when every extra value is text or missing (a CSV: the --x/--y/--z columns and any unmapped ones). One
    ``json.dumps`` per row was the largest item of a CSV parts load (~10 µs a row); a Python pass per value
    (the escape test, the quoting) was still 9 s of a 1 M-row load's 35 s of loader CPU (docs/benchmarks.md).
    Only values holding a character JSON escapes go through ``json.dumps``. None: some value is not text."""
    pieces: list = []  # key, value, key, value … joined row by row
    for i, column in enumerate(extra):
        text = _arrow_text(frame[column])
        if text is None:
            return None
        quoted = pc.binary_join_element_wise('"', text, '"', "")
        escape = pc.fill_null(pc.match_substring_regex(text, _NEEDS_ESCAPE), False)
        if pc.any(escape).as_py():
            odd = [json.dumps(v, ensure_ascii=False) for v in text.filter(escape).to_pylist()]
            quoted = pc.replace_with_mask(quoted, escape, pa.array(odd, type=pa.string()))
        key = json.dumps(str(column), ensure_ascii=False)
        pieces += [pa.scalar(("{" if i == 0 else ", ") + key + ": "), pc.fill_null(quoted, "null")]
    text = pc.binary_join_element_wise(*pieces, pa.scalar("}"), "")
    if arrow:
        return pd.Series(pd.arrays.ArrowExtensionArray(text), index=frame.index)
    return pd.Series(text.to_numpy(zero_copy_only=False), index=frame.index, dtype=object)


def arrow_floats(series: pd.Series, *, thousands: bool = False) -> np.ndarray | None:
    """The column's numbers parsed by Arrow (trimmed; with ``thousands``, commas dropped first, as the coercion of
    numeric fields does), when every value is text Arrow parses as a number; None otherwise — a blank, a word,
    anything else: the caller goes pandas' way, which says which value is wrong.

    Why: ``pd.to_numeric`` of Python strings was ~0.4 µs a value, Arrow's parse ~0.04 µs, and both give the
    correctly rounded double of the same text (the same bits: tests/test_ingest_arrow.py); "nan" and "inf"
    parse alike in both, and the callers test for them as before."""
    parsed = _parsed_numbers(series, thousands)
    if parsed is None:
        return None
    text, values = parsed
    if len(values) and _all_integers(text):
        # pandas reads a column of integers as int64, then as floats: no negative zero, and exact below 2^53 only
        if not (np.abs(values) < 2.0**53).all():
            return None
        values = values + 0.0  # -0.0 + 0.0 is 0.0
    return values


def _all_integers(text: pa.Array) -> bool:
    """Whether every value is an integer's digits (what ``pd.to_numeric`` makes an int64 column of)."""
    if pc.any(pc.match_substring(text, ".")).as_py():  # the usual decimals: told without a regex per value
        return False
    return bool(pc.all(pc.match_substring_regex(text, r"^[+-]?[0-9]+$")).as_py())


def _parsed_numbers(series: pd.Series, thousands: bool) -> tuple[pa.Array, np.ndarray] | None:
    """(the text as parsed, its numbers), or None (see :func:`arrow_floats`)."""
    if pd.api.types.is_float_dtype(series):
        return None
    text = _arrow_text(series)
    if text is None or text.null_count:
        return None
    text = pc.utf8_trim_whitespace(text)
    if thousands:
        text = pc.replace_substring(text, ",", "")
    try:
        return text, pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _arrow_text(series: pd.Series) -> pa.Array | None:
    """The column as one Arrow string array (pandas' Arrow-backed text as it is), or None when a value is neither
    text nor missing (numbers, bytes: the general way)."""
    try:
        array = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        return None
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_null(array.type):
        return array.cast(pa.string())
    if pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    return array if pa.types.is_string(array.type) else None


def _jsonable(record: dict) -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, (np.integer,)):
            value = int(value)
        elif isinstance(value, (np.floating,)):
            value = None if np.isnan(value) else float(value)
        elif isinstance(value, float) and np.isnan(value):
            value = None
        elif isinstance(value, (pd.Timestamp,)):
            value = value.isoformat()
        elif isinstance(value, (bytes, bytearray)):
            value = value.hex()
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            value = str(value)
        out[str(key)] = value
    return out


def parse_mapping(pairs: list[str], mapping_file: Path | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    if mapping_file:
        try:
            mapping.update(json.loads(mapping_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ParameterError("mapping-file", f"--mapping-file {mapping_file}: not a JSON object of field -> column ({exc})") from exc
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target or not source:
            raise ParameterError("map", f"--map {pair!r}: expected FIELD=COLUMN")
        mapping[target.strip()] = source.strip()
    return mapping
