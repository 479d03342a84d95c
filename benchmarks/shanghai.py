"""Shanghai at scale on one node (issue 15 items 3–4, issue 14's Shanghai flood target): the whole synthetic
city generated, loaded layer by layer with every index and history, queried through the real API, tiled in
3D with implicit tiling, and one flood alarm answered on it.

Steps (run them together or one at a time; each records its numbers in ``HOME/shanghai-results.json``, and
``report`` prints the Markdown section for docs/benchmarks.md from that file):

    nice -n 10 .venv/bin/python benchmarks/shanghai.py --home /work/scale-data/home \\
        --city /work/scale-data/city --steps generate,load,queries,tiles,flood,report

* ``generate``: ``cim samples generate --scale shanghai --seed 1`` into ``--city`` (reused when its
  manifest.json is there: the generator writes it last).
* ``load``: ``cim db up`` and ``cim init`` under ``--home`` (the cluster stays there, up, for the next
  steps and for whoever reuses it), then each entry of the city's manifest in its order through the real
  loader in a process of its own (``cim ingest LAYER FILE`` with the manifest's options: what ``cim samples
  load`` does entry by entry), so that each layer's wall time and the peak RSS of its loading process are
  its own. A layer whose succeeded run is already recorded is not loaded again. Then the disk: every
  table with its indexes and TOAST (``pg_total_relation_size``) and the whole cluster's data directory.
* ``queries``: ``cim serve`` (one worker) on the loaded base; grid lookup, items by bbox (limit 100),
  ``/nearby`` k=10 in 3D (with ``z``) at places drawn from where the features are (random buildings'
  centres, seeded, jittered by up to 200 m), one request at a time (service latency: p50/p95/p99) and 8
  at a time (throughput); vector tiles z14–16 of the 15 M parts, uncached (a fresh tile cache), the tiles
  under random parts, driven by wrk like benchmarks/tiles.py.
* ``tiles``: ``cim tiles export-3d buildings OUT --implicit``: time, peak RSS, files and bytes, the size of
  tileset.json, and the CesiumGS 3d-tiles-validator over the whole output (tileset, subtrees, content).
* ``flood``: a Shanghai-size water-logging scenario made from the loaded base, deterministic from a seed
  (14,020 compounds around buildings, a road network over the whole city, 720 monitoring points on the
  base's own water-level gauges plus 64 ponding-prone points, 120 pump trucks and 16 teams with GPS fixes),
  loaded by the scenario's own loaders; then water-level alarms through the ordinary readings intake and
  ``respond_to_alarm`` for each, timed per alarm (its own transaction, commit included), as
  benchmarks/scenario_flood.py does on the sample city.

The load average is sampled during every step and reported. Nothing is deleted at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cim.database import engine_for  # noqa: E402

CIM = str(Path(sys.executable).with_name("cim"))
STEPS = ("generate", "load", "queries", "tiles", "flood", "report")
FULL_BUILDINGS = 1_500_000
TARGETS = {"grid": 10.0, "items": 50.0, "nearby": 20.0, "mvt_tiles_per_s": 300.0, "export_3d_s": 20 * 60,
           "flood_s": 3.0}


# --- bookkeeping ----------------------------------------------------------------------------------------------

class Results:
    """The numbers of every step, kept in one JSON file so that steps can run separately."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def put(self, step: str, value: Any) -> None:
        # steps may run at the same time in two processes (e.g. tiles while parts load): merge, do not overwrite
        self.data = {**(json.loads(self.path.read_text()) if self.path.exists() else {}), step: value}
        self.save()
        (self.path.parent / f"shanghai-{step}.json").write_text(json.dumps(value, ensure_ascii=False, indent=1,
                                                                           default=str))

    def save(self) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, ensure_ascii=False, indent=1, default=str))
        tmp.replace(self.path)


