"""Mapbox vector tiles of any layer, made by PostGIS (``ST_AsMVTGeom`` + ``ST_AsMVT``) in the
WebMercatorQuad tile matrix set (EPSG:3857, morecantile's definition).

ST_AsMVTGeom clips to the tile plus a buffer and quantises to the 4096 grid; before it, lines and
polygons are simplified by two grid cells (detail below that would be lost by quantisation
anyway) and each zoom has a feature cap, largest features first, so a low-zoom tile of a dense
layer stays small. From z14 a line or polygon that lies inside the tile plus its buffer needs no
clipping and goes into the grid directly (:func:`_inside_first`).

A point layer also has a first zoom (:func:`point_minzoom`): points have no size to thin them by, and
reading every point of a tile costs ~10 µs each in the database, so a z14 tile over central Shanghai's
15 M parts (~100,000 points, 3.8 MB) took seconds. Below that zoom a layer's map tiles are empty (204)
and TileJSON says where it starts, so clients ask for nothing there.
"""
from __future__ import annotations

import functools
import math

import morecantile
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.crs import transform_coords
from cim.distribution import DISTRIBUTION_COLUMN
from cim.districts_index import TRANSFORM_MARGIN_M, Districts, districts_touching, grown, storage_box
from cim.errors import ParameterError
from cim.registry import Layer
from cim.schema import ENRICHED, tables_for
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
#: left out of a map tile unless asked for (``properties=``): a version's bookkeeping, unique to each feature
#: (one dictionary entry per feature in the tile's value table) and never drawn. A map's click finds a feature by
#: the tile's feature id (the fid; the case number on the ``cases`` layer)
BOOKKEEPING = ("feature_id", "source_id", "valid_from")
#: a layer whose own code is an integer unique among its current features (parts' 16-digit 部件编码) carries it as
#: each feature's id in every tile of the layer instead of the fid, and a map tile leaves it out of the properties.
#: As a property it is distinct on every feature: one entry each in the tile's value table, which ``ST_AsMVT``
#: hashes and writes out; on the densest z16 parts tile (~5,000 points) that encoding was about half the statement's
#: database time (17 of 33 ms). An id is a varint in the feature itself. A click still finds the code (the id, as
#: 16 digits: valid codes start with a province's code, 11–82, so they fit a double exactly), and
#: ``properties=object_code`` still puts it in as well. The other layers' ids stay the fid (a case's number on
#: ``cases``)
CODE_IDS = {"parts": "object_code"}
#: the area codes a load gives the features of an enriched layer (cim.schema.ENRICHED): the rows' jurisdiction,
#: not what the map shows of them. On the area layers themselves (grids, streets, …) they are their own codes
AREA_CODES = ("district_code", "street_code", "community_code", "grid_code")
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
    """Every property a tile may carry: the choices of the ``properties`` parameter."""
    return [q.name for q in layer.queryables if q.name not in HIDDEN]


def feature_id_code(layer: Layer) -> str | None:
    """The code a layer's tile features carry as their id (:data:`CODE_IDS`), or None: the id is the fid."""
    code = CODE_IDS.get(layer.table)
    return code if code is not None and layer.queryable(code) is not None else None


def map_properties(layer: Layer) -> list[str]:
    """The properties of a map tile (none asked for): the layer's own attributes, without
    :data:`BOOKKEEPING`, without the code carried as the feature id (:func:`feature_id_code`) and, on a layer
    enriched with area codes, without :data:`AREA_CODES`. TileJSON's
    ``fields`` list these. On the synthetic Shanghai a dense z16 parts tile (4,196 points) went from 512 to
    205 KiB and its statement from ~50 to ~28 ms (fastest of 9): ``ST_AsMVT`` puts every distinct value in
    the tile's value table, and the three bookkeeping strings are distinct for every feature."""
    thinned = set(BOOKKEEPING) | {feature_id_code(layer)} | (set(AREA_CODES) if layer.table in ENRICHED else set())
    return [name for name in default_properties(layer) if name not in thinned]


