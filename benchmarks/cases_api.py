"""Benchmark of the case loop's intake over HTTP (issue 11; `benchmarks/cases.py` measures the import and
the indicators): `cim cases import` (cases/s) and `POST /cases` at 32
connections (req/s, p50/p99) on the sample city — each report geocoded, put in its grid and dispatched by
machine, in its own transaction (import: in chunks of 500).

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up`, with CIM_HOME set). Creates
a scratch database (dropped at the end unless --keep), runs `cim init` and `cim samples load`, then:

1. writes a CSV of --import-rows hotline reports (address texts of the sample's doors, everyday 小类,
   4 % unplaceable) and times `cim cases import` on it, end to end (process start included);
2. starts `cim serve` (1 worker) on a loopback port and sends --requests JSON reports from 32 client
   threads (a warm-up of 200 first), each on its own keep-alive connection.

Prints a Markdown section for docs/benchmarks.md. Targets of the issue: import ≥ 5,000 cases/s;
POST /cases ≥ 500 cases/s with p99 ≤ 50 ms at 32 connections.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.scratch import CIM, machine, run_cim, sample_city  # noqa: E402
from cim.apikeys import create_key  # noqa: E402
from cim.database import engine_for  # noqa: E402

WORK = ROOT / "benchmarks" / "work"
CLASSES = ("暴露垃圾", "道路破损", "占道堆物", "店外经营", "道路积水", "违法搭建", "群租", "井盖缺失")
UNPLACEABLE = ("老西门附近", "小区门口", "火星路1号")


def reports(doors: list[str], n: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = rng.choice(UNPLACEABLE) if rng.random() < 0.04 else rng.choice(doors) + rng.choice(("", "附近"))
        out.append({"channel": "hotline_12345", "class": rng.choice(CLASSES), "address": text,
                    "description": "市民来电", "external_id": f"{prefix}-{i}"})
    return out


def post_all(port: int, key: str, bodies: list[dict | None], concurrency: int,
             path: str = "/cases") -> tuple[float, list[float], list[int]]:
    """Each body POSTed to ``path`` (None: a GET of it) by ``concurrency`` threads, each on its own
    keep-alive connection; (wall seconds, latencies, statuses)."""
    todo: queue.Queue = queue.Queue()
    for b in bodies:
        todo.put(None if b is None else json.dumps(b, ensure_ascii=False).encode())
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": "application/json", "X-API-Key": key}
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            if body is None:
                conn.request("GET", path, headers=headers)
            else:
                conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses.append(response.status)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, statuses


def serve(url: str, workers: int = 1) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (WORK / "cases_serve.log").open("w")
    server = subprocess.Popen([CIM, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                              env={**os.environ, "CIM_DATABASE_URL": url,
                                   "CIM_CASE_ATTACHMENTS": str(WORK / "case-photos")},
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return server, port
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"cim serve did not come up; see {WORK / 'cases_serve.log'}")
        time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import-rows", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="`cim serve --workers` values to measure, one server each")
    parser.add_argument("--skip-import", action="store_true", help="only POST /cases (and the floor)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    with sample_city("casesbench", args.keep) as url:
        engine = engine_for(url)
        with engine.begin() as conn:
            about = machine(conn)
            doors = [r[0] for r in conn.execute(sa.text(
                "SELECT road || door_number || '号' FROM addresses WHERE valid_to IS NULL AND road IS NOT NULL "
                "AND door_number IS NOT NULL AND grid_code IS NOT NULL ORDER BY 1"))]
            key = create_key(conn, "reader", "benchmark")[1]

        # 1. cim cases import
        import_s = out = None
        rows = reports(doors, args.import_rows, args.seed, "IMP")
        if not args.skip_import:
            csv_path = WORK / "cases_import.csv"
            with csv_path.open("w", encoding="utf-8") as fh:
                fh.write("channel,class,address,description,external_id\n")
                fh.writelines(f"{r['channel']},{r['class']},{r['address']},{r['description']},{r['external_id']}\n"
                              for r in rows)
            started = time.perf_counter()
            out = run_cim(url, "cases", "import", str(csv_path))
            import_s = time.perf_counter() - started

        # 2. POST /cases at 32 connections, per worker count; and the floor: GET /healthz (no database,
        #    no work) with the same client on the same server
        results = []
        for n, workers in enumerate(args.workers):
            server, port = serve(url, workers)
            try:
                post_all(port, key, reports(doors, 200, args.seed + 1, f"WARM{n}"), args.concurrency)
                load = os.getloadavg()[0]
                wall, latencies, statuses = post_all(port, key, reports(doors, args.requests, args.seed + 2, f"POST{n}"),
                                                     args.concurrency)
                floor_wall, floor_lat, _ = post_all(port, key, [None] * args.requests, args.concurrency, "/healthz")
                load_after = os.getloadavg()[0]
            finally:
                server.terminate()
                server.wait(30)
            results.append((workers, wall, np.array(latencies) * 1000, statuses, floor_wall,
                            np.array(floor_lat) * 1000, load, load_after))
        with engine.connect() as conn:
            share = conn.execute(sa.text(
                "SELECT count(*) FILTER (WHERE status = 'dispatched')::float / nullif(count(*) FILTER "
                "(WHERE manual_reason IS NULL OR status = 'dispatched'), 0), count(*) FILTER (WHERE manual_reason "
                "IS NOT NULL AND status <> 'dispatched') FROM cases")).one()
        engine.dispose()
        print(f"## Case intake (issue 11)\n\n**Machine:** {about}. **Date:** "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Other processes shared the cores.\n")
        print("| measurement | result | target |\n|---|---:|---:|")
        if import_s is not None:
            print(f"| `cim cases import` of {len(rows):,} hotline rows (end to end) | {len(rows) / import_s:,.0f} "
                  f"cases/s ({import_s:.1f} s) | ≥ 5,000 |")
        for workers, wall, lat, statuses, floor_wall, floor_lat, load, load_after in results:
            ok = sum(1 for s in statuses if s in (200, 201))
            print(f"| `POST /cases`, {args.concurrency} connections, {len(lat):,} requests, {workers} worker(s) | "
                  f"{len(lat) / wall:,.0f} cases/s (load {load:.1f} → {load_after:.1f}) | ≥ 500 |")
            print(f"| … latency p50 / p99 | {np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} ms "
                  f"| p99 ≤ 50 ms |")
            print(f"| … answers 200/201 | {ok:,} of {len(statuses):,} | all |")
            print(f"| floor: `GET /healthz`, same client and server | {len(floor_lat) / floor_wall:,.0f} req/s, p50 / p99 "
                  f"{np.percentile(floor_lat, 50):.1f} / {np.percentile(floor_lat, 99):.1f} ms | |")
        print(f"| machine-dispatched share of the located cases | {share[0]:.1%} ({share[1]:,} in the manual queue) "
              f"| ≥ 95 % |")
        if out:
            print(f"\n`cim cases import` said: {out.strip()[:300]}")


if __name__ == "__main__":
    main()
