"""Vector tiles (OGC API – Tiles, WebMercatorQuad): decodable by mapbox-vector-tile and by GDAL,
Chinese text intact, 204 when empty, problems for bad addresses, and new bytes after a load."""
from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import mapbox_vector_tile
import morecantile
import pyogrio
import pytest
import sqlalchemy as sa

from tests.conftest import create_database, run_cim
from tests.test_tiles_3d import LOADED, api_client, write_buildings

TMS = morecantile.tms.get("WebMercatorQuad")
X0, Y0 = 642900.0, 3458000.0  # EPSG:4549, the Bund
LON, LAT = 121.50, 31.235
MVT = "application/vnd.mapbox-vector-tile"


def _box(x: float, y: float, w: float, h: float) -> str:
    return f"MULTIPOLYGON Z ((({x} {y} 0, {x + w} {y} 0, {x + w} {y + h} 0, {x} {y + h} 0, {x} {y} 0)))"


def _bump(conn, table: str) -> None:
    conn.execute(sa.text("UPDATE layers SET version = version + 1 WHERE table_name = :t"), {"t": table})


@pytest.fixture(scope="module")
def city(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO streets (source_id, code, name, district_code, geom) VALUES "
                             "('s1', '310101002', '外滩街道', '310101', ST_GeomFromText(:g, 4549))"),
                     {"g": _box(X0 - 600, Y0 - 600, 1200, 1200)})
        for i in range(3):
            for j in range(3):
                conn.execute(sa.text(
                    "INSERT INTO grids (source_id, grid_code, name, street_code, geom) "
                    "VALUES (:s, :c, :n, '310101002', ST_GeomFromText(:g, 4549))"),
                    {"s": f"g{i}{j}", "c": f"3101010020{i}{j}", "n": f"外滩第{i}{j}网格",
                     "g": _box(X0 - 600 + 400 * i, Y0 - 600 + 400 * j, 400, 400)})
        for i, sub in enumerate(["0101", "0110", "0103"]):
            conn.execute(sa.text(
                "INSERT INTO parts (source_id, object_code, part_class, part_subclass, name, geom) "
                "VALUES (:s, :o, '01', :sc, :n, ST_GeomFromText(:w, 4549))"),
                {"s": f"p{i}", "o": f"310101{sub}{i:06d}", "sc": sub, "n": f"部件{i}号",
                 "w": f"POINT Z ({X0 + 10 * i} {Y0 - 10} 0)"})
        for t in ("streets", "grids", "parts"):
            _bump(conn, t)
    return engine


@pytest.fixture(scope="module")
def client(city, tmp_path_factory):
    with api_client(city, tmp_path_factory.mktemp("cim-home")) as c:
        yield c


def tile_at(z: int) -> morecantile.Tile:
    return TMS.tile(LON, LAT, z)


def url(layer: str, t: morecantile.Tile) -> str:
    return f"/collections/{layer}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}"


def test_grid_tile_decodes_with_chinese_text(client, tmp_path):
    t = tile_at(14)
    r = client.get(url("grids", t))
    assert r.status_code == 200 and r.headers["content-type"] == MVT
    layers = mapbox_vector_tile.decode(r.content)
    feats = layers["grids"]["features"]
    assert len(feats) == 9
    assert sorted(f["properties"]["name"] for f in feats) == sorted(f"外滩第{i}{j}网格" for i in range(3) for j in range(3))
    assert all(f["geometry"]["type"] == "Polygon" for f in feats)
    # GDAL's MVT driver reads the same bytes: z/x/y.pbf layout tells it where the tile is
    path = tmp_path / str(t.z) / str(t.x) / f"{t.y}.pbf"
    path.parent.mkdir(parents=True)
    path.write_bytes(r.content)
    df = pyogrio.read_dataframe(path, layer="grids")
    assert len(df) == 9 and set(df["name"]) == {f"外滩第{i}{j}网格" for i in range(3) for j in range(3)}
    bounds = df.to_crs(4326).total_bounds
    assert bounds[0] == pytest.approx(LON - 0.006, abs=0.003) and bounds[3] == pytest.approx(LAT + 0.006, abs=0.003)


def test_properties_parameter_and_empty_tiles(client):
    t = tile_at(15)
    r = client.get(url("parts", t), params={"properties": "object_code,name"})
    (feat, *_) = mapbox_vector_tile.decode(r.content)["parts"]["features"]
    assert set(feat["properties"]) == {"object_code", "name"}
    bad = client.get(url("parts", t), params={"properties": "object_code,nope"})
    assert bad.status_code == 400 and bad.json()["parameter"] == "properties"
    far = TMS.tile(0.0, 0.0, 15)  # the Gulf of Guinea
    empty = client.get(url("parts", far))
    assert empty.status_code == 204 and not empty.content and empty.headers["etag"]