class LoadAverage:
    """The 1-minute load average sampled every few seconds while a step runs (other engineers share the
    cores: the numbers mean little without it)."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every)

    def __enter__(self) -> "LoadAverage":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "mean": round(statistics.fmean(s), 2), "max": round(max(s), 2)}


def log(message: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {message}", flush=True)


def measured(cmd: list[str], env: dict[str, str], logfile: Path) -> dict[str, Any]:
    """Run ``cmd`` to its end: wall seconds, the peak RSS of that process (its own rusage, from wait4) and
    its stdout; stops the benchmark with the tail of its output when it fails."""
    out, err = logfile.with_suffix(".out"), logfile.with_suffix(".err")
    with out.open("w") as fo, err.open("w") as fe:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{out.read_text()[-2000:]}\n"
                         f"{err.read_text()[-4000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 0),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "stdout": out.read_text()}


def cim_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"}
    return {**env, "CIM_HOME": str(home), **extra}


def database_url(home: Path) -> str:
    done = subprocess.run([CIM, "db", "url"], env=cim_env(home), cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"cim db url failed (is the cluster up? run the load step):\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def percentiles(values_s: list[float]) -> dict[str, float]:
    ms = np.array(values_s) * 1000
    return {"n": len(ms), "p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2), "max": round(float(ms.max()), 2)}


def dir_size(path: Path) -> tuple[int, int]:
    files, size = 0, 0
    for p in path.rglob("*"):
        if p.is_file():
            files += 1
            size += p.stat().st_size
    return files, size


# --- generate ---------------------------------------------------------------------------------------------------

def step_generate(args: argparse.Namespace, results: Results) -> None:
    manifest = args.city / "manifest.json"
    if manifest.exists():
        log(f"generate: {args.city} already holds a city (manifest.json present): reused")
        if "generate" not in results.data:
            results.put("generate", {"reused": True, "bytes": dir_size(args.city)[1]})
        return
    with LoadAverage() as load:
        m = measured([CIM, "samples", "generate", "--out", str(args.city), "--scale", args.scale, "--seed",
                      str(args.seed)], cim_env(args.home), args.home / "generate")
    report = json.loads(m.pop("stdout"))
    results.put("generate", {**m, "rows": report["rows"], "bytes": report["bytes"], "load": load.summary()})
    log(f"generate: {report['bytes'] / 1e9:.2f} GB in {m['seconds']:.0f} s")


# --- load -------------------------------------------------------------------------------------------------------

def _ingest_args(entry: dict[str, Any], path: Path) -> list[str]:
    """``cim ingest`` arguments for one manifest entry: the options ``cim samples load`` passes."""
    out = ["ingest", entry["layer"], str(path), "--json"]
    for option in ("crs", "encoding", "x", "y", "z", "wkt"):
        if entry.get(option):
            out += [f"--{option}", str(entry[option])]
    if entry.get("layer_name"):
        out += ["--layer", entry["layer_name"]]
    if entry.get("address_column"):
        out += ["--address-column", entry["address_column"]]
    for field, column in (entry.get("map") or {}).items():
        out += ["--map", f"{field}={column}"]
    return out


def _loaded_runs(url: str) -> dict[str, dict]:
    """Layer → its last succeeded ingest run (so a load step that was stopped resumes where it was)."""
    try:
        with engine_for(url).connect() as conn:
            rows = conn.execute(sa.text("SELECT DISTINCT ON (layer) layer, n_read, n_inserted, duration_s "
                                        "FROM ingest_runs WHERE status = 'succeeded' ORDER BY layer, id DESC")).all()
    except sa.exc.SQLAlchemyError:
        return {}
    return {r.layer: r._asdict() for r in rows}


def disk_usage(url: str, home: Path) -> dict[str, Any]:
    with engine_for(url).connect() as conn:
        tables = conn.execute(sa.text("""SELECT c.relname AS table, c.reltuples::bigint AS rows_estimate,
                pg_total_relation_size(c.oid) AS total, pg_indexes_size(c.oid) AS indexes,
                (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS n_indexes
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
            ORDER BY pg_total_relation_size(c.oid) DESC""")).mappings().all()
        # a partitioned table's own size is 0: add its partitions'
        parts = {r.parent: r for r in conn.execute(sa.text("""SELECT p.relname AS parent,
                sum(pg_total_relation_size(c.oid))::bigint AS total, sum(pg_indexes_size(c.oid))::bigint AS indexes,
                sum(c.reltuples)::bigint AS rows_estimate
            FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_class p ON p.oid = h.inhparent
            GROUP BY p.relname"""))}
        database = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar()
    out = []
    for t in tables:
        row = dict(t)
        if t["table"] in parts:
            row.update(total=parts[t["table"]].total, indexes=parts[t["table"]].indexes,
                       rows_estimate=parts[t["table"]].rows_estimate)
        out.append(row)
    _, cluster = dir_size(home / "pgdata")
    return {"tables": sorted(out, key=lambda r: -r["total"]), "database_bytes": database, "cluster_bytes": cluster}


#: how a row of each per-district file starts: the generator writes the city district by district
ROW_PREFIX = {"addresses": "上海市{name}", "parts": "P{code}", "pipelines": "L{code}", "iot-devices": "D{code}"}


def layer_subset(city: Path, layer: str, name: str, codes: list[str], folder: Path) -> tuple[Path, str]:
    """The rows of whole districts only, picked by how each row starts (an address with 上海市 and its
    district's name, a part's source id with P and the district code …): a copy of those rows, and what it
    holds."""
    from ingest.synthetic_city import DISTRICTS

    names = {code: district for code, district, *_ in DISTRICTS}
    unknown = [c for c in codes if c not in names]
    if unknown:
        raise SystemExit(f"--districts: unknown district codes {unknown}; codes: {', '.join(names)}")
    prefixes = tuple(ROW_PREFIX[layer].format(code=c, name=names[c]) for c in codes)
    folder.mkdir(parents=True, exist_ok=True)
    out = rows_beginning(city / name, prefixes, folder / f"{Path(name).stem}-{'-'.join(codes)}.csv")
    return out, "whole districts " + ", ".join(f"{c} {names[c]}" for c in codes)


def rows_beginning(source: Path, prefixes: tuple[str, ...], out: Path) -> Path:
    """``out``: the header and the rows of the CSV ``source`` that begin with one of ``prefixes`` (made once;
    written under another name first, so a killed run leaves no half file under ``out``)."""
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with source.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            dst.write(src.readline())
            for line in src:
                if line.startswith(prefixes):
                    dst.write(line)
        tmp.replace(out)
    return out


def step_load(args: argparse.Namespace, results: Results) -> None:
    env = cim_env(args.home)
    args.home.mkdir(parents=True, exist_ok=True)
    subprocess.run([CIM, "db", "up"], env=env, cwd=ROOT, check=True)
    url = database_url(args.home)
    done = _loaded_runs(url)
    if not done:
        subprocess.run([CIM, "init"], env=env, cwd=ROOT, check=True)
    manifest = json.loads((args.city / "manifest.json").read_text(encoding="utf-8"))
    layers = dict(results.data.get("load", {}).get("layers", {}))
    with LoadAverage() as load:
        for entry in manifest:
            layer = entry["layer"]
            if layer in done and layer in layers:
                log(f"load: {layer} already loaded ({done[layer]['n_inserted']:,} rows): kept")
                continue
            if (args.only_layers and layer not in args.only_layers) or layer in args.skip_layers:
                continue
            path, subset = args.city / entry["path"], None
            if layer in args.subset_layers and args.districts:
                path, subset = layer_subset(args.city, layer, entry["path"], args.districts,
                                            args.home.parent / "city-subset")
            log(f"load: {layer} from {path.name} …")
            with LoadAverage() as layer_load:
                m = measured([CIM, *_ingest_args(entry, path)], env, args.home / f"load-{layer}")
            report = json.loads(m.pop("stdout"))
            rows = report.get("inserted", 0) + report.get("updated", 0) + report.get("unchanged", 0)
            layers[layer] = {**m, "read": report.get("read"), "rows": rows, "rejected": report.get("rejected"),
                             "subset": subset,
                             "rows_per_s": round(rows / m["seconds"]) if m["seconds"] else None,
                             "load": layer_load.summary()}
            results.put("load", {**results.data.get("load", {}), "layers": layers})
            log(f"load: {layer}: {rows:,} rows ({report.get('rejected', 0):,} rejected) in {m['seconds']:.0f} s, "
                f"{layers[layer]['rows_per_s'] or 0:,} rows/s, peak RSS {m['peak_rss_mb']:.0f} MB")
    with engine_for(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        started = time.perf_counter()
        conn.execute(sa.text("ANALYZE"))
        analyze_s = time.perf_counter() - started
    disk = disk_usage(url, args.home)
    results.put("load", {**results.data.get("load", {}), "layers": layers, "disk": disk,
                         "analyze_s": round(analyze_s, 1), "load": load.summary()})
    log(f"load: database {disk['database_bytes'] / 1e9:.1f} GB, cluster {disk['cluster_bytes'] / 1e9:.1f} GB")


# --- queries through the API ------------------------------------------------------------------------------------

def places(url: str, n: int, seed: int, districts: list[str]) -> list[tuple[float, float]]:
    """``n`` lon/lat points where the city's features are: the centres of random buildings (seeded; of
    ``districts`` when given), each moved by up to 200 m, so that the questions fall where a user's would."""
    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.text("""SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_Centroid(ST_Force2D(geom)),
                4326) AS p FROM buildings TABLESAMPLE SYSTEM (2) REPEATABLE (:seed) WHERE valid_to IS NULL
                AND (cardinality(CAST(:d AS text[])) = 0 OR district_code = ANY(CAST(:d AS text[])))) q"""),
                            {"seed": seed, "d": districts}).all()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lon, lat = rng.choice(rows)
        out.append((lon + rng.uniform(-0.002, 0.002), lat + rng.uniform(-0.0018, 0.0018)))
    return out


