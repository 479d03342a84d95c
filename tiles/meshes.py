"""Triangle meshes for the 3D tiles: LoD1 solids, pipe tubes and the part marker.

All positions come out in glTF axes (x east, y up, z south) of a :class:`LocalFrame`; every
triangle is counter-clockwise seen from outside, which glTF takes as the front face, and every
normal points out of the solid.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mapbox_earcut
import numpy as np
import shapely

from tiles.geodesy import LocalFrame, lonlath_to_ecef, storage_to_ecef, storage_to_lonlat

#: consecutive vertices closer than this (metres) are one vertex: a zero-length wall has no normal
_MIN_EDGE_M = 1e-3
_MIN_AREA_M2 = 1e-4


@dataclass
class Mesh:
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    normals: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint32))
    feature_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))

    @property
    def empty(self) -> bool:
        return len(self.triangles) == 0

    @staticmethod
    def concat(meshes: list["Mesh"]) -> "Mesh":
        meshes = [m for m in meshes if not m.empty]
        if not meshes:
            return Mesh()
        offsets = np.cumsum([0] + [len(m.positions) for m in meshes[:-1]])
        return Mesh(
            positions=np.vstack([m.positions for m in meshes]),
            normals=np.vstack([m.normals for m in meshes]),
            triangles=np.vstack([m.triangles + o for m, o in zip(meshes, offsets)]).astype(np.uint32),
            feature_ids=np.concatenate([m.feature_ids for m in meshes]).astype(np.uint32),
        )


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1.0, n)


def _geodetic_up(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo, la = np.radians(lon), np.radians(lat)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def _ring_vertices(rings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct vertices of many closed rings: (xy (N, 2), ring index (N,)), in ring order.

    The closing vertex, vertices within a millimetre of their predecessor and trailing vertices
    within a millimetre of the first one are dropped (a zero-length wall has no normal)."""
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    if not len(coords):
        return coords.reshape(0, 2), ring
    first = np.r_[True, ring[1:] != ring[:-1]]
    last = np.r_[ring[1:] != ring[:-1], True]
    step = np.r_[np.inf, np.linalg.norm(np.diff(coords, axis=0), axis=1)]
    keep = ~last & (first | (step > _MIN_EDGE_M))
    xy, ring = coords[keep], ring[keep]
    start = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    # a ring that comes back to its start through points a hair apart: drop the tail, repeatedly
    while len(xy):
        end = np.r_[start[1:], len(xy)] - 1
        head = np.repeat(start, np.diff(np.r_[start, len(xy)]))
        tail = (np.arange(len(xy)) == np.repeat(end, np.diff(np.r_[start, len(xy)]))) & \
               (np.arange(len(xy)) != head) & (np.linalg.norm(xy - xy[head], axis=1) <= _MIN_EDGE_M)
        if not tail.any():
            break
        xy, ring = xy[~tail], ring[~tail]
        start = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    return xy, ring


