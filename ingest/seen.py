"""The first row at which each key (a source id, an object code) appeared in a load, kept as sorted arrays.

Why arrays: a load checks every row's key against all rows before it, across batches and files. A Python dict
of the keys cost ~300 bytes and ~1 µs a row (15,000,000 parts: 4.85 GB peak, docs/benchmarks.md); here a key
is two 64-bit integers and its first row one more — ~50–70 bytes with the hash table's slack — and a batch is
checked an array at a time. Text keys are hashed to 128 bits (two independent 64-bit SipHashes, pandas' fixed-key
``hash_array``): two different ids colliding among 10^8 rows has a probability of ~10^-23.
The keys live in a khash table (pandas' own, looked up and filled an array at a time): sorted arrays
merged batch by batch measured 3 µs a key at 15 M, the table a fraction of that.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pandas._libs.hashtable import Int64HashTable  # khash: pandas' own hash table, vectorised
from pandas.core.util.hashing import hash_array

from ingest.hashing import utf8_bytes

_KEYS = ("0123456789123456", "cim-first-rows-2")  # two SipHash keys: one 128-bit key per text


def text_keys(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each text (an object array of str)."""
    values = np.asarray(values, dtype=object)
    try:  # each text's UTF-8 bytes made once for both hashes: the same numbers as of the strings
        as_bytes = utf8_bytes(pa.array(values, type=pa.string()))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        as_bytes = values
    return (hash_array(as_bytes, hash_key=_KEYS[0], categorize=False),
            hash_array(as_bytes, hash_key=_KEYS[1], categorize=False))


_POWERS = 10 ** np.arange(17, -1, -1, dtype=np.int64)  # 10^17 … 10^0: an 18-digit code's places


def digit_keys(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ASCII digits (at most 18) as exact integers: the key is the code itself.

    As one product of the batch's digit matrix with the places' powers of ten, read from the codes' bytes in
    Arrow when they are all as long (object codes: 16): the loop over 18 places of NUL-padded bytes it replaces
    was ~0.5 µs a code."""
    codes = np.asarray(codes, dtype=object)
    if not len(codes):
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    text = pa.array(codes, type=pa.string())
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[:len(codes) + 1]
    width = int(offsets[1] - offsets[0])
    if 0 < width <= 18 and (np.diff(offsets) == width).all():
        data = np.frombuffer(text.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(-1, width)
        number = (data.astype(np.int64) - ord("0")) @ _POWERS[18 - width:]
        return number.astype(np.uint64), np.full(len(codes), width, dtype=np.uint64)
    digits = np.frombuffer(codes.astype("S18").tobytes(), dtype=np.uint8).reshape(-1, 18)
    present = digits != 0  # a code shorter than 18 is padded with NULs at its end: its number is the sum / 10 each
    length = present.sum(axis=1)
    number = np.where(present, digits.astype(np.int64) - ord("0"), 0) @ _POWERS // _POWERS[np.maximum(length, 1) - 1]
    return number.astype(np.uint64), length.astype(np.uint64)  # the length keeps "0012" apart from "12"


class FirstRows:
    """Key → the row number of its first occurrence, for the keys recorded so far."""

    def __init__(self) -> None:
        self._table = Int64HashTable()  # high half (as int64) → index into the arrays below
        self._lo = np.zeros(1024, dtype=np.uint64)
        self._rows = np.zeros(1024, dtype=np.int64)
        self._size = 0
        self._more: dict[tuple[int, int], int] = {}  # keys whose high half another key took first (~never)

    def __len__(self) -> int:
        return self._size + len(self._more)

    def first(self, hi: np.ndarray, lo: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each key (in row order), the row of its first occurrence — an earlier batch's, else the first
        in this batch (possibly its own row); the keys not seen before are recorded."""
        hi, lo = np.asarray(hi, dtype=np.uint64), np.asarray(lo, dtype=np.uint64)
        rows = np.asarray(rows, dtype=np.int64)
        if not len(hi):
            return np.zeros(0, dtype=np.int64)
        # by key, then by row: a group's first element is its first row (rows come in increasing order, and a
        # stable sort by the high half suffices unless two keys share it, which is all but impossible)
        order = np.argsort(hi, kind="stable")
        shi, slo = hi[order], lo[order]
        if ((shi[1:] == shi[:-1]) & (slo[1:] != slo[:-1])).any():
            order = np.lexsort((rows, lo, hi))
            shi, slo = hi[order], lo[order]
        starts = np.r_[True, (shi[1:] != shi[:-1]) | (slo[1:] != slo[:-1])]
        group = np.cumsum(starts) - 1
        first_in_batch = rows[order][starts]
        ghi, glo = shi[starts], slo[starts]
        before = self._lookup(ghi, glo)
        new = before < 0
        self._add(ghi[new], glo[new], first_in_batch[new])
        firsts = np.where(new, first_in_batch, before)
        out = np.empty(len(hi), dtype=np.int64)
        out[order] = firsts[group]
        return out

    def _lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        slot = self._table.lookup(hi.view(np.int64))
        known = slot >= 0
        found = np.full(len(hi), -1, dtype=np.int64)
        same = np.zeros(len(hi), dtype=bool)
        same[known] = self._lo[slot[known]] == lo[known]
        found[same] = self._rows[slot[same]]
        for i in np.flatnonzero(known & ~same):  # another key holds this high half
            found[i] = self._more.get((int(hi[i]), int(lo[i])), -1)
        return found

    def _add(self, hi: np.ndarray, lo: np.ndarray, rows: np.ndarray) -> None:
        taken = self._table.lookup(hi.view(np.int64)) >= 0  # high half held by another key
        for i in np.flatnonzero(taken):
            self._more[(int(hi[i]), int(lo[i]))] = int(rows[i])
        hi, lo, rows = hi[~taken], lo[~taken], rows[~taken]
        end = self._size + len(hi)
        if end > len(self._lo):
            capacity = max(end, 2 * len(self._lo))
            self._lo = _grown(self._lo, self._size, capacity)
            self._rows = _grown(self._rows, self._size, capacity)
        self._lo[self._size:end] = lo
        self._rows[self._size:end] = rows
        self._table.map_keys_to_values(hi.view(np.int64), np.arange(self._size, end, dtype=np.int64))
        self._size = end


def _grown(values: np.ndarray, used: int, capacity: int) -> np.ndarray:
    out = np.empty(capacity, dtype=values.dtype)
    out[:used] = values[:used]
    return out
