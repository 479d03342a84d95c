"""The gazetteer's addresses in memory and how a query is placed on one road.

An :class:`AddressGroup` holds the current addresses of one road (or compound) in one district,
indexed by door, lane, building and compound, with the odd and even number lines used for
interpolation; :func:`match_on_group` is the door → interpolated → road part of the cascade on
one such group. A :class:`Match` is one way of placing a query (storage CRS).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np

from cim.gazetteer.base_dictionary import door_int
from cim.gazetteer.parse import ParsedAddress

MatchLevel: TypeAlias = Literal["door", "interpolated", "road", "community", "street", "district", "none"]
MATCH_LEVELS: tuple[str, ...] = ("door", "interpolated", "road", "community", "street", "district", "none")
#: a level's place in the cascade: lower is better
LEVEL_RANK = {level: i for i, level in enumerate(MATCH_LEVELS)}
#: levels whose point is an address point (or lies between address points) of the gazetteer
POINT_LEVELS = frozenset({"door", "interpolated", "road"})

# A number at most this far past the last known one of its side is placed at that one (about
# 100 m at the usual 2 m per number); further out it is only known to be on the road.
MAX_NUMBERS_BEYOND = 50


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


ENTRY_COLUMNS = len(Entry._fields)


def entry_from_row(row: Sequence[Any]) -> Entry:
    """An :class:`Entry` from the first :data:`ENTRY_COLUMNS` columns of a row (x, y last)."""
    return Entry(*row[:ENTRY_COLUMNS - 2], float(row[ENTRY_COLUMNS - 2]), float(row[ENTRY_COLUMNS - 1]))


class AreaPoint(NamedTuple):
    level: str  # district | street | community
    code: str
    name: str
    parent: str | None  # street: its district code; community: its street code
    x: float
    y: float


def mean_point(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """The centroid of the distinct points."""
    unique = set(points)
    return (sum(p[0] for p in unique) / len(unique), sum(p[1] for p in unique) / len(unique))


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
        for entry in entries:
            if entry.lane:
                self.lanes[entry.lane].append(entry)
                if entry.building:
                    self.buildings[(entry.lane, entry.building)].append(entry)
                number = door_int(entry.lane)
            else:
                if entry.door_number:
                    self.doors[entry.door_number].append(entry)
                number = door_int(entry.door_number)
            if entry.compound:
                self.compounds[entry.compound].append(entry)
            if number is not None:
                numbered[number].append((entry.x, entry.y))
        self.numbers = {number: mean_point(points) for number, points in numbered.items()}
        self.sides: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for parity in (0, 1):
            numbers = sorted(n for n in self.numbers if n % 2 == parity)
            if numbers:
                self.sides[parity] = (np.array(numbers), np.array([self.numbers[n] for n in numbers]))

    def interpolate(self, number: int) -> Match | None:
        """Place ``number`` between the nearest known numbers of its side of the road."""
        side = self.sides.get(number % 2)
        if side is None:
            return None
        numbers, points = side
        which = "even" if number % 2 == 0 else "odd"
        i = int(np.searchsorted(numbers, number))
        if i < len(numbers) and numbers[i] == number:
            x, y = points[i]
            return Match("interpolated", 0.85, float(x), float(y), self.district_code,
                         note=f"number {number} is known on {self.name} only as another kind (door/lane)")
        if 0 < i < len(numbers):
            low, high = int(numbers[i - 1]), int(numbers[i])
            t = (number - low) / (high - low)
            (x0, y0), (x1, y1) = points[i - 1], points[i]
            gap = math.hypot(x1 - x0, y1 - y0)
            nearer = points[i - 1] if t <= 0.5 else points[i]
            return Match("interpolated", round(0.85 - min(0.15, gap / 2000.0), 3),
                         float(x0 + t * (x1 - x0)), float(y0 + t * (y1 - y0)), self.district_code,
                         note=f"interpolated between {low} and {high} on the {which} side of {self.name}",
                         anchor=(float(nearer[0]), float(nearer[1])))
        end = 0 if i == 0 else len(numbers) - 1
        x, y = points[end]
        last, beyond = int(numbers[end]), abs(number - int(numbers[end]))
        if beyond > MAX_NUMBERS_BEYOND:
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
            numbers = sorted(self.numbers)
            cx, cy = self.numbers[numbers[len(numbers) // 2]]
        else:
            cx, cy = mean_point((e.x, e.y) for e in self.entries)
        fronts = [e for e in self.entries if not e.lane] or self.entries
        nearest = min(fronts, key=lambda e: ((e.x - cx) ** 2 + (e.y - cy) ** 2, e.feature_id))
        return Match("road", 0.6, nearest.x, nearest.y, self.district_code, note=f"middle of {self.name}")

    def points(self) -> np.ndarray:
        return np.array(sorted({(e.x, e.y) for e in self.entries}))


def pick_entry(entries: list[Entry], parsed: ParsedAddress) -> tuple[Entry, bool]:
    """The entry for the query's unit/floor/room if the gazetteer has it (exact), else the
    building's own entry (the one with the fewest of them)."""
    wanted = (parsed.unit, parsed.floor if not parsed.room else None, parsed.room)
    for entry in entries:
        if (entry.unit, entry.floor if not entry.room else None, entry.room) == wanted:
            return entry, True
    best = min(entries, key=lambda e: (bool(e.room), bool(e.floor), bool(e.unit), e.standard_address or ""))
    return best, False


