"""Geocoding answers: from the cascade's :class:`~cim.gazetteer.cascade.Outcome` to a
:class:`GeocodeResult` — the standard address, the reason in words, the grid assignment and who is
responsible, the rule "never in another district than the query names", and the output CRS."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from cim.crs import CrsSpec, transform_coords
from cim.gazetteer.cascade import Outcome, area_match
from cim.gazetteer.index import POINT_LEVELS, Entry, Match
from cim.gazetteer.parse import ParsedAddress
from cim.gazetteer.store import Gazetteer
from cim.grid import MAX_POINTS, ChainSource, GridAnswer, lookup_points, responsibility_for


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
                "match_level": self.match_level, "score": self.score, **xy_fields(self.x, self.y, geographic),
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
        return {"query": self.query, **xy_fields(self.x, self.y, self.geographic), "crs": self.crs,
                "match_level": self.match_level, "score": self.score, "ambiguous": self.ambiguous,
                "standard_address": self.standard_address, **self.codes(), "reason": self.reason}

    def to_dict(self) -> dict[str, Any]:
        parsed = self.parsed
        return {
            "query": self.query, "match_level": self.match_level, "score": self.score,
            "ambiguous": self.ambiguous, "reason": self.reason, "crs": self.crs,
            **xy_fields(self.x, self.y, self.geographic),
            "standard_address": self.standard_address,
            "address": None if self.entry is None else {
                "feature_id": self.entry.feature_id, "address_code": self.entry.address_code,
                "standard_address": self.entry.standard_address},
            "assignment": self.assignment.to_dict(),
            "candidates": [c.to_dict(self.geographic) for c in self.candidates],
            "parsed": None if parsed is None else {"normalized": parsed.normalized, **parsed.components()},
            "notes": self.notes,
        }


def xy_fields(x: float | None, y: float | None, geographic: bool) -> dict[str, float | None]:
    """A point as answer fields: lon/lat (7 decimals) for a geographic CRS, else x/y (mm)."""
    if geographic:
        return {"lon": _rounded(x, 7), "lat": _rounded(y, 7)}
    return {"x": _rounded(x, 3), "y": _rounded(y, 3)}


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def empty_result(query: str, crs: CrsSpec, max_chars: int) -> GeocodeResult:
    """The answer to an empty or over-long query: level none, with the reason."""
    why = "empty address" if not query.strip() else f"longer than {max_chars} characters"
    return GeocodeResult(query=query, match_level="none", score=0.0, crs=crs.name, geographic=crs.is_geographic,
                         reason=why)


def _standard_address(gazetteer: Gazetteer, parsed: ParsedAddress, match: Match) -> str | None:
    """The gazetteer's form of the answer: the entry itself when it is the query down to the room;
    the entry's door/lane/building with the query's unit/floor/room when the entry is the building;
    else the query's own components in standard order, in the district found."""
    if match.level == "none":
        return None
    entry = match.entry
    if entry is not None and match.exact and entry.standard_address:
        return entry.standard_address
    dictionary = gazetteer.dictionary
    district = dictionary.district_name(match.district_code) or parsed.district
    if entry is not None:
        return ParsedAddress(raw="", city=dictionary.city_name, district=district, road=entry.road,
                             door_number=entry.door_number, lane=entry.lane, building=entry.building,
                             building_kind="号" if entry.lane else parsed.building_kind,
                             unit=parsed.unit, floor=parsed.floor, room=parsed.room,
                             compound=None if entry.road else entry.compound).standard_address()
    if match.level not in POINT_LEVELS and not (parsed.road or parsed.compound):
        # numbers with no road or compound to stand on say nothing about an area-level answer
        parsed = replace(parsed, door_number=None, lane=None, sub_lane=None, building=None, unit=None, floor=None,
                         room=None)
    return replace(parsed, city=dictionary.city_name, district=district).standard_address()


def _reason(match: Match, outcome: Outcome) -> str | None:
    if outcome.reason:
        return outcome.reason
    if match.level == "door" and match.score == 1.0:
        return None
    return match.note


def build_result(gazetteer: Gazetteer, query: str, parsed: ParsedAddress, outcome: Outcome) -> GeocodeResult:
    """The answer to ``query`` (still in the storage CRS, not yet assigned to a grid)."""
    match, dictionary = outcome.match, gazetteer.dictionary
    notes = [*parsed.notes, *outcome.notes, *([match.note] if match.note else [])]
    candidates = [Candidate(c.district_code, dictionary.district_name(c.district_code), c.level, c.score, c.x, c.y,
                            _standard_address(gazetteer, parsed, c)) for c in outcome.candidates]
    return GeocodeResult(query=query, match_level=match.level, score=round(match.score, 3), crs="", x=match.x,
                         y=match.y, ambiguous=outcome.ambiguous, reason=_reason(match, outcome),
                         standard_address=_standard_address(gazetteer, parsed, match), entry=match.entry,
                         parsed=parsed, candidates=candidates, notes=notes)


