"""The routable road network: the loaded road lines noded where they cross or touch, each piece an
edge between two vertices with its length as cost both ways (pgRouting's edge table shape:
``id, source, target, cost, reverse_cost``). Rebuilt whenever the roads are loaded."""
from __future__ import annotations

from typing import Any

import shapely
import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: end points closer than this are one vertex (metres; the noding itself is exact)
VERTEX_GRID_M = 0.01


def build_network(conn: Connection) -> dict[str, Any]:
    """Node ``flood_roads`` into ``flood_road_edges`` and ``flood_road_vertices``; returns counts."""
    conn.execute(sa.text("DELETE FROM flood_road_edges"))
    conn.execute(sa.text("DELETE FROM flood_road_vertices"))
    rows = conn.execute(sa.text("SELECT id, ST_AsBinary(geom), ST_SRID(geom) FROM flood_roads ORDER BY id")).all()
    if not rows:
        return {"edges": 0, "vertices": 0, "components": 0}
    srid = rows[0][2]
    ids = [r[0] for r in rows]
    lines = shapely.from_wkb([bytes(r[1]) for r in rows])
    # unary union nodes the lines at every crossing and shared point
    noded = shapely.get_parts(shapely.union_all(lines))
    tree = shapely.STRtree(lines)
    mids = shapely.line_interpolate_point(noded, 0.5, normalized=True)
    nearest = tree.nearest(mids)
    vertices: dict[tuple[int, int], int] = {}
    vertex_rows, edge_rows = [], []

    def vertex(x: float, y: float) -> int:
        key = (round(x / VERTEX_GRID_M), round(y / VERTEX_GRID_M))
        if key not in vertices:
            vertices[key] = len(vertices) + 1
            vertex_rows.append({"id": vertices[key], "x": float(x), "y": float(y), "srid": srid})
        return vertices[key]

    for n, (piece, road) in enumerate(zip(noded, nearest), start=1):
        length = float(piece.length)
        if length <= 0:
            continue
        coords = shapely.get_coordinates(piece)
        source, target = vertex(*coords[0]), vertex(*coords[-1])
        edge_rows.append({"id": n, "road_id": ids[int(road)], "source": source, "target": target, "cost": length,
                          "wkb": piece.wkb, "srid": srid})
    conn.execute(sa.text("INSERT INTO flood_road_vertices (id, geom) VALUES (:id, ST_SetSRID(ST_MakePoint(:x, :y), "
                         ":srid))"), vertex_rows)
    conn.execute(sa.text("INSERT INTO flood_road_edges (id, road_id, source, target, cost, reverse_cost, geom) "
                         "VALUES (:id, :road_id, :source, :target, :cost, :cost, "
                         "ST_SetSRID(ST_GeomFromWKB(:wkb), :srid))"), edge_rows)
    conn.execute(sa.text("ANALYZE flood_road_edges"))
    conn.execute(sa.text("ANALYZE flood_road_vertices"))
    return {"edges": len(edge_rows), "vertices": len(vertex_rows), "components": _components(edge_rows)}


def _components(edges: list[dict[str, Any]]) -> int:
    """Connected pieces of the network (a road that meets no other is a piece of its own)."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e in edges:
        parent[find(e["source"])] = find(e["target"])
    return len({find(v) for v in parent})
