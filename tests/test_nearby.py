"""Proximity (issue 5B): 2D and true 3D distances, radius and k, KNN on the GiST index (EXPLAIN),
and the /nearby route's GeoJSON and errors — on a real PostGIS."""
from __future__ import annotations

import re


import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.dialects import postgresql

from api.app import create_app
from cim.crs import wgs84_to_gcj02
from cim.registry import load_layers
from cim.spatial import CANDIDATES_PER_K, nearby, nearby_select
from tests.spatial_data import build_features, build_hierarchy

N_POINTS = 5_000


@pytest.fixture(scope="module")
def city(engine):
    with engine.begin() as conn:
        city = build_hierarchy(conn)
        build_features(conn, city)  # gas pipeline 'pipe-gas' at z = -5 from (100,150) to (300,150)
        ax, ay = city.at(100, 153)
        bx, by = city.at(300, 153)
        # a shallow power cable 3 m north of the gas main, at ground level
        conn.execute(sa.text(
            "INSERT INTO pipelines (source_id, kind, start_depth, end_depth, geom) "
            "VALUES ('pipe-power', '电力', 0, 0, ST_GeomFromText(:wkt, 4549))"),
            {"wkt": f"LINESTRING Z ({ax} {ay} 0, {bx} {by} 0)"})
        # 5,000 parts on a 1 m x 1 m lattice far from the rest, so the planner has a reason to index
        x0, y0 = city.at(10_000, 10_000)
        conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, geom) "
            "SELECT 'knn-' || i, lpad(i::text, 16, '0'), '01', '0101', "
            "ST_SetSRID(ST_MakePoint(:x0 + (i % 100), :y0 + (i / 100), 0), 4549) "
            "FROM generate_series(1, :n) AS i"), {"x0": x0, "y0": y0, "n": N_POINTS})
        conn.execute(sa.text("ANALYZE parts"))
        conn.execute(sa.text("ANALYZE pipelines"))
    return city


@pytest.fixture(scope="module")
def layers(engine, city):
    with engine.connect() as conn:
        return load_layers(conn)


@pytest.fixture(scope="module")
def client(engine, city):
    return TestClient(create_app(engine))


def _near(engine, layer, xy, z=None, **kw):
    with engine.connect() as conn:
        return nearby(conn, layer, xy[0], xy[1], z, 4549, **kw)


def test_2d_ignores_depth_3d_measures_it(engine, layers, city):
    above_gas = city.at(200, 150)
    flat = _near(engine, layers["pipelines"], above_gas)
    assert [(h.properties["kind"], round(h.distance_m, 6)) for h in flat] == [("燃气", 0.0), ("电力", 3.0)]
    deep = _near(engine, layers["pipelines"], above_gas, z=0.0)
    assert [(h.properties["kind"], round(h.distance_m, 6)) for h in deep] == [("电力", 3.0), ("燃气", 5.0)]


def test_excavation_point_within_3_m(engine, layers, city):
    # an excavation 2 m below ground above the gas main: the main (z = -5) is 3 m away, the cable
    # at ground level 3 m north is sqrt(3² + 2²) = 3.61 m away — in plan both are within 3 m
    excavation = city.at(200, 150)
    hits = _near(engine, layers["pipelines"], excavation, z=-2.0, radius_m=3.0)
    assert [h.properties["kind"] for h in hits] == ["燃气"]
    assert hits[0].distance_m == pytest.approx(3.0)
    wider = _near(engine, layers["pipelines"], excavation, z=-2.0, radius_m=4.0)
    assert [h.distance_m for h in wider] == pytest.approx([3.0, 13 ** 0.5])
    assert len(_near(engine, layers["pipelines"], excavation, radius_m=3.0)) == 2


