"""CQL2 → SQL: parsing errors, the layer's queryables as the only names, bound parameters only,
CRS axis order of geometry literals, and the semantics of the temporal relations — evaluated
by the real PostGIS, not by string comparison."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pyproj
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from cim.cql import FilterError, ParameterError, compile_filter, envelope_literal, geometry_literal, parse_filter
from cim.crs import CRS84, resolve_offered, wgs84_to_gcj02
from cim.features import feature_table
from cim.registry import load_layers

SRID = 4549
TO_STORAGE = pyproj.Transformer.from_crs("OGC:CRS84", f"EPSG:{SRID}", always_xy=True)


@pytest.fixture(scope="module")
def layers(engine):
    with engine.connect() as conn:
        return load_layers(conn)


@pytest.fixture(scope="module")
def buildings(engine, layers):
    """Three buildings; b2 has a closed version [2020-01-01, 2022-01-01) and a current one."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO buildings (source_id, name, height, floors, use, is_protected, valid_from, valid_to, geom) "
            "VALUES (:sid, :name, :h, :f, :use, :prot, :vf, :vt, ST_GeomFromText(:wkt, 4549))"), [
            dict(sid="b1", name="Tower", h=120.0, f=30, use="办公", prot=False, vf="2019-01-01T00:00:00Z", vt=None,
                 wkt=_square(121.43, 31.18)),
            dict(sid="b2", name="Old Hall", h=12.0, f=3, use="文化", prot=True, vf="2020-01-01T00:00:00Z",
                 vt="2022-01-01T00:00:00Z", wkt=_square(121.44, 31.18)),
            dict(sid="b2", name="Hall", h=14.0, f=3, use="文化", prot=True, vf="2022-01-01T00:00:00Z", vt=None,
                 wkt=_square(121.44, 31.18)),
            dict(sid="b3", name="tower annex", h=None, f=None, use=None, prot=False, vf="2021-06-01T00:00:00Z",
                 vt=None, wkt=_square(121.45, 31.19)),
        ])
    return layers["buildings"]


def _square(lon: float, lat: float, d: float = 0.0005) -> str:
    pts = [TO_STORAGE.transform(x, y) for x, y in
           [(lon - d, lat - d), (lon + d, lat - d), (lon + d, lat + d), (lon - d, lat + d), (lon - d, lat - d)]]
    return "MULTIPOLYGON Z (((" + ", ".join(f"{x} {y} 5" for x, y in pts) + ")))"


def select_ids(engine, layer, text, lang="cql2-text", filter_crs=None, all_versions=False) -> list[tuple[str, str]]:
    table = feature_table(layer, SRID)
    where = compile_filter(text, lang, layer, table, SRID, filter_crs)
    if not all_versions:
        where = sa.and_(where, table.c.valid_to.is_(None))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.source_id, table.c.name).where(where)
                            .order_by(table.c.source_id, table.c.valid_from)).all()
    return [tuple(r) for r in rows]


def evaluate(engine, layer, text: str, lang: str = "cql2-text") -> bool:
    """A filter made of literals only, evaluated by PostgreSQL."""
    expr = compile_filter(text, lang, layer, feature_table(layer, SRID), SRID)
    with engine.connect() as conn:
        return conn.execute(sa.select(expr)).scalar()


# --- CRS references ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec,srid,lat_first", [
    (None, 4326, False), ("http://www.opengis.net/def/crs/OGC/1.3/CRS84", 4326, False), ("CRS84", 4326, False),
    ("http://www.opengis.net/def/crs/EPSG/0/4326", 4326, True), ("[EPSG:4490]", 4490, True),
    ("[EPSG:3857]", 3857, False), ("urn:ogc:def:crs:EPSG::4549", 4549, True),
    ("https://www.opengis.net/def/crs/EPSG/0/4549", 4549, True),
    # short names are x-first whatever the authority says
    ("EPSG:4490", 4490, False), ("EPSG:4326", 4326, False), ("4549", 4549, False), ("wgs84", 4326, False),
    ("gcj02", 4326, False), ("bd09", 4326, False),
])
def test_crs_references(spec, srid, lat_first):
    ref = resolve_offered(spec, SRID, "crs")
    assert (ref.srid, ref.lat_first) == (srid, lat_first)


@pytest.mark.parametrize("spec", ["EPSG:2000", "EPSG:abc", "gcj03", "http://example.com/crs/4326", "OGC:CRS27",
                                  "EPSG:32651"])