def blocks(geoms: np.ndarray, bases: np.ndarray, tops: np.ndarray, features: np.ndarray, srid: int,
           frame: LocalFrame) -> Mesh:
    """The LoD1 blocks of many footprints at once: floor at ``bases``, flat roof at ``tops``, walls
    between; vertices carry ``features`` (one id per footprint).

    Holes (inner rings) become inner walls facing into the courtyard and are left open in roof
    and floor by the triangulation. The coordinate work runs once over every vertex of the batch;
    only the triangulation is done polygon by polygon.
    """
    polys, owner = shapely.get_parts(np.asarray(geoms, object), return_index=True)
    polygonal = shapely.get_type_id(polys) == 3
    # exterior counter-clockwise, holes clockwise (seen from above): walls then face outwards
    polys, owner = shapely.orient_polygons(polys[polygonal]), owner[polygonal]
    rings, poly_of_ring = shapely.get_rings(polys, return_index=True)
    is_exterior = np.r_[True, poly_of_ring[1:] != poly_of_ring[:-1]]
    xy, ring = _ring_vertices(rings)
    # rings of fewer than 3 vertices are dropped, and a polygon whose exterior goes goes entirely
    size = np.bincount(ring, minlength=len(rings))
    good_ring = size >= 3
    good_poly = np.zeros(len(polys), bool)
    good_poly[poly_of_ring[is_exterior & good_ring]] = True
    good_ring &= good_poly[poly_of_ring]
    keep = good_ring[ring]
    xy, ring = xy[keep], ring[keep]
    if not len(xy):
        return Mesh()
    poly = poly_of_ring[ring]
    owner_of_vertex = owner[poly]
    feature = np.asarray(features, np.uint32)[owner_of_vertex]
    base, top = np.asarray(bases, float)[owner_of_vertex], np.asarray(tops, float)[owner_of_vertex]

    n = len(xy)
    lon, lat = storage_to_lonlat(xy[:, 0], xy[:, 1], srid)
    ends = frame.to_gltf(lonlath_to_ecef(np.r_[lon, lon], np.r_[lat, lat], np.r_[base, top]))
    low, high = ends[:n], ends[n:]
    up = _unit(frame.vectors_to_gltf(_geodetic_up(lon, lat)))

    # roofs and floors: earcut per polygon (its rings are consecutive), on coordinates centred
    # on the polygon so that the triangulation keeps its precision
    ring_start = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    poly_start = ring_start[np.r_[True, poly[ring_start][1:] != poly[ring_start][:-1]]]
    poly_end = np.r_[poly_start[1:], n]
    # each polygon's vertices relative to its mean, and its rings' ends, found for all at once (a loop that
    # searched every ring end for each polygon was quadratic in the tile's size)
    counts = poly_end - poly_start
    local_all = xy - np.repeat(np.add.reduceat(xy, poly_start, axis=0) / counts[:, None], counts, axis=0)
    first_ring = np.searchsorted(ring_start, np.r_[poly_start, n])  # polygon k's rings: first_ring[k:k + 2]
    ends_all = (np.r_[ring_start[1:], n] - np.repeat(poly_start, np.diff(first_ring))).astype(np.uint32)
    triangulate = mapbox_earcut.triangulate_float64
    triangles = []
    for k, (s, e) in enumerate(zip(poly_start.tolist(), poly_end.tolist())):
        tri = np.asarray(triangulate(local_all[s:e], ends_all[first_ring[k]:first_ring[k + 1]]), np.int64)
        triangles.append(tri.reshape(-1, 3) + s)
    tri = np.vstack(triangles) if triangles else np.zeros((0, 3), np.int64)
    a, b, c = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    # slivers below a square centimetre are invisible and their winding does not survive
    # float32 positions; dropping them leaves no visible gap
    keep = np.abs(cross) > 2 * _MIN_AREA_M2
    tri, cross = tri[keep], cross[keep]
    tri[cross < 0] = tri[cross < 0][:, ::-1]  # counter-clockwise from above
    roof = Mesh(high, up, tri.astype(np.uint32), feature)
    floor = Mesh(low, -up, tri[:, ::-1].astype(np.uint32), feature)

    # walls: a quad per ring edge — low i0, low i1, high i1, high i0 — outward because the
    # exterior is counter-clockwise and the holes clockwise
    i0 = np.arange(n)
    i1 = i0 + 1
    ring_end = np.r_[ring_start[1:], n] - 1
    closing = np.isin(i0, ring_end)
    i1[closing] = np.repeat(ring_start, np.diff(np.r_[ring_start, n]))[closing]
    quad = np.stack([low[i0], low[i1], high[i1], high[i0]], axis=1)  # (E, 4, 3)
    normal = np.cross(quad[:, 1] - quad[:, 0], quad[:, 3] - quad[:, 0])
    ok = (np.linalg.norm(normal, axis=1) > 1e-9) & (top > base)
    quad, normal, wall_feature = quad[ok], _unit(normal[ok]), feature[ok]
    corner = (np.arange(len(quad)) * 4)[:, None]
    walls = Mesh(quad.reshape(-1, 3), np.repeat(normal, 4, axis=0),
                 np.concatenate([corner + [0, 1, 2], corner + [0, 2, 3]]).astype(np.uint32),
                 np.repeat(wall_feature, 4))
    return Mesh.concat([roof, floor, walls])


