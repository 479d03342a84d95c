"""Benchmark: uncached vector tiles z14–16 on a loaded base, two builds of ``cim`` side by side (issue 15, item 4).

Run by hand (never by ``make test``), against a loaded base it only reads:

    .venv/bin/python benchmarks/mvt_shanghai.py --home /tmp/h15 \\
        --before /work/main/.venv/bin/cim --after .venv/bin/cim [--rounds 3] [--seconds 4] [--workers 1]

Each ``cim`` serves the base from its own checkout on its own port, keeping no tile (``CIM_TILE_MEMORY_MB=0``,
``CIM_TILE_PERSIST_AFTER_S=1e9``: every tile is built on request, so a list of tiles can be cycled). For each layer
and zoom set (z14–16 together, then each zoom alone) the two servers are driven in turns by ``wrk`` (8 connections,
as ``benchmarks/shanghai.py``), which goes first alternating round by round, both on the same tiles (drawn under
random features, as ``benchmarks/shanghai.py`` does). Besides tiles/s and wrk's p99 it counts the work per tile,
which a shared machine disturbs least: the CPU of the server's processes and of the PostgreSQL backends serving its
connections (``/proc``; the backends are found through the server's own sockets), divided by the tiles answered.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import sqlalchemy as sa  # noqa: E402

from benchmarks.shanghai import cim_env, database_url, mvt_paths  # noqa: E402
from benchmarks.tiles import Server, drive, fetch, free_port  # noqa: E402
from cim.database import engine_for  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ZOOM_SETS = ((14, 15, 16), (14,), (15,), (16,))


def _cpu_s(pid: int) -> float:
    """User + system CPU of one process, seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _group(pgid: int) -> list[int]:
    """The processes of a process group (the server and its workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid:
                out.append(int(entry))
    return out


class Work:
    """CPU seconds of a server's processes and of the database backends on its connections."""

    def __init__(self, server: Server, url: str, db_port: int) -> None:
        self.server, self.url, self.db_port = server, url, db_port

    def backends(self) -> list[int]:
        pids = set(_group(self.server.proc.pid))
        listing = subprocess.run(["ss", "-tnpH", "state", "established", f"dport = :{self.db_port}"],
                                 capture_output=True, text=True, check=True).stdout
        ports = [int(m.group(1)) for line in listing.splitlines() if any(f"pid={p}," in line for p in pids)
                 for m in [re.search(r"127\.0\.0\.1:(\d+)\s", line)] if m]
        if not ports:
            return []
        with engine_for(self.url).connect() as conn:
            return [int(p) for p in conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(:ports)"), {"ports": ports}).scalars()]

    def sample(self) -> tuple[float, dict[int, float]]:
        server = sum(_cpu_s(p) for p in _group(self.server.proc.pid))
        return server, {p: _cpu_s(p) for p in self.backends()}


def serve(cim: str, home: Path, url: str, workers: int) -> Server:
    port = free_port()
    root = Path(cim).resolve().parents[2]  # <checkout>/.venv/bin/cim
    # no tile kept, in memory or on disk: every request builds its tile (the list is cycled)
    env = {**cim_env(home), "CIM_DATABASE_URL": url, "CIM_TILE_MEMORY_MB": "0", "CIM_TILE_PERSIST_AFTER_S": "1e9"}
    return Server([cim, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                   "--no-access-log"], env, port, "/conformance", root, home / "serve.log")


def settle(work: Work, quiet_s: float = 0.3, longest_s: float = 10.0) -> None:
    """Wait until the server and its backends have used no CPU for ``quiet_s`` (at most ``longest_s``)."""
    deadline = time.monotonic() + longest_s
    last = work.sample()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = work.sample()
        if now[0] - last[0] < 0.01 and sum(now[1].values()) - sum(last[1].values()) < 0.01:
            return
        last = now


def run_once(server: Server, work: Work, paths: list[str], seconds: int) -> dict:
    s0, b0 = work.sample()
    result = drive(server.port, paths, 8, seconds, cycle=True)
    s1, b1 = work.sample()
    tiles = result["requests"]
    database = sum(b1[p] - b0.get(p, 0.0) for p in b1)  # a backend opened during the run started at 0
    return {"tiles_per_s": tiles / result["seconds"], "p50": result["p50_ms"], "p99": result["p99_ms"],
            "tiles": tiles, "kib": result["bytes"] / max(tiles, 1) / 1024,
            "server_ms": (s1 - s0) * 1000 / max(tiles, 1), "database_ms": database * 1000 / max(tiles, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="CIM_HOME of the loaded base (read only)")
    ap.add_argument("--before", required=True, help="the cim executable of the build to compare against")
    ap.add_argument("--after", required=True, help="the cim executable of the build under test")
    ap.add_argument("--layers", default="buildings,parts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1, help="cim serve --workers (both servers)")
    ap.add_argument("--tiles-per-zoom", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--results", type=Path, default=None, help="write the rounds as JSON here")
    args = ap.parse_args()

    url = database_url(args.home)
    db_port = int(re.search(r":(\d+)/", url).group(1))
    scratch = Path(tempfile.mkdtemp(prefix="mvt-bench-"))
    servers: dict[str, Server] = {}
    rows: list[dict] = []
    try:
        for name, cim in (("before", args.before), ("after", args.after)):
            home = scratch / name
            home.mkdir()
            servers[name] = serve(cim, home, url, args.workers)
        works = {n: Work(s, url, db_port) for n, s in servers.items()}
        for layer in args.layers.split(","):
            tilejson = json.loads(asyncio.run(fetch(servers["after"].port, [
                f"/collections/{layer}/tiles/WebMercatorQuad/tilejson.json"]))[0][1])
            template = "/" + tilejson["tiles"][0].split("/", 3)[3]
            used: set[str] = set()
            # each server's first tiles of a layer read what it keeps per layer version (the districts'
            # polygons, the layer's widest feature: a scan of the table): not part of a tile's cost
            first = mvt_paths(url, layer, template, 3, args.seed, zooms=(16,))
            used.update(first)
            for name in servers:
                asyncio.run(fetch(servers[name].port, first))
            for zooms in ZOOM_SETS:
                if len(zooms) == 1 and zooms[0] < tilejson["minzoom"]:
                    continue
                key = f"{layer} z{zooms[0]}" + (f"–{zooms[-1]}" if len(zooms) > 1 else "")
                # one list of tiles for every round of both servers, cycled: the servers keep no tile (see
                # serve()), so a tile asked again is built again, and z14 has only ~1,000 tiles over the city
                tiles = mvt_paths(url, layer, template, args.tiles_per_zoom, args.seed + zooms[0] * len(zooms),
                                  frozenset(used), zooms=zooms)
                for r in range(args.rounds):
                    # which server goes first alternates, so neither always finds the rows in the database's buffers
                    order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                    for name in order:
                        drive(servers[name].port, tiles[-200:], 8, 1, cycle=True)  # pools, PROJ, catalogs: warm
                        settle(works[name])  # the requests wrk left in flight are done before the count starts
                        m = run_once(servers[name], works[name], tiles, args.seconds)
                        rows.append({"layer": layer, "zooms": key, "round": r, "build": name, **m})
                        print(f"{key:22} round {r} {name:6} {m['tiles_per_s']:7.1f} tiles/s p50 {m['p50']:6.1f} "
                              f"p99 {m['p99']:6.1f} ms  {m['kib']:5.1f} KiB  CPU a tile: server "
                              f"{m['server_ms']:5.2f} ms, database {m['database_ms']:5.2f} ms", flush=True)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print("\nmedians over rounds:")
    keys = list(dict.fromkeys(r["zooms"] for r in rows))
    for key in keys:
        line = [key]
        for name in ("before", "after"):
            mine = [r for r in rows if r["zooms"] == key and r["build"] == name]
            med = {k: statistics.median(r[k] for r in mine) for k in
                   ("tiles_per_s", "p99", "kib", "server_ms", "database_ms")}
            line.append(f"{name}: {med['tiles_per_s']:.0f}/s p99 {med['p99']:.0f} ms {med['kib']:.1f} KiB "
                        f"CPU {med['server_ms']:.2f}+{med['database_ms']:.2f} ms")
        print(" | ".join(line))
    if args.results:
        args.results.write_text(json.dumps({"rows": rows, "workers": args.workers, "load": os.getloadavg(),
                                            "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))


if __name__ == "__main__":
    main()