def test_unsupported_crs_names_the_parameter(spec):
    with pytest.raises(ParameterError) as info:
        resolve_offered(spec, SRID, "bbox-crs")
    assert info.value.parameter == "bbox-crs" and "CRS84" in str(info.value)


def test_geometry_literal_axis_order(engine):
    lon, lat = 121.4732, 31.2304
    x, y = TO_STORAGE.transform(lon, lat)
    exprs = {
        "crs84": geometry_literal({"type": "Point", "coordinates": [lon, lat]}, CRS84, SRID),
        "epsg4326-uri": geometry_literal({"type": "Point", "coordinates": [lat, lon]},
                                         resolve_offered("urn:ogc:def:crs:EPSG::4326", SRID, "f"), SRID),
        "epsg4326-short": geometry_literal({"type": "Point", "coordinates": [lon, lat]},
                                           resolve_offered("EPSG:4326", SRID, "f"), SRID),
        "storage-urn": geometry_literal({"type": "Point", "coordinates": [y, x]},
                                        resolve_offered("urn:ogc:def:crs:EPSG::4549", SRID, "f"), SRID),
        "storage-short": geometry_literal({"type": "Point", "coordinates": [x, y]},
                                          resolve_offered("EPSG:4549", SRID, "f"), SRID),
        # GCJ-02 literals are moved back to WGS 84 before they reach the database
        "gcj02": geometry_literal({"type": "Point", "coordinates": list(wgs84_to_gcj02(lon, lat))},
                                  resolve_offered("gcj02", SRID, "f"), SRID),
    }
    with engine.connect() as conn:
        for name, expr in exprs.items():
            gx, gy, srid = conn.execute(sa.select(sa.func.ST_X(expr), sa.func.ST_Y(expr), sa.func.ST_SRID(expr))).one()
            assert srid == SRID and abs(gx - x) < 0.01 and abs(gy - y) < 0.01, name


def test_envelope_literal_is_densified(engine):
    box = envelope_literal(121.0, 31.0, 122.0, 32.0, CRS84, SRID)
    with engine.connect() as conn:
        npoints = conn.execute(sa.select(sa.func.ST_NPoints(box))).scalar()
        # a point on the curved northern edge, halfway: inside the densified box
        mid = sa.func.ST_Transform(sa.func.ST_SetSRID(sa.func.ST_MakePoint(121.5, 31.9999), 4326), SRID)
        assert conn.execute(sa.select(sa.func.ST_Intersects(box, mid))).scalar()
    assert npoints > 100
    with pytest.raises(ParameterError):
        envelope_literal(122.0, 31.0, 121.0, 32.0, CRS84, SRID)


# --- parsing and names ---------------------------------------------------------------------------

def test_parse_errors_say_where():
    with pytest.raises(FilterError) as info:
        parse_filter("name = 'a' height > 3")
    assert "column 12" in str(info.value) and "height" in str(info.value)
    with pytest.raises(FilterError, match="ends too early"):
        parse_filter("height >")
    with pytest.raises(FilterError, match="not valid JSON"):
        parse_filter("{", "cql2-json")
    with pytest.raises(FilterError) as info:
        parse_filter("a = 1", "cql2-xml")
    assert info.value.parameter == "filter-lang"


def test_only_queryables_may_be_named(buildings):
    table = feature_table(buildings, SRID)
    with pytest.raises(FilterError) as info:
        compile_filter("content_hash = 'x'", "cql2-text", buildings, table, SRID)
    assert "'content_hash'" in str(info.value) and info.value.parameter == "filter"
    with pytest.raises(FilterError, match="'fid'"):
        compile_filter({"op": "=", "args": [{"property": "fid"}, 1]}, "cql2-json", buildings, table, SRID)


@pytest.mark.parametrize("text,message", [
    ("height = 'tall'", "height"), ("name > 3", "name"), ("is_protected = 'yes'", "is_protected"),
    ("feature_id = 'not-a-uuid'", "UUID"), ("name LIKE 5", "LIKE"), ("S_INTERSECTS(height, POINT(121 31))", "height"),
    ("T_BEFORE(name, TIMESTAMP('2020-01-01T00:00:00Z'))", "name"), ("valid_from > 'soon'", "soon"),
    ("S_INTERSECTS(geometry, POINT(121 95))", "outside"), ("EXISTS(name)", "early"),
    ("S_DWITHIN(geometry, POINT(121 31), -5)", "metres"), ("RELATE(geometry, POINT(121 31), 'T********')", "not supported"),
])
def test_type_errors_are_filter_errors(buildings, text, message):
    with pytest.raises(ParameterError) as info:
        compile_filter(text, "cql2-text", buildings, feature_table(buildings, SRID), SRID)
    assert message in str(info.value) and info.value.parameter == "filter"