def test_map_tiles_carry_the_properties_tilejson_lists(client, city):
    """A map tile (no properties asked for) leaves out a version's bookkeeping and, on a layer enriched with area
    codes, those codes: TileJSON's fields and the tileset's propertiesSchema list exactly what it carries. A part's
    16-digit object code is its feature id, not a property (one value-table entry per part, tiles.mvt.CODE_IDS), and
    TileJSON says so; the other layers' ids stay the fid. The area layers keep their own codes; any property may
    still be asked for."""
    t = tile_at(16)
    tj = client.get("/collections/parts/tiles/WebMercatorQuad/tilejson.json").json()
    fields = set(tj["vector_layers"][0]["fields"])
    assert fields == {"part_class", "part_subclass", "name", "status", "owner_department", "maintainer"}
    assert "feature id: object_code" in tj["vector_layers"][0]["description"]
    meta = client.get("/collections/parts/tiles/WebMercatorQuad").json()
    assert set(meta["layers"][0]["propertiesSchema"]["properties"]) == fields
    assert "feature id: object_code" in meta["layers"][0]["description"]
    feats = mapbox_vector_tile.decode(client.get(url("parts", t)).content)["parts"]["features"]
    assert len(feats) == 3 and all(set(f["properties"]) <= fields for f in feats)
    assert {f["id"] for f in feats} == {3101010101000000, 3101010110000001, 3101010103000002}
    assert {f["properties"]["part_subclass"] for f in feats} == {"0101", "0110", "0103"}
    grids = client.get("/collections/grids/tiles/WebMercatorQuad/tilejson.json").json()["vector_layers"][0]
    assert {"grid_code", "street_code", "name"} <= set(grids["fields"]) and "source_id" not in grids["fields"]
    assert "feature id" not in grids["description"]
    with city.connect() as conn:
        fids = set(conn.execute(sa.text("SELECT fid FROM grids WHERE valid_to IS NULL")).scalars())
    grid_feats = mapbox_vector_tile.decode(client.get(url("grids", t)).content)["grids"]["features"]
    assert grid_feats and {f["id"] for f in grid_feats} <= fids  # the fid: what a map's click finds a grid by
    asked = client.get(url("parts", t), params={"properties": "source_id,feature_id,district_code,object_code"})
    asked_feats = mapbox_vector_tile.decode(asked.content)["parts"]["features"]
    assert all(set(f["properties"]) == {"source_id", "feature_id", "district_code", "object_code"} and
               f["id"] == int(f["properties"]["object_code"]) for f in asked_feats)


def test_a_street_level_tile_searches_a_box_worked_out_once(city, monkeypatch):
    """From CORNERS_ZOOM on, the tile's search box is transformed into storage once, in Python (it also names the
    districts), and the statement compares the stored geometries with it, mapping them into Web Mercator by the
    tile's affine map; the tile is the same as with PostGIS transforming the densified box and the geometries (the
    same features and properties, each vertex within one grid cell), and the parallel-worker setting travels with
    it in one round trip."""
    from cim.jurisdiction import PUBLIC, acting_as
    from cim.registry import load_layers
    from cim.selection import Selection
    from tiles import mvt

    sent: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        sent.append(statement)

    sa.event.listen(city, "before_cursor_execute", record)
    try:
        with acting_as(PUBLIC), city.connect() as conn:
            layers = load_layers(conn)
            for name in ("grids", "parts"):
                for z in (14, 15, 16):
                    t = tile_at(z)
                    sent.clear()
                    new = mvt.tile(conn, layers[name], 4549, z, t.x, t.y, Selection(),
                                   mvt.default_properties(layers[name]))
                    tiles = [s for s in sent if "ST_AsMVT" in s]
                    assert len(sent) == len(tiles) == 1 and tiles[0].startswith(mvt._NO_PARALLEL)
                    assert "box_left" in tiles[0] and "ST_Affine" in tiles[0] and "ST_Transform" not in tiles[0]
                    # a polygon inside the tile goes straight into its grid, one across the edge through ST_AsMVTGeom
                    assert ("ST_SnapToGrid" in tiles[0]) == (name == "grids") and "ST_AsMVTGeom" in tiles[0]
                    with monkeypatch.context() as m:
                        m.setattr(mvt, "CORNERS_ZOOM", 99)
                        old = mvt.tile(conn, layers[name], 4549, z, t.x, t.y, Selection(),
                                       mvt.default_properties(layers[name]))
                    assert new and _same_within_a_cell(new, old, name)
    finally:
        sa.event.remove(city, "before_cursor_execute", record)


