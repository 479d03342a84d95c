"""Grid lookup: which district, street, community and unit grid a point lies in, and who answers
for that grid (grid → post → department → persons).

One batch of up to :data:`MAX_POINTS` points is answered by ONE SQL statement: the points go in
as two float arrays (unnested WITH ORDINALITY so the order survives), each level is a LATERAL
join on the level's GiST index, and the responsibility chain is aggregated per distinct grid in
the same statement and sent once per grid (the points of a grid share one chain object).
Coordinates are transformed to the storage CRS in Python first (vectorised, by
:func:`cim.spatial.to_storage`, so GCJ-02/BD-09 points work too, which PostGIS does not know).

Boundary rule (documented, tested): a point exactly on an edge shared by two polygons of a level
is *covered* by both (``ST_Covers`` counts the boundary, ``ST_Contains`` would drop it). Each
level then answers with the covering polygon of the smallest code (``ORDER BY code LIMIT 1``;
for grids the smallest ``grid_code``) — the same rule as the loaders' bulk enrichment
(:mod:`cim.gridindex`), so a feature's stored codes agree with a lookup at its position. With
hierarchical codes (a grid's code starts with its community's) the levels of one answer stay
consistent, and the same point always gets the same answer.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import BaseSettings, NotInitialisedError, stored_settings
from cim.crs import CrsSpec
from cim.errors import ParameterError
from cim.jurisdiction import current_scope
from cim.spatial import to_storage

#: most points answered by one statement; callers with more split them (the CLI streams chunks)
MAX_POINTS = 10_000
#: levels from the finest up; ``level`` of an answer is the finest one found, or "none"
LEVELS = ("grid", "community", "street", "district")
Level: TypeAlias = Literal["grid", "community", "street", "district", "none"]


@dataclass(frozen=True)
class Area:
    """One administrative or grid unit a point falls in."""

    code: str
    name: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name}


@dataclass(frozen=True)
class Person:
    name: str
    contact: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "contact": self.contact}


@dataclass(frozen=True)
class Department:
    code: str
    name: str
    handles: tuple[str, ...]  # part classes/subclasses this department deals with

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "handles": list(self.handles)}


@dataclass(frozen=True)
class Responsibility:
    """One post responsible for a grid, its department and the persons holding the post."""

    post: Area
    department: Department
    persons: tuple[Person, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"post": self.post.to_dict(), "department": self.department.to_dict(),
                "persons": [p.to_dict() for p in self.persons]}


@dataclass(frozen=True)
class GridAnswer:
    """Where one point lies; levels not found are None."""

    district: Area | None = None
    street: Area | None = None
    community: Area | None = None
    grid: Area | None = None
    responsibility: tuple[Responsibility, ...] = field(default_factory=tuple)

    @property
    def level(self) -> Level:
        for name in LEVELS:
            if getattr(self, name) is not None:
                return name  # type: ignore[return-value]
        return "none"

    def to_dict(self, shared: dict[int, Any] | None = None) -> dict[str, Any]:
        """The answer as JSON-ready dicts; with ``shared`` (see :func:`answers_to_dicts`) the dicts of
        units and chains seen before are reused, not rebuilt."""
        out: dict[str, Any] = {}
        for name in reversed(LEVELS):
            area = getattr(self, name)
            out[name] = _once(shared, area, area.to_dict) if area else None
        out["level"] = self.level
        out["responsibility"] = _once(shared, self.responsibility,
                                      lambda: [r.to_dict() for r in self.responsibility])
        return out


def _once(shared: dict[int, Any] | None, obj: object, build: Any) -> Any:
    if shared is None:
        return build()
    key = id(obj)  # the objects outlive the call: the answers being converted hold them
    if key not in shared:
        shared[key] = build()
    return shared[key]


def answers_to_dicts(answers: Sequence[GridAnswer]) -> list[dict[str, Any]]:
    """:meth:`GridAnswer.to_dict` of many answers. The answers of one lookup share their units and
    chains, so the dicts of those are built once and shared too (building a chain's dicts for every
    point cost more than the lookup): serialise the result, don't mutate it."""
    shared: dict[int, Any] = {}
    return [a.to_dict(shared) for a in answers]


