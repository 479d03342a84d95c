"""Benchmark: `cim ingest parts` against what a user would otherwise do by hand — `ogr2ogr` (PG_USE_COPY) into a
table shaped like the platform's, FOLLOWED BY the statements that build the same indexes and constraints as the
platform's parts table (the same end state, minus validation, enrichment and history, which only cim does).

Run by hand (not a test):
  .venv/bin/python benchmarks/ingest_vs_ogr2ogr.py [--parts 1000000] [--grids 0] [--buildings 0] [--limits]
  .venv/bin/python benchmarks/ingest_vs_ogr2ogr.py --parts 1000000 --profile   # cProfile of cim, in process

The peer's statements are read from the real schema after `cim init` (pg_indexes and pg_constraint of
``parts``), not from a hand-kept list, so the comparison follows the schema. Both run in the same run against
the same server, one after the other, each into its own fresh database; the ratio is peer time ÷ cim time
(> 1: cim is faster). ``--limits`` also times the server alone: the COPY of cim's own rows into an unindexed
copy of the table, the same COPY into a copy with every index and constraint, and each index build.

Needs `ogr2ogr` (Debian gdal-bin) and a database: CIM_DATABASE_URL, or the embedded cluster (`cim db up`).
The loader runs as a child process so its peak RSS is measured alone.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg2
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scratch import CIM, create_database, drop_databases, machine  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402

WORK = Path(__file__).resolve().parent / "work"
BBOX = (121.10, 30.90, 121.90, 31.45)  # central Shanghai, WGS84 ≈ CGCS2000


def make_points(n: int, path: Path) -> None:
    """n 3D points with valid 16-digit object codes (unique per subclass), written in chunks."""
    rng = np.random.default_rng(42)
    subclasses = np.array(["0101", "0102", "0103", "0202", "0302", "0401"])
    chunk = 1_000_000
    sequence = {s: 0 for s in subclasses}
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lon = rng.uniform(BBOX[0], BBOX[2], m)
        lat = rng.uniform(BBOX[1], BBOX[3], m)
        z = rng.uniform(0, 5, m).round(2)
        subclass = rng.choice(subclasses, m)
        within = pd.Series(subclass).groupby(subclass).cumcount().to_numpy()
        offset = np.array([sequence[s] for s in subclass])
        for s in subclasses:
            sequence[s] += int((subclass == s).sum())
        # sequences run over the whole file; past 999,999 per subclass the district prefix changes
        seq = offset + within
        district = 310101 + seq // 1_000_000
        codes = [f"{d}{s}{q % 1_000_000:06d}" for d, s, q in zip(district, subclass, seq)]
        frame = gpd.GeoDataFrame({
            "source_id": [f"P{i:08d}" for i in range(start, start + m)],
            "object_code": codes,
            "name": "井盖", "status": rng.choice(["完好", "破损"], m),
        }, geometry=shapely.points(lon, lat, z), crs="EPSG:4490")
        frame.to_file(path, layer="parts", driver="GPKG", append=start > 0)


def make_buildings(n: int, path: Path) -> None:
    """n small building footprints over the same area (benchmarks/tiles.py tiles them)."""
    rng = np.random.default_rng(7)
    side = 0.0002
    lon = rng.uniform(BBOX[0], BBOX[2], n)
    lat = rng.uniform(BBOX[1], BBOX[3], n)
    boxes = shapely.box(lon, lat, lon + side * rng.uniform(0.5, 2, n), lat + side * rng.uniform(0.5, 2, n))
    gpd.GeoDataFrame({"source_id": [f"B{i:07d}" for i in range(n)], "height": rng.uniform(3, 150, n).round(1),
                      "floors": rng.integers(1, 40, n)}, geometry=boxes, crs="EPSG:4490").to_file(
        path, layer="buildings", driver="GPKG")


def make_grids(url: str, n: int) -> None:
    """n unit grids tiling the benchmark area (+ one district), so enrichment has real work to do."""
    side = int(np.ceil(np.sqrt(n)))
    xs = np.linspace(BBOX[0], BBOX[2], side + 1)
    ys = np.linspace(BBOX[1], BBOX[3], side + 1)
    cells = [shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1]) for i in range(side) for j in range(side)][:n]
    path = WORK / "grids.gpkg"
    gpd.GeoDataFrame({"grid_code": [f"310104001001{i:05d}" for i in range(len(cells))]}, geometry=cells,
                     crs="EPSG:4490").to_file(path, driver="GPKG")
    gpd.GeoDataFrame({"code": ["310104"], "name": ["徐汇区"]}, geometry=[shapely.box(*BBOX)],
                     crs="EPSG:4490").to_file(WORK / "district.gpkg", driver="GPKG")
    env = {**os.environ, "CIM_DATABASE_URL": url}
    subprocess.run([CIM, "ingest", "districts", str(WORK / "district.gpkg")], env=env, check=True,
                   capture_output=True)
    subprocess.run([CIM, "ingest", "grids", str(path)], env=env, check=True, capture_output=True)


class LoadWatch:
    """The 1-minute load average sampled every second while a step runs (the machine is shared)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        s = self.samples or [os.getloadavg()[0]]
        return f"{min(s):.2f}–{max(s):.2f}"