def test_literals_are_bound_never_spliced(buildings):
    evil = "x'); DROP TABLE buildings; --"
    table = feature_table(buildings, SRID)
    for text, lang in [(f"name = '{evil.replace(chr(39), '')}'", "cql2-text"),
                       (json.dumps({"op": "=", "args": [{"property": "name"}, evil]}), "cql2-json"),
                       (json.dumps({"op": "like", "args": [{"property": "name"}, evil]}), "cql2-json"),
                       (json.dumps({"op": "in", "args": [{"property": "name"}, [evil, "a"]]}), "cql2-json")]:
        compiled = compile_filter(text, lang, buildings, table, SRID).compile(dialect=postgresql.dialect())
        assert "DROP" not in str(compiled)
        assert any("DROP" in str(v) for v in compiled.params.values())


# --- semantics on rows -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,json_filter,expected", [
    ("height > 100", {"op": ">", "args": [{"property": "height"}, 100]}, ["b1"]),
    ("height IS NULL", {"op": "isNull", "args": [{"property": "height"}]}, ["b3"]),
    ("NOT (height IS NULL)", {"op": "not", "args": [{"op": "isNull", "args": [{"property": "height"}]}]}, ["b1", "b2"]),
    ("floors BETWEEN 3 AND 30", {"op": "between", "args": [{"property": "floors"}, 3, 30]}, ["b1", "b2"]),
    ("use IN ('文化', '住宅')", {"op": "in", "args": [{"property": "use"}, ["文化", "住宅"]]}, ["b2"]),
    ("name LIKE '%ower%'", {"op": "like", "args": [{"property": "name"}, "%ower%"]}, ["b1", "b3"]),
    ("name LIKE 'H_ll'", {"op": "like", "args": [{"property": "name"}, "H_ll"]}, ["b2"]),
    ("CASEI(name) LIKE casei('TOWER%')", {"op": "like", "args": [{"op": "casei", "args": [{"property": "name"}]},
                                                                 {"op": "casei", "args": ["TOWER%"]}]}, ["b1", "b3"]),
    ("is_protected = TRUE", {"op": "=", "args": [{"property": "is_protected"}, True]}, ["b2"]),
    ("height / floors > 4.5", {"op": ">", "args": [{"op": "/", "args": [{"property": "height"}, {"property": "floors"}]},
                                                   4.5]}, ["b2"]),
    ("height - 100 >= floors - 10", {"op": ">=", "args": [{"op": "-", "args": [{"property": "height"}, 100]},
                                                          {"op": "-", "args": [{"property": "floors"}, 10]}]}, ["b1"]),
    ("valid_from >= TIMESTAMP('2021-01-01T00:00:00Z')",
     {"op": ">=", "args": [{"property": "valid_from"}, {"timestamp": "2021-01-01T00:00:00Z"}]}, ["b2", "b3"]),
    ("S_INTERSECTS(geometry, POINT(121.44 31.18))",
     {"op": "s_intersects", "args": [{"property": "geometry"}, {"type": "Point", "coordinates": [121.44, 31.18]}]}, ["b2"]),
    ("S_DWITHIN(geometry, POINT(121.44 31.18), 1000)",
     {"op": "s_dwithin", "args": [{"property": "geometry"}, {"type": "Point", "coordinates": [121.44, 31.18]}, 1000]},
     ["b1", "b2"]),
    ("S_CONTAINS(geometry, POINT(121.4302 31.1802))",
     {"op": "s_contains", "args": [{"property": "geometry"}, {"type": "Point", "coordinates": [121.4302, 31.1802]}]},
     ["b1"]),
    ("S_DISJOINT(geometry, BBOX(121.42, 31.17, 121.445, 31.185))",
     {"op": "s_disjoint", "args": [{"property": "geometry"}, {"bbox": [121.42, 31.17, 121.445, 31.185]}]}, ["b3"]),
])
def test_text_and_json_select_the_same_rows(engine, buildings, text, json_filter, expected):
    by_text = [sid for sid, _ in select_ids(engine, buildings, text)]
    by_json = [sid for sid, _ in select_ids(engine, buildings, json.dumps(json_filter, ensure_ascii=False), "cql2-json")]
    assert by_text == expected and by_json == expected


