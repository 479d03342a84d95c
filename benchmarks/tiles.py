"""Benchmark: 3D Tiles export against py3dtiles, vector tiles against tipg (issue 6).

Run by hand (never by ``make test``):

    .venv/bin/python benchmarks/tiles.py [--only 3d|mvt] [--buildings 100000] [--parts 1000000]

Needs a PostGIS server: CIM_DATABASE_URL, or the embedded cluster under $CIM_HOME (``cim db up``), with the
``postgis_sfcgal`` extension available (py3dtiles is given SFCGAL-extruded solids). The peers are installed
into their own venv, ``benchmarks/work/tiles-peers-venv`` (never into the project's .venv).

- **3D**: N buildings generated with heights and loaded with ``cim ingest buildings``; then, end to end as
  child processes, ``cim tiles export-3d buildings OUT`` and ``py3dtiles export -D … -t … -c geom -i fid``
  on a table of the same buildings as extruded solids in ECEF (py3dtiles reads only MultiPolygon Z /
  PolyhedralSurface Z and writes them with a plain translation, so EPSG:4978 is what places them on the
  globe); the time to make that table is reported on its own line.
- **MVT**: M parts loaded with ``cim ingest parts``; ``cim serve`` and ``uvicorn tipg.main:app`` over the same
  table with the same worker count and the same uvicorn (``uvicorn[standard]``: httptools, uvloop; access log off
  in both unless ``--access-log``). ``wrk`` (Debian package) sends a seeded list of z14–16 tiles over the data
  from 127.0.0.1, 8 connections, for ``--seconds`` per run, and reports tiles/s and wrk's latency percentiles.
  This API is driven the way MapLibre drives it: with the tile URLs of its TileJSON, which carry the layer
  version. It is measured on a fresh tile cache (every tile built: "uncached"), then on the tiles that run built
  ("cached"), plus ``/conformance`` (no tile, no database) as the ceiling of its HTTP stack, and, on another
  fresh server, uncached with the plain URLs (no version, through FastAPI's router). Each server is warmed on
  other tiles first; rounds alternate the servers and the median round is reported. One worker each by
  default (the machine has 2 cores, shared with PostgreSQL and wrk).

The loaded databases are kept (``tilesbench_b<N>``, ``tilesbench_p<M>``) and reused by later runs;
``--reload`` loads them again.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from ingest_vs_ogr2ogr import (  # the same generated data
    BBOX,
    make_buildings,
    make_points,
)

from cim.bootstrap import initialise, load_settings
from cim.database import database_url, engine_for
from cim.registry import load_layers

WORK = HERE / "work"
PEERS = WORK / "tiles-peers-venv"
# uvicorn[standard] (uvloop, httptools) as in the project, so both servers run on the same HTTP stack
PEER_PACKAGES = ["py3dtiles[postgres]==12.1.1", "tipg==1.6.1", "uvicorn[standard]==0.54.0"]
CIM = str(Path(sys.executable).with_name("cim"))
ZOOMS = (14, 15, 16)


# --- set-up ---------------------------------------------------------------------------------------

def peers_venv() -> Path:
    """The peers' own venv (created on first use): py3dtiles and tipg never touch the project's .venv."""
    python = PEERS / "bin" / "python"
    stamp = PEERS / "packages.json"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    if not stamp.exists() or json.loads(stamp.read_text()) != PEER_PACKAGES:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
        stamp.write_text(json.dumps(PEER_PACKAGES))
    return PEERS / "bin"


def database(server: str, name: str, reload: bool) -> tuple[str, bool]:
    """(URL, is new) of a kept benchmark database, created and initialised when absent or reloading."""
    url = urlunsplit(urlsplit(server)._replace(path="/" + name))
    admin = sa.create_engine(engine_for(server).url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
        if exists and reload:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        if not exists or reload:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    if not exists or reload:
        initialise(engine_for(url))
    return url, not exists or reload


def current_count(url: str, table: str) -> int:
    with engine_for(url).connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE valid_to IS NULL")).scalar()


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def cim_env(url: str, home: Path) -> dict:
    return {**os.environ, "CIM_DATABASE_URL": url, "CIM_HOME": str(home)}


def load(url: str, layer: str, path: Path, expected: int) -> float | None:
    """Load with the real loader when the layer is not there yet; its wall time, or None when kept."""
    if current_count(url, layer) == expected:
        return None
    took = timed([CIM, "ingest", layer, str(path), "--json"], cim_env(url, WORK / "tilesbench-home"))
    got = current_count(url, layer)
    if got != expected:
        raise SystemExit(f"{layer}: {got} current rows after the load, expected {expected}")
    return took


def loaded_database(server: str, layer: str, n: int, make: Callable[[int, Path], object], file_name: str,
                    database_name: str, reload: bool) -> str:
    """The kept benchmark database holding ``n`` generated features of ``layer`` (generated and loaded
    with ``cim ingest`` the first time, or again with ``reload``)."""
    path = WORK / file_name
    if not path.exists():
        make(n, path)
    url, _ = database(server, database_name, reload)
    loaded = load(url, layer, path, n)
    if loaded is not None:
        print(f"loaded {n:,} {layer} with cim ingest in {loaded:.1f} s", flush=True)
    return url


def tree_size(root: Path, pattern: str) -> tuple[int, int]:
    files = list(root.rglob(pattern))
    return len(files), sum(f.stat().st_size for f in files)


# --- 3D Tiles -------------------------------------------------------------------------------------

SOLIDS_SQL = """
CREATE EXTENSION IF NOT EXISTS postgis_sfcgal;
DROP TABLE IF EXISTS py3dtiles_buildings;
-- the same blocks the platform draws (base = base_elevation or the footprint's Z, height = height or floors x
-- storey height), as closed solids in ECEF metres
-- py3dtiles reads MultiPolygon Z or PolyhedralSurface Z only; ST_Extrude gives a collection of solids for
-- a MultiPolygon, so its faces are dumped and collected into one MultiPolygon Z per building
CREATE TABLE py3dtiles_buildings AS
SELECT b.fid, ST_Transform(ST_SetSRID(ST_Collect(face.geom), ST_SRID(b.geom)), 4978) AS geom
FROM buildings b,
     LATERAL ST_Dump(ST_Translate(
         ST_Extrude(ST_Force2D(b.geom), 0, 0, coalesce(b.height, b.floors * :storey, :storey)),
         0, 0, CASE WHEN b.base_elevation <> 0 THEN b.base_elevation ELSE coalesce(ST_ZMin(b.geom), 0) END)) face
