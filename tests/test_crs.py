"""Tests for cim.crs: offsets, CRS resolution, transforms, storage CRS and extent diagnosis."""
from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import shapely

from cim import crs as C
from cim.crs import CrsError, CrsSpec, ExtentError

GEOD = pyproj.Geod(ellps="WGS84")
PEOPLES_SQUARE = (121.4737, 31.2304)  # WGS84 lon/lat


def _dist_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    lon1, lat1, lon2, lat2 = np.broadcast_arrays(lon1, lat1, lon2, lat2)
    return GEOD.inv(lon1, lat1, lon2, lat2)[2]


def _shanghai_grid(n: int = 25) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = np.meshgrid(np.linspace(120.85, 122.20, n), np.linspace(30.66, 31.88, n))
    return lon, lat


# --- an independent, literal scalar transcription of the public formula (coordtransform) -------

def _ref_wgs84_to_gcj02(lng: float, lat: float) -> tuple[float, float]:
    a, ee, pi = 6378245.0, 0.00669342162296594323, math.pi
    if not (72.004 <= lng <= 137.8347 and 0.8293 <= lat <= 55.8271):
        return lng, lat

    def tlat(x, y):
        r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
        r += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
        r += (20.0 * math.sin(y * pi) + 40.0 * math.sin(y / 3.0 * pi)) * 2.0 / 3.0
        r += (160.0 * math.sin(y / 12.0 * pi) + 320 * math.sin(y * pi / 30.0)) * 2.0 / 3.0
        return r

    def tlng(x, y):
        r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
        r += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
        r += (20.0 * math.sin(x * pi) + 40.0 * math.sin(x / 3.0 * pi)) * 2.0 / 3.0
        r += (150.0 * math.sin(x / 12.0 * pi) + 300.0 * math.sin(x / 30.0 * pi)) * 2.0 / 3.0
        return r

    dlat, dlng = tlat(lng - 105.0, lat - 35.0), tlng(lng - 105.0, lat - 35.0)
    radlat = lat / 180.0 * pi
    magic = 1 - ee * math.sin(radlat) ** 2
    sqrtmagic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((a * (1 - ee)) / (magic * sqrtmagic) * pi)
    dlng = (dlng * 180.0) / (a / sqrtmagic * math.cos(radlat) * pi)
    return lng + dlng, lat + dlat


def _ref_gcj02_to_bd09(lng: float, lat: float) -> tuple[float, float]:
    x_pi = math.pi * 3000.0 / 180.0
    z = math.sqrt(lng * lng + lat * lat) + 0.00002 * math.sin(lat * x_pi)
    theta = math.atan2(lat, lng) + 0.000003 * math.cos(lng * x_pi)
    return z * math.cos(theta) + 0.0065, z * math.sin(theta) + 0.006


# --- constants -------------------------------------------------------------------------------

def test_default_storage_crs_and_city_box_fit_together():
    # the defaults must be usable together: a projected metre CRS whose area of use covers the box
    crs = C.check_storage_crs(C.DEFAULT_STORAGE_SRID)
    w, s, e, n = C.SHANGHAI_BBOX_WGS84
    assert w < PEOPLES_SQUARE[0] < e and s < PEOPLES_SQUARE[1] < n
    area = crs.area_of_use  # the zone of CM 120°E: the city centre is inside it
    assert area.west <= PEOPLES_SQUARE[0] <= area.east and area.south <= PEOPLES_SQUARE[1] <= area.north


# --- GCJ-02 / BD-09 ----------------------------------------------------------------------------

# Published pairs: eviltransform's test vectors (wgs lat/lng -> gcj lat/lng) and the
# coordtransform README example at (128.543, 37.065).
EVILTRANSFORM_WGS_GCJ = [
    # wgs lon, wgs lat, gcj lon, gcj lat
    (121.5272106, 31.1774276, 121.531541859215, 31.17530398364597),  # Shanghai
    (113.912316, 22.543847, 113.9171764808363, 22.540796131694766),  # Shenzhen
    (116.377817, 39.911954, 116.38404722455657, 39.91334545536069),  # Beijing
    (128.543, 37.065, 128.54820547949757, 37.065651049489816),  # coordtransform README
]


@pytest.mark.parametrize("wlon, wlat, glon, glat", EVILTRANSFORM_WGS_GCJ)
def test_wgs84_to_gcj02_published_pairs(wlon, wlat, glon, glat):
    lon, lat = C.wgs84_to_gcj02(wlon, wlat)
    assert lon == pytest.approx(glon, abs=1e-12)
    assert lat == pytest.approx(glat, abs=1e-12)


