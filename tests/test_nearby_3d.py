"""Issue 15: /nearby in 3D from the 2D GiST alone (cim.spatial._search_3d) — the exact k nearest in 3D, checked
against ranking every row of the table by ST_3DDistance, on data made so that the first rows in plan are not
the nearest in 3D: parts stacked at one plan position at many heights, pipelines under one street at many
depths, ties, features exactly at the radius, k beyond what there is — as the owner and under the API's
row-level security; and no N-D index is left to do it."""
from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from cim.spatial import CANDIDATES_PER_K, nearby, nearby_select
from tests.spatial_data import build_hierarchy
from tests.test_nearby import layers  # noqa: F401 (the fixture: the registry, read after this module's city)
from tests.test_partitioning import _migration

SRID = 4549
#: the test's own corner of the city, away from the hierarchy's features
DX, DY = 20_000.0, 20_000.0
N_SCATTERED = 3_000


@pytest.fixture(scope="module")
def city(engine):
    with engine.begin() as conn:
        city = build_hierarchy(conn)
        x0, y0 = city.at(DX, DY)
        parts: list[tuple[str, float, float, float]] = []
        # a crowd at one plan position: 80 parts on the floors of a tower, 0.5 m to 40 m up
        parts += [(f"tower-{i}", x0, y0, 0.5 * i) for i in range(1, 81)]
        # a ring at ground level 3–8 m away in plan: nearer in 3D than most of the tower, farther in plan
        parts += [(f"ring-{i}", x0 + (3 + i % 6) * np.cos(i), y0 + (3 + i % 6) * np.sin(i), 0.0) for i in range(24)]
        # ties: four parts 5 m away in plan (3-4-5), at ground level, and one just beyond 5 m in 3D
        parts += [(f"tie-{i}", x0 + sx * 3, y0 + sy * 4, 0.0) for i, (sx, sy) in
                  enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1)))]
        parts += [("beyond", x0 + 3, y0 + 4, 0.001)]
        # scattered parts over 120 x 120 m, from 15 m underground to 45 m up
        rng = np.random.default_rng(15)
        xs, ys = rng.uniform(-60, 60, N_SCATTERED), rng.uniform(-60, 60, N_SCATTERED)
        zs = rng.uniform(-15, 45, N_SCATTERED)
        parts += [(f"scatter-{i}", x0 + x, y0 + y, z) for i, (x, y, z) in enumerate(zip(xs, ys, zs))]
        # street furniture as the city has it: a 40 x 40 lattice at ground level, 2 m apart, 300 m east
        parts += [(f"flat-{i}", x0 + 300 + 2 * (i % 40), y0 + 2 * (i // 40), 0.0) for i in range(1_600)]
        conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, geom) "
            "SELECT s, lpad((100000 + n)::text, 16, '0'), '01', '0101', ST_SetSRID(ST_MakePoint(x, y, z), 4549) "
            "FROM unnest(CAST(:s AS text[]), CAST(:x AS float8[]), CAST(:y AS float8[]), CAST(:z AS float8[])) "
            "WITH ORDINALITY AS t(s, x, y, z, n)"),
            {"s": [p[0] for p in parts], "x": [float(p[1]) for p in parts], "y": [float(p[2]) for p in parts],
             "z": [float(p[3]) for p in parts]})
        # pipelines under one street, one above the other (0.5 m to 9 m deep), the same line in plan, and a
        # cable 3 m beside them at ground level
        lines = [(f"street-{d}", 0.0, -d / 2) for d in range(1, 19)] + [("cable", 3.0, 0.0)]
        for name, dy, z in lines:
            conn.execute(sa.text(
                "INSERT INTO pipelines (source_id, kind, geom) VALUES (:s, '燃气', ST_GeomFromText(:wkt, 4549))"),
                {"s": name, "wkt": f"LINESTRING Z ({x0} {y0 + 200 + dy} {z}, {x0 + 80} {y0 + 200 + dy} {z})"})
        conn.execute(sa.text("ANALYZE parts, pipelines"))
    return city