def tube(points: np.ndarray, radius: float, feature: int, srid: int, frame: LocalFrame, sides: int = 10) -> Mesh:
    """A closed tube of ``radius`` along a 3D polyline given in storage coordinates."""
    pts = np.asarray(points, float)
    if pts.shape[1] == 2:
        pts = np.column_stack([pts, np.zeros(len(pts))])
    p = frame.to_gltf(storage_to_ecef(pts, srid))
    keep = np.ones(len(p), bool)
    keep[1:] = np.linalg.norm(np.diff(p, axis=0), axis=1) > _MIN_EDGE_M
    p = p[keep]
    if len(p) < 2:
        return Mesh()
    d = _unit(np.diff(p, axis=0))
    t = np.vstack([d[:1], d[:-1] + d[1:], d[-1:]]) if len(d) > 1 else np.vstack([d, d])
    t = _unit(np.where(np.linalg.norm(t, axis=1, keepdims=True) < 1e-9, np.vstack([d, d[-1:]]), t))
    side = np.cross(t, [0.0, 1.0, 0.0])
    vertical = np.linalg.norm(side, axis=1) < 1e-6
    side[vertical] = np.cross(t[vertical], [1.0, 0.0, 0.0])
    side = _unit(side)
    normal = _unit(np.cross(side, t))
    theta = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring_dirs = (np.cos(theta)[None, :, None] * side[:, None, :]
                 + np.sin(theta)[None, :, None] * normal[:, None, :])  # (P, S, 3)
    verts = p[:, None, :] + radius * ring_dirs
    n_rings = len(p)
    i = np.arange(n_rings - 1)[:, None]
    j = np.arange(sides)[None, :]
    a, a1 = i * sides + j, i * sides + (j + 1) % sides
    b, b1 = a + sides, a1 + sides
    tris = np.concatenate([np.stack([a, a1, b1], -1).reshape(-1, 3), np.stack([a, b1, b], -1).reshape(-1, 3)])
    body = Mesh(verts.reshape(-1, 3), ring_dirs.reshape(-1, 3), tris.astype(np.uint32),
                np.full(n_rings * sides, feature, np.uint32))
    body = _outward(body)
    caps = [_cap(p[0], verts[0], -t[0], feature), _cap(p[-1], verts[-1], t[-1], feature)]
    return Mesh.concat([body, *caps])


def _cap(centre: np.ndarray, ring: np.ndarray, facing: np.ndarray, feature: int) -> Mesh:
    k = len(ring)
    positions = np.vstack([centre[None, :], ring])
    tris = np.stack([np.zeros(k, int), 1 + np.arange(k), 1 + (np.arange(k) + 1) % k], -1)
    mesh = Mesh(positions, np.repeat(_unit(facing)[None, :], k + 1, axis=0), tris.astype(np.uint32),
                np.full(k + 1, feature, np.uint32))
    return _outward(mesh)


def _outward(mesh: Mesh) -> Mesh:
    """Flip the winding where a triangle faces against its vertices' normals."""
    if mesh.empty:
        return mesh
    tri = mesh.triangles.astype(np.int64)
    a, b, c = (mesh.positions[tri[:, k]] for k in range(3))
    face = np.cross(b - a, c - a)
    wrong = np.einsum("ij,ij->i", face, mesh.normals[tri].sum(axis=1)) < 0
    tri[wrong] = tri[wrong][:, ::-1]
    mesh.triangles = tri.astype(np.uint32)
    return mesh


def marker(width: float = 0.8, height: float = 1.6, sides: int = 6) -> Mesh:
    """A map pin: a downward pyramid whose tip marks the part's point, capped on top (flat shaded)."""
    theta = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    rim = np.column_stack([width / 2 * np.cos(theta), np.full(sides, height), -width / 2 * np.sin(theta)])
    tip, top = np.array([0.0, 0.0, 0.0]), np.array([0.0, height, 0.0])
    faces = []
    for k in range(sides):
        r0, r1 = rim[k], rim[(k + 1) % sides]
        faces.append((tip, r1, r0))
        faces.append((top, r0, r1))
    positions = np.array([v for f in faces for v in f])
    tri = np.arange(len(positions)).reshape(-1, 3)
    a, b, c = positions[tri[:, 0]], positions[tri[:, 1]], positions[tri[:, 2]]
    face_n = _unit(np.cross(b - a, c - a))
    centre = np.array([0.0, height * 0.6, 0.0])
    # faces whose normal points towards the pin's inside are wound the wrong way round
    inward = np.einsum("ij,ij->i", face_n, (a + b + c) / 3 - centre) < 0
    tri[inward] = tri[inward][:, ::-1]
    face_n[inward] *= -1
    return Mesh(positions, np.repeat(face_n, 3, axis=0), tri.astype(np.uint32), np.zeros(len(positions), np.uint32))


def linestring_points(geom) -> list[np.ndarray]:
    """The (N, 3) vertex arrays of a (multi)linestring."""
    parts = geom.geoms if hasattr(geom, "geoms") else [geom]
    return [np.asarray(shapely.get_coordinates(g, include_z=True)) for g in parts if not g.is_empty]