# The responsibility chain of a set of grid codes, as (grid_code, jsonb array). ``{codes}`` is
# always one of this module's own constant fragments, never user text. Posts are ordered by code
# and persons by name, so answers are stable. The persons of all the posts are gathered in one
# aggregate (a LATERAL per post scanned persons once per post: half the time for 16 grids).
_CHAINS_SQL = """
SELECT gp.grid_code,
       jsonb_agg(jsonb_build_object(
           'post_code', p.code, 'post_name', p.name,
           'department_code', d.code, 'department_name', d.name, 'handles', to_jsonb(d.handles),
           'persons', COALESCE(pers.persons, '[]'::jsonb))
         ORDER BY p.code) AS chain
FROM (SELECT grid_code, post_id FROM grid_posts
      WHERE grid_code IN (SELECT c FROM ({codes}) AS src(c) WHERE c IS NOT NULL)) AS gp
JOIN posts p ON p.id = gp.post_id
JOIN departments d ON d.id = p.department_id
LEFT JOIN (
    SELECT pp.post_id, jsonb_agg(jsonb_build_object('name', pe.name, 'contact', pe.contact)
                                 ORDER BY pe.name, pe.id) AS persons
    FROM post_persons pp JOIN persons pe ON pe.id = pp.person_id
    WHERE pp.post_id IN (SELECT post_id FROM grid_posts WHERE grid_code IN (SELECT c FROM ({codes}) AS src(c)))
    GROUP BY pp.post_id
) AS pers ON pers.post_id = p.id
GROUP BY gp.grid_code
"""

# Points in the storage CRS (SRID bound as :srid) → per level, the covering unit of smallest code.
# Many points share a grid, so each grid's chain is sent once, on the first row (in input order)
# of that grid, and as text: decoding the same JSON for every point cost more than the lookup.
# PostGIS's high function costs push the plan's estimate past PostgreSQL's JIT thresholds, and
# compiling it costs ~1 s — far more than running it (~0.1 s for 10,000 points). SET LOCAL (this
# transaction only) travels in the same round trip as the query. Under the API's row-level security only a
# LEAKPROOF condition may drive an index scan on a scoped table (grids): ST_Covers' own index condition does
# not count, so the box test `geom && pt` is spelled out (migration 0006_jurisdiction marks && so), and the
# points are MATERIALIZED so that `pt` is a plain column there, not ST_SetSRID(ST_MakePoint(…)) — functions
# that are not LEAKPROOF either. Without both, each lookup scanned every grid: 136 ms on Shanghai's 20,000.
def _lookup_query(xs: str, ys: str, srid: str) -> str:
    return f"""
WITH pts AS MATERIALIZED (
    SELECT p.i, ST_SetSRID(ST_MakePoint(p.x, p.y), {srid}) AS pt
    FROM unnest({xs}, {ys}) WITH ORDINALITY AS p(x, y, i)
), hits AS (
    SELECT pts.i,
           g.grid_code, g.name AS grid_name,
           c.code AS community_code, c.name AS community_name,
           s.code AS street_code, s.name AS street_name,
           d.code AS district_code, d.name AS district_name
    FROM pts
    LEFT JOIN LATERAL (
        SELECT grid_code, name FROM grids
        WHERE valid_to IS NULL AND geom && pts.pt AND ST_Covers(geom, pts.pt) ORDER BY grid_code LIMIT 1
    ) AS g ON true
    LEFT JOIN LATERAL (
        SELECT code, name FROM communities
        WHERE valid_to IS NULL AND geom && pts.pt AND ST_Covers(geom, pts.pt) ORDER BY code LIMIT 1
    ) AS c ON true
    LEFT JOIN LATERAL (
        SELECT code, name FROM streets
        WHERE valid_to IS NULL AND geom && pts.pt AND ST_Covers(geom, pts.pt) ORDER BY code LIMIT 1
    ) AS s ON true
    LEFT JOIN LATERAL (
        SELECT code, name FROM districts
        WHERE valid_to IS NULL AND geom && pts.pt AND ST_Covers(geom, pts.pt) ORDER BY code LIMIT 1
    ) AS d ON true
), chains AS ({_CHAINS_SQL.format(codes="SELECT grid_code FROM hits")})
SELECT h.grid_code, h.grid_name, h.community_code, h.community_name,
       h.street_code, h.street_name, h.district_code, h.district_name, chains.chain::text
FROM (SELECT hits.*, row_number() OVER (PARTITION BY hits.grid_code ORDER BY hits.i) AS nth FROM hits) AS h
LEFT JOIN chains ON chains.grid_code = h.grid_code AND h.nth = 1
ORDER BY h.i
"""


