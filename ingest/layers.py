"""What each feature layer does beyond its columns, as the hooks its :class:`ingest.specs.LayerSpec`
names: the rules run over a batch, checks against the base, what is read before or at the start
of a load, and the links the merge makes. The loader itself (``ingest.run``) is layer-neutral."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from cim.distribution import IS_CITUS_SQL
from cim.schema import CURTAIN_WALL_SUPPORT_TYPES as SUPPORT_TYPES
from ingest import geometry as geo
from ingest import prepare
from ingest.seen import digit_keys
from ingest.prepare import Context, Prepared, with_placeholders

#: rules over one batch: (coerced frame, geometry in the storage CRS with rejected rows None or None
#: for no geometry, which rows are still valid, the run's context) -> the prepared batch
Rules = Callable[[pd.DataFrame, "np.ndarray | None", np.ndarray, Context], Prepared]
#: per-batch check against the base, inside the load's transaction: (cursor, prepared frame, source row
#: numbers, rejects by batch position to add to, the run's context)
Check = Callable[[Any, pd.DataFrame, np.ndarray, dict[int, str], Context], None]


# --- rules -----------------------------------------------------------------------------------------

def flat_rules(frame: pd.DataFrame, geoms: np.ndarray | None, valid: np.ndarray, ctx: Context) -> Prepared:
    """Features on the ground (z = 0) with no rule of their own (curtain walls given their own outline)."""
    return Prepared(frame, _on_ground(geoms, valid), {}, {})


def hierarchy_rules(frame: pd.DataFrame, geoms: np.ndarray | None, valid: np.ndarray, ctx: Context,
                    layer: str) -> Prepared:
    return Prepared(prepare.parent_codes(frame, layer), _on_ground(geoms, valid), {}, {})


def building_rules(frame: pd.DataFrame, geoms: np.ndarray | None, valid: np.ndarray, ctx: Context) -> Prepared:
    return prepare.prepare_buildings(frame, with_placeholders(geoms, valid), ctx)


def pipeline_rules(frame: pd.DataFrame, geoms: np.ndarray | None, valid: np.ndarray, ctx: Context) -> Prepared:
    return prepare.prepare_pipelines(frame, with_placeholders(geoms, valid, "line"), ctx)


def point_rules(frame: pd.DataFrame, geoms: np.ndarray | None, valid: np.ndarray, ctx: Context) -> Prepared:
    return prepare.prepare_points(frame, with_placeholders(geoms, valid, "point"), ctx)


def address_rules(frame: pd.DataFrame, geoms: np.ndarray | None, valid: np.ndarray, ctx: Context) -> Prepared:
    assert ctx.address_parser is not None, "read_address_parser runs before the load"
    return ctx.address_parser.prepare(point_rules(frame, geoms, valid, ctx))


def part_rules(frame: pd.DataFrame, geoms: np.ndarray | None, valid: np.ndarray, ctx: Context) -> Prepared:
    district_codes = (frame["district_code"].to_numpy(dtype=object) if "district_code" in frame
                      else np.full(len(frame), None, dtype=object))
    return prepare.prepare_parts(frame, with_placeholders(geoms, valid, "point"), ctx, district_codes,
                                 _existing_object_codes(ctx.cur, frame))


def _on_ground(geoms: np.ndarray | None, valid: np.ndarray) -> np.ndarray | None:
    if geoms is None:
        return None
    return geo.with_constant_z(with_placeholders(geoms, valid), np.zeros(len(geoms)))


def _existing_object_codes(cur, frame: pd.DataFrame) -> dict[str, str]:
    """Codes the base already gave these parts (the current version's, or the latest one's of a closed
    part delivered again), so a re-delivery without codes keeps them."""
    ids = frame.loc[frame["object_code"].isna(), "source_id"].dropna().tolist()
    if not ids:
        return {}
    cur.execute("SELECT DISTINCT ON (source_id) source_id, object_code FROM parts WHERE source_id = ANY(%s) "
                "ORDER BY source_id, valid_to DESC NULLS FIRST, fid DESC", (ids,))
    return dict(cur.fetchall())


# --- read once per run ----------------------------------------------------------------------------

def read_address_parser(conn: Connection, ctx: Context) -> None:
    from ingest.addresses import AddressParser  # the gazetteer is only needed by address loads

    ctx.address_parser = AddressParser.load(conn)


def read_part_sequences(cur, ctx: Context) -> None:
    """The last object-code sequence per 10-digit prefix, over every version ever stored (a closed
    feature keeps its code: it may be delivered again). Read after the load's lock, so two loads
    never hand out the same codes."""
    cur.execute("SELECT left(object_code, 10), max(right(object_code, 6)::int) FROM parts GROUP BY 1")
    ctx.next_sequence = dict(cur.fetchall())


# --- checks against the base ----------------------------------------------------------------------

def check_object_codes(cur, frame: pd.DataFrame, rows: np.ndarray, reasons: dict[int, str], ctx: Context) -> None:
    """An object code names one current part: not two rows of a load, nor a part of another source id."""
    codes = frame["object_code"].to_numpy(dtype=object)
    sources = frame["source_id"].to_numpy(dtype=object)
    open_rows = np.ones(len(codes), dtype=bool)
    open_rows[list(reasons)] = False
    checked = np.flatnonzero(open_rows & ~pd.isna(codes))
    if not len(checked):
        return
    if not ctx.base_empty:  # a first load: no part holds a code yet, and asking costs ~5 s per 1 M parts
        cur.execute("SELECT object_code, source_id FROM parts WHERE valid_to IS NULL AND object_code = ANY(%s)",
                    (sorted(set(codes[checked].tolist())),))
        holders = dict(cur.fetchall())
        if holders:
            taken = np.array([code in holders and (holders[code] is None or holders[code] != source)
                              for code, source in zip(codes[checked], sources[checked])], dtype=bool)
            for i in checked[taken].tolist():
                reasons[i] = f"object code {codes[i]} already belongs to part {holders[codes[i]]!r}"
            checked = checked[~taken]
    # codes are 16 ASCII digits here (prepare_parts rejected the others): each is its own exact key
    firsts = ctx.object_code_rows.first(*digit_keys(codes[checked]), rows[checked])
    repeated = firsts != rows[checked]
    for i, first in zip(checked[repeated].tolist(), firsts[repeated].tolist()):
        reasons[i] = f"object code {codes[i]} repeated (also at row {first})"


def check_curtain_walls(cur, frame: pd.DataFrame, rows: np.ndarray, reasons: dict[int, str], ctx: Context) -> None:
    support = frame["support_type"].to_numpy(dtype=object)
    for i in np.flatnonzero(pd.notna(support) & ~np.isin(support, SUPPORT_TYPES)):
        reasons.setdefault(int(i), f"unknown support type {support[i]!r} (one of {'、'.join(SUPPORT_TYPES)})")
    wanted = sorted({b for b in frame["building_source_id"] if b is not None})
    cur.execute("SELECT source_id FROM buildings WHERE valid_to IS NULL AND source_id = ANY(%s)", (wanted,))
    known = {r[0] for r in cur.fetchall()}
    for i, building in enumerate(frame["building_source_id"]):
        if building not in known:
            reasons.setdefault(i, f"unknown building {building!r} (load buildings first)")


# --- links made by the merge (see ingest.merge.merge: extra_select and joins) ---------------------

# Each link is a temp table made by a join of the staged rows (a subquery) with the other layer, keyed by
# the staged row: on a Citus cluster the other layer is distributed and may be joined only so (a local
# table is planned as a subquery's result, never correlated with a distributed one: docs/citus.md)
CURTAIN_WALL_MERGE = {
    "links": {"_link_building": (
        "SELECT s.stage_key, b.feature_id, b.geom, b.district_code, b.street_code, b.community_code, b.grid_code "
        "FROM (SELECT stage_key, building_source_id FROM _stage) s "
        "JOIN buildings b ON b.source_id = s.building_source_id AND b.valid_to IS NULL")},
    "extra_select": {
        "geom": "COALESCE(s.geom, b.geom)", "building_feature_id": "b.feature_id",
        **{c: f"COALESCE(s.{c}, b.{c})" for c in ("district_code", "street_code", "community_code", "grid_code")}},
    "joins": "LEFT JOIN _link_building b ON b.stage_key = s.stage_key"}
BUILDING_MERGE = {
    "links": {"_link_address": (
        "SELECT DISTINCT ON (s.stage_key) s.stage_key, a.feature_id "
        "FROM (SELECT stage_key, geom FROM _stage) s "
        "JOIN addresses a ON a.valid_to IS NULL AND ST_Covers(s.geom, a.geom) "
        "ORDER BY s.stage_key, a.door_int NULLS LAST, a.standard_address")},
    "extra_select": {"address_feature_id": "la.feature_id"},
    "joins": "LEFT JOIN _link_address la ON la.stage_key = s.stage_key"}
# An address's building: of the current buildings that cover it, the one with the smallest source id. Asked
# over the whole layer, that is one index probe into every district's partition per address (17 for
# Shanghai: 170 M probes for its 10 M addresses, ~40 min). Every building that covers an address lies in the
# address's own district's partition or crosses into that district from another (or from outside every
# district), so the link asks the own district's partition (pruned at run time: one probe) and the small set
# of buildings that cross into that district (``crossing_buildings``); an address outside every district asks
# the whole layer. The answer is the same building (tests/test_address_links.py compares it with
# ``ADDRESS_LINK_UNPRUNED``, which Citus still uses: it cannot correlate a local table with a distributed one).
ADDRESS_LINK_UNPRUNED = (
    "SELECT DISTINCT ON (s.stage_key) s.stage_key, b.feature_id "
    "FROM (SELECT stage_key, geom FROM _stage) s "
    "JOIN buildings b ON b.valid_to IS NULL AND ST_Covers(b.geom, s.geom) "
    "ORDER BY s.stage_key, b.source_id")
CROSSING = "_crossing_buildings"


def crossing_statements(districts: str, name: str = CROSSING) -> list[str]:
    """The statements making a temp table ``name`` (district_code, feature_id, source_id, geom; GiST on
    geom): for each district that ``districts`` (a SELECT of codes) names, the current buildings of other
    districts (or of none) that reach into it. The index is asked with the district cut into small pieces
    (``ST_Subdivide``, each widened by 1 cm against the rounding of the cuts), so it looks along the district's
    edges only, not over its whole box; the test is then against the district itself (exact; the same
    polygon twice in a row, so PostGIS prepares it once)."""
    return [
        f"DROP TABLE IF EXISTS {name}",
        f"""CREATE TEMP TABLE {name} ON COMMIT DROP AS
        SELECT DISTINCT ON (d.code, b.district_code, b.fid) d.code AS district_code, b.feature_id, b.source_id,
               b.geom
        FROM districts d CROSS JOIN LATERAL ST_Subdivide(d.geom, 64) AS p(piece)
        JOIN buildings b ON b.valid_to IS NULL AND b.district_code <> d.code AND b.geom && ST_Expand(p.piece, 0.01)
        WHERE d.valid_to IS NULL AND d.code IN ({districts}) AND ST_Intersects(d.geom, b.geom)""",
        f"CREATE INDEX ON {name} USING gist (geom)",
        f"ANALYZE {name}",
    ]


def building_lateral(alias: str, crossing: str = CROSSING) -> str:
    """A LATERAL subquery: the building of the row ``alias`` (with district_code and geom), if any. LATERAL
    with LIMIT keeps it a nested loop, so each row probes its own district's partition only (run-time
    partition pruning on ``alias.district_code``)."""
    return f"""(SELECT c.feature_id FROM (
        SELECT b.feature_id, b.source_id FROM buildings b WHERE {alias}.district_code <> ''
            AND b.district_code = {alias}.district_code AND b.valid_to IS NULL AND ST_Covers(b.geom, {alias}.geom)
        UNION ALL
        SELECT x.feature_id, x.source_id FROM {crossing} x
        WHERE x.district_code = {alias}.district_code AND ST_Covers(x.geom, {alias}.geom)
        UNION ALL
        SELECT b.feature_id, b.source_id FROM buildings b WHERE COALESCE({alias}.district_code, '') = ''
            AND b.valid_to IS NULL AND ST_Covers(b.geom, {alias}.geom)
      ) c ORDER BY c.source_id, c.feature_id LIMIT 1)"""


def address_building_links(cur) -> str:
    """The merge's link of staged addresses to buildings (see above), once the crossing buildings of the
    staged addresses' districts are made."""
    cur.execute(IS_CITUS_SQL)
    if cur.fetchone()[0]:
        return ADDRESS_LINK_UNPRUNED
    for statement in crossing_statements("SELECT DISTINCT district_code FROM _stage"):
        cur.execute(statement)
    return ("SELECT s.stage_key, l.feature_id FROM (SELECT stage_key, district_code, geom FROM _stage) s "
            f"CROSS JOIN LATERAL {building_lateral('s')} l")