def test_gcj02_to_bd09_published_pair():
    # coordtransform README: gcj02_to_bd09(128.543, 37.065)
    lon, lat = C.gcj02_to_bd09(128.543, 37.065)
    assert lon == pytest.approx(128.54944656269413, abs=1e-12)
    assert lat == pytest.approx(37.07113427883019, abs=1e-12)


def test_bd09_inverse_is_exact_where_published_closed_form_is_approximate():
    # coordtransform's closed-form bd09_to_gcj02(128.543, 37.065); it is off by a few metres,
    # our iterative inverse must round-trip exactly and be within metres of it.
    published = (128.53653517067494, 37.058754378694966)
    lon, lat = C.bd09_to_gcj02(128.543, 37.065)
    assert _dist_m(lon, lat, *published) < 15.0
    back = C.gcj02_to_bd09(lon, lat)
    assert _dist_m(*back, 128.543, 37.065) < 1e-3
    assert _dist_m(*C.gcj02_to_bd09(*published), 128.543, 37.065) > _dist_m(*back, 128.543, 37.065)


def test_formula_matches_independent_transcription_over_shanghai():
    lon, lat = _shanghai_grid(11)
    glon, glat = C.wgs84_to_gcj02(lon, lat)
    blon, blat = C.gcj02_to_bd09(lon, lat)
    for i in np.ndindex(lon.shape):
        assert (glon[i], glat[i]) == pytest.approx(_ref_wgs84_to_gcj02(lon[i], lat[i]), abs=1e-11)
        assert (blon[i], blat[i]) == pytest.approx(_ref_gcj02_to_bd09(lon[i], lat[i]), abs=1e-11)


def test_gcj02_shift_direction_and_size_at_peoples_square():
    lon, lat = C.wgs84_to_gcj02(*PEOPLES_SQUARE)
    # In Shanghai GCJ-02 moves points east and slightly south, a few hundred metres in total.
    assert lon > PEOPLES_SQUARE[0] and lat < PEOPLES_SQUARE[1]
    east = _dist_m(PEOPLES_SQUARE[0], lat, lon, lat)
    south = _dist_m(lon, PEOPLES_SQUARE[1], lon, lat)
    assert 300 < east < 600
    assert 100 < south < 350
    assert 300 < _dist_m(*PEOPLES_SQUARE, lon, lat) < 700


def test_bd09_shift_at_peoples_square():
    glon, glat = C.wgs84_to_gcj02(*PEOPLES_SQUARE)
    blon, blat = C.wgs84_to_bd09(*PEOPLES_SQUARE)
    assert (blon, blat) == pytest.approx(C.gcj02_to_bd09(glon, glat), abs=1e-12)
    # BD-09 adds roughly another 0.0065/0.006 degrees north-east on top of GCJ-02
    assert 0.005 < blon - glon < 0.0085
    assert 0.004 < blat - glat < 0.0085


@pytest.mark.parametrize(
    "forward, inverse",
    [
        (C.wgs84_to_gcj02, C.gcj02_to_wgs84),
        (C.gcj02_to_bd09, C.bd09_to_gcj02),
        (C.wgs84_to_bd09, C.bd09_to_wgs84),
    ],
)
def test_inverse_round_trip_over_shanghai_grid(forward, inverse):
    lon, lat = _shanghai_grid(25)
    # inverse(forward(p)) == p and forward(inverse(p)) == p, both under 1 cm
    back = inverse(*forward(lon, lat))
    assert np.max(_dist_m(lon, lat, *back)) < 0.01
    fwd = forward(*inverse(lon, lat))
    assert np.max(_dist_m(lon, lat, *fwd)) < 0.01
    # and in degrees, under the 1e-7 target
    assert np.max(np.abs(back[0] - lon)) < 1e-7 and np.max(np.abs(back[1] - lat)) < 1e-7


