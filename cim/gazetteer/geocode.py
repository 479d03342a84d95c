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
database, keyed by the layer versions (a load bumps them, so answers refresh; one rebuild however
many requests find them stale). A batch costs a
handful of statements per chunk whatever its size: the layer versions, the addresses of the roads
not yet cached (one statement), address aliases of unmatched queries, and the grid lookup
(:func:`cim.grid.lookup_points`, one statement) — matching itself is Python over cached indexes.

The parts, one job each: :mod:`~cim.gazetteer.index` (addresses in memory, placing a query on one
road), :mod:`~cim.gazetteer.store` (per-database state and caches), :mod:`~cim.gazetteer.cascade`
(the cascade for one query), :mod:`~cim.gazetteer.results` (answers: standard address,
assignment, output CRS); this module runs them over a chunk of queries.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.engine import Connection

from cim.crs import CrsSpec, resolve_crs
from cim.errors import ParameterError
from cim.gazetteer.cascade import apply_aliases, resolve
from cim.gazetteer.index import MATCH_LEVELS, POINT_LEVELS, Entry, MatchLevel
from cim.gazetteer.results import (Candidate, GeocodeResult, assign, build_result, empty_result,
                                   to_output_crs)
from cim.gazetteer.store import Gazetteer, LayerVersions, gazetteer_for
from cim.grid import ChainSource, responsibility_for

#: longest query accepted (a case text pasted whole is not an address)
MAX_QUERY_CHARS = 500

__all__ = ["MATCH_LEVELS", "MAX_QUERY_CHARS", "POINT_LEVELS", "Candidate", "Entry", "GeocodeResult", "Gazetteer",
           "MatchLevel", "gazetteer_for", "geocode", "geocode_many"]


def geocode(conn: Connection, text: str, crs: CrsSpec | str | int = "EPSG:4326") -> GeocodeResult:
    """Geocode one free-text address; the point is returned in ``crs`` (default WGS84).

    Raises :class:`ParameterError` (``q``) for an empty or over-long query."""
    if not isinstance(text, str) or not text.strip():
        raise ParameterError("q", "q: the address is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise ParameterError("q", f"q: at most {MAX_QUERY_CHARS} characters, got {len(text)}")
    return geocode_many(conn, [text], crs)[0]


def geocode_many(conn: Connection, texts: Sequence[str | None],
                 crs: CrsSpec | str | int = "EPSG:4326", *, versions: LayerVersions | None = None,
                 responsibility: ChainSource = responsibility_for) -> list[GeocodeResult]:
    """Geocode a chunk of addresses (any number; the grid lookup is split per 10,000 points).

    Empty or over-long texts get ``match_level`` none with a reason instead of an error, so a
    batch never stops on one bad row. Costs a few statements per call, not per address. A caller that
    keeps what the base says for a while (the API's case intake, for ``CIM_LAYER_CACHE_S``) passes the
    gazetteer's layer ``versions`` it read and where the grids' ``responsibility`` chains come from
    (:class:`cim.grid.ChainMemo`): two statements fewer."""
    out_crs = resolve_crs(crs)
    gazetteer = gazetteer_for(conn, versions)
    queries = [t if isinstance(t, str) else "" for t in texts]
    unique = list(dict.fromkeys(q for q in queries if q.strip() and len(q) <= MAX_QUERY_CHARS))
    parses = {query: gazetteer.parse(query) for query in unique}
    roads = gazetteer.load_roads(conn, {road for parsed in parses.values() for road in gazetteer.roads_needed(parsed)})
    outcomes = {query: resolve(gazetteer, roads, parsed) for query, parsed in parses.items()}
    apply_aliases(conn, parses, outcomes)
    results = {query: build_result(gazetteer, query, parses[query], outcome) for query, outcome in outcomes.items()}
    assign(conn, gazetteer, outcomes, results, responsibility)
    to_output_crs(gazetteer, list(results.values()), out_crs)
    out: list[GeocodeResult] = []
    handed: set[str] = set()
    for query in queries:
        if query not in results:
            out.append(empty_result(query, out_crs, MAX_QUERY_CHARS))
        elif query in handed:  # a repeated query gets its own copy: callers may change an answer
            result = results[query]
            out.append(replace(result, candidates=list(result.candidates), notes=list(result.notes)))
        else:
            handed.add(query)
            out.append(results[query])
    return out
