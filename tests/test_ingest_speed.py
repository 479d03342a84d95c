"""The loader's array-based per-row work (issue 15, item 3), one base for the module: the content hash is still
pandas' hash of the values as text (the hashes stored in every base stay valid); first occurrences kept as
arrays find repeats across batches as a dict did; batches go to the database in binary COPY with the same
values as the text COPY; and a first load of a delivery sorted by district builds each district's indexes
while the next is read, with a row that comes late, repeats across batches and every index still right.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest
import sqlalchemy as sa

from ingest import binary_copy, columns
from ingest.hashing import content_hash
from ingest.merge import copy_rows
from ingest.run import IngestOptions, ingest_files
from ingest.seen import FirstRows, digit_keys, text_keys


def _definition(frame: pd.DataFrame, ewkb: np.ndarray | None) -> np.ndarray:
    """The content hash as it was first defined (and stored): every value as pandas text, hashed row-wise."""
    content = frame.astype("string")
    if ewkb is not None:
        content["_geom"] = pd.array(ewkb, dtype="string")
    return np.char.mod("%016x", pd.util.hash_pandas_object(content, index=False).to_numpy()).astype(object)


def test_the_content_hash_is_still_pandas_hash_of_the_values_as_text():
    rng = np.random.default_rng(7)
    n = 500
    text = np.array([f"井盖{i}" for i in range(n)], dtype=object)
    frame = pd.DataFrame({
        "source_id": text, "name": np.where(rng.random(n) < 0.3, None, text),
        "status": rng.choice(np.array(["完好", "破损", None], dtype=object), n),
        "height": np.where(rng.random(n) < 0.2, np.nan, rng.random(n) * 100),
        "floors": pd.array(rng.integers(0, 40, n), dtype="Int64"),
        "is_protected": rng.choice(np.array([True, False, None], dtype=object), n),
        "mixed": rng.choice(np.array([1, "a", None], dtype=object), n), "empty": np.full(n, None, dtype=object)})
    ewkb = np.array([f"{i:058X}" for i in range(n)], dtype=object)
    assert (content_hash(frame, ewkb) == _definition(frame, ewkb)).all()
    assert (content_hash(frame[["source_id", "name"]], None) == _definition(frame[["source_id", "name"]], None)).all()


def test_3d_points_hex_ewkb_as_bytes_hash_and_encode_as_shapelys_text():
    """The 3D points' hex EWKB is made as ASCII bytes (ingest.merge._point_z_ewkb_hex): the same text as
    shapely's, the same content hash as that text's, the same EWKB bytes in the binary COPY."""
    import shapely

    from ingest.merge import ewkb_hex

    rng = np.random.default_rng(11)
    n = 300
    points = shapely.points(rng.uniform(-1e5, 1e6, n), rng.uniform(0, 4e6, n), rng.uniform(-30, 600, n))
    made = ewkb_hex(points, 4549)
    assert all(isinstance(v, bytes) for v in made)
    shapelys = shapely.to_wkb(shapely.set_srid(points, 4549), hex=True, include_srid=True, output_dimension=3)
    assert [v.decode("ascii") for v in made] == list(shapelys)
    frame = pd.DataFrame({"source_id": [f"P{i}" for i in range(n)]})
    assert (content_hash(frame, made) == _definition(frame, shapelys)).all()
    assert binary_copy._ewkb_bytes(made, n).equals(binary_copy._ewkb_bytes(shapelys.astype(object), n))
    assert binary_copy._ewkb_bytes(made[5:9], 4).to_pylist() == [bytes.fromhex(v) for v in shapelys[5:9]]


def test_the_attributes_json_of_text_columns_is_json_dumps_of_each_row():
    frame = pd.DataFrame({"x": ["645707.54", 'a"b', "c\\d", "e\nf", None, "中文", "\u2028", "ok"],
                          "名 字": [None] * 8, 7: ["1"] * 8,
                          "c": ["\x00", "\x7f", "\x1f", "", " ", "\t", "é\\", '""']})
    expected = [json.dumps({str(k): v for k, v in row.items()}, ensure_ascii=False)
                for row in frame.astype(object).where(frame.notna(), None).to_dict(orient="records")]
    assert columns._attributes_json(frame, ["x", "名 字", 7, "c"]).tolist() == expected
    # pandas' Arrow-backed text (what read_csv gives) as well as Python strings
    arrow = frame.astype({"x": "str", "c": "str"})
    assert columns._text_attributes_json(arrow, ["x", "名 字", 7, "c"]).tolist() == expected
    assert columns._text_attributes_json(frame.assign(x=[1.5] * 8), ["x"]) is None  # numbers: the general way
    assert columns._text_attributes_json(frame.assign(x=["a", 1] * 4), ["x"]) is None
    assert columns._text_attributes_json(frame.assign(x=[b"a"] * 8), ["x"]) is None  # bytes: written as hex


def test_points_keep_their_own_z_when_the_column_gives_the_same():
    """A CSV's points are made with the --z column's Z; the rule sets Z from that column again: only points whose
    Z differs (or that have none) are made anew, the others are kept as they are."""
    import shapely

    from ingest.geometry import keep_or_set_z

    points = np.array([shapely.Point(1, 2, 3), shapely.Point(4, 5, 6), shapely.Point(7, 8), shapely.Point(9, 9, 1)],
                      dtype=object)
    out = keep_or_set_z(points, np.array([3.0, 7.5, 2.0, np.nan]))
    assert out[0] is points[0]  # same Z: not copied
    assert [tuple(shapely.get_coordinates(g, include_z=True)[0]) for g in out] == [
        (1, 2, 3), (4, 5, 7.5), (7, 8, 2), (9, 9, 1)]
    assert shapely.has_z(keep_or_set_z(points[2:3], None)).all()


_CSVS = {
    "bom_quotes_blank_line": "\ufeffsource_id,name,x,y\nA1,\"q\"\"u\nx\",1.5,2\n,,3,4\n\nA3,NA,7,8\n",
    "crlf_spaces": "source_id,name,x,y\r\n\"A1\",  2 ,3,4\r\nA2,None,abc,8\r\n",
    "short_row": "source_id,name,x,y\nA1,2,3,4\nA2,6,7\nA3,10,11,12\n",
    "long_row": "source_id,name,x,y\nA1,2,3,4\nA2,6,7,8,9\nA3,10,11,12\n",
    "repeated_name": "source_id,source_id,x,y\nA1,2,3,4\n",
    "unbalanced_quote": "source_id,name,x,y\nA1,\"oops,3,4\nA2,6,7,8\n",
    "header_only": "source_id,name,x,y\n",
}


@pytest.mark.parametrize("name", sorted(_CSVS))
def test_a_csv_read_by_arrow_gives_what_pandas_gives(tmp_path, monkeypatch, name):
    """UTF-8 CSVs go through Arrow's reader; whatever it refuses is read by pandas from that row on: the same
    batches, rows, values (pandas' Arrow-backed text) and per-row errors as pandas alone, or the same error."""
    from ingest import read

    path = tmp_path / f"{name}.csv"
    path.write_text(_CSVS[name], encoding="utf-8")
    monkeypatch.setattr(read, "ARROW_BLOCK_BYTES", 64)  # many blocks: a refusal can come after some batches

    def batches(make):
        try:
            return [(b.attributes, b.rows.tolist(), b.errors) for b in make()]
        except read.ReadError as exc:
            return str(exc)

    options = read.ReadOptions(x="x", y="y", batch_rows=2)
    got = batches(lambda: read.open_source(path, options).batches)
    expected = batches(lambda: read._pandas_csv_batches(path, "utf-8-sig", options))
    if isinstance(expected, str):
        assert got == expected
        return
    assert [(rows, errors) for _, rows, errors in got] == [(rows, errors) for _, rows, errors in expected]
    for (frame, _, _), (wanted, _, _) in zip(got, expected):
        pd.testing.assert_frame_equal(frame, wanted)


def test_a_row_arrow_refuses_late_in_the_file_is_read_by_pandas_from_there(tmp_path, monkeypatch):
    from ingest import read

    lines = ["source_id,name,x,y"] + [f"P{i},井{i},{i}.5,{i}" for i in range(1, 40)]
    lines[30] = "P30,井30,30.5"  # a short row: Arrow refuses it, pandas reads its y as missing
    path = tmp_path / "late.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(read, "ARROW_BLOCK_BYTES", 128)
    used = []
    arrow = read._arrow_csv_batches
    monkeypatch.setattr(read, "_arrow_csv_batches", lambda *a: (used.append(b) or b for b in arrow(*a)))
    got = list(read.open_source(path, read.ReadOptions(x="x", y="y", batch_rows=4)).batches)
    assert used and len(used) < len(got)  # Arrow read the first batches, pandas the rest
    assert np.concatenate([b.rows for b in got]).tolist() == list(range(1, 40))
    assert pd.concat([b.attributes for b in got])["source_id"].tolist() == [f"P{i}" for i in range(1, 40)]
    assert [b.geometry[i] is None for b in got for i in range(len(b.rows))].count(True) == 1  # row 30: no y


@pytest.mark.parametrize("dtype", [object, "str", "string"])
def test_text_fields_coerced_the_arrow_way_are_what_the_general_way_makes(dtype):
    values = ["  a ", "", "nan", "None", "NULL", "null", None, np.nan, "中 文\u3000", "\tx\n", "b\r", " NULL ", "NaN",
              "\u00a0y\u00a0", "\x1cz\x1f", "\x85w"]
    series = pd.Series(values, dtype=dtype)
    general = series.astype("string").str.strip().astype(object)
    general[columns._blank(series)] = None
    assert columns._coerce_series(series, "str")[0].tolist() == general.tolist()
    assert columns.line_breaks(series).tolist() == [9, 10]
    assert columns._coerce_series(pd.Series([1, " a ", None], dtype=object), "str")[0].tolist() == ["1", "a", None]


def test_first_occurrences_across_batches_are_those_a_dict_finds():
    rng = np.random.default_rng(3)
    seen, reference, row = FirstRows(), {}, 1
    for _ in range(6):
        ids = np.array([f"S{v}" for v in rng.integers(0, 3000, 1000)], dtype=object)
        rows = np.arange(row, row + len(ids))
        row += len(ids)
        expected = [reference.setdefault(k, r) for k, r in zip(ids, rows)]
        assert seen.first(*text_keys(ids), rows).tolist() == expected
    codes = np.array(["3101040101000099", "3101040101000002", "3101040101000099"], dtype=object)
    assert FirstRows().first(*digit_keys(codes), np.array([5, 6, 9])).tolist() == [5, 6, 5]


_TYPES_TABLE = ("CREATE TABLE copy_types (t text, v varchar(4), i integer, b bigint, f float8, ok boolean, "
                "j jsonb, geom geometry(PointZ, 4549))")


def test_binary_copy_writes_what_the_text_copy_writes(db_url):
    frame = pd.DataFrame({"t": ["上海", None, "a,b\n\"c\""], "v": ["0101", "01", None],
                          "i": pd.array([1, None, -3], dtype="Int64"), "b": [7, 8, 9],
                          "f": [1.5, np.nan, -0.25], "ok": [True, None, False],
                          "j": ['{"层": 1}', "{}", None]})
    ewkb = np.array(["01010000A0C5110000" + "00" * 8 + "000000000000F03F" + "0000000000000040",
                     None, "01010000A0C5110000" + "000000000000F03F" * 3], dtype=object)
    columns = [*frame.columns, "geom"]
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(_TYPES_TABLE)
        types = binary_copy.column_types(cur, "copy_types", columns)
        assert binary_copy.encode(frame, ewkb, columns, types) is not None  # every column goes in binary
        copy_rows(cur, frame, ewkb, columns, into="copy_types", types=types)
        copy_rows(cur, frame, ewkb, columns, into="copy_types")  # the text way
        cur.execute("SELECT t, v, i, b, f, ok, j::text, ST_AsEWKT(geom) FROM copy_types")
        got = cur.fetchall()
        assert got[:3] == got[3:]
        assert got[0] == ("上海", "0101", 1, 7, 1.5, True, '{"层": 1}', "SRID=4549;POINT(0 1 2)")
        # numbers in a text column: not binary (the text COPY writes them as pandas would)
        assert binary_copy.encode(frame.assign(t=[1, "x", None]), ewkb, columns, types) is None
        conn.rollback()


# --- a first load sorted by district: the closed districts are indexed while the next is read ---------------

# the districts, their squares and the file writer of the staged-load tests
from tests.test_ingest_staged import CHANGNING, SQUARES, XUHUI, _square, _write  # noqa: E402


def _part(source_id: str, district: str, i: int, code: str | None = None) -> tuple[dict, dict]:
    properties = {"source_id": source_id, "subclass_code": "0101", "name": "井盖", "z": 1.5}
    if code:
        properties["object_code"] = code
    return properties, {"type": "Point", "coordinates": [SQUARES[district] + 0.0005 * i, 31.21]}


def test_a_sorted_first_load_indexes_each_district_while_reading_the_next(engine, tmp_path):
    ingest_files("districts", [_write(tmp_path / "districts.geojson", [
        ({"code": c, "name": f"区{c}"}, _square(lon)) for c, lon in SQUARES.items()])],
        IngestOptions(crs="EPSG:4326"), engine)
    features = [_part(f"X{i}", XUHUI, i) for i in range(1, 7)]  # rows 1–6: Xuhui, closed by the batch at row 10
    features += [_part(f"C{i}", CHANGNING, i) for i in range(1, 7)]  # rows 7–12
    # rows 13–15 hold no Changning row: it is closed as well
    features += [_part("X1", CHANGNING, 8),  # row 13: X1 again (its first occurrence is in an indexed table)
                 _part("X7", XUHUI, 7, code="3101040101000099"),  # row 14: late for Xuhui, its code given
                 _part("X8", XUHUI, 8, code="3101040101000099")]  # row 15: the same code again
    path = _write(tmp_path / "parts.geojson", features)
    report = ingest_files("parts", [path], IngestOptions(crs="EPSG:4326", batch_rows=3), engine)
    folder = Path(report.files[0].rejects_file).parent
    reasons = [r["reason"] for p in folder.glob(f"run-{report.run_id}-*.csv")
               for r in csv.DictReader(p.open(encoding="utf-8"))]
    assert report.inserted == 12, report
    assert report.message.endswith("(2 indexed while the next district's rows were read)"), report.message
    assert any("duplicate source id 'X1' (also at row 1)" in r for r in reasons), reasons
    assert any("object code 3101040101000099 repeated (also at row 14)" in r for r in reasons), reasons
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.text("SELECT tableoid::regclass::text, count(*) FROM parts GROUP BY 1")).all())
        assert counts == {f"parts_{XUHUI}": 6, f"parts_{CHANGNING}": 6}  # X1 taken back out; X7 in; X8 refused
        parent = conn.execute(sa.text("SELECT count(*) FROM pg_index WHERE indrelid = 'parts'::regclass")).scalar()
        for district in SQUARES:
            attached = conn.execute(sa.text(
                "SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
                "WHERE x.indrelid = CAST(:t AS regclass)"), {"t": f"parts_{district}"}).scalar()
            assert attached == parent
            assert conn.execute(sa.text("SELECT count(*) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                                        "AND contype IN ('p', 'f')"), {"t": f"parts_{district}"}).scalar() == 4
        # the late row is in the (already built) unique index of current codes, and the history of the load is one run
        conn.execute(sa.text("SET enable_seqscan = off"))
        assert conn.execute(sa.text("SELECT source_id FROM parts WHERE object_code = '3101040101000099' "
                                    "AND valid_to IS NULL")).scalar() == "X7"
        assert conn.execute(sa.text("SELECT count(DISTINCT fid), array_agg(DISTINCT ingest_run_id) FROM parts")).one() \
            == (12, [report.run_id])


def test_a_stray_row_read_before_its_districts_run_does_not_close_that_district(server_url, tmp_path, monkeypatch):
    """A point that a later district covers (on a border) read inside an earlier district's run: that district's
    table stays bare until its own run has been read, so the run's rows are COPYed into no built index."""
    from cim.bootstrap import initialise
    from cim.database import engine_for
    from ingest.staged import StagedLoad
    from tests.conftest import create_database

    engine = engine_for(create_database(server_url))
    initialise(engine)
    ingest_files("districts", [_write(tmp_path / "districts.geojson", [
        ({"code": c, "name": f"区{c}"}, _square(lon)) for c, lon in SQUARES.items()])],
        IngestOptions(crs="EPSG:4326"), engine)
    closed: list[tuple[list[str], int]] = []
    close = StagedLoad._close

    def spy(self, districts):  # which districts were closed, and how many rows were staged by then
        closed.append((list(districts), self.rows))
        close(self, districts)

    monkeypatch.setattr(StagedLoad, "_close", spy)
    features = [_part("X1", XUHUI, 1), _part("X2", XUHUI, 2), _part("C0", CHANGNING, 19)]  # batch 1: a stray row
    features += [_part(f"X{i}", XUHUI, i) for i in range(3, 7)]  # batch 2 holds no Changning row; batch 3 one
    features += [_part(f"C{i}", CHANGNING, i) for i in range(1, 7)]  # Changning's run
    report = ingest_files("parts", [_write(tmp_path / "parts.geojson", features)],
                          IngestOptions(crs="EPSG:4326", batch_rows=3), engine)
    assert report.inserted == 13, report
    assert closed == [([XUHUI], 9)], closed  # Changning was not closed after its stray row; built at the end
    assert report.message.endswith("(1 indexed while the next district's rows were read)"), report.message
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.text("SELECT tableoid::regclass::text, count(*) FROM parts GROUP BY 1")).all())
        assert counts == {f"parts_{XUHUI}": 6, f"parts_{CHANGNING}": 7}
        parent = conn.execute(sa.text("SELECT count(*) FROM pg_index WHERE indrelid = 'parts'::regclass")).scalar()
        for district in SQUARES:
            assert conn.execute(sa.text(
                "SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
                "WHERE x.indrelid = CAST(:t AS regclass)"), {"t": f"parts_{district}"}).scalar() == parent
        # Xuhui's rows were all COPYed in the transaction that made its table: FREEZE, so its pages are all-visible
        # (what the load's ANALYZE read from the visibility map); autovacuum's setting is the default again
        tables = {r[0]: r[1:] for r in conn.execute(sa.text(
            "SELECT relname, relpages, relallvisible, reloptions FROM pg_class "
            "WHERE relname LIKE 'parts_3101%' AND relkind = 'r'"))}
        assert tables[f"parts_{XUHUI}"] == (1, 1, None), tables
        assert tables[f"parts_{CHANGNING}"][2] is None, tables
        conn.execute(sa.text("SET enable_seqscan = off"))
        assert conn.execute(sa.text("SELECT count(*) FROM parts WHERE source_id LIKE 'C%' AND valid_to IS NULL")
                            ).scalar() == 7
    engine.dispose()
