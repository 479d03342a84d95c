"""Real clients against a real server: GDAL's OGC API – Features driver (through pyogrio) and
OWSLib read the sample city from ``cim``'s uvicorn server, and grid lookup over Shanghai's real
sub-districts agrees with shapely for every metro station.

Each server is ``uvicorn --factory api.app:create_app`` in a subprocess, started by
:func:`tests.servers.serve_app` (GDAL holds the GIL while it waits for HTTP, so a server thread in
this process could not answer).
"""
from __future__ import annotations

from collections.abc import Iterator

import geopandas as gpd
import httpx
import numpy as np
import orjson
import pyogrio
import pyproj
import pytest
import shapely
import sqlalchemy as sa

from cases.model import mask

from cim.bootstrap import load_settings
from cim.database import engine_for
from cim.grid import responsibility_for
from cim.registry import load_layers
from tests.conftest import create_database, run_cim, shared_path
from tests.servers import serve_app

OWSLIB = pytest.importorskip("owslib.ogcapi.features")


# ---------------------------------------------------------------------------------------------
# the sample city (data_samples/), loaded by the real CLI
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_url(server_url) -> str:
    url = create_database(server_url)
    run_cim("init", db_url=url)
    run_cim("samples", "load", db_url=url)
    # cases as `make demo` makes them, so the cases collection has features too
    run_cim("cases", "simulate", "--days", "1", "--per-day", "20", "--start", "2026-11-23", db_url=url)
    # and a rainstorm over a ponding rule, so the alerts collection has active alerts
    run_cim("iot", "rules", "add", "积水", "--quantity", "water_level", "--device-type", "水位计", "--warning", "1.0",
            "--alarm", "1.5", db_url=url)
    run_cim("iot", "simulate", "--start", "2026-11-30T00:00:00+08:00", "--hours", "3", "--storm-at", "2.5",
            db_url=url)
    return url


@pytest.fixture(scope="module")
def sample_engine(sample_url):
    return engine_for(sample_url)


@pytest.fixture(scope="module")
def sample_server(sample_url) -> Iterator[str]:
    with serve_app(sample_url) as base:
        yield base


def _current_ids(engine, table: str) -> set[str]:
    with engine.connect() as conn:  # table names come from the layer registry, not from a request
        return set(conn.execute(sa.text(f'SELECT feature_id::text FROM "{table}" WHERE valid_to IS NULL')).scalars())


def _collections(base: str) -> list[str]:
    return [c["id"] for c in httpx.get(f"{base}/collections", timeout=30).json()["collections"]]


def _layers(engine) -> dict:
    with engine.connect() as conn:
        return load_layers(conn)


def test_gdal_reads_every_collection(sample_server, sample_engine):
    layers = _layers(sample_engine)
    ids = _collections(sample_server)
    assert sorted(ids) == sorted(layers)
    assert pyogrio.list_layers(f"OAPIF:{sample_server}")[:, 0].tolist() == sorted(ids)
    for collection in ids:
        expected = _current_ids(sample_engine, layers[collection].table)
        assert expected, f"the sample city has no {collection}"
        df = pyogrio.read_dataframe(f"OAPIF:{sample_server}", layer=collection)
        assert len(df) == len(expected), collection
        assert set(df["id"]) == expected, collection
        assert df.geometry.notna().all() and df.geometry.has_z.all(), collection


def _between(values: np.ndarray, q: float) -> float:
    """A value near quantile ``q`` of ``values`` halfway inside the widest of the nearby gaps, so
    that no point lies on (or within rounding of) a bbox edge placed there."""
    s = np.unique(values)
    k = int(q * (len(s) - 1))
    window = range(max(k - 20, 0), min(k + 20, len(s) - 1))
    j = max(window, key=lambda i: s[i + 1] - s[i])
    return float((s[j] + s[j + 1]) / 2)


