"""What makes the slowest 1 % of an API request (issue 15 item 4: grid lookup p99 ≤ 10 ms, ``/nearby`` 3D p99 ≤ 20 ms):
each request timed in parts, inside the server and at the client, and the slowest 1 % compared with the median.

    .venv/bin/python benchmarks/api_tail.py --home /tmp/h15 --query grid --variants plain,frozen

Each variant is a ``cim serve``-like process (uvicorn, one worker, this checkout or ``--tree``) over the same base,
started through a small wrapper that times, per request and without changing the app: the whole ASGI call, the
route handler, each database statement (cursor events), pool checkout, Python's garbage collections during the
request (``gc.callbacks``, by generation), the response's serialisation, and the process's CPU time. The variants
take turns in blocks over the same places (``benchmarks/shanghai.py``'s), one request at a time over one keep-alive
connection; the client's wall time minus the server's ASGI time is HTTP, uvicorn and waiting for a core. The
database backends' CPU per request comes from /proc (the server's connections carry an application_name).
Nothing is written to the base.

Variants: ``plain`` (the app as ``cim serve`` runs it before this change: no ``gc.freeze()``), ``served`` (as
``api.asgi`` runs it now), ``frozen`` (``gc.freeze()`` after start-up; what ``api.asgi`` does),
``threshold`` (frozen, and gen0 threshold 10,000).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The server side: run in the variant's process. It wraps the app and the engine from outside (events and a
# wrapper around the ASGI callable), so the code measured is the code served.
SERVER = r'''
import gc, json, os, sys, threading, time
variant = os.environ["TAIL_VARIANT"]
import sqlalchemy as sa
from sqlalchemy import event

records = []
current = threading.local()
state = {"req": None}
gc_start = [0.0]

def on_gc(phase, info):
    if phase == "start":
        gc_start[0] = time.perf_counter()
    else:
        r = state["req"]
        if r is not None:
            r["gc_ms"] += (time.perf_counter() - gc_start[0]) * 1e3
            r["gc_gen%d" % info["generation"]] += 1
gc.callbacks.append(on_gc)

if variant == "plain":  # the app without api.asgi's start-up
    import api.app
    app = api.app.create_app()
else:
    import api.asgi  # what `cim serve` runs (gc.freeze() after start-up, if api.asgi does it)
    app = api.asgi.app
if variant == "frozen":
    gc.freeze()
if variant == "threshold":
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)

engine = app.state.cim.engine

@event.listens_for(engine, "before_cursor_execute")
def _before(conn, cursor, statement, parameters, context, executemany):
    conn.info["t0"] = time.perf_counter()

@event.listens_for(engine, "after_cursor_execute")
def _after(conn, cursor, statement, parameters, context, executemany):
    r = state["req"]
    if r is not None:
        r["db_ms"] += (time.perf_counter() - conn.info.pop("t0")) * 1e3
        r["statements"] += 1

import api.grid, api.nearby, api.responses
orig_answer = api.grid._answer
def timed_answer(*a, **k):
    t = time.perf_counter()
    try:
        return orig_answer(*a, **k)
    finally:
        state["req"]["handler_ms"] += (time.perf_counter() - t) * 1e3
api.grid._answer = timed_answer
orig_nearby = api.nearby.nearby
def timed_nearby(*a, **k):
    t = time.perf_counter()
    try:
        return orig_nearby(*a, **k)
    finally:
        state["req"]["handler_ms"] += (time.perf_counter() - t) * 1e3
api.nearby.nearby = timed_nearby
orig_connect = engine.connect
def timed_connect(*a, **k):
    t = time.perf_counter()
    try:
        return orig_connect(*a, **k)
    finally:
        if state["req"] is not None:
            state["req"]["checkout_ms"] += (time.perf_counter() - t) * 1e3
engine.connect = timed_connect
for cls in {api.responses.OrjsonResponse, api.responses.GeoJsonResponse}:
    orig_render = cls.render
    def render(self, content, _orig=orig_render):
        t = time.perf_counter()
        try:
            return _orig(self, content)
        finally:
            if state["req"] is not None:
                state["req"]["render_ms"] += (time.perf_counter() - t) * 1e3
    cls.render = render

import fastapi.routing
_run_in_threadpool = fastapi.routing.run_in_threadpool

async def timed_run_in_threadpool(func, *args, **kwargs):
    # the route function's own time in its worker thread, and the hop there and back (waiting for the thread
    # and then for the event loop: on a busy machine each is a wake-up that may wait for a core)
    inside = [0.0]
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return func(*a, **k)
        finally:
            inside[0] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        return await _run_in_threadpool(timed, *args, **kwargs)
    finally:
        r = state["req"]
        if r is not None:
            r["route_ms"] += inside[0] * 1e3
            r["hop_ms"] += (time.perf_counter() - t - inside[0]) * 1e3
fastapi.routing.run_in_threadpool = timed_run_in_threadpool

async def wrapper(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/__tail":
        body = json.dumps(records).encode()
        records.clear()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] != "http":
        return await app(scope, receive, send)
    r = {"gc_ms": 0.0, "gc_gen0": 0, "gc_gen1": 0, "gc_gen2": 0, "db_ms": 0.0, "statements": 0, "handler_ms": 0.0,
         "checkout_ms": 0.0, "render_ms": 0.0, "route_ms": 0.0, "hop_ms": 0.0}
    state["req"] = r
    t, c = time.perf_counter(), time.process_time()
    try:
        return await app(scope, receive, send)
    finally:
        r["asgi_ms"] = (time.perf_counter() - t) * 1e3
        r["cpu_ms"] = (time.process_time() - c) * 1e3
        state["req"] = None
        records.append(r)

import uvicorn
uvicorn.run(wrapper, host="127.0.0.1", port=int(os.environ["TAIL_PORT"]), log_level="warning", access_log=False,
            timeout_keep_alive=600)  # the client keeps one connection while the other variants take their turns
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(home: Path) -> str:
    info = json.loads((home / "cluster.json").read_text())
    return (f"postgresql+psycopg2://cim:{info['password']}@127.0.0.1:{info['port']}/cim"
            "?sslmode=disable&application_name={app}")


class Server:
    def __init__(self, variant: str, tree: Path, url: str, port: int, home: Path) -> None:
        self.variant, self.port = variant, port
        self.app_name = f"tail-{variant}-{port}"
        env = {**os.environ, "TAIL_VARIANT": variant, "TAIL_PORT": str(port), "PYTHONPATH": str(tree),
               "CIM_HOME": str(home), "CIM_DATABASE_URL": url.format(app=self.app_name)}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=tree, env=env)
        for _ in range(600):
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                self.conn.request("GET", "/healthz")
                self.conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"{variant}: the server did not start")

    def get(self, path: str) -> tuple[float, int, bytes]:
        t = time.perf_counter()
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        body = resp.read()
        return (time.perf_counter() - t) * 1e3, resp.status, body

    def records(self) -> list[dict[str, Any]]:
        self.conn.request("GET", "/__tail")
        return json.loads(self.conn.getresponse().read())

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def backend_cpu_s(url: str, app_name: str) -> float:
    """CPU seconds of the database backends serving ``app_name`` (this machine's /proc)."""
    import sqlalchemy as sa
    engine = sa.create_engine(url.format(app="tail-probe"))
    with engine.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"),
                            {"a": app_name}).scalars().all()
    engine.dispose()
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


