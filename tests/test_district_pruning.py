"""Spatial queries name the districts their area touches (cim.districts_index, issue 15): items by bbox, /nearby,
vector tiles and 3D tiles give the same answers with and without the ``district_code = ANY(…)`` term — across
a district boundary, for features outside every district ('' in the partitioned tables, NULL in the others),
for a pipeline whose code is its neighbour district's, and for the k nearest features of a point beside a
boundary; and a bbox inside one district reads that district's partition only (EXPLAIN).

Layout (EPSG:4549, metres from the origin of tests.spatial_data): district 310101 is [0, 3000] x [0, 2000],
310104 is [3000, 6000] x [0, 2000]; north of y = 2000 lies outside every district. The rows are written in SQL
with the codes the loader would give them (the district covering the representative point, the smaller code on
the shared edge; NULL or '' outside), and each table's version is bumped as a load does — districts first.
"""
from __future__ import annotations

import random

import mapbox_vector_tile
import morecantile
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim import districts_index
from cim.config import override_settings
from cim.distribution import ensure_partitions
from cim.districts_index import NO_DISTRICT, districts_touching
from cim.features import ItemsQuery, Selection, fetch_items, items_select
from cim.registry import load_layers
from cim.spatial import nearby
from tests.spatial_data import origin

A, B = "310101", "310104"
SRID = 4549
TMS = morecantile.tms.get("WebMercatorQuad")
N_PARTS = 3_000


def _square(x0: float, y0: float, x1: float, y1: float) -> str:
    return f"MULTIPOLYGON Z ((({x0} {y0} 0, {x1} {y0} 0, {x1} {y1} 0, {x0} {y1} 0, {x0} {y0} 0)))"


def _bump(conn: sa.Connection, *tables: str) -> None:
    conn.execute(sa.text("UPDATE layers SET version = version + 1, updated_at = clock_timestamp() "
                         "WHERE table_name = ANY(:t)"), {"t": list(tables)})


_CODE = ("(SELECT d.code FROM districts d WHERE d.valid_to IS NULL AND ST_Covers(d.geom, {point}) "
         "ORDER BY d.code LIMIT 1)")


@pytest.fixture(scope="module")
def city(engine):
    c = origin()
    with engine.begin() as conn:  # the districts' load
        for code, x0, x1 in ((A, 0, 3000), (B, 3000, 6000)):
            conn.execute(sa.text("INSERT INTO districts (source_id, code, name, geom) "
                                 "VALUES (:c, :c, :c, ST_GeomFromText(:w, 4549))"),
                         {"c": code, "w": _square(*c.at(x0, 0), *c.at(x1, 2000))})
        _bump(conn, "districts")
    rng = random.Random(15)
    points = [(rng.uniform(-400, 6400), rng.uniform(-400, 2600), rng.uniform(-3, 0)) for _ in range(N_PARTS)]
    points += [(3000.0, 500.0 + 10 * i, -1.0) for i in range(5)]  # on the shared edge: 310101's
    with engine.begin() as conn:  # the other layers' loads, after it
        # a partition per district, as a load makes them (and DEFAULT, for '': outside every district)
        ensure_partitions(conn.connection.cursor(), "parts", [A, B])
        conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, geom) "
            f"SELECT 'p' || i, lpad(i::text, 16, '0'), '01', '0101', coalesce({_CODE.format(point='g')}, ''), g "
            "FROM (SELECT i, ST_SetSRID(ST_MakePoint(x, y, z), 4549) AS g FROM unnest(CAST(:i AS int[]), "
            "CAST(:x AS float8[]), CAST(:y AS float8[]), CAST(:z AS float8[])) AS u(i, x, y, z)) AS p"),
            {"i": list(range(len(points))), "x": [c.x0 + p[0] for p in points],
             "y": [c.y0 + p[1] for p in points], "z": [p[2] for p in points]})
        # pipelines crossing the boundary: each takes the code of its middle, so it reaches into the other district
        for i, (x0, x1, y) in enumerate(((2900, 3400, 1000), (2600, 3100, 1200), (5900, 6300, 1800),
                                         (1000, 1200, 1900), (1000, 1000, 2100))):
            y1 = y + 300 if i == 4 else y
            conn.execute(sa.text(
                "INSERT INTO pipelines (source_id, kind, start_depth, end_depth, district_code, geom) "
                f"SELECT :s, '燃气', 2, 2, "
                f"coalesce({_CODE.format(point='ST_LineInterpolatePoint(ST_Force2D(g), 0.5)')}, ''), g "
                "FROM ST_GeomFromText(:w, 4549) AS g"),
                {"s": f"pipe-{i}", "w": f"LINESTRING Z ({c.x0 + x0} {c.y0 + y} -2, {c.x0 + x1} {c.y0 + y1} -2)"})
        for i, (x0, y0, x1, y1) in enumerate(((2950, 300, 3100, 420), (2990, 800, 3010, 820), (100, 1950, 180, 2080))):
            conn.execute(sa.text(
                "INSERT INTO buildings (source_id, name, height, floors, district_code, geom) "
                f"SELECT :s, :s, 20, 6, coalesce({_CODE.format(point='ST_PointOnSurface(g)')}, ''), g "
                "FROM ST_GeomFromText(:w, 4549) AS g"),
                {"s": f"bldg-{i}", "w": _square(*c.at(x0, y0), *c.at(x1, y1))})
        # devices, in a table that is not partitioned: outside every district their code is NULL
        conn.execute(sa.text(
            "INSERT INTO iot_devices (source_id, device_type, district_code, geom) "
            f"SELECT 'dev-' || i, '水位计', {_CODE.format(point='g')}, g FROM (SELECT i, "
            "ST_SetSRID(ST_MakePoint(:x0 + 2500 + 25 * i, :y0 + 1800 + 10 * (i % 40), 0), 4549) AS g "
            "FROM generate_series(0, 199) AS i) AS d"), {"x0": c.x0, "y0": c.y0})
        conn.execute(sa.text("ANALYZE parts"))
        _bump(conn, "parts", "pipelines", "buildings", "iot_devices")
    districts_index.forget()
    return c


