"""The API's fixed cost per request: grid lookup and ``/healthz`` on a loaded base, a baseline revision against
this checkout, side by side in one run (issue 15 item 4: grid lookup p99 ≤ 10 ms on the loaded Shanghai).

    .venv/bin/python benchmarks/api_cost.py --home /tmp/h15 --baseline main

Both servers (``cim serve``, one worker each) read the same database (the cluster under ``--home``, or
``--database-url``); the baseline runs from a ``git archive`` of ``--baseline`` (a revision of this repository)
with this checkout's virtualenv. Nothing is written to the database. Measured:

* latency, one request at a time over one keep-alive connection (p50/p95/p99), in blocks that alternate
  between the two servers so that both see the same noise of a shared machine;
* throughput at ``--concurrency`` connections (requests/s), alternating too;
* the server process's CPU time per request (user + system from /proc, over the serial blocks);
* database round trips per request, counted exactly: each revision's app is driven in a process of its own,
  in-process (ASGI, no socket), through a small TCP proxy in front of PostgreSQL that counts the frontend's
  Query and Sync messages (each waits for the server's answer: one round trip each); with one pooled
  connection, so that its backend's CPU time (/proc, same machine) is the database's share of a request.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CIM_MODULE = "from cim.cli.main import run; import sys; sys.argv[0] = 'cim'; sys.exit(run())"


# --- a counting proxy in front of PostgreSQL -------------------------------------------------------------

class CountingProxy:
    """Forwards TCP to PostgreSQL and counts the round trips clients start: simple-protocol Query ('Q') and
    extended-protocol Sync ('S') messages. Clients must not use TLS (``sslmode=disable``)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.round_trips = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.ensure_future(downstream())
        try:
            (length,) = struct.unpack("!I", await reader.readexactly(4))  # the startup message: no type byte
            up_writer.write(struct.pack("!I", length) + await reader.readexactly(length - 4))
            while True:
                head = await reader.readexactly(5)
                kind, length = head[:1], struct.unpack("!I", head[1:])[0]
                if kind in (b"Q", b"S"):
                    self.round_trips += 1
                up_writer.write(head + await reader.readexactly(length - 4))
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            task.cancel()