def _brute(conn, table: str, x: float, y: float, z: float, radius: float, k: int) -> list[tuple[str, float]]:
    """The k nearest by ranking every current row of the table by its 3D distance (no index can serve this)."""
    return [tuple(r) for r in conn.execute(sa.text(
        f"SELECT feature_id::text, d FROM (SELECT feature_id, ST_3DDistance(geom, ST_SetSRID(ST_MakePoint(:x, :y, :z),"
        f" 4549)) AS d FROM {table} WHERE valid_to IS NULL) t WHERE d <= :r ORDER BY d LIMIT :k"),
        {"x": x, "y": y, "z": z, "r": radius, "k": k})]


def _assert_same(hits, expected: list[tuple[str, float]], k: int) -> None:
    """The same distances in the same order, and the same features at each distance (at the k-th distance a
    tie may be cut either way, as by a sort)."""
    assert [h.distance_m for h in hits] == [d for _, d in expected]
    cut = expected[-1][1] if len(expected) == k else None
    by_distance: dict[float, set[str]] = {}
    for fid, d in expected:
        by_distance.setdefault(d, set()).add(fid)
    for d, fids in by_distance.items():
        found = {h.feature_id for h in hits if h.distance_m == d}
        assert found == fids or (d == cut and len(found) == len(fids)), (d, found, fids)