def timed(cmd: list[str], env: dict, stdout=subprocess.DEVNULL) -> tuple[float, float, float]:
    """Wall seconds, this child's own peak RSS in MB and its CPU seconds (os.wait4 reports them per process)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd[0]} failed:\n{stderr[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


class ServerCpu:
    """CPU seconds of the server's backends during a step: the postmaster's reaped children's time (cutime +
    cstime in /proc), read before and after — every connection of the step has ended by then. Needs the
    server on this machine (the embedded cluster); None otherwise."""

    def __init__(self, url: str) -> None:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
            try:  # read while the backend lives: its parent is the postmaster
                self._postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                self._postmaster = None
        conn.close()
        time.sleep(0.3)
        self._start = self._read()

    def _read(self) -> float | None:
        if self._postmaster is None:
            return None
        fields = Path(f"/proc/{self._postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime

    def stop(self) -> float | None:
        time.sleep(0.5)  # the step's backends exit and are reaped
        end = self._read()
        return None if end is None or self._start is None else end - self._start


def dsn(url: str) -> str:
    parts = urlsplit(url)
    return (f"host={parts.hostname} port={parts.port} dbname={parts.path.lstrip('/')} "
            f"user={parts.username} password={parts.password}")


# --- the peer -------------------------------------------------------------------------------------

def schema_statements(conn, table: str, into: str) -> list[tuple[str, str]]:
    """(name, SQL) building on ``into`` the indexes and constraints ``table`` has, read from the catalogue:
    constraints (primary key, foreign keys, checks) with the indexes that back them, then every other index."""
    with conn.cursor() as cur:
        cur.execute("""SELECT conname, pg_get_constraintdef(oid), conindid FROM pg_constraint
                       WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'f', 'c', 'x')
                       ORDER BY contype = 'p' DESC, conname""", (table,))
        constraints = cur.fetchall()
        backing = {r[2] for r in constraints if r[2]}
        cur.execute("""SELECT i.indexrelid, c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i
                       JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass
                       ORDER BY c.relname""", (table,))
        indexes = [(name, sql) for oid, name, sql in cur.fetchall() if oid not in backing]
    out = []
    for name, definition, _ in constraints:
        out.append((f"constraint {name}", f'ALTER TABLE "{into}" ADD CONSTRAINT "{into}_{name}" {definition}'))
    for name, sql in indexes:
        # a partitioned table's index is "ON ONLY parts": the peer's table is one plain table
        sql = re.sub(rf'INDEX (\S+) ON (ONLY )?(\S+\.)?"?{table}"? ',
                     lambda m: f'INDEX "{into}_{m.group(1)}" ON "{into}" ', sql, count=1)
        if f'ON "{into}"' not in sql:
            raise SystemExit(f"cannot retarget index {name}: {sql}")
        out.append((f"index {name}", sql))
    return out


def peer(url: str, path: Path, srid: int) -> dict:
    """ogr2ogr into a table shaped like parts (columns and defaults, no index or constraint), then the index
    and constraint statements in one session, as a user would type them."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    statements = schema_statements(conn, "parts", "ogr_parts")
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS ogr_parts")
        cur.execute("CREATE TABLE ogr_parts (LIKE parts INCLUDING DEFAULTS INCLUDING IDENTITY)")
    # class and subclass are the object code's digits 7–8 and 7–10: the SQL a user would write. GDAL's
    # PostgreSQL driver would send every column of the existing table in its COPY (NULL for the ones the file
    # lacks, which NOT NULL defaults refuse); its PGDump driver names only the file's, so the table's defaults
    # fill the rest: the same COPY text (PG_USE_COPY), piped to psql
    sql = ("SELECT source_id, object_code, substr(object_code, 7, 2) AS part_class, "
           "substr(object_code, 7, 4) AS part_subclass, name, status, geom FROM parts")
    cmd = ["ogr2ogr", "-f", "PGDump", "/vsistdout/", str(path), "-dialect", "SQLite", "-sql", sql,
           "-nln", "ogr_parts", "-t_srs", f"EPSG:{srid}", "-dim", "XYZ", "-lco", "CREATE_TABLE=OFF",
           "-lco", "DROP_TABLE=OFF", "-lco", "SPATIAL_INDEX=NONE", "-lco", "GEOMETRY_NAME=geom",
           "--config", "PG_USE_COPY", "YES"]
    watch = LoadWatch()
    server_cpu = ServerCpu(url)
    started = time.perf_counter()
    ogr = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    psql = subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url], stdin=ogr.stdout,
                          capture_output=True, text=True, check=False)
    ogr.stdout.close()
    _, status, usage = os.wait4(ogr.pid, 0)
    ogr_s, ogr_mb = time.perf_counter() - started, usage.ru_maxrss / 1024
    ogr_cpu = usage.ru_utime + usage.ru_stime
    if psql.returncode or os.waitstatus_to_exitcode(status):
        raise SystemExit(f"ogr2ogr | psql failed:\n{psql.stderr[-3000:]}")
    steps = {}
    started = time.perf_counter()
    with conn.cursor() as cur:
        for name, sql in statements:
            t = time.perf_counter()
            cur.execute(sql)
            steps[name] = time.perf_counter() - t
        cur.execute("SELECT count(*) FROM ogr_parts")
        rows = cur.fetchone()[0]
    schema_s = time.perf_counter() - started
    load = watch.stop()
    conn.close()
    return {"ogr2ogr_s": ogr_s, "schema_s": schema_s, "total_s": ogr_s + schema_s, "steps": steps,
            "rows": rows, "peak_mb": ogr_mb, "load": load, "statements": [s for _, s in statements],
            "client_cpu_s": ogr_cpu, "server_cpu_s": server_cpu.stop()}


