"""Geocoding cascade: free text → a point, how sure we are, and who owns the place.

For each query, in this order (the first that answers wins):

``door``          the door, or lane + building, is an entry of the gazetteer (score 1.0; 0.9 when
                  only a variant was found, e.g. 150号 for 150-1号 or the lane for a building
                  it lacks; 0.95 for a building found through its compound, or an address alias;
                  0.8 for the centroid of a named compound)
``interpolated``  the number lies between two known numbers on the same road, same side
                  (odd/even): linear interpolation between them (0.85, less for wide gaps; 0.65
                  when the number lies a little beyond the known ones and the nearest is used)
``road``          the road's middle address: the one nearest the median number (0.6; 0.7 for
                  the crossing of two roads; 0.55 at the end of the known numbers when the number
                  lies far beyond them)
``community`` / ``street`` / ``district``  ST_PointOnSurface of the current polygon (0.5/0.4/0.3)
``none``          nothing of the gazetteer recognised, an address of another city, or empty.

A district the query names (or that its street, community or road implies) is a hard filter:
candidates of other districts are never considered, so the answer never lies in another district.
When several districts remain (a road in two districts, no district written) the answer is
``ambiguous``, its score is halved and every district's candidate is listed.

Speed: the dictionary, the area centroids and the road indexes are built once per process and
database, keyed by the layer versions (a load bumps them, so answers refresh). A batch costs a
handful of statements per chunk whatever its size: the layer versions, the addresses of the roads
not yet cached (one statement), address aliases of unmatched queries, and the grid lookup
(:func:`cim.grid.lookup_points`, one statement) — matching itself is Python over cached indexes.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import BaseSettings, NotInitialisedError, stored_settings
from cim.config import settings as deployment_settings
from cim.crs import CrsSpec, resolve_crs, transform_coords
from cim.errors import ParameterError
from cim.gazetteer.base_dictionary import dictionary_from_base, door_int
from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.parse import ParsedAddress, parse_address
from cim.grid import MAX_POINTS, Area, GridAnswer, lookup_points, responsibility_for

MatchLevel: TypeAlias = Literal["door", "interpolated", "road", "community", "street", "district", "none"]
MATCH_LEVELS: tuple[str, ...] = ("door", "interpolated", "road", "community", "street", "district", "none")
_RANK = {level: i for i, level in enumerate(MATCH_LEVELS)}
#: levels whose point is an address point (or lies between address points) of the gazetteer
POINT_LEVELS = frozenset({"door", "interpolated", "road"})

#: longest query accepted (a case text pasted whole is not an address)
MAX_QUERY_CHARS = 500
# how many roads' address indexes and parsed queries are kept in memory per database: deployment
# settings CIM_GEOCODE_ROAD_CACHE and CIM_GEOCODE_PARSE_CACHE, read when a gazetteer is built
# A crossing's two roads must come this close (closest pair of their addresses) to be placed.
_CROSSING_MAX_GAP_M = 400.0
# A number at most this far past the last known one of its side is placed at that one (about
# 100 m at the usual 2 m per number); further out it is only known to be on the road.
_MAX_BEYOND = 50
_LAYER_TABLES = ("districts", "streets", "communities", "grids", "addresses")


# --- the gazetteer in memory ------------------------------------------------------------------

class Entry(NamedTuple):
    """One current row of ``addresses`` (x, y in the storage CRS)."""

    feature_id: str
    address_code: str | None
    standard_address: str | None
    road: str | None
    door_number: str | None
    lane: str | None
    building: str | None
    unit: str | None
    floor: str | None
    room: str | None
    compound: str | None
    district_code: str | None
    street_code: str | None
    community_code: str | None
    grid_code: str | None
    x: float
    y: float


class AreaPoint(NamedTuple):
    level: str  # district | street | community
    code: str
    name: str
    parent: str | None  # street: its district code; community: its street code
    x: float
    y: float


def _mean(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    unique = set(points)
    return (sum(p[0] for p in unique) / len(unique), sum(p[1] for p in unique) / len(unique))


class AddressGroup:
    """The current addresses of one road (or one compound) in one district, indexed for matching.

    Lanes (弄) take their numbers from the road's door sequence, so both feed the odd/even number
    lines used for interpolation: a door at its point, a lane at the centroid of its buildings.
    """

    def __init__(self, name: str, district_code: str | None, entries: list[Entry]) -> None:
        self.name, self.district_code, self.entries = name, district_code, entries
        self.doors: dict[str, list[Entry]] = defaultdict(list)
        self.lanes: dict[str, list[Entry]] = defaultdict(list)
        self.buildings: dict[tuple[str, str], list[Entry]] = defaultdict(list)  # (lane, building)
        self.compounds: dict[str, list[Entry]] = defaultdict(list)
        numbered: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for e in entries:
            if e.lane:
                self.lanes[e.lane].append(e)
                if e.building:
                    self.buildings[(e.lane, e.building)].append(e)
                number = door_int(e.lane)
            else:
                if e.door_number:
                    self.doors[e.door_number].append(e)
                number = door_int(e.door_number)
            if e.compound:
                self.compounds[e.compound].append(e)
            if number is not None:
                numbered[number].append((e.x, e.y))
        self.numbers = {n: _mean(pts) for n, pts in numbered.items()}
        self.sides: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for parity in (0, 1):
            ns = sorted(n for n in self.numbers if n % 2 == parity)
            if ns:
                self.sides[parity] = (np.array(ns), np.array([self.numbers[n] for n in ns]))

    def interpolate(self, number: int) -> Match | None:
        """Place ``number`` between the nearest known numbers of its side of the road."""
        side = self.sides.get(number % 2)
        if side is None:
            return None
        ns, pts = side
        which = "even" if number % 2 == 0 else "odd"
        i = int(np.searchsorted(ns, number))
        if i < len(ns) and ns[i] == number:
            x, y = pts[i]
            return Match("interpolated", 0.85, float(x), float(y), self.district_code,
                         note=f"number {number} is known on {self.name} only as another kind (door/lane)")
        if 0 < i < len(ns):
            lo, hi = int(ns[i - 1]), int(ns[i])
            t = (number - lo) / (hi - lo)
            (x0, y0), (x1, y1) = pts[i - 1], pts[i]
            gap = math.hypot(x1 - x0, y1 - y0)
            nearer = pts[i - 1] if t <= 0.5 else pts[i]
            return Match("interpolated", round(0.85 - min(0.15, gap / 2000.0), 3),
                         float(x0 + t * (x1 - x0)), float(y0 + t * (y1 - y0)), self.district_code,
                         note=f"interpolated between {lo} and {hi} on the {which} side of {self.name}",
                         anchor=(float(nearer[0]), float(nearer[1])))
        end = 0 if i == 0 else len(ns) - 1
        x, y = pts[end]
        last, beyond = int(ns[end]), abs(number - int(ns[end]))
        if beyond > _MAX_BEYOND:
            # Far past the known part of the road: only the road is really known.
            return Match("road", 0.55, float(x), float(y), self.district_code,
                         note=f"number {number} lies far beyond the known {which} numbers of {self.name} "
                              f"(last {last}); placed at that end of the road")
        return Match("interpolated", 0.65, float(x), float(y), self.district_code,
                     note=f"number {number} lies beyond the known {which} numbers of {self.name}; "
                          f"placed at the nearest, {last}")

    def middle(self) -> Match:
        """Road level: a street-front address about the middle of the road — the one nearest the
        position of the median number (or of the centroid, when nothing is numbered)."""
        if self.numbers:
            ns = sorted(self.numbers)
            cx, cy = self.numbers[ns[len(ns) // 2]]
        else:
            cx, cy = _mean((e.x, e.y) for e in self.entries)
        fronts = [e for e in self.entries if not e.lane] or self.entries
        nearest = min(fronts, key=lambda e: ((e.x - cx) ** 2 + (e.y - cy) ** 2, e.feature_id))
        return Match("road", 0.6, nearest.x, nearest.y, self.district_code, note=f"middle of {self.name}")

    def points(self) -> np.ndarray:
        return np.array(sorted({(e.x, e.y) for e in self.entries}))


def _pick(entries: list[Entry], p: ParsedAddress) -> tuple[Entry, bool]:
    """The entry for the query's unit/floor/room if the gazetteer has it (exact), else the
    building's own entry (the one with the fewest of them)."""
    wanted = (p.unit, p.floor if not p.room else None, p.room)
    for e in entries:
        if (e.unit, e.floor if not e.room else None, e.room) == wanted:
            return e, True
    best = min(entries, key=lambda e: (bool(e.room), bool(e.floor), bool(e.unit), e.standard_address or ""))
    return best, False