class Walks:
    """Counts the 3D walks (statements) sent on an engine."""

    def __init__(self, engine) -> None:
        self.engine, self.count = engine, 0

    def __enter__(self) -> "Walks":
        sa.event.listen(self.engine, "before_cursor_execute", self._note)
        return self

    def __exit__(self, *exc) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._note)

    def _note(self, conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        self.count += "_plan_m" in statement


def _search(engine, layer, x, y, z, **kw):
    with engine.connect() as conn:
        return nearby(conn, layer, x, y, z, SRID, **kw)


def _naive(conn, table: str, x: float, y: float, z: float, radius: float, k: int) -> list[str]:
    """What ranking the first rows in plan by their 3D distance would answer (the trap the walk must avoid)."""
    return list(conn.execute(sa.text(
        f"SELECT feature_id::text FROM (SELECT feature_id, geom FROM {table} WHERE valid_to IS NULL AND "
        f"ST_DWithin(geom, ST_SetSRID(ST_MakePoint(:x, :y), 4549), :r) ORDER BY geom <-> "
        f"ST_SetSRID(ST_MakePoint(:x, :y), 4549) LIMIT :m) c WHERE ST_3DDistance(geom, ST_SetSRID(ST_MakePoint("
        f":x, :y, :z), 4549)) <= :r ORDER BY ST_3DDistance(geom, ST_SetSRID(ST_MakePoint(:x, :y, :z), 4549)) "
        f"LIMIT :k"), {"x": x, "y": y, "z": z, "r": radius, "k": k, "m": CANDIDATES_PER_K * k}).scalars())


@pytest.mark.parametrize("table, dx, dy, z, radius, k", [
    ("parts", 0, 0, 0.0, 100.0, 10),      # at the tower's foot: its lowest floors, then the ring, not its top
    ("parts", 0, 0, 20.0, 100.0, 10),     # halfway up the tower: 0.5 m steps either way (ties in pairs)
    ("parts", 0, 0, 20.0, 100.0, 100),    # more than the tower holds within reach of the walk's first rows
    ("parts", 0.2, 0.1, -3.0, 100.0, 25),  # below the tower's foot, beside it
    ("parts", 0, 0, 0.0, 5.0, 1000),      # k beyond what there is within 5 m; the 3-4-5 ties exactly at 5 m
    ("parts", 0, 0, 0.0, 5.0, 12),        # cut inside the ring/tower, at the radius
    ("pipelines", 40, 200, 0.0, 100.0, 3),   # above the street: the shallowest mains and the cable 3 m aside
    ("pipelines", 40, 200, -4.2, 100.0, 5),  # between the mains: 0.2, 0.3, 0.7, 0.8 m…
    ("pipelines", 40, 201, -9.0, 10.0, 50),  # under them all, k beyond the 19 lines
    ("pipelines", 120, 200, -2.0, 100.0, 4),  # beyond the lines' ends: distances to their end points
])
def test_exact_where_the_nearest_in_plan_are_not_the_nearest(engine, layers, city, table, dx, dy, z, radius, k):
    x, y = city.at(DX + dx, DY + dy)
    hits = _search(engine, layers[table], x, y, z, radius_m=radius, k=k)
    with engine.connect() as conn:
        expected = _brute(conn, table, x, y, z, radius, k)
    assert expected, "the case must find something"
    _assert_same(hits, expected, k)


def test_the_data_defeats_ranking_the_first_rows_in_plan(engine, city):
    """The premise of the cases above: ranking only the first 4k rows in plan by 3D distance is wrong here."""
    x, y = city.at(DX, DY)
    with engine.connect() as conn:
        for table, yy, z, k in (("parts", y, 0.0, 10), ("pipelines", y + 200, -4.2, 2)):
            naive = _naive(conn, table, x, yy, z, 100.0, k)
            assert naive != [fid for fid, _ in _brute(conn, table, x, yy, z, 100.0, k)], table


def test_random_points_match_the_whole_table_ranking(engine, layers, city):
    """Points over the scattered parts (60 m of heights), the tower and the lattice, at random heights, radii
    and k: the same answer as ranking the whole table, whatever number of walks it took."""
    rng = np.random.default_rng(42)
    walks = []
    for _ in range(80):
        x, y = city.at(DX + rng.uniform(-70, 380), DY + rng.uniform(-70, 90))
        z, radius, k = float(rng.uniform(-20, 50)), float(rng.choice([3.0, 15.0, 100.0])), int(rng.choice([1, 10, 40]))
        with Walks(engine) as counted:
            hits = _search(engine, layers["parts"], x, y, z, radius_m=radius, k=k)
        walks.append(counted.count)
        with engine.connect() as conn:
            _assert_same(hits, _brute(conn, "parts", x, y, z, radius, k), k)
    assert max(walks) > 1 and min(walks) == 1, walks  # both kinds were exercised


def test_one_walk_in_the_usual_case_more_when_stacked(engine, layers, city):
    """Over street furniture at ground level, a point from 2 m below to 3 m above it: one walk (one round trip)
    — the proof holds after the first 4k rows in plan. At a tower's foot the first rows are all the tower's."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        x, y = city.at(DX + 300 + rng.uniform(5, 73), DY + rng.uniform(5, 73))
        with Walks(engine) as counted:
            _search(engine, layers["parts"], x, y, float(rng.uniform(-2, 3)), radius_m=100.0, k=10)
        assert counted.count == 1
    x, y = city.at(DX, DY)  # at the tower's foot: the first 40 rows in plan are all the tower's
    with Walks(engine) as counted:
        hits = _search(engine, layers["parts"], x, y, 0.0, radius_m=100.0, k=10)
    assert counted.count > 1
    assert {h.properties["source_id"].split("-")[0] for h in hits} == {"tower", "ring"}


def test_exact_with_a_filter(engine, layers, city):
    """With a CQL filter (a statement built for it, not the cached one) the walk takes only matching rows: the
    tower's floors alone, ranked from 20 m up, the ring and the scattered parts left out."""
    from cim.cql import compile_filter
    from cim.registry import layer_table

    parts = layers["parts"]
    where = compile_filter("source_id LIKE 'tower-%'", "cql2-text", parts, layer_table(parts, SRID), SRID)
    x, y = city.at(DX + 1, DY)
    with engine.connect() as conn:
        hits = nearby(conn, parts, x, y, 20.0, SRID, radius_m=100.0, k=5, where=where)
        expected = conn.execute(sa.text(
            "SELECT feature_id::text, ST_3DDistance(geom, ST_SetSRID(ST_MakePoint(:x, :y, 20), 4549)) AS d FROM parts "
            "WHERE valid_to IS NULL AND source_id LIKE 'tower-%' ORDER BY d LIMIT 5"), {"x": x, "y": y}).all()
    _assert_same(hits, [tuple(r) for r in expected], 5)
    assert all(h.properties["source_id"].startswith("tower-") for h in hits)


def test_without_z_the_search_is_2d(engine, layers, city):
    """No z: the 2D query as before (one statement, ranked by <->, no walk), the tower's floors all at 0 m."""
    x, y = city.at(DX, DY)
    with Walks(engine) as counted:
        hits = _search(engine, layers["parts"], x, y, None, radius_m=100.0, k=90)
    assert counted.count == 0
    assert [h.distance_m for h in hits[:80]] == [0.0] * 80 and hits[80].distance_m > 0
    query = nearby_select(layers["parts"], SRID, x, y, None, radius_m=100.0, k=10)
    sql = str(query.compile(dialect=postgresql.dialect()))
    assert "ST_3DDistance" not in sql and "OVER" not in sql, sql


def test_exact_under_the_api_role(engine, layers, city):
    """Under row-level security (SET LOCAL ROLE cim_api, the public scope) the same answer as the owner's."""
    x, y = city.at(DX + 0.3, DY)
    for table, yy, z in (("parts", y, 1.0), ("pipelines", y + 200, -3.1)):
        with engine.connect() as conn:
            expected = _brute(conn, table, x, yy, z, 100.0, 10)
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL ROLE cim_api")
            conn.exec_driver_sql("SELECT set_config('cim.scope', 'public', true)")
            hits = nearby(conn, layers[table], x, yy, z, SRID, radius_m=100.0, k=10)
        _assert_same(hits, expected, 10)


def test_no_nd_index_is_left(engine):
    """Migration 0013_nearby_2d: the big layers carry their 2D GiST only (the N-D one cost ~7 s of server CPU
    per 1 M rows loaded: PostGIS cannot build it sorted)."""
    with engine.connect() as conn:
        assert _nd_indexes(conn) == {}


#: revision 0013_nearby_2d: the layers that had an N-D GiST, its operator class, the index's name
MIGRATION = _migration("0013_nearby_2d")


def _nd_indexes(conn) -> dict[str, tuple[str, bool]]:
    return {name: (table, valid) for name, table, valid in conn.execute(sa.text(
        "SELECT i.relname, x.indrelid::regclass::text, x.indisvalid FROM pg_index x JOIN pg_class i ON "
        "i.oid = x.indexrelid JOIN pg_opclass o ON o.oid = ANY(x.indclass) WHERE o.opcname = :opclass"),
        {"opclass": MIGRATION.OPCLASS})}


def test_the_migration_down_remakes_the_nd_indexes_and_up_drops_them(engine, layers, city):
    """Revision 0013_nearby_2d: downgraded, every layer that had one has its N-D GiST again (a partitioned layer's
    on the parent and each partition, named as a partition made later would name it, valid); upgraded, none is
    left and the 3D answer is unchanged. (Last in the module: it puts the base back at head.)"""
    from cim.bootstrap import downgrade, initialise
    from cim.distribution import district_partitions, ensure_partitions

    x, y = city.at(DX, DY)
    before = [(h.feature_id, h.distance_m) for h in _search(engine, layers["parts"], x, y, 1.0, k=20)]
    with engine.begin() as conn:  # a district's partition beside the DEFAULT one
        ensure_partitions(conn.connection.cursor(), "parts", {"310199"})
    downgrade(engine, "0012_policy_partition")
    with engine.connect() as conn:
        nd = _nd_indexes(conn)
        partitions = district_partitions(conn.connection.cursor(), "parts")
    assert len(MIGRATION.ND_INDEXED) == 6
    for table in MIGRATION.ND_INDEXED:
        assert nd[MIGRATION.index_name(table)] == (table, True), nd
    assert len(partitions) >= 2
    for partition in partitions.values():
        suffix = partition.removeprefix("parts_")
        assert nd[f"{MIGRATION.index_name('parts')}_{suffix}"] == (partition, True), nd
    initialise(engine)
    with engine.connect() as conn:
        assert _nd_indexes(conn) == {}
    assert [(h.feature_id, h.distance_m) for h in _search(engine, layers["parts"], x, y, 1.0, k=20)] == before