# --- cim --------------------------------------------------------------------------------------------

def cim_ingest(url: str, layer: str, path: Path, source: Path | None = None) -> dict:
    """`cim ingest` as a child process; with ``source``, the loader of that source tree (e.g. the code before
    a change, from ``git archive``) instead of this checkout's."""
    env = {**os.environ, "CIM_DATABASE_URL": url, "CIM_HOME": str(WORK / "cim-home")}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    out = WORK / f"report-{layer}.json"
    watch = LoadWatch()
    server_cpu = ServerCpu(url)
    with open(out, "w") as f:
        elapsed, peak, cpu = timed([CIM, "ingest", layer, str(path), "--json"], env, stdout=f)
    return {"total_s": elapsed, "peak_mb": peak, "report": json.loads(out.read_text()), "load": watch.stop(),
            "client_cpu_s": cpu, "server_cpu_s": server_cpu.stop()}


def cim_profiled(url: str, layer: str, path: Path, top: int = 45) -> None:
    """The same load in this process under cProfile (the COPY worker thread's own time shows as the main
    thread's waits in PipelinedCursor.wait), then the server's time per statement from the run's session."""
    os.environ["CIM_DATABASE_URL"] = url
    os.environ["CIM_HOME"] = str(WORK / "cim-home")
    from ingest.run import IngestOptions, ingest_files

    engine = engine_for(url)
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    report = ingest_files(layer, [path], IngestOptions(), engine)
    profile.disable()
    print(f"in-process load: {time.perf_counter() - started:.1f} s, {report.inserted:,} inserted")
    for key in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(key).print_stats(top)
        print(text.getvalue())


# --- the server alone (physical limits) -------------------------------------------------------------