@dataclass
class Match:
    """One way of placing a query (x, y in the storage CRS)."""

    level: str
    score: float
    x: float | None = None
    y: float | None = None
    district_code: str | None = None
    entry: Entry | None = None
    exact: bool = False  # the entry is the query itself, down to the room
    note: str | None = None
    anchor: tuple[float, float] | None = None  # an address point to fall back on (district check)
    area: AreaPoint | None = None


def _door(entries: list[Entry], p: ParsedAddress, score: float, note: str | None = None) -> Match:
    entry, exact = _pick(entries, p)
    return Match("door", score, entry.x, entry.y, entry.district_code, entry=entry, exact=exact, note=note)


def _match_group(grp: AddressGroup, p: ParsedAddress) -> Match:
    """The best placement of ``p`` on one road (or compound) of one district."""
    if p.lane:
        if p.building and (hit := grp.buildings.get((p.lane, p.building))):
            return _door(hit, p, 1.0)
        if lane := grp.lanes.get(p.lane):
            x, y = _mean((e.x, e.y) for e in lane)
            what = f"building {p.building} is not recorded in" if p.building else "centroid of"
            return Match("door", 0.9, x, y, grp.district_code, note=f"{what} lane {p.lane} of {grp.name}")
        number = door_int(p.lane)
        if number is not None and (m := grp.interpolate(number)):
            return m
        return _compound_or_road(grp, p)
    if p.door_number:
        if hit := grp.doors.get(p.door_number):
            entries = [e for e in hit if e.building == p.building] if p.building else hit
            return _door(entries or hit, p, 1.0 if entries else 0.9,
                         None if entries else f"building {p.building} is not recorded at door {p.door_number}")
        number = door_int(p.door_number)
        if number is not None and str(number) != p.door_number and (hit := grp.doors.get(str(number))):
            return _door(hit, p, 0.9, f"door {p.door_number} is not recorded; door {number} used")
        if p.compound in grp.compounds:
            return _compound_or_road(grp, p)
        if number is not None and (m := grp.interpolate(number)):
            return m
    return _compound_or_road(grp, p)


