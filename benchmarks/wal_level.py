"""Benchmark: what `wal_level = minimal` (CIM_DB_WAL_LEVEL) saves a first `cim ingest parts` of 1 M points:
the same code into a fresh base on each of two embedded clusters (one `cim db up` with CIM_DB_WAL_LEVEL=replica,
one with minimal), alternating over two rounds. Per load: wall, loader CPU, server backends' CPU, the cluster's
other processes' CPU and writes (WAL writer, checkpointer: /proc), and WAL bytes (a CHECKPOINT before and after).

Run by hand (not a test), after `benchmarks/ingest_vs_ogr2ogr.py` made benchmarks/work/parts_1000000.gpkg:
  .venv/bin/python benchmarks/wal_level.py HOME_REPLICA HOME_MINIMAL [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ingest_vs_ogr2ogr import WORK, cim_ingest, make_grids  # noqa: E402
from benchmarks.scratch import create_database, drop_databases  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.cluster import Cluster  # noqa: E402
from cim.database import engine_for  # noqa: E402


def others(postmaster: int) -> tuple[float, int]:
    """CPU seconds and bytes written so far by the postmaster's live children (WAL writer, checkpointer…)."""
    cpu, written = 0.0, 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != postmaster:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes"):
                    written += int(line.split()[1])
        except OSError:
            continue
    return cpu, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("homes", nargs=2, type=Path, help="the CIM_HOME of each cluster")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    points = WORK / "parts_1000000.gpkg"
    for round_no in range(args.rounds):
        for home in args.homes if round_no % 2 == 0 else args.homes[::-1]:
            server = Cluster(home).url()
            name = f"walb_{uuid.uuid4().hex[:8]}"
            url = create_database(server, name)
            try:
                initialise(engine_for(url))
                make_grids(url, 1)
                conn = psycopg2.connect(url)
                conn.autocommit = True
                cur = conn.cursor()
                cur.execute("SELECT current_setting('wal_level'), pg_backend_pid()")
                level, backend = cur.fetchone()
                postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cur.execute("CHECKPOINT")
                cur.execute("SELECT pg_current_wal_lsn()::text")
                start = cur.fetchone()[0]
                before = others(postmaster)
                load = cim_ingest(url, "parts", points)
                cur.execute("CHECKPOINT")  # the checkpointer's writes of this load's pages belong to it
                after = others(postmaster)
                cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,))
                wal = cur.fetchone()[0]
                conn.close()
                print(f"{home} wal_level={level}: wall {load['total_s']:.1f} s, "
                      f"loader CPU {load['client_cpu_s']:.1f} s, "
                      f"backends CPU {load['server_cpu_s']:.1f} s, other processes' CPU {after[0] - before[0]:.1f} s, "
                      f"WAL {wal / 2**20:.0f} MB, other processes' writes {(after[1] - before[1]) / 2**20:.0f} MB, "
                      f"load avg {load['load']}, inserted {load['report']['inserted']:,}", flush=True)
            finally:
                drop_databases(server, [name])


if __name__ == "__main__":
    main()
