"""The parts loader's batch kept in Arrow (issue 15, item 3): numbers parsed by Arrow are pandas' numbers, bit for
bit; a numeric field coerced the Arrow way is what the general way makes (dtype included: it is in the hash);
the content hash of Arrow-backed and repetitive columns is still the stored definition, so a base loaded by the
code before re-loads as unchanged; object codes as integers, the smallest area code per point and the line-break
test are what their former ways gave.
"""
from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from cim.gridindex import smallest_polygons
from ingest import columns, read, run
from ingest.hashing import content_hash
from ingest.run import IngestOptions, ingest_files
from ingest.seen import digit_keys

_ODD_NUMBERS = ["1", "+1.5", "-0", "0.0", ".5", "5.", "1e5", "1E5", "1e+05", "1e400", "-1e400", "1e-400", "4.9e-324",
                "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "", " ", "abc", "1,5", "1_0", "0x10", "1e", "--1",
                "1.2.3", "١٢", "１２", " 12 ", "1.7976931348623159e308", "9007199254740993", "3452424.76"]


def _definition(frame: pd.DataFrame, ewkb: np.ndarray | None) -> np.ndarray:
    """The content hash as first defined and stored: every value as pandas text, hashed row-wise."""
    content = frame.astype("string")
    if ewkb is not None:
        content["_geom"] = pd.array([v.decode("ascii") if isinstance(v, bytes) else v for v in ewkb], dtype="string")
    return np.char.mod("%016x", pd.util.hash_pandas_object(content, index=False).to_numpy()).astype(object)


def test_numbers_parsed_by_arrow_are_pandas_numbers_bit_for_bit():
    rng = np.random.default_rng(1)
    values = [repr(float(v)) for v in rng.uniform(-1e7, 1e7, 3000)]
    values += [f"{v:.{p}f}" for v, p in zip(rng.uniform(0, 1e7, 3000), rng.integers(0, 20, 3000))]
    values += [f"{v * 10.0 ** e:.{p}e}" for v, e, p in zip(rng.uniform(-1, 1, 3000), rng.integers(-300, 300, 3000),
                                                             rng.integers(1, 25, 3000))]
    for text in [values, *([v] for v in _ODD_NUMBERS)]:
        series = pd.Series(text, dtype="str")
        expected = pd.to_numeric(series.str.strip(), errors="coerce").to_numpy(dtype=float)
        got = columns.arrow_floats(series)
        if any(v.strip() in ("", "abc", "1,5", "1_0", "0x10", "1e", "--1", "1.2.3", "١٢", "１２") for v in text):
            assert got is None  # what Arrow cannot read goes pandas' way, which names the value
        if got is not None:  # (else refused: e.g. an integer beyond 2^53, which pandas reads as an int64)
            same = (got.view(np.int64) == expected.view(np.int64)) | (np.isnan(got) & np.isnan(expected))
            assert same.all(), text


@pytest.mark.parametrize("values", [["1.5", "2", " 3.25 ", "1,000.5"], ["1", "2", "3"], ["1,000", "-2"], ["0.0"] * 3,
                                    ["1e5", "inf", "-0"], ["nan", "1.5"], ["", "1.5"], ["1.5", None],
                                    ["NaN", "2.5"], ["+5", "5.0"], ["abc", "1"]])
@pytest.mark.parametrize("dtype", [object, "str"])
def test_a_numeric_field_coerced_the_arrow_way_is_what_the_general_way_makes(values, dtype, monkeypatch):
    series = pd.Series(values, dtype=dtype)
    fast, fast_bad = columns._coerce_series(series, "float")
    monkeypatch.setattr(columns, "_arrow_float_field", lambda s: None)
    general, general_bad = columns._coerce_series(series, "float")
    assert fast.dtype == general.dtype  # int64 and float64 print (and so hash) differently
    assert fast.astype("string").equals(general.astype("string")) and (fast_bad == general_bad).all()