def _vertices(geometry: dict) -> list[tuple[int, int]]:
    def walk(c):
        return [tuple(c)] if isinstance(c[0], (int, float)) else [p for part in c for p in walk(part)]
    return walk(geometry["coordinates"])


def _rings(geometry: dict) -> list[list[tuple[int, int]]]:
    """A polygon's rings (closed), a line's vertices, a point's as one list each."""
    kind, c = geometry["type"], geometry["coordinates"]
    if kind == "Polygon":
        return [[tuple(p) for p in ring] for ring in c]
    if kind == "MultiPolygon":
        return [[tuple(p) for p in ring] for polygon in c for ring in polygon]
    return [_vertices(geometry)]


def _same_ring(a: list[tuple[int, int]], b: list[tuple[int, int]], closed: bool) -> bool:
    """The same vertices, each at most one grid cell apart, in the same order; a closed ring may start anywhere
    (the way round counts: it tells an outer ring from a hole)."""
    if len(a) != len(b):
        return False
    near = lambda p, q: abs(p[0] - q[0]) <= 1 and abs(p[1] - q[1]) <= 1  # noqa: E731
    if not closed:
        return all(near(p, q) for p, q in zip(a, b))
    a, b = a[:-1], b[:-1]
    return any(all(near(p, b[(i + r) % len(b)]) for i, p in enumerate(a)) for r in range(len(b)))


def _same_within_a_cell(a: bytes, b: bytes, layer: str) -> bool:
    """The same features, properties and rings of the same vertex counts, each vertex at most one grid cell apart."""
    fa = {f["id"]: f for f in mapbox_vector_tile.decode(a)[layer]["features"]}
    fb = {f["id"]: f for f in mapbox_vector_tile.decode(b)[layer]["features"]}
    assert fa.keys() == fb.keys()
    for k, f in fa.items():
        ra, rb = _rings(f["geometry"]), _rings(fb[k]["geometry"])
        closed = "Polygon" in f["geometry"]["type"]
        assert f["properties"] == fb[k]["properties"] and f["geometry"]["type"] == fb[k]["geometry"]["type"]
        assert len(ra) == len(rb) and all(_same_ring(p, q, closed) for p, q in zip(ra, rb)), (ra, rb)
    return True


def test_the_affine_map_into_web_mercator_stays_within_a_quarter_cell():
    """From CORNERS_ZOOM on, a tile maps stored geometries into Web Mercator by an affine map fitted to the tile
    (ST_Affine, no PROJ a vertex) when it strays at most AFFINE_MAX_ERROR_CELLS from the exact transform: checked
    here at points the fit never saw; a tile where it would stray further (a larger one) gets none, and is transformed by PostGIS."""
    import numpy as np

    from cim.crs import transform_coords
    from tiles import mvt

    rng = np.random.default_rng(7)
    for z in (14, 15, 16):
        t = tile_at(z)
        b = TMS.xy_bounds(t)
        cell = (b.right - b.left) / mvt.EXTENT
        a, bb, d, e, xoff, yoff = mvt.storage_to_mercator(b.left, b.bottom, b.right, b.top, 4549,
                                                          mvt.AFFINE_MAX_ERROR_CELLS * cell)
        mx, my = rng.uniform(b.left, b.right, 500), rng.uniform(b.bottom, b.top, 500)
        sx, sy, _ = transform_coords(mx, my, None, 3857, 4549)
        error = np.hypot(a * sx + bb * sy + xoff - mx, d * sx + e * sy + yoff - my).max()
        assert error <= mvt.AFFINE_MAX_ERROR_CELLS * cell, (z, error / cell)
    for z in (9, 12):  # the bending grows with the square of the tile's size: 16× z14's at z12
        low = TMS.xy_bounds(tile_at(z))
        assert mvt.storage_to_mercator(low.left, low.bottom, low.right, low.top, 4549,
                                       mvt.AFFINE_MAX_ERROR_CELLS * (low.right - low.left) / mvt.EXTENT) is None


