"""Benchmark (issue 15): /nearby in 3D by the N-D GiST (``ORDER BY geom <<->> point``, the query before revision
0013_nearby_2d) against the walk of the 2D GiST that replaces it (cim.spatial: candidates in 2D order, proven
in 3D), on one database that holds both indexes, in turns.

Run by hand (not a test), against a loaded base (e.g. the synthetic Shanghai's first 2 M parts and its pipelines,
loaded with `cim ingest`):
  .venv/bin/python benchmarks/nearby_2d.py --url postgresql://… [--queries 400] [--radii 100 2000] [--k 10]
      [--z-range -5 10] [--before DIR]

For each layer and radius: random points over the layer's rows (a random current row's position moved up to
30 m in plan, at a random height, by default from 5 m below ground to 10 m above), each asked both ways as the
API asks (its role, the public scope, one transaction a search), in turns (each first as often) so that a change
in the machine's speed falls on both; and the whole search as GET /nearby runs it (cim.spatial.nearby, which
first searches the point's own district), ``new api`` — and with --before DIR that tree's, ``old api``.
Reports p50/p99/max latency, how many walks the new query took, and — from a second pass under EXPLAIN
(ANALYZE, BUFFERS) — rows and buffers read per search; checks that all answer the same features at the same
distances (at the k-th distance a tie may be cut either way). The N-D index, if the base has none (a base at
revision 0013), is built first (and dropped after, unless --keep-index).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scratch import machine  # noqa: E402
from cim.database import engine_for  # noqa: E402
from cim.registry import Layer, layer_table, load_layers  # noqa: E402
from cim.spatial import _rows, _search_3d, nearby, nearby_select  # noqa: E402

SRID = 4549
Answer = list[tuple[str, float]]


def _migration() -> Any:
    path = Path(__file__).resolve().parents[1] / "cim" / "migrations" / "versions" / "0013_nearby_2d.py"
    spec = importlib.util.spec_from_file_location("nearby_2d_migration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ND = _migration()  # the N-D index's name and operator class


def old_select(layer: Layer, x: float, y: float, z: float, radius: float, k: int) -> sa.Select:
    """The 3D query before revision 0013: the N-D GiST walked in 3D order, same columns as the new one."""
    table = layer_table(layer, SRID)
    point = sa.func.ST_SetSRID(sa.func.ST_MakePoint(x, y, z), SRID)
    within = sa.and_(table.c.geom.op("&&&")(sa.func.ST_Expand(point, radius)),
                     sa.func.ST_3DDWithin(table.c.geom, point, radius))
    query = _rows(layer, table, sa.func.ST_3DDistance(table.c.geom, point), within, None, None)
    return query.order_by(table.c.geom.op("<<->>")(point)).limit(k)


def _scoped(conn: sa.Connection) -> None:
    conn.exec_driver_sql("SET LOCAL ROLE cim_api")
    conn.exec_driver_sql("SELECT set_config('cim.scope', 'public', true)")


def run_old(engine: sa.Engine, layer: Layer, x: float, y: float, z: float, radius: float, k: int,
            explain: list | None = None) -> tuple[Answer, int]:
    query = old_select(layer, x, y, z, radius, k)
    with engine.begin() as conn:
        _scoped(conn)
        if explain is not None:
            explain.append(_explain(conn, query))
        rows = conn.execute(query).all()
    return [(r._feature_id, float(r._distance_m)) for r in rows], 1


def run_new(engine: sa.Engine, layer: Layer, x: float, y: float, z: float, radius: float, k: int,
            explain: list | None = None) -> tuple[Answer, int]:
    walks = 0
    with engine.begin() as conn:
        _scoped(conn)

        def walk(m: int) -> list:
            nonlocal walks
            walks += 1
            query = nearby_select(layer, SRID, x, y, z, radius_m=radius, k=k, candidates=m)
            if explain is not None:
                explain.append(_explain(conn, query))
            return list(conn.execute(query).mappings())

        rows = _search_3d(walk, k)
    return [(r["_feature_id"], float(r["_distance_m"])) for r in rows], walks


def api_runner(search: Callable) -> Callable:
    """The whole search as GET /nearby runs it (``search``: a ``cim.spatial.nearby`` — the point's district
    first, then the neighbours within the k-th distance found)."""
    def run(engine: sa.Engine, layer: Layer, x: float, y: float, z: float, radius: float, k: int,
            explain: list | None = None) -> tuple[Answer, int]:
        with engine.begin() as conn:
            _scoped(conn)
            hits = search(conn, layer, x, y, z, SRID, radius_m=radius, k=k)
        return [(h.feature_id, h.distance_m) for h in hits], 0
    return run


def before_nearby(tree: Path) -> Callable:
    """``cim.spatial.nearby`` of another source tree (the code before the change: its 3D query by the N-D GiST),
    loaded beside this one's (the modules it imports are this tree's)."""
    spec = importlib.util.spec_from_file_location("spatial_before", tree / "cim" / "spatial.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module.nearby


def _explain(conn: sa.Connection, query: sa.Select) -> dict[str, float]:
    sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql).scalar()[0]["Plan"]
    return {"rows": _rows_read(plan), "blocks": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)}


def _rows_read(node: dict) -> float:
    """Heap rows the scans fetched: returned and removed by a filter or recheck, over every loop."""
    own = 0.0
    if "Scan" in node["Node Type"] and "Bitmap Index" not in node["Node Type"]:
        own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
               + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
    return own + sum(_rows_read(child) for child in node.get("Plans", []))


def same(old: Answer, new: Answer, k: int) -> str:
    """'ids' (the same features in the same order of distance), 'tie' (equal but for a tie cut at the k-th
    distance), or 'DIFFERENT'."""
    if [d for _, d in old] != [d for _, d in new]:
        return "DIFFERENT"
    if [f for f, _ in old] == [f for f, _ in new]:
        return "ids"
    cut = old[-1][1] if len(old) == k else None
    for d in {d for _, d in old}:
        a, b = {f for f, e in old if e == d}, {f for f, e in new if e == d}
        if a != b and d != cut:
            return "DIFFERENT"
    return "tie"


def points(engine: sa.Engine, layer: Layer, n: int, rng: np.random.Generator,
           heights: list[float]) -> list[tuple[float, float, float]]:
    table = layer_table(layer, SRID).name
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            f"SELECT ST_X(ST_PointOnSurface(geom)), ST_Y(ST_PointOnSurface(geom)) FROM {table} "
            f"TABLESAMPLE BERNOULLI (:pct) REPEATABLE (15) WHERE valid_to IS NULL LIMIT :n"),
            {"n": n, "pct": min(100.0, 100.0 * 3 * n / max(1, _count(conn, table)))}).all()
    return [(float(x + rng.uniform(-30, 30)), float(y + rng.uniform(-30, 30)), float(rng.uniform(*heights)))
            for x, y in rows]


def _count(conn: sa.Connection, table: str) -> int:
    return int(conn.execute(sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                            {"t": table}).scalar())


def _ensure_nd(engine: sa.Engine, table: str) -> bool:
    """Build the N-D index if the base has none; whether it was built here."""
    name = ND.index_name(table)
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar():
            return False
        started = time.perf_counter()
        conn.exec_driver_sql(f'CREATE INDEX "{name}" ON "{table}" USING gist (geom {ND.OPCLASS})')
        conn.exec_driver_sql(f'ANALYZE "{table}"')
    print(f"built {name} in {time.perf_counter() - started:.1f} s", flush=True)
    return True


def _percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"{np.percentile(a, 50):.2f} / {np.percentile(a, 99):.2f} / {a.max():.2f}"


def measure(engine: sa.Engine, layer: Layer, places: list[tuple[float, float, float]], radius: float,
            k: int, before: Callable | None) -> dict[str, Any]:
    runners: dict[str, Callable] = {"old": run_old, "new": run_new, "new api": api_runner(nearby)}
    if before is not None:
        runners["old api"] = api_runner(before)
    for x, y, z in places[: max(20, len(places) // 5)]:  # warm both indexes and the heap pages
        for run in runners.values():
            run(engine, layer, x, y, z, radius, k)
    times: dict[str, list[float]] = {label: [] for label in runners}
    answers: dict[str, list[Answer]] = {label: [] for label in runners}
    walks: list[int] = []
    labels = list(runners)
    for i, (x, y, z) in enumerate(places):
        for label in labels[i % len(labels):] + labels[:i % len(labels)]:  # in turns: each first as often
            started = time.perf_counter()
            answer, n = runners[label](engine, layer, x, y, z, radius, k)
            times[label].append((time.perf_counter() - started) * 1000)
            answers[label].append(answer)
            if label == "new":
                walks.append(n)
    reads: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for x, y, z in places:
        for label in reads:
            plans: list = []
            runners[label](engine, layer, x, y, z, radius, k, explain=plans)
            reads[label].append({key: sum(p[key] for p in plans) for key in ("rows", "blocks")})
    checks = {label: [same(o, n, k) for o, n in zip(answers["old"], answers[label])] for label in runners
              if label != "old"}
    return {"times": times, "walks": walks, "reads": reads, "checks": checks,
            "found": float(np.mean([len(a) for a in answers["new"]]))}


def report(layer: str, radius: float, result: dict[str, Any]) -> str:
    walks = np.asarray(result["walks"])
    lines = []
    for label in result["times"]:
        reads = result["reads"].get(label)
        if reads:
            rows = np.asarray([r["rows"] for r in reads])
            blocks = np.asarray([r["blocks"] for r in reads])
            read = (f"{np.median(rows):.0f} / {np.percentile(rows, 99):.0f} | "
                    f"{np.median(blocks):.0f} / {np.percentile(blocks, 99):.0f}")
        else:
            read = "| "
        extra = {"new": f"{(walks == 1).mean() * 100:.0f}% / {walks.max()}", "old": "— (1)"}.get(label, "")
        lines.append(f"| {layer} | {radius:g} | {label} | {_percentiles(result['times'][label])} | {read} | {extra} |")
    for label, checks in result["checks"].items():
        lines.append(f"|  |  | {label} = old? | {checks.count('ids')} same ids, {checks.count('tie')} tie cut "
                     f"differently, **{checks.count('DIFFERENT')} different** of {len(checks)} "
                     f"(mean features found {result['found']:.1f}) | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("CIM_DATABASE_URL"), help="the loaded base")
    parser.add_argument("--layers", nargs="+", default=["parts", "pipelines"])
    parser.add_argument("--queries", type=int, default=400, help="points per layer and radius")
    parser.add_argument("--radii", type=float, nargs="+", default=[100.0, 2000.0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--z-range", type=float, nargs=2, default=[-5.0, 10.0], metavar=("LOW", "HIGH"),
                        help="the points' heights, metres")
    parser.add_argument("--before", type=Path, help="also the whole search of this source tree's cim.spatial "
                        "(e.g. `git archive` of main before the change): `old api`")
    parser.add_argument("--keep-index", action="store_true", help="keep an N-D index built here")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("--url or CIM_DATABASE_URL: a loaded base")
    engine = engine_for(args.url)
    with engine.connect() as conn:
        layers = load_layers(conn)
        where = machine(conn)
    rng = np.random.default_rng(15)
    built = []
    raw: dict[str, Any] = {}
    print(f"Machine: {where}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average at start {os.getloadavg()}", flush=True)
    print("\n| layer | radius m | query | latency p50 / p99 / max, ms | rows read p50 / p99 | "
          "buffers p50 / p99 | new: one walk / most walks |")
    print("|---|---:|---|---:|---:|---:|---:|", flush=True)
    try:
        for name in args.layers:
            layer = layers[name]
            table = layer_table(layer, SRID).name
            if _ensure_nd(engine, table):
                built.append(table)
            places = points(engine, layer, args.queries, rng, args.z_range)
            for radius in args.radii:
                result = measure(engine, layer, places, radius, args.k,
                                 before_nearby(args.before) if args.before else None)
                raw[f"{name}:{radius:g}"] = result
                print(report(name, radius, result), flush=True)
    finally:
        if not args.keep_index:
            with engine.begin() as conn:
                for table in built:
                    conn.exec_driver_sql(f'DROP INDEX "{ND.index_name(table)}"')
    print(f"\nload average at the end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(raw))


if __name__ == "__main__":
    main()
