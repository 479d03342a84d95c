"""Benchmark: this spatial API (`cim serve`) against tipg serving the same PostGIS `parts` table.

Run by hand (not a test):

    CIM_HOME=/tmp/apibench-home .venv/bin/cim db up        # or set CIM_DATABASE_URL
    CIM_HOME=/tmp/apibench-home .venv/bin/python benchmarks/api_vs_tipg.py [--workers 1] [--requests 2000]

What it does:

1. Database ``apibench`` on the server of CIM_DATABASE_URL / the embedded cluster: 1,000,000 parts
   with valid 16-digit object codes, 10,000 unit grids (+ one district covering them, two posts per
   grid), loaded with the real ``cim ingest``. Reused when its counts already match (``--reload``
   to start over); the input files are generated once under ``benchmarks/work/apibench/``.
2. tipg (PyPI) in its own venv, ``benchmarks/work/apibench/tipg-venv`` — never the project's
   .venv — started with its own uvicorn, exposing ``public.parts`` (id = ``fid``).
3. Both servers with the same number of uvicorn worker processes, on 127.0.0.1 only.
4. This process is the load generator (httpx + asyncio, bounded concurrency, a fixed number of
   requests per scenario, after a warm-up): items with a random ~1 km bbox (limit 100), the same
   with a CQL2 filter, one feature by id, then (this API only) GET /grid/lookup and
   /nearby?k=10. Rounds alternate tipg and cim so that neither gets a warmer machine.
5. Prints a Markdown section (machine, date, versions, table, ratios) and writes it to ``--out``.

Both servers get identical questions: the same boxes, filters and rows (tipg is addressed by
``fid``, cim by that row's ``feature_id``); before timing, a sample of answers is compared.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import geopandas as gpd
import httpx
import numpy as np
import pandas as pd
import shapely
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cim.database import database_url, engine_for  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "apibench"
TIPG_VENV = WORK / "tipg-venv"
TIPG_VERSION = "1.6.1"
CIM = str(Path(sys.executable).with_name("cim"))
DATABASE = "apibench"
BBOX = (121.10, 30.90, 121.90, 31.45)  # central Shanghai, WGS84 ≈ CGCS2000
SUBCLASSES = ["0101", "0102", "0103", "0104", "0105", "0106"]
BOX_DEG = 0.01  # ~0.95 × 1.1 km: ~230 of 1M parts, so a limit-100 page is full and a count is needed
FILTER_SUBCLASSES = ("0101", "0102", "0103")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def make_parts(n: int, path: Path) -> None:
    rng = np.random.default_rng(42)
    lon = rng.uniform(BBOX[0], BBOX[2], n)
    lat = rng.uniform(BBOX[1], BBOX[3], n)
    z = -rng.uniform(0, 3, n).round(2)
    subclass = rng.choice(SUBCLASSES, n)
    sequence = pd.Series(subclass).groupby(subclass).cumcount().to_numpy() + 1  # unique per subclass
    gpd.GeoDataFrame({
        "source_id": [f"P{i:07d}" for i in range(n)],
        "object_code": [f"310104{s}{q:06d}" for s, q in zip(subclass, sequence)],
        "name": "井盖",
        "status": rng.choice(["完好", "破损", "丢失"], n, p=[0.8, 0.15, 0.05]),
        "owner_department": rng.choice(["水务局", "绿化市容局", "交通委"], n),
        "z": z,
    }, geometry=shapely.points(lon, lat), crs="EPSG:4490").to_file(path, layer="parts", driver="GPKG")


def make_grids(n: int, grids: Path, district: Path, responsibility: Path) -> None:
    side = int(np.ceil(np.sqrt(n)))
    xs = np.linspace(BBOX[0], BBOX[2], side + 1)
    ys = np.linspace(BBOX[1], BBOX[3], side + 1)
    cells = [shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1]) for i in range(side) for j in range(side)][:n]
    codes = [f"3101040{i:08d}" for i in range(len(cells))]
    gpd.GeoDataFrame({"grid_code": codes, "name": [f"网格{i}" for i in range(len(cells))]},
                     geometry=cells, crs="EPSG:4490").to_file(grids, driver="GPKG")
    gpd.GeoDataFrame({"code": ["310104"], "name": ["徐汇区"]}, geometry=[shapely.box(*BBOX)],
                     crs="EPSG:4490").to_file(district, driver="GPKG")
    rows = []
    for i, code in enumerate(codes):  # a grid supervisor per grid, a grid head per 100 grids
        rows.append((code, f"GW{i:08d}", "网格监督员", "310104-WGZX", "网格化管理中心", f"监督员{i}",
                     f"138{i:08d}", "01;02;03"))
        rows.append((code, f"GZ{i // 100:06d}", "网格长", "310104-BSC", "街道办事处", f"网格长{i // 100}",
                     f"139{i // 100:08d}", "05;06"))
    pd.DataFrame(rows, columns=["grid_code", "post_code", "post_name", "department_code", "department_name",
                                "person_name", "person_contact", "handles"]).to_csv(responsibility, index=False)


def cim(*args: str, url: str) -> None:
    env = {**os.environ, "CIM_DATABASE_URL": url}
    proc = subprocess.run([CIM, *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"cim {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def counts(url: str) -> tuple[int, int]:
    try:
        with engine_for(url).connect() as conn:
            return tuple(conn.execute(sa.text(
                "SELECT (SELECT count(*) FROM parts WHERE valid_to IS NULL), "
                "(SELECT count(*) FROM grids WHERE valid_to IS NULL)")).one())  # type: ignore[return-value]
    except sa.exc.SQLAlchemyError:
        return (-1, -1)


def prepare_database(server: str, n_parts: int, n_grids: int, reload: bool) -> str:
    url = urlunsplit(urlsplit(server)._replace(path="/" + DATABASE))
    if not reload and counts(url) == (n_parts, n_grids):
        print(f"reusing database {DATABASE} ({n_parts:,} parts, {n_grids:,} grids)", flush=True)
        return url
    WORK.mkdir(parents=True, exist_ok=True)
    parts, grids = WORK / f"parts_{n_parts}.gpkg", WORK / f"grids_{n_grids}.gpkg"
    district, responsibility = WORK / "district.gpkg", WORK / f"responsibility_{n_grids}.csv"
    if not parts.exists():
        print(f"generating {parts}", flush=True)
        make_parts(n_parts, parts)
    if not grids.exists() or not responsibility.exists():
        make_grids(n_grids, grids, district, responsibility)
    admin = sa.create_engine(engine_for(server).url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    cim("init", url=url)
    cim("ingest", "districts", str(district), url=url)
    cim("ingest", "grids", str(grids), url=url)
    cim("ingest", "responsibility", str(responsibility), url=url)
    started = time.perf_counter()
    cim("ingest", "parts", str(parts), url=url)
    print(f"loaded {n_parts:,} parts in {time.perf_counter() - started:.0f} s", flush=True)
    with engine_for(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    assert counts(url) == (n_parts, n_grids), counts(url)
    return url


# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------

def ensure_tipg() -> Path:
    import uvicorn  # the same uvicorn as ours, with the same extras, so the HTTP layer is not what differs

    python = TIPG_VENV / "bin" / "python"
    packages = [f"tipg=={TIPG_VERSION}", f"uvicorn[standard]=={uvicorn.__version__}"]
    stamp = TIPG_VENV / "packages.json"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TIPG_VENV)], check=True)
    if not stamp.exists() or json.loads(stamp.read_text()) != packages:
        print(f"installing {', '.join(packages)} into {TIPG_VENV}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True, stderr=subprocess.DEVNULL)
        stamp.write_text(json.dumps(packages))
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    base: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(name: str, cmd: list[str], env: dict[str, str], port: int, ready_path: str) -> Server:
    log = WORK / f"{name}.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + ready_path, timeout=5).status_code == 200:
                return Server(name, base, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{name} did not start:\n{log.read_text()[-3000:]}")


#: uvicorn's access log, the same for both servers (``--access-log`` turns it on in both; uvicorn logs by
#: default, ``cim serve`` does not, so each gets its flag)
LOGGING = ["--no-access-log"]
CIM_LOGGING = ["--no-access-log"]


def start_cim(url: str, workers: int) -> Server:
    port = free_port()
    env = {**os.environ, "CIM_DATABASE_URL": url}
    return start("cim", [CIM, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                         *CIM_LOGGING], env, port, "/collections/parts")


def pooled_app():
    """``uvicorn --factory``: the API with a fixed pool of CIM_BENCH_POOL connections and no overflow
    (``cim serve`` now has a fixed pool of 8 itself; this variant tries other sizes)."""
    from api.app import create_app
    from cim.database import sqlalchemy_url

    size = int(os.environ["CIM_BENCH_POOL"])
    return create_app(sa.create_engine(sqlalchemy_url(os.environ["CIM_DATABASE_URL"]), pool_size=size,
                                       max_overflow=0, pool_pre_ping=True))


def start_cim_pooled(url: str, workers: int, size: int) -> Server:
    port = free_port()
    env = {**os.environ, "CIM_DATABASE_URL": url, "CIM_BENCH_POOL": str(size)}
    return start(f"cim-pool{size}", [sys.executable, "-m", "uvicorn", "--factory", "api_vs_tipg:pooled_app",
                                     "--app-dir", str(Path(__file__).parent), "--host", "127.0.0.1",
                                     "--port", str(port), "--workers", str(workers), *LOGGING], env, port,
                 "/collections/parts")


def start_tipg(url: str, workers: int) -> Server:
    python = ensure_tipg()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "TIPG_DB_SCHEMAS": '["public"]', "TIPG_DB_TABLES": '["public.parts"]',
           "TIPG_TABLE_CONFIG__public_parts__pk": "fid", "TIPG_TABLE_CONFIG__public_parts__geomcol": "geom"}
    return start("tipg", [str(python), "-m", "uvicorn", "tipg.main:app", "--host", "127.0.0.1", "--port", str(port),
                          "--workers", str(workers), *LOGGING], env, port, "/collections/public.parts")


# ---------------------------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    tipg: list[str] | None  # paths, or None where tipg has no such service
    cim: list[str]


def _boxes(rng: np.random.Generator, n: int) -> list[tuple[float, float, float, float]]:
    x = rng.uniform(BBOX[0], BBOX[2] - BOX_DEG, n)
    y = rng.uniform(BBOX[1], BBOX[3] - BOX_DEG, n)
    return [(round(a, 6), round(b, 6), round(a + BOX_DEG, 6), round(b + BOX_DEG, 6)) for a, b in zip(x, y)]


def _cql(box: tuple[float, ...]) -> str:
    # a POLYGON, not BBOX(…): tipg 1.6.1 leaves a BBOX literal untransformed (compared in the table's
    # metres it matches nothing), while it does transform GeoJSON/WKT geometry literals
    x0, y0, x1, y1 = box
    ring = f"{x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}"
    subclasses = ", ".join(f"'{s}'" for s in FILTER_SUBCLASSES)
    return f"S_INTERSECTS(geom, POLYGON(({ring}))) AND part_subclass IN ({subclasses}) AND status = '完好'"


def scenarios(url: str, n: int, seed: int) -> list[Scenario]:
    rng = np.random.default_rng(seed)
    boxes = _boxes(rng, n)
    bbox_q = [f"bbox={','.join(map(str, b))}&limit=100" for b in boxes]
    filters = [f"filter-lang=cql2-text&filter={quote(_cql(b))}&limit=100" for b in _boxes(rng, n)]
    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.text("SELECT fid, feature_id::text FROM parts TABLESAMPLE SYSTEM (1) "
                                    "REPEATABLE (:seed) LIMIT :n"), {"seed": seed, "n": n}).all()
    rows = [rows[i % len(rows)] for i in rng.permutation(n)]
    lon = rng.uniform(BBOX[0], BBOX[2], n)
    lat = rng.uniform(BBOX[1], BBOX[3], n)
    return [
        Scenario("items, random bbox, limit 100", [f"/collections/public.parts/items?{q}" for q in bbox_q],
                 [f"/collections/parts/items?{q}" for q in bbox_q]),
        Scenario("items, CQL2 filter (bbox + IN + =), limit 100",
                 [f"/collections/public.parts/items?{q}" for q in filters],
                 [f"/collections/parts/items?{q}" for q in filters]),
        Scenario("one feature by id", [f"/collections/public.parts/items/{fid}" for fid, _ in rows],
                 [f"/collections/parts/items/{feature_id}" for _, feature_id in rows]),
        Scenario("GET /grid/lookup (one point)", None,
                 [f"/grid/lookup?lon={a:.6f}&lat={b:.6f}" for a, b in zip(lon, lat)]),
        Scenario("/nearby parts k=10", None,
                 [f"/nearby?layer=parts&lon={a:.6f}&lat={b:.6f}&k=10" for a, b in zip(lon, lat)]),
    ]


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall

    def pct(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies) * 1000, q))


async def drive(base: str, paths: list[str], concurrency: int, into: Result) -> None:
    queue = list(reversed(paths))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60, trust_env=False) as client:
        async def worker() -> None:
            while queue:
                path = queue.pop()
                t = time.perf_counter()
                try:
                    r = await client.get(path)
                except httpx.TransportError as exc:  # e.g. a keep-alive connection the server just closed
                    into.errors += 1
                    print(f"  {type(exc).__name__} on {base}{path[:120]}; retried", flush=True)
                    r = await client.get(path)
                into.latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    into.errors += 1
                    if into.errors <= 3:
                        print(f"  {r.status_code} {base}{path[:160]}: {r.text[:300]}", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        into.wall += time.perf_counter() - started


def check_same_answers(tipg: Server, ours: Server, sc: list[Scenario], url: str) -> None:
    """The two servers answer the same questions alike, on a sample of requests (whole match sets).

    Not quite identically for ``bbox``: tipg projects the CRS84 box's corners to the table's CRS and
    queries their bounding rectangle there (``transform_bounds``), which takes in a few features
    outside the box; cim queries the (densified) box itself. So cim's set must be within tipg's
    and both near the same size; with the box inside a CQL2 filter they must agree exactly.
    """
    engine = engine_for(url)
    for s, exact in ((sc[0], False), (sc[1], True)):
        for i in range(0, len(s.cim), max(len(s.cim) // 10, 1)):
            a = httpx.get(tipg.base + s.tipg[i].replace("limit=100", "limit=10000"), timeout=60).json()
            b = httpx.get(ours.base + s.cim[i].replace("limit=100", "limit=10000"), timeout=60).json()
            ids = [f["id"] for f in b["features"]]
            with engine.connect() as conn:
                fids = set(conn.execute(sa.text("SELECT fid FROM parts WHERE feature_id = ANY(CAST(:ids AS uuid[]))"),
                                        {"ids": ids}).scalars())
            theirs = {int(f["id"]) for f in a["features"]}
            assert len(fids) == len(ids) == b["numberMatched"] and len(theirs) == a["numberMatched"], s.name
            if exact:
                assert fids == theirs, (s.name, len(fids), len(theirs))
            else:
                assert fids <= theirs and len(theirs) <= 1.05 * len(fids) + 5, (s.name, len(fids), len(theirs))
    a = httpx.get(tipg.base + sc[2].tipg[0], timeout=60).json()
    b = httpx.get(ours.base + sc[2].cim[0], timeout=60).json()
    assert a["properties"]["object_code"] == b["properties"]["object_code"]


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.platform()}"


def versions(url: str) -> str:
    with engine_for(url).connect() as conn:
        pg = conn.execute(sa.text("SHOW server_version")).scalar()
        postgis = conn.execute(sa.text("SELECT postgis_lib_version()")).scalar()
    import uvicorn

    log = "on" if not LOGGING else "off"
    return (f"PostgreSQL {pg}, PostGIS {postgis}, tipg {TIPG_VERSION}, uvicorn[standard] {uvicorn.__version__} "
            f"(both; access log {log} in both)")


def paths_for(server: str, s: Scenario) -> list[str] | None:
    return s.tipg if server == "tipg" else s.cim


def run_phase(servers: dict[str, Server], sc: list[Scenario], warm: list[Scenario], concurrency: int,
              rounds: int) -> dict[tuple[str, str], Result]:
    """Per scenario: a warm-up on each server, then rounds that alternate the servers."""
    results: dict[tuple[str, str], Result] = {}
    for s, w in zip(sc, warm):
        for name, server in servers.items():
            if paths_for(name, w) is not None:
                asyncio.run(drive(server.base, paths_for(name, w), concurrency, Result()))
        for _ in range(rounds):
            for name, server in servers.items():
                paths = paths_for(name, s)
                if paths is not None:
                    asyncio.run(drive(server.base, paths, concurrency, results.setdefault((s.name, name), Result())))
        print(f"  c={concurrency} {s.name}: " + " | ".join(
            f"{n} {r.rps:,.0f} req/s p50 {r.pct(50):.1f} ms p99 {r.pct(99):.1f} ms"
            for (sn, n), r in results.items() if sn == s.name), flush=True)
    return results


def table(sc: list[Scenario], servers: list[str], results: dict[tuple[str, str], Result]) -> list[str]:
    lines = ["| scenario | server | req/s | p50 ms | p99 ms | req/s ÷ tipg |", "|---|---|---:|---:|---:|---:|"]
    for s in sc:
        base = results.get((s.name, "tipg"))
        for name in servers:
            r = results.get((s.name, name))
            if r is None:
                continue
            ratio = f"{r.rps / base.rps:.2f}×" if base and name != "tipg" else "—"
            errors = f" ({r.errors} retried)" if r.errors else ""
            lines.append(f"| {s.name} | {name}{errors} | {r.rps:,.0f} | {r.pct(50):.1f} | {r.pct(99):.1f} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--grids", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of each server")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per scenario and server")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (the servers alternate)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=300,
                        help="requests per scenario and server one at a time (service latency); 0: skip")
    parser.add_argument("--cim-pool", type=int, default=0,
                        help="also serve cim with a fixed pool of this many connections, no overflow")
    parser.add_argument("--reload", action="store_true", help="rebuild the benchmark database")
    parser.add_argument("--only", choices=["cim", "tipg"], help="drive one server only")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_api.md"))
    parser.add_argument("--access-log", action="store_true",
                        help="keep uvicorn's access log on in both servers (default: off in both)")
    args = parser.parse_args()
    if args.access_log:
        LOGGING[:] = []
        CIM_LOGGING[:] = ["--access-log"]

    url = prepare_database(database_url(), args.parts, args.grids, args.reload)
    sc = scenarios(url, args.requests, seed=1)
    warm = scenarios(url, args.warmup, seed=2)
    servers: dict[str, Server] = {}
    try:
        if args.only != "cim":
            servers["tipg"] = start_tipg(url, args.workers)
        if args.only != "tipg":
            servers["cim"] = start_cim(url, args.workers)
            if args.cim_pool:
                servers[f"cim-pool{args.cim_pool}"] = start_cim_pooled(url, args.workers, args.cim_pool)
        if "tipg" in servers and "cim" in servers:
            check_same_answers(servers["tipg"], servers["cim"], sc, url)
        load_before = os.getloadavg()
        started = time.perf_counter()
        results = run_phase(servers, sc, warm, args.concurrency, args.rounds)
        serial = {}
        if args.latency_requests:
            serial = run_phase(servers, scenarios(url, args.latency_requests, seed=3),
                               scenarios(url, 20, seed=4), 1, 1)
        minutes = (time.perf_counter() - started) / 60
        load_after = os.getloadavg()
    finally:
        for server in servers.values():
            server.stop()

    names = list(servers)
    lines = [
        "## Spatial API vs tipg (`benchmarks/api_vs_tipg.py`)",
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}. {versions(url)}.",
        "",
        f"Data: {args.parts:,} parts (points, 16-digit object codes) and {args.grids:,} unit grids (two posts "
        f"each) plus one district, loaded with `cim ingest`; PostgreSQL on the same machine. Each server: "
        f"{args.workers} uvicorn worker process(es) on 127.0.0.1; tipg exposes `public.parts` (id = fid). "
        f"Load: this script's own process (httpx/asyncio). Load average (1 min) before/after: "
        f"{load_before[0]:.1f}/{load_after[0]:.1f}; {minutes:.0f} min of driving.",
        "",
        f"### Throughput: {args.concurrency} concurrent connections, {args.requests:,} requests × {args.rounds} "
        f"rounds per scenario and server (servers alternating), after {args.warmup} warm-up requests",
        "",
        *table(sc, names, results),
    ]
    if serial:
        lines += ["", f"### Service latency: one request at a time, {args.latency_requests} requests per scenario "
                      "and server", "", *table(sc, names, serial)]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    args.out.write_text(text, encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