def query_paths(url: str, n: int, seed: int, districts: list[str]) -> dict[str, list[str]]:
    pts = places(url, n, seed, districts)
    half_lon, half_lat = 0.0042, 0.0036  # a box of ~800 × 800 m: a viewer's screen over a neighbourhood
    rng = random.Random(seed + 1)
    return {
        "grid lookup": [f"/grid/lookup?lon={a:.6f}&lat={b:.6f}" for a, b in pts],
        "items bbox limit 100 (buildings)": [
            f"/collections/buildings/items?limit=100&bbox={a - half_lon:.6f},{b - half_lat:.6f},"
            f"{a + half_lon:.6f},{b + half_lat:.6f}" for a, b in pts],
        "items bbox limit 100 (parts)": [
            f"/collections/parts/items?limit=100&bbox={a - half_lon:.6f},{b - half_lat:.6f},"
            f"{a + half_lon:.6f},{b + half_lat:.6f}" for a, b in pts],
        "nearby k=10 3D (pipelines, z below ground)": [
            f"/nearby?layer=pipelines&lon={a:.6f}&lat={b:.6f}&z={-rng.uniform(0.5, 4):.2f}&k=10" for a, b in pts],
        "nearby k=10 3D (parts)": [
            f"/nearby?layer=parts&lon={a:.6f}&lat={b:.6f}&z={rng.uniform(-2, 2):.2f}&k=10" for a, b in pts],
    }


TARGET_OF = {"grid lookup": "grid", "items bbox limit 100 (buildings)": "items",
             "items bbox limit 100 (parts)": "items", "nearby k=10 3D (pipelines, z below ground)": "nearby",
             "nearby k=10 3D (parts)": "nearby"}