@pytest.fixture(scope="module")
def layers(engine, city):
    with engine.connect() as conn:
        return load_layers(conn)


def _items(engine, layer, bbox, bbox_crs=None, limit=1000):
    with engine.connect() as conn:
        page = fetch_items(conn, layer, SRID, ItemsQuery(Selection(bbox=bbox, bbox_crs=bbox_crs), limit=limit))
    return sorted(page.features), page.number_matched


def _both(fn):
    """fn() with pruning, then without: both answers."""
    pruned = fn()
    with override_settings(district_pruning=False):
        plain = fn()
    return pruned, plain


def _storage_bbox(city, x0, y0, x1, y1):
    return (city.x0 + x0, city.y0 + y0, city.x0 + x1, city.y0 + y1)


def test_a_box_names_the_districts_it_touches(engine, city, layers):
    with engine.connect() as conn:
        def touched(layer, *box):
            found = districts_touching(conn, layers[layer], _storage_bbox(city, *box))
            return None if found is None else found.codes

        assert touched("parts", 100, 100, 2900, 1900) == (A,)
        assert touched("parts", 2900, 100, 3100, 1900) == (A, B)
        assert touched("parts", 4000, 1900, 4100, 2100) == (NO_DISTRICT, B)
        assert touched("parts", 0, 2500, 100, 2600) == (NO_DISTRICT,)
        # NULL stands for "no district" only where the column may hold it (not in a partitioned table)
        assert districts_touching(conn, layers["parts"], _storage_bbox(city, 0, 2500, 1, 2501)).with_null is False
        assert districts_touching(conn, layers["iot-devices"], _storage_bbox(city, 0, 2500, 1, 2501)).with_null
        # pipelines reach 500 m beyond their middle: a box 100 m inside 310101 may meet one coded 310104
        assert touched("pipelines", 2800, 900, 2900, 1100) == (A, B)
        # tables without district codes, and the districts themselves, are never pruned
        assert touched("districts", 100, 100, 200, 200) is None
        # the SQL names them as one bound array: plan-time partition pruning, Citus shard routing
        stmt, _ = items_select(layers["parts"], SRID, ItemsQuery(Selection(bbox=(0, 0, 1, 1))),
                               districts_touching(conn, layers["parts"], _storage_bbox(city, 10, 10, 20, 20)))
        assert "district_code = ANY" in str(stmt.compile(conn))