def test_validity_is_half_open(engine, buildings):
    at = lambda ts: select_ids(engine, buildings, f"T_INTERSECTS(INTERVAL(valid_from, valid_to), TIMESTAMP('{ts}'))",
                               all_versions=True)  # noqa: E731
    assert at("2021-12-31T23:59:59Z") == [("b1", "Tower"), ("b2", "Old Hall"), ("b3", "tower annex")]
    assert at("2022-01-01T00:00:00Z") == [("b1", "Tower"), ("b2", "Hall"), ("b3", "tower annex")]
    ended = select_ids(engine, buildings, "T_BEFORE(INTERVAL(valid_from, valid_to), DATE('2022-01-01'))",
                       all_versions=True)
    assert ended == [("b2", "Old Hall")]
    open_ended = select_ids(engine, buildings,
                            "T_INTERSECTS(INTERVAL(valid_from, valid_to), INTERVAL('2025-01-01T00:00:00Z', '..'))",
                            all_versions=True)
    assert [n for _, n in open_ended] == ["Tower", "Hall", "tower annex"]
    early = select_ids(engine, buildings, "T_INTERSECTS(INTERVAL(valid_from, '..'), TIMESTAMP('2019-06-01T00:00:00Z'))",
                       all_versions=True)
    assert early == [("b1", "Tower")]


A = "INTERVAL('2020-01-01T00:00:00Z', '2020-12-31T00:00:00Z')"


@pytest.mark.parametrize("op,rhs,expected", [
    ("T_BEFORE", "INTERVAL('2021-01-01T00:00:00Z', '2021-02-01T00:00:00Z')", True),
    ("T_BEFORE", "INTERVAL('2020-06-01T00:00:00Z', '2021-02-01T00:00:00Z')", False),
    ("T_AFTER", "TIMESTAMP('2019-06-01T00:00:00Z')", True),
    ("T_AFTER", "TIMESTAMP('2020-06-01T00:00:00Z')", False),
    ("T_INTERSECTS", "TIMESTAMP('2020-12-31T00:00:00Z')", True),
    ("T_INTERSECTS", "INTERVAL('2021-01-01T00:00:00Z', '..')", False),
    ("T_DISJOINT", "INTERVAL('2021-01-01T00:00:00Z', '..')", True),
    ("T_DURING", "INTERVAL('2019-01-01T00:00:00Z', '2021-01-01T00:00:00Z')", True),
    ("T_DURING", "INTERVAL('2020-01-01T00:00:00Z', '2021-01-01T00:00:00Z')", False),
    ("T_CONTAINS", "INTERVAL('2020-02-01T00:00:00Z', '2020-03-01T00:00:00Z')", True),
    ("T_EQUALS", A, True),
    ("T_MEETS", "INTERVAL('2020-12-31T00:00:00Z', '2021-03-01T00:00:00Z')", True),
    ("T_METBY", "INTERVAL('2019-01-01T00:00:00Z', '2020-01-01T00:00:00Z')", True),
    ("T_OVERLAPS", "INTERVAL('2020-06-01T00:00:00Z', '2021-06-01T00:00:00Z')", True),
    ("T_OVERLAPPEDBY", "INTERVAL('2019-06-01T00:00:00Z', '2020-06-01T00:00:00Z')", True),
    ("T_OVERLAPS", "INTERVAL('2019-06-01T00:00:00Z', '2020-06-01T00:00:00Z')", False),
    ("T_STARTS", "INTERVAL('2020-01-01T00:00:00Z', '2021-06-01T00:00:00Z')", True),
    ("T_STARTEDBY", "INTERVAL('2020-01-01T00:00:00Z', '2020-06-01T00:00:00Z')", True),
    ("T_FINISHES", "INTERVAL('2019-01-01T00:00:00Z', '2020-12-31T00:00:00Z')", True),
    ("T_FINISHEDBY", "INTERVAL('2020-06-01T00:00:00Z', '2020-12-31T00:00:00Z')", True),
])
def test_temporal_relations(engine, buildings, op, rhs, expected):
    assert evaluate(engine, buildings, f"{op}({A}, {rhs})") is expected
    as_json = {"op": op.lower(), "args": [
        {"interval": ["2020-01-01T00:00:00Z", "2020-12-31T00:00:00Z"]},
        _json_literal(rhs)]}
    assert evaluate(engine, buildings, json.dumps(as_json), "cql2-json") is expected