def _compound_or_road(grp: AddressGroup, p: ParsedAddress) -> Match:
    entries = grp.compounds.get(p.compound or "")
    if entries:
        # Inside a compound "5号" is a building, whatever lane it stands in.
        building = p.building or (p.door_number if not p.lane else None)
        hit = [e for e in entries if building and e.building == building]
        if hit:
            return _door(hit, p, 0.95, f"building {building} of {p.compound}")
        x, y = _mean((e.x, e.y) for e in entries)
        return Match("door", 0.8, x, y, grp.district_code, note=f"centroid of {p.compound}")
    return grp.middle()


# --- per-database state -----------------------------------------------------------------------

_ADDRESS_COLUMNS = ("feature_id::text, address_code, standard_address, road, door_number, lane, building_no, "
                    "unit, floor, room, compound, district_code, street_code, community_code, grid_code, "
                    "ST_X(geom), ST_Y(geom)")
_ROADS_SQL = (f"SELECT {_ADDRESS_COLUMNS} FROM addresses "
              "WHERE valid_to IS NULL AND geom IS NOT NULL AND road = ANY(CAST(:roads AS text[]))")
_ALIASES_SQL = (f"SELECT al.alias, {_ADDRESS_COLUMNS} FROM address_aliases al "
                "JOIN addresses ON addresses.feature_id = al.address_feature_id "
                "WHERE addresses.valid_to IS NULL AND addresses.geom IS NOT NULL "
                "AND al.alias = ANY(CAST(:aliases AS text[]))")
_AREAS_SQL = """
SELECT 'district', code, name, NULL, ST_X(p), ST_Y(p)
FROM (SELECT code, name, ST_PointOnSurface(geom) AS p FROM districts WHERE valid_to IS NULL) AS a
UNION ALL
SELECT 'street', code, name, district_code, ST_X(p), ST_Y(p)
FROM (SELECT code, name, district_code, ST_PointOnSurface(geom) AS p FROM streets WHERE valid_to IS NULL) AS a
UNION ALL
SELECT 'community', code, name, street_code, ST_X(p), ST_Y(p)
FROM (SELECT code, name, street_code, ST_PointOnSurface(geom) AS p FROM communities WHERE valid_to IS NULL) AS a
"""


def _layer_versions(conn: Connection) -> tuple[tuple[str, int, Any], ...]:
    try:
        rows = conn.execute(sa.text("SELECT table_name, version, updated_at FROM layers "
                                    "WHERE table_name = ANY(:t) ORDER BY table_name"), {"t": list(_LAYER_TABLES)}).all()
    except sa.exc.ProgrammingError:
        conn.rollback()
        raise NotInitialisedError() from None
    return tuple((r[0], int(r[1]), r[2]) for r in rows)


class Roads:
    """The road indexes one chunk of queries needs, per road and district; a compound's addresses
    are gathered from the roads it lies on."""

    def __init__(self, roads: dict[str, dict[str | None, AddressGroup]], compound_roads: dict[str, set[str]]) -> None:
        self._roads, self._compound_roads = roads, compound_roads
        self._compounds: dict[str, dict[str | None, AddressGroup]] = {}

    def road(self, name: str) -> dict[str | None, AddressGroup]:
        return self._roads.get(name, {})

    def compound(self, name: str) -> dict[str | None, AddressGroup]:
        found = self._compounds.get(name)
        if found is None:
            entries: dict[str | None, list[Entry]] = defaultdict(list)
            for road in sorted(self._compound_roads.get(name, ())):
                for dc, group in self._roads.get(road, {}).items():
                    entries[dc] += group.compounds.get(name, [])
            found = self._compounds[name] = {dc: AddressGroup(name, dc, es) for dc, es in entries.items() if es}
        return found