def test_csv_coordinates_parsed_by_arrow_give_the_same_points_and_errors(tmp_path, monkeypatch):
    path = tmp_path / "points.csv"
    rows = [("A1", "645707.54", "3452424.76", "1.5"), ("A2", "645707.5", "3452424", "inf"), ("A3", "nan", "1", "0"),
            ("A4", "1e3", "-2.5e2", "-0")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("source_id", "x", "y", "z"), *rows])
    options = read.ReadOptions(x="x", y="y", z="z")
    fast = next(iter(read.open_source(path, options).batches))
    monkeypatch.setattr(read, "arrow_floats", lambda series: None)
    general = next(iter(read.open_source(path, options).batches))
    assert fast.errors == general.errors and set(fast.errors) == {1, 2}
    assert [None if g is None else g.wkt for g in fast.geometry] == [None if g is None else g.wkt
                                                                      for g in general.geometry]


def test_the_content_hash_of_arrow_backed_and_repetitive_columns_is_the_definition():
    rng = np.random.default_rng(3)
    n = 5000  # more than the sample that tells repetitive columns from ids
    few = np.array(["完好", "破损", "丢失", None], dtype=object)
    frame = pd.DataFrame({
        "ids": np.array([f"P{i}" for i in range(n)], dtype=object), "status": rng.choice(few, n),
        "status_no_null": rng.choice(few[:3], n),
        "arrow_status": pd.Series(rng.choice(few, n), dtype=pd.StringDtype("pyarrow", na_value=np.nan)),
        "arrow_ids": pd.Series([f"X{i}" for i in range(n)], dtype=pd.StringDtype("pyarrow", na_value=np.nan)),
        "arrow_dtype": pd.Series(pd.arrays.ArrowExtensionArray(pa.array(rng.choice(few, n), type=pa.string()))),
        "all_none": np.full(n, None, dtype=object), "bools": rng.choice(np.array([True, False, None], dtype=object), n),
        "mixed": rng.choice(np.array([1, "a", None], dtype=object), n), "floats": rng.choice([1.5, np.nan, 2.0], n),
        "ints": pd.array(rng.integers(0, 4, n), dtype="Int64"), "blank": rng.choice(np.array(["", "a"], dtype=object), n),
        "lists": pd.Series([[i % 3] for i in range(n)], dtype=object)})
    ewkb = np.array([f"{i % 7:066X}".encode("ascii") for i in range(n)], dtype=object)
    assert (np.asarray(content_hash(frame, ewkb), dtype=object) == _definition(frame, ewkb)).all()
    for column in frame.columns:
        assert (np.asarray(content_hash(frame[[column]], None), dtype=object) == _definition(frame[[column]], None)).all()


def test_source_id_keys_made_from_utf8_bytes_are_the_texts_hashes():
    from pandas.core.util.hashing import hash_array

    from ingest.seen import _KEYS, text_keys

    values = np.array(["P1", "上水井盖", "", "a\x00b", "é", "𠀀"] * 50, dtype=object)
    got = text_keys(values)
    for mine, key in zip(got, _KEYS):
        assert (mine == hash_array(values, hash_key=key, categorize=False)).all()


