"""Grid lookup (issue 5B): levels, boundary rule, GCJ-02 input, one statement per 10,000-point
batch, the HTTP routes and the CSV command — on a real PostGIS with a synthetic hierarchy."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from cim.bootstrap import load_settings
from cim.crs import wgs84_to_gcj02
from cim.grid import MAX_POINTS, lookup_points, responsibility_for
from tests.conftest import run_cim
from tests.spatial_data import GRIDS, build_hierarchy

G1, G2, G3 = (g[0] for g in GRIDS)


@pytest.fixture(scope="module")
def city(engine):
    with engine.begin() as conn:
        return build_hierarchy(conn)


@pytest.fixture(scope="module")
def settings(engine, city):
    return load_settings(engine)


@pytest.fixture(scope="module")
def client(engine, city):
    return TestClient(create_app(engine))


def _lookup(engine, settings, points, crs="EPSG:4549"):
    with engine.connect() as conn:
        return lookup_points(conn, [p[0] for p in points], [p[1] for p in points], crs, settings)


def test_point_inside_each_grid(engine, settings, city):
    answers = _lookup(engine, settings, [city.at(250, 500), city.at(750, 500), city.at(1250, 500)])
    assert [a.grid.code for a in answers] == [G1, G2, G3]
    for a in answers:
        assert a.level == "grid"
        assert (a.community.code, a.street.code, a.district.code) == ("310101001001", "310101001", "310101")
        assert a.district.name == "黄浦区" and a.street.name == "南京东路街道"
    chain = answers[0].responsibility
    assert [(r.post.code, r.department.code) for r in chain] == [("P-01", "CGJ"), ("P-02", "LHJ")]
    assert [p.name for p in chain[0].persons] == ["张三", "李四"]
    assert chain[0].persons[0].contact == "13800000001"
    assert chain[0].department.handles == ("01", "0101")
    assert [r.post.code for r in answers[1].responsibility] == ["P-01"]
    assert answers[2].responsibility == ()


def test_levels_below_grid_and_outside(engine, settings, city):
    community, street, outside = _lookup(engine, settings, [city.at(700, 1500), city.at(2000, 500),
                                                            city.at(5000, 5000)])
    assert community.level == "community" and community.grid is None
    assert community.community.code == "310101001002" and community.street.code == "310101001"
    assert street.level == "street" and street.community is None and street.street.code == "310101002"
    assert outside.level == "none"
    assert outside.to_dict() == {"district": None, "street": None, "community": None, "grid": None,
                                 "level": "none", "responsibility": []}


def test_shared_edge_goes_to_smallest_grid_code(engine, settings, city):
    # x = X0+500 is the edge between grids …01 and …02 (inserted …03, …02, …01). The documented
    # rule: both cover the point; the smallest code wins — the same answer every time.
    edge = city.at(500, 500)
    first, second = _lookup(engine, settings, [edge, edge])
    again = _lookup(engine, settings, [edge])[0]
    assert first.grid.code == second.grid.code == again.grid.code == G1
    # and the corner where all three levels' edges meet the district edge still has an answer
    corner = _lookup(engine, settings, [city.at(0, 0)])[0]
    assert corner.grid.code == G1 and corner.district.code == "310101"


def test_gcj02_input_equals_wgs84_after_conversion(engine, settings, city):
    lon, lat = city.lonlat(250, 500)  # middle of grid …01; GCJ-02 moves it ~470 m east, ~190 m south
    glon, glat = wgs84_to_gcj02(lon, lat)
    wgs = _lookup(engine, settings, [(lon, lat)], "EPSG:4326")[0]
    gcj = _lookup(engine, settings, [(glon, glat)], "gcj02")[0]
    assert wgs.grid.code == G1
    assert gcj == wgs
    # the shift matters: read as WGS84 the same numbers land elsewhere
    assert _lookup(engine, settings, [(glon, glat)], "EPSG:4326")[0].grid != wgs.grid


def test_batch_of_10000_keeps_order_in_one_statement(engine, settings, city):
    rng = np.random.default_rng(5)
    dx = rng.uniform(-200, 3200, MAX_POINTS)
    dy = rng.uniform(-200, 2200, MAX_POINTS)
    xs, ys = city.x0 + dx, city.y0 + dy
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", count)
        answers = lookup_points(conn, xs, ys, "EPSG:4549", settings)
        sa.event.remove(conn, "before_cursor_execute", count)
    assert len(statements) == 1
    assert len(answers) == MAX_POINTS
    # each answer belongs to its own point: recompute the grid from the synthetic layout
    for i in range(0, MAX_POINTS, 97):
        x, y = dx[i], dy[i]
        expected = None
        if 0 <= y <= 1000 and 0 <= x <= 1500:
            expected = GRIDS[min(int(x // 500), 2)][0] if x % 500 else GRIDS[max(int(x // 500) - 1, 0)][0]
        assert (answers[i].grid.code if answers[i].grid else None) == expected, (i, x, y)
        inside = 0 <= x <= 3000 and 0 <= y <= 2000
        assert (answers[i].district is not None) == inside


def test_more_than_max_points_is_refused(engine, settings):
    with engine.connect() as conn, pytest.raises(Exception, match="at most 10,000"):
        lookup_points(conn, [0.0] * (MAX_POINTS + 1), [0.0] * (MAX_POINTS + 1), "EPSG:4549", settings)


def test_non_finite_points_get_an_empty_answer(engine, settings, city):
    answers = _lookup(engine, settings, [(float("nan"), 1.0), city.at(250, 500), (float("inf"), 0.0)])
    assert [a.level for a in answers] == ["none", "grid", "none"]


def test_responsibility_for_grid_codes(engine, city):
    with engine.connect() as conn:
        chains = responsibility_for(conn, [G2, G1, "no-such-grid", G2])
    assert set(chains) == {G1, G2, "no-such-grid"}
    assert [r.post.code for r in chains[G1]] == ["P-01", "P-02"]
    assert [r.post.code for r in chains[G2]] == ["P-01"]
    assert chains["no-such-grid"] == ()


def test_a_chain_memo_reads_each_grid_once_per_jurisdiction(engine, city):
    """:class:`cim.grid.ChainMemo` answers what responsibility_for answers, reading only the grids it has not met;
    another jurisdiction's callers get their own reads (row-level security decides what they see)."""
    from cim.grid import ChainMemo
    from cim.jurisdiction import Scope, acting_as

    memo, sent = ChainMemo(), []
    listener = lambda conn, cursor, statement, parameters, *args: sent.append(parameters)  # noqa: E731
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        with engine.connect() as conn:
            first = memo(conn, [G2, G1, "no-such-grid", G2])
            assert first == responsibility_for(conn, [G2, G1, "no-such-grid", G2])
            sent.clear()
            assert memo(conn, [G1, G2]) == {G1: first[G1], G2: first[G2]} and sent == []
            assert memo(conn, [G3, G1])[G3] == responsibility_for(conn, [G3])[G3]
            assert [p["codes"] for p in sent[:1]] == [[G3]]  # the grid not met, alone
            sent.clear()
            with acting_as(Scope("area", district="310104")):
                memo(conn, [G1])
            assert sent, "another jurisdiction's chains are read for it"
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)