class Gazetteer:
    """Everything the cascade needs from one database at one set of layer versions."""

    def __init__(self, conn: Connection, versions: tuple) -> None:
        settings = stored_settings(conn)
        if settings is None:
            raise NotInitialisedError()
        self.versions = versions
        self.settings: BaseSettings = settings
        # An address's stored codes were assigned at its load by the grid lookup's own rule; they
        # still hold unless an administrative or grid layer was loaded since.
        updated = {name: at for name, _, at in versions}
        admin = [updated.get(t) for t in _LAYER_TABLES if t != "addresses"]
        self.entry_codes_current = updated.get("addresses") is not None and all(
            at is None or at <= updated["addresses"] for at in admin)
        self.dictionary: AddressDictionary = dictionary_from_base(conn)
        self.areas: dict[tuple[str, str], AreaPoint] = {}
        for row in conn.execute(sa.text(_AREAS_SQL)):
            area = AreaPoint(row[0], row[1], row[2], row[3], float(row[4]), float(row[5]))
            self.areas.setdefault((area.level, area.code), area)
        self.community_grids: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
        self.grid_names: dict[str, str | None] = {}
        for code, grid_code, name in conn.execute(sa.text(
                "SELECT community_code, grid_code, name FROM grids WHERE valid_to IS NULL ORDER BY grid_code")):
            self.grid_names.setdefault(grid_code, name)
            if code is not None:
                self.community_grids[code].append((grid_code, name))
        # compound -> roads it has addresses on, so compounds are fetched through the road index
        self.compound_roads: dict[str, set[str]] = defaultdict(set)
        for compound, road in conn.execute(sa.text(
                "SELECT DISTINCT compound, road FROM addresses "
                "WHERE valid_to IS NULL AND compound IS NOT NULL AND road IS NOT NULL")):
            self.compound_roads[compound].add(road)
        self._roads: OrderedDict[str, dict[str | None, AddressGroup]] = OrderedDict()
        self._parses: dict[str, ParsedAddress] = {}
        deployment = deployment_settings()
        self._road_cache_size, self._parse_cache_size = deployment.geocode_road_cache, deployment.geocode_parse_cache
        self._lock = threading.Lock()

    # parse -----------------------------------------------------------------
    def parse(self, text: str) -> ParsedAddress:
        """Parse with this city's dictionary; results are cached and must not be modified."""
        found = self._parses.get(text)
        if found is None:
            found = parse_address(text, self.dictionary)
            if len(self._parses) >= self._parse_cache_size:
                self._parses.clear()
            self._parses[text] = found
        return found

    # road indexes ----------------------------------------------------------
    def load_roads(self, conn: Connection, roads: Iterable[str]) -> Roads:
        """The indexes of ``roads``: cached ones, and the others fetched in one statement. The
        returned view holds them for the chunk even if the cache evicts them meanwhile."""
        wanted = {r for r in roads if r}
        with self._lock:
            found = {r: self._roads[r] for r in wanted if r in self._roads}
        missing = sorted(wanted - found.keys())
        if missing:
            by_road: dict[str, dict[str | None, list[Entry]]] = {r: defaultdict(list) for r in missing}
            for row in conn.execute(sa.text(_ROADS_SQL), {"roads": missing}):
                entry = _entry(row)
                by_road[entry.road][entry.district_code].append(entry)
            for road, districts in by_road.items():
                found[road] = {dc: AddressGroup(road, dc, es) for dc, es in districts.items()}
        with self._lock:
            for road, groups in found.items():
                self._roads[road] = groups
                self._roads.move_to_end(road)
            while len(self._roads) > self._road_cache_size:
                self._roads.popitem(last=False)
        return Roads(found, self.compound_roads)

    def roads_needed(self, p: ParsedAddress) -> set[str]:
        d, roads = self.dictionary, set()
        for road in (p.road, p.second_road):
            if road in d.roads:
                roads.add(road)
        if p.compound in self.compound_roads:
            roads |= self.compound_roads[p.compound]
        return roads

    # areas -----------------------------------------------------------------
    def district_of(self, area: AreaPoint) -> str | None:
        if area.level == "district":
            return area.code
        parent = self.areas.get(("street", area.parent or "")) if area.level == "community" else None
        if area.level == "community":
            return parent.parent if parent else None
        return area.parent

    def _area(self, level: str, code: str | None) -> Area | None:
        if code is None:
            return None
        if level == "grid":
            return Area(code, self.grid_names.get(code))
        found = self.areas.get((level, code))
        return Area(code, found.name if found else None)

    def area_codes(self, area: AreaPoint) -> tuple[str | None, str | None, str | None, str | None]:
        """(district, street, community, grid) codes of an area-level answer; the grid only when
        the community has just one."""
        codes: dict[str, str | None] = {"district": None, "street": None, "community": None}
        current: AreaPoint | None = area
        while current is not None:
            codes[current.level] = current.code
            up = {"community": "street", "street": "district"}.get(current.level)
            current = self.areas.get((up, current.parent or "")) if up else None
        grids = self.community_grids.get(area.code, []) if area.level == "community" else []
        return codes["district"], codes["street"], codes["community"], grids[0][0] if len(grids) == 1 else None

    def answer_from_codes(self, codes: tuple[str | None, str | None, str | None, str | None],
                          responsibility: tuple = ()) -> GridAnswer:
        district, street, community, grid = codes
        return GridAnswer(district=self._area("district", district), street=self._area("street", street),
                          community=self._area("community", community), grid=self._area("grid", grid),
                          responsibility=responsibility)


ENTRY_COLUMNS = len(Entry._fields)


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(*row[:ENTRY_COLUMNS - 2], float(row[ENTRY_COLUMNS - 2]), float(row[ENTRY_COLUMNS - 1]))