_JIT_OFF = "SET LOCAL jit = off;\n"
_LOOKUP_SQL = _JIT_OFF + _lookup_query("CAST(:xs AS float8[])", "CAST(:ys AS float8[])", "CAST(:srid AS integer)")

# The same statement prepared once per pooled connection (a server-side prepared statement outlives the
# transaction and its rollback), for callers whose transaction holds nothing else (the API's grid lookup).
# Planning this statement (four LATERALs, two CTEs, the row-level security policies of grids and grid_posts)
# took ~1.1 ms of the ~2.2 ms it spent in the database for one point on Shanghai's 20,000 grids; executing
# the prepared statement takes 0.04 ms to plan. PostgreSQL would keep planning it afresh ("auto" compares the
# generic plan, estimated for 10 points, with one point's custom plan and keeps the custom one), so the
# generic plan is asked for, for this transaction only. Its shape is the same as a custom plan's for a few
# points (one index probe per level per point); batches larger than PREPARED_MAX_POINTS are planned for
# their size as before. The name carries a hash of the text, so a changed statement is never confused with
# an older one prepared under the same name.
_PREPARED_BODY = _lookup_query("$1", "$2", "$3")
PREPARED_NAME = "cim_grid_lookup_" + hashlib.sha1(_PREPARED_BODY.encode()).hexdigest()[:12]
_PREPARE_SQL = f"PREPARE {PREPARED_NAME} (float8[], float8[], integer) AS {_PREPARED_BODY}"
_EXECUTE_SQL = (_JIT_OFF + "SET LOCAL plan_cache_mode = force_generic_plan;\n"
                f"EXECUTE {PREPARED_NAME}(%(xs)s, %(ys)s, %(srid)s)")
#: larger batches are not sent to the prepared statement (see above)
PREPARED_MAX_POINTS = 100
_PREPARED_KEY = "cim_prepared_statements"


_RESPONSIBILITY_SQL = _CHAINS_SQL.format(codes="SELECT unnest(CAST(:codes AS text[]))")


#: how a caller shows a responsible person's contact (e.g. ``cases.model.mask``), applied as a chain is built
ContactView: TypeAlias = Callable[[str | None], str | None]


def as_stored(contact: str | None) -> str | None:
    """A contact shown as stored (the default :data:`ContactView`)."""
    return contact


def _chain(rows: list[dict[str, Any]] | None, contact: ContactView = as_stored) -> tuple[Responsibility, ...]:
    return tuple(
        Responsibility(
            post=Area(r["post_code"], r["post_name"]),
            department=Department(r["department_code"], r["department_name"], tuple(r["handles"] or ())),
            persons=tuple(Person(p["name"], contact(p["contact"])) for p in r["persons"]),
        )
        for r in rows or ()
    )


def _area(code: str | None, name: str | None) -> Area | None:
    return Area(code, name) if code is not None else None


def responsibility_for(conn: Connection, grid_codes: Sequence[str]) -> dict[str, tuple[Responsibility, ...]]:
    """The responsibility chain of each grid code (one statement); codes without posts map to ()."""
    codes = [str(c) for c in grid_codes]
    found = dict(conn.execute(sa.text(_RESPONSIBILITY_SQL), {"codes": codes}).all()) if codes else {}
    return {code: _chain(found.get(code)) for code in codes}


#: where a caller gets grids' responsibility chains: :func:`responsibility_for`, or a :class:`ChainMemo`
ChainSource: TypeAlias = Callable[[Connection, Sequence[str]], dict[str, tuple[Responsibility, ...]]]