WHERE b.valid_to IS NULL
GROUP BY b.fid, b.geom;
"""


VALIDATE_JS = """
const fs = require('fs');
const validator = require(process.argv[2]);
(async () => {
  const out = [];
  for (const file of process.argv.slice(3)) {
    const r = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {maxIssues: 5});
    out.push({errors: r.issues.numErrors, first: (r.issues.messages.find(m => m.severity === 0) || {}).code});
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(2); });
"""


def glb_of_b3dm(data: bytes) -> bytes:
    """The glTF inside a Batched 3D Model: after the 28-byte header and the feature/batch tables."""
    ft_json, ft_bin, bt_json, bt_bin = struct.unpack_from("<4I", data, 12)
    return data[28 + ft_json + ft_bin + bt_json + bt_bin:]


def validate(glbs: list[bytes]) -> str:
    """Khronos glTF validator over a sample of tiles: how many have errors, and the first code."""
    validator = HERE.parent / "node_modules" / "gltf-validator"
    if not glbs:
        return "no tiles"
    if not shutil.which("node") or not validator.is_dir():
        return "not validated (node or node_modules/gltf-validator missing)"
    folder = WORK / "validate"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    files = []
    for i, data in enumerate(glbs):
        files.append(folder / f"{i}.glb")
        files[-1].write_bytes(data)
    (folder / "validate.js").write_text(VALIDATE_JS)
    proc = subprocess.run(["node", str(folder / "validate.js"), str(validator), *map(str, files)],
                          capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout)
    bad = [r for r in report if r["errors"]]
    codes = sorted({r["first"] for r in bad})
    return f"{len(bad)} of {len(report)} sampled tiles with glTF errors" + (f" ({', '.join(codes)})" if codes else "")


def sample(paths: list[Path], k: int = 40) -> list[Path]:
    return random.Random(1).sample(sorted(paths), min(k, len(paths)))


def pg_conninfo(url: str) -> str:
    p = urlsplit(url)
    return (f"host={p.hostname} port={p.port} dbname={p.path.lstrip('/')} user={p.username} "
            f"password={p.password}")


def bench_3d(server: str, n: int, reload: bool) -> list[str]:
    url = loaded_database(server, "buildings", n, make_buildings, f"buildings_{n}.gpkg", f"tilesbench_b{n}", reload)

    ours = WORK / "tiles3d-cim"
    shutil.rmtree(ours, ignore_errors=True)
    cim_s = timed([CIM, "tiles", "export-3d", "buildings", str(ours)], cim_env(url, WORK / "tilesbench-home"))
    tileset = json.loads((ours / "tileset.json").read_text())
    assert tileset["metadata"]["properties"]["featureCount"] == n, tileset["metadata"]
    cim_tiles, cim_bytes = tree_size(ours, "*.glb")
    cim_valid = validate([p.read_bytes() for p in sample(list(ours.rglob("*.glb")))])
    print(f"cim tiles export-3d: {cim_s:.1f} s, {cim_tiles} glb, {cim_bytes / 1e6:.0f} MB; {cim_valid}", flush=True)

    started = time.perf_counter()
    with engine_for(url).begin() as conn:
        conn.execute(sa.text(SOLIDS_SQL), {"storey": load_settings(engine_for(url)).floor_height_m})
        solids = conn.execute(sa.text("SELECT count(*) FROM py3dtiles_buildings")).scalar()
    prep_s = time.perf_counter() - started
    assert solids == n
    theirs = WORK / "tiles3d-py3dtiles"
    shutil.rmtree(theirs, ignore_errors=True)
    bin_ = peers_venv()
    peer_s = timed([str(bin_ / "py3dtiles"), "export", "-D", pg_conninfo(url), "-t", "py3dtiles_buildings",
                    "-c", "geom", "-i", "fid", "-s", str(theirs)], cwd=WORK)
    peer_tiles, peer_bytes = tree_size(theirs, "*.b3dm")
    peer_valid = validate([glb_of_b3dm(p.read_bytes()) for p in sample(list(theirs.rglob("*.b3dm")))])
    print(f"py3dtiles export: {peer_s:.1f} s (+ {prep_s:.1f} s making its solids), {peer_tiles} b3dm, "
          f"{peer_bytes / 1e6:.0f} MB; {peer_valid}", flush=True)
    return [
        (f"| 3D Tiles, {n:,} buildings | `cim tiles export-3d` | {cim_s:.1f} | {cim_tiles:,} glb, "
         f"{cim_bytes / 1e6:.0f} MB; {cim_valid} | 1.00× |"),
        (f"| | `py3dtiles export` (solids ready) | {peer_s:.1f} | {peer_tiles:,} b3dm, {peer_bytes / 1e6:.0f} MB; "
         f"{peer_valid} | {peer_s / cim_s:.2f}× |"),
        (f"| | py3dtiles incl. making its solids table ({prep_s:.1f} s) | {peer_s + prep_s:.1f} | | "
         f"{(peer_s + prep_s) / cim_s:.2f}× |"),
    ]


# --- vector tiles ---------------------------------------------------------------------------------

def tile_list(count: int, seed: int) -> list[tuple[int, int, int]]:
    """``count`` tiles per zoom, drawn (seeded) from those covering the data's box."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    rng = random.Random(seed)
    out = []
    for z in ZOOMS:
        ul, lr = tms.tile(BBOX[0], BBOX[3], z), tms.tile(BBOX[2], BBOX[1], z)
        cells = [(z, x, y) for x in range(ul.x, lr.x + 1) for y in range(ul.y, lr.y + 1)]
        out += rng.sample(cells, min(count, len(cells)))
    rng.shuffle(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server in its own process group, started and stopped by this script only."""

    def __init__(self, cmd: list[str], env: dict, port: int, probe: str, cwd: Path, log: Path) -> None:
        self.port, self.log = port, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited:\n{log.read_text()[-3000:]}")
            try:
                if asyncio.run(_get_once(port, probe)) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"{cmd[0]} did not answer {probe} within 120 s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def _get_once(port: int, path: str) -> int:
    return (await fetch(port, [path]))[0][0]


async def fetch(port: int, paths: list[str]) -> list[tuple[int, bytes]]:
    """GET each path on one connection: (status, body) each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return [await _request(reader, writer, path) for path in paths]
    finally:
        writer.close()


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive GET; (status, body). A minimal client, so that the load generator
    is not what runs out of CPU first."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: identity\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while True:
            n = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunks.append((await reader.readexactly(n + 2))[:-2])
            if n == 0:
                return status, b"".join(chunks)
    return status, b""


# wrk (Debian ``wrk``, C, epoll) sends the requests: one thread, ``concurrency`` keep-alive connections, the
# paths of a list in order (the connections take turns), for a fixed time. A Python client on the same 2
# cores ran out of CPU near 2,000 requests/s, below what a server answers from memory. An uncached run must
# not reach the end of its list (a tile asked twice would be cached): the script then reports the list as
# used up, and the run is refused.
WRK_SCRIPT = r"""
local paths, i, cycle, threads = {}, 0, false, {}
used_up = 0
function setup(thread) table.insert(threads, thread) end
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  cycle = args[2] == "cycle"
end
function request()
  i = i + 1
  if i > #paths then
    if not cycle then used_up = 1 end
    i = 1
  end
  return wrk.format("GET", paths[i], {["Accept-Encoding"] = "identity"})
end
function done(summary, latency, requests)
  local out = io.open(os.getenv("WRK_OUT"), "w")
  out:write(string.format('{"requests": %d, "seconds": %f, "bytes": %d, "p50_ms": %f, "p99_ms": %f, ',
    summary.requests, summary.duration / 1e6, summary.bytes, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000))
  out:write(string.format('"errors": %d, "used_up": %d, ', summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.status + summary.errors.timeout, threads[1]:get("used_up")))
  out:write(string.format('"error_kinds": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}',
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout))
  out:close()
end
"""


def drive(port: int, paths: list[str], concurrency: int, seconds: float, cycle: bool = False) -> dict:
    """Send the paths in order for ``seconds`` with ``wrk`` (over and over if ``cycle``): requests, seconds,
    bytes, p50/p99 ms (wrk's own latency histogram)."""
    if shutil.which("wrk") is None:
        raise SystemExit("the load generator is wrk: apt-get install wrk")
    script, spec, out = WORK / "loadgen.lua", WORK / "loadgen-paths.txt", WORK / "loadgen-result.json"
    script.write_text(WRK_SCRIPT)
    spec.write_text("\n".join(paths) + "\n")
    out.unlink(missing_ok=True)
    subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script),
                    f"http://127.0.0.1:{port}", "--", str(spec), "cycle" if cycle else "once"],
                   env={**os.environ, "WRK_OUT": str(out)}, capture_output=True, text=True, check=True)
    result = json.loads(out.read_text())
    if result["errors"]:  # wrk counts answers other than 2xx/3xx as errors too
        raise SystemExit(f"{result['errors']} failed or non-2xx/3xx requests from port {port} "
                         f"({result['error_kinds']}; {result['requests']} answered in {result['seconds']:.1f} s)")
    if result["used_up"]:
        raise SystemExit(f"the list of {len(paths):,} paths was used up in {seconds:g} s: raise --tiles-per-zoom")
    return result