_STATE: dict[str, Gazetteer] = {}
_STATE_LOCK = threading.Lock()


def gazetteer_for(conn: Connection) -> Gazetteer:
    """This database's gazetteer, rebuilt when a load has bumped one of its layers' versions."""
    versions = _layer_versions(conn)
    key = conn.engine.url.render_as_string(hide_password=True)
    with _STATE_LOCK:
        found = _STATE.get(key)
    if found is not None and found.versions == versions:
        return found
    built = Gazetteer(conn, versions)
    with _STATE_LOCK:
        _STATE[key] = built
    return built


# --- answers ----------------------------------------------------------------------------------

@dataclass
class Candidate:
    """Where the query would be in one of the districts it may mean."""

    district_code: str | None
    district_name: str | None
    match_level: str
    score: float
    x: float | None
    y: float | None
    standard_address: str | None

    def to_dict(self, geographic: bool) -> dict[str, Any]:
        return {"district": {"code": self.district_code, "name": self.district_name},
                "match_level": self.match_level, "score": self.score, **_xy(self.x, self.y, geographic),
                "standard_address": self.standard_address}


@dataclass
class GeocodeResult:
    """The answer to one query; x, y are in ``crs`` (lon/lat for a geographic one)."""

    query: str
    match_level: str
    score: float
    crs: str
    x: float | None = None
    y: float | None = None
    geographic: bool = True
    ambiguous: bool = False
    reason: str | None = None  # why the answer is not a door: in words
    standard_address: str | None = None
    entry: Entry | None = None
    parsed: ParsedAddress | None = None
    assignment: GridAnswer = field(default_factory=GridAnswer)
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def codes(self) -> dict[str, str | None]:
        a = self.assignment
        return {"district_code": a.district.code if a.district else None,
                "street_code": a.street.code if a.street else None,
                "community_code": a.community.code if a.community else None,
                "grid_code": a.grid.code if a.grid else None}

    def summary(self) -> dict[str, Any]:
        """The flat record a batch writes: point, level, score, standard address, codes."""
        return {"query": self.query, **_xy(self.x, self.y, self.geographic), "crs": self.crs,
                "match_level": self.match_level, "score": self.score, "ambiguous": self.ambiguous,
                "standard_address": self.standard_address, **self.codes(), "reason": self.reason}

    def to_dict(self) -> dict[str, Any]:
        p = self.parsed
        return {
            "query": self.query, "match_level": self.match_level, "score": self.score,
            "ambiguous": self.ambiguous, "reason": self.reason, "crs": self.crs,
            **_xy(self.x, self.y, self.geographic),
            "standard_address": self.standard_address,
            "address": None if self.entry is None else {
                "feature_id": self.entry.feature_id, "address_code": self.entry.address_code,
                "standard_address": self.entry.standard_address},
            "assignment": self.assignment.to_dict(),
            "candidates": [c.to_dict(self.geographic) for c in self.candidates],
            "parsed": None if p is None else {"normalized": p.normalized, **p.components()},
            "notes": self.notes,
        }


def _xy(x: float | None, y: float | None, geographic: bool) -> dict[str, float | None]:
    if geographic:
        return {"lon": _round(x, 7), "lat": _round(y, 7)}
    return {"x": _round(x, 3), "y": _round(y, 3)}


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


@dataclass
class _Outcome:
    """A query's placement before the grid lookup and the output CRS."""

    match: Match
    required_district: str | None = None
    ambiguous: bool = False
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    candidates: list[Match] = field(default_factory=list)


def _none(reason: str, notes: list[str] | None = None) -> _Outcome:
    return _Outcome(Match("none", 0.0), reason=reason, notes=notes or [])


def _resolve(g: Gazetteer, roads: Roads, p: ParsedAddress) -> _Outcome:
    """The cascade for one parsed query."""
    d = g.dictionary
    if p.foreign:
        where = "".join(x for x in (p.province, p.city if p.city != p.province else None) if x) or "another region"
        return _none(f"address in {where}, not in {d.city_name}")
    if p.district and not p.district_code:
        return _none(f"district {p.district} is not in the gazetteer of {d.city_name}")
    district = p.district_code
    notes: list[str] = []
    outcome = _on_roads(g, roads, p, district, notes)
    if outcome is None:
        outcome = _on_areas(g, p, district, notes)
    outcome.required_district = district
    outcome.notes = notes + outcome.notes
    return outcome


def _groups(g: Gazetteer, roads: Roads, p: ParsedAddress, district: str | None,
            notes: list[str]) -> tuple[str | None, dict[str | None, AddressGroup]]:
    """The road (or, with no known road, the compound) to match on, per district."""
    d = g.dictionary
    for name, table, fetch in ((p.road, d.roads, roads.road), (p.compound, d.compounds, roads.compound)):
        if not name:
            continue
        if name not in table:
            if name == p.road:
                notes.append(f"road {name} is not in the gazetteer")
            continue
        groups = fetch(name)
        if district is not None:
            groups = {dc: grp for dc, grp in groups.items() if dc == district}
            if not groups:
                notes.append(f"{name} has no address in {d.district_name(district)}")
                continue
        if groups:
            return name, groups
    return None, {}


