"""Benchmark of row-level security on the hot path (issue 12): `GET /collections/buildings/items?bbox=…` at
32 connections with a street-scoped key against the same requests without a key (public reading: every
row), on the same server and data.

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up`, with CIM_HOME set). Creates
a scratch database (dropped at the end unless --keep), runs `cim init` and `cim samples load`, makes a viewer
of the street with most buildings and a key for it, starts `cim serve` (1 worker) and sends --requests GETs
of boxes around that street's buildings (limit 100) from 32 client threads, each on its own keep-alive
connection, alternating the two callers for --rounds rounds (a warm-up first). Both callers pay the one
statement that opens each transaction in its scope; the street caller's rows also pass the policy.

Prints a Markdown section for docs/benchmarks.md. Target of the issue: street-scoped ≥ 90 % of unscoped.
"""
from __future__ import annotations

import argparse
import http.client
import queue
import random
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.cases_api import WORK, serve  # noqa: E402
from benchmarks.scratch import machine, sample_city  # noqa: E402
from cim.apikeys import create_key  # noqa: E402
from cim.database import engine_for  # noqa: E402
from cim.users import create_user  # noqa: E402


def get_all(port: int, headers: dict[str, str], paths: list[str], concurrency: int) -> tuple[float, list[float], list[int], int]:
    """(wall seconds, latencies, statuses, features returned) for ``paths`` over ``concurrency`` connections."""
    todo: queue.Queue = queue.Queue()
    for p in paths:
        todo.put(p)
    latencies: list[float] = []
    statuses: list[int] = []
    returned = [0]
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses.append(response.status)
                returned[0] += body.count(b'"Feature"')
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, statuses, returned[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    with sample_city("rlsbench", args.keep) as url:
        engine = engine_for(url)
        with engine.begin() as conn:
            about = machine(conn)
            street, n_street = conn.execute(sa.text(
                "SELECT street_code, count(*) FROM buildings WHERE valid_to IS NULL AND street_code IS NOT NULL "
                "GROUP BY 1 ORDER BY 2 DESC LIMIT 1")).one()
            n_all = conn.execute(sa.text("SELECT count(*) FROM buildings WHERE valid_to IS NULL")).scalar()
            points = conn.execute(sa.text(
                "SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_Centroid(ST_Force2D(geom)), 4326) AS p "
                "FROM buildings WHERE valid_to IS NULL AND street_code = :s) q"), {"s": street}).all()
            user = create_user(conn, "bench-street", "viewer", street=street)
            key = create_key(conn, user=user)[1]
        engine.dispose()
        rng = random.Random(args.seed)
        half = 0.004  # degrees: a box of ~800 m, a viewer's screen over a street

        def paths(n: int) -> list[str]:
            out = []
            for _ in range(n):
                lon, lat = rng.choice(points)
                out.append(f"/collections/buildings/items?limit=100&bbox={lon - half:.5f},{lat - half:.5f},"
                           f"{lon + half:.5f},{lat + half:.5f}")
            return out

        callers = {"unscoped (no key: public, every row)": {}, f"street-scoped key ({street})": {"X-API-Key": key}}
        server, port = serve(url)
        results: dict[str, list[tuple[float, list[float], list[int], int]]] = {c: [] for c in callers}
        try:
            for headers in callers.values():
                get_all(port, headers, paths(300), args.concurrency)  # warm-up: pools, caches, plans
            for i in range(args.rounds):
                batch = paths(args.requests)
                # ABBA: the order alternates, so a drift in the shared machine's load falls on both alike
                for caller, headers in (list(callers.items()) if i % 2 == 0 else list(callers.items())[::-1]):
                    results[caller].append(get_all(port, headers, batch, args.concurrency))
        finally:
            server.terminate()
            server.wait(30)
        print(f"## Row-level security: items by bbox, street-scoped vs unscoped (issue 12)\n\n**Machine:** {about}. "
              f"**Date:** {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Other processes shared the cores. "
              f"`cim serve`, 1 worker; the sample city ({n_all:,} buildings, {n_street:,} in street {street}); "
              f"{args.rounds} rounds × {args.requests:,} requests per caller, the same boxes for both, "
              f"{args.concurrency} connections.\n")
        print("| caller | req/s (all rounds) | req/s (best round) | p50 / p99 ms | features per answer | "
              "answers 200 |\n|---|---:|---:|---:|---:|---:|")
        rates = {}
        for caller, runs in results.items():
            rps = [len(r[1]) / r[0] for r in runs]
            lat = np.concatenate([np.array(r[1]) for r in runs]) * 1000
            ok = sum(sum(1 for s in r[2] if s == 200) for r in runs)
            total = sum(len(r[2]) for r in runs)
            feats = sum(r[3] for r in runs) / total
            rates[caller] = total / sum(r[0] for r in runs)
            print(f"| {caller} | {rates[caller]:,.0f} | {max(rps):,.0f} | {np.percentile(lat, 50):.1f} / "
                  f"{np.percentile(lat, 99):.1f} | {feats:.1f} | {ok:,} of {total:,} |")
        unscoped, scoped = rates.values()
        print(f"\n**Ratio** (all rounds): street-scoped / unscoped = **{scoped / unscoped:.2f}** (target ≥ 0.90).")


if __name__ == "__main__":
    main()