def test_get_lookup(client, city):
    lon, lat = city.lonlat(750, 500)
    r = client.get("/grid/lookup", params={"lon": lon, "lat": lat})
    assert r.status_code == 200
    (result,) = r.json()["results"]
    assert result["level"] == "grid" and result["grid"] == {"code": G2, "name": "网格二"}
    # without a key the responsible person's phone is masked (issue 12; tests/test_jurisdiction.py)
    assert result["responsibility"][0]["persons"][0] == {"name": "张三", "contact": "138****0001"}
    glon, glat = wgs84_to_gcj02(lon, lat)
    r = client.get("/grid/lookup", params={"lon": glon, "lat": glat, "crs": "gcj02"})
    assert r.json()["results"][0]["grid"]["code"] == G2


def test_post_lookup_keeps_order(client, city):
    offsets = [(1250, 500), (5000, 5000), (250, 500), (700, 1500), (750, 500)]
    points = [dict(zip(("lon", "lat"), city.lonlat(*o))) for o in offsets]
    r = client.post("/grid/lookup", json={"points": points})
    assert r.status_code == 200
    levels = [(x["level"], x["grid"]["code"] if x["grid"] else None) for x in r.json()["results"]]
    assert levels == [("grid", G3), ("none", None), ("grid", G1), ("community", None), ("grid", G2)]
    xy = [dict(zip(("lon", "lat"), city.at(*o))) for o in offsets]
    r = client.post("/grid/lookup", json={"points": xy, "crs": "EPSG:4549"})
    assert [x["level"] for x in r.json()["results"]] == [lv for lv, _ in levels]