def _on_roads(g: Gazetteer, roads: Roads, p: ParsedAddress, district: str | None,
              notes: list[str]) -> _Outcome | None:
    name, groups = _groups(g, roads, p, district, notes)
    if not groups:
        return None
    if p.is_intersection and p.second_road:
        second = roads.road(p.second_road)
        matches = [m for dc, grp in groups.items() if dc in second and (m := _crossing(grp, second[dc]))]
        if not matches:
            notes.append(f"{p.road} and {p.second_road} do not meet in the gazetteer; the road is used")
            matches = [grp.middle() for grp in groups.values()]
    else:
        matches = [_match_group(grp, p) for grp in groups.values()]
    matches.sort(key=lambda m: (_RANK[m.level], -m.score, m.district_code or ""))
    best = matches[0]
    if len(matches) == 1:
        return _Outcome(best)
    d = g.dictionary
    names = "、".join(d.district_name(m.district_code) or str(m.district_code) for m in matches)
    if best.level == "door" and best.score == 1.0 and not (matches[1].level == "door" and matches[1].score == 1.0):
        # The exact door exists in one district only: that settles it.
        notes.append(f"{name} is in {names}; the address exists only in {d.district_name(best.district_code)}")
        return _Outcome(best, candidates=matches)
    return _Outcome(replace(best, score=round(best.score / 2, 3)), ambiguous=True, candidates=matches,
                    reason=f"{name} is in {len(matches)} districts ({names}); name the district")