def assign(conn: Connection, gazetteer: Gazetteer, outcomes: dict[str, Outcome],
           results: dict[str, GeocodeResult], responsibility: ChainSource = responsibility_for) -> None:
    """Attach the grid assignment and who is responsible.

    A gazetteer entry's own codes (assigned on load by the grid lookup's rule, still current unless
    an area layer was loaded since) answer for a door; an area-level answer is its area; every
    other point gets :func:`cim.grid.lookup_points` (one statement per 10,000). The responsibility
    chains of the grids named by codes are fetched in one statement, and answers with the same
    codes share one (immutable) assignment. ``responsibility``: where the chains come from (a caller may keep
    them, :class:`cim.grid.ChainMemo`)."""
    by_codes: dict[str, tuple] = {}
    at_points: list[str] = []
    for query, outcome in outcomes.items():
        match = outcome.match
        if match.area is not None:
            by_codes[query] = gazetteer.area_codes(match.area)
        elif match.entry is not None and gazetteer.entry_codes_current and match.level == "door":
            entry = match.entry
            by_codes[query] = (entry.district_code, entry.street_code, entry.community_code, entry.grid_code)
        elif match.level in POINT_LEVELS:
            at_points.append(query)
    grid_codes = sorted({codes[3] for codes in by_codes.values() if codes[3] is not None})
    chains = responsibility(conn, grid_codes) if grid_codes else {}
    shared: dict[tuple, GridAnswer] = {}
    for query, codes in by_codes.items():
        if codes not in shared:
            shared[codes] = gazetteer.answer_from_codes(codes, chains.get(codes[3], ()))
        results[query].assignment = shared[codes]
    answers = _lookup(conn, gazetteer, [(outcomes[q].match.x, outcomes[q].match.y) for q in at_points])
    # Never in another district than the query names: an interpolated point that strayed over the
    # boundary goes back to its nearer known address (rare, so its own small lookup).
    strays = [i for i, query in enumerate(at_points)
              if outcomes[query].required_district and outcomes[query].match.anchor and answers[i].district
              and answers[i].district.code != outcomes[query].required_district]
    if strays:
        for i in strays:
            match, result = outcomes[at_points[i]].match, results[at_points[i]]
            match.x, match.y = match.anchor
            result.x, result.y = match.anchor
            result.notes.append("interpolated point fell outside the district; the nearer known address is used")
        for i, answer in zip(strays, _lookup(conn, gazetteer, [outcomes[at_points[i]].match.anchor for i in strays])):
            answers[i] = answer
    for query, answer in zip(at_points, answers):
        results[query].assignment = answer
    _keep_named_district(gazetteer, outcomes, results)


def _keep_named_district(gazetteer: Gazetteer, outcomes: dict[str, Outcome],
                         results: dict[str, GeocodeResult]) -> None:
    """The last guard of the rule "never a point in another district than the query names".

    A point can still land outside when the base's data disagree (addresses loaded before a newer
    district outline); then the named district itself is the honest answer, and the note says why."""
    dictionary = gazetteer.dictionary
    for query, outcome in outcomes.items():
        result, named = results[query], outcome.required_district
        found = result.assignment.district.code if result.assignment.district else None
        if named is None or found is None or found == named or result.match_level == "none":
            continue
        fallback = area_match(gazetteer, "district", named, named)
        if fallback is None:
            continue
        result.notes.append(f"the {result.match_level}-level point lies in {dictionary.district_name(found)} by the "
                            f"current polygons, not in the named {dictionary.district_name(named)}; answered at "
                            "district level")
        result.match_level, result.score, result.x, result.y, result.entry = (
            "district", fallback.score, fallback.x, fallback.y, None)
        result.reason = f"the matched address lies outside {dictionary.district_name(named)}"
        result.assignment = gazetteer.answer_from_codes(gazetteer.area_codes(fallback.area), ())


def _lookup(conn: Connection, gazetteer: Gazetteer,
            points: list[tuple[float | None, float | None]]) -> list[GridAnswer]:
    answers: list[GridAnswer] = []
    srid = gazetteer.settings.srid
    for start in range(0, len(points), MAX_POINTS):
        part = points[start:start + MAX_POINTS]
        answers += lookup_points(conn, [p[0] for p in part], [p[1] for p in part], f"EPSG:{srid}", gazetteer.settings)
    return answers


def to_output_crs(gazetteer: Gazetteer, results: list[GeocodeResult], crs: CrsSpec) -> None:
    """Move every point (answers and candidates) from the storage CRS to ``crs``, vectorised."""
    holders: list[GeocodeResult | Candidate] = [r for r in results] + [c for r in results for c in r.candidates]
    for result in results:
        result.crs, result.geographic = crs.name, crs.is_geographic
    placed = [h for h in holders if h.x is not None and h.y is not None]
    if not placed:
        return
    xs = np.array([h.x for h in placed], dtype=np.float64)
    ys = np.array([h.y for h in placed], dtype=np.float64)
    out_x, out_y, _ = transform_coords(xs, ys, None, f"EPSG:{gazetteer.settings.srid}", crs)
    for holder, x, y in zip(placed, np.atleast_1d(out_x), np.atleast_1d(out_y)):
        holder.x, holder.y = float(x), float(y)