def test_radius_and_k(engine, layers, city):
    origin = city.at(10_000, 10_000)  # corner of the 100 x 50 lattice
    hits = _near(engine, layers["parts"], origin, radius_m=5.0, k=1000)
    # lattice points within 5 m of the corner (x, y >= 0, integer offsets, i >= 1 excludes (0, 0))
    expected = sum(1 for i in range(1, N_POINTS + 1) if (i % 100) ** 2 + (i // 100) ** 2 <= 25)
    assert len(hits) == expected
    assert [h.distance_m for h in hits] == sorted(h.distance_m for h in hits)
    top = _near(engine, layers["parts"], origin, radius_m=100.0, k=3)
    assert len(top) == 3 and all(h.distance_m == pytest.approx(1.0) or h.distance_m == pytest.approx(2 ** 0.5)
                                 for h in top)


def _plan(engine, query) -> str:
    if not isinstance(query, str):
        query = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        return "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + query)))


def test_knn_uses_the_gist_index(engine, layers, city):
    x, y = city.at(10_050, 10_025)
    parts = layers["parts"]
    # a radius that selects a few of the 5,000 (one covering them all is rightly a seq scan)
    plan_2d = _plan(engine, nearby_select(parts, 4549, x, y, None, radius_m=5.0, k=10))
    # the 2D GiST, not the N-D one (on a partition: ix_parts_geom_<district>, cim.distribution.partition_index_sql)
    assert re.search(r"ix_parts_geom(_default|_\d{6})? ", plan_2d + " ") and "Seq Scan" not in plan_2d, plan_2d
    assert "<->" in plan_2d  # ranked by the KNN operator (a bitmap scan + top-k sort at this size)
    plan_3d = _plan(engine, nearby_select(parts, 4549, x, y, 0.0, radius_m=5.0, k=10))
    # in 3D the same 2D GiST (cim.spatial: the walk in 2D order), no N-D index (migration 0013_nearby_2d)
    assert re.search(r"ix_parts_geom(_default|_\d{6})? ", plan_3d + " ") and "Seq Scan" not in plan_3d, plan_3d
    # the bare KNN form (no radius) walks the index in distance order
    knn = _plan(engine, f"SELECT fid FROM parts ORDER BY geom <-> ST_SetSRID(ST_MakePoint({x}, {y}), 4549) LIMIT 10")
    assert re.search(r"Index Scan using ix_parts_geom(_default|_\d{6})? ", knn + " ") and "Seq Scan" not in knn, knn


def test_nearby_route_geojson(client, city):
    lon, lat = city.lonlat(200, 150)
    r = client.get("/nearby", params={"layer": "pipelines", "lon": lon, "lat": lat, "radius": 10})
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["numberReturned"] == 2
    gas, power = body["features"]
    assert gas["properties"]["kind"] == "燃气" and gas["properties"]["distance_m"] == pytest.approx(0.0, abs=1e-6)
    assert power["properties"]["distance_m"] == pytest.approx(3.0, abs=1e-3)
    assert gas["geometry"]["type"] == "LineString"
    (x0, y0, z0), _ = gas["geometry"]["coordinates"]
    assert (x0, y0) == pytest.approx(city.lonlat(100, 150), abs=1e-7) and z0 == -5
    r = client.get("/nearby", params={"layer": "pipelines", "lon": lon, "lat": lat, "z": -2, "radius": 3})
    assert [f["properties"]["kind"] for f in r.json()["features"]] == ["燃气"]
    glon, glat = wgs84_to_gcj02(lon, lat)
    r = client.get("/nearby", params={"layer": "pipelines", "lon": glon, "lat": glat, "crs": "gcj02", "k": 1})
    (only,) = r.json()["features"]
    assert only["properties"]["kind"] == "燃气" and only["properties"]["distance_m"] < 0.01


@pytest.mark.parametrize("params, parameter", [
    ({"layer": "nope"}, "layer"),
    ({"radius": "0"}, "radius"),
    ({"radius": "5001"}, "radius"),
    ({"radius": "nan"}, "radius"),
    ({"k": "0"}, "k"),
    ({"k": "1001"}, "k"),
    ({"z": "inf"}, "z"),
    ({"z": "6000"}, "z"),  # a 3D search from far above the city walks the 2D index over a district (cim.spatial)
    ({"z": "-1000.5"}, "z"),
    ({"lat": "95"}, "lat"),
    ({"crs": "not-a-crs"}, "crs"),
    ({"filter": "name = 'a\x00b'"}, "filter"),  # NUL in a CQL2 literal: was the driver's ValueError, a 500
    ({"filter": "valid_from > TIMESTAMP('9999-12-31T23:59:59-14:00')"}, "filter"),  # was an OverflowError
])
def test_nearby_bad_parameters(client, params, parameter):
    query = {"layer": "parts", "lon": "121.47", "lat": "31.23", **params}
    r = client.get("/nearby", params=query)
    assert r.status_code == 400, r.text
    assert r.json()["parameter"] == parameter


def test_filter_with_cql(client, city):
    lon, lat = city.lonlat(200, 150)
    r = client.get("/nearby", params={"layer": "pipelines", "lon": lon, "lat": lat, "radius": 10,
                                      "filter": "kind = '电力'"})
    assert r.status_code == 200, r.text
    assert [f["properties"]["kind"] for f in r.json()["features"]] == ["电力"]
    r = client.get("/nearby", params={"layer": "pipelines", "lon": lon, "lat": lat, "filter": "kind = = 1"})
    assert r.status_code == 400 and r.json()["parameter"] == "filter"


def test_knn_uses_the_gist_index_under_the_api_role(engine, layers, city):
    """The API reads as ``cim_api`` under row-level security, where only LEAKPROOF conditions may drive an
    index scan: the 3D query's box test must be one of them, or every 3D /nearby scans the table."""
    x, y = city.at(10_050, 10_025)
    for z in (None, 0.0):
        query = nearby_select(layers["parts"], 4549, x, y, z, radius_m=5.0, k=10)
        compiled = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL ROLE cim_api")
            conn.exec_driver_sql("SELECT set_config('cim.scope', 'public', true)")
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + compiled))
        assert "cim.scope" in plan, plan  # the policy is there
        assert "Index" in plan and "Seq Scan" not in plan, (z, plan)
        # both by the 2D GiST (a partition's: ix_parts_geom_<district>): the 3D query walks it in 2D order
        assert re.search(r"ix_parts_geom(_default|_\d{6})? ", plan + " "), (z, plan)