PARTS = ("client_ms", "asgi_ms", "outside_ms", "hop_ms", "route_ms", "handler_ms", "db_ms", "checkout_ms", "render_ms", "gc_ms", "cpu_ms",
         "statements", "gc_gen0", "gc_gen1", "gc_gen2")


def breakdown(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 of each part over all requests, and the mean of each part over the slowest 1 % (by client time)."""
    slow = sorted(rows, key=lambda r: r["client_ms"])[-max(1, len(rows) // 100):]
    return {"n": len(rows),
            "p50": {k: round(pct([r[k] for r in rows], 50), 3) for k in PARTS},
            "p95_client": round(pct([r["client_ms"] for r in rows], 95), 2),
            "p99_client": round(pct([r["client_ms"] for r in rows], 99), 2),
            "slowest_1pct_mean": {k: round(sum(r[k] for r in slow) / len(slow), 3) for k in PARTS},
            "gc_gen2_share_of_slowest": round(sum(1 for r in slow if r["gc_gen2"]) / len(slow), 2),
            "gc_gen2_requests": sum(1 for r in rows if r["gc_gen2"])}


def _node_times(node: dict[str, Any], out: dict[str, float]) -> None:
    """Actual total ms of the CTE scans by name (hits, chains), the statement's two halves."""
    if node.get("Node Type") == "CTE Scan":
        out[node["CTE Name"]] = out.get(node["CTE Name"], 0.0) + node["Actual Total Time"] * node.get("Actual Loops", 1)
    for child in node.get("Plans", []):
        _node_times(child, out)


def explain_grid(url: str, paths: list[str], repeat: int) -> dict[str, Any]:
    """The grid lookup's prepared statement as the API runs it (role cim_api, the public scope, a generic plan),
    EXPLAIN (ANALYZE, BUFFERS) at every place ``repeat`` times in a row: execution ms and buffers read from
    outside shared buffers, p50 and the slowest 1 %, and whether a slow first run is fast the second time."""
    import sqlalchemy as sa
    from urllib.parse import parse_qs, urlsplit

    from cim.bootstrap import stored_settings
    from cim.grid import PREPARED_NAME, _PREPARE_SQL, _float_array
    from cim.jurisdiction import PUBLIC, _set_statement
    from cim.spatial import to_storage
    import numpy as np

    engine = sa.create_engine(url.format(app="tail-explain"))
    runs: list[list[dict[str, float]]] = []
    with engine.connect() as conn:
        srid = stored_settings(conn).srid
        conn.exec_driver_sql(_PREPARE_SQL)
        conn.commit()
        scope_sql, scope_params = _set_statement(PUBLIC)
        for path in paths:
            q = parse_qs(urlsplit(path).query)
            sx, sy = to_storage([float(q["lon"][0])], [float(q["lat"][0])], "EPSG:4326", srid)
            fin = np.isfinite(sx) & np.isfinite(sy)
            params = {"xs": _float_array(sx, fin), "ys": _float_array(sy, fin), "srid": srid}
            tries = []
            for _ in range(repeat):
                conn.exec_driver_sql(scope_sql, scope_params)
                conn.exec_driver_sql("SET LOCAL jit = off")
                conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
                plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {PREPARED_NAME}"
                                            "(%(xs)s, %(ys)s, %(srid)s)", params).scalar()[0]
                conn.rollback()
                ctes: dict[str, float] = {}
                _node_times(plan["Plan"], ctes)
                tries.append({"exec_ms": plan["Execution Time"], "plan_ms": plan.get("Planning Time", 0.0),
                              "read": plan["Plan"].get("Shared Read Blocks", 0),
                              "hit": plan["Plan"].get("Shared Hit Blocks", 0),
                              "hits_cte_ms": ctes.get("hits", 0.0), "chains_cte_ms": ctes.get("chains", 0.0)})
            runs.append(tries)
    engine.dispose()
    firsts = [t[0] for t in runs]
    slow = sorted(range(len(runs)), key=lambda i: firsts[i]["exec_ms"])[-max(1, len(runs) // 100):]
    out: dict[str, Any] = {"n": len(runs)}
    for label, idx in (("all", range(len(runs))), ("slowest_1pct_of_first_runs", slow)):
        for k in range(repeat):
            rows = [runs[i][k] for i in idx]
            out[f"{label}_run{k + 1}"] = {f: {"p50": round(pct([r[f] for r in rows], 50), 3),
                                              "p99": round(pct([r[f] for r in rows], 99), 3),
                                              "mean": round(sum(r[f] for r in rows) / len(rows), 3)}
                                          for f in rows[0]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/h15"))
    parser.add_argument("--query", default="grid", help="grid, nearby-parts or nearby-pipelines")
    parser.add_argument("--variants", default="before,after",
                        help="names of the servers; plain/frozen/threshold start the app so (see above), any "
                             "other name as api.asgi does (give its checkout in --trees)")
    parser.add_argument("--trees", default="", help="per variant, the checkout to run (default: this one), "
                                                     "comma-separated in the order of --variants")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1, help="passes over the places")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--explain", type=int, default=0, help="instead of serving: EXPLAIN ANALYZE the grid "
                                                               "lookup's statement at each place this many times")
    args = parser.parse_args()
    from benchmarks.shanghai import query_paths

    url = database_url(args.home)
    paths = query_paths(url.format(app="tail-places"), args.n, args.seed, [])
    key = {"grid": "grid lookup", "nearby-parts": "nearby k=10 3D (parts)",
           "nearby-pipelines": "nearby k=10 3D (pipelines, z below ground)"}[args.query]
    chosen = paths[key]
    if args.explain:
        out = explain_grid(url, chosen, args.explain)
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return
    variants = args.variants.split(",")
    trees = [Path(t) for t in args.trees.split(",")] if args.trees else [ROOT] * len(variants)
    work = Path(tempfile.mkdtemp(prefix="api-tail-"))  # an empty CIM_HOME: the database is CIM_DATABASE_URL
    servers = [Server(v, t, url, free_port(), work) for v, t in zip(variants, trees)]
    try:
        for s in servers:  # warm: each pooled connection prepares and plans once
            for p in chosen[:50]:
                s.get(p)
            s.records()
        bodies: dict[str, dict[str, bytes]] = {s.variant: {} for s in servers}
        rows: dict[str, list[dict[str, Any]]] = {s.variant: [] for s in servers}
        cpu = {s.variant: 0.0 for s in servers}
        unavailable = {s.variant: 0 for s in servers}
        db_cpu = {s.variant: 0.0 for s in servers}
        for rnd in range(args.rounds):
            for start in range(0, len(chosen), args.block):
                block = chosen[start:start + args.block]
                order = servers if (start // args.block + rnd) % 2 == 0 else servers[::-1]
                for s in order:
                    c0, d0 = s.cpu_s(), backend_cpu_s(url, s.app_name)
                    client = []
                    for p in block:
                        ms, status, body = s.get(p)
                        if status not in (200, 503):
                            raise SystemExit(f"{s.variant}: {p}: HTTP {status}")
                        client.append(ms if status == 200 else -1.0)  # 503: a lock held (maintenance), left out
                        if status == 200:
                            bodies[s.variant][p] = body
                    cpu[s.variant] += s.cpu_s() - c0
                    db_cpu[s.variant] += backend_cpu_s(url, s.app_name) - d0
                    recs = s.records()
                    assert len(recs) == len(client), (len(recs), len(client))
                    for r, ms in zip(recs, client):
                        if ms < 0:
                            unavailable[s.variant] += 1
                            continue
                        r["client_ms"] = ms
                        r["outside_ms"] = ms - r["asgi_ms"]
                        rows[s.variant].append(r)
        first = bodies[servers[0].variant]
        out = {"query": key, "n": args.n, "rounds": args.rounds, "load_average": os.getloadavg(),
               # the answers must not change: bytes compared with the first variant's, place by place
               "answers_differing": {s.variant: sum(1 for p, b in bodies[s.variant].items()
                                         if first.get(p) not in (None, b))
                                     for s in servers[1:]},
               "unavailable_503": unavailable, "variants": {}}
        for s in servers:
            b = breakdown(rows[s.variant])
            b["server_cpu_ms_per_request"] = round(cpu[s.variant] * 1e3 / len(rows[s.variant]), 3)
            b["db_cpu_ms_per_request"] = round(db_cpu[s.variant] * 1e3 / len(rows[s.variant]), 3)
            out["variants"][s.variant] = b
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    random.seed(0)
    main()