def test_lines_inside_a_tile_go_straight_into_its_grid(city, monkeypatch):
    """A pipeline inside a z14–16 tile takes the direct way into the grid and comes out as ST_AsMVTGeom (after
    PostGIS's transform) puts it, each vertex within a cell; one that crosses the tile's edge is clipped to the
    buffer (where a 10 km segment is cut, the tile's affine map and PROJ may differ by a few cells: not compared);
    one shorter than a grid cell is kept or left out by both ways alike."""
    from cim.jurisdiction import PUBLIC, acting_as
    from cim.registry import load_layers
    from cim.selection import Selection
    from tiles import mvt

    with city.begin() as conn:
        for source, wkt in (("line-in", f"LINESTRING Z ({X0 + 20} {Y0 + 20} -2, {X0 + 80} {Y0 + 95} -2, "
                                        f"{X0 + 150} {Y0 + 90} -2)"),
                            ("line-across", f"LINESTRING Z ({X0 - 5000} {Y0 + 30} -2, {X0 + 5000} {Y0 + 30} -2)"),
                            ("line-short", f"LINESTRING Z ({X0 + 40} {Y0 - 40} -2, {X0 + 40.05} {Y0 - 40} -2)")):
            conn.execute(sa.text("INSERT INTO pipelines (source_id, kind, diameter_mm, geom) "
                                 "VALUES (:s, '给水', 300, ST_GeomFromText(:g, 4549))"), {"s": source, "g": wkt})
        _bump(conn, "pipelines")
    with acting_as(PUBLIC), city.connect() as conn:
        layer = load_layers(conn)["pipelines"]
        assert "ST_SnapToGrid" in str(mvt._statement(layer, 4549, Selection(), ("source_id",), None, True, True))
        for z in (14, 15, 16):
            t = tile_at(z)
            new = mvt.tile(conn, layer, 4549, z, t.x, t.y, Selection(), ["source_id"])
            with monkeypatch.context() as m:
                m.setattr(mvt, "CORNERS_ZOOM", 99)
                old = mvt.tile(conn, layer, 4549, z, t.x, t.y, Selection(), ["source_id"])
            feats = mapbox_vector_tile.decode(new)["pipelines"]["features"]
            olds = {f["properties"]["source_id"]: f for f in mapbox_vector_tile.decode(old)["pipelines"]["features"]}
            # the short one stays where it straddles a grid line (a line one cell long), in both ways alike
            assert {f["properties"]["source_id"] for f in feats} == set(olds) >= {"line-in", "line-across"}
            short = [f for f in feats if f["properties"]["source_id"] == "line-short"]
            assert all(len(set(_vertices(f["geometry"]))) == 2 for f in short)
            inside = next(f for f in feats if f["properties"]["source_id"] == "line-in")
            assert _same_ring(_vertices(inside["geometry"]), _vertices(olds["line-in"]["geometry"]), closed=False)
            across = next(f for f in feats if f["properties"]["source_id"] == "line-across")
            assert all(-mvt.BUFFER <= x <= mvt.EXTENT + mvt.BUFFER for x, _ in _vertices(across["geometry"]))


def test_the_inside_box_lies_inside_the_tile_and_its_buffer():
    """A line or polygon whose stored box lies inside mvt.inside_box goes into the tile's grid by mvt.tile_affine
    without ST_AsMVTGeom's clipping: every point of that box lands inside the tile plus its buffer (less a grid cell),
    the box covers nearly all of it, and the grid's corners are where the tile's are (y down)."""
    import numpy as np

    from tiles import mvt

    for z in (14, 15, 16):
        b = TMS.xy_bounds(tile_at(z))
        width = b.right - b.left
        cell, pad = width / mvt.EXTENT, width * mvt.BUFFER / mvt.EXTENT
        edges = (b.left - pad, b.bottom - pad, b.right + pad, b.top + pad)
        affine = mvt.storage_to_mercator(*edges, 4549, mvt.AFFINE_MAX_ERROR_CELLS * cell)
        left, bottom, right, top = mvt.inside_box(affine, *edges, cell)
        a, bb, d, e, xoff, yoff = affine
        sx, sy = np.meshgrid(np.linspace(left, right, 21), np.linspace(bottom, top, 21))
        mx, my = a * sx + bb * sy + xoff, d * sx + e * sy + yoff
        assert mx.min() >= edges[0] + cell * 0.999 and mx.max() <= edges[2] - cell * 0.999
        assert my.min() >= edges[1] + cell * 0.999 and my.max() <= edges[3] - cell * 0.999
        assert (mx.max() - mx.min()) * (my.max() - my.min()) > 0.95 * (width + 2 * pad) ** 2
        ta, tb, td, te, txoff, tyoff = mvt.tile_affine(affine, b.left, b.top, mvt.EXTENT / width)
        inverse = np.linalg.inv(np.array([[a, bb], [d, e]]))
        for (x, y), grid in (((b.left, b.top), (0, 0)), ((b.right, b.bottom), (mvt.EXTENT, mvt.EXTENT))):
            s = inverse @ np.array([x - xoff, y - yoff])
            assert np.allclose((ta * s[0] + tb * s[1] + txoff, td * s[0] + te * s[1] + tyoff), grid, atol=1e-6)


