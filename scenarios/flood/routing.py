"""Where the pump trucks are, and which are nearest by road.

Positions: a truck's GPS unit is an IoT device measuring ``lon`` and ``lat`` (WGS84 degrees); its
newest fix is what the readings intake keeps in ``iot_latest`` — no second intake. A fix outside the
base's city extent is no position (a GPS unit that lost its fix, or a test signal), and the truck
is left out with that reason.

Road distance: the truck and the ponding point are each snapped to the nearest point of the nearest
edge of the network (``flood_road_edges``; the straight walk to it counts), and the network
distance between the two snapped points is the shortest way through either end of each edge, found
by one ``pgr_dijkstraCost`` many-to-many call (or along the edge when both lie on the same one).
Candidates are taken nearest first by straight line and widened until the k-th road distance is no
longer than the straight distance of the next candidate (a road is never shorter than the straight
line), so the answer is exact without routing to every truck. Only the edges within a radius of the
point are routed over (pgRouting reads its whole edge query on every call, and a city's network is
large): a way no longer than the radius never leaves it, so road distances up to the radius are
exact, and the radius doubles until the k-th is within it (or covers the whole network). Without roads, or without pgRouting,
the straight-line order is the answer, and ``method`` says so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import stored_settings
from cim.errors import ParameterError

ROAD = "road_network"
STRAIGHT = "straight_line"
#: how many straight-line candidates are routed at first, as a multiple of k
CANDIDATES_PER_K = 3
#: the least radius around the point whose edges are routed over (a city's network is read only near the point)
MIN_RADIUS_M = 3000.0


@dataclass
class Truck:
    code: str
    name: str
    kind: str
    team: str | None
    capacity_m3h: float | None
    device_id: str
    lon: float
    lat: float
    fix_time: Any
    x: float
    y: float
    straight_m: float
    road_m: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fix_time"] = self.fix_time.isoformat() if self.fix_time is not None else None
        d["straight_m"] = round(self.straight_m, 1)
        d["road_m"] = None if self.road_m is None else round(self.road_m, 1)
        return d


def positions_sql(srid: int) -> str:
    """Resources with their newest plausible GPS fix, as storage coordinates (``:minlon`` … bind the
    city extent)."""
    return f"""SELECT r.code, r.name, r.kind, r.team, r.capacity_m3h, r.device_id, r.status,
            lo.value AS lon, la.value AS lat, least(lo.time, la.time) AS fix_time,
            ST_Transform(ST_SetSRID(ST_MakePoint(lo.value, la.value), 4326), {srid}) AS pos
        FROM flood_resources r
        JOIN iot_latest lo ON lo.device_id = r.device_id AND lo.quantity = 'lon'
        JOIN iot_latest la ON la.device_id = r.device_id AND la.quantity = 'lat'
        WHERE lo.value BETWEEN :minlon AND :maxlon AND la.value BETWEEN :minlat AND :maxlat"""


def extent_params(conn: Connection) -> dict[str, float]:
    settings = stored_settings(conn)
    minlon, minlat, maxlon, maxlat = settings.city_bbox_wgs84
    return {"minlon": minlon, "minlat": minlat, "maxlon": maxlon, "maxlat": maxlat}


def resources(conn: Connection) -> list[dict[str, Any]]:
    """Every truck and team, its status and its position (None when it has no plausible fix)."""
    srid = stored_settings(conn).srid
    rows = conn.execute(sa.text(f"""SELECT r.code, r.name, r.kind, r.team, r.capacity_m3h, r.device_id, r.status,
            p.lon, p.lat, p.fix_time FROM flood_resources r
        LEFT JOIN ({positions_sql(srid)}) p USING (code) ORDER BY r.code"""), extent_params(conn)).mappings()
    return [dict(r) for r in rows]


def routing_available(conn: Connection) -> tuple[bool, str]:
    """Whether road distances can be computed here, and why not."""
    # (to_regproc is NULL for an overloaded name, so ask pg_proc)
    if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'pgr_dijkstracost')")).scalar():
        return False, "pgRouting is not installed in this database (Debian: postgresql-15-pgrouting)"
    if not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM flood_road_edges)")).scalar():
        return False, "no roads are loaded (cim scenarios flood load roads FILE)"
    return True, "pgRouting over the loaded roads"


def _candidates(conn: Connection, srid: int, x: float, y: float, limit: int | None, kind: str) -> list[Truck]:
    rows = conn.execute(sa.text(f"""SELECT p.*, ST_X(p.pos) AS px, ST_Y(p.pos) AS py,
            ST_Distance(p.pos, ST_SetSRID(ST_MakePoint(:x, :y), {srid})) AS d
        FROM ({positions_sql(srid)}) p WHERE p.status = 'available' AND p.kind = :kind
        ORDER BY d, p.code LIMIT :limit"""), {**extent_params(conn), "x": x, "y": y, "limit": limit, "kind": kind})
    return [Truck(r.code, r.name, r.kind, r.team, r.capacity_m3h, r.device_id, r.lon, r.lat, r.fix_time, r.px, r.py,
                  float(r.d)) for r in rows]


@dataclass(frozen=True)
class _Snap:
    edge: int
    source: int
    target: int
    length: float
    fraction: float
    access: float  # straight walk from the point to the edge

    def ends(self) -> tuple[tuple[int, float], tuple[int, float]]:
        """(vertex, distance along the edge to it) for both ends."""
        return (self.source, self.fraction * self.length), (self.target, (1.0 - self.fraction) * self.length)


def _snap(conn: Connection, srid: int, points: list[tuple[float, float]]) -> list[_Snap]:
    rows = conn.execute(sa.text(f"""SELECT q.i, e.id, e.source, e.target, e.cost,
            ST_LineLocatePoint(e.geom, q.p) AS f, ST_Distance(e.geom, q.p) AS d
        FROM (SELECT i, ST_SetSRID(ST_MakePoint(x, y), {srid}) AS p
              FROM unnest(CAST(:xs AS float8[]), CAST(:ys AS float8[])) WITH ORDINALITY AS t(x, y, i)) q
        CROSS JOIN LATERAL (SELECT id, source, target, cost, geom FROM flood_road_edges
                            ORDER BY geom <-> q.p LIMIT 1) e ORDER BY q.i"""),
                        {"xs": [p[0] for p in points], "ys": [p[1] for p in points]}).all()
    return [_Snap(r.id, r.source, r.target, r.cost, r.f, r.d) for r in rows]


def _road_distances(conn: Connection, srid: int, x: float, y: float, trucks: list[Truck],
                    radius: float | None) -> None:
    """Set ``road_m`` of each truck over the edges within ``radius`` of the point (all when None);
    None when those edges do not join it to the point."""
    snaps = _snap(conn, srid, [(x, y)] + [(t.x, t.y) for t in trucks])
    goal, starts = snaps[0], snaps[1:]
    start_vids = sorted({v for s in starts for v, _ in s.ends()})
    end_vids = sorted({v for v, _ in goal.ends()})
    edges = "SELECT id, source, target, cost, reverse_cost FROM flood_road_edges"
    if radius is not None:  # numbers only: formatted from floats
        edges += (f" WHERE ST_DWithin(geom, ST_SetSRID(ST_MakePoint({float(x)!r}, {float(y)!r}), {int(srid)}), "
                  f"{float(radius)!r})")
    # undirected: a pump truck may drive either way in an emergency
    rows = conn.execute(sa.text("""SELECT start_vid, end_vid, agg_cost FROM pgr_dijkstraCost(
            :edges, CAST(:starts AS bigint[]), CAST(:ends AS bigint[]), false)"""),
                        {"edges": edges, "starts": start_vids, "ends": end_vids}).all()
    network = {(int(a), int(b)): float(c) for a, b, c in rows}
    for v in set(start_vids) & set(end_vids):
        network[(v, v)] = 0.0
    for truck, snap in zip(trucks, starts):
        best = math.inf
        if snap.edge == goal.edge:
            best = abs(snap.fraction - goal.fraction) * snap.length
        for a, da in snap.ends():
            for b, db in goal.ends():
                through = network.get((a, b))
                if through is not None:
                    best = min(best, da + through + db)
        truck.road_m = None if math.isinf(best) else best + snap.access + goal.access


def nearest_trucks(conn: Connection, x: float, y: float, k: int = 5, kind: str = "pump_truck",
                   min_radius_m: float = MIN_RADIUS_M) -> dict[str, Any]:
    """The ``k`` nearest available resources of ``kind`` to the storage point (x, y): by road when the
    base can route, else by straight line; the answer says which (``method``) and why. Routing reads
    only the edges within a radius of the point (at least ``min_radius_m``, twice the farthest
    candidate), widened until the answer is exact."""
    if kind not in ("pump_truck", "team"):
        raise ParameterError("kind", f"kind must be pump_truck or team, got {kind!r}")
    if not 1 <= k <= 50:
        raise ParameterError("k", f"k must be between 1 and 50, got {k}")
    srid = stored_settings(conn).srid
    can_route, why = routing_available(conn)
    if not can_route:
        trucks = _candidates(conn, srid, x, y, k, kind)
        return {"method": STRAIGHT, "why": why, "trucks": [t.as_dict() for t in trucks]}
    limit, reach, radius = max(k * CANDIDATES_PER_K, k + 1), None, float(min_radius_m)
    while True:
        candidates = _candidates(conn, srid, x, y, limit + 1, kind)
        routed, next_one = candidates[:limit], candidates[limit] if len(candidates) > limit else None
        radius = max(radius, 2.0 * max((t.straight_m for t in routed), default=0.0))
        whole = reach is not None and radius >= reach
        if routed:
            _road_distances(conn, srid, x, y, routed, None if whole else radius)
        # a way no longer than the radius stays inside it, so it was found; a longer one may not have been
        exact = [t for t in routed if t.road_m is not None and (whole or t.road_m <= radius)]
        reachable = sorted(exact, key=lambda t: (t.road_m, t.code))
        kth = reachable[k - 1].road_m if len(reachable) >= k else math.inf
        if kth <= min(next_one.straight_m if next_one else math.inf, math.inf if whole else radius):
            break
        if next_one is None and whole:
            break
        if reach is None:  # how far the network reaches from here: asked once, when the first try is short
            reach = _reach(conn, srid, x, y)
            if radius >= reach:
                continue  # the radius held the whole network: route over it, every answer then final
        if next_one is not None and kth > next_one.straight_m:
            limit *= 2
        if not whole and kth > radius:
            radius *= 2.0
    unreachable = [t for t in routed if t.road_m is None] if whole else []
    chosen = (reachable + sorted(unreachable, key=lambda t: (t.straight_m, t.code)))[:k]
    return {"method": ROAD, "why": why, "trucks": [t.as_dict() for t in chosen],
            "unreachable_by_road": [t.code for t in unreachable]}


def _reach(conn: Connection, srid: int, x: float, y: float) -> float:
    """The farthest the road network reaches from (x, y): beyond it, a wider search finds nothing new."""
    return float(conn.execute(sa.text(f"""SELECT ST_MaxDistance(ST_SetSRID(ST_Extent(geom)::geometry, {srid}),
            ST_SetSRID(ST_MakePoint(:x, :y), {srid})) FROM flood_road_vertices"""), {"x": x, "y": y}).scalar() or 0.0)