@pytest.mark.parametrize("box", [
    (2700, 200, 3300, 900),    # straddles the two districts
    (2950, 400, 3000, 600),    # inside 310101, its east edge on the boundary (the parts on the edge)
    (3800, 1700, 4600, 2400),  # over 310104's north edge: NULL and '' parts
    (-300, 1800, 300, 2300),   # a corner of the city
    (2850, 950, 2950, 1250),   # inside 310101, meeting a pipeline coded 310104
    (2955, 290, 2970, 310),    # inside 310101, meeting a building coded 310104
])
def test_items_by_bbox_are_the_same(engine, city, layers, box):
    matched = 0
    for name in ("parts", "pipelines", "buildings", "iot-devices"):
        pruned, plain = _both(lambda: _items(engine, layers[name], _storage_bbox(city, *box), f"EPSG:{SRID}"))
        assert pruned == plain, name
        matched += plain[1]
    assert matched > 0


def test_items_by_bbox_in_crs84_are_the_same(engine, city, layers):
    (w, s), (e, n) = city.lonlat(2500, 1500), city.lonlat(3500, 2500)
    pruned, plain = _both(lambda: _items(engine, layers["parts"], (w, s, e, n)))
    assert pruned == plain and plain[1] > 20
    # the pipeline coded 310104 that reaches into 310101 is found from inside 310101
    (w, s), (e, n) = city.lonlat(2880, 950), city.lonlat(2960, 1050)
    found, _ = _items(engine, layers["pipelines"], (w, s, e, n))
    assert any('"pipe-0"' in f for f in found)


def _near(engine, layer, xy, z=None, **kw):
    with engine.connect() as conn:
        return [(h.feature_id, round(h.distance_m, 6)) for h in nearby(conn, layer, xy[0], xy[1], z, SRID, **kw)]


def test_nearby_across_a_boundary_is_the_plain_knn_answer(engine, city, layers):
    parts = layers["parts"]
    checked = 0
    for dx in (2990, 2999.5, 3000, 3004, 3020, 3100):
        for dy in (300, 1000, 1990, 2010):
            for z in (None, -1.5):
                point = city.at(dx, dy)
                pruned, plain = _both(lambda: _near(engine, parts, point, z, radius_m=500, k=10))
                assert pruned == plain and len(plain) == 10
                checked += 1
    assert checked == 48
    # the ten nearest of a point 5 m inside 310101 lie on both sides of the boundary
    with engine.connect() as conn:
        hits = nearby(conn, parts, *city.at(2995, 1000), None, SRID, radius_m=500, k=10)
        ids = [h.feature_id for h in hits]
        codes = conn.execute(sa.text("SELECT DISTINCT district_code FROM parts WHERE feature_id::text = ANY(:i)"),
                             {"i": ids}).scalars().all()
    assert set(codes) == {A, B}


def test_nearby_fewer_than_k_and_extended_features(engine, city, layers):
    found = 0
    for point, layer, radius in ((city.at(2850, 1000), "pipelines", 200), (city.at(1000, 2050), "pipelines", 100),
                                 (city.at(3050, 810), "buildings", 100), (city.at(2800, 1500), "parts", 60)):
        for z in (None, -1.0):  # 2D, and 3D (ranked by the N-D index: cim.spatial)
            pruned, plain = _both(lambda: _near(engine, layers[layer], point, z, radius_m=radius, k=10))
            assert pruned == plain and len(plain) < 10
            found += len(plain)
    assert found >= 6


def _tile_over(city, dx, dy, z):
    lon, lat = city.lonlat(dx, dy)
    return TMS.tile(lon, lat, z)


def test_vector_tiles_over_the_boundary_are_the_same(engine, city, layers):
    from tiles import mvt

    for z in (14, 15, 16):
        t = _tile_over(city, 3000, 1000, z)

        def tile():
            with engine.connect() as conn:
                return mvt.tile(conn, layers["parts"], SRID, t.z, t.x, t.y, Selection(),
                                mvt.default_properties(layers["parts"]))

        pruned, plain = _both(tile)
        assert pruned == plain and pruned
        decoded = mapbox_vector_tile.decode(pruned)["parts"]["features"]
        assert {f["properties"].get("district_code") for f in decoded} >= {A, B}
    t = _tile_over(city, 4000, 2000, 15)  # over the edge of the city: rows without a code too
    pruned, plain = _both(lambda: _mvt(engine, layers["parts"], t))
    assert pruned == plain and pruned