def address_staged_links(district: str, name: str, columns: list[str]) -> list[str]:
    """For a first load staged by district (ingest.staged): the statements, run as one transaction on a
    builder's connection, that give the district's staged rows (table ``name``, holding every column of the
    parent, ``columns``) their buildings. A copy of the table with the link filled in replaces it: an UPDATE
    would leave the old version of every linked row behind, and the indexes are built after."""
    linked = f"{name}_linked"
    quoted = ", ".join(f'"{c}"' for c in columns)
    select = ", ".join("l.feature_id" if c == "building_feature_id" else f'a."{c}"' for c in columns)
    return [
        *crossing_statements(_values([district])),
        f'CREATE TABLE "{linked}" (LIKE "{name}" INCLUDING ALL)',
        f'INSERT INTO "{linked}" ({quoted}) SELECT {select} FROM "{name}" a '
        f"LEFT JOIN LATERAL {building_lateral('a')} l ON true",
        f'DROP TABLE "{name}"',
        f'ALTER TABLE "{linked}" RENAME TO "{name}"',
    ]


def address_loaded_links(cur, table: str, run_id: int) -> None:
    """The rows a staged first load COPYed straight into the layer (no district, or one whose partition was
    there already): their buildings, set in place (no history: they are rows of this load)."""
    cur.execute(f'SELECT DISTINCT district_code FROM "{table}" WHERE ingest_run_id = %s', (run_id,))
    codes = [r[0] for r in cur.fetchall()]
    if not codes:
        return
    for statement in crossing_statements(_values(codes)):
        cur.execute(statement)
    without_history(cur, table, f'''UPDATE "{table}" t SET building_feature_id = k.feature_id FROM (
        SELECT r.fid, r.district_code, l.feature_id FROM "{table}" r CROSS JOIN LATERAL {building_lateral("r")} l
        WHERE r.ingest_run_id = %s) k
        WHERE t.fid = k.fid AND t.district_code = k.district_code''', (run_id,))