def test_scalar_in_float_out_array_in_array_out():
    lon, lat = C.wgs84_to_gcj02(*PEOPLES_SQUARE)
    assert type(lon) is float and type(lat) is float

    grid_lon, grid_lat = _shanghai_grid(5)
    for fn in (C.wgs84_to_gcj02, C.gcj02_to_wgs84, C.gcj02_to_bd09, C.bd09_to_gcj02,
               C.wgs84_to_bd09, C.bd09_to_wgs84):
        a, b = fn(grid_lon, grid_lat)
        assert isinstance(a, np.ndarray) and a.shape == (5, 5) and a.dtype == np.float64
        assert isinstance(b, np.ndarray) and b.shape == (5, 5) and b.dtype == np.float64
        # element-wise equal to the scalar call
        s = fn(float(grid_lon[2, 3]), float(grid_lat[2, 3]))
        assert (a[2, 3], b[2, 3]) == pytest.approx(s, abs=1e-12)
    # lists and broadcasting of a scalar against an array
    a, b = C.wgs84_to_gcj02([121.4, 121.5], 31.2)
    assert a.shape == b.shape == (2,)
    # inputs are not modified
    before = grid_lon.copy()
    C.gcj02_to_wgs84(grid_lon, grid_lat)
    np.testing.assert_array_equal(grid_lon, before)


@pytest.mark.parametrize(
    "fn",
    [C.wgs84_to_gcj02, C.gcj02_to_wgs84, C.gcj02_to_bd09, C.bd09_to_gcj02,
     C.wgs84_to_bd09, C.bd09_to_wgs84],
)
def test_outside_china_is_unshifted(fn):
    lon = np.array([-0.1276, 139.6917, 151.2093, 2.3522])  # London, Tokyo, Sydney, Paris
    lat = np.array([51.5072, 35.6895, -33.8688, 48.8566])
    a, b = fn(lon, lat)
    np.testing.assert_array_equal(a, lon)
    np.testing.assert_array_equal(b, lat)
    assert fn(-74.006, 40.7128) == (-74.006, 40.7128)  # New York, scalar


def test_nan_passes_through_without_hanging():
    a, b = C.gcj02_to_wgs84(np.array([121.47, np.nan]), np.array([31.23, 31.0]))
    assert np.isfinite(a[0]) and np.isnan(a[1])
    a, b = C.bd09_to_wgs84(np.nan, np.nan)
    assert math.isnan(a) and math.isnan(b)


# --- resolve_crs -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "spec, name, epsg, offset",
    [
        ("EPSG:4549", "EPSG:4549", 4549, None),
        ("epsg:4549", "EPSG:4549", 4549, None),
        ("4549", "EPSG:4549", 4549, None),
        (4549, "EPSG:4549", 4549, None),
        (" EPSG:4528 ", "EPSG:4528", 4528, None),
        ("gcj02", "gcj02", 4326, "gcj02"),
        ("gcj-02", "gcj02", 4326, "gcj02"),
        ("GCJ02", "gcj02", 4326, "gcj02"),
        ("GCJ_02", "gcj02", 4326, "gcj02"),
        ("bd09", "bd09", 4326, "bd09"),
        ("bd-09", "bd09", 4326, "bd09"),
        ("BD09", "bd09", 4326, "bd09"),
        ("wgs84", "EPSG:4326", 4326, None),
        ("WGS 84", "EPSG:4326", 4326, None),
        ("cgcs2000", "EPSG:4490", 4490, None),
        ("CGCS2000", "EPSG:4490", 4490, None),
        (pyproj.CRS.from_epsg(4549), "EPSG:4549", 4549, None),
        (pyproj.CRS.from_epsg(4549).to_wkt(), "EPSG:4549", 4549, None),
    ],
)
def test_resolve_crs_spellings(spec, name, epsg, offset):
    r = C.resolve_crs(spec)
    assert isinstance(r, CrsSpec)
    assert r.name == name
    assert r.base.to_epsg() == epsg
    assert r.offset == offset


@pytest.mark.parametrize("spec", ["CRS84", "OGC:CRS84", "ogc:crs84"])
def test_resolve_crs84(spec):
    r = C.resolve_crs(spec)
    assert r.name == "OGC:CRS84" and r.offset is None and r.base.is_geographic


def test_resolve_proj_string_and_spec_passthrough():
    proj = "+proj=tmerc +lat_0=0 +lon_0=120 +k=1 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m +no_defs"
    r = C.resolve_crs(proj)
    assert r.base.is_projected and r.offset is None
    # it behaves like EPSG:4549 for transforms
    x, y, _ = C.transform_coords(*PEOPLES_SQUARE, None, "EPSG:4490", r)
    x2, y2, _ = C.transform_coords(*PEOPLES_SQUARE, None, "EPSG:4490", 4549)
    assert (x, y) == pytest.approx((x2, y2), abs=1e-3)
    assert r.srid is None and r.uri is None and not r.lat_first  # no EPSG code: not for SQL