def _mvt(engine, layer, t):
    from tiles import mvt

    with engine.connect() as conn:
        return mvt.tile(conn, layer, SRID, t.z, t.x, t.y, Selection(), mvt.default_properties(layer))


def test_3d_tiles_over_the_boundary_are_the_same(engine, city, layers):
    from tiles.tileset import plan_layer, tile_glb

    def build(name, selection):
        with engine.connect() as conn:
            plan = plan_layer(conn, layers[name], SRID, 3.0, (121.0, 31.0, 122.0, 32.0), selection, 50)
            return plan.feature_count, {t.id: tile_glb(conn, plan, t) for t in plan.tiles.values() if len(t.fids)}

    (w, s), (e, n) = city.lonlat(2500, 500), city.lonlat(3500, 2300)
    for name, selection in (("parts", Selection(bbox=(w, s, e, n))), ("pipelines", Selection()),
                            ("buildings", Selection(bbox=(w, s, e, n)))):
        pruned, plain = _both(lambda: build(name, selection))
        assert pruned == plain and pruned[0] > 0, name


def test_a_layer_loaded_before_the_districts_changed_is_not_pruned(engine, city, layers):
    with override_settings(layer_cache_s=0):
        with engine.connect() as conn:
            assert districts_touching(conn, layers["parts"], _storage_bbox(city, 10, 10, 20, 20)) is not None
        with engine.begin() as conn:
            _bump(conn, "districts")  # a new delivery of the districts: the parts' codes may be the old ones
        with engine.connect() as conn:
            assert districts_touching(conn, layers["parts"], _storage_bbox(city, 10, 10, 20, 20)) is None
        with engine.begin() as conn:
            _bump(conn, "parts")  # the parts loaded again: codes of the current boundaries
        with engine.connect() as conn:
            fresh = load_layers(conn)["parts"]
            assert districts_touching(conn, fresh, _storage_bbox(city, 10, 10, 20, 20)).codes == (A,)


def test_the_api_answers_the_same(engine, city):
    client = TestClient(create_app(engine))
    (w, s), (e, n) = city.lonlat(2900, 1800), city.lonlat(3100, 2200)
    lon, lat = city.lonlat(3001, 1995)

    def ask():
        items = client.get("/collections/parts/items", params={"bbox": f"{w},{s},{e},{n}", "limit": 500})
        near = client.get("/nearby", params={"layer": "parts", "lon": lon, "lat": lat, "k": 10, "radius": 300})
        assert items.status_code == 200 and near.status_code == 200
        return (sorted(f["id"] for f in items.json()["features"]),
                [(f["id"], f["properties"]["distance_m"]) for f in near.json()["features"]])

    pruned, plain = _both(ask)
    assert pruned == plain and pruned[0] and len(pruned[1]) == 10


def _scanned_partitions(conn, stmt) -> set[str]:
    compiled = stmt.compile(conn)
    plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
    return {name for name in ("parts_310101", "parts_310104", "parts_default") if f" {name} " in plan}


def test_a_bbox_inside_one_district_reads_its_partition_only(engine, city, layers):
    parts = layers["parts"]
    query = ItemsQuery(Selection(bbox=_storage_bbox(city, 1000, 500, 1400, 900), bbox_crs=f"EPSG:{SRID}"))
    with engine.connect() as conn:
        districts = query.selection.districts(conn, parts, SRID)
        assert districts.codes == (A,)
        assert _scanned_partitions(conn, items_select(parts, SRID, query, districts)[0]) == {"parts_310101"}
        assert _scanned_partitions(conn, items_select(parts, SRID, query)[0]) == {
            "parts_310101", "parts_310104", "parts_default"}
        # over the edge of the city: its district's partition and DEFAULT (the parts outside every district)
        edge = ItemsQuery(Selection(bbox=_storage_bbox(city, 1000, 1900, 1400, 2100), bbox_crs=f"EPSG:{SRID}"))
        assert _scanned_partitions(conn, items_select(parts, SRID, edge, edge.selection.districts(
            conn, parts, SRID))[0]) == {"parts_310101", "parts_default"}
