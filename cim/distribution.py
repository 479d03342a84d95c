"""Which tables of a base live where on a Citus cluster, and the step of ``cim init`` that puts them there.

Runs after the migrations, only when the database has the ``citus`` extension (a coordinator made by
``cim db up --workers N``); on a single node nothing here runs and the schema is the migrations' alone.
Idempotent: a table already placed is left as it is, so ``cim init`` stays safe to run again.

* **Reference tables** (a full copy on every node, joined locally with any shard): administrative units,
  grids, code lists, responsibility, the provenance of loads — small, read by every query, written rarely.
* **Distributed tables**, hash-distributed and co-located on ``district_code`` (the jurisdiction: the
  same column the tables are partitioned on): the big feature layers. Co-location puts all rows of one
  district of every layer on the same node, so a join between two of them *on the district* runs on
  the workers; joins between them on anything else (a spatial join of parts to buildings) are not
  supported by Citus and the platform does not make them (see docs/citus.md).
* Everything else stays on the coordinator (the case loop, live sensing, keys, the layer registry).

What Citus requires of a distributed table, and how it is met (the reasons are in docs/citus.md): the
distribution column is NOT NULL (a feature outside every district gets ``''``) and in the primary key and every
unique index — true of the tables partitioned by district (``cim.schema``), which are the distributed ones;
foreign keys point only at reference tables; and triggers that write to their own table (the history triggers
of migration 0002) are not installed on them — the loaders keep history themselves.

The partitions by district live here too (:func:`ensure_partitions`): which district has its partition, made
as districts appear, whether or not the base is on Citus.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.jurisdiction import API_ROLE
from cim.schema import DISTRICT_PARTITIONED, NO_DISTRICT, PARTITION_COLUMN, district_partition_sql

#: the distribution column of every distributed table: the partition key (one jurisdiction column)
DISTRIBUTION_COLUMN = PARTITION_COLUMN
#: copied to every node, parents before the tables that refer to them
REFERENCE_TABLES = ("ingest_runs", "part_classes", "admin_aliases", "districts", "streets", "communities", "grids",
                    "departments", "posts", "persons", "post_persons", "grid_posts", "curtain_walls",
                    "iot_devices", "case_classes", "case_department_kinds", "case_calendar", "case_working_hours")
#: the case loop's and live sensing's big tables (migration 0009 gave them the district): distributed with the
#: feature layers, in their co-location group — a district's cases, their log and its devices' readings sit on
#: the node that holds the district's parts. Not partitioned by district (docs/citus.md, "Cases and readings").
ACTIVITY_TABLES = ("cases", "case_events", "iot_readings")
#: hash-distributed on DISTRIBUTION_COLUMN, all co-located with the first: the tables partitioned on it, whose
#: primary key and unique indexes already include it (cim.schema), then the case loop's and the readings
DISTRIBUTED_TABLES = (*DISTRICT_PARTITIONED, *ACTIVITY_TABLES)
#: their primary key on Citus, which enforces uniqueness only with the distribution column (on one node: ``id``)
CITUS_KEYS = {"cases": ("id", DISTRIBUTION_COLUMN), "case_events": ("id", DISTRIBUTION_COLUMN)}
#: the keys a single-node base checks once per statement by trigger instead (migration 0011_case_keys): Citus
#: gets them back as plain foreign keys (co-located through the district below) when a base is placed on it
TRIGGER_CHECKED_KEYS = (("case_events", "case_events_case_id_fkey", "FOREIGN KEY (case_id) REFERENCES cases(id)"),
                        ("cases", "cases_class_code_fkey", "FOREIGN KEY (class_code) REFERENCES case_classes(code)"))
#: shards per distributed table: a multiple of the workers of a 3-machine deployment (docs/citus.md)
SHARD_COUNT = 32


@dataclass(frozen=True)
class CitusNode:
    role: str  # coordinator | worker
    host: str
    port: int
    active: bool
    shards: int


#: true on a Citus coordinator (the extension is there); for DBAPI cursors too
IS_CITUS_SQL = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"


def is_citus(conn: Connection) -> bool:
    """Whether this database is a Citus coordinator (the extension is there)."""
    return bool(conn.execute(sa.text(IS_CITUS_SQL)).scalar())


_ON_CITUS = "cim_on_citus"


def on_citus(conn: Connection) -> bool:
    """:func:`is_citus`, asked once per pooled connection (a writer asks before each row lock)."""
    known = conn.info.get(_ON_CITUS)
    if known is None:
        known = conn.info[_ON_CITUS] = is_citus(conn)
    return known


def citus_nodes(conn: Connection) -> list[CitusNode]:
    """The nodes of the cluster with how many shard placements each holds; [] on a single node."""
    if not is_citus(conn):
        return []
    rows = conn.execute(sa.text(
        "SELECT CASE WHEN n.groupid = 0 THEN 'coordinator' ELSE 'worker' END, n.nodename, n.nodeport, n.isactive, "
        "(SELECT count(*) FROM pg_dist_placement p WHERE p.groupid = n.groupid) "
        "FROM pg_dist_node n ORDER BY n.groupid")).all()
    return [CitusNode(role, host, int(port), bool(active), int(shards)) for role, host, port, active, shards in rows]


def placement(conn: Connection) -> dict[str, str]:
    """Table → ``distributed`` | ``reference`` | ``local`` for every table Citus manages."""
    rows = conn.execute(sa.text("SELECT table_name::text, citus_table_type FROM citus_tables")).all()
    return {name: kind for name, kind in rows}


def distribute(conn: Connection) -> list[str]:
    """Place the base's tables on the Citus cluster (see the module's docstring); what was changed.
    A no-op (``[]``) on a database without Citus."""
    if not is_citus(conn):
        return []
    placed = placement(conn)
    wanted = {**{t: "reference" for t in REFERENCE_TABLES}, **{t: "distributed" for t in DISTRIBUTED_TABLES}}
    todo = [t for t in wanted if placed.get(t) != wanted[t] and _exists(conn, t)]
    if not todo:
        return []
    # DDL and distribution in one transaction: Citus must then talk to each worker over one connection
    conn.execute(sa.text("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"))
    managed = [t for t in wanted if _exists(conn, t)]
    foreign_keys = _drop_foreign_keys(conn, managed)
    named = {(table, name) for table, name, _ in foreign_keys}
    foreign_keys += [key for key in TRIGGER_CHECKED_KEYS if key[:2] not in named and key[0] in managed]
    changes: list[str] = []
    for table in todo:
        _drop_triggers(conn, table)
        if wanted[table] == "distributed" and table in ACTIVITY_TABLES:
            changes += _make_distributable(conn, table)
        if placed.get(table) == "local":  # made a Citus local table earlier by a foreign key: start over
            conn.execute(sa.text(f"SELECT undistribute_table('{table}')"))
        if wanted[table] == "reference":
            conn.execute(sa.text(f"SELECT create_reference_table('{table}')"))
            changes.append(f"citus: {table} is a reference table")
        else:
            if table not in ACTIVITY_TABLES:
                _check_distributable(conn, table)
            # the first table sets the shard count; the others join its co-location group
            placement_of = (f"colocate_with => '{DISTRIBUTED_TABLES[0]}'" if table != DISTRIBUTED_TABLES[0]
                            else f"colocate_with => 'none', shard_count => {SHARD_COUNT}")
            conn.execute(sa.text(
                f"SELECT create_distributed_table('{table}', '{DISTRIBUTION_COLUMN}', {placement_of})"))
            changes.append(f"citus: {table} distributed on {DISTRIBUTION_COLUMN} ({SHARD_COUNT} shards)")
    distributed = {t for t, kind in {**placement(conn)}.items() if kind == "distributed"}
    for table, name, definition in foreign_keys:
        definition = _citus_foreign_key(table, definition, distributed)
        if definition is None:
            changes.append(f"citus: foreign key {table}.{name} dropped (a local table cannot refer to a "
                           "distributed one)")
            continue
        conn.execute(sa.text(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}'))
    return changes


_FOREIGN_KEY = re.compile(r"^FOREIGN KEY \(([^)]*)\) REFERENCES (\S+?)\(([^)]*)\)(.*)$")


def _citus_foreign_key(table: str, definition: str, distributed: set[str]) -> str | None:
    """The foreign key ``definition`` of ``table`` as Citus can keep it: to a distributed table only from a
    co-located distributed one, through the district (``(case_id) → cases(id)`` becomes ``(case_id,
    district_code) → cases(id, district_code)``); None when it cannot be kept (from a table on the
    coordinator to a distributed one: the case loop's attachments, the scenarios' links to cases)."""
    match = _FOREIGN_KEY.match(definition)
    if match is None or match.group(2).strip('"') not in distributed:
        return definition
    if table not in distributed:
        return None
    columns, target, keys, rest = match.groups()
    if DISTRIBUTION_COLUMN in columns.split(", "):
        return definition
    return (f"FOREIGN KEY ({columns}, {DISTRIBUTION_COLUMN}) REFERENCES {target}({keys}, {DISTRIBUTION_COLUMN})"
            f"{rest}")


def _make_distributable(conn: Connection, table: str) -> list[str]:
    """What Citus needs of the case loop's and the readings' tables beyond the district column (migration 0009):
    the district in the primary key, and no row-level security policy with a subquery (Citus refuses one; on
    Citus no transaction runs under the policies — cim.jurisdiction.install_scope_hook — and without a policy
    the API role would see nothing)."""
    changes = []
    key = CITUS_KEYS.get(table)
    if key is not None:
        name, columns = conn.execute(sa.text(
            "SELECT conname, ARRAY(SELECT a.attname::text FROM unnest(conkey) k JOIN pg_attribute a "
            "ON a.attrelid = conrelid AND a.attnum = k) FROM pg_constraint "
            "WHERE conrelid = CAST(:t AS regclass) AND contype = 'p'"), {"t": table}).one()
        if tuple(columns) != key:
            conn.execute(sa.text(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"'))
            conn.execute(sa.text(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" PRIMARY KEY ({", ".join(key)})'))
            changes.append(f"citus: {table}'s primary key is ({', '.join(key)})")
    for (policy,) in conn.execute(sa.text(
            "SELECT policyname FROM pg_policies WHERE tablename = :t AND (qual ~* 'select' OR with_check ~* 'select')"),
            {"t": table}).all():
        conn.execute(sa.text(f'DROP POLICY "{policy}" ON "{table}"'))
    return changes


def _exists(conn: Connection, table: str) -> bool:
    return conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar()


def _drop_foreign_keys(conn: Connection, tables: list[str]) -> list[tuple[str, str, str]]:
    """Drop the foreign keys from and to ``tables`` (Citus places a table only when its keys point at
    tables already placed compatibly); their definitions, to add back once every table is placed."""
    rows = conn.execute(sa.text(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'f' AND conparentid = 0 "  # a partition's copy goes and comes back with its parent's
        "AND (conrelid::regclass::text = ANY(:t) OR confrelid::regclass::text = ANY(:t)) "
        "ORDER BY conrelid::regclass::text, conname"), {"t": tables}).all()
    for table, name, _definition in rows:
        conn.execute(sa.text(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"'))
    return [(t, n, d) for t, n, d in rows]


def _drop_triggers(conn: Connection, table: str) -> None:
    # Citus places no table that has triggers: the history triggers of migration 0002 (they write to their
    # own table from inside a shard, which Citus refuses anyway), the statement-level audit trigger of
    # 0006_jurisdiction (docs/citus.md: on Citus the audit trail records the API's writes and unmasked
    # reads, not every statement of the owner's loads), the case log's append-only triggers and the cases'
    # layer-version trigger (it writes ``layers``, on the coordinator, from a shard) — docs/citus.md
    for (trigger,) in conn.execute(sa.text(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal "
            "AND tgparentid = 0"), {"t": table}).all():
        conn.execute(sa.text(f'DROP TRIGGER IF EXISTS "{trigger}" ON "{table}"'))


def _check_distributable(conn: Connection, table: str) -> None:
    """A distributed table is partitioned on the distribution column (migration 0008 made it so), hence its key
    is NOT NULL and in its primary key and every unique index; say so plainly if a base is not there yet."""
    partitioned = conn.execute(sa.text(
        "SELECT pg_get_partkeydef(CAST(:t AS regclass))"), {"t": table}).scalar()
    if partitioned != f"LIST ({DISTRIBUTION_COLUMN})":
        raise RuntimeError(f"{table} is not partitioned on {DISTRIBUTION_COLUMN} (found {partitioned!r}); "
                           "the migrations must reach 0008_partition_by_district before Citus places it")


# --- partitions by district ---------------------------------------------------------------------------

_BOUND = re.compile(r"^FOR VALUES IN \('((?:[^']|'')*)'\)$")


def district_partitions(cur, table: str) -> dict[str | None, str]:
    """``table``'s partitions: district code (None: the DEFAULT partition) → partition name. ``cur``: a DBAPI
    cursor (the loaders work on one; a migration passes its connection's)."""
    cur.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass", (table,))
    found: dict[str | None, str] = {}
    for name, bound in cur.fetchall():
        if bound == "DEFAULT":
            found[None] = name
        elif (match := _BOUND.match(bound)):
            found[match.group(1).replace("''", "'")] = name
    return found


def ensure_partitions(cur, table: str, districts: Iterable[str | None]) -> list[str]:
    """Make the partitions ``table`` lacks for ``districts`` (and its DEFAULT partition); the names made.
    ``cur``: a DBAPI cursor, in the caller's transaction.

    A district's rows never stay in the DEFAULT partition once the district has a partition of its own: any
    found there (written before the partition existed, e.g. by hand in SQL) move into it, as they are —
    same fid, feature id and history (the history triggers are bypassed for the move: nothing changed)."""
    if table not in DISTRICT_PARTITIONED:
        return []
    existing = district_partitions(cur, table)
    made: list[str] = []
    wanted = sorted({d for d in districts if d is not None and d != NO_DISTRICT} - set(existing))
    if not wanted and None in existing:
        return made
    cur.execute(IS_CITUS_SQL)
    if cur.fetchone()[0]:
        # DDL on a distributed table whose foreign keys point at reference tables: one connection per node
        cur.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    if None not in existing:
        create, attach = district_partition_sql(table, None)
        cur.execute(create)
        for _parent_index, statement in partition_index_sql(cur, table, f"{table}_default"):
            cur.execute(statement)
        cur.execute(attach)
        existing = {None: f"{table}_default", **existing}
        revoke_partition_access(cur, existing[None])
        made.append(existing[None])
    for district in wanted:
        create, attach = district_partition_sql(table, district)
        cur.execute(create)
        name = create.split('"')[1]
        for _parent_index, statement in partition_index_sql(cur, table, name):
            cur.execute(statement)  # the partition is empty: built at once, then attached to the parent's
        default = existing[None]
        cur.execute(f'SELECT EXISTS (SELECT 1 FROM "{default}" WHERE {PARTITION_COLUMN} = %s)', (district,))
        if cur.fetchone()[0]:
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                        "AND NOT attisdropped ORDER BY attnum", (table,))
            columns = ", ".join(f'"{r[0]}"' for r in cur.fetchall())
            cur.execute(f'ALTER TABLE "{default}" DISABLE TRIGGER USER')
            cur.execute(f'WITH moved AS (DELETE FROM "{default}" WHERE {PARTITION_COLUMN} = %s RETURNING {columns}) '
                        f'INSERT INTO "{name}" ({columns}) SELECT {columns} FROM moved', (district,))
            cur.execute(f'ALTER TABLE "{default}" ENABLE TRIGGER USER')
        cur.execute(attach)
        revoke_partition_access(cur, name)
        made.append(name)
    return made