@pytest.mark.parametrize("params, parameter", [
    ({"lon": "nan", "lat": "31.2"}, "lon"),
    ({"lon": "121.4", "lat": "inf"}, "lat"),
    ({"lon": "181", "lat": "31.2"}, "lon"),
    ({"lon": "121.4", "lat": "-91"}, "lat"),
    ({"lon": "abc", "lat": "31.2"}, "lon"),
    ({"lat": "31.2"}, "lon"),
    ({"lon": "121.4", "lat": "31.2", "crs": "EPSG:999999"}, "crs"),
])
def test_get_lookup_bad_parameters(client, params, parameter):
    r = client.get("/grid/lookup", params=params)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["parameter"] == parameter


def test_post_lookup_limits(client):
    too_many = {"points": [{"lon": 121.4, "lat": 31.2}] * (MAX_POINTS + 1)}
    r = client.post("/grid/lookup", json=too_many)
    assert r.status_code == 400 and r.json()["parameter"] == "points"
    # Python's JSON parser reads 1e999 as inf and accepts NaN: both must be refused by name
    for raw, parameter in (('{"points": [{"lon": 121.4, "lat": 31.2}, {"lon": 1e999, "lat": 31.2}]}', "points.1.lon"),
                           ('{"points": [{"lon": 121.4, "lat": NaN}]}', "points.0.lat")):
        r = client.post("/grid/lookup", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["parameter"] == parameter
    r = client.post("/grid/lookup", json={"points": [{"lon": 121.4}]})
    assert r.status_code == 400 and r.json()["parameter"] == "points.0.lat"


def test_cli_csv_in_and_out(db_url, city, tmp_path):
    rows = [("a", *city.lonlat(250, 500)), ("b", *city.lonlat(700, 1500)), ("c", "", ""),
            ("d", *city.lonlat(5000, 5000)), ("e", *city.lonlat(1250, 500))]
    src = tmp_path / "points.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "经度", "纬度"])
        w.writerows(rows)
    out = tmp_path / "out.csv"
    proc = run_cim("grid", "lookup", "--in", str(src), "--out", str(out), "--x", "经度", "--y", "纬度",
                   db_url=db_url)
    assert "1 row(s) have no numeric" in proc.stderr
    with out.open(encoding="utf-8") as f:
        result = list(csv.DictReader(f))
    assert [r["name"] for r in result] == ["a", "b", "c", "d", "e"]
    assert result[0]["经度"] == str(rows[0][1])  # input columns kept as they were
    assert [r["level"] for r in result] == ["grid", "community", "none", "none", "grid"]
    assert [r["grid_code"] for r in result] == [G1, "", "", "", G3]
    assert result[0]["district_code"] == "310101" and result[0]["street_name"] == "南京东路街道"
    assert (result[0]["post_code"], result[0]["department_name"], result[0]["person_contact"]) == (
        "P-01", "城管执法局", "13800000001")
    assert result[1]["community_code"] == "310101001002"


def test_cli_reports_a_missing_column(db_url, city, tmp_path):
    src = tmp_path / "points.csv"
    src.write_text("x,y\n1,2\n", encoding="utf-8")
    proc = run_cim("grid", "lookup", "--in", str(src), "--out", str(tmp_path / "o.csv"), db_url=db_url,
                   check=False)
    assert proc.returncode == 1
    assert "--x: column 'lon' is not in points.csv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lookup_uses_the_gist_indexes_under_the_api_role(engine, settings, city):
    """The API reads as ``cim_api`` under row-level security, where only LEAKPROOF conditions may drive an
    index scan: each level's box test must be one of them, or every lookup scans every level's table (136 ms
    a point on a synthetic Shanghai's 20,000 grids). 3,000 more units of each level, far away, make the
    tables big enough for the planner to want the index; all rolled back."""
    from cim.grid import _LOOKUP_SQL, _PREPARE_SQL, PREPARED_NAME

    x, y = city.at(250, 500)
    x0, y0 = city.at(100_000, 100_000)
    sql = _LOOKUP_SQL.replace("SET LOCAL jit = off;", "").replace(":srid", "4549") \
        .replace("CAST(:xs AS float8[])", f"ARRAY[{x}]::float8[]").replace("CAST(:ys AS float8[])", f"ARRAY[{y}]::float8[]")
    square = "ST_Force3D(ST_MakeEnvelope(:x0 + i * 100, :y0, :x0 + i * 100 + 90, :y0 + 90, 4549))"
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(sa.text(f"""INSERT INTO districts (source_id, code, name, geom)
            SELECT 'd' || i, 'd' || i, 'd', ST_Multi({square}) FROM generate_series(1, 3000) i"""), {"x0": x0, "y0": y0})
        for table, code in (("streets", "code"), ("communities", "code"), ("grids", "grid_code")):
            conn.execute(sa.text(f"""INSERT INTO {table} (source_id, {code}, name, geom)
                SELECT '{table}' || i, '{table}' || i, 'x', ST_Multi({square}) FROM generate_series(1, 3000) i"""),
                         {"x0": x0, "y0": y0})
        conn.exec_driver_sql("ANALYZE districts, streets, communities, grids")
        conn.exec_driver_sql("SET LOCAL ROLE cim_api")
        conn.exec_driver_sql("SELECT set_config('cim.scope', 'public', true)")
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
        # the API's prepared statement, planned once for any point (its generic plan): the same indexes
        conn.exec_driver_sql(_PREPARE_SQL.replace(PREPARED_NAME, "generic_lookup"))
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        generic = "\n".join(r[0] for r in conn.exec_driver_sql(
            f"EXPLAIN EXECUTE generic_lookup('{{{x}}}', '{{{y}}}', 4549)"))
        conn.exec_driver_sql("DEALLOCATE generic_lookup")
        tx.rollback()
    for p in (plan, generic):
        assert "cim.scope" in p, p  # the policies are there
        for table in ("grids", "communities", "streets", "districts"):
            assert f"Seq Scan on {table}" not in p and f"ix_{table}_geom" in p, (table, p)


def _sent(engine):
    """Every statement the DBAPI is handed on ``engine`` (one round trip each, plus the BEGIN psycopg2 sends
    before the first statement of a transaction when the connection is not in autocommit), with whether the
    connection was in autocommit."""
    sent: list[tuple[str, bool]] = []

    def note(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        sent.append((statement, cursor.connection.autocommit))

    sa.event.listen(engine, "before_cursor_execute", note)
    return sent, lambda: sa.event.remove(engine, "before_cursor_execute", note)


def test_api_grid_lookup_is_one_round_trip_in_the_callers_scope(engine, settings, city):
    """GET /grid/lookup sends one statement in autocommit (no BEGIN, no ROLLBACK): the caller's scope in front
    of the prepared lookup, one implicit transaction; the connection goes back to the pool transactional."""
    app = create_app(engine)
    client = TestClient(app)
    reader = app.state.cim.engine
    lon, lat = city.lonlat(750, 500)
    first = client.get("/grid/lookup", params={"lon": lon, "lat": lat}).json()  # prepares on its connection
    sent, stop = _sent(reader)
    try:
        again = client.get("/grid/lookup", params={"lon": lon, "lat": lat}).json()
        health = client.get("/healthz")
    finally:
        stop()
    assert again == first and first["results"][0]["grid"]["code"] == G2
    assert first["results"][0]["responsibility"][0]["persons"][0]["contact"] == "138****0001"  # masked
    assert health.status_code == 200
    # (a pooled connection that never answered a lookup prepares it first, once: a statement of its own)
    (lookup, autocommit), (healthz, health_autocommit) = [s for s in sent if "PREPARE cim_grid_lookup_" not in s[0]]
    assert autocommit and health_autocommit
    assert lookup.startswith("SELECT set_config('role', 'cim_api', true)") and "EXECUTE cim_grid_lookup_" in lookup
    assert healthz.startswith("SELECT set_config('role', 'cim_api', true)") and "postgis_lib_version" in healthz
    with reader.connect() as conn:  # the pool's connection is transactional again
        assert conn.connection.dbapi_connection.autocommit is False
        assert conn.exec_driver_sql("SELECT current_user").scalar() == "cim_api"


def test_statements_scoped_keeps_row_level_security_on_every_statement(engine, settings, city):
    from cim.database import reader_engine
    from cim.jurisdiction import Scope, acting_as, statements_scoped

    reader = reader_engine(engine)
    inside, outside = city.at(750, 500), city.at(250, 500)  # grids G2 and G1
    with acting_as(Scope("area", grids=(G2,))), statements_scoped(reader.connect()) as conn:
        for _ in range(2):  # each statement is its own transaction and carries the scope
            assert conn.exec_driver_sql("SELECT current_user, current_setting('cim.grids', true)").one() == \
                ("cim_api", G2)
        here, there = (lookup_points(conn, [p[0]], [p[1]], "EPSG:4549", settings, prepared=True)[0]
                       for p in (inside, outside))
        assert here.grid.code == G2 and there.grid is None and there.responsibility == ()
        assert conn.exec_driver_sql("SELECT count(*) FROM grids").scalar() == 1
        with pytest.raises(Exception, match="statements_scoped"):  # never sent without the scope
            conn.execute(sa.text("SELECT set_config('x.y', :v, false)"), [{"v": "1"}, {"v": "2"}])
    with pytest.raises(ValueError, match="statements_scoped"), engine.connect() as conn:
        statements_scoped(conn)  # the owner's engine has no scope to send


def test_prepared_lookup_answers_as_the_planned_one(engine, settings, city):
    points = [city.at(250, 500), city.at(750, 500), city.at(700, 1500), city.at(5000, 5000), city.at(500, 500)]
    with engine.connect() as conn:
        planned = lookup_points(conn, [p[0] for p in points], [p[1] for p in points], "EPSG:4549", settings)
        conn.rollback()
        for _ in range(2):  # prepared on first use; still there after the transaction's rollback
            prepared = lookup_points(conn, [p[0] for p in points], [p[1] for p in points], "EPSG:4549", settings,
                                     prepared=True)
            conn.rollback()
            assert prepared == planned


def test_the_loaders_grid_index_answers_as_the_lookup_edges_and_corners_included(engine, settings, city):
    """The loader's in-memory enrichment (cim.gridindex: the tree's boxes, then the prepared intersects) gives
    every point the codes the SQL lookup gives — inside, on a shared edge (smallest code), on the corner where
    the levels' edges meet, on the outer edge, just outside and far outside."""
    import shapely

    from cim.gridindex import GridIndex

    places = [(250, 500), (750, 500), (1250, 500), (500, 500), (0, 0), (1000, 0), (500, 1000), (700, 1500),
              (2000, 500), (-0.001, 500), (0, 500), (5000, 5000)]
    points = [city.at(*p) for p in places]
    rng = np.random.default_rng(7)
    points += [city.at(x, y) for x, y in zip(rng.uniform(-100, 3000, 200), rng.uniform(-100, 2100, 200))]
    with engine.connect() as conn:
        codes = GridIndex.load(conn).assign(shapely.points(points))
    expected = _lookup(engine, settings, points)
    for i, answer in enumerate(expected):
        got = tuple(codes[c][i] for c in ("district_code", "street_code", "community_code", "grid_code"))
        want = tuple(a.code if a else None for a in (answer.district, answer.street, answer.community, answer.grid))
        assert got == want, (i, points[i], got, want)


def test_contacts_are_shown_as_the_caller_may_see_them_as_chains_are_built(engine, settings, city):
    """``contact=mask`` masks each contact as the chain is built (the API's answer for a caller without personal
    data) and answers as masking the stored chain afterwards did; the default shows them as stored."""
    from api.grid import masked
    from cases.model import mask

    points = [city.at(150, 150), city.at(750, 500), city.at(150, 150)]
    with engine.connect() as conn:
        stored = lookup_points(conn, [p[0] for p in points], [p[1] for p in points], "EPSG:4549", settings)
        shown = lookup_points(conn, [p[0] for p in points], [p[1] for p in points], "EPSG:4549", settings,
                              prepared=True, contact=mask)
    assert shown == masked(stored) and shown != stored
    assert stored[1].responsibility[0].persons[0].contact == "13800000001"
    assert shown[1].responsibility[0].persons[0].contact == "138****0001"
    assert shown[0].responsibility is shown[2].responsibility  # one chain per grid, shared by its points