@pytest.mark.parametrize("bad", ["EPSG:99999999", "not a crs", "", "gcj03", 99999999, True, 3.5])
def test_resolve_crs_bad_value(bad):
    with pytest.raises(CrsError) as ei:
        C.resolve_crs(bad)
    assert repr(bad) in str(ei.value)
    assert isinstance(ei.value, ValueError)


# --- transforms --------------------------------------------------------------------------------

def test_peoples_square_4490_to_4549():
    x, y, z = C.transform_coords(*PEOPLES_SQUARE, None, 4490, 4549)
    assert z is None
    assert type(x) is float
    # 1.4737 degrees east of CM 120E at 31.23N is ~140 km: easting ~640 km, northing ~3457 km
    assert 635_000 < x < 645_000
    assert 3_450_000 < y < 3_465_000
    # independently: pyproj with the EPSG axis order (lat, lon in; northing, easting out)
    n, e = pyproj.Transformer.from_crs(4490, 4549).transform(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0])
    assert (x, y) == pytest.approx((e, n), abs=1e-6)
    lon, lat, _ = C.transform_coords(x, y, None, "EPSG:4549", "cgcs2000")
    assert (lon, lat) == pytest.approx(PEOPLES_SQUARE, abs=1e-9)
    # with the zone prefix
    x28, y28, _ = C.transform_coords(*PEOPLES_SQUARE, None, 4490, 4528)
    assert x28 == pytest.approx(x + 40_000_000, abs=1e-3) and y28 == pytest.approx(y, abs=1e-3)


def test_transform_axis_order_is_always_xy():
    a = C.transform_coords(*PEOPLES_SQUARE, None, "EPSG:4326", 4549)
    b = C.transform_coords(*PEOPLES_SQUARE, None, "OGC:CRS84", 4549)
    assert a[:2] == pytest.approx(b[:2], abs=1e-6)


def test_transform_arrays_and_z_passthrough():
    lon, lat = _shanghai_grid(4)
    z = np.arange(16, dtype=float).reshape(4, 4)
    x, y, z_out = C.transform_coords(lon, lat, z, "wgs84", 4549)
    assert x.shape == y.shape == (4, 4)
    assert z_out is z
    lon2, lat2, _ = C.transform_coords(x, y, None, 4549, "wgs84")
    np.testing.assert_allclose(lon2, lon, atol=1e-9)
    np.testing.assert_allclose(lat2, lat, atol=1e-9)


@pytest.mark.parametrize("src, dst", [("EPSG:4549", "EPSG:4326"), ("EPSG:4326", "EPSG:4549"), ("EPSG:4490", "EPSG:4549"),
                                      ("EPSG:4549", "EPSG:3857"), ("EPSG:4549", "EPSG:4547"),
                                      ("EPSG:4979", "EPSG:4978"), ("EPSG:4978", "EPSG:4979")])
def test_a_transformer_is_the_operation_from_crs_chose_as_a_pipeline_in_every_thread(src, dst):
    """The kept transformer is the pipeline of what ``from_crs`` chose — a new thread makes it in well under a
    millisecond, not by a PROJ database search — and gives from_crs's numbers, in this thread and a new one."""
    import threading

    kept = C.transformer(src, dst)
    # made from its pipeline string alone (from_crs's carries its CRSs, and a new thread searches for them again)
    assert kept.definition.startswith("proj=pipeline") and kept.source_crs is None
    plain = pyproj.Transformer.from_crs(src, dst, always_xy=True)
    rng = np.random.default_rng(7)
    if src == "EPSG:4978":
        x, y, z = pyproj.Transformer.from_crs("EPSG:4979", "EPSG:4978", always_xy=True).transform(
            rng.uniform(120.8, 122.2, 500), rng.uniform(30.6, 31.9, 500), rng.uniform(-50, 700, 500))
    elif src in ("EPSG:4326", "EPSG:4490", "EPSG:4979"):
        x, y, z = rng.uniform(120.8, 122.2, 500), rng.uniform(30.6, 31.9, 500), rng.uniform(-50, 700, 500)
    else:
        x, y, z = rng.uniform(310_000, 450_000, 500), rng.uniform(3_390_000, 3_530_000, 500), rng.uniform(0, 600, 500)
    expected = plain.transform(x, y, z)
    in_thread: list = []
    worker = threading.Thread(target=lambda: in_thread.append(kept.transform(x, y, z)))
    worker.start()
    worker.join()
    for got in (kept.transform(x, y, z), in_thread[0]):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_a_transformer_with_candidate_operations_stays_from_crs():
    """NAD27 → NAD83 has many operations, PROJ choosing one per point: there is no single pipeline to keep."""
    kept = C.transformer("EPSG:4267", "EPSG:4269")
    plain = pyproj.Transformer.from_crs("EPSG:4267", "EPSG:4269", always_xy=True)
    assert not kept.definition.startswith("proj=")
    assert kept.transform(-100.0, 40.0) == plain.transform(-100.0, 40.0)


