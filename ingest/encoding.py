"""Text that was decoded with the wrong code page, and how to undo it.

Surveyors' Shapefiles often hold GBK text under a ``.cpg`` that says ISO-8859-1 (or none), and
some have been through that mistake twice (GBK bytes read as Latin-1, saved as UTF-8, read as
Latin-1 again). Latin-1 maps every byte to one character, so each wrong decoding can be undone
exactly with ``.encode('latin-1')``; we peel such layers until the bytes decode as GBK and
yield CJK text. A column is repaired only if *every* value peels cleanly; if most but not all do,
the loader stops and names the ``--encoding`` to use; if few do, the text is genuine Latin-1.
"""
from __future__ import annotations

import re

import pandas as pd

_HIGH_LATIN1 = re.compile(r"[\x80-\xff]")
_HIGH_RUN = re.compile(r"[\x80-\xff]+")
_CJK = re.compile(r"[\u3400-\u9fff]")
MAX_LAYERS = 3


def peel(value: str) -> tuple[str, list[str]] | None:
    """Undo Latin-1 mis-decodings of one string; returns (text, steps) or None if it does not peel."""
    steps: list[str] = []
    current = value
    for _ in range(MAX_LAYERS):
        if not _HIGH_LATIN1.search(current):
            break
        try:
            raw = current.encode("latin-1")
        except UnicodeEncodeError:
            return None
        try:
            current = raw.decode("utf-8")
            steps.append("utf-8")
            continue
        except UnicodeDecodeError:
            pass
        # Chinese text in GBK is pairs of high bytes; a lone one ("·X") is genuine Latin-1 punctuation
        if any(len(run) % 2 for run in _HIGH_RUN.findall(current)):
            return None
        try:
            current = raw.decode("gbk")
            steps.append("gbk")
            break
        except UnicodeDecodeError:
            return None
    return current, steps


class EncodingProblem(Exception):
    """Some values of a column look mis-decoded but do not repair cleanly."""

    def __init__(self, column: str, sample: str) -> None:
        super().__init__(column, sample)
        self.column, self.sample = column, sample


def repair_column(values: pd.Series, column: str) -> tuple[pd.Series, str | None]:
    """Repair a whole column if it is GBK mis-decoded as Latin-1; returns (values, description)."""
    text = values.astype("string")
    flagged = text.str.contains(_HIGH_LATIN1.pattern, regex=True, na=False)
    if not flagged.any():
        return values, None
    suspicious = text[flagged].unique()
    peeled = {v: peel(v) for v in suspicious}
    good = {v: r for v, r in peeled.items() if r is not None and r[1] and r[1][-1] == "gbk" and _CJK.search(r[0])}
    if len(good) < len(peeled) / 2:
        return values, None  # genuine Latin-1 text (accents, "·"); a stray pair that peels is chance
    bad = [v for v in peeled if v not in good]
    if bad:
        raise EncodingProblem(column, bad[0])
    chain = next(iter(good.values()))[1]
    fixed = values.astype(object).copy()
    fixed[flagged.to_numpy()] = [good[v][0] for v in text[flagged]]
    return fixed, "Latin-1 → " + " → ".join(s.upper() for s in chain)


#: pyogrio/GDAL name of the code page that maps each byte to one character (Python's "latin-1" is not
#: understood by GDAL, which then passes the bytes through as if they were UTF-8)
BYTES_AS_TEXT = "ISO-8859-1"
_LATIN1_ONLY = re.compile(r"[\x00-\xff]*")


def decode_column(values: pd.Series, column: str, encoding: str) -> tuple[pd.Series, int]:
    """Text read byte for byte (each byte one Latin-1 character, see :data:`BYTES_AS_TEXT`) decoded once
    with the ``encoding`` the user named; returns (values, mis-decoding layers undone).

    Files re-saved after a wrong decoding hold UTF-8 of Latin-1 mojibake (GBK bytes read as Latin-1,
    written as UTF-8). When every value of the column is such UTF-8, that layer is undone first, so
    the named encoding applies to the bytes it was meant for; otherwise the bytes are decoded as named.
    Raises :class:`EncodingProblem` when a value is not valid in ``encoding``.
    """
    text = values.astype("string")
    flagged = text.str.contains(_HIGH_LATIN1.pattern, regex=True, na=False)
    if not flagged.any():
        return values, 0
    decoded, layers = _decode_distinct(list(text[flagged].unique()), column, encoding, 0)
    fixed = values.astype(object).copy()
    fixed[flagged.to_numpy()] = [decoded[v] for v in text[flagged]]
    return fixed, layers


def _decode_distinct(raw_text: list[str], column: str, encoding: str, depth: int) -> tuple[dict[str, str], int]:
    as_utf8 = {}
    for value in raw_text:
        try:
            as_utf8[value] = value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            break
    wrapped = (depth < MAX_LAYERS and len(as_utf8) == len(raw_text)
               and all(_LATIN1_ONLY.fullmatch(u) and _HIGH_LATIN1.search(u) for u in as_utf8.values()))
    if wrapped:
        try:
            inner, layers = _decode_distinct(list(set(as_utf8.values())), column, encoding, depth + 1)
            return {v: inner[u] for v, u in as_utf8.items()}, layers + 1
        except EncodingProblem:
            pass  # not a mis-decoding after all: decode the bytes as named
    out = {}
    for value in raw_text:
        try:
            out[value] = value.encode("latin-1").decode(encoding)
        except UnicodeDecodeError as exc:
            raise EncodingProblem(column, value) from exc
    return out, 0


#: how much of a .dbf's records is read to tell its text encoding
DBF_SAMPLE_BYTES = 4 << 20


def guess_dbf_encoding(dbf: bytes) -> str | None:
    """The encoding of a Shapefile's attribute text when nothing declares it (no .cpg, no --encoding).

    GDAL then hands the DBF's bytes over undecoded, and GBK bytes are not UTF-8 (pyarrow refuses them).
    Returns ``"GBK"`` (or ``"GB18030"``) when the records are not UTF-8 but decode as such and hold
    Chinese text; None when they are UTF-8/ASCII or nothing fits (the reader then says which option to pass).
    """
    if len(dbf) < 32:
        return None
    header_length = int.from_bytes(dbf[8:10], "little")
    record_length = max(int.from_bytes(dbf[10:12], "little"), 1)
    records = dbf[header_length:header_length + DBF_SAMPLE_BYTES]
    records = records[:len(records) - len(records) % record_length]  # whole records only
    try:
        records.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    for candidate in ("GBK", "GB18030"):
        try:
            text = records.decode(candidate)
        except UnicodeDecodeError:
            continue
        if _CJK.search(text):
            return candidate
    return None