def without_history(cur, table: str, statement: str, params: tuple | None = None) -> int:
    """Run ``statement`` (an UPDATE of ``table``) with the table's history triggers off: a link derived from
    geometry, or set on rows of this very load, is no new version of a feature. The rows it changed."""
    cur.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER USER')
    cur.execute(statement, params)
    changed = cur.rowcount
    cur.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER USER')
    return changed


def _values(codes: list[str]) -> str:
    return "VALUES " + ", ".join("('{}')".format(code.replace("'", "''")) for code in codes)


ADDRESS_MERGE = {
    "links": {"_link_building": address_building_links},
    "extra_select": {"building_feature_id": "lb.feature_id"},
    "joins": "LEFT JOIN _link_building lb ON lb.stage_key = s.stage_key"}


# --- links completed by the layer that arrives second ---------------------------------------------

# An address takes its building, and a building its address, when it is loaded (the merge's links above). Whichever
# of the two layers is loaded second therefore also completes the rows of the first that had nothing to link to
# yet (``cim samples load`` loads the addresses before the buildings; the synthetic Shanghai the other way round).
# Only current rows without a link are filled, in place: the link is derived from geometry, not something the
# delivery said, so it makes no new version (the history triggers are off for the statement, as in
# ``address_loaded_links``) and closed versions keep what they had. Both loads lock both tables, always in the same
# order (ingest.run), so an address load and a building load wait for each other instead of deadlocking.
LINKED_LAYERS = ("addresses", "buildings")

