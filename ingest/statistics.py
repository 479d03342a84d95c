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

from cim.distribution import IS_CITUS_SQL

#: autovacuum's defaults (``autovacuum_analyze_threshold``, ``autovacuum_analyze_scale_factor``)
THRESHOLD_ROWS = 50
SCALE_FACTOR = 0.1


def refresh_statistics(cur, table: str, changed_rows: int) -> list[str]:
    """ANALYZE ``table`` if this load's ``changed_rows`` (inserted, updated and closed) pass autovacuum's rule for
    it, else its partitions that have never been analyzed (made by this load); inside the load's transaction, so
    the statistics count its rows. Returns the tables analyzed. Not on Citus: there the rows live in shards on the
    workers, which the load's locks do not hold, so their own autovacuum keeps the statistics."""
    cur.execute(IS_CITUS_SQL)
    if cur.fetchone()[0] or changed_rows <= 0:
        return []
    # the table itself, or a partitioned table's partitions (pg_partition_tree lists none for a plain table)
    cur.execute("SELECT c.relname, c.reltuples FROM pg_class c WHERE c.oid = %(t)s::regclass AND c.relkind <> 'p' "
                "OR c.oid IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass) WHERE isleaf)", {"t": table})
    leaves = cur.fetchall()
    known_rows = sum(max(tuples, 0.0) for _name, tuples in leaves)
    if changed_rows > THRESHOLD_ROWS + SCALE_FACTOR * known_rows:
        targets = [table]  # a partitioned table: its partitions and the whole layer's own statistics
    else:
        targets = [name for name, tuples in leaves if tuples < 0]
    for name in targets:
        cur.execute(f'ANALYZE "{name}"')
    return targets