def property_names(layer: Layer, requested: list[str] | None) -> list[str]:
    """The properties to encode: the map's (:func:`map_properties`) by default, else the requested ones
    (checked against :func:`default_properties`)."""
    allowed = default_properties(layer)
    if requested is None:
        return map_properties(layer)
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
    pad = width * BUFFER / EXTENT
    params = {"left": b.left, "bottom": b.bottom, "right": b.right, "top": b.top, "tolerance": width / EXTENT *
              SIMPLIFY_CELLS, "feature_limit": feature_limit(z)}
    # the search box (tile + buffer) in storage, worked out here once: it names the districts to read, and from
    # CORNERS_ZOOM on the statement compares the stored geometries with it as it is (no transform when planning)
    corners = z >= CORNERS_ZOOM
    box = storage_box(b.left - pad, b.bottom - pad, b.right + pad, b.top + pad, 3857, srid,
                      edge_points=2 if corners else _DENSE_EDGE)
    affine = None
    if corners and box is not None:
        # less the districts' margin but BOX_MARGIN_M: rows just outside the box take places under the feature
        # cap (its LIMIT comes before the clipping), so the box stays as close as PostGIS's own transform was
        params.update(zip(("box_left", "box_bottom", "box_right", "box_top"),
                          grown(box, BOX_MARGIN_M - TRANSFORM_MARGIN_M)))
        affine = storage_to_mercator(b.left - pad, b.bottom - pad, b.right + pad, b.top + pad, srid,
                                     AFFINE_MAX_ERROR_CELLS * width / EXTENT)
        if affine is not None:
            params.update(zip(_AFFINE, affine))
            params.update(zip(_TILE_AFFINE, tile_affine(affine, b.left, b.top, EXTENT / width)))
            params.update(zip(_INSIDE, inside_box(affine, b.left - pad, b.bottom - pad, b.right + pad, b.top + pad,
                                                  width / EXTENT)))
    else:  # PostGIS transforms the tile's box, densified
        params.update({"pad": pad, "segment": width / 8})
    # the districts the search box touches: only their partitions / shards are read
    districts = None if selection.when is not None else districts_touching(conn, layer, box)
    if districts is not None:
        params[DISTRICTS_PARAMETER] = list(districts.codes)
    prune = None if districts is None else ("with_null" if districts.with_null else "codes")
    sql, bound = _compiled(layer, srid, selection, tuple(properties), prune, "box_left" in params, affine is not None,
                           conn.dialect)
    # a tile reads a few thousand rows at most: starting a parallel worker costs more than it saves (a z14
    # tile of 1M points: 12 ms with one, 6 ms without) and under load it takes a core from the other
    # requests. LOCAL: the connection's next transaction plans as before. Sent with the tile's statement in
    # one round trip (the last statement's result is the answer)
    data = conn.exec_driver_sql(f"{_NO_PARALLEL}; {sql}", {**bound, **params}).scalar()
    return bytes(data) if data else b""


#: from this zoom on a tile's search box is transformed into storage (by pyproj) by its corners alone: a
#: straight edge of a z14 tile (~2.4 km) bends by ~0.1 m in a transverse Mercator storage CRS at Shanghai's
#: latitude (the sagitta L²·tan φ / 8R), inside BOX_MARGIN_M; a lower zoom's box is transformed by PostGIS,
#: densified, as before (and its districts looked up on a densified box)
CORNERS_ZOOM = 14
#: added around a search box of CORNERS_ZOOM and above (metres in storage)
BOX_MARGIN_M = 0.5
_DENSE_EDGE = 33
_NO_PARALLEL = "SET LOCAL max_parallel_workers_per_gather = 0"
#: From CORNERS_ZOOM on, stored geometries are mapped into Web Mercator by an affine map fitted to the tile (plus
#: buffer) instead of ``ST_Transform``, when that map stays within this many tile grid cells (1/4096 of the tile)
#: of the true transform everywhere on the tile. ``ST_Transform`` runs PROJ's inverse transverse Mercator and
#: forward Mercator on every vertex (~0.8 µs each): on a z14 tile of 1,556 footprints over 徐汇区 it was 6 of
#: the statement's 21 ms (fastest of 9), ``ST_Affine`` ~1.4 ms. The map bends by up to ~0.13 m over a z14 tile
#: at Shanghai (0.22 cells; 0.06 at z15, 0.03 at z16): a vertex may land one grid cell from where the exact
#: transform puts it, well under a pixel (a cell is 1/8 of a 512-pixel tile's pixel). Where the check fails (a
#: larger tile, a storage CRS that bends more) the tile is transformed by PostGIS as before.
AFFINE_MAX_ERROR_CELLS = 0.25
#: sample points a side over the tile for fitting and checking the affine map
_AFFINE_SAMPLES = 5
#: the bound parameters of the affine map (ST_Affine's a, b, d, e, xoff, yoff)
_AFFINE = ("affine_a", "affine_b", "affine_d", "affine_e", "affine_xoff", "affine_yoff")


#: the bound parameters of the affine map from storage straight into the tile's grid (y down), and of the box in
#: storage inside which every geometry lies within the tile plus its buffer
_TILE_AFFINE = ("tile_a", "tile_b", "tile_d", "tile_e", "tile_xoff", "tile_yoff")
_INSIDE = ("inside_left", "inside_bottom", "inside_right", "inside_top")


