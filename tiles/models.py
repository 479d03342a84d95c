"""What each 3D layer looks like: its SQL, its metadata class and how a feature becomes a mesh.

- buildings: LoD1 blocks from the footprint, base = ``base_elevation`` (or the footprint's own Z
  when the column was left at 0), height = ``height`` or floors × storey height; buildings with a
  current curtain wall get ``has_curtain_wall`` and the glass material.
- curtain-walls: the same blocks, from the wall's own polygon or its building's footprint.
- pipelines: tubes of the pipe's diameter along the 3D centreline (Z < 0 is below ground).
- parts, iot-devices: one pin marker instanced at each point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import shapely
import sqlalchemy as sa
from sqlalchemy.sql import ColumnElement, FromClause

from tiles import style
from tiles.gltf import Instances, Material
from tiles.geodesy import LocalFrame, storage_to_ecef
from tiles.meshes import Mesh, blocks, linestring_points, marker, tube
from tiles.metadata import FeatureClass, Property

#: a pipe thinner than this is drawn at this radius so that it stays visible (metres)
MIN_PIPE_RADIUS_M = 0.1
#: what a pipe without a recorded diameter is drawn as (millimetres)
DEFAULT_PIPE_DIAMETER_MM = 300.0
TUBE_SIDES = 10
MARKER_WIDTH_M, MARKER_HEIGHT_M = 1.2, 2.4
#: margin added to every bounding region so rounding never leaves a vertex outside (metres)
REGION_MARGIN_M = 0.5


@dataclass(frozen=True)
class Query:
    """The SQL of one 3D layer: its FROM clause, its own table and the expressions tiles need."""

    table: sa.Table  # the layer's own table (filters and current-row test apply to it)
    source: FromClause
    geom: ColumnElement  # storage-CRS geometry
    zmin: ColumnElement
    zmax: ColumnElement
    pad: ColumnElement  # horizontal reach beyond the geometry, metres
    importance: ColumnElement  # larger = shown from further away (kept in coarser tiles)
    columns: dict[str, ColumnElement]  # metadata property → SQL
    extra: dict[str, ColumnElement]  # what the mesh builder needs besides the geometry


@dataclass(frozen=True)
class Model:
    layer: str  # collection id
    feature_class: FeatureClass
    query: Callable[[dict[str, sa.Table], float], Query]  # (tables, storey height) → Query
    build: Callable[[list[dict[str, Any]], int, LocalFrame], tuple[list[tuple[Mesh, Material]], list[Instances]]]


_COMMON = (
    Property("feature_id", "STRING", "stable feature id (uuid)"),
    Property("source_id", "STRING", "the deliverer's id"),
    Property("name", "STRING", "name"),
)
_TAIL = (
    Property("grid_code", "STRING", "unit grid code"),
    Property("valid_from", "STRING", "valid from (ISO 8601)"),
)


def _common(t: sa.Table, name: ColumnElement | None = None) -> dict[str, ColumnElement]:
    return {"feature_id": sa.cast(t.c.feature_id, sa.Text), "source_id": t.c.source_id,
            "name": name if name is not None else t.c.name}


def _tail(t: sa.Table) -> dict[str, ColumnElement]:
    return {"grid_code": t.c.grid_code, "valid_from": t.c.valid_from}


# --- buildings ------------------------------------------------------------------------------

BUILDING = FeatureClass("cim_buildings", "building", "建筑", _COMMON + (
    Property("height", "FLOAT64", "height above base (m)"),
    Property("floors", "INT32", "number of floors"),
    Property("base_elevation", "FLOAT64", "base elevation (m)"),
    Property("use", "STRING", "use"),
    Property("year_built", "INT32", "year built"),
    Property("address", "STRING", "standard address"),
    Property("has_curtain_wall", "BOOLEAN", "has a glass curtain wall"),
) + _TAIL)


def _base_expr(b: sa.Table) -> ColumnElement:
    # the column is the loader's explicit value; 0 is its default, so then the footprint's Z counts
    return sa.case((b.c.base_elevation != 0, b.c.base_elevation),
                   else_=sa.func.coalesce(sa.func.ST_ZMin(b.c.geom), 0.0))


def _height_expr(b: sa.Table, storey: float) -> ColumnElement:
    return sa.func.coalesce(b.c.height, b.c.floors * storey, storey)


def _linked_wall(c: sa.Table, b: sa.Table) -> ColumnElement:
    return sa.or_(c.c.building_feature_id == b.c.feature_id,
                  sa.and_(c.c.building_feature_id.is_(None), c.c.building_source_id == b.c.source_id))


def _buildings(tables: dict[str, sa.Table], storey: float) -> Query:
    b, c = tables["buildings"], tables["curtain_walls"].alias("cw")
    a, la = tables["addresses"].alias("addr"), tables["addresses"].alias("linked_addr")
    base, height = _base_expr(b), _height_expr(b, storey)
    # linked walls through the GiST index (a linked wall's geometry is its building's), walls not linked yet by
    # the building's source id in one hashed list: as one OR'ed condition, each building scanned every wall
    has_wall = sa.or_(
        sa.exists().where(c.c.valid_to.is_(None), c.c.geom.op("&&")(b.c.geom), c.c.building_feature_id == b.c.feature_id),
        b.c.source_id.in_(sa.select(c.c.building_source_id).where(c.c.valid_to.is_(None),
                                                                 c.c.building_feature_id.is_(None))))
    # The building's own address, else the first address linked to it: two lookups, each on an index. As one
    # condition (own OR linked) neither index could serve, and with a city's addresses loaded every building of
    # a tile scanned the whole table (0.6 s a building with 1 M addresses). A linked address lies in the
    # footprint (the loaders link them by ST_Covers), so the box test lets the second use the GiST index.
    own = (sa.select(a.c.standard_address)
           .where(a.c.valid_to.is_(None), a.c.feature_id == b.c.address_feature_id)
           .order_by(a.c.fid).limit(1).scalar_subquery())
    linked = (sa.select(la.c.standard_address)
              .where(la.c.valid_to.is_(None), la.c.geom.op("&&")(b.c.geom), la.c.building_feature_id == b.c.feature_id)
              .order_by(la.c.fid).limit(1).scalar_subquery())
    address = sa.func.coalesce(own, linked)
    return Query(
        table=b, source=b, geom=b.c.geom, zmin=base, zmax=base + height, pad=sa.literal(0.0),
        importance=sa.func.ST_Area(b.c.geom) * height,
        columns={**_common(b), "height": height, "floors": b.c.floors, "base_elevation": base, "use": b.c.use,
                 "year_built": b.c.year_built, "address": address, "has_curtain_wall": has_wall, **_tail(b)},
        extra={"base": base, "top": base + height},
    )


def _build_solids(rows: list[dict[str, Any]], srid: int, frame: LocalFrame,
                  glass_flag: str | None) -> tuple[list[tuple[Mesh, Material]], list[Instances]]:
    glassy = np.array([glass_flag is None or bool(row[glass_flag]) for row in rows], bool)
    geoms = np.array([row["geom"] for row in rows], object)
    bases = np.array([row["base"] for row in rows], float)
    tops = np.array([row["top"] for row in rows], float)
    ids = np.arange(len(rows))
    return [(blocks(geoms[~glassy], bases[~glassy], tops[~glassy], ids[~glassy], srid, frame), style.BUILDING),
            (blocks(geoms[glassy], bases[glassy], tops[glassy], ids[glassy], srid, frame), style.GLASS)], []


# --- curtain walls ---------------------------------------------------------------------------

CURTAIN_WALL = FeatureClass("cim_curtain_walls", "curtain_wall", "玻璃幕墙", _COMMON + (
    Property("building_source_id", "STRING", "building's source id"),
    Property("glass_type", "STRING", "glass type"),
    Property("support_type", "STRING", "support type"),
    Property("facade_area", "FLOAT64", "facade area (m²)"),
    Property("year_installed", "INT32", "year installed"),
    Property("last_inspection_date", "STRING", "last inspection date"),
    Property("inspection_result", "STRING", "inspection result"),
    Property("owner", "STRING", "owner"),
    Property("height", "FLOAT64", "building height (m)"),
    Property("has_curtain_wall", "BOOLEAN", "always true: this is a curtain wall"),
) + _TAIL)


def _curtain_walls(tables: dict[str, sa.Table], storey: float) -> Query:
    c, b = tables["curtain_walls"], tables["buildings"].alias("bld")
    source = c.outerjoin(b, sa.and_(b.c.valid_to.is_(None), _linked_wall(c, b)))
    geom = sa.func.coalesce(c.c.geom, b.c.geom)
    base = sa.case((b.c.fid.is_not(None), _base_expr(b)), else_=sa.func.coalesce(sa.func.ST_ZMin(c.c.geom), 0.0))
    height = _height_expr(b, storey)
    return Query(
        table=c, source=source, geom=geom, zmin=base, zmax=base + height, pad=sa.literal(0.0),
        importance=sa.func.ST_Area(geom) * height,
        columns={**_common(c, b.c.name), "building_source_id": sa.func.coalesce(c.c.building_source_id, b.c.source_id),
                 "glass_type": c.c.glass_type, "support_type": c.c.support_type, "facade_area": c.c.facade_area,
                 "year_installed": c.c.year_installed,
                 "last_inspection_date": sa.cast(c.c.last_inspection_date, sa.Text),
                 "inspection_result": c.c.inspection_result, "owner": c.c.owner, "height": height,
                 "has_curtain_wall": sa.true(), **_tail(c)},
        extra={"base": base, "top": base + height},
    )


# --- pipelines -------------------------------------------------------------------------------

PIPELINE = FeatureClass("cim_pipelines", "pipeline", "地下管线", _COMMON + (
    Property("kind", "STRING", "pipeline kind (给水, 排水, 燃气 …)"),
    Property("diameter_mm", "FLOAT64", "diameter (mm)"),
    Property("material", "STRING", "material"),
    Property("depth", "FLOAT64", "greatest burial depth (m)"),
    Property("start_depth", "FLOAT64", "depth at start (m)"),
    Property("end_depth", "FLOAT64", "depth at end (m)"),
    Property("owner", "STRING", "owner"),
) + _TAIL)


def _pipelines(tables: dict[str, sa.Table], _storey: float) -> Query:
    p = tables["pipelines"]
    radius = sa.func.greatest(sa.func.coalesce(p.c.diameter_mm, DEFAULT_PIPE_DIAMETER_MM) / 2000.0,
                              MIN_PIPE_RADIUS_M)
    depth = sa.func.coalesce(sa.func.greatest(p.c.start_depth, p.c.end_depth), -sa.func.ST_ZMin(p.c.geom))
    return Query(
        table=p, source=p, geom=p.c.geom, zmin=sa.func.ST_ZMin(p.c.geom) - radius,
        zmax=sa.func.ST_ZMax(p.c.geom) + radius, pad=radius,
        importance=radius * sa.func.ST_Length(p.c.geom),
        columns={**_common(p, sa.func.concat(p.c.kind, "管线 ", p.c.source_id)), "kind": p.c.kind,
                 "diameter_mm": p.c.diameter_mm, "material": p.c.material, "depth": depth,
                 "start_depth": p.c.start_depth, "end_depth": p.c.end_depth, "owner": p.c.owner, **_tail(p)},
        extra={"radius": radius},
    )


def _build_tubes(rows: list[dict[str, Any]], srid: int,
                 frame: LocalFrame) -> tuple[list[tuple[Mesh, Material]], list[Instances]]:
    by_kind: dict[str, list[Mesh]] = {}
    for i, row in enumerate(rows):
        for pts in linestring_points(row["geom"]):
            by_kind.setdefault(row["kind"], []).append(tube(pts, row["radius"], i, srid, frame, TUBE_SIDES))
    return [(Mesh.concat(ms), style.pipeline_material(kind)) for kind, ms in sorted(by_kind.items())], []


# --- point layers ----------------------------------------------------------------------------

PART = FeatureClass("cim_parts", "part", "城市部件", _COMMON + (
    Property("object_code", "STRING", "16-digit object code"),
    Property("part_class", "STRING", "class code"),
    Property("class_name", "STRING", "class name"),
    Property("part_subclass", "STRING", "subclass code"),
    Property("subclass_name", "STRING", "subclass name"),
    Property("status", "STRING", "status"),
    Property("owner_department", "STRING", "owner department"),
    Property("maintainer", "STRING", "maintainer"),
) + _TAIL)


def _point_extent(t: sa.Table) -> dict[str, ColumnElement]:
    z = sa.func.coalesce(sa.func.ST_Z(t.c.geom), 0.0)
    return {"zmin": z, "zmax": z + MARKER_HEIGHT_M, "pad": sa.literal(MARKER_WIDTH_M / 2)}


def _parts(tables: dict[str, sa.Table], _storey: float) -> Query:
    p = tables["parts"]
    cls, sub = tables["part_classes"].alias("pc"), tables["part_classes"].alias("psc")
    source = p.outerjoin(cls, cls.c.code == p.c.part_class).outerjoin(sub, sub.c.code == p.c.part_subclass)
    return Query(
        table=p, source=source, geom=p.c.geom, **_point_extent(p), importance=sa.literal(0.0),
        columns={**_common(p, sa.func.coalesce(p.c.name, sub.c.name)), "object_code": p.c.object_code,
                 "part_class": p.c.part_class, "class_name": cls.c.name, "part_subclass": p.c.part_subclass,
                 "subclass_name": sub.c.name, "status": p.c.status, "owner_department": p.c.owner_department,
                 "maintainer": p.c.maintainer, **_tail(p)},
        extra={},
    )


IOT_DEVICE = FeatureClass("cim_iot_devices", "iot_device", "物联感知设备", _COMMON + (
    Property("device_type", "STRING", "device type"),
    Property("linked_feature", "STRING", "linked feature"),
) + _TAIL)


def _iot_devices(tables: dict[str, sa.Table], _storey: float) -> Query:
    d = tables["iot_devices"]
    return Query(
        table=d, source=d, geom=d.c.geom, **_point_extent(d), importance=sa.literal(0.0),
        columns={**_common(d), "device_type": d.c.device_type, "linked_feature": d.c.linked_feature, **_tail(d)},
        extra={},
    )


def _build_markers(colour_of: Callable[[dict[str, Any]], Material]):
    pin = marker(MARKER_WIDTH_M, MARKER_HEIGHT_M)

    def build(rows: list[dict[str, Any]], srid: int,
              frame: LocalFrame) -> tuple[list[tuple[Mesh, Material]], list[Instances]]:
        groups: dict[str, tuple[Material, list[int]]] = {}
        for i, row in enumerate(rows):
            material = colour_of(row)
            groups.setdefault(material.name, (material, []))[1].append(i)
        out = []
        for material, ids in groups.values():
            pts = np.array([shapely.get_coordinates(rows[i]["geom"], include_z=True)[0] for i in ids])
            pts[:, 2] = np.nan_to_num(pts[:, 2])
            out.append(Instances(pin, material, frame.to_gltf(storage_to_ecef(pts, srid)), np.array(ids)))
        return [], out

    return build


MODELS: dict[str, Model] = {m.layer: m for m in (
    Model("buildings", BUILDING, _buildings,
          lambda rows, srid, frame: _build_solids(rows, srid, frame, "has_curtain_wall")),
    Model("curtain-walls", CURTAIN_WALL, _curtain_walls,
          lambda rows, srid, frame: _build_solids(rows, srid, frame, None)),
    Model("pipelines", PIPELINE, _pipelines, _build_tubes),
    Model("parts", PART, _parts, _build_markers(lambda r: style.part_material(r["part_class"]))),
    Model("iot-devices", IOT_DEVICE, _iot_devices, _build_markers(lambda r: style.IOT_DEVICE)),
)}