def test_transform_with_offset_crs_on_either_side():
    lon, lat = _shanghai_grid(6)
    glon, glat = C.wgs84_to_gcj02(lon, lat)
    # src gcj02: undo the offset, then project
    x, y, _ = C.transform_coords(glon, glat, None, "gcj02", 4549)
    xe, ye, _ = C.transform_coords(lon, lat, None, "EPSG:4326", 4549)
    np.testing.assert_allclose(x, xe, atol=0.01)
    np.testing.assert_allclose(y, ye, atol=0.01)
    # dst gcj02: back to WGS84, then apply the offset
    g2lon, g2lat, _ = C.transform_coords(xe, ye, None, 4549, "gcj-02")
    assert np.max(_dist_m(g2lon, g2lat, glon, glat)) < 0.01
    # gcj02 -> bd09 directly, and identity
    blon, blat, _ = C.transform_coords(glon, glat, None, "gcj02", "bd09")
    np.testing.assert_allclose(blon, C.gcj02_to_bd09(glon, glat)[0], atol=1e-12)
    np.testing.assert_allclose(blat, C.gcj02_to_bd09(glon, glat)[1], atol=1e-12)
    same = C.transform_coords(glon, glat, None, "gcj02", "GCJ02")
    np.testing.assert_array_equal(same[0], glon)
    # bd09 -> wgs84 through transform_coords
    wlon, wlat, _ = C.transform_coords(*C.wgs84_to_bd09(lon, lat), None, "bd09", "wgs84")
    assert np.max(_dist_m(wlon, wlat, lon, lat)) < 0.01


def test_transform_geojson_moves_every_position_and_keeps_z():
    lon, lat = PEOPLES_SQUARE
    geoms = [
        {"type": "Point", "coordinates": [lon, lat, 4.5]},
        {"type": "MultiPolygon", "coordinates": [[[[lon, lat], [lon + 0.01, lat], [lon, lat + 0.01], [lon, lat]]]]},
        {"type": "GeometryCollection", "geometries": [{"type": "LineString",
                                                       "coordinates": [[lon, lat, 1.0], [lon + 0.02, lat, 2.0]]}]},
        None,
    ]
    C.transform_geojson(geoms, "wgs84", "gcj02", digits=8)
    glon, glat = C.wgs84_to_gcj02(lon, lat)
    assert geoms[0]["coordinates"] == [round(glon, 8), round(glat, 8), 4.5]
    ring = geoms[1]["coordinates"][0][0]
    assert ring[0] == ring[-1] == [round(glon, 8), round(glat, 8)]
    assert ring[1] == pytest.approx(list(C.wgs84_to_gcj02(lon + 0.01, lat)), abs=1e-8)
    line = geoms[2]["geometries"][0]["coordinates"]
    assert [p[2] for p in line] == [1.0, 2.0]
    assert line[1][:2] == pytest.approx(list(C.wgs84_to_gcj02(lon + 0.02, lat)), abs=1e-8)


def test_transform_geometries_preserves_z_and_dimensionality():
    from shapely.geometry import LineString, Point, Polygon

    lon, lat = PEOPLES_SQUARE
    poly3d = Polygon([(lon, lat, 10.0), (lon + 0.001, lat, 11.0), (lon + 0.001, lat + 0.001, 12.0),
                      (lon, lat, 10.0)])
    pt2d = Point(lon, lat)
    line3d = LineString([(lon, lat, 1.5), (lon + 0.01, lat + 0.01, 99.0)])
    geoms = np.array([poly3d, pt2d, None, line3d], dtype=object)
    out = C.transform_geometries(geoms, "wgs84", 4549)
    assert out.shape == (4,)
    assert out[2] is None
    assert list(shapely.has_z(out)) == [True, False, False, True]
    np.testing.assert_array_equal(
        shapely.get_coordinates(out[0], include_z=True)[:, 2], [10.0, 11.0, 12.0, 10.0]
    )
    np.testing.assert_array_equal(shapely.get_coordinates(out[3], include_z=True)[:, 2], [1.5, 99.0])
    x, y, _ = C.transform_coords(lon, lat, None, "wgs84", 4549)
    assert (out[1].x, out[1].y) == pytest.approx((x, y), abs=1e-6)
    assert shapely.get_coordinates(out[0])[0] == pytest.approx((x, y), abs=1e-6)
    # to an offset CRS and back
    g = C.transform_geometries(out, 4549, "gcj02")
    back = C.transform_geometries(g, "gcj02", 4549)
    np.testing.assert_allclose(
        shapely.get_coordinates(back[3], include_z=True),
        shapely.get_coordinates(out[3], include_z=True),
        atol=0.01,
    )
    # 2-D input arrays keep their shape
    grid = np.array([[pt2d, pt2d], [pt2d, pt2d]], dtype=object)
    assert C.transform_geometries(grid, "wgs84", 4549).shape == (2, 2)