def test_3d_nearby_walks_the_2d_index_nearest_first(engine, layers, city):
    """The 3D query walks the 2D GiST in 2D distance order (``ORDER BY geom <-> point``) and stops after its
    first m = 4k candidates (cim.spatial._search_3d), which the 3D distance then ranks: m rows read, not every row
    of the search box (~4,000 of the lattice's parts here; in the dense districts of the 15 M parts hundreds to
    thousands, each a heap page, for ten — the tail of /nearby on the loaded Shanghai). The radius test must not
    make the planner expect a row or two and read the whole box by a bitmap scan (it did with ST_3DDWithin)."""
    x, y = city.at(10_050, 10_025)
    query = nearby_select(layers["parts"], 4549, x, y, 0.5, radius_m=40.0, k=10)
    compiled = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:  # as the API reads: its role, under the policies
        conn.exec_driver_sql("SET LOCAL ROLE cim_api")
        conn.exec_driver_sql("SELECT set_config('cim.scope', 'public', true)")
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF) " + compiled))
    assert re.search(r"Index Scan using ix_parts_geom(_default|_\d{6})? ", plan), plan
    assert "Order By: (geom <-> " in plan and "Bitmap" not in plan, plan
    scans = [int(n) for n in re.findall(r"Index Scan using ix_parts_geom\S* on \S+ \S+ \(actual time=\S+ "
                                        r"rows=(\d+)", plan)]
    assert sum(scans) == CANDIDATES_PER_K * 10, plan  # the walk's candidates, and no more


@pytest.mark.parametrize("layer, dx, dy, z", [
    ("parts", 10_050.3, 10_025.6, 0.7),     # inside the lattice, above it
    ("parts", 10_000, 10_000, -3.0),        # at a corner, below it: many equal distances
    ("parts", 9_990, 10_049.5, 12.0),       # outside it, to the side and well above
    ("pipelines", 200, 151, -2.0),          # between the gas main (z -5) and the cable (z 0)
    ("pipelines", 90, 140, 1.0),            # beyond the lines' ends: distances to their end points
])
def test_3d_nearby_is_the_exact_3d_ranking(engine, layers, city, layer, dx, dy, z):
    """Walked in 2D order and proven (cim.spatial), the answer is the one ranking every feature by ST_3DDistance
    gives: the same distances in the same order (features at an equal distance may come in either order, as with
    a sort)."""
    x, y = city.at(dx, dy)
    hits = _near(engine, layers[layer], (x, y), z=z, radius_m=100.0, k=25)
    with engine.connect() as conn:
        expected = conn.execute(sa.text(
            f"SELECT feature_id::text, ST_3DDistance(geom, p) AS d FROM {layer}, "
            "ST_SetSRID(ST_MakePoint(:x, :y, :z), 4549) AS p WHERE valid_to IS NULL AND ST_3DDWithin(geom, p, 100) "
            "ORDER BY d LIMIT 25"), {"x": x, "y": y, "z": z}).all()
    assert [h.distance_m for h in hits] == [d for _, d in expected]
    by_distance: dict[float, set[str]] = {}
    for fid, d in expected:
        by_distance.setdefault(d, set()).add(fid)
    cut = expected[-1][1] if len(expected) == 25 else None  # at the k-th distance a tie may be cut either way
    for d, fids in by_distance.items():
        found = {h.feature_id for h in hits if h.distance_m == d}
        assert found == fids or (d == cut and len(found) == len(fids)), (d, found, fids)


