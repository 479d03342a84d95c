"""Benchmark of the partitions by district (issue 15, item 2): how long migration 0008 takes to convert an existing
base, and what partition pruning saves a street-scoped query.

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up`, with CIM_HOME set). Makes a
scratch database (dropped at the end unless --keep) at revision 0007 with the tables as they were before 0008
(unpartitioned), writes --parts parts over 16 districts × 13 streets with SQL (the indexes of 0001 maintained as
rows arrive), then runs `cim init`'s upgrade (timed: the conversion) and, as the API role with a street scope,
`SELECT count(*) FROM parts WHERE valid_to IS NULL` --runs times with partition pruning on and off (ABAB).

Prints a Markdown section for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cim.jurisdiction  # noqa: E402
import cim.schema  # noqa: E402
from benchmarks.scratch import create_database, drop_databases, machine  # noqa: E402
from cim.bootstrap import _alembic_config, initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402
from cim.jurisdiction import Scope, acting_as  # noqa: E402

DISTRICTS = [f"3101{d:02d}" for d in (1, 4, 5, 6, 7, 9, 10, 12, 13, 14, 15, 16, 17, 18, 20, 51)]


def base_at_0007(url: str, parts: int) -> None:
    patch = pytest.MonkeyPatch()
    patch.setattr(cim.schema, "DISTRICT_PARTITIONED", ())
    patch.setattr(cim.jurisdiction, "DISTRICT_PARTITIONED", ())
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn, 4549), "0007_scenario_jurisdiction")
    finally:
        patch.undo()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO part_classes (code, name) "
                             "VALUES ('01', '公用设施'), ('0101', '上水井盖')"))
        conn.execute(sa.text("""
            INSERT INTO parts (source_id, object_code, part_class, part_subclass, district_code, street_code, geom)
            SELECT 'P' || i, d || '0101' || lpad((i / 16)::text, 6, '0'), '01', '0101', d,
                   d || lpad((1 + (i / 16) % 13)::text, 3, '0'),
                   ST_SetSRID(ST_MakePoint(480000 + (i % 1000) * 40, 3440000 + (i / 1000) * 40 % 40000, 0), 4549)
            FROM generate_series(0, :n - 1) i, LATERAL (SELECT (CAST(:codes AS text[]))[1 + i % 16] AS d) c"""),
                     {"n": parts, "codes": DISTRICTS})
        conn.execute(sa.text("ANALYZE parts"))


def street_count(url: str, street: str, pruning: bool) -> tuple[float, float, float]:
    """(wall, planning, execution) ms of the count in its own scoped transaction."""
    scoped = engine_for(url, scoped=True)
    with acting_as(Scope("area", street=street)), scoped.begin() as conn:
        if not pruning:
            conn.exec_driver_sql("SET LOCAL enable_partition_pruning = off")
        started = time.perf_counter()
        plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM parts "
                                    "WHERE valid_to IS NULL").scalar()[0]
        return (time.perf_counter() - started) * 1000, plan["Planning Time"], plan["Execution Time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    name = f"partbench_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    try:
        started = time.perf_counter()
        base_at_0007(url, args.parts)
        written = time.perf_counter() - started
        engine = engine_for(url)
        started = time.perf_counter()
        initialise(engine)
        converted = time.perf_counter() - started
        with engine.connect() as conn:
            about = machine(conn)
            partitions = conn.execute(sa.text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'parts'::regclass"))
            partitions = partitions.scalar()
        street = f"{DISTRICTS[1]}001"
        street_count(url, street, True)  # warm-up: caches, the scoped pool
        timings: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for i in range(args.runs):
            for pruning in ((True, False) if i % 2 == 0 else (False, True)):
                timings[pruning].append(street_count(url, street, pruning))
    finally:
        if not args.keep:
            drop_databases(server, [name])
    on, off = ([statistics.median(t[k] for t in timings[p]) for k in range(3)] for p in (True, False))
    print(f"## Partitions by district: converting a base, and pruning for a street (issue 15, item 2)\n\n"
          f"**Machine:** {about}. **Date:** {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Other processes "
          f"shared the cores.\n\n"
          f"* Migration `0008_partition_by_district` on a base of {args.parts:,} parts in 16 districts (written at "
          f"0007 in {written:.1f} s): `cim init` **{converted:.1f} s** ({converted / args.parts * 1e6:.0f} s per "
          f"million parts: copy into {partitions} partitions, then the 9 indexes built per partition).\n"
          f"* `SELECT count(*) FROM parts WHERE valid_to IS NULL` as the API role scoped to street {street} "
          f"(EXPLAIN ANALYZE, {args.runs} runs each, ABAB; medians): pruned to its district's partition "
          f"execution **{on[2]:.1f} ms** (planning {on[1]:.1f} ms, round trip {on[0]:.1f} ms); every partition "
          f"(`enable_partition_pruning = off`) execution {off[2]:.1f} ms (planning {off[1]:.1f} ms, round trip "
          f"{off[0]:.1f} ms): execution **{off[2] / on[2]:.1f}×** faster pruned.")

if __name__ == "__main__":
    main()