def test_gdal_bbox_selects_on_the_server(sample_server, sample_engine):
    url = f"OAPIF:{sample_server}"
    crs = pyogrio.read_info(url, layer="parts")["crs"]  # the layer's CRS: GDAL picks the storage CRS
    srid = load_settings(sample_engine).srid
    with sample_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT feature_id::text, ST_X(geom), ST_Y(geom) FROM parts "
                                    "WHERE valid_to IS NULL")).all()
    ids = np.array([r[0] for r in rows])
    # bbox in the layer's CRS, traditional x/y order, as GDAL takes a spatial filter
    x, y = pyproj.Transformer.from_crs(f"EPSG:{srid}", crs, always_xy=True).transform(
        np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
    bbox = (_between(x, 0.3), _between(y, 0.3), _between(x, 0.7), _between(y, 0.7))
    inside = (x > bbox[0]) & (x < bbox[2]) & (y > bbox[1]) & (y < bbox[3])
    assert 0 < inside.sum() < len(rows) / 2
    df = pyogrio.read_dataframe(url, layer="parts", bbox=bbox)
    assert len(df) == inside.sum()
    assert set(df["id"]) == set(ids[inside])


def test_gdal_reads_in_epsg_4490(sample_server, sample_engine):
    url = f"OAPIF:{sample_server}"
    layers = _layers(sample_engine)
    for collection in _collections(sample_server):
        df = pyogrio.read_dataframe(url, layer=collection, CRS="EPSG:4490")
        assert df.crs is not None and df.crs.to_epsg() == 4490, collection
        assert len(df) == len(_current_ids(sample_engine, layers[collection].table)), collection
    # the coordinates are CGCS2000 longitude/latitude (GDAL swaps the server's lat/lon), heights kept
    df = pyogrio.read_dataframe(url, layer="parts", CRS="EPSG:4490")
    with sample_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT feature_id::text, ST_X(g), ST_Y(g), ST_Z(g) FROM "
                                    "(SELECT feature_id, ST_Transform(geom, 4490) AS g FROM parts "
                                    " WHERE valid_to IS NULL) AS t")).all()
    truth = {r[0]: r[1:] for r in rows}
    got = np.array([(p.x, p.y, p.z) for p in df.geometry])
    want = np.array([truth[i] for i in df["id"]])
    assert np.abs(got[:, :2] - want[:, :2]).max() < 1e-7  # the server writes 8 decimals
    assert np.abs(got[:, 2] - want[:, 2]).max() < 1e-6
    assert (want[:, 2] != 0).any()  # the sample parts include buried ones: Z is really checked


def test_owslib_lists_collections_and_pages_through_parts(sample_server, sample_engine):
    api = OWSLIB.Features(sample_server)
    layers = _layers(sample_engine)
    assert sorted(api.feature_collections()) == sorted(layers)
    assert api.collection("parts")["id"] == "parts"
    assert "object_code" in api.collection_queryables("parts")["properties"]
    expected = _current_ids(sample_engine, "parts")
    seen: list[str] = []
    limit, offset = 700, 0  # 5,300 parts: the last page is a short one
    while True:
        page = api.collection_items("parts", limit=limit, offset=offset)
        # left uncounted (no numberMatched) until the page that ends them
        assert page.get("numberMatched", len(expected)) == len(expected)
        assert page["numberReturned"] == len(page["features"]) <= limit
        seen += [f["id"] for f in page["features"]]
        if not any(link["rel"] == "next" for link in page["links"]):
            assert page["numberMatched"] == len(expected)
            break
        assert "numberMatched" not in page
        offset += limit
    assert len(seen) == len(set(seen)) == len(expected)
    assert set(seen) == expected
    one = api.collection_item("parts", seen[-1])
    assert one["id"] == seen[-1]


