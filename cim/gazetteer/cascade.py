"""The geocoding cascade for one parsed query: roads first (door, interpolated, road, crossing),
then areas (community, street, district), then address aliases; the districts the query names
are a hard filter. The result is an :class:`Outcome` — a placement in the storage CRS, before the
grid lookup and the output CRS (:mod:`cim.gazetteer.results`)."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.gazetteer.index import LEVEL_RANK, AddressGroup, Match, entry_from_row, match_on_group
from cim.gazetteer.parse import ParsedAddress
from cim.gazetteer.store import ALIASES_SQL, Gazetteer, RoadIndexes

# A crossing's two roads must come this close (closest pair of their addresses) to be placed.
CROSSING_MAX_GAP_M = 400.0
AREA_SCORES = {"community": 0.5, "street": 0.4, "district": 0.3}


@dataclass
class Outcome:
    """A query's placement before the grid lookup and the output CRS."""

    match: Match
    required_district: str | None = None
    ambiguous: bool = False
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    candidates: list[Match] = field(default_factory=list)


def no_match(reason: str, notes: list[str] | None = None) -> Outcome:
    return Outcome(Match("none", 0.0), reason=reason, notes=notes or [])


def resolve(gazetteer: Gazetteer, roads: RoadIndexes, parsed: ParsedAddress) -> Outcome:
    """The cascade for one parsed query."""
    dictionary = gazetteer.dictionary
    if parsed.foreign:
        where = "".join(x for x in (parsed.province, parsed.city if parsed.city != parsed.province else None)
                        if x) or "another region"
        return no_match(f"address in {where}, not in {dictionary.city_name}")
    if parsed.district and not parsed.district_code:
        return no_match(f"district {parsed.district} is not in the gazetteer of {dictionary.city_name}")
    district = parsed.district_code
    notes: list[str] = []
    outcome = _on_roads(gazetteer, roads, parsed, district, notes)
    if outcome is None:
        outcome = _on_areas(gazetteer, parsed, district, notes)
    outcome.required_district = district
    outcome.notes = notes + outcome.notes
    return outcome


def _groups(gazetteer: Gazetteer, roads: RoadIndexes, parsed: ParsedAddress, district: str | None,
            notes: list[str]) -> tuple[str | None, dict[str | None, AddressGroup]]:
    """The road (or, with no known road, the compound) to match on, per district."""
    dictionary = gazetteer.dictionary
    for name, table, fetch in ((parsed.road, dictionary.roads, roads.road),
                               (parsed.compound, dictionary.compounds, roads.compound)):
        if not name:
            continue
        if name not in table:
            if name == parsed.road:
                notes.append(f"road {name} is not in the gazetteer")
            continue
        groups = fetch(name)
        if district is not None:
            groups = {code: group for code, group in groups.items() if code == district}
            if not groups:
                notes.append(f"{name} has no address in {dictionary.district_name(district)}")
                continue
        if groups:
            return name, groups
    return None, {}


def _on_roads(gazetteer: Gazetteer, roads: RoadIndexes, parsed: ParsedAddress, district: str | None,
              notes: list[str]) -> Outcome | None:
    name, groups = _groups(gazetteer, roads, parsed, district, notes)
    if not groups:
        return None
    if parsed.is_intersection and parsed.second_road:
        second = roads.road(parsed.second_road)
        matches = [match for code, group in groups.items()
                   if code in second and (match := _crossing(group, second[code]))]
        if not matches:
            notes.append(f"{parsed.road} and {parsed.second_road} do not meet in the gazetteer; the road is used")
            matches = [group.middle() for group in groups.values()]
    else:
        matches = [match_on_group(group, parsed) for group in groups.values()]
    matches.sort(key=lambda m: (LEVEL_RANK[m.level], -m.score, m.district_code or ""))
    best = matches[0]
    if len(matches) == 1:
        return Outcome(best)
    dictionary = gazetteer.dictionary
    names = "、".join(dictionary.district_name(m.district_code) or str(m.district_code) for m in matches)
    if best.level == "door" and best.score == 1.0 and not (matches[1].level == "door" and matches[1].score == 1.0):
        # The exact door exists in one district only: that settles it.
        notes.append(f"{name} is in {names}; the address exists only in {dictionary.district_name(best.district_code)}")
        return Outcome(best, candidates=matches)
    return Outcome(replace(best, score=round(best.score / 2, 3)), ambiguous=True, candidates=matches,
                   reason=f"{name} is in {len(matches)} districts ({names}); name the district")