# --- storage CRS ---------------------------------------------------------------------------

def test_check_storage_crs_ok():
    crs = C.check_storage_crs(4549)
    assert isinstance(crs, pyproj.CRS) and crs.to_epsg() == 4549
    assert C.check_storage_crs(4528).to_epsg() == 4528
    assert C.check_storage_crs(32651).to_epsg() == 32651


def test_check_storage_crs_refuses_geographic():
    with pytest.raises(CrsError) as ei:
        C.check_storage_crs(4490)
    msg = str(ei.value)
    assert "EPSG:4490 is geographic" in msg and "metres" in msg and "EPSG:4549" in msg
    with pytest.raises(CrsError, match="geographic"):
        C.check_storage_crs(4326)


@pytest.mark.parametrize("srid, words", [(2263, "foot"), (4978, "not a projected"),
                                         (99999999, "unknown")])
def test_check_storage_crs_refuses_other(srid, words):
    with pytest.raises(CrsError) as ei:
        C.check_storage_crs(srid)
    assert words in str(ei.value).lower()


# --- check_extent ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pts():
    rng = np.random.default_rng(42)
    lon = rng.uniform(121.1, 121.9, 400)
    lat = rng.uniform(30.8, 31.6, 400)
    x49, y49, _ = C.transform_coords(lon, lat, None, 4490, 4549)
    x28, y28, _ = C.transform_coords(lon, lat, None, 4490, 4528)
    return {"lon": lon, "lat": lat, "x49": x49, "y49": y49, "x28": x28, "y28": y28}


def _extent_error(x, y, crs) -> ExtentError:
    with pytest.raises(ExtentError) as ei:
        C.check_extent(x, y, crs)
    assert isinstance(ei.value, ValueError)
    return ei.value


def test_check_extent_accepts_good_data(pts):
    C.check_extent(pts["lon"], pts["lat"], "wgs84")
    C.check_extent(pts["lon"], pts["lat"], C.resolve_crs("EPSG:4490"))
    C.check_extent(*C.wgs84_to_gcj02(pts["lon"], pts["lat"]), "gcj02")
    C.check_extent(*C.wgs84_to_bd09(pts["lon"], pts["lat"]), "bd09")
    C.check_extent(pts["x49"], pts["y49"], 4549)
    C.check_extent(pts["x28"], pts["y28"], "EPSG:4528")
    # non-finite points are ignored, and an empty input is fine
    C.check_extent(np.r_[pts["lon"], np.nan], np.r_[pts["lat"], np.nan], 4326)
    C.check_extent(np.array([]), np.array([]), 4326)


def test_check_extent_tolerates_a_few_strays(pts):
    x = np.r_[pts["lon"], [0.0, 0.0]]  # 2 of 402 = 0.5 %
    y = np.r_[pts["lat"], [0.0, 0.0]]
    C.check_extent(x, y, 4326)


def test_check_extent_generic_message(pts):
    x = np.r_[pts["lon"], np.full(40, 100.0)]  # 40 of 440 = 9 % outside
    y = np.r_[pts["lat"], np.full(40, 40.0)]
    e = _extent_error(x, y, 4326)
    msg = str(e)
    assert msg.startswith("40 of 440 points fall outside the city extent")
    assert "EPSG:4326" in msg and "120.85" in msg and "median point x≈" in msg
    assert e.n_outside == 40 and e.n_total == 440 and e.cause is None


def test_check_extent_median_outside_fails_even_if_few(pts):
    # every point outside (shifted 3 degrees east) -> nothing to suggest
    e = _extent_error(pts["lon"] + 3.0, pts["lat"], "cgcs2000")
    assert "400 of 400 points fall outside" in str(e)
    assert "EPSG:4490" in str(e)


