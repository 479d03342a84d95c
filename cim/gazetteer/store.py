"""Per-database gazetteer state: what the cascade needs from one base, built once per set of layer
versions and kept per process.

A :class:`Gazetteer` holds the address dictionary, the area centroids, the grids of each community,
a parse cache and an LRU cache of road indexes (:class:`RoadIndexes` is the view one chunk of
queries gets). :func:`gazetteer_for` rebuilds it when a load has bumped one of its layers'
versions — once per base and version, however many requests arrive at the same time.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import BaseSettings, NotInitialisedError, stored_settings
from cim.config import settings as deployment_settings
from cim.gazetteer.base_dictionary import dictionary_from_base
from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.index import AddressGroup, AreaPoint, Entry, entry_from_row
from cim.gazetteer.parse import ParsedAddress, parse_address
from cim.grid import Area, GridAnswer
from cim.jurisdiction import current_scope

# How many roads' address indexes and parsed queries are kept in memory per database: deployment
# settings CIM_GEOCODE_ROAD_CACHE and CIM_GEOCODE_PARSE_CACHE, read when a gazetteer is built.
#: the layers a gazetteer is built from: a load of any of them makes it stale
LAYER_TABLES = ("districts", "streets", "communities", "grids", "addresses")

ADDRESS_COLUMNS = ("feature_id::text, address_code, standard_address, road, door_number, lane, building_no, "
                   "unit, floor, room, compound, district_code, street_code, community_code, grid_code, "
                   "ST_X(geom), ST_Y(geom)")
_ROADS_SQL = (f"SELECT {ADDRESS_COLUMNS} FROM addresses "
              "WHERE valid_to IS NULL AND geom IS NOT NULL AND road = ANY(CAST(:roads AS text[]))")
ALIASES_SQL = (f"SELECT al.alias, {ADDRESS_COLUMNS} FROM address_aliases al "
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

LayerVersions = tuple[tuple[str, int, Any], ...]


def layer_versions(conn: Connection) -> LayerVersions:
    """(table, version, updated_at) of each layer the gazetteer is built from."""
    try:
        rows = conn.execute(sa.text("SELECT table_name, version, updated_at FROM layers "
                                    "WHERE table_name = ANY(:t) ORDER BY table_name"), {"t": list(LAYER_TABLES)}).all()
    except sa.exc.ProgrammingError:
        conn.rollback()
        raise NotInitialisedError() from None
    return tuple((r[0], int(r[1]), r[2]) for r in rows)


class RoadIndexes:
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
                for district_code, group in self._roads.get(road, {}).items():
                    entries[district_code] += group.compounds.get(name, [])
            found = self._compounds[name] = {district_code: AddressGroup(name, district_code, group_entries)
                                             for district_code, group_entries in entries.items() if group_entries}
        return found


class Gazetteer:
    """Everything the cascade needs from one database at one set of layer versions."""

    def __init__(self, conn: Connection, versions: LayerVersions) -> None:
        settings = stored_settings(conn)
        if settings is None:
            raise NotInitialisedError()
        self.versions = versions
        self.settings: BaseSettings = settings
        # An address's stored codes were assigned at its load by the grid lookup's own rule; they
        # still hold unless an administrative or grid layer was loaded since.
        updated = {name: at for name, _, at in versions}
        admin = [updated.get(t) for t in LAYER_TABLES if t != "addresses"]
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
    def load_roads(self, conn: Connection, roads: Iterable[str]) -> RoadIndexes:
        """The indexes of ``roads``: cached ones, and the others fetched in one statement. The
        returned view holds them for the chunk even if the cache evicts them meanwhile."""
        wanted = {r for r in roads if r}
        with self._lock:
            found = {r: self._roads[r] for r in wanted if r in self._roads}
        missing = sorted(wanted - found.keys())
        if missing:
            by_road: dict[str, dict[str | None, list[Entry]]] = {r: defaultdict(list) for r in missing}
            for row in conn.execute(sa.text(_ROADS_SQL), {"roads": missing}):
                entry = entry_from_row(row)
                by_road[entry.road][entry.district_code].append(entry)
            for road, districts in by_road.items():
                found[road] = {district_code: AddressGroup(road, district_code, entries)
                               for district_code, entries in districts.items()}
        with self._lock:
            for road, groups in found.items():
                self._roads[road] = groups
                self._roads.move_to_end(road)
            while len(self._roads) > self._road_cache_size:
                self._roads.popitem(last=False)
        return RoadIndexes(found, self.compound_roads)

    def roads_needed(self, parsed: ParsedAddress) -> set[str]:
        roads = set()
        for road in (parsed.road, parsed.second_road):
            if road in self.dictionary.roads:
                roads.add(road)
        if parsed.compound in self.compound_roads:
            roads |= self.compound_roads[parsed.compound]
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


# One gazetteer per database (keyed by its URL without the password). A build reads the whole
# base, so it happens under that database's build lock: after a load, the many requests that all
# find the gazetteer stale wait for one rebuild instead of each doing their own.
_GAZETTEERS: dict[tuple[str, str], Gazetteer] = {}
_BUILD_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_STATE_LOCK = threading.Lock()  # guards the two dicts, held only for lookups


def gazetteer_for(conn: Connection, kept: LayerVersions | None = None) -> Gazetteer:
    """This database's gazetteer, rebuilt when a load has bumped one of its layers' versions —
    once per database and versions, however many threads ask at the same time. ``kept``: the versions a
    caller read a while ago (within its own bound on how late it learns of a load): the gazetteer of exactly
    those versions is taken without asking the base again; any other is checked against the base's versions,
    so kept versions never make a gazetteer of other versions pass for current."""
    # built from the rows the caller may see (row-level security): one per database and jurisdiction
    key = (conn.engine.url.render_as_string(hide_password=True), current_scope().cache_key())
    with _STATE_LOCK:
        found = _GAZETTEERS.get(key)
        build_lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    if kept is not None and found is not None and found.versions == kept:
        return found
    versions = layer_versions(conn)
    if found is not None and found.versions == versions:
        return found
    with build_lock:
        with _STATE_LOCK:  # another thread may have built these versions while we waited
            found = _GAZETTEERS.get(key)
        if found is not None and found.versions == versions:
            return found
        built = Gazetteer(conn, versions)
        with _STATE_LOCK:
            _GAZETTEERS[key] = built
    return built


__all__ = ["ADDRESS_COLUMNS", "ALIASES_SQL", "Gazetteer", "LAYER_TABLES", "RoadIndexes",
           "gazetteer_for", "layer_versions"]