def tile_affine(affine: tuple[float, ...], left: float, top: float, scale: float) -> tuple[float, ...]:
    """The affine map (ST_Affine's a, b, d, e, xoff, yoff) from storage into the tile's grid: ``affine`` into Web
    Mercator, then (x − left, top − y) × ``scale`` (grid cells a metre): y grows downwards, as in a tile."""
    a, b, d, e, xoff, yoff = affine
    return a * scale, b * scale, -d * scale, -e * scale, (xoff - left) * scale, (top - yoff) * scale


def inside_box(affine: tuple[float, ...], left: float, bottom: float, right: float, top: float,
               shrink: float) -> tuple[float, float, float, float]:
    """The axis-aligned storage box whose every point ``affine`` maps inside the Web Mercator box less ``shrink``
    a side: the corners mapped back (the inverse map) make a parallelogram, slightly turned (grid convergence),
    and the box takes the inner one of each pair of its sides."""
    a, b, d, e, xoff, yoff = affine
    inverse = np.linalg.inv(np.array([[a, b], [d, e]]))
    corners = np.array([[left + shrink, bottom + shrink], [right - shrink, bottom + shrink],
                        [right - shrink, top - shrink], [left + shrink, top - shrink]]) - [xoff, yoff]
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = corners @ inverse.T
    return float(max(x0, x3)), float(max(y0, y1)), float(min(x1, x2)), float(min(y2, y3))