def test_check_extent_lat_lon_swapped(pts):
    e = _extent_error(pts["lat"], pts["lon"], 4326)
    msg = str(e)
    assert "lat/lon swapped" in msg
    mx, my = np.median(pts["lat"]), np.median(pts["lon"])
    assert f"x≈{mx:.4f}" in msg and f"y≈{my:.4f}" in msg
    # also for an offset CRS
    glon, glat = C.wgs84_to_gcj02(pts["lon"], pts["lat"])
    assert "lat/lon swapped" in str(_extent_error(glat, glon, "gcj02"))


def test_check_extent_projected_swapped(pts):
    e = _extent_error(pts["y49"], pts["x49"], 4549)
    assert "swapped" in str(e) and "easting/northing" in str(e)


def test_check_extent_metres_declared_as_degrees(pts):
    e = _extent_error(pts["x49"], pts["y49"], 4490)
    msg = str(e)
    assert "projected metres declared as the geographic CRS EPSG:4490" in msg
    assert "EPSG:4549" in msg and e.suggestions[0] == "EPSG:4549"
    assert f"x≈{np.median(pts['x49']):.0f}" in msg

    e = _extent_error(pts["x28"], pts["y28"], "wgs84")
    msg = str(e)
    assert "projected metres declared" in msg
    assert "EPSG:4528" in msg and "EPSG:4549" not in msg
    assert e.suggestions == ("EPSG:4528",)


def test_check_extent_metres_declared_as_degrees_northing_first(pts):
    e = _extent_error(pts["y49"], pts["x49"], 4326)
    assert "projected metres declared" in str(e)
    assert "x/y swapped" in str(e) and "EPSG:4549" in str(e)


def test_check_extent_degrees_declared_as_metres(pts):
    e = _extent_error(pts["lon"], pts["lat"], 4549)
    msg = str(e)
    assert "degrees declared as the projected CRS EPSG:4549" in msg
    assert "EPSG:4326" in msg and "EPSG:4490" in msg
    assert set(e.suggestions) == {"EPSG:4326", "EPSG:4490"}


def test_check_extent_zone_prefix_present(pts):
    e = _extent_error(pts["x28"], pts["y28"], 4549)
    msg = str(e)
    assert "zone prefix" in msg and "does not expect" in msg
    assert "EPSG:4528" in msg and e.suggestions == ("EPSG:4528",)


def test_check_extent_zone_prefix_missing(pts):
    e = _extent_error(pts["x49"], pts["y49"], 4528)
    msg = str(e)
    assert "lacks the Gauss-Krüger zone prefix" in msg and "EPSG:4528 expects" in msg
    assert "EPSG:4549" in msg and e.suggestions == ("EPSG:4549",)


def test_check_extent_wrong_zone(pts):
    # CM 120E data declared as CM 123E: computed suggestion, not a string guess
    e = _extent_error(pts["x49"], pts["y49"], 4550)
    msg = str(e)
    assert "do not fit EPSG:4550" in msg and "EPSG:4549" in msg


def test_check_extent_large_input_uses_subsample():
    rng = np.random.default_rng(1)
    lon = rng.uniform(121.1, 121.9, 60_000)
    lat = rng.uniform(30.8, 31.6, 60_000)
    x, y, _ = C.transform_coords(lon, lat, None, 4490, 4528)
    e = _extent_error(x, y, 4549)
    assert "60000 of 60000" in str(e) and "EPSG:4528" in str(e)


def test_check_extent_custom_bbox(pts):
    # Beijing's box: Shanghai points are outside
    with pytest.raises(ExtentError):
        C.check_extent(pts["lon"], pts["lat"], 4326, (115.4, 39.4, 117.5, 41.1))


# --- the one axis-order rule ------------------------------------------------------------------

_U = "http://www.opengis.net/def/crs/"