def test_filter_selects_features(client):
    t = tile_at(14)
    r = client.get(url("grids", t), params={"filter": "grid_code LIKE '31010100201%'"})
    feats = mapbox_vector_tile.decode(r.content)["grids"]["features"]
    assert sorted(f["properties"]["grid_code"] for f in feats) == ["310101002010", "310101002011", "310101002012"]
    bad = client.get(url("grids", t), params={"filter": "nope = 1"})
    assert bad.status_code == 400 and bad.json()["parameter"] == "filter"


@pytest.mark.parametrize("params", [
    {"filter": "grid_code = 'a\x00b'"},  # NUL: the driver's ValueError was a 500
    {"filter": "valid_from > TIMESTAMP('9999-12-31T23:59:59-14:00')"},  # OverflowError, a 500
    {"bbox": "121.5,31.3,121.4,31.2"},  # lower corner above the upper: now refused like items' bbox
    {"bbox": "121.4,31.2,inf,31.3"},
])
def test_tile_selections_that_crashed_or_passed_unchecked_are_400s(client, params):
    r = client.get(url("grids", tile_at(14)), params=params)
    assert r.status_code == 400, r.text
    assert r.json()["parameter"] == next(iter(params))


@pytest.mark.parametrize("path,status,parameter", [
    ("/collections/grids/tiles/WebMercatorQuad/25/0/0", 400, "tileMatrix"),
    ("/collections/grids/tiles/WebMercatorQuad/-1/0/0", 400, "tileMatrix"),
    ("/collections/grids/tiles/WebMercatorQuad/3/8/0", 404, "tileRow"),
    ("/collections/grids/tiles/WebMercatorQuad/3/0/8", 404, "tileCol"),
    ("/collections/grids/tiles/WebMercatorQuad/3/0/-1", 400, "tileCol"),
    ("/collections/grids/tiles/WebMercatorQuad/3/-1/0", 400, "tileRow"),
    ("/collections/grids/tiles/WebMercatorQuad/x/0/0", 400, "tileMatrix"),
    ("/collections/grids/tiles/WorldCRS84Quad/3/0/0", 404, None),
    ("/collections/nope/tiles/WebMercatorQuad/3/0/0", 404, None),
])
def test_bad_tile_addresses_are_problems(client, path, status, parameter):
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    if parameter:
        assert r.json()["parameter"] == parameter


TILE_ROUTE = "/collections/{collectionId}/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}"


def test_tile_route_documents_what_it_serves(client):
    """The OpenAPI document bounds the tile address as the route does: every documented tileMatrix is
    served, the largest documented row and column exist, and what the schema rules out is a 400 naming
    the parameter (a schema-valid address is never refused as a bad request)."""
    op = client.get("/openapi.json").json()["paths"][TILE_ROUTE]["get"]
    schema = {p["name"]: p["schema"] for p in op["parameters"]}
    lowest, deepest = schema["tileMatrix"]["minimum"], schema["tileMatrix"]["maximum"]
    assert (lowest, deepest) == (TMS.minzoom, TMS.maxzoom)
    assert all(schema[p]["minimum"] == 0 and schema[p]["maximum"] == 2 ** deepest - 1 for p in ("tileRow", "tileCol"))
    assert schema["tileMatrixSetId"]["enum"] == ["WebMercatorQuad"]
    assert set(schema["filter-lang"]["enum"]) == {"cql2-text", "cql2-json"}
    for z in range(lowest, deepest + 1):
        assert client.get(url("grids", tile_at(z))).status_code in (200, 204), z
    last = schema["tileRow"]["maximum"]
    assert client.get(f"/collections/grids/tiles/WebMercatorQuad/{deepest}/{last}/{last}").status_code == 204
    for path, parameter in [(f"{deepest + 1}/0/0", "tileMatrix"), (f"{lowest - 1}/0/0", "tileMatrix"),
                            (f"{deepest}/{last + 1}/0", "tileRow"), (f"{deepest}/0/{last + 1}", "tileCol")]:
        r = client.get(f"/collections/grids/tiles/WebMercatorQuad/{path}")
        assert r.status_code == 400 and r.json()["parameter"] == parameter, (path, r.text)
    r = client.get(url("grids", tile_at(14)), params={"filter": "grid_code = 'x'", "filter-lang": "cql2-xml"})
    assert r.status_code == 400 and r.json()["parameter"] == "filter-lang"
    assert {"204", "304", "404"} <= set(op["responses"])