def storage_to_mercator(left: float, bottom: float, right: float, top: float, srid: int,
                        max_error: float) -> tuple[float, ...] | None:
    """The affine map (ST_Affine's a, b, d, e, xoff, yoff) from the storage CRS to EPSG:3857 fitted (least
    squares) over the Web Mercator box, or None when it strays more than ``max_error`` (3857 units) from the
    exact transform at any of the sample points, or the box is not in the storage CRS's domain."""
    t = np.linspace(0.0, 1.0, _AFFINE_SAMPLES)
    mx, my = np.meshgrid(left + (right - left) * t, bottom + (top - bottom) * t)
    mx, my = mx.ravel(), my.ravel()
    with np.errstate(all="ignore"):
        sx, sy, _ = transform_coords(mx, my, None, 3857, srid)
    sx, sy = np.asarray(sx, float), np.asarray(sy, float)
    if not (np.isfinite(sx).all() and np.isfinite(sy).all()):
        return None
    # least squares by the normal equations (3 × 3; a tenth of lstsq's SVD here), around the box's centre so that
    # they stay well conditioned
    cx, cy = sx[sx.size // 2], sy[sy.size // 2]
    design = np.column_stack([sx - cx, sy - cy, np.ones_like(sx)])
    target = np.column_stack([mx, my])
    (a, d), (b, e), (c, f) = np.linalg.solve(design.T @ design, design.T @ target)
    error = np.hypot(*(design @ np.array([[a, d], [b, e], [c, f]]) - target).T).max()
    if not error <= max_error:
        return None
    return float(a), float(b), float(d), float(e), float(c - a * cx - b * cy), float(f - d * cx - e * cy)


@functools.lru_cache(maxsize=256)
def _compiled(layer: Layer, srid: int, selection: Selection, properties: tuple[str, ...], prune: str | None,
              box_in_storage: bool, affine: bool, dialect: sa.Dialect) -> tuple[str, dict]:
    """The tile statement as the driver's SQL and its fixed parameters (a filter's values), compiled once."""
    compiled = _statement(layer, srid, selection, properties, prune, box_in_storage, affine).compile(dialect=dialect)
    return str(compiled), dict(compiled.params)


@functools.lru_cache(maxsize=256)
def _statement(layer: Layer, srid: int, selection: Selection, properties: tuple[str, ...],
               prune: str | None = None, box_in_storage: bool = False, affine: bool = False) -> sa.Select:
    """The tile query of a layer, selection and property list, built once: the tile's own numbers
    are bound parameters, so each request reuses the statement and its compiled form (building
    and compiling it was most of a tile's Python time). ``prune`` (None, "codes", "with_null"): the
    form of the districts term, whose codes are the parameter :data:`DISTRICTS_PARAMETER`.
    ``box_in_storage``: the search box is given in the storage CRS (``box_left`` … ``box_top``), else
    as the tile's buffer (``pad``) and densifying step (``segment``) for PostGIS to transform. ``affine``: the
    geometries are mapped into Web Mercator by the affine map of :func:`storage_to_mercator` (parameters
    ``affine_a`` … ``affine_yoff``), else by ``ST_Transform``."""
    t = tables_for(srid)[layer.table]
    number = functools.partial(sa.bindparam, type_=sa.Float)
    envelope = sa.func.ST_MakeEnvelope(number("left"), number("bottom"), number("right"), number("top"), 3857)
    if box_in_storage:
        search = sa.func.ST_MakeEnvelope(number("box_left"), number("box_bottom"), number("box_right"),
                                         number("box_top"), srid)
    else:  # the tile plus its buffer, densified because its edges bend
        search = sa.func.ST_Transform(sa.func.ST_Segmentize(sa.func.ST_Expand(envelope, number("pad")),
                                                            number("segment")), srid)
    if affine:
        geom = sa.func.ST_SetSRID(sa.func.ST_Affine(sa.func.ST_Force2D(t.c.geom), *(number(p) for p in _AFFINE)),
                                  3857)
    else:
        geom = sa.func.ST_Transform(sa.func.ST_Force2D(t.c.geom), 3857)
    kind = layer.geometry_type.upper()
    if "POINT" in kind:
        order: sa.ColumnElement = t.c.fid
    else:
        geom = sa.func.ST_Simplify(geom, number("tolerance"), True)
        size = sa.func.ST_Area(t.c.geom) if "POLYGON" in kind else sa.func.ST_Length(t.c.geom)
        order = size.desc()
    clipped = sa.func.ST_AsMVTGeom(geom, envelope, EXTENT, BUFFER, True)
    # points: ST_AsMVTGeom costs a point little (measured: no change on parts z16), a CASE would add to it
    geom = _inside_first(t, srid, kind, clipped) if affine and "POINT" not in kind else clipped
    code = feature_id_code(layer)
    # ST_AsMVT takes an integer column as the id (and leaves it out of the properties); the check constraint keeps
    # the code 16 digits, so the cast never fails
    ident = t.c.fid if code is None else sa.cast(t.c[code], sa.BigInteger)
    rows = (sa.select(ident.label("fid"), *(_column(layer, t, p) for p in properties),
                      geom.label("geom"))
            .where(*selection.clauses(layer, t, t.c.geom, srid), t.c.geom.op("&&")(search),
                   *_districts_term(t, prune))
            .order_by(order, t.c.fid)
            .limit(sa.bindparam("feature_limit", type_=sa.Integer))
            .subquery("mvt_rows"))
    kept = [rows.c.geom.is_not(None)]
    if geom is not clipped:  # what the grid collapsed on the direct way (ST_AsMVTGeom drops it): empty, or no area
        kept.append(sa.not_(sa.func.ST_IsEmpty(rows.c.geom)))
        if "POLYGON" in kind:
            kept.append(sa.func.ST_Area(rows.c.geom) > 0)
    return (sa.select(sa.func.ST_AsMVT(sa.literal_column("mvt_rows"), layer.name, EXTENT, "geom", "fid"))
            .select_from(rows).where(*kept))


def _inside_first(t: sa.Table, srid: int, kind: str, clipped: sa.ColumnElement) -> sa.ColumnElement:
    """A line or polygon feature that lies inside the tile plus its buffer (its stored box, read from the geometry's
    header, inside :func:`inside_box`) goes into the tile's grid directly: the tile's affine map
    (:func:`tile_affine`), the same simplification by SIMPLIFY_CELLS, snapped to the grid, repeated points dropped
    and, for a polygon, its outer rings turned as a vector tile wants them (as ``ST_AsMVTGeom`` turns them). Only a
    feature across the edge takes ``clipped``: ``ST_AsMVTGeom``'s clipping and validation (GEOS, for polygons) cost
    most of a z14 buildings tile's geometry time, for footprints that need neither (measured: a z14 tile of 1,886
    footprints over 徐汇区, 15 → 11 ms). A polygon whose snapped rings would cross themselves is not repaired as
    ``ST_AsMVTGeom`` would: at z14 a grid cell is ~0.5 m, and a footprint's sides are metres apart."""
    number = functools.partial(sa.bindparam, type_=sa.Float)
    direct = sa.func.ST_Affine(sa.func.ST_Force2D(t.c.geom), *(number(p) for p in _TILE_AFFINE))
    direct = sa.func.ST_RemoveRepeatedPoints(sa.func.ST_SnapToGrid(sa.func.ST_Simplify(direct, SIMPLIFY_CELLS, True),
                                                                   1.0))
    if "POLYGON" in kind:  # y grows downwards in the grid: counter-clockwise here is clockwise on the map
        direct = sa.func.ST_ForcePolygonCCW(direct)
    inside = t.c.geom.op("@")(sa.func.ST_MakeEnvelope(*(number(p) for p in _INSIDE), srid))
    return sa.case((inside, direct), else_=clipped)


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
