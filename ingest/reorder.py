"""Rewrite a loaded layer's heap in spatial order: ``cim ingest reorder``.

Why: an items page, a ``/nearby`` answer or a vector tile reads rows that lie close together in space. A heap
in the order of its delivery (a provider's file sorted by object code: at random in space) has each of those
rows on a block of its own, and with a cold cache each block is a disk read — on the whole synthetic Shanghai
the 100 parts nearest a place sat on 100 blocks, a 500 m box's 2,046 parts on 1,990. A first load writes each
batch in Z order (:func:`ingest.geometry.spatial_order`), but a base loaded before that, or one worn by years of
updates and history rows, drifts back. This step puts each table (each district's partition of a partitioned
layer) in one space-filling order: ``CLUSTER`` on a B-tree over the geometry's box, which PostGIS sorts along a
Hilbert curve of the box's centre (the B-tree exists only for the rewrite and is dropped with it).

Each partition is rewritten in its own transaction: ``CLUSTER`` holds an ACCESS EXCLUSIVE lock on it while it runs
(that district's readers wait; every other district answers), and needs free disk for one more copy of the
partition with its indexes — checked first where the cluster's disk can be seen (the embedded cluster). A failure
(out of disk, the server gone, the command killed) leaves that partition as it was; those done stay done. Rows,
ids, history and indexes are unchanged: only their place on disk moves.

Not on Citus: there a partition's rows live in shards on the workers, where this would have to run shard by shard.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import Engine

from cim.distribution import IS_CITUS_SQL, district_partitions
from cim.errors import ParameterError, UserError
from cim.schema import DISTRICT_PARTITIONED, FEATURE_TABLES
from ingest.faults import database_faults
from ingest.specs import SPECS

#: the name of the B-tree made for the rewrite (and dropped with it), per table
_ORDER_INDEX = "cim_reorder_{oid}"
#: free disk wanted beyond one more copy of the table and its indexes (WAL, the sort's spill files)
_HEADROOM = 1.25


@dataclass(frozen=True)
class ReorderTarget:
    layer: str
    table: str  # the table or partition rewritten
    district: str | None  # its district, for a partition (None: the DEFAULT partition or a whole table)
    bytes: int  # heap + indexes, before


@dataclass(frozen=True)
class Reordered:
    target: ReorderTarget
    rows: int
    seconds: float
    bytes_after: int


def spatial_layers() -> dict[str, str]:
    """Layer name → table, for the layers with a geometry of their own (what can be put in spatial order)."""
    return {name: spec.table for name, spec in SPECS.items() if spec.table in FEATURE_TABLES}


def reorder_targets(engine: Engine, layers: Sequence[str] = (), districts: Iterable[str] = ()) -> list[ReorderTarget]:
    """The tables to rewrite: each named layer (none: all with a geometry), a partitioned one as its district
    partitions (only ``districts`` if given), largest first so the two jobs finish together."""
    known = spatial_layers()
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ParameterError("LAYER", f"unknown layer(s) {', '.join(map(repr, unknown))}; layers with a "
                                      f"geometry: {', '.join(known)}")
    wanted_districts = set(districts)
    chosen = list(dict.fromkeys(layers)) or list(known)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(IS_CITUS_SQL)
        if cur.fetchone()[0]:
            raise UserError("cim ingest reorder runs on a single PostgreSQL node; on a Citus coordinator the rows "
                            "live in shards on the workers (docs/citus.md)")
        targets: list[ReorderTarget] = []
        for layer in chosen:
            table = known[layer]
            if table in DISTRICT_PARTITIONED:
                tables = [(name, district) for district, name in district_partitions(cur, table).items()
                          if not wanted_districts or district in wanted_districts]
            elif wanted_districts:
                continue  # a layer not partitioned by district has no district's part to rewrite alone
            else:
                tables = [(table, None)]
            for name, district in tables:
                cur.execute("SELECT pg_total_relation_size(%s::regclass)", (name,))
                targets.append(ReorderTarget(layer, name, district, int(cur.fetchone()[0])))
        raw.rollback()
    finally:
        raw.close()
    missing = wanted_districts - {t.district for t in targets}
    if wanted_districts and missing:
        raise ParameterError("--district", f"no partition of {', '.join(chosen)} for district(s) "
                                           f"{', '.join(sorted(missing))}")
    return sorted(targets, key=lambda t: -t.bytes)


def reorder(engine: Engine, targets: Sequence[ReorderTarget], jobs: int = 2, data_dir: Path | None = None,
            on_done: Callable[[Reordered], None] | None = None) -> list[Reordered]:
    """Rewrite ``targets`` in spatial order, ``jobs`` at a time (each job is one server backend: on two cores, two
    jobs keep both busy). ``data_dir``: where the cluster keeps its files, to check the free disk first."""
    jobs = max(jobs, 1)
    if data_dir is not None and targets:
        # the largest partitions come first, and ``jobs`` of them are rewritten at once
        needed = int(sum(t.bytes for t in targets[:jobs]) * _HEADROOM)
        free = shutil.disk_usage(data_dir).free
        if free < needed:
            raise UserError(f"rewriting {targets[0].table} needs about {needed / 2**30:.1f} GiB of free disk "
                            f"({free / 2**30:.1f} GiB free under {data_dir}); nothing was changed")

    def one(target: ReorderTarget) -> Reordered:
        result = _rewrite(engine, target)
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, targets))


def _rewrite(engine: Engine, target: ReorderTarget) -> Reordered:
    started = time.perf_counter()
    with database_faults(f"{target.layer} ({target.table}, reordering)"):
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("SELECT %s::regclass::oid", (target.table,))
            table = sql.Identifier(target.table)
            index = sql.Identifier(_ORDER_INDEX.format(oid=cur.fetchone()[0]))
            try:
                # the box, not the geometry: a B-tree entry must fit a third of a page, and a building's outline
                # may not; PostGIS orders both by the Hilbert key of the box's centre
                cur.execute(sql.SQL("CREATE INDEX {} ON {} USING btree (ST_Envelope(geom))").format(index, table))
                cur.execute(sql.SQL("CLUSTER {} USING {}").format(table, index))
                cur.execute(sql.SQL("DROP INDEX {}").format(index))
                raw.commit()
            except psycopg2.errors.DiskFull as exc:
                raw.rollback()
                raise UserError(f"{target.table}: the database ran out of disk while rewriting it; it is as it was "
                                f"({str(exc).splitlines()[0]})") from exc
            raw.autocommit = True  # ANALYZE after the rewrite: the planner's view of the index correlation changed
            cur.execute(sql.SQL("ANALYZE {}").format(table))
            cur.execute(sql.SQL("SELECT count(*), pg_total_relation_size(%s::regclass) FROM {}").format(table),
                        (target.table,))
            rows, size = cur.fetchone()
        finally:
            raw.close()
    return Reordered(target, int(rows), time.perf_counter() - started, int(size))