def test_tile_changes_after_a_load(client, city):
    t = tile_at(14)
    first = client.get(url("streets", t))
    etag = first.headers["etag"]
    assert client.get(url("streets", t), headers={"If-None-Match": etag}).status_code == 304
    with city.begin() as conn:
        conn.execute(sa.text(
            "WITH old AS (UPDATE streets SET valid_to = now() WHERE source_id = 's1' AND valid_to IS NULL "
            "RETURNING *) INSERT INTO streets (feature_id, source_id, code, name, district_code, geom) "
            "SELECT feature_id, source_id, code, '外滩街道（新）', district_code, geom FROM old"))
        _bump(conn, "streets")
    second = client.get(url("streets", t))
    assert second.headers["etag"] != etag and second.content != first.content
    (feat,) = mapbox_vector_tile.decode(second.content)["streets"]["features"]
    assert feat["properties"]["name"] == "外滩街道（新）"


def test_tileset_metadata_and_tilejson(client):
    sets = client.get("/collections/grids/tiles").json()["tilesets"]
    assert sets[0]["dataType"] == "vector" and sets[0]["tileMatrixSetURI"].endswith("WebMercatorQuad")
    item = next(link for link in sets[0]["links"] if link["rel"] == "item")
    assert item["href"].endswith("/collections/grids/tiles/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}")
    meta = client.get("/collections/grids/tiles/WebMercatorQuad").json()
    assert meta["layers"][0]["id"] == "grids" and "name" in meta["layers"][0]["propertiesSchema"]["properties"]
    lo, hi = meta["boundingBox"]["lowerLeft"], meta["boundingBox"]["upperRight"]
    assert lo[0] < LON < hi[0] and lo[1] < LAT < hi[1]
    tj = client.get("/collections/grids/tiles/WebMercatorQuad/tilejson.json").json()
    assert tj["tilejson"] == "3.0.0" and tj["vector_layers"][0]["id"] == "grids"
    template = tj["tiles"][0]
    t = tile_at(14)
    path = template.replace("{z}", str(t.z)).replace("{y}", str(t.y)).replace("{x}", str(t.x))
    assert client.get(path.split("testserver", 1)[-1]).status_code == 200
    tms = client.get("/tileMatrixSets/WebMercatorQuad").json()
    assert tms["id"] == "WebMercatorQuad" and len(tms["tileMatrices"]) == 25


