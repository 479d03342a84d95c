"""Mapbox vector tiles of any layer, made by PostGIS (``ST_AsMVTGeom`` + ``ST_AsMVT``) in the
WebMercatorQuad tile matrix set (EPSG:3857, morecantile's definition).

ST_AsMVTGeom clips to the tile plus a buffer and quantises to the 4096 grid; before it, lines and
polygons are simplified by two grid cells (detail below that would be lost by quantisation
anyway) and each zoom has a feature cap, largest features first, so a low-zoom tile of a dense
layer stays small.

A point layer also has a first zoom (:func:`point_minzoom`): points have no size to thin them by, and
reading every point of a tile costs ~10 µs each in the database, so a z14 tile over central Shanghai's
15 M parts (~100,000 points, 3.8 MB) took seconds. Below that zoom a layer's map tiles are empty (204)
and TileJSON says where it starts, so clients ask for nothing there.
"""
from __future__ import annotations

import functools
import math

import morecantile
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.distribution import DISTRIBUTION_COLUMN
from cim.districts_index import Districts, districts_touching, storage_box
from cim.errors import ParameterError
from cim.registry import Layer
from cim.schema import tables_for
from cim.selection import Selection

TMS = morecantile.tms.get("WebMercatorQuad")
TMS_ID = "WebMercatorQuad"
EXTENT = 4096
BUFFER = 64
SIMPLIFY_CELLS = 2.0
#: (up to zoom, at most this many features per tile)
ZOOM_LIMITS: tuple[tuple[int, int], ...] = ((6, 1_000), (9, 3_000), (12, 10_000), (14, 30_000), (99, 100_000))
#: a point layer's map tiles start at the first zoom where its average tile (over the city's box) holds at
#: most this many points. Dense districts hold ~10× the average: on the synthetic Shanghai's 15 M parts
#: (z16, 235 a tile on average) a z16 tile over 虹口区 holds ~4,000 (40–90 ms in the database), a z15 one
#: ~16,000, a z14 one up to ~100,000 (2.3 s, 3.8 MB)
POINTS_PER_TILE = 500
#: every point layer shows from here on, however dense (street level: a z16 tile is ~600 m wide)
POINT_MINZOOM_CAP = 16
#: properties never put in tiles: always NULL for current features
HIDDEN = {"valid_to"}
#: the bound parameter with the district codes a tile touches
DISTRICTS_PARAMETER = "districts"


class TileAddressError(ParameterError):
    """A tile address outside the tile matrix set; ``parameter`` names the part, ``status`` is
    400 for a matrix that does not exist and 404 for a row/column outside an existing matrix."""

    def __init__(self, parameter: str, message: str, status: int) -> None:
        super().__init__(parameter, message)
        self.status = status
        self.title = "Bad tile address" if status == 400 else "Not found"


def check_tile(z: int, x: int, y: int) -> None:
    if not TMS.minzoom <= z <= TMS.maxzoom:
        raise TileAddressError("tileMatrix", f"tileMatrix {z} is not in {TMS_ID} "
                                             f"({TMS.minzoom}–{TMS.maxzoom})", 400)
    n = 2 ** z
    if not 0 <= y < n:
        raise TileAddressError("tileRow", f"tileRow {y} is outside tile matrix {z} (0–{n - 1})", 404)
    if not 0 <= x < n:
        raise TileAddressError("tileCol", f"tileCol {x} is outside tile matrix {z} (0–{n - 1})", 404)


def feature_limit(z: int) -> int:
    return next(limit for up_to, limit in ZOOM_LIMITS if z <= up_to)


def point_minzoom(features: float, area: tuple[float, float, float, float] | None) -> int:
    """The first zoom where ``features`` points spread over ``area`` (lon/lat) average at most
    :data:`POINTS_PER_TILE` a tile; never above :data:`POINT_MINZOOM_CAP`."""
    if area is None or features <= POINTS_PER_TILE:
        return 0
    for z in range(POINT_MINZOOM_CAP):
        low, high = TMS.tile(area[0], area[1], z), TMS.tile(area[2], area[3], z)
        tiles = (abs(high.x - low.x) + 1) * (abs(high.y - low.y) + 1)
        if features / tiles <= POINTS_PER_TILE:
            return z
    return POINT_MINZOOM_CAP


def layer_minzoom(conn: Connection, layer: Layer, srid: int, area: tuple[float, float, float, float] | None) -> int:
    """The first zoom of a layer's map tiles: 0 for lines and polygons (thinned largest first), the density
    rule for points over ``area`` (the city's box). The rows are the planner's count, from the table's
    statistics: counting 15 M rows would take seconds for a number only compared with a threshold."""
    if "POINT" not in layer.geometry_type.upper():
        return 0
    t = tables_for(srid)[layer.table]
    rows = conn.execute(sa.text("SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_partition_tree("
                                "CAST(:t AS regclass)) p JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf"),
                        {"t": t.name}).scalar()
    return point_minzoom(float(rows or 0), area)


def default_properties(layer: Layer) -> list[str]:
    return [q.name for q in layer.queryables if q.name not in HIDDEN]


def property_names(layer: Layer, requested: list[str] | None) -> list[str]:
    """The properties to encode: all queryables by default, else the requested ones (checked)."""
    allowed = default_properties(layer)
    if requested is None:
        return allowed
    unknown = [p for p in requested if p not in allowed]
    if unknown:
        raise PropertiesError(f"unknown properties {', '.join(unknown)} for layer {layer.name!r}; "
                              f"choose from: {', '.join(allowed)}")
    return list(dict.fromkeys(requested))