def test_a_point_in_crs84_is_not_looked_up_in_the_epsg_database(monkeypatch):
    """CRS84 has no EPSG code, and pyproj's to_epsg() searched its whole database for one on every request
    (~40 ms: /nearby or a grid lookup asked in CRS84); the resolved spelling already knows its SRID."""
    import pyproj

    from cim.spatial import to_storage

    expected = to_storage([121.47], [31.23], "EPSG:4326", 4549)

    def searched(self, min_confidence: int = 70):
        raise AssertionError("to_epsg() called for a CRS whose SRID is known")

    monkeypatch.setattr(pyproj.CRS, "to_epsg", searched)
    for spelling in ("CRS84", "http://www.opengis.net/def/crs/OGC/1.3/CRS84", "EPSG:4326", "gcj02"):
        xs, ys = to_storage([121.47], [31.23], spelling, 4549)
        if spelling != "gcj02":
            assert (xs[0], ys[0]) == (expected[0][0], expected[1][0])
    xs, ys = to_storage([500_000.0], [3_450_000.0], "EPSG:4549", 4549)  # the storage CRS itself: no transform
    assert (xs[0], ys[0]) == (500_000.0, 3_450_000.0)


def test_nearby_route_is_one_round_trip_per_statement_in_the_callers_scope(engine, city):
    """GET /nearby sends each search statement in autocommit with the caller's scope in front (no BEGIN, scope
    statement or ROLLBACK of its own), reuses one built statement per shape (values bound, not built in), and
    answers as the statement built afresh for those values does."""
    from cim.config import override_settings

    with override_settings(layer_cache_s=3600.0) as deployment:  # no registry or district-frame re-read in between
        _one_round_trip_per_statement(engine, city, TestClient(create_app(engine, deployment)))


def _one_round_trip_per_statement(engine, city, client) -> None:
    from cim import spatial

    reader = client.app.state.cim.engine
    lon, lat = city.lonlat(200, 150)
    params = {"layer": "pipelines", "lon": lon, "lat": lat, "z": -2, "radius": 10}
    first = client.get("/nearby", params=params).json()
    sent: list[tuple[str, bool]] = []

    def note(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        sent.append((statement, cursor.connection.autocommit))

    built = spatial._cached_nearby_query.cache_info()
    sa.event.listen(reader, "before_cursor_execute", note)
    try:
        again = client.get("/nearby", params={**params, "lon": lon + 1e-6}).json()
    finally:
        sa.event.remove(reader, "before_cursor_execute", note)
    kinds = [[f["properties"]["kind"] for f in answer["features"]] for answer in (first, again)]
    assert kinds == [["燃气", "电力"]] * 2
    searches = [(s, a) for s, a in sent if "pipelines" in s]
    assert searches and len(sent) == len(searches), sent  # no statement of its own for BEGIN or the scope
    for statement, autocommit in searches:
        assert autocommit and statement.startswith("SELECT set_config('role', 'cim_api', true)"), statement
    after = spatial._cached_nearby_query.cache_info()
    assert after.hits > built.hits and after.misses == built.misses  # the same statement object, new values
    with reader.connect() as conn:  # the pool's connection is transactional again
        assert conn.connection.dbapi_connection.autocommit is False
    # the reused statement answers as one built for these values (what the route did before)
    layer = client.app.state.cim.layers()["pipelines"]
    x, y = spatial.to_storage([lon], [lat], "EPSG:4326", 4549)
    with engine.connect() as conn:
        fresh = conn.execute(spatial.nearby_select(layer, 4549, float(x[0]), float(y[0]), -2.0, radius_m=10)).all()
    assert [(r._feature_id, round(r._distance_m, 9)) for r in fresh] == \
        [(f["id"], round(f["properties"]["distance_m"], 9)) for f in first["features"]]


def test_nearby_waiting_for_a_lock_is_a_503_problem(engine, client, city):
    """A search that waits longer than CIM_DB_READER_LOCK_TIMEOUT_MS for a lock (maintenance holding the table)
    is answered 503 with a problem document, through the one error mapping, also in autocommit."""
    lon, lat = city.lonlat(200, 150)
    with engine.connect() as holder:
        holder.execute(sa.text("LOCK TABLE pipelines IN ACCESS EXCLUSIVE MODE"))
        r = client.get("/nearby", params={"layer": "pipelines", "lon": lon, "lat": lat, "z": -2})
        holder.rollback()
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
    assert int(r.headers["retry-after"]) > 0
    assert client.get("/nearby", params={"layer": "pipelines", "lon": lon, "lat": lat, "z": -2}).status_code == 200