@pytest.mark.parametrize("spec, name, srid, uri, lat_first, offset", [
    # OGC URIs, URNs and safe CURIEs: the authority's axis order
    (_U + "EPSG/0/4326", "EPSG:4326", 4326, _U + "EPSG/0/4326", True, None),
    ("urn:ogc:def:crs:EPSG::4326", "EPSG:4326", 4326, _U + "EPSG/0/4326", True, None),
    ("urn:ogc:def:crs:EPSG:9.8:4490", "EPSG:4490", 4490, _U + "EPSG/0/4490", True, None),
    ("[EPSG:4490]", "EPSG:4490", 4490, _U + "EPSG/0/4490", True, None),
    ("https://www.opengis.net/def/crs/EPSG/0/4549/", "EPSG:4549", 4549, _U + "EPSG/0/4549", True, None),
    ("[EPSG:3857]", "EPSG:3857", 3857, _U + "EPSG/0/3857", False, None),  # Web Mercator is east first
    # CRS84 in any spelling: lon/lat
    (_U + "OGC/1.3/CRS84", "OGC:CRS84", 4326, _U + "OGC/1.3/CRS84", False, None),
    ("urn:ogc:def:crs:OGC:1.3:CRS84", "OGC:CRS84", 4326, _U + "OGC/1.3/CRS84", False, None),
    ("[OGC:CRS84]", "OGC:CRS84", 4326, _U + "OGC/1.3/CRS84", False, None),
    ("CRS84", "OGC:CRS84", 4326, _U + "OGC/1.3/CRS84", False, None),
    # short names: always x first
    ("EPSG:4326", "EPSG:4326", 4326, _U + "EPSG/0/4326", False, None),
    ("4326", "EPSG:4326", 4326, _U + "EPSG/0/4326", False, None),
    (4490, "EPSG:4490", 4490, _U + "EPSG/0/4490", False, None),
    ("wgs84", "EPSG:4326", 4326, _U + "EPSG/0/4326", False, None),
    ("cgcs2000", "EPSG:4490", 4490, _U + "EPSG/0/4490", False, None),
    ("EPSG:4549", "EPSG:4549", 4549, _U + "EPSG/0/4549", False, None),
    (pyproj.CRS.from_epsg(4549).to_wkt(), "EPSG:4549", 4549, _U + "EPSG/0/4549", False, None),
    # the offsets: WGS 84 plus a shift, lon/lat, no OGC identifier
    ("gcj02", "gcj02", 4326, None, False, "gcj02"),
    ("bd09", "bd09", 4326, None, False, "bd09"),
])
def test_one_rule_for_every_spelling(spec, name, srid, uri, lat_first, offset):
    r = C.resolve_crs(spec)
    assert (r.name, r.srid, r.uri, r.lat_first, r.offset) == (name, srid, uri, lat_first, offset)
    assert r.ref == (uri or name)
    # for the OGC spellings that is the order the EPSG database declares (asked of pyproj here)
    ogc = isinstance(spec, str) and spec.startswith(("http", "urn:", "["))
    if ogc and "EPSG" in spec:
        assert lat_first == (pyproj.CRS.from_epsg(srid).axis_info[0].direction == "north")


@pytest.mark.parametrize("bad", ["urn:ogc:def:crs:OGC:1.3:CRS27", "[EPSG:abc]", _U + "EPSG/0/99999999"])
def test_unknown_ogc_spellings_are_crs_errors(bad):
    with pytest.raises(CrsError, match="unknown CRS"):
        C.resolve_crs(bad)


def test_a_huge_crs_value_is_not_echoed_whole():
    with pytest.raises(CrsError) as ei:
        C.resolve_crs("x" * 100_000)
    assert len(str(ei.value)) < 2_000


def test_offered_crs_and_resolve_offered():
    offered = C.offered_crs(4549)
    assert offered[0] is C.CRS84
    assert [o.ref for o in offered][-2:] == ["gcj02", "bd09"]
    assert {o.srid for o in offered} == {4326, 4490, 3857, 4549}
    assert C.resolve_offered(None, 4549, "crs") is C.CRS84
    assert C.resolve_offered("bd09", 4549, "crs").offset == "bd09"
    from cim.errors import ParameterError

    with pytest.raises(ParameterError) as ei:
        C.resolve_offered("EPSG:32651", 4549, "bbox-crs")  # a real CRS, but not one the API offers
    assert ei.value.parameter == "bbox-crs" and "not offered" in str(ei.value) and "gcj02" in str(ei.value)


def test_a_crs_parameter_is_resolved_or_refused_naming_the_parameter():
    """Endpoints that take any CRS (grid lookup, nearby, geocode) resolve it through the core, which names
    the parameter at fault itself: no router re-wraps a CRS error."""
    from cim.crs import resolve_parameter
    from cim.errors import ParameterError

    assert resolve_parameter(None, "crs").name == "EPSG:4326"
    assert resolve_parameter(" gcj02 ", "crs").offset == "gcj02"
    with pytest.raises(ParameterError) as caught:
        resolve_parameter("EPSG:99999999", "out-crs")
    assert caught.value.parameter == "out-crs" and "EPSG:99999999" in str(caught.value)