class PropertiesError(ParameterError):
    """Properties asked for that the layer does not have (400 naming ``properties``)."""

    def __init__(self, message: str) -> None:
        super().__init__("properties", message)


def _column(layer: Layer, table: sa.Table, name: str) -> sa.ColumnElement:
    q = layer.queryable(name)
    col = table.c[name]
    # uuid, dates and timestamps have no MVT value type: they travel as text
    if q is not None and q.type in ("string", "date", "datetime"):
        return sa.cast(col, sa.Text).label(name)
    return col.label(name)


def tile(conn: Connection, layer: Layer, srid: int, z: int, x: int, y: int, selection: Selection,
         properties: list[str]) -> bytes:
    """The tile's bytes (empty when no feature touches it)."""
    check_tile(z, x, y)
    b = TMS.xy_bounds(morecantile.Tile(x, y, z))
    width = b.right - b.left
    # a tile reads a few thousand rows at most: starting a parallel worker costs more than it
    # saves (a z14 tile of 1M points: 12 ms with one, 6 ms without) and under load it takes a
    # core from the other requests. LOCAL: the connection's next transaction plans as before.
    conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
    pad = width * BUFFER / EXTENT
    params = {"left": b.left, "bottom": b.bottom, "right": b.right, "top": b.top, "pad": pad,
              "segment": width / 8, "tolerance": width / EXTENT * SIMPLIFY_CELLS, "feature_limit": feature_limit(z)}
    # the districts the tile's search box (tile + buffer) touches: only their partitions / shards are read
    districts = None if selection.when is not None else districts_touching(
        conn, layer, storage_box(b.left - pad, b.bottom - pad, b.right + pad, b.top + pad, 3857, srid))
    if districts is not None:
        params[DISTRICTS_PARAMETER] = list(districts.codes)
    prune = None if districts is None else ("with_null" if districts.with_null else "codes")
    data = conn.execute(_statement(layer, srid, selection, tuple(properties), prune), params).scalar()
    return bytes(data) if data else b""


@functools.lru_cache(maxsize=256)
def _statement(layer: Layer, srid: int, selection: Selection, properties: tuple[str, ...],
               prune: str | None = None) -> sa.Select:
    """The tile query of a layer, selection and property list, built once: the tile's own numbers
    are bound parameters, so each request reuses the statement and its compiled form (building
    and compiling it was most of a tile's Python time). ``prune`` (None, "codes", "with_null"): the
    form of the districts term, whose codes are the parameter :data:`DISTRICTS_PARAMETER`."""
    t = tables_for(srid)[layer.table]
    number = functools.partial(sa.bindparam, type_=sa.Float)
    envelope = sa.func.ST_MakeEnvelope(number("left"), number("bottom"), number("right"), number("top"), 3857)
    # the search box in storage: the tile plus its buffer, densified because its edges bend
    search = sa.func.ST_Transform(sa.func.ST_Segmentize(sa.func.ST_Expand(envelope, number("pad")),
                                                        number("segment")), srid)
    geom = sa.func.ST_Transform(sa.func.ST_Force2D(t.c.geom), 3857)
    kind = layer.geometry_type.upper()
    if "POINT" in kind:
        order: sa.ColumnElement = t.c.fid
    else:
        geom = sa.func.ST_Simplify(geom, number("tolerance"), True)
        size = sa.func.ST_Area(t.c.geom) if "POLYGON" in kind else sa.func.ST_Length(t.c.geom)
        order = size.desc()
    rows = (sa.select(t.c.fid.label("fid"), *(_column(layer, t, p) for p in properties),
                      sa.func.ST_AsMVTGeom(geom, envelope, EXTENT, BUFFER, True).label("geom"))
            .where(*selection.clauses(layer, t, t.c.geom, srid), t.c.geom.op("&&")(search),
                   *_districts_term(t, prune))
            .order_by(order, t.c.fid)
            .limit(sa.bindparam("feature_limit", type_=sa.Integer))
            .subquery("mvt_rows"))
    return (sa.select(sa.func.ST_AsMVT(sa.literal_column("mvt_rows"), layer.name, EXTENT, "geom", "fid"))
            .select_from(rows).where(rows.c.geom.is_not(None)))


def _districts_term(t: sa.Table, prune: str | None) -> list[sa.ColumnElement]:
    if prune is None or DISTRIBUTION_COLUMN not in t.c:
        return []
    return [Districts((), prune == "with_null").clause(t.c[DISTRIBUTION_COLUMN], DISTRICTS_PARAMETER)]


def layer_bounds(conn: Connection, layer: Layer, srid: int) -> tuple[float, float, float, float] | None:
    """The current features' extent in longitude/latitude, or None for an empty layer."""
    t = tables_for(srid)[layer.table]
    ext = sa.func.ST_Transform(sa.func.ST_SetSRID(sa.func.ST_Extent(t.c.geom), srid), 4326)
    row = conn.execute(sa.select(sa.func.ST_XMin(ext), sa.func.ST_YMin(ext), sa.func.ST_XMax(ext),
                                 sa.func.ST_YMax(ext)).where(t.c.valid_to.is_(None))).one()
    if row[0] is None or not all(math.isfinite(v) for v in row):
        return None
    return tuple(float(v) for v in row)  # type: ignore[return-value]


def tiles_covering(bounds: tuple[float, float, float, float], zooms: range):
    """The WebMercatorQuad tiles over a lon/lat box at each zoom."""
    return TMS.tiles(*bounds, zooms=list(zooms))