def _json_literal(text: str) -> dict:
    inner = text[text.index("(") + 1:-1]
    parts = [p.strip().strip("'") for p in inner.split(",")]
    return {"interval": parts} if text.startswith("INTERVAL") else {"timestamp": parts[0]}


def test_pygeofilter_forms_still_work(engine, buildings):
    rows = select_ids(engine, buildings, "valid_from T_AFTER TIMESTAMP('2021-01-01T00:00:00Z')")  # infix
    assert [sid for sid, _ in rows] == ["b2", "b3"]
    assert evaluate(engine, buildings, f"T_BEGINS({A}, INTERVAL('2020-01-01T00:00:00Z', '2021-06-01T00:00:00Z'))")
    assert [sid for sid, _ in select_ids(engine, buildings, "BBOX(geometry, 121.435, 31.17, 121.46, 31.2)")] == ["b2", "b3"]


def test_naive_timestamps_are_refused(engine, buildings):
    # one rule with the datetime parameter (cim.times): a timestamp needs its UTC offset
    for text in ("valid_from = TIMESTAMP('2019-01-01T00:00:00')",
                 "T_INTERSECTS(valid_from, INTERVAL('2019-01-01T00:00:00', '..'))",
                 "valid_from = '2019-01-01T00:00:00'"):
        with pytest.raises(FilterError, match="no UTC offset") as info:
            select_ids(engine, buildings, text)
        assert info.value.parameter == "filter"
    with pytest.raises(FilterError, match="no UTC offset"):
        select_ids(engine, buildings, {"op": "=", "args": [{"property": "valid_from"},
                                                           {"timestamp": "2019-01-01T00:00:00"}]}, "cql2-json")
    t = datetime(2019, 1, 1, tzinfo=timezone.utc).isoformat()
    assert [sid for sid, _ in select_ids(engine, buildings, f"valid_from = TIMESTAMP('{t}')")] == ["b1"]
    assert [sid for sid, _ in select_ids(engine, buildings, "valid_from = TIMESTAMP('2019-01-01T08:00:00+08:00')")] \
        == ["b1"]


@pytest.mark.parametrize("text", [
    "valid_from = TIMESTAMP('9999-12-31T23:59:59-14:00')",
    "valid_from > TIMESTAMP('0001-01-01T00:00:00+14:00')",
    "T_INTERSECTS(valid_from, INTERVAL('2019-01-01T00:00:00Z', '9999-12-31T23:59:59-14:00'))",
    "T_BEFORE(valid_from, DATE('9999-12-31'))",
    "valid_from = '9999-12-31T23:59:59-14:00'",
])
def test_unrepresentable_instants_are_filter_errors(engine, buildings, text):
    # these overflowed (OverflowError, a 500) or reached pygeofilter's bare ValueError
    with pytest.raises(FilterError, match="outside the supported time range") as info:
        select_ids(engine, buildings, text)
    assert info.value.parameter == "filter"


@pytest.mark.parametrize("text,lang", [
    ("name = 'a\x00b'", "cql2-text"),
    ("name LIKE '%\x00%'", "cql2-text"),
    ('{"op": "=", "args": [{"property": "name"}, "a\\u0000b"]}', "cql2-json"),
    ({"op": "=", "args": [{"property": "name"}, "a\x00b"]}, "cql2-json"),
])
def test_nul_in_a_string_literal_is_a_filter_error(engine, buildings, text, lang):
    # PostgreSQL text cannot hold NUL: the driver raised ValueError, a 500
    with pytest.raises(FilterError, match="NUL") as info:
        select_ids(engine, buildings, text, lang)
    assert info.value.parameter == "filter"


def test_unsupported_json_operators_are_named(buildings):
    table = feature_table(buildings, SRID)
    with pytest.raises(FilterError, match="A_CONTAINS"):
        compile_filter({"op": "a_contains", "args": [{"property": "name"}, ["a"]]}, "cql2-json", buildings, table, SRID)
    with pytest.raises(FilterError, match="'nope'"):
        compile_filter({"op": "nope", "args": []}, "cql2-json", buildings, table, SRID)