_INDEX_HEAD = re.compile(r"^(CREATE (?:UNIQUE )?INDEX) (\S+) ON ONLY (\S+) USING ")


def partition_index_sql(cur, table: str, partition: str) -> list[tuple[str, str]]:
    """For each index of the partitioned ``table`` (not its primary key, which ATTACH makes), the parent index's
    name and the statement that makes the same index on ``partition``, named ``<parent index>_<district>`` —
    e.g. ``ix_parts_geom_310104`` — so plans name the index they use. An index made so before ATTACH PARTITION
    is attached to the parent's; made after, it is attached with ``ALTER INDEX parent ATTACH PARTITION``
    (that is how an index is built partition by partition: ``CREATE INDEX … ON ONLY`` the parent first)."""
    suffix = partition[len(table) + 1:] if partition.startswith(f"{table}_") else partition
    cur.execute("SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary ORDER BY i.relname", (table,))
    out = []
    for name, definition in cur.fetchall():
        match = _INDEX_HEAD.match(definition)
        if match is None:  # not a partitioned index (the table is not partitioned yet)
            continue
        out.append((name, f'{match.group(1)} "{name}_{suffix}" ON "{partition}" USING {definition[match.end():]}'))
    return out


def revoke_partition_access(cur, partition: str) -> None:  # noqa: ANN001 (a DBAPI cursor)
    """No direct access to a partition for anyone but the owner: see below."""
    # the API role reads and writes a partition only through its parent, whose row-level security policies
    # then apply (a partition's own would not: it has none)
    cur.execute(f'REVOKE ALL ON "{partition}" FROM PUBLIC')
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (API_ROLE,))
    if cur.fetchone()[0]:
        cur.execute(f'REVOKE ALL ON "{partition}" FROM {API_ROLE}')