def _features(body: bytes) -> list[str]:
    """The object codes in a vector tile (whatever its layer is called)."""
    import mapbox_vector_tile

    layers = mapbox_vector_tile.decode(body) if body else {}
    return sorted(f["properties"]["object_code"] for layer in layers.values() for f in layer["features"])


def bench_mvt(server: str, n: int, reload: bool, per_zoom: int, concurrency: int, workers: int,
              seconds: float, rounds: int, access_log: bool) -> list[str]:
    url = loaded_database(server, "parts", n, make_points, f"points_{n}.gpkg", f"tilesbench_p{n}", reload)
    with engine_for(url).connect() as conn:
        conn.execute(sa.text("ANALYZE parts"))
        conn.commit()
        layers = load_layers(conn)
    from tiles.mvt import map_properties

    props = map_properties(layers["parts"])  # what this API's map tiles carry (TileJSON's fields)
    tiles = tile_list(per_zoom, 6)
    # each server is warmed on other tiles: its code paths and pools are hot, the measured tiles are
    # not in its cache
    measured = set(tiles)
    warm = [t for t in tile_list(max(per_zoom // 5, 10), 7) if t not in measured]

    def ours(ts: list[tuple[int, int, int]], template: str) -> list[str]:  # TileJSON's: z / y / x, versioned
        return [template.format(z=z, x=x, y=y) for z, x, y in ts]

    def peer(ts: list[tuple[int, int, int]]) -> list[str]:  # tipg: z / x / y
        return [f"/collections/public.parts/tiles/WebMercatorQuad/{z}/{x}/{y}" for z, x, y in ts]

    sample = tiles[:30]
    bin_ = peers_venv()
    tipg_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("TIPG_", "CIM_"))},
                "DATABASE_URL": url, "TIPG_DB_SCHEMAS": '["public"]', "TIPG_DB_TABLES": '["public.parts"]',
                # the same tile buffer and the same properties as this API's tiles, so both do the same work
                "TIPG_TILE_BUFFER": "64", "TIPG_TABLE_CONFIG__public_parts__PROPERTIES": json.dumps(props)}
    ceiling = "this API, `/conformance` (no tile, no database: the stack's ceiling)"
    unversioned = "this API, uncached, URLs without the version (through the router)"
    runs: dict[str, list[dict]] = {"tipg": [], "this API, uncached": [], "this API, cached": [], ceiling: [],
                                   unversioned: []}
    # the same access-log setting for both servers (uvicorn logs by default, `cim serve` does not)
    logging, cim_logging = ([], ["--access-log"]) if access_log else (["--no-access-log"], ["--no-access-log"])
    # rounds alternate the two servers, so that a busy spell on the machine does not favour one
    for round_ in range(rounds):
        port = free_port()
        tipg = Server([str(bin_ / "uvicorn"), "tipg.main:app", "--host", "127.0.0.1", "--port", str(port),
                       "--workers", str(workers), "--log-level", "info", *logging], tipg_env, port,
                      "/collections/public.parts", WORK, WORK / "tipg.log")
        try:
            drive(port, peer(warm), concurrency, 3, cycle=True)
            runs["tipg"].append(drive(port, peer(tiles), concurrency, seconds))
            if round_ == 0:
                theirs = [_features(body) for _, body in asyncio.run(fetch(port, peer(sample)))]
        finally:
            tipg.stop()

        def start_api() -> tuple[Server, int]:
            home = WORK / "tilesbench-serve-home"
            shutil.rmtree(home, ignore_errors=True)  # a fresh tile cache: the first pass builds every tile
            port = free_port()
            return Server([CIM, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                           *cim_logging], cim_env(url, home), port, "/collections/parts", HERE.parent,
                          WORK / "cim-serve.log"), port

        # the plain OGC API – Tiles URLs (no version: each goes through the router and reads the version)
        api, port = start_api()
        try:
            plain = ours(warm, "/collections/parts/tiles/WebMercatorQuad/{z}/{y}/{x}")
            drive(port, plain, concurrency, 3, cycle=True)
            runs[unversioned].append(drive(port, ours(tiles, "/collections/parts/tiles/WebMercatorQuad/{z}/{y}/{x}"),
                                           concurrency, seconds))
        finally:
            api.stop()
        api, port = start_api()
        try:
            # the tile URLs a client gets from the TileJSON (MapLibre does this): they carry the layer version
            tilejson = json.loads(asyncio.run(fetch(port, ["/collections/parts/tiles/WebMercatorQuad/tilejson.json"]))[0][1])
            template = "/" + tilejson["tiles"][0].split("/", 3)[3]
            drive(port, ours(warm, template), concurrency, 3, cycle=True)
            uncached = drive(port, ours(tiles, template), concurrency, seconds)
            runs["this API, uncached"].append(uncached)
            # the tiles that run built (the list is sent in order), over and over
            built = ours(tiles[:uncached["requests"] - concurrency], template)
            runs["this API, cached"].append(drive(port, built, concurrency, seconds, cycle=True))
            runs[ceiling].append(drive(port, ["/conformance"], concurrency, seconds, cycle=True))
            if round_ == 0:
                mine = [_features(body) for _, body in asyncio.run(fetch(port, ours(sample, template)))]
        finally:
            api.stop()
        print(f"round {round_ + 1}: " + ", ".join(f"{label} {r[-1]['requests'] / r[-1]['seconds']:,.0f} tiles/s"
                                                 for label, r in runs.items()), flush=True)
    inside = sum(set(b) <= set(a) for a, b in zip(mine, theirs))
    extra = sum(map(len, mine)) / max(sum(map(len, theirs)), 1) - 1
    print(f"tipg's features are all in this API's tile in {inside} of {len(sample)} sampled tiles; this API has "
          f"{extra:.1%} more (points in the 64-px buffer)", flush=True)

    out = []
    best = {label: sorted(r, key=lambda m: m["requests"] / m["seconds"])[len(r) // 2] for label, r in runs.items()}
    rate = {label: m["requests"] / m["seconds"] for label, m in best.items()}
    for label, m in best.items():
        out.append(f"| MVT z14–16, {n:,} parts | {label} | {m['requests']:,} | {rate[label]:,.0f} | "
                   f"{m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['bytes'] / m['requests'] / 1024:.1f} | "
                   f"{rate[label] / rate['tipg']:.2f}× |")
    out.append(f"\ncached ÷ uncached (this API): {rate['this API, cached'] / rate['this API, uncached']:.1f}×; "
               f"median of {rounds} alternating rounds; {len(tiles):,} tiles ({per_zoom} per zoom, seeded), "
               f"{concurrency} concurrent connections, {workers} worker process(es) each, access log "
               f"{'on' if access_log else 'off'} in both; tipg's features within "
               f"this API's in {inside}/{len(sample)} sampled tiles, this API {extra:.1%} more (64-px buffer)")
    return out


# --- main -----------------------------------------------------------------------------------------

def describe_machine(server: str) -> str:
    with engine_for(server).connect() as conn:
        pg = conn.execute(sa.text("SHOW server_version")).scalar()
        postgis = conn.execute(sa.text("SELECT default_version FROM pg_available_extensions "
                                       "WHERE name = 'postgis'")).scalar()
        buffers = conn.execute(sa.text("SHOW shared_buffers")).scalar()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
            f"PostgreSQL {pg} + PostGIS {postgis} (shared_buffers {buffers}), Python "
            f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}; load average before: "
            f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["3d", "mvt"])
    parser.add_argument("--buildings", type=int, default=100_000)
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--tiles-per-zoom", type=int, default=1100,
                        help="z14, z15 and z16 tiles in the list (more than a run gets through)")
    parser.add_argument("--concurrency", type=int, default=8, help="open connections of the load generator")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes (both servers); above 1, uvicorn's own listening socket "
                             "leaves TCP_NODELAY off and every response waits ~40 ms for a delayed ACK")
    parser.add_argument("--seconds", type=float, default=5, help="length of each timed run")
    parser.add_argument("--access-log", action="store_true",
                        help="keep uvicorn's access log on in both servers (default: off in both)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both servers (median)")
    parser.add_argument("--reload", action="store_true", help="load the benchmark databases again")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    server = database_url()
    print(f"Machine: {describe_machine(server)}\n", flush=True)
    lines = []
    if args.only in (None, "3d"):
        lines += ["| run | tool | seconds | output | time ÷ cim's |", "|---|---|---:|---|---:|",
                  *bench_3d(server, args.buildings, args.reload), ""]
    if args.only in (None, "mvt"):
        lines += ["| run | server | requests | tiles/s | p50 ms | p99 ms | KiB/tile | ÷ tipg |",
                  "|---|---|---:|---:|---:|---:|---:|---:|",
                  *bench_mvt(server, args.parts, args.reload, args.tiles_per_zoom, args.concurrency,
                             args.workers, args.seconds, args.rounds, args.access_log)]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