_REACH = """CREATE TEMP TABLE {name} ON COMMIT DROP AS
    SELECT s.feature_id, s.district_code AS reach, s.geom FROM {source} s
    UNION ALL
    SELECT s.feature_id, d.code, s.geom FROM {source} s
    JOIN districts d ON d.valid_to IS NULL AND d.code <> s.district_code AND d.geom && s.geom
        AND ST_Intersects(d.geom, s.geom)
    UNION ALL
    SELECT s.feature_id, '', s.geom FROM {source} s WHERE s.district_code <> ''"""


def _reach_statements(source: str, name: str) -> list[str]:
    """A temp table ``name`` (feature_id, reach, geom): each building of ``source`` once for every district whose
    points it may cover — its own, each other district it crosses into, and '' (points outside every district) —
    so that a probe of the addresses names one district (one partition, pruned at run time)."""
    return [f"DROP TABLE IF EXISTS {name}", _REACH.format(name=name, source=source)]


def _temp_table(cur, name: str, query: str, params: tuple = ()) -> int:
    """A temp table ``name`` of ``query``'s rows, gone at the commit (made again if an earlier step of this
    transaction made it); how many rows it holds."""
    cur.execute(f"DROP TABLE IF EXISTS {name}")
    cur.execute(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {query}", params or None)
    return cur.rowcount


def _is_citus(cur) -> bool:
    cur.execute(IS_CITUS_SQL)
    return bool(cur.fetchone()[0])


def complete_address_links(cur, run_id: int) -> int:
    """After a building load: the current addresses without a building that a building of this run covers get
    their building — the one an address loaded now would get (``building_lateral``: the smallest source id among
    the current buildings covering it). Returns how many addresses were linked."""
    if _is_citus(cur):  # the probes below correlate temp tables with distributed ones (docs/citus.md)
        return 0
    if not _temp_table(cur, "_arrived", "SELECT feature_id, district_code, geom FROM buildings "
                                        "WHERE ingest_run_id = %s AND valid_to IS NULL", (run_id,)):
        return 0
    for statement in _reach_statements("_arrived", "_arrived_reach"):
        cur.execute(statement)
    if not _temp_table(cur, "_unlinked", """
        SELECT DISTINCT a.fid, a.district_code, a.geom FROM _arrived_reach n CROSS JOIN LATERAL (
            SELECT a.fid, a.district_code, a.geom FROM addresses a WHERE a.district_code = n.reach
                AND a.valid_to IS NULL AND a.building_feature_id IS NULL AND ST_Covers(n.geom, a.geom)) a"""):
        return 0
    for statement in crossing_statements("SELECT DISTINCT district_code FROM _unlinked"):
        cur.execute(statement)
    return without_history(cur, "addresses", f"""UPDATE addresses t SET building_feature_id = k.feature_id FROM (
        SELECT u.fid, u.district_code, l.feature_id FROM _unlinked u CROSS JOIN LATERAL {building_lateral("u")} l) k
        WHERE t.fid = k.fid AND t.district_code = k.district_code""")


def complete_building_links(cur, run_id: int) -> int:
    """After an address load: the current buildings without an address that cover an address of this run get
    their address — the one a building loaded now would get (``BUILDING_MERGE``: of the current addresses it
    covers, the lowest door number, then the standard address). Returns how many buildings were linked."""
    if _is_citus(cur):
        return 0
    if not _temp_table(cur, "_arrived", "SELECT district_code, geom FROM addresses "
                                        "WHERE ingest_run_id = %s AND valid_to IS NULL", (run_id,)):
        return 0
    for statement in crossing_statements("SELECT DISTINCT district_code FROM _arrived"):
        cur.execute(statement)
    # the buildings covering an arrived address: in its district's partition, crossing into its district, or (for
    # an address outside every district) anywhere — the three branches of building_lateral, without its LIMIT
    if not _temp_table(cur, "_unlinked", f"""
        SELECT b.fid, b.feature_id, b.district_code, b.geom FROM buildings b
        WHERE b.valid_to IS NULL AND b.address_feature_id IS NULL AND b.feature_id IN (
            SELECT c.feature_id FROM _arrived a CROSS JOIN LATERAL (
                SELECT b.feature_id FROM buildings b WHERE a.district_code <> ''
                    AND b.district_code = a.district_code AND b.valid_to IS NULL AND ST_Covers(b.geom, a.geom)
                UNION ALL
                SELECT x.feature_id FROM {CROSSING} x
                WHERE x.district_code = a.district_code AND ST_Covers(x.geom, a.geom)
                UNION ALL
                SELECT b.feature_id FROM buildings b WHERE COALESCE(a.district_code, '') = ''
                    AND b.valid_to IS NULL AND ST_Covers(b.geom, a.geom)) c)"""):
        return 0
    for statement in _reach_statements("_unlinked", "_unlinked_reach"):
        cur.execute(statement)
    return without_history(cur, "buildings", """UPDATE buildings t SET address_feature_id = k.feature_id FROM (
        SELECT DISTINCT ON (u.fid) u.fid, u.district_code, a.feature_id
        FROM _unlinked u JOIN _unlinked_reach n ON n.feature_id = u.feature_id CROSS JOIN LATERAL (
            SELECT a.feature_id, a.door_int, a.standard_address FROM addresses a WHERE a.district_code = n.reach
                AND a.valid_to IS NULL AND ST_Covers(n.geom, a.geom)) a
        ORDER BY u.fid, a.door_int NULLS LAST, a.standard_address) k
        WHERE t.fid = k.fid AND t.district_code = k.district_code""")