class ChainMemo:
    """A :data:`ChainSource` that reads each grid's chain once (:func:`responsibility_for`, only for the grids it
    has not met) and answers it from memory after that — per jurisdiction, since row-level security decides
    which posts a caller sees. It never forgets: its holder decides how long it may be used (the case intake
    keeps one with its other constants, for ``CIM_LAYER_CACHE_S``: :mod:`cases.constants`). Thread-safe: a grid
    read by two threads at once is read twice, and either answer is kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_scope: dict[str, dict[str, tuple[Responsibility, ...]]] = {}

    def __call__(self, conn: Connection, grid_codes: Sequence[str]) -> dict[str, tuple[Responsibility, ...]]:
        with self._lock:
            known = self._by_scope.setdefault(current_scope().cache_key(), {})
            codes = [str(c) for c in grid_codes]
            missing = [c for c in dict.fromkeys(codes) if c not in known]
        if missing:
            read = responsibility_for(conn, missing)
            with self._lock:
                known.update(read)
        return {code: known[code] for code in codes}


def _float_array(values: np.ndarray, finite: np.ndarray) -> str:
    """A PostgreSQL array literal: a Python list would be sent as ARRAY[v1, v2, …], an expression
    of 10,000 numeric constants that costs the server ~1 s to evaluate; the literal parses in ms.
    Non-finite values become NULL, a NULL point no polygon covers: an empty answer, not an error."""
    return "{" + ",".join(repr(float(v)) if ok else "NULL" for v, ok in zip(values, finite)) + "}"


def _settings(conn: Connection, settings: BaseSettings | None) -> BaseSettings:
    if settings is not None:
        return settings
    found = stored_settings(conn)
    if found is None:
        raise NotInitialisedError()
    return found


def _execute_prepared(conn: Connection, params: dict[str, Any]) -> list[Any]:
    # conn.info lives as long as the pooled DBAPI connection (the session that holds the prepared statement)
    # and is emptied when that connection is replaced; it is marked only once PREPARE has succeeded
    done = conn.info.setdefault(_PREPARED_KEY, set())
    if PREPARED_NAME not in done:
        conn.exec_driver_sql(_PREPARE_SQL)
        done.add(PREPARED_NAME)
    return conn.exec_driver_sql(_EXECUTE_SQL, params).all()


def lookup_points(conn: Connection, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray,
                  crs: CrsSpec | str | int = "EPSG:4326",
                  settings: BaseSettings | None = None, *, prepared: bool = False,
                  contact: ContactView = as_stored) -> list[GridAnswer]:
    """District/street/community/grid and responsibility for each point, in input order.

    ``xs``/``ys`` are longitude/latitude (or easting/northing) in ``crs``; at most
    :data:`MAX_POINTS` per call, answered in one SQL statement. Points that are not finite or
    cannot be transformed get an empty answer (level "none"). ``settings`` defaults to the base's
    stored settings (pass them to save a query). JIT is switched off for the rest of the caller's
    transaction (see ``_LOOKUP_SQL``). ``prepared``: up to :data:`PREPARED_MAX_POINTS` points are answered by
    the statement prepared on ``conn`` (prepared on its first use there), which also asks for generic plans
    for the rest of the transaction: for callers whose transaction does nothing else (see ``_PREPARE_SQL``).
    ``contact``: how the responsible persons' contacts are shown (masked for a caller who may not read them),
    applied as each chain is built: copying every person of every chain afterwards cost more than building it.
    """
    if len(xs) > MAX_POINTS:
        raise ParameterError("points", f"points: at most {MAX_POINTS:,} points per lookup, got {len(xs):,}; split the batch")
    if len(xs) == 0 and len(ys) == 0:
        return []
    srid = _settings(conn, settings).srid
    sx, sy = to_storage(xs, ys, crs, srid)
    finite = np.isfinite(sx) & np.isfinite(sy)
    params = {"xs": _float_array(sx, finite), "ys": _float_array(sy, finite), "srid": srid}
    if prepared and len(xs) <= PREPARED_MAX_POINTS:
        rows = _execute_prepared(conn, params)
    else:
        rows = conn.execute(sa.text(_LOOKUP_SQL), params).all()
    # many points share a unit: build each Area and chain once (immutable, so safe to share)
    areas: dict[tuple[str | None, str | None], Area | None] = {}
    chains: dict[str | None, tuple[Responsibility, ...]] = {}

    def area(code: str | None, name: str | None) -> Area | None:
        key = (code, name)
        if key not in areas:
            areas[key] = _area(code, name)
        return areas[key]

    answers = []
    for grid_code, grid_name, community_code, community_name, street_code, street_name, \
            district_code, district_name, chain in rows:
        if chain is not None:  # the first row of its grid (rows come in input order)
            chains[grid_code] = _chain(orjson.loads(chain), contact)
        answers.append(GridAnswer(district=area(district_code, district_name),
                                  street=area(street_code, street_name),
                                  community=area(community_code, community_name),
                                  grid=area(grid_code, grid_name),
                                  responsibility=chains.get(grid_code, ())))
    return answers