def mvt_paths(url: str, layer: str, template: str, per_zoom: int, seed: int,
              exclude: frozenset[str] = frozenset(), zooms: tuple[int, ...] = (14, 15, 16)) -> list[str]:
    """Distinct z14–16 tiles under random features of ``layer`` (seeded): the tiles a viewer over the city
    would ask."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    with engine_for(url).connect() as conn:
        n = conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE relname = :t"), {"t": layer}).scalar() or 1
        rows = conn.execute(sa.text(f"""SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_Centroid(ST_Force2D(geom)),
                4326) AS p FROM {layer} TABLESAMPLE SYSTEM (:pct) REPEATABLE (:seed) WHERE valid_to IS NULL) q"""),
                            {"seed": seed, "pct": min(100.0, 100.0 * 60_000 / max(n, 1))}).all()
    rng = random.Random(seed)
    rng.shuffle(rows)
    out: list[str] = []
    for z in zooms:
        seen: set[tuple[int, int]] = set()
        for lon, lat in rows:
            t = tms.tile(lon, lat, z)
            path = template.format(z=z, x=t.x, y=t.y)
            if (t.x, t.y) in seen or path in exclude:
                continue
            seen.add((t.x, t.y))
            out.append(path)
            if len(seen) >= per_zoom:
                break
    rng.shuffle(out)
    return out


class StatementLog:
    """The server's own time for each statement (``log_min_duration_statement = 0`` while a run lasts, read
    back from the cluster's log): what the database spends of a request's latency, apart from the HTTP,
    Python and waiting for a core on a shared machine."""

    HOUSEKEEPING = ("BEGIN", "ROLLBACK", "COMMIT", "SELECT set_config", "SELECT name, title", "SELECT 1",
                    "ALTER SYSTEM", "SELECT pg_reload_conf")

    def __init__(self, url: str, logfile: Path) -> None:
        self.url, self.logfile = url, logfile

    def _set(self, value: str | None) -> None:
        with engine_for(self.url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ALTER SYSTEM RESET log_min_duration_statement" if value is None else
                                 f"ALTER SYSTEM SET log_min_duration_statement = {value}"))
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        time.sleep(0.5)

    def __enter__(self) -> "StatementLog":
        self._set("0")
        self.offset = self.logfile.stat().st_size
        return self

    def __exit__(self, *exc: object) -> None:
        self._set(None)

    def durations(self) -> list[float]:
        """Seconds of each statement logged since the last call, housekeeping left out."""
        with self.logfile.open("rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode("utf-8", "replace")
            self.offset = fh.tell()
        # only the API's sessions (they open each transaction with the caller's scope, as cim_api): a load
        # running at the same time logs its statements too
        logged = []
        for line in text.splitlines():
            head, sep, rest = line.partition("duration: ")
            if not sep:
                continue
            pid = head.partition("[")[2].partition("]")[0]
            ms, _, statement = rest.partition(" ms  statement: ")
            logged.append((pid, float(ms) / 1000, statement))
        api = {pid for pid, _, statement in logged if statement.startswith("SELECT set_config('role', 'cim_api'")}
        # (a statement may start on the line after "statement: ")
        # (a read of cim.jurisdiction.statements_scoped sends its statement after the scope's, in one query:
        # its logged first line is the scope's, ending in ';' — that one is not housekeeping)
        return [s for pid, s, statement in logged if pid in api and not (
            statement.startswith(self.HOUSEKEEPING) and not statement.rstrip().endswith(";"))]


def step_queries(args: argparse.Namespace, results: Results) -> None:
    from benchmarks.api_vs_tipg import Result, drive
    from benchmarks.tiles import Server, fetch, free_port
    from benchmarks.tiles import drive as wrk_drive

    url = database_url(args.home)
    serve_home = args.serve_home or args.home / "serve-home"
    if (serve_home / "cluster.json").exists() or serve_home.resolve() == args.home.resolve():
        # the serving home is emptied for a fresh tile cache: never the home that holds the cluster
        raise SystemExit(f"--serve-home {serve_home} holds a database cluster; name an empty folder")
    shutil.rmtree(serve_home, ignore_errors=True)  # a fresh tile cache: every tile is built on request
    serve_home.mkdir(parents=True)
    port = free_port()
    env = {**cim_env(serve_home), "CIM_DATABASE_URL": url}
    # probed on /conformance: /collections/parts works out the extent of every part (~40 s for 15 M)
    server = Server([CIM, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                     "--no-access-log"], env, port, "/conformance", ROOT, serve_home / "serve.log")
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"latency": {}, "throughput": {}}
    try:
        with LoadAverage() as load:
            warm = query_paths(url, 100, args.seed + 100, args.districts)
            timed = query_paths(url, args.requests, args.seed, args.districts)
            statements = StatementLog(url, args.home / "postgres.log")
            for name, paths in timed.items():
                if args.only_queries and not any(q in name for q in args.only_queries):
                    continue
                serial = Result()
                with statements if args.statement_log else contextlib.nullcontext():
                    asyncio.run(drive(base, warm[name], 4, Result()))  # pools, plans, caches of the code paths
                    if args.statement_log:
                        statements.durations()
                    asyncio.run(drive(base, paths, 1, serial))
                    database = statements.durations() if args.statement_log else []
                busy = Result()
                asyncio.run(drive(base, list(reversed(paths)), args.concurrency, busy))
                out["latency"][name] = {**percentiles(serial.latencies), "errors": serial.errors,
                                        "target_ms": TARGETS[TARGET_OF[name]],
                                        "database": percentiles(database) if database else None}
                out["throughput"][name] = {**percentiles(busy.latencies), "rps": round(busy.rps, 1),
                                           "errors": busy.errors, "concurrency": args.concurrency}
                db = out["latency"][name]["database"] or {}
                log(f"queries: {name}: one at a time p50 {out['latency'][name]['p50']} p99 "
                    f"{out['latency'][name]['p99']} ms (database p50 {db.get('p50')} p99 {db.get('p99')} ms over "
                    f"{db.get('n')} statements); {args.concurrency} at a time {busy.rps:,.0f} req/s")
            # vector tiles: the URLs a client gets from the TileJSON (they carry the layer version); each run
            # must not get through its list (a tile asked twice would be cached): the run is as long as the
            # list allows at 800 tiles/s
            out["mvt"] = {}
            for layer in ("buildings", "parts") if args.mvt else ():
                tilejson = json.loads(asyncio.run(fetch(port, [f"/collections/{layer}/tiles/WebMercatorQuad/"
                                                               "tilejson.json"]))[0][1])
                template = "/" + tilejson["tiles"][0].split("/", 3)[3]
                # z14-16 as the target asks, and each zoom alone (a dense point layer's tiles start at its
                # minzoom, which TileJSON gives: below it they are empty)
                for zooms in ((14, 15, 16), (14,), (15,), (16,)):
                    key = layer if len(zooms) > 1 else f"{layer} z{zooms[0]}"
                    if len(zooms) == 1 and zooms[0] < tilejson["minzoom"]:
                        log(f"queries: MVT {key}: below the layer's minzoom {tilejson['minzoom']}: every tile "
                            "empty (204, no query), not timed alone")
                        continue
                    # warmed on other tiles, uncached too: each of the server's database connections has started
                    # PROJ and read the partitions' catalogs before the timed run (a cycled list of a few tiles
                    # was answered from the tile cache after one pass, and the first timed run paid for them)
                    # (1 s of 2,000 tiles: a list wrk gets through is refused, and a z16 buildings tile takes ~4 ms)
                    # the warm tiles are a quarter of the list at most: z14 has only ~1,100 tiles over the city, and
                    # 2,000 warm ones left too few for a run at 600 tiles/s
                    listed = mvt_paths(url, layer, template, args.tiles_per_zoom + 2000,
                                       args.seed + zooms[0] * len(zooms), zooms=zooms)
                    warm_tiles, tiles = listed[:min(2000, len(listed) // 4)], listed[min(2000, len(listed) // 4):]
                    wrk_drive(port, warm_tiles, 8, 1)
                    # wrk takes whole seconds; the run must not get through its list (a tile asked twice is cached)
                    seconds = max(1, int(min(args.mvt_seconds, len(tiles) / 2000)))
                    # every tile answers (200 or 204: empty) before the run, so that a failure says which
                    checked = asyncio.run(fetch(port, tiles[:20]))
                    bad = [(p, status) for p, (status, _) in zip(tiles, checked) if status not in (200, 204)]
                    if bad:
                        raise SystemExit(f"MVT {key}: tiles not answered: {bad[:3]}")
                    mvt = wrk_drive(port, tiles, 8, seconds)
                    body = [len(b) for _, b in checked]
                    out["mvt"][key] = {"tiles_per_s": round(mvt["requests"] / mvt["seconds"], 1),
                                       "requests": mvt["requests"], "p50": round(mvt["p50_ms"], 1),
                                       "p99": round(mvt["p99_ms"], 1),
                                       "kib_per_tile": round(statistics.fmean(body) / 1024, 1),
                                       "empty": sum(1 for b in body if not b), "minzoom": tilejson["minzoom"],
                                       "listed": len(tiles), "concurrency": 8, "seconds": round(seconds, 1)}
                    log(f"queries: MVT {key} uncached {out['mvt'][key]['tiles_per_s']:,} tiles/s p99 "
                        f"{out['mvt'][key]['p99']} ms, {out['mvt'][key]['kib_per_tile']} KiB a tile "
                        f"({len(tiles):,} distinct tiles listed; minzoom {tilejson['minzoom']})")
        out["load"] = load.summary()
    finally:
        server.stop()
    results.put("queries", out)


# --- 3D Tiles of every building, implicit tiling ----------------------------------------------------------------

VALIDATOR = ROOT / ".cache" / "3d-tiles-validator-0.6.1" / "build" / "main.js"


def _issues(report: dict, limit: int = 10) -> list[str]:
    out: list[str] = []
    for issue in report.get("issues", []):
        out.append(f"{issue.get('severity')} {issue.get('type')} {issue.get('path')}: {issue.get('message')}"[:300])
        out.extend(_issues({"issues": issue.get("causes", [])}, limit))
    return out[:limit]


def step_tiles(args: argparse.Namespace, results: Results) -> None:
    url = database_url(args.home)
    outdir = args.home.parent / "tiles3d-buildings"
    shutil.rmtree(outdir, ignore_errors=True)
    env = {**cim_env(args.home / "tiles-home"), "CIM_DATABASE_URL": url}
    bbox: list[str] = []
    if args.tiles_districts:  # the buildings of whole districts only: the box of their extent
        with engine_for(url).connect() as conn:
            box = conn.execute(sa.text("""SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT
                ST_Transform(ST_SetSRID(ST_Extent(geom)::geometry, ST_SRID(min(geom))), 4326) AS e FROM districts
                WHERE valid_to IS NULL AND code = ANY(:d)) q"""), {"d": args.tiles_districts}).one()
        bbox = ["--bbox", ",".join(f"{v:.6f}" for v in box)]
    with LoadAverage() as load:
        m = measured([CIM, "tiles", "export-3d", "buildings", str(outdir), "--implicit", *bbox], env,
                     args.home / "export-3d")
    files, size = dir_size(outdir)
    tileset = outdir / "tileset.json"
    content = sum(1 for _ in outdir.rglob("*.glb"))
    subtrees = sum(1 for _ in outdir.rglob("*.subtree"))
    out = {**{k: v for k, v in m.items() if k != "stdout"}, "summary": m["stdout"].strip()[-400:], "files": files,
           "bytes": size, "glb": content, "subtrees": subtrees, "tileset_json_bytes": tileset.stat().st_size,
           "feature_count": json.loads(tileset.read_text())["metadata"]["properties"].get("featureCount"),
           "load": load.summary(), "bbox": bbox[1] if bbox else None, "districts": args.tiles_districts}
    log(f"tiles: export-3d --implicit {m['seconds']:.0f} s, peak RSS {m['peak_rss_mb']:.0f} MB, {files:,} files, "
        f"{size / 1e9:.2f} GB, tileset.json {out['tileset_json_bytes']:,} B")
    results.put("tiles", out)
    if not VALIDATOR.exists() or shutil.which("node") is None:
        out["validator"] = "not run: node or the validator build (.cache, make setup) is missing"
    else:
        report_file = outdir / "validation-report.json"
        started = time.perf_counter()
        proc = subprocess.run(["node", str(VALIDATOR), "--tilesetFile", str(tileset), "--reportFile",
                               str(report_file)], capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if report_file.exists():
            report = json.loads(report_file.read_text())
            out["validator"] = {"errors": report.get("numErrors"), "warnings": report.get("numWarnings"),
                                "infos": report.get("numInfos"), "seconds": round(seconds, 1),
                                "issues": _issues(report)}
        else:
            out["validator"] = f"no report: {proc.stdout[-500:]} {proc.stderr[-1500:]}"
        log(f"tiles: validator {out['validator']}")
    results.put("tiles", out)


# --- flood response on the Shanghai-size base ---------------------------------------------------------------

def step_flood(args: argparse.Namespace, results: Results) -> None:
    from benchmarks.scenario_flood import nearest_only, raise_alarms, respond_round, shanghai_flood_files

    url = database_url(args.home)
    engine = engine_for(url)
    folder = args.home.parent / "flood"
    out: dict[str, Any] = dict(results.data.get("flood", {}))
    with LoadAverage() as load:
        with engine.connect() as conn:
            have = conn.execute(sa.text("SELECT count(*) FROM flood_compounds")).scalar()
        if not have or "load" not in out:
            started = time.perf_counter()
            out["data"] = shanghai_flood_files(engine, folder, args.seed, args.flood_scale)
            out["generate_s"] = round(time.perf_counter() - started, 1)
            log(f"flood: files {out['data']} in {out['generate_s']} s")
            m = measured([CIM, "scenarios", "flood", "load-samples", "--directory", str(folder)], cim_env(args.home),
                         args.home / "flood-load")
            out["load"] = {k: m[k] for k in ("seconds", "peak_rss_mb", "cpu_s")}
            out["load"]["layers"] = [json.loads(line) for line in m["stdout"].splitlines()
                                     if line.startswith("{") and '"layer"' in line]
            results.put("flood", out)
            log(f"flood: loaded in {m['seconds']:.0f} s: {out['load']['layers']}")
        with engine.connect() as conn:
            counts = dict(conn.execute(sa.text("""SELECT 'compounds', count(*) FROM flood_compounds
                UNION ALL SELECT 'monitoring', count(*) FROM flood_points WHERE kind = 'monitoring'
                UNION ALL SELECT 'ponding_prone', count(*) FROM flood_points WHERE kind = 'ponding_prone'
                UNION ALL SELECT 'pump_trucks', count(*) FROM flood_resources WHERE kind = 'pump_truck'
                UNION ALL SELECT 'road_edges', count(*) FROM flood_road_edges
                UNION ALL SELECT 'road_km', (sum(ST_Length(geom)) / 1000)::bigint FROM flood_roads""")).all())
        # alarms at every monitoring point at once, through the readings intake (untimed: sensing opens the
        # alarms and their 道路积水 cases); then --alarms of them answered one by one, timed
        # (a reading older than a device's newest opens nothing: a rerun must come after the last one's)
        at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=4)
        started = time.perf_counter()
        alert_ids = raise_alarms(engine, at, "high")
        intake_s = time.perf_counter() - started
        all_open = len(alert_ids)
        if args.districts:  # the alarms where every layer is loaded
            with engine.connect() as conn:
                alert_ids = list(conn.execute(sa.text("""SELECT a.id FROM iot_alerts a
                    JOIN flood_points p ON p.device_id = a.device_id
                    WHERE a.id = ANY(:ids) AND left(p.street_code, 6) = ANY(:d) ORDER BY a.id"""),
                                              {"ids": alert_ids, "d": args.districts}).scalars())
        chosen = sorted(random.Random(args.seed).sample(alert_ids, min(args.alarms, len(alert_ids))))
        log(f"flood: {all_open} alarms open ({intake_s:.0f} s of intake), {len(alert_ids)} in the districts; "
            f"answering {len(chosen)}")
        times, methods, compounds = respond_round(engine, chosen)
        nearest = nearest_only(engine, repeats=40)
        raise_alarms(engine, at + timedelta(minutes=2), "low")
    out.update({"counts": counts, "alarms_open": all_open, "alarms_in_districts": len(alert_ids), "alarm_intake_s": round(intake_s, 1),
                "response": percentiles(times), "methods": sorted(set(methods)),
                "compounds_per_alarm": round(compounds / max(1, len(times)), 1),
                "nearest_trucks": percentiles(nearest), "target_s": TARGETS["flood_s"], "load_avg": load.summary()})
    log(f"flood: per alarm p50 {out['response']['p50']:.0f} ms p99 {out['response']['p99']:.0f} ms "
        f"({out['compounds_per_alarm']} compounds each, {out['methods']})")
    results.put("flood", out)


# --- report -----------------------------------------------------------------------------------------------------

def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "**missed**"


def step_report(args: argparse.Namespace, results: Results) -> None:
    d = results.data
    url = database_url(args.home)
    from benchmarks.scratch import machine

    with engine_for(url).connect() as conn:
        about = machine(conn)
    lines = [f"## Shanghai at scale on one node (issue 15 items 3–4, issue 14 flood at Shanghai size)", "",
             f"**Machine:** {about}. **Date:** {datetime.now(timezone.utc):%Y-%m-%d} UTC. Four other engineers "
             "shared the 2 cores; every heavy step ran at `nice -n 10`; the load average (1 min) sampled during "
             "each step is given with it. `python benchmarks/shanghai.py --home /work/scale-data/home --city "
             "/work/scale-data/city --steps generate,load,queries,tiles,flood,report`.", ""]
    for note in d.get("notes", []):  # what was tried and stopped, written down by hand (see the docs section)
        lines += [f"- {note}"]
    if d.get("notes"):
        lines.append("")
    g = d.get("generate")
    if g:
        lines += [f"**Generate** (`cim samples generate --scale shanghai --seed 1`): {_gb(g['bytes'])} of CSV"
                  + (f" in {g['seconds']:.0f} s, peak RSS {g['peak_rss_mb']:.0f} MB" if "seconds" in g else ""), ""]
    load = d.get("load")
    if load:
        lines += ["### Load (every layer, all indexes and history, one process per layer)", "",
                  "| layer | rows | rejected | seconds | rows/s | peak RSS MB | CPU s (loader) | load avg |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        total_s = 0.0
        for layer, r in load["layers"].items():
            total_s += r["seconds"]
            lines.append(f"| {layer} | {r['rows']:,} | {r['rejected'] or 0:,} | {r['seconds']:,.0f} | "
                         f"{r['rows_per_s'] or 0:,} | {r['peak_rss_mb']:,.0f} | {r['cpu_s']:,.0f} | "
                         f"{r['load']['mean']:.1f} |")
        lines += ["", f"All layers: {total_s / 60:.0f} min of loading."]
        disk = load.get("disk")
        if disk:
            lines += ["", "| table | rows (estimate) | total (with indexes, TOAST) | of which indexes | indexes |",
                      "|---|---:|---:|---:|---:|"]
            for t in disk["tables"][:14]:
                lines.append(f"| {t['table']} | {t['rows_estimate']:,} | {_gb(t['total'])} | {_gb(t['indexes'])} | "
                             f"{t['n_indexes']} |")
            lines += ["", f"Database {_gb(disk['database_bytes'])}; the whole cluster's data directory "
                          f"(WAL included) {_gb(disk['cluster_bytes'])}."]
        lines.append("")
    q = d.get("queries")
    if q:
        lines += ["### Queries through the API (`cim serve`, 1 worker)", "",
                  f"Places drawn from where the buildings are. One request at a time (service latency) and "
                  f"{next(iter(q['throughput'].values()))['concurrency']} at a time; load average during the step "
                  f"{q['load']['mean']:.1f} (max {q['load']['max']:.1f}).", "",
                  "| query | p50 ms | p95 ms | p99 ms | target p99 | verdict | database p50 / p99 ms | req/s at 8 "
                  "| p99 ms at 8 |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for name, r in q["latency"].items():
            t = q["throughput"][name]
            db = r.get("database") or {}
            lines.append(f"| {name} | {r['p50']} | {r['p95']} | {r['p99']} | ≤ {r['target_ms']:g} | "
                         f"{_verdict(r['p99'], r['target_ms'])} | {db.get('p50')} / {db.get('p99')} | "
                         f"{t['rps']:,.0f} | {t['p99']} |")
        for layer, m in q.get("mvt", {}).items():
            zooms = "" if " z" in layer else "z14–16, "  # per-zoom runs carry their zoom in the name
            lines.append(f"| vector tiles {zooms}{layer}, uncached (wrk, {m['concurrency']} connections, "
                         f"{m['seconds']:g} s, {m['kib_per_tile']} KiB/tile) | {m['p50']} | | {m['p99']} | "
                         f"≥ 300 tiles/s | {_verdict(m['tiles_per_s'], 300, False)}: {m['tiles_per_s']:,.0f} tiles/s | | |")
        lines.append("")
    t = d.get("tiles")
    if t:
        v = t.get("validator")
        verdict = (f"{v['errors']} errors, {v['warnings']} warnings ({v['seconds']:.0f} s)" if isinstance(v, dict)
                   else str(v))
        # a part of the city: the whole 1.5 M at the same rate is what the target is about
        whole = t["seconds"] * FULL_BUILDINGS / t["feature_count"]
        scope = (f"the box of district(s) {', '.join(t['districts'])} (`--bbox {t['bbox']}`)" if t.get("districts")
                 else "every building")
        lines += [f"### 3D Tiles, implicit tiling (`cim tiles export-3d buildings --implicit`): {scope}", "",
                  f"{t['feature_count']:,} buildings in {t['seconds'] / 60:.1f} min ({t['feature_count'] / t['seconds']:,.0f}"
                  f" buildings/s, the exporter's own CPU {t['cpu_s']:.0f} s; {FULL_BUILDINGS:,} at that rate: "
                  f"{whole / 60:.0f} min; target ≤ 20 min: {_verdict(whole, TARGETS['export_3d_s'])}), "
                  f"peak RSS {t['peak_rss_mb']:,.0f} MB, "
                  f"{t['glb']:,} glb + {t['subtrees']:,} subtree files, {_gb(t['bytes'])} on disk, tileset.json "
                  f"{t['tileset_json_bytes']:,} bytes; CesiumGS 3d-tiles-validator: {verdict}; load average "
                  f"{t['load']['mean']:.1f}.", ""]
    f = d.get("flood")
    if f and "response" in f:
        c = f["counts"]
        r = f["response"]
        lines += ["### Flood response per alarm on the Shanghai-size base", "",
                  f"{c['compounds']:,} compounds, {c['monitoring']:,} monitoring + {c['ponding_prone']} ponding-prone "
                  f"points, {c['pump_trucks']} pump trucks, {c['road_km']:,} km of road ({c['road_edges']:,} routable "
                  f"edges), generated from the loaded base (benchmarks/scenario_flood.py `shanghai_flood_files`) and "
                  f"loaded by `cim scenarios flood load-samples` in {f['load']['seconds']:.0f} s. "
                  f"{f['alarms_open']} water-level alarms opened by the readings intake ({f['alarm_intake_s']:.0f} s); "
                  f"{r['n']} of them answered one by one by `respond_to_alarm` (affected compounds, buildings, "
                  f"addresses, underground parts; nearest 5 pump trucks and 2 teams by {', '.join(f['methods'])}; "
                  f"cases to 条 and 块), each in its own transaction, commit included; "
                  f"{f['compounds_per_alarm']} compounds per alarm. Load average {f['load_avg']['mean']:.1f}.", "",
                  "| what | p50 ms | p95 ms | p99 ms | max ms | target | verdict |", "|---|---:|---:|---:|---:|---:|---|",
                  f"| whole response per alarm | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['max']:.0f} | "
                  f"≤ 3,000 ms | {_verdict(r['p99'] / 1000, TARGETS['flood_s'])} |",
                  f"| nearest 5 trucks by road alone | {f['nearest_trucks']['p50']:.0f} | "
                  f"{f['nearest_trucks']['p95']:.0f} | {f['nearest_trucks']['p99']:.0f} | "
                  f"{f['nearest_trucks']['max']:.0f} | | |", ""]
    text = "\n".join(lines) + "\n"
    (args.home / "shanghai-report.md").write_text(text, encoding="utf-8")
    print(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="generate,load,queries,tiles,flood,report",
                        help=f"comma-separated, in this order: {', '.join(STEPS)}")
    parser.add_argument("--home", type=Path, default=Path("/work/scale-data/home"),
                        help="CIM_HOME of the loaded cluster (kept, up, between steps)")
    parser.add_argument("--city", type=Path, default=Path("/work/scale-data/city"), help="the generated city")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", default="shanghai", help="generate: the city's scale (a fraction, to try the "
                                                            "steps out on a small city)")
    parser.add_argument("--only-layers", default="", help="load: only these manifest layers (comma-separated)")
    parser.add_argument("--skip-layers", default="", help="load: leave these manifest layers out (for now)")
    parser.add_argument("--districts", default="",
                        help="load: the --subset-layers only for these whole districts (codes, comma-separated); "
                             "queries and flood: the places and alarms are drawn there")
    parser.add_argument("--subset-layers", default="addresses,parts,pipelines,iot-devices",
                        help="load: the layers that --districts restricts")
    parser.add_argument("--tiles-districts", default="",
                        help="tiles: only the buildings within the box of these whole districts (codes)")
    parser.add_argument("--requests", type=int, default=1000, help="queries: timed requests per query")
    parser.add_argument("--concurrency", type=int, default=8, help="queries: connections of the busy run")
    parser.add_argument("--tiles-per-zoom", type=int, default=2500, help="queries: distinct tiles per zoom")
    parser.add_argument("--mvt-seconds", type=float, default=4)
    parser.add_argument("--results", type=Path, default=None,
                        help="the JSON file of every step's numbers (default HOME/shanghai-results.json)")
    parser.add_argument("--no-mvt", dest="mvt", action="store_false", help="queries: leave the vector tiles out")
    parser.add_argument("--only-queries", default="",
                        help="queries: only the queries whose names contain one of these (comma-separated), e.g. "
                             "'items' or 'grid,nearby'; none: every one")
    parser.add_argument("--serve-home", type=Path, default=None,
                        help="queries: CIM_HOME of the benchmark's own server (its tile cache; emptied first); "
                             "default HOME/serve-home")
    parser.add_argument("--no-statement-log", dest="statement_log", action="store_false",
                        help="queries: do not time each statement in the server's log (that switches "
                             "log_min_duration_statement on with ALTER SYSTEM while the step runs)")
    parser.add_argument("--flood-scale", type=float, default=1.0,
                        help="flood: a fraction of the Shanghai-size scenario (to try the step on a small city)")
    parser.add_argument("--alarms", type=int, default=40, help="flood: alarms answered (timed)")
    args = parser.parse_args(argv)
    args.home = args.home.resolve()
    args.city = args.city.resolve()
    args.only_layers = {s for s in args.only_layers.split(",") if s}
    args.skip_layers = {s for s in args.skip_layers.split(",") if s}
    args.districts = [s for s in args.districts.split(",") if s]
    args.subset_layers = {s for s in args.subset_layers.split(",") if s}
    args.tiles_districts = [s for s in args.tiles_districts.split(",") if s]
    args.only_queries = [s for s in args.only_queries.split(",") if s]
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; steps: {', '.join(STEPS)}")
    args.home.mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "work").mkdir(exist_ok=True)
    results = Results(args.results or args.home / "shanghai-results.json")
    for step in STEPS:
        if step in steps:
            log(f"step {step}")
            globals()[f"step_{step}"](args, results)


if __name__ == "__main__":
    main()