def server_limits(url: str, srid: int) -> dict:
    """Server-only times over the rows cim loaded: the COPY (binary) into a table without index or
    constraint, the same into one with all of parts' indexes and constraints, and each build alone."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    dump = WORK / "parts.copy"
    columns = ("feature_id, source_id, valid_from, ingest_run_id, content_hash, attributes, object_code, "
               "part_class, part_subclass, name, status, owner_department, maintainer, district_code, "
               "street_code, community_code, grid_code, geom")
    out = {}
    with conn.cursor() as cur:
        with open(dump, "wb") as f:
            cur.copy_expert(f"COPY (SELECT {columns} FROM parts) TO STDOUT (FORMAT binary)", f)
        for label, statements in (("bare", []), ("indexed", schema_statements(conn, "parts", "lim_parts"))):
            cur.execute("DROP TABLE IF EXISTS lim_parts")
            cur.execute("CREATE TABLE lim_parts (LIKE parts INCLUDING DEFAULTS INCLUDING IDENTITY)")
            if label == "indexed":
                for _, sql in statements:
                    cur.execute(sql)
            t = time.perf_counter()
            with open(dump, "rb") as f:
                cur.copy_expert(f"COPY lim_parts ({columns}) FROM STDIN (FORMAT binary)", f)
            out[f"copy_{label}_s"] = time.perf_counter() - t
        cur.execute("DROP TABLE lim_parts")
    conn.close()
    dump.unlink()
    return out


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", "--points", type=int, default=1_000_000, dest="parts")
    parser.add_argument("--grids", type=int, default=0, help="unit grids to enrich against (0: none)")
    parser.add_argument("--profile", action="store_true", help="cProfile cim's load in process (no peer)")
    parser.add_argument("--limits", action="store_true", help="also time the server alone (COPY, builds)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument("--before", type=Path, help="also load with the loader of this source tree (e.g. `git "
                        "archive` of the commit before a change), in the same run, for a before/after")
    args = parser.parse_args()
    if not shutil.which("ogr2ogr"):
        raise SystemExit("ogr2ogr not found: apt-get install gdal-bin")
    WORK.mkdir(exist_ok=True)
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    points = WORK / f"parts_{args.parts}.gpkg"
    if not points.exists():
        t = time.perf_counter()
        make_points(args.parts, points)
        print(f"generated {points} in {time.perf_counter() - t:.0f} s", flush=True)
    names = []

    def fresh(source: Path | None = None) -> tuple[str, int]:
        """A new base; with ``source``, initialised by that tree's `cim init` (its schema: a loader and a peer
        before a schema change build that schema's indexes)."""
        name = f"bench_{uuid.uuid4().hex[:8]}"
        names.append(name)
        url = create_database(server, name)
        if source is None:
            srid = initialise(engine_for(url))[0].srid
        else:
            subprocess.run([CIM, "init"], env={**os.environ, "CIM_DATABASE_URL": url, "PYTHONPATH": str(source)},
                           check=True, stdout=subprocess.DEVNULL)
            with psycopg2.connect(url) as c, c.cursor() as cur:
                cur.execute("SELECT value::int FROM cim_settings WHERE key = 'srid'")
                srid = cur.fetchone()[0]
        if args.grids:
            make_grids(url, args.grids)
        return url, srid

    try:
        if args.profile:
            url, _ = fresh()
            cim_profiled(url, "parts", points)
            return
        peer_url, srid = fresh()
        cim_url, _ = fresh()
        before_url = fresh(args.before)[0] if args.before else None
        peer_before_url = fresh(args.before)[0] if args.before else None
        with psycopg2.connect(peer_url) as c, c.cursor() as cur:  # read the file once: both start warm
            cur.execute("SELECT 1")
        subprocess.run(["cat", str(points)], stdout=subprocess.DEVNULL, check=True)
        # the peer builds the schema's indexes: with --before, also those of the schema before the change
        for label, url in ([("peer before", peer_before_url)] if args.before else []) + [("peer", peer_url)]:
            p = peer(url, points, srid)
            print(f"{label}: ogr2ogr {p['ogr2ogr_s']:.1f} s + indexes/constraints {p['schema_s']:.1f} s = "
                  f"{p['total_s']:.1f} s ({p['rows']:,} rows; load avg {p['load']}; CPU: ogr2ogr "
                  f"{p['client_cpu_s']:.1f} s, server {_seconds(p['server_cpu_s'])})", flush=True)
            if label == "peer before":
                print("  its statements, seconds each: " + "; ".join(f"{name} {seconds:.2f}"
                                                               for name, seconds in p["steps"].items()), flush=True)
        runs = [("cim before", before_url, args.before)] if args.before else []
        runs.append(("cim", cim_url, None))
        for label, url, source in runs:
            c = cim_ingest(url, "parts", points, source)
            assert c["report"]["inserted"] == args.parts, c["report"]
            print(f"{label}: {c['total_s']:.1f} s ({c['report']['inserted']:,} inserted; peak RSS "
                  f"{c['peak_mb']:.0f} MB; load avg {c['load']}; CPU: loader {c['client_cpu_s']:.1f} s, server "
                  f"{_seconds(c['server_cpu_s'])}; ratio peer ÷ {label} {p['total_s'] / c['total_s']:.2f}×)",
                  flush=True)
        limits = server_limits(cim_url, srid) if args.limits else {}
        engine = engine_for(cim_url)
        with engine.connect() as conn:
            where = machine(conn)
        print(f"\nMachine: {where}; date {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
        print("| load | rows | peer: ogr2ogr + same indexes & constraints, s | cim ingest parts, s | "
              "ratio (peer ÷ cim) | cim rows/s | cim peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(f"| parts{f', + {args.grids:,} grids' if args.grids else ''} | {args.parts:,} | "
              f"{p['total_s']:.1f} ({p['ogr2ogr_s']:.1f} + {p['schema_s']:.1f}) | {c['total_s']:.1f} | "
              f"{p['total_s'] / c['total_s']:.2f}× | {args.parts / c['total_s']:,.0f} | {c['peak_mb']:,.0f} |")
        print("\nPeer's statements (one session), seconds each:")
        for name, seconds in p["steps"].items():
            print(f"  {seconds:6.2f}  {name}")
        for name, seconds in limits.items():
            print(f"  {seconds:6.2f}  server alone: {name}")
    finally:
        if not args.keep:
            drop_databases(server, names)


if __name__ == "__main__":
    main()