def test_grid_lookup_shares_each_grid_chain(sample_server, sample_engine):
    # every address of the sample city (many per grid): each answer carries its grid's full chain,
    # the same one responsibility_for() gives, and the grid the loader stored for the address
    with sample_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT ST_X(geom), ST_Y(geom), grid_code FROM addresses "
                                    "WHERE valid_to IS NULL ORDER BY fid")).all()
        srid = load_settings(sample_engine).srid
        points = [{"lon": r[0], "lat": r[1]} for r in rows]
        r = httpx.post(f"{sample_server}/grid/lookup", json={"points": points, "crs": f"EPSG:{srid}"},
                       timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        codes = [a["grid"]["code"] if a["grid"] else None for a in results]
        chains = responsibility_for(conn, sorted({c for c in codes if c}))
    assert codes == [row[2] for row in rows]
    assert len(set(codes)) < len(codes) / 5  # grids repeat: the sharing is exercised
    assert any(chains.values())
    for answer, code in zip(results, codes):
        want = [x.to_dict() for x in chains[code]] if code else []
        # no key: the responsible persons' phones come masked (issue 12)
        want = [{**d, "persons": [{**p, "contact": mask(p["contact"])} for p in d["persons"]]} for d in want]
        assert answer["responsibility"] == want, code


def test_items_page_is_one_statement_and_counts_only_when_it_ends_the_matches(sample_engine):
    # numberMatched is known on the page that holds the last match; before it, it is not counted at all
    # (None: left out of the response) and ``more`` (the page's probe row) says a next page exists
    from cim import features

    layer = _layers(sample_engine)["parts"]
    srid = load_settings(sample_engine).srid
    total = len(_current_ids(sample_engine, "parts"))
    statements: list[str] = []

    def page(**kw) -> features.FeaturePage:
        statements.clear()
        with sample_engine.connect() as conn:
            sa.event.listen(conn, "before_cursor_execute",
                            lambda *a: None if a[2].startswith("SELECT current_setting") or
                            a[2].startswith("SELECT set_config('max_parallel") else statements.append(a[2]))
            return features.fetch_items(conn, layer, srid, features.ItemsQuery(**kw))

    first = page(limit=10)
    assert (first.number_returned, first.number_matched, first.more, len(statements)) == (10, None, True, 1)
    last = page(limit=10, offset=total - 3)  # short: its length says how many there are
    assert (last.number_returned, last.number_matched, last.matched_exact, last.more) == (3, total, True, False)
    exact_end = page(limit=10, offset=total - 10)  # full, and the last: the probe row says so
    assert (exact_end.number_returned, exact_end.number_matched, exact_end.more) == (10, total, False)
    beyond = page(limit=10, offset=total + 5)  # empty, past the end: how many there are is not known
    assert (beyond.number_returned, beyond.number_matched, beyond.more) == (0, None, False)
    assert page(limit=total).number_matched == total
    sorted_ = page(limit=10, sortby=(("object_code", True),))
    codes = [orjson.loads(f)["properties"]["object_code"] for f in sorted_.features]
    assert codes == sorted(codes, reverse=True) and sorted_.more and len(statements) == 1


# ---------------------------------------------------------------------------------------------
# Shanghai's real districts and sub-districts (../shared/data)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shanghai_url(server_url) -> str:
    districts = shared_path("shanghai", "districts_wgs84.geojson")
    streets = shared_path("shanghai", "subdistricts_wgs84.geojson")
    url = create_database(server_url)
    run_cim("init", db_url=url)
    run_cim("ingest", "districts", str(districts), "--map", "code=region_id", "--map", "name=source_name",
            db_url=url)
    run_cim("ingest", "streets", str(streets), "--map", "code=region_id", "--map", "name=source_name",
            db_url=url)
    return url


def _smallest_covering_code(polygons: gpd.GeoDataFrame, points: np.ndarray) -> list[str | None]:
    """Per point, the code of the covering polygon (boundary counts) with the smallest code."""
    codes = polygons["region_id"].to_numpy()
    point_i, poly_i = shapely.STRtree(polygons.geometry.to_numpy()).query(points, predicate="covered_by")
    found: list[str | None] = [None] * len(points)
    for p, g in zip(point_i, poly_i):
        if found[p] is None or codes[g] < found[p]:
            found[p] = codes[g]
    return found


def test_grid_lookup_agrees_with_shapely_for_every_metro_station(shanghai_url):
    stations = gpd.read_file(shared_path("shanghai", "metro_stations_osm.geojson"))
    storage = f"EPSG:{load_settings(engine_for(shanghai_url)).srid}"
    # The reference is computed in the storage CRS, where the base keeps the polygons: an edge
    # straight in degrees is not straight in metres, and a station 5 mm inside a sub-district in
    # WGS84 (蓝天路) is 1.5 cm outside it once both are projected — a CRS fact, not a lookup error.
    points = stations.to_crs(storage).geometry.to_numpy()
    want_street = _smallest_covering_code(
        gpd.read_file(shared_path("shanghai", "subdistricts_wgs84.geojson")).to_crs(storage), points)
    want_district = _smallest_covering_code(
        gpd.read_file(shared_path("shanghai", "districts_wgs84.geojson")).to_crs(storage), points)
    assert sum(c is not None for c in want_street) > len(points) * 0.8  # most stations are in the city

    body = {"points": [{"lon": p.x, "lat": p.y} for p in stations.geometry]}  # WGS84, as published
    with serve_app(shanghai_url) as base:
        r = httpx.post(f"{base}/grid/lookup", json=body, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(stations)
    got_street = [a["street"]["code"] if a["street"] else None for a in results]
    got_district = [a["district"]["code"] if a["district"] else None for a in results]
    wrong = [(stations["name"].iloc[i], want_street[i], got_street[i])
             for i in range(len(results)) if got_street[i] != want_street[i]]
    assert not wrong, wrong[:10]
    wrong = [(stations["name"].iloc[i], want_district[i], got_district[i])
             for i in range(len(results)) if got_district[i] != want_district[i]]
    assert not wrong, wrong[:10]
    for a in results:  # no grids or communities were loaded: the answer stops at the street
        assert a["grid"] is None and a["community"] is None
        assert a["level"] == ("street" if a["street"] else "district" if a["district"] else "none")
