"""One node vs a Citus coordinator + 2 workers on this machine (issue 15, item 5): the same load and the same
queries on both, and the per-shard figures the 3-machine plan in docs/citus.md is sized from.

Data: 16 districts with Shanghai's real codes laid out as a 4 x 4 grid of rectangles over the city extent
(each ~1/16 of it), and N parts (default 300,000) at random positions and depths, deterministic from a seed,
loaded through the real `cim ingest`. Queries go through the real API (in-process TestClient): items by bbox
(limit 100), grid lookup (reference tables only) and /nearby k=10 in 3D, plus one district-scoped count. Items
and /nearby run twice, back to back: as the queries named no district (CIM_DISTRICT_PRUNING=false: every shard)
and naming the districts their area touches (cim.districts_index: the shards of those districts only); the
Citus EXPLAIN of one bbox query says how many shard tasks each form runs.

    .venv/bin/python benchmarks/citus.py [--parts 300000] [--queries 200] [--no-reload] [--keep]

Prints one JSON document; docs/benchmarks.md holds the numbers of a run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scratch import machine  # noqa: E402
from cim.citus import CitusCluster  # noqa: E402
from cim.cluster import Cluster  # noqa: E402
from cim.config import override_settings  # noqa: E402
from cim.database import dispose_engines, engine_for  # noqa: E402

CIM = str(Path(sys.executable).with_name("cim"))
# 16 district codes of Shanghai (黄浦 … 浦东), laid out row by row over the extent
DISTRICTS = ["310101", "310104", "310105", "310106", "310107", "310109", "310110", "310112",
             "310113", "310114", "310115", "310116", "310117", "310118", "310120", "310151"]
EXTENT = (121.0, 30.8, 122.0, 31.6)  # WGS84, inside the default city extent
SUBCLASSES = ["0101", "0102", "0201", "0202", "0301", "0302"]


def write_inputs(folder: Path, n_parts: int, seed: int) -> tuple[Path, Path]:
    minx, miny, maxx, maxy = EXTENT
    dx, dy = (maxx - minx) / 4, (maxy - miny) / 4
    features = []
    for i, code in enumerate(DISTRICTS):
        x0, y0 = minx + (i % 4) * dx, miny + (i // 4) * dy
        ring = [[x0, y0], [x0 + dx, y0], [x0 + dx, y0 + dy], [x0, y0 + dy], [x0, y0]]
        features.append({"type": "Feature", "properties": {"code": code, "name": f"区{code}"},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    districts = folder / "districts.geojson"
    districts.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    rng = random.Random(seed)
    parts = folder / "parts.csv"
    with open(parts, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["source_id", "subclass_code", "name", "lon", "lat", "z"])
        for i in range(n_parts):
            out.writerow([f"P{i:08d}", rng.choice(SUBCLASSES), "部件", round(rng.uniform(minx, maxx), 6),
                          round(rng.uniform(miny, maxy), 6), round(rng.uniform(-3, 0), 2)])
    return districts, parts


def cim(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"} | {"CIM_HOME": str(home)}
    proc = subprocess.run([CIM, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"cim {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(1000 * statistics.median(ordered), 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)}


def run_queries(home: Path, url: str, n: int, seed: int) -> dict:
    from fastapi.testclient import TestClient

    from api.app import create_app

    os.environ["CIM_HOME"] = str(home)
    rng = random.Random(seed)
    minx, miny, maxx, maxy = EXTENT
    points = [(rng.uniform(minx + 0.01, maxx - 0.01), rng.uniform(miny + 0.01, maxy - 0.01)) for _ in range(n)]
    result: dict[str, dict] = {}
    with TestClient(create_app(engine_for(url))) as client:
        def measure(name: str, request) -> None:
            request(*points[0])  # warm: plans, pools, caches of the app
            samples = []
            for x, y in points:
                started = time.perf_counter()
                response = request(x, y)
                samples.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            result[name] = percentiles(samples)

        def items(x: float, y: float):
            return client.get("/collections/parts/items",
                              params={"bbox": f"{x - 0.005},{y - 0.005},{x + 0.005},{y + 0.005}", "limit": 100})

        def near(x: float, y: float):
            return client.get("/nearby", params={"layer": "parts", "lon": x, "lat": y, "z": -1.5, "k": 10,
                                                 "radius": 500})

        # each request asked as a query naming no district and as one naming its districts, in turns (which
        # goes first alternates), so that both see the same machine
        def in_turns(name: str, request) -> None:
            samples: dict[bool, list[float]] = {False: [], True: []}
            for pruning in (False, True):  # warm
                with override_settings(district_pruning=pruning):
                    request(*points[0])
            for i, (x, y) in enumerate(points):
                for pruning in ((False, True) if i % 2 else (True, False)):
                    with override_settings(district_pruning=pruning):
                        started = time.perf_counter()
                        response = request(x, y)
                        samples[pruning].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
            result[f"{name}_all_districts"] = percentiles(samples[False])
            result[f"{name}_named_districts"] = percentiles(samples[True])

        in_turns("items_bbox_limit100", items)
        in_turns("nearby_k10_3d", near)
        for x, y in points[:20]:
            answers = []
            for pruning in (False, True):
                with override_settings(district_pruning=pruning):
                    answers.append((items(x, y).json()["features"], near(x, y).json()["features"]))
            assert answers[0] == answers[1], (x, y)
        measure("grid_lookup", lambda x, y: client.get("/grid/lookup", params={"lon": x, "lat": y}))
    with engine_for(url).connect() as conn:
        samples = []
        for code in DISTRICTS * 3:
            started = time.perf_counter()
            conn.execute(sa.text("SELECT count(*) FROM parts WHERE district_code = :d AND valid_to IS NULL"),
                         {"d": code}).scalar()
            samples.append(time.perf_counter() - started)
        result["count_one_district"] = percentiles(samples)
    return result


def shard_figures(url: str) -> dict:
    """Rows and bytes per shard of parts, and where they lie."""
    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT s.shardid, s.nodeport, s.shard_size, r.result::bigint FROM citus_shards s "
            "JOIN run_command_on_shards('parts', 'SELECT count(*) FROM %s') r ON r.shardid = s.shardid "
            "WHERE s.table_name = 'parts'::regclass ORDER BY r.result::bigint DESC")).all()
        per_node = conn.execute(sa.text(
            "SELECT nodeport, count(*), sum(shard_size) FROM citus_shards WHERE table_name = 'parts'::regclass "
            "GROUP BY nodeport ORDER BY nodeport")).all()
        one = conn.execute(sa.text(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM parts WHERE district_code = '310115' "
            "AND valid_to IS NULL")).scalar()
    non_empty = [r for r in rows if r[3] > 0]
    return {
        "shards": len(rows), "non_empty_shards": len(non_empty),
        "rows_per_non_empty_shard": {"max": max(r[3] for r in non_empty), "min": min(r[3] for r in non_empty)},
        "bytes_per_non_empty_shard": {"max": max(r[2] for r in non_empty), "min": min(r[2] for r in non_empty)},
        "bytes_per_row": round(sum(r[2] for r in non_empty) / max(1, sum(r[3] for r in non_empty)), 1),
        "per_node": [{"port": p, "shards": int(c), "bytes": int(b)} for p, c, b in per_node],
        "one_district_count_plan_ms": round(one[0]["Execution Time"], 2),
    }


def task_counts(url: str) -> dict:
    """Shard tasks of one items-by-bbox query (a 1 km box inside one district) as Citus plans it: naming no
    district, and naming the district its box touches."""
    import re

    from cim.bootstrap import load_settings
    from cim.districts_index import districts_touching, storage_box
    from cim.features import ItemsQuery, Selection, items_select
    from cim.registry import load_layers

    engine = engine_for(url)
    srid = load_settings(engine).srid
    minx, miny, maxx, maxy = EXTENT
    x, y = minx + (maxx - minx) / 8, miny + (maxy - miny) / 8  # the middle of the first district
    bbox = (x - 0.005, y - 0.005, x + 0.005, y + 0.005)
    out = {}
    with engine.connect() as conn:
        layer = load_layers(conn)["parts"]
        named = districts_touching(conn, layer, storage_box(*bbox, 4326, srid))
        for label, districts in (("all_districts", None), ("named_districts", named)):
            stmt, _ = items_select(layer, srid, ItemsQuery(Selection(bbox=bbox)), districts)
            compiled = stmt.compile(conn)
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
            out[label] = int(re.search(r"Task Count: (\d+)", plan).group(1))
    out["districts"] = list(named.codes) if named else None
    return out


def bench(kind: str, home: Path, districts: Path, parts: Path, n_queries: int, seed: int,
          reload: bool = True) -> dict:
    out: dict = {"kind": kind}
    started = time.perf_counter()
    if kind == "single":
        url = Cluster(home).up()
    else:
        url = CitusCluster(home, 2).up()
    out["cluster_up_s"] = round(time.perf_counter() - started, 1)
    out["init_s"] = round(timed(lambda: cim(home, "init")), 2)
    cim(home, "ingest", "districts", str(districts), "--crs", "EPSG:4326")
    report = {}

    def load() -> None:
        report.update(json.loads(cim(home, "ingest", "parts", str(parts), "--crs", "EPSG:4326", "--x", "lon",
                                     "--y", "lat", "--z", "z", "--json")))
    out["load_parts_s"] = round(timed(load), 2)
    out["parts_loaded"] = report["inserted"]
    out["load_rows_per_s"] = round(report["inserted"] / out["load_parts_s"])

    def load_again() -> None:  # the same delivery again: every row compared, nothing written (merge path)
        report.update(json.loads(cim(home, "ingest", "parts", str(parts), "--crs", "EPSG:4326", "--x", "lon",
                                     "--y", "lat", "--z", "z", "--json")))
    if reload:
        out["reload_unchanged_s"] = round(timed(load_again), 2)
        assert report["unchanged"] == out["parts_loaded"], report
    out["queries"] = run_queries(home, url, n_queries, seed)
    with engine_for(url).connect() as conn:
        out["machine"] = machine(conn)
    if kind == "citus":
        out["shards"] = shard_figures(url)
        out["bbox_query_tasks"] = task_counts(url)
    dispose_engines()
    (CitusCluster(home, 2) if kind == "citus" else Cluster(home)).down()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the scratch clusters")
    parser.add_argument("--no-reload", action="store_true", help="skip the second (all unchanged) delivery")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cim-bench-citus-", dir=ROOT / "benchmarks" / "work"
                                 if (ROOT / "benchmarks" / "work").is_dir() else None))
    try:
        districts, parts = write_inputs(work, args.parts, args.seed)
        results = []
        for kind in ("single", "citus"):
            results.append(bench(kind, work / kind, districts, parts, args.queries, args.seed, not args.no_reload))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # a late failure keeps this one
        print(json.dumps({"parts": args.parts, "queries": args.queries, "results": results}, indent=2))
    finally:
        if not args.keep:
            for kind in ("single", "citus"):
                try:
                    (CitusCluster(work / kind, 2) if kind == "citus" else Cluster(work / kind)).down()
                except Exception:  # noqa: BLE001 - never started
                    pass
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