def door_match(entries: list[Entry], parsed: ParsedAddress, score: float, note: str | None = None) -> Match:
    entry, exact = pick_entry(entries, parsed)
    return Match("door", score, entry.x, entry.y, entry.district_code, entry=entry, exact=exact, note=note)


def match_on_group(group: AddressGroup, parsed: ParsedAddress) -> Match:
    """The best placement of ``parsed`` on one road (or compound) of one district."""
    if parsed.lane:
        if parsed.building and (hit := group.buildings.get((parsed.lane, parsed.building))):
            return door_match(hit, parsed, 1.0)
        if lane := group.lanes.get(parsed.lane):
            x, y = mean_point((e.x, e.y) for e in lane)
            what = f"building {parsed.building} is not recorded in" if parsed.building else "centroid of"
            return Match("door", 0.9, x, y, group.district_code, note=f"{what} lane {parsed.lane} of {group.name}")
        number = door_int(parsed.lane)
        if number is not None and (match := group.interpolate(number)):
            return match
        return compound_or_road(group, parsed)
    if parsed.door_number:
        if hit := group.doors.get(parsed.door_number):
            entries = [e for e in hit if e.building == parsed.building] if parsed.building else hit
            return door_match(entries or hit, parsed, 1.0 if entries else 0.9,
                              None if entries else
                              f"building {parsed.building} is not recorded at door {parsed.door_number}")
        number = door_int(parsed.door_number)
        if number is not None and str(number) != parsed.door_number and (hit := group.doors.get(str(number))):
            return door_match(hit, parsed, 0.9, f"door {parsed.door_number} is not recorded; door {number} used")
        if parsed.compound in group.compounds:
            return compound_or_road(group, parsed)
        if number is not None and (match := group.interpolate(number)):
            return match
    return compound_or_road(group, parsed)


def compound_or_road(group: AddressGroup, parsed: ParsedAddress) -> Match:
    entries = group.compounds.get(parsed.compound or "")
    if entries:
        # Inside a compound "5号" is a building, whatever lane it stands in.
        building = parsed.building or (parsed.door_number if not parsed.lane else None)
        hit = [e for e in entries if building and e.building == building]
        if hit:
            return door_match(hit, parsed, 0.95, f"building {building} of {parsed.compound}")
        x, y = mean_point((e.x, e.y) for e in entries)
        return Match("door", 0.8, x, y, group.district_code, note=f"centroid of {parsed.compound}")
    return group.middle()