def _loop_digit_keys(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """digit_keys as first written: a loop over the places of the NUL-padded bytes."""
    digits = np.frombuffer(np.asarray(codes, dtype=object).astype("S18").tobytes(), dtype=np.uint8).reshape(-1, 18)
    number, length = np.zeros(len(codes), dtype=np.uint64), np.zeros(len(codes), dtype=np.uint64)
    for column in range(18):
        present = digits[:, column] != 0
        number = np.where(present, number * np.uint64(10) + (digits[:, column].astype(np.int64) - 48).astype(np.uint64),
                          number)
        length += present.astype(np.uint64)
    return number, length


def test_object_codes_as_integers_are_the_codes_numbers():
    rng = np.random.default_rng(5)
    mixed = np.array(["".join(map(str, rng.integers(0, 10, rng.integers(1, 19)))) for _ in range(2000)]
                     + ["999999999999999999", "0", "000000000000000000", "0012", "12"], dtype=object)
    sixteen = np.array([f"{v:016d}" for v in rng.integers(0, 10**16, 2000)], dtype=object)
    for codes in (mixed, sixteen, sixteen[3:], np.array(["999999999999999999"] * 3, dtype=object)):
        got, expected = digit_keys(codes), _loop_digit_keys(codes)
        assert (got[0] == expected[0]).all() and (got[1] == expected[1]).all()


def test_the_smallest_polygon_per_point_without_sorting_the_pairs_is_the_sorted_ways():
    rng = np.random.default_rng(2)
    for grouped in (True, False):  # pairs grouped by point (the tree's answer) and in any order
        for _ in range(200):
            points, pairs = int(rng.integers(1, 50)), int(rng.integers(1, 100))
            point_idx, poly_idx = rng.integers(0, points, pairs), rng.integers(0, 30, pairs)
            if grouped:
                point_idx = np.sort(point_idx)
            got = smallest_polygons(point_idx, poly_idx, points)
            order = np.lexsort((poly_idx, point_idx))
            first = np.r_[True, point_idx[order][1:] != point_idx[order][:-1]]
            expected = np.full(points, -1, dtype=np.int64)
            expected[point_idx[order][first]] = poly_idx[order][first]
            assert (got == expected).all()


def test_area_codes_by_arrow_take_are_the_column_pandas_makes_of_the_strings():
    from ingest.run import area_codes

    codes = np.array(["310101", "310104", "310105"], dtype=object)
    rows = np.array([0, 2, 3, 5])
    for index in (np.array([1, -1, 0, 2]), np.array([-1, -1, -1, -1]), np.array([0, 0, 0, 0])):
        made, expected = pd.DataFrame({"a": range(6)}), pd.DataFrame({"a": range(6)})
        made["code"] = area_codes(codes, rows, index, 6)
        strings = np.full(6, None, dtype=object)
        strings[rows] = [codes[i] if i >= 0 else None for i in index]
        expected["code"] = strings
        assert made["code"].dtype == expected["code"].dtype and made["code"].equals(expected["code"])


def test_line_breaks_are_found_by_the_buffer_test_and_only_in_the_values():
    text = pd.Series(["a", "b\nc", None, "d\re", "f"], dtype="str")
    assert columns.line_breaks(text).tolist() == [1, 3]
    assert columns.line_breaks(pd.Series(["a", "b", "中文"], dtype="str")).tolist() == []
    sliced = pd.Series(pd.arrays.ArrowExtensionArray(pa.array(["x\ny", "a", "b"]).slice(1)))  # a break off the slice
    assert columns.line_breaks(sliced).tolist() == []


def _parts_csv(path, n: int, changed: int | None = None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["source_id", "object_code", "subclass_code", "name", "status", "owner_department", "x", "y",
                      "z", "note"])
        for i in range(n):
            status = "破损" if i == changed else ("完好", "丢失")[i % 2]
            out.writerow([f"P{i}", f"310101010100{i:04d}", "0101", "上水井盖", status, "" if i % 3 else "水务局",
                          f"{641890.38 + i:.2f}", f"{3452424.76 + i / 7:.3f}", "0.0", f"n{i % 5}"])


def _old_content_hash(frame: pd.DataFrame, ewkb: np.ndarray | None) -> np.ndarray:
    """The content hash as the code before this change made it: each column as pandas text, hashed."""
    return _definition(frame, ewkb)


def test_a_layer_loaded_with_the_former_hash_reloads_unchanged(engine, tmp_path, monkeypatch):
    """Rows hashed by the former code (the definition, run as it was) are found unchanged by a re-load with the
    new one, and a changed row is still found changed: no spurious new versions."""
    n = 3000  # one batch, more than the sample that sends repetitive columns the dictionary way
    path = tmp_path / "parts.csv"
    _parts_csv(path, n)
    options = IngestOptions(crs="EPSG:4549", x="x", y="y", z="z")
    with monkeypatch.context() as patch:
        patch.setattr(run, "content_hash", _old_content_hash)
        first = ingest_files("parts", [path], options, engine)
    assert first.inserted == n and first.rejected == 0
    again = ingest_files("parts", [path], options, engine)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, n), again
    _parts_csv(path, n, changed=17)
    edited = ingest_files("parts", [path], options, engine)
    assert (edited.inserted, edited.updated, edited.unchanged) == (0, 1, n - 1), edited
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT count(*), count(*) FILTER (WHERE valid_to IS NULL) FROM parts")).one()
        status = conn.execute(sa.text("SELECT status FROM parts WHERE source_id = 'P17' AND valid_to IS NULL")).scalar()
    assert tuple(versions) == (n + 1, n) and status == "破损"