def count_round_trips(url: str, n: int, points: list[tuple[float, float]]) -> dict[str, Any]:
    """Round trips and in-process CPU per request of the app importable here (this process's sys.path)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    proxy = CountingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    proxied = urlunsplit(parts._replace(netloc=netloc, query="sslmode=disable&gssencmode=disable"))
    os.environ["CIM_DATABASE_URL"] = proxied
    from api.app import create_app
    from cim.database import engine_for

    app = create_app(engine_for(proxied))
    # one pooled connection (CIM_DB_POOL_SIZE=1, set by the caller): its backend's CPU is the database's share
    with app.state.cim.engine.connect() as conn:
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()

    def backend_cpu_s() -> float:
        try:
            fields = Path(f"/proc/{backend}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # a database on another machine
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def call(path: str, query: str) -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                 "root_path": ""}
        status = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        return status[0]

    async def measure() -> dict[str, Any]:
        out = {}
        async with app.router.lifespan_context(app):
            for name, path in (("grid lookup", "/grid/lookup"), ("healthz", "/healthz")):
                queries = [f"lon={a:.6f}&lat={b:.6f}" if name == "grid lookup" else "" for a, b in points]
                for q in queries[:20]:  # pools, caches, prepared statements
                    await call(path, q)
                timed = queries[20:20 + n]
                before, cpu, db_cpu = proxy.round_trips, time.process_time(), backend_cpu_s()
                statuses = [await call(path, q) for q in timed]
                k = len(timed)
                out[name] = {"n": k, "round_trips": (proxy.round_trips - before) / k,
                             "cpu_ms": round((time.process_time() - cpu) / k * 1000, 3),
                             "db_cpu_ms": round((backend_cpu_s() - db_cpu) / k * 1000, 3),
                             "non_200": sum(s != 200 for s in statuses)}
        return out

    return asyncio.run(measure())


# --- servers and HTTP ------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, tree: Path, url: str, home: Path) -> None:
        self.name, self.port = name, free_port()
        env = {**os.environ, "CIM_HOME": str(home), "CIM_DATABASE_URL": url, "PYTHONPATH": str(tree)}
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "serve.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", CIM_MODULE, "serve", "--port", str(self.port),
                                          "--no-access-log"], env=env, cwd=tree, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} server exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"{name} server did not start:\n{self.log.read_text()[-3000:]}")

    def get(self, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def serial(server: Server, paths: list[str]) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    latencies, errors = [], 0
    for path in paths:
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        errors += response.status != 200
    conn.close()
    return latencies, errors


def concurrent(server: Server, paths: list[str], concurrency: int) -> tuple[float, int]:
    """Requests per second over ``concurrency`` keep-alive connections."""
    queue = list(paths)
    errors = [0]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while queue:
            try:
                path = queue.pop()
            except IndexError:
                return
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            errors[0] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(paths) / (time.perf_counter() - started), errors[0]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 2)


# --- the run ---------------------------------------------------------------------------------------------

def database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return args.database_url
    done = subprocess.run([sys.executable, "-c", CIM_MODULE, "db", "url"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "CIM_HOME": str(args.home)})
    if done.returncode:
        raise SystemExit(f"cim db url failed for {args.home}:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def points(url: str, n: int, seed: int) -> list[tuple[float, float]]:
    from benchmarks.shanghai import places

    return places(url, n, seed, [])


def baseline_tree(rev: str, into: Path) -> Path:
    tree = into / "baseline"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    if (ROOT / "node_modules").exists():
        (tree / "node_modules").symlink_to(ROOT / "node_modules")
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/h15"), help="CIM_HOME of the loaded base")
    parser.add_argument("--database-url", default=None, help="the base's URL instead of --home's cluster")
    parser.add_argument("--baseline", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks per server")
    parser.add_argument("--block", type=int, default=100, help="serial requests per block")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here too")
    args = parser.parse_args()

    url = database_url(args)
    work = Path(tempfile.mkdtemp(prefix="cim-api-cost-"))
    trees = {"baseline": baseline_tree(args.baseline, work), "this": ROOT}
    pts = points(url, args.rounds * args.block + 200, args.seed)
    out: dict[str, Any] = {"revision": args.baseline, "load_average": []}

    # round trips and in-process CPU, each revision in a process of its own
    for name, tree in trees.items():
        # this file loaded by its path, so that `api` and `cim` come from the tree's PYTHONPATH
        code = ("import importlib.util, json; spec = importlib.util.spec_from_file_location('api_cost', %r); "
                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                "print(json.dumps(m.count_round_trips(%r, %d, %r)))" % (__file__, url, 300, pts[:320]))
        done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(tree), "CIM_HOME": str(work / f"rt-{name}"),
                                   "CIM_DB_POOL_SIZE": "1"})
        if done.returncode:
            raise SystemExit(f"round trips of {name} failed:\n{done.stderr[-3000:]}")
        out.setdefault(name, {})["in_process"] = json.loads(done.stdout.strip().splitlines()[-1])

    servers = {name: Server(name, tree, url, work / f"home-{name}") for name, tree in trees.items()}
    try:
        grid = [f"/grid/lookup?lon={a:.6f}&lat={b:.6f}" for a, b in pts]
        for s in servers.values():  # warm: pools, prepared statements, caches
            serial(s, grid[-200:])
            serial(s, ["/healthz"] * 50)
        for what, paths in (("grid lookup", grid), ("healthz", ["/healthz"] * len(grid))):
            lat: dict[str, list[float]] = {n: [] for n in servers}
            cpu: dict[str, float] = {n: 0.0 for n in servers}
            errors: dict[str, int] = {n: 0 for n in servers}
            rps: dict[str, list[float]] = {n: [] for n in servers}
            order = list(servers)
            for r in range(args.rounds):
                block = paths[r * args.block:(r + 1) * args.block]
                for name in order:
                    s = servers[name]
                    before = s.cpu_s()
                    got, bad = serial(s, block)
                    cpu[name] += s.cpu_s() - before
                    lat[name] += got
                    errors[name] += bad
                    per_s, bad = concurrent(s, list(reversed(block)) * 2, args.concurrency)
                    rps[name].append(per_s)
                    errors[name] += bad
                order.reverse()  # who goes first alternates too
                out["load_average"].append(os.getloadavg()[0])
            for name in servers:
                out.setdefault(name, {})[what] = {
                    "n": len(lat[name]), "p50": pct(lat[name], 50), "p95": pct(lat[name], 95),
                    "p99": pct(lat[name], 99), "rps": round(float(np.median(rps[name])), 1),
                    "cpu_ms": round(cpu[name] / len(lat[name]) * 1000, 2), "errors": errors[name]}
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    print()
    print(f"| | {args.baseline} | this branch | ratio |")
    print("|---|---:|---:|---:|")
    for what in ("grid lookup", "healthz"):
        for key, label in (("p50", "p50 ms"), ("p95", "p95 ms"), ("p99", "p99 ms"),
                           ("rps", f"req/s at {args.concurrency} connections"), ("cpu_ms", "server CPU ms/request")):
            a, b = out["baseline"][what][key], out["this"][what][key]
            print(f"| {what}: {label} | {a} | {b} | {b / a:.2f}× |" if a else f"| {what}: {label} | {a} | {b} | |")
        for key, label in (("round_trips", "database round trips/request"), ("cpu_ms", "in-process CPU ms/request"),
                           ("db_cpu_ms", "database backend CPU ms/request")):
            a, b = out["baseline"]["in_process"][what][key], out["this"]["in_process"][what][key]
            print(f"| {what}: {label} | {a:g} | {b:g} | {b / a:.2f}× |")
    print(f"\nload average during the run: {min(out['load_average']):.1f}–{max(out['load_average']):.1f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
