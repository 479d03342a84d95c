"""The planner's statistics of a layer, brought up to date by the load that changed it, before it commits.

Why: autovacuum analyzes a table once its changes pass ``autovacuum_analyze_threshold`` +
``autovacuum_analyze_scale_factor`` × its rows — but only a table it can lock without waiting, and a load holds
its layer (and the layers it links to: addresses lock buildings) in SHARE ROW EXCLUSIVE until it commits. Loaded
in the Shanghai order (buildings, then 10 M addresses), the buildings' partitions were still without statistics
when the addresses arrived, and the planner, taking the district column's B-tree for the cheaper probe, had each
of 黄浦's 367,000 addresses test all of its 55,000 buildings (the link statement ran for hours instead of
seconds; docs/benchmarks.md). So a load does what autovacuum would have done, under the same rule, at once.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from cim.distribution import IS_CITUS_SQL

#: autovacuum's defaults (``autovacuum_analyze_threshold``, ``autovacuum_analyze_scale_factor``)
THRESHOLD_ROWS = 50
SCALE_FACTOR = 0.1


@dataclass(frozen=True)
class Refreshed:
    """What :func:`refresh_statistics` did: the tables it analyzed, and whether the partitioned table's own
    statistics are left for :func:`analyze_parent`, after the commit."""

    tables: tuple[str, ...] = ()
    parent_later: bool = False


def refresh_statistics(cur, table: str, changed_rows: int, analyzed: Collection[str] = ()) -> Refreshed:
    """ANALYZE ``table`` if this load's ``changed_rows`` (inserted, updated and closed) pass autovacuum's rule for
    it, else its partitions that have never been analyzed (made by this load); inside the load's transaction, so
    the statistics count its rows. Not on Citus: there the rows live in shards on the workers, which the load's
    locks do not hold, so their own autovacuum keeps the statistics.

    ``analyzed``: partitions of ``table`` that the load analyzed itself after their last change (a staged first
    load). When the whole table is due, only its other partitions are analyzed here, and the partitioned table's
    own statistics are left for :func:`analyze_parent` after the commit (``parent_later``)."""
    cur.execute(IS_CITUS_SQL)
    if cur.fetchone()[0] or changed_rows <= 0:
        return Refreshed()
    # the table itself, or a partitioned table's partitions (pg_partition_tree lists none for a plain table)
    cur.execute("SELECT c.relname, c.reltuples FROM pg_class c WHERE c.oid = %(t)s::regclass AND c.relkind <> 'p' "
                "OR c.oid IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass) WHERE isleaf)", {"t": table})
    leaves = cur.fetchall()
    known_rows = sum(max(tuples, 0.0) for _name, tuples in leaves)
    parent_later = False
    if changed_rows > THRESHOLD_ROWS + SCALE_FACTOR * known_rows:
        if analyzed and all(name != table for name, _tuples in leaves):  # partitioned: see the docstring
            targets = [name for name, _tuples in leaves if name not in set(analyzed)]
            parent_later = True
        else:
            targets = [table]  # a partitioned table: its partitions and the whole layer's own statistics
    else:
        targets = [name for name, tuples in leaves if tuples < 0]
    for name in targets:
        cur.execute(f'ANALYZE "{name}"')
    return Refreshed(tuple(targets), parent_later)


def analyze_parent(engine: Engine, table: str, wait: str = "10s") -> bool:
    """The partitioned ``table``'s own statistics — of its rows over every partition — without analyzing its
    partitions again (they have theirs: see :func:`refresh_statistics`). Run after the load's commit; returns
    whether they were made.

    How, on PostgreSQL 15 (which has no ``ANALYZE ONLY``): a second connection holds each partition in SHARE
    UPDATE EXCLUSIVE mode for the moment, the mode ANALYZE takes, so ``ANALYZE (SKIP_LOCKED)`` of the partitioned
    table skips them as tables of their own, while it still samples them for the partitioned table's statistics
    (that takes ACCESS SHARE, which the mode allows; the documented behaviour of SKIP_LOCKED). Readers and writers
    of the partitions are not held up (the mode blocks only DDL, VACUUM and ANALYZE). A partition the holder cannot
    lock at once (autovacuum works on it) is skipped all the same. The partitioned table itself is locked first,
    waiting at most ``wait`` (a load of the layer that began since the commit holds it: its own statistics refresh
    follows its rule)."""
    holder, worker = engine.raw_connection(), engine.raw_connection()
    try:
        hold = holder.cursor()
        hold.execute("SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass) WHERE isleaf", (table,))
        for (leaf,) in hold.fetchall():
            hold.execute("SAVEPOINT leaf")
            try:
                hold.execute(f"LOCK TABLE ONLY {leaf} IN SHARE UPDATE EXCLUSIVE MODE NOWAIT")
            except Exception as exc:  # noqa: BLE001 (psycopg2's LockNotAvailable)
                if getattr(exc, "pgcode", None) != "55P03":
                    raise
                hold.execute("ROLLBACK TO SAVEPOINT leaf")
        cur = worker.cursor()
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (wait,))
        try:
            cur.execute(f'LOCK TABLE ONLY "{table}" IN SHARE UPDATE EXCLUSIVE MODE')
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "pgcode", None) != "55P03":
                raise
            worker.rollback()
            return False
        cur.execute(f'ANALYZE (SKIP_LOCKED) "{table}"')
        worker.commit()
        return True
    finally:
        holder.rollback()
        holder.close()
        worker.close()