def _crossing(a: AddressGroup, b: AddressGroup) -> Match | None:
    """The middle of the closest pair of addresses of the two roads, if they come close enough."""
    pa, pb = a.points(), b.points()
    best = (math.inf, 0, 0)
    for start in range(0, len(pa), 512):  # blocks keep the distance matrix small on long roads
        d2 = ((pa[start:start + 512, None, :] - pb[None, :, :]) ** 2).sum(axis=2)
        k = int(np.argmin(d2)) if d2.size else 0
        if d2.size and d2.flat[k] < best[0]:
            best = (float(d2.flat[k]), start + k // d2.shape[1], k % d2.shape[1])
    if math.sqrt(best[0]) > _CROSSING_MAX_GAP_M:
        return None
    i, j = best[1], best[2]
    x, y = (pa[i] + pb[j]) / 2
    return Match("road", 0.7, float(x), float(y), a.district_code, note=f"crossing of {a.name} and {b.name}",
                 anchor=(float(pa[i][0]), float(pa[i][1])))


_AREA_SCORES = {"community": 0.5, "street": 0.4, "district": 0.3}


def _area_match(g: Gazetteer, level: str, code: str | None, district: str | None) -> Match | None:
    area = g.areas.get((level, code or ""))
    if area is None or (district is not None and g.district_of(area) != district):
        return None
    return Match(level, _AREA_SCORES[level], area.x, area.y, g.district_of(area), area=area,
                 note=f"{level} {area.name}")


def _on_areas(g: Gazetteer, p: ParsedAddress, district: str | None, notes: list[str]) -> _Outcome:
    d = g.dictionary
    for level, code in (("community", p.community_code), ("street", p.street_code), ("district", district)):
        if m := _area_match(g, level, code, district):
            return _Outcome(m)
    # A street name shared by several districts (虹桥街道 / 虹桥镇) and no district written.
    entries = [(code, dc) for code, dc in d.streets.get(p.street or "", []) if district in (None, dc)]
    matches = [m for code, dc in entries if (m := _area_match(g, "street", code, dc))]
    if len(matches) == 1:
        return _Outcome(matches[0])
    if matches:
        names = "、".join(d.district_name(m.district_code) or "" for m in matches)
        return _Outcome(replace(matches[0], score=round(matches[0].score / 2, 3)), ambiguous=True,
                        candidates=matches, reason=f"{p.street} is in {len(matches)} districts ({names}); "
                                                   "name the district")
    if p.district_candidates:
        cands = [m for dc in p.district_candidates if (m := _area_match(g, "district", dc, None))]
        if cands:
            names = "、".join(d.district_name(m.district_code) or "" for m in cands)
            return _Outcome(replace(cands[0], score=round(cands[0].score / 2, 3)), ambiguous=len(cands) > 1,
                            candidates=cands if len(cands) > 1 else [],
                            reason=f"the address may be in {names}; name the district")
    if district is not None:  # named, but its polygon is not loaded
        return _none(f"district {d.district_name(district)} has no polygon in the base")
    what = p.road or p.street or p.community or p.compound
    if what:
        return _none(f"{what} is not in the gazetteer and no district, street or community was recognised")
    return _none(f"no district, street, community, road or compound of {d.city_name} recognised")


# --- public API -------------------------------------------------------------------------------

def geocode(conn: Connection, text: str, crs: CrsSpec | str | int = "EPSG:4326") -> GeocodeResult:
    """Geocode one free-text address; the point is returned in ``crs`` (default WGS84).

    Raises :class:`ParameterError` (``q``) for an empty or over-long query."""
    if not isinstance(text, str) or not text.strip():
        raise ParameterError("q", "q: the address is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise ParameterError("q", f"q: at most {MAX_QUERY_CHARS} characters, got {len(text)}")
    return geocode_many(conn, [text], crs)[0]


def geocode_many(conn: Connection, texts: Sequence[str | None],
                 crs: CrsSpec | str | int = "EPSG:4326") -> list[GeocodeResult]:
    """Geocode a chunk of addresses (any number; the grid lookup is split per 10,000 points).

    Empty or over-long texts get ``match_level`` none with a reason instead of an error, so a
    batch never stops on one bad row. Costs a few statements per call, not per address."""
    out_crs = resolve_crs(crs)
    g = gazetteer_for(conn)
    queries = [t if isinstance(t, str) else "" for t in texts]
    unique = list(dict.fromkeys(q for q in queries if q.strip() and len(q) <= MAX_QUERY_CHARS))
    parses = {q: g.parse(q) for q in unique}
    roads = g.load_roads(conn, {r for p in parses.values() for r in g.roads_needed(p)})
    outcomes = {q: _resolve(g, roads, p) for q, p in parses.items()}
    _apply_aliases(conn, g, parses, outcomes)
    results = {q: _result(g, q, parses[q], o) for q, o in outcomes.items()}
    _assign(conn, g, outcomes, results)
    _to_output_crs(g, list(results.values()), out_crs)
    out: list[GeocodeResult] = []
    handed: set[str] = set()
    for q in queries:
        if q not in results:
            out.append(_empty(q, out_crs))
        elif q in handed:  # a repeated query gets its own copy: callers may change an answer
            out.append(replace(results[q], candidates=list(results[q].candidates), notes=list(results[q].notes)))
        else:
            handed.add(q)
            out.append(results[q])
    return out


def _empty(query: str, crs: CrsSpec) -> GeocodeResult:
    why = "empty address" if not query.strip() else f"longer than {MAX_QUERY_CHARS} characters"
    return GeocodeResult(query=query, match_level="none", score=0.0, crs=crs.name, geographic=crs.is_geographic,
                         reason=why)


def _apply_aliases(conn: Connection, g: Gazetteer, parses: dict[str, ParsedAddress],
                   outcomes: dict[str, _Outcome]) -> None:
    """Queries not placed at a door may be an alias of one (an old name, a building's name)."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for q, o in outcomes.items():
        p = parses[q]
        if o.match.level != "door" and not p.foreign and p.normalized:
            for alias in {p.normalized, p.standard_address()}:
                wanted[alias].append(q)
    if not wanted:
        return
    for row in conn.execute(sa.text(_ALIASES_SQL), {"aliases": list(wanted)}):
        entry = _entry(row[1:])
        for q in wanted[row[0]]:
            o = outcomes[q]
            if o.match.level == "door" or o.required_district not in (None, entry.district_code):
                continue
            o.match = Match("door", 0.95, entry.x, entry.y, entry.district_code, entry=entry, exact=True,
                            note=f"alias {row[0]} of {entry.standard_address}")
            o.ambiguous, o.reason, o.candidates = False, None, []


def _standard(g: Gazetteer, p: ParsedAddress, m: Match) -> str | None:
    """The gazetteer's form of the answer: the entry itself when it is the query down to the room;
    the entry's door/lane/building with the query's unit/floor/room when the entry is the building;
    else the query's own components in standard order, in the district found."""
    if m.level == "none":
        return None
    e = m.entry
    if e is not None and m.exact and e.standard_address:
        return e.standard_address
    d = g.dictionary
    district = d.district_name(m.district_code) or p.district
    if e is not None:
        return ParsedAddress(raw="", city=d.city_name, district=district, road=e.road, door_number=e.door_number,
                             lane=e.lane, building=e.building, building_kind="号" if e.lane else p.building_kind,
                             unit=p.unit, floor=p.floor, room=p.room,
                             compound=None if e.road else e.compound).standard_address()
    if m.level not in POINT_LEVELS and not (p.road or p.compound):
        # numbers with no road or compound to stand on say nothing about an area-level answer
        p = replace(p, door_number=None, lane=None, sub_lane=None, building=None, unit=None, floor=None, room=None)
    return replace(p, city=d.city_name, district=district).standard_address()


def _reason(m: Match, o: _Outcome) -> str | None:
    if o.reason:
        return o.reason
    if m.level == "door" and m.score == 1.0:
        return None
    return m.note


def _result(g: Gazetteer, q: str, p: ParsedAddress, o: _Outcome) -> GeocodeResult:
    m, d = o.match, g.dictionary
    notes = [*p.notes, *o.notes, *([m.note] if m.note else [])]
    cands = [Candidate(c.district_code, d.district_name(c.district_code), c.level, c.score, c.x, c.y,
                       _standard(g, p, c)) for c in o.candidates]
    return GeocodeResult(query=q, match_level=m.level, score=round(m.score, 3), crs="", x=m.x, y=m.y,
                         ambiguous=o.ambiguous, reason=_reason(m, o), standard_address=_standard(g, p, m),
                         entry=m.entry, parsed=p, candidates=cands, notes=notes)


def _assign(conn: Connection, g: Gazetteer, outcomes: dict[str, _Outcome], results: dict[str, GeocodeResult]) -> None:
    """Attach the grid assignment and who is responsible.

    A gazetteer entry's own codes (assigned on load by the grid lookup's rule, still current unless
    an area layer was loaded since) answer for a door; an area-level answer is its area; every
    other point gets :func:`cim.grid.lookup_points` (one statement per 10,000). The responsibility
    chains of the grids named by codes are fetched in one statement, and answers with the same
    codes share one (immutable) assignment."""
    by_codes: dict[str, tuple] = {}
    at_points: list[str] = []
    for q, o in outcomes.items():
        m = o.match
        if m.area is not None:
            by_codes[q] = g.area_codes(m.area)
        elif m.entry is not None and g.entry_codes_current and m.level == "door":
            e = m.entry
            by_codes[q] = (e.district_code, e.street_code, e.community_code, e.grid_code)
        elif m.level in POINT_LEVELS:
            at_points.append(q)
    grid_codes = sorted({c[3] for c in by_codes.values() if c[3] is not None})
    chains = responsibility_for(conn, grid_codes) if grid_codes else {}
    shared: dict[tuple, GridAnswer] = {}
    for q, codes in by_codes.items():
        if codes not in shared:
            shared[codes] = g.answer_from_codes(codes, chains.get(codes[3], ()))
        results[q].assignment = shared[codes]
    answers = _lookup(conn, g, [(outcomes[q].match.x, outcomes[q].match.y) for q in at_points])
    # Never in another district than the query names: an interpolated point that strayed over the
    # boundary goes back to its nearer known address (rare, so its own small lookup).
    strays = [i for i, q in enumerate(at_points)
              if outcomes[q].required_district and outcomes[q].match.anchor and answers[i].district
              and answers[i].district.code != outcomes[q].required_district]
    if strays:
        for i in strays:
            m, r = outcomes[at_points[i]].match, results[at_points[i]]
            m.x, m.y = m.anchor
            r.x, r.y = m.anchor
            r.notes.append("interpolated point fell outside the district; the nearer known address is used")
        for i, answer in zip(strays, _lookup(conn, g, [outcomes[at_points[i]].match.anchor for i in strays])):
            answers[i] = answer
    for q, answer in zip(at_points, answers):
        results[q].assignment = answer
    _keep_named_district(g, outcomes, results)


def _keep_named_district(g: Gazetteer, outcomes: dict[str, _Outcome], results: dict[str, GeocodeResult]) -> None:
    """The last guard of the rule "never a point in another district than the query names".

    A point can still land outside when the base's data disagree (addresses loaded before a newer
    district outline); then the named district itself is the honest answer, and the note says why."""
    for q, o in outcomes.items():
        r, named = results[q], o.required_district
        found = r.assignment.district.code if r.assignment.district else None
        if named is None or found is None or found == named or r.match_level == "none":
            continue
        fallback = _area_match(g, "district", named, named)
        if fallback is None:
            continue
        r.notes.append(f"the {r.match_level}-level point lies in {g.dictionary.district_name(found)} by the current "
                       f"polygons, not in the named {g.dictionary.district_name(named)}; answered at district level")
        r.match_level, r.score, r.x, r.y, r.entry = "district", fallback.score, fallback.x, fallback.y, None
        r.reason = f"the matched address lies outside {g.dictionary.district_name(named)}"
        r.assignment = g.answer_from_codes(g.area_codes(fallback.area), ())


def _lookup(conn: Connection, g: Gazetteer, points: list[tuple[float | None, float | None]]) -> list[GridAnswer]:
    answers: list[GridAnswer] = []
    srid = g.settings.srid
    for start in range(0, len(points), MAX_POINTS):
        part = points[start:start + MAX_POINTS]
        answers += lookup_points(conn, [p[0] for p in part], [p[1] for p in part], f"EPSG:{srid}", g.settings)
    return answers


def _to_output_crs(g: Gazetteer, results: list[GeocodeResult], crs: CrsSpec) -> None:
    """Move every point (answers and candidates) from the storage CRS to ``crs``, vectorised."""
    holders: list[GeocodeResult | Candidate] = [r for r in results] + [c for r in results for c in r.candidates]
    for r in results:
        r.crs, r.geographic = crs.name, crs.is_geographic
    placed = [h for h in holders if h.x is not None and h.y is not None]
    if not placed:
        return
    xs = np.array([h.x for h in placed], dtype=np.float64)
    ys = np.array([h.y for h in placed], dtype=np.float64)
    ox, oy, _ = transform_coords(xs, ys, None, f"EPSG:{g.settings.srid}", crs)
    for h, x, y in zip(placed, np.atleast_1d(ox), np.atleast_1d(oy)):
        h.x, h.y = float(x), float(y)