def test_versioned_tile_urls_are_answered_from_memory_and_cached_for_good(city, tmp_path, monkeypatch):
    """TileJSON hands out URLs with the layer version; once built, such a tile is answered before routing
    (no database read), with the same bytes, for good, still counted by /metrics and still behind the
    read key when one is required. A URL of an older version that is no longer in memory gets today's
    tile, not for good."""
    from api.auth import READ_KEY_ENV
    from cim.apikeys import create_key

    c = api_client(city, tmp_path / "home")
    template = c.get("/collections/grids/tiles/WebMercatorQuad/tilejson.json").json()["tiles"][0]
    with city.connect() as conn:
        version = conn.execute(sa.text("SELECT version FROM layers WHERE name = 'grids'")).scalar_one()
    assert template.endswith(f"/{{z}}/{{y}}/{{x}}?v={version}")
    t = tile_at(14)
    path = f"{url('grids', t)}?v={version}"
    built = c.get(path)
    assert built.status_code == 200 and built.headers["cache-control"].endswith("immutable")

    def no_database(*args):
        raise AssertionError("a versioned tile in memory must not ask the database")

    monkeypatch.setattr(c.app.state.tiles, "layer", no_database)
    again = c.get(path)
    assert again.status_code == 200 and again.content == built.content
    assert again.headers["content-type"] == MVT and again.headers["etag"] == f'"{version}"'
    assert again.headers["cache-control"] == built.headers["cache-control"]
    assert c.get(path, headers={"If-None-Match": f'"{version}"'}).status_code == 304
    assert c.head(path).status_code == 200
    empty = tile_at(14)
    empty_path = f"/collections/grids/tiles/WebMercatorQuad/14/{empty.y + 40}/{empty.x + 40}?v={version}"
    monkeypatch.undo()
    assert c.get(empty_path).status_code == 204
    monkeypatch.setattr(c.app.state.tiles, "layer", no_database)
    assert c.get(empty_path).status_code == 204
    metrics = c.get("/metrics").text
    route = "/collections/{collectionId}/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}"
    counted = [line for line in metrics.splitlines()
               if line.startswith("cim_http_requests_total") and route in line and 'status="200"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 3
    monkeypatch.undo()
    # an older version's URL, not in memory: today's tile, to be revalidated
    stale = c.get(f"{url('grids', tile_at(15))}?v={version - 1}")
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    assert stale.headers["etag"] == f'"{version}"'
    # what it cannot serve, the route words as a problem
    bad = c.get(f"/collections/grids/tiles/WebMercatorQuad/3/8/0?v={version}")
    assert bad.status_code == 404 and bad.json()["parameter"] == "tileRow"
    assert bad.headers["content-type"] == "application/problem+json"
    assert c.get(f"/collections/nope/tiles/WebMercatorQuad/3/0/0?v={version}").status_code == 404
    # with a read key required, the memory answer is behind it too
    monkeypatch.setenv(READ_KEY_ENV, "1")
    locked = api_client(city, tmp_path / "home2")
    with city.begin() as conn:
        _, key = create_key(conn, "reader", "tile test")
    assert locked.get(path, headers={"X-API-Key": key}).status_code == 200
    assert locked.get(path).status_code == 401


def test_export_mvt_directory_and_mbtiles(city, db_url, tmp_path):
    out = tmp_path / "tiles"
    run_cim("tiles", "export-mvt", "grids", str(out), "--zooms", "12-14", db_url=db_url)
    files = sorted(out.rglob("*.pbf"))
    assert files and {p.relative_to(out).parts[0] for p in files} == {"12", "13", "14"}
    t = tile_at(14)
    mine = out / "14" / str(t.x) / f"{t.y}.pbf"
    assert mine.is_file()
    assert len(mapbox_vector_tile.decode(mine.read_bytes())["grids"]["features"]) == 9
    mb = tmp_path / "grids.mbtiles"
    run_cim("tiles", "export-mvt", "grids", "--zooms", "14", "--mbtiles", str(mb), db_url=db_url)
    with sqlite3.connect(mb) as db:
        meta = dict(db.execute("SELECT name, value FROM metadata"))
        (data,) = db.execute("SELECT tile_data FROM tiles WHERE zoom_level = 14 AND tile_column = ? AND tile_row = ?",
                             (t.x, 2 ** 14 - 1 - t.y)).fetchone()
    assert meta["format"] == "pbf" and '"grids"' in meta["json"]
    assert gzip.decompress(data) == mine.read_bytes()
    bad = run_cim("tiles", "export-mvt", "grids", str(out), "--zooms", "9-x", db_url=db_url, check=False)
    assert bad.returncode != 0 and "--zooms" in bad.stderr + bad.stdout


def test_an_ingest_run_that_changes_a_height_shows_in_the_next_tile(server_url, tmp_path):
    """The real loader (upsert by source id) into a base of its own, the tile before and after."""
    from cim.bootstrap import initialise
    from cim.database import engine_for
    from ingest.run import IngestOptions, ingest_files

    engine = engine_for(create_database(server_url))
    initialise(engine)

    def load(path: Path):
        return ingest_files("buildings", [path], IngestOptions(), engine)

    assert load(write_buildings(tmp_path / "v1.geojson", {})).inserted == len(LOADED)
    _, _, lon, lat, _ = LOADED[1]
    t = TMS.tile(lon, lat, 16)
    assert {TMS.tile(x, y, 16) for _, _, x, y, _ in LOADED} == {t}, "all three blocks in one z16 tile"

    def heights(r) -> dict[str, float]:
        assert r.status_code == 200 and r.headers["content-type"] == MVT, r.text
        return {f["properties"]["source_id"]: f["properties"]["height"]
                for f in mapbox_vector_tile.decode(r.content)["buildings"]["features"]}

    # source_id is not in a map tile (tiles.mvt.BOOKKEEPING): asked for
    ask = {"properties": "source_id,height"}
    with api_client(engine, tmp_path / "home") as c:
        first = c.get(url("buildings", t), params=ask)
        assert heights(first) == {s: h for s, _, _, _, h in LOADED}
        etag = first.headers["etag"]
        assert c.get(url("buildings", t), params=ask, headers={"If-None-Match": etag}).status_code == 304
        report = load(write_buildings(tmp_path / "v2.geojson", {"L-2": 75.0}))
        assert (report.updated, report.unchanged) == (1, 2)
        second = c.get(url("buildings", t), params=ask, headers={"If-None-Match": etag})
        assert second.headers["etag"] != etag
        assert heights(second) == {**{s: h for s, _, _, _, h in LOADED}, "L-2": 75.0}


def test_a_dense_point_layer_starts_at_a_street_level_zoom(client, city, monkeypatch):
    """Points have no size to thin them by: a point layer's map tiles start where its average tile holds at
    most POINTS_PER_TILE points (15 M parts over Shanghai: z16), and TileJSON says so. Lowered here so that
    the three parts count as dense; polygons and filtered tiles are not affected."""
    from tiles import mvt

    shanghai = (120.85, 30.66, 122.2, 31.88)
    assert mvt.point_minzoom(15_000_000, shanghai) == 16 and mvt.point_minzoom(100_000, shanghai) == 12
    assert mvt.point_minzoom(400, shanghai) == 0 and mvt.point_minzoom(10 ** 12, shanghai) == mvt.POINT_MINZOOM_CAP
    monkeypatch.setattr(mvt, "POINTS_PER_TILE", 0.05)
    with city.begin() as conn:
        conn.execute(sa.text("ANALYZE parts"))
        _bump(conn, "parts")  # a new version: the first zoom is worked out again
    try:
        tj = client.get("/collections/parts/tiles/WebMercatorQuad/tilejson.json").json()
        first = tj["minzoom"]
        assert 0 < first <= mvt.POINT_MINZOOM_CAP and tj["vector_layers"][0]["minzoom"] == first
        meta = client.get("/collections/parts/tiles/WebMercatorQuad").json()
        assert meta["layers"][0]["minTileMatrix"] == str(first)
        assert client.get(url("parts", tile_at(first - 1))).status_code == 204  # below: empty, no query
        # TileJSON's versioned URL below the first zoom: empty for good, answered before routing without the database
        versioned = "/" + tj["tiles"][0].split("/", 3)[3]
        below = tile_at(first - 1)
        below_url = versioned.replace("{z}", str(below.z)).replace("{y}", str(below.y)).replace("{x}", str(below.x + 1))

        def no_database(*args):
            raise AssertionError("a tile below its version's first zoom must not ask the database")

        with monkeypatch.context() as m:
            m.setattr(client.app.state.tiles, "current_mvt", no_database)
            m.setattr(client.app.state.tiles, "layer", no_database)
            empty = client.get(below_url)
        assert empty.status_code == 204 and empty.headers["cache-control"].endswith("immutable")
        at = client.get(url("parts", tile_at(first)))
        assert at.status_code == 200 and len(mapbox_vector_tile.decode(at.content)["parts"]["features"]) == 3
        # asked for by a filter, the tile below is the asker's choice
        below = client.get(url("parts", tile_at(first - 1)), params={"filter": "part_class = '01'"})
        assert below.status_code == 200
        assert client.get("/collections/grids/tiles/WebMercatorQuad/tilejson.json").json()["minzoom"] == 0
    finally:
        with city.begin() as conn:
            _bump(conn, "parts")  # the lowered threshold's first zoom must not outlive this test


def test_an_uncached_tile_is_two_round_trips_each_in_the_callers_scope(client):
    """Through the API an uncached vector tile is two statements — the layer's version, the tile — each its own
    transaction with the caller's scope in front, in one round trip (tiles.service, cim.jurisdiction.
    statements_scoped); it was five (BEGIN, the scope, the two statements, ROLLBACK). The answer is as before."""
    svc = client.app.state.tiles
    sent: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        sent.append(statement)

    t = tile_at(16)
    before = client.get(url("parts", t), params={"properties": "name,object_code"})
    assert before.status_code == 200
    sa.event.listen(svc.engine, "before_cursor_execute", count)
    try:
        svc.cache = type(svc.cache)(None, 0)  # nothing kept: the tile is built again
        again = client.get(url("parts", t), params={"properties": "name,object_code"})
    finally:
        sa.event.remove(svc.engine, "before_cursor_execute", count)
    assert again.status_code == 200 and again.content == before.content
    assert len(sent) == 2, sent
    assert all(s.startswith("SELECT set_config('role', 'cim_api', true)") for s in sent), sent
    assert "FROM layers" in sent[0] and "ST_AsMVT" in sent[1]