def _crossing(first: AddressGroup, second: AddressGroup) -> Match | None:
    """The middle of the closest pair of addresses of the two roads, if they come close enough."""
    first_points, second_points = first.points(), second.points()
    best = (math.inf, 0, 0)  # squared distance, index in first, index in second
    for start in range(0, len(first_points), 512):  # blocks keep the distance matrix small on long roads
        squared = ((first_points[start:start + 512, None, :] - second_points[None, :, :]) ** 2).sum(axis=2)
        k = int(np.argmin(squared)) if squared.size else 0
        if squared.size and squared.flat[k] < best[0]:
            best = (float(squared.flat[k]), start + k // squared.shape[1], k % squared.shape[1])
    if math.sqrt(best[0]) > CROSSING_MAX_GAP_M:
        return None
    i, j = best[1], best[2]
    x, y = (first_points[i] + second_points[j]) / 2
    return Match("road", 0.7, float(x), float(y), first.district_code,
                 note=f"crossing of {first.name} and {second.name}",
                 anchor=(float(first_points[i][0]), float(first_points[i][1])))


def area_match(gazetteer: Gazetteer, level: str, code: str | None, district: str | None) -> Match | None:
    """The point of a current community, street or district — None if unknown or in another district."""
    area = gazetteer.areas.get((level, code or ""))
    if area is None or (district is not None and gazetteer.district_of(area) != district):
        return None
    return Match(level, AREA_SCORES[level], area.x, area.y, gazetteer.district_of(area), area=area,
                 note=f"{level} {area.name}")


def _on_areas(gazetteer: Gazetteer, parsed: ParsedAddress, district: str | None, notes: list[str]) -> Outcome:
    dictionary = gazetteer.dictionary
    for level, code in (("community", parsed.community_code), ("street", parsed.street_code),
                        ("district", district)):
        if match := area_match(gazetteer, level, code, district):
            return Outcome(match)
    # A street name shared by several districts (虹桥街道 / 虹桥镇) and no district written.
    streets = [(code, street_district) for code, street_district in dictionary.streets.get(parsed.street or "", [])
               if district in (None, street_district)]
    matches = [match for code, street_district in streets
               if (match := area_match(gazetteer, "street", code, street_district))]
    if len(matches) == 1:
        return Outcome(matches[0])
    if matches:
        names = "、".join(dictionary.district_name(m.district_code) or "" for m in matches)
        return Outcome(replace(matches[0], score=round(matches[0].score / 2, 3)), ambiguous=True,
                       candidates=matches, reason=f"{parsed.street} is in {len(matches)} districts ({names}); "
                                                  "name the district")
    if parsed.district_candidates:
        candidates = [match for code in parsed.district_candidates
                      if (match := area_match(gazetteer, "district", code, None))]
        if candidates:
            names = "、".join(dictionary.district_name(m.district_code) or "" for m in candidates)
            return Outcome(replace(candidates[0], score=round(candidates[0].score / 2, 3)),
                           ambiguous=len(candidates) > 1, candidates=candidates if len(candidates) > 1 else [],
                           reason=f"the address may be in {names}; name the district")
    if district is not None:  # named, but its polygon is not loaded
        return no_match(f"district {dictionary.district_name(district)} has no polygon in the base")
    what = parsed.road or parsed.street or parsed.community or parsed.compound
    if what:
        return no_match(f"{what} is not in the gazetteer and no district, street or community was recognised")
    return no_match(f"no district, street, community, road or compound of {dictionary.city_name} recognised")


def apply_aliases(conn: Connection, parses: dict[str, ParsedAddress], outcomes: dict[str, Outcome]) -> None:
    """Queries not placed at a door may be an alias of one (an old name, a building's name)."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for query, outcome in outcomes.items():
        parsed = parses[query]
        if outcome.match.level != "door" and not parsed.foreign and parsed.normalized:
            for alias in {parsed.normalized, parsed.standard_address()}:
                wanted[alias].append(query)
    if not wanted:
        return
    for row in conn.execute(sa.text(ALIASES_SQL), {"aliases": list(wanted)}):
        alias, entry = row[0], entry_from_row(row[1:])
        for query in wanted[alias]:
            outcome = outcomes[query]
            if outcome.match.level == "door" or outcome.required_district not in (None, entry.district_code):
                continue
            outcome.match = Match("door", 0.95, entry.x, entry.y, entry.district_code, entry=entry, exact=True,
                                  note=f"alias {alias} of {entry.standard_address}")
            outcome.ambiguous, outcome.reason, outcome.candidates = False, None, []
