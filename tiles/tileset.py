"""3D Tiles 1.1 for a layer: plan the tile tree from the base, write ``tileset.json`` and each
tile's glb on demand.

The plan reads one small row per feature (extent, centroid, importance); a tile's content reads
its features by ``fid``. A ``fid`` names one immutable version of a feature (a change closes the
row and adds another), so the content of a planned tile is the same whenever it is built.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import shapely
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from cim.distribution import DISTRIBUTION_COLUMN
from cim.districts_index import Districts, districts_touching, storage_box
from cim.errors import ConflictError, NotFoundError, ParameterError
from cim.registry import Layer
from tiles.geodesy import LocalFrame, lonlath_to_ecef, pad_radians, storage_to_lonlat
from tiles.gltf import write_glb
from tiles.models import MODELS, REGION_MARGIN_M, Model
from tiles.plan import ERROR_DIVISOR, Features, Tile, build_tree
from cim.schema import tables_for
from cim.selection import Selection

DEFAULT_MAX_FEATURES = 500
#: the tileset's own metadata (3D Tiles 1.1 ``schema`` + ``metadata``). The top-level ``properties`` of a
#: tileset is no place for it: there each entry is a per-feature property's ``minimum``/``maximum``
TILESET_SCHEMA: dict[str, Any] = {
    "id": "cim_tileset",
    "classes": {"tileset": {
        "name": "CIM layer tileset",
        "properties": {"featureCount": {
            "type": "SCALAR", "componentType": "UINT32", "required": True,
            "description": "features of the layer (and selection) in this tileset"}},
    }},
}
#: which tables each 3D layer's content is made from: the cache version covers all of them
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "buildings": ("buildings", "curtain_walls", "addresses"),
    "curtain-walls": ("curtain_walls", "buildings"),
}


class NoTilesError(NotFoundError):
    """The layer has no 3D representation."""


def model_for(layer_name: str) -> Model:
    model = MODELS.get(layer_name)
    if model is None:
        raise NoTilesError(f"layer {layer_name!r} has no 3D tiles; 3D layers are: {', '.join(MODELS)} "
                           "(every layer has vector tiles)")
    return model


def content_version(conn: Connection, layer: Layer) -> str:
    """The cache/ETag version of a 3D layer: its own registry version, joined with those of the
    tables it borrows from (a new curtain wall changes the buildings' tiles too)."""
    tables = DEPENDS_ON.get(layer.name, (layer.table,))
    rows = dict(conn.execute(sa.text("SELECT table_name, version FROM layers WHERE table_name = ANY(:t)"),
                             {"t": list(tables)}).all())
    return "-".join(str(rows.get(t, 0)) for t in tables)


@dataclass
class Plan:
    layer: Layer
    model: Model
    version: str
    selection: Selection
    srid: int
    storey_height: float
    frame: LocalFrame
    root: Tile | None
    feature_count: int
    city_region: list[float]
    tiles: dict[str, Tile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tiles = {t.id: t for t in self.root.walk()} if self.root else {}


def _feature_regions(v: np.ndarray, srid: int) -> np.ndarray:
    """Each feature's region from its storage bbox: 8 points of the box (corners and edge middles,
    since a straight storage edge is slightly curved in degrees), padded by its reach + margin.
    ``v`` holds one row per feature: xmin, ymin, xmax, ymax, zmin, zmax, pad."""
    b = v[:, :4]
    xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0], (b[:, 0] + b[:, 2]) / 2, (b[:, 0] + b[:, 2]) / 2,
                   b[:, 0], b[:, 2]], axis=1)
    ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3], b[:, 1], b[:, 3],
                   (b[:, 1] + b[:, 3]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    lon, lat = storage_to_lonlat(xs.ravel(), ys.ravel(), srid)
    lon, lat = np.radians(lon.reshape(xs.shape)), np.radians(lat.reshape(xs.shape))
    pad = np.nan_to_num(v[:, 6]) + REGION_MARGIN_M
    dlon, dlat = pad_radians(pad, np.degrees(lat.mean(axis=1)))
    zmin = v[:, 4] - REGION_MARGIN_M
    zmax = v[:, 5] + REGION_MARGIN_M
    return np.column_stack([lon.min(1) - dlon, lat.min(1) - dlat, lon.max(1) + dlon, lat.max(1) + dlat, zmin, zmax])


#: features read and turned into arrays at a time: the rows of a whole city (1.5 M buildings) as Python
#: objects would take more than a gigabyte; as arrays they take ~100 bytes a feature
_READ_CHUNK = 50_000


def read_features(conn: Connection, layer: Layer, srid: int, storey_height: float,
                  selection: Selection = Selection()) -> Features | None:
    """One small row per feature of the layer (and selection): id, centroid, region, importance; None when
    there is none. Both tile trees (the explicit one of :func:`plan_layer` and the implicit one of
    :mod:`tiles.implicit`) are planned from these."""
    model = model_for(layer.name)
    q = model.query(tables_for(srid), storey_height)
    # a layer drawn with another table's geometry (a curtain wall without its own: its building's) is boxed by
    # that geometry, which its own district code does not follow: not pruned
    districts = selection.districts(conn, layer, srid) if q.geom is q.table.c.geom else None
    stmt = (sa.select(q.table.c.fid.label("fid"),
                      sa.func.ST_X(sa.func.ST_Centroid(q.geom)).label("cx"),
                      sa.func.ST_Y(sa.func.ST_Centroid(q.geom)).label("cy"),
                      sa.func.ST_XMin(q.geom).label("xmin"), sa.func.ST_YMin(q.geom).label("ymin"),
                      sa.func.ST_XMax(q.geom).label("xmax"), sa.func.ST_YMax(q.geom).label("ymax"),
                      q.zmin.label("zmin"), q.zmax.label("zmax"), q.pad.label("pad"),
                      q.importance.label("importance"))
            .select_from(q.source)
            .where(*selection.clauses(layer, q.table, q.geom, srid, districts), q.geom.is_not(None),
                   sa.not_(sa.func.ST_IsEmpty(q.geom)))
            .order_by(q.table.c.fid))
    fids, centres, regions, importance = [], [], [], []
    result = conn.execution_options(stream_results=True, yield_per=_READ_CHUNK).execute(stmt)
    for chunk in result.partitions():
        fids.append(np.array([r[0] for r in chunk], np.int64))
        # cx, cy, xmin, ymin, xmax, ymax, zmin, zmax, pad, importance; a NULL (pad, importance) reads as NaN
        v = np.array([tuple(r[1:]) for r in chunk], float)
        centres.append(v[:, :2])
        regions.append(_feature_regions(v[:, 2:9], srid))  # per chunk: its temporaries are 8 points a feature
        importance.append(np.nan_to_num(v[:, 9]))
    if not fids:
        return None
    centre = np.vstack(centres)
    return Features(fid=np.concatenate(fids), cx=centre[:, 0].copy(), cy=centre[:, 1].copy(),
                    region=np.vstack(regions), importance=np.concatenate(importance))


def city_region(city_bbox: tuple[float, float, float, float]) -> list[float]:
    w, s, e, n = city_bbox
    return [math.radians(w), math.radians(s), math.radians(e), math.radians(n), 0.0, 1.0]


def plan_layer(conn: Connection, layer: Layer, srid: int, storey_height: float,
               city_bbox: tuple[float, float, float, float], selection: Selection = Selection(),
               max_features: int = DEFAULT_MAX_FEATURES, version: str | None = None) -> Plan:
    """Read the features' extents and build the tile tree."""
    if max_features < 1:
        raise ParameterError("max-features", f"max-features must be at least 1, got {max_features}")
    model = model_for(layer.name)
    version = version or content_version(conn, layer)
    features = read_features(conn, layer, srid, storey_height, selection)
    if features is None:
        w, s, e, n = city_bbox
        frame = LocalFrame((w + e) / 2, (s + n) / 2, 0.0)
        return Plan(layer, model, version, selection, srid, storey_height, frame, None, 0, city_region(city_bbox))
    root = build_tree(features, max_features)
    assert root is not None
    west, south, east, north = root.region[:4]
    frame = LocalFrame(math.degrees((west + east) / 2), math.degrees((south + north) / 2), 0.0)
    return Plan(layer, model, version, selection, srid, storey_height, frame, root, len(features),
                city_region(city_bbox))


def content_uri(plan: Plan, tile: Tile) -> str:
    return f"{plan.version}/{tile.id}.glb"


def tileset_json(plan: Plan, uri: Callable[[Tile], str] | None = None) -> dict[str, Any]:
    """The explicit tileset: regions in radians/metres, ENU transform at the root, ADD refinement."""
    uri = uri or (lambda t: content_uri(plan, t))

    def node(tile: Tile) -> dict[str, Any]:
        out: dict[str, Any] = {"boundingVolume": {"region": tile.region},
                               "geometricError": tile.geometric_error, "refine": "ADD"}
        if len(tile.fids):
            out["content"] = {"uri": uri(tile)}
        if tile.children:
            out["children"] = [node(c) for c in tile.children]
        return out

    if plan.root is None:
        root: dict[str, Any] = {"boundingVolume": {"region": plan.city_region}, "geometricError": 0.0,
                                "refine": "ADD"}
        error = 0.0
    else:
        root = node(plan.root)
        # a runtime draws nothing of a tileset whose own error looks smaller than its screen-space
        # threshold, so the tileset error is at least the content's size: a lone building is
        # still shown from a few kilometres away
        cell = plan.root.cell
        error = max(math.hypot(cell[2] - cell[0], cell[3] - cell[1]) / (ERROR_DIVISOR / 2),
                    _region_size(plan.root.region))
    root["transform"] = plan.frame.transform()
    return {
        "asset": {"version": "1.1", "tilesetVersion": plan.version, "generator": "cim-platform tiles"},
        "schema": TILESET_SCHEMA,
        "metadata": {"class": "tileset", "properties": {"featureCount": plan.feature_count}},
        "extras": {"layer": plan.layer.name, "title": plan.layer.title, "featureClass": plan.model.feature_class.name},
        "geometricError": error,
        "root": root,
    }


def _region_size(region: list[float]) -> float:
    """The diagonal of a region in metres (east-west, north-south and height)."""
    w, s, e, n, lo, hi = region
    radius = 6_371_000.0
    return math.sqrt(((e - w) * radius * math.cos((s + n) / 2)) ** 2 + ((n - s) * radius) ** 2 + (hi - lo) ** 2)


def tile_centre(plan: Plan, tile: Tile) -> np.ndarray:
    """The tile's centre in the glTF axes of the plan's frame: the glb node's translation."""
    w, s, e, n, lo, hi = tile.region
    ecef = lonlath_to_ecef(np.array([math.degrees((w + e) / 2)]), np.array([math.degrees((s + n) / 2)]),
                           np.array([(lo + hi) / 2]))
    return plan.frame.to_gltf(ecef)[0]


@functools.lru_cache(maxsize=32)
def _content_query(layer_name: str, srid: int, storey_height: float) -> tuple[Any, bool]:
    """(the layer's :class:`~tiles.models.Query`, whether its rows can be looked up by district), built once
    per layer: building it anew for every tile (its correlated address and wall subqueries) cost ~13 ms of
    Python a tile, a third of a tile's own work."""
    q = MODELS[layer_name].query(tables_for(srid), storey_height)
    return q, q.geom is q.table.c.geom and DISTRIBUTION_COLUMN in q.table.c


@functools.lru_cache(maxsize=64)
def _content_statement(layer_name: str, srid: int, storey_height: float, by_district: bool,
                       with_null: bool) -> tuple[sa.Select, tuple[str, ...]]:
    """The SELECT of a tile's features, compiled once: the fids (and the districts) are bound at execution."""
    q, _ = _content_query(layer_name, srid, storey_height)
    keys = (*q.columns, *q.extra)
    stmt = (sa.select(q.table.c.fid.label("_fid"), sa.func.ST_AsBinary(q.geom).label("_wkb"),
                      *(c.label(k) for k, c in q.columns.items()), *(c.label(k) for k, c in q.extra.items()))
            .select_from(q.source)
            .where(q.table.c.fid == sa.any_(sa.bindparam("fids", type_=ARRAY(sa.BigInteger)))))
    if by_district:
        stmt = stmt.where(Districts((), with_null).clause(q.table.c[DISTRIBUTION_COLUMN], "districts"))
    return stmt, keys


def tile_rows(conn: Connection, plan: Plan, tile: Tile) -> list[dict[str, Any]]:
    """The attributes (and ``geom``, a shapely geometry) of the tile's features, in the tile's fid order."""
    _, prunable = _content_query(plan.model.layer, plan.srid, plan.storey_height)
    districts = None
    # the tile's region holds its features whole: their districts are those the region touches, so the fids
    # are looked up in those districts' partitions / shards only
    if prunable and plan.selection.when is None:
        w, s, e, n = (math.degrees(v) for v in tile.region[:4])
        districts = districts_touching(conn, plan.layer, storage_box(w, s, e, n, 4326, plan.srid))
    stmt, keys = _content_statement(plan.model.layer, plan.srid, plan.storey_height, districts is not None,
                                    districts is not None and districts.with_null)
    params: dict[str, Any] = {"fids": [int(f) for f in tile.fids]}
    if districts is not None:
        params["districts"] = list(districts.codes)
    found = {r[0]: r for r in conn.execute(stmt, params)}
    ordered = []
    for fid in params["fids"]:
        r = found.get(fid)
        if r is None:
            raise ConflictError(f"feature fid {fid} of tile {tile.id} is gone; reload tileset.json")
        ordered.append(r)
    geoms = shapely.from_wkb([bytes(r[1]) for r in ordered])
    rows = [dict(zip(keys, r[2:])) for r in ordered]
    for row, geom in zip(rows, geoms):
        row["geom"] = geom
    return rows


def tile_glb(conn: Connection, plan: Plan, tile: Tile) -> bytes:
    """The binary glTF of one tile: its features' meshes and their attributes."""
    rows = tile_rows(conn, plan, tile)
    meshes, instances = plan.model.build(rows, plan.srid, plan.frame)
    centre = tile_centre(plan, tile)
    for mesh, _ in meshes:
        mesh.positions = mesh.positions - centre
    for inst in instances:
        inst.translations = inst.translations - centre
    return write_glb(plan.model.feature_class, rows, centre, meshes, instances)
