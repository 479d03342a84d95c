"""The tail of ``/nearby`` k=10 in 3D (and of items by bbox) on the loaded Shanghai: what a slow request does.

Three steps, each at the places ``benchmarks/shanghai.py --steps queries`` asks at (random buildings' centres,
seeded, moved by up to 200 m; the same seed gives the same places):

* ``explain`` — every statement ``cim.spatial.nearby`` runs for each place, as ``EXPLAIN (ANALYZE, BUFFERS)``
  on the API's own engine (role ``cim_api``, public scope, under the policies; ``track_io_timing`` on for this
  session), in two forms taking turns: *before*, ranked by ``ST_3DDistance`` (main's statement: a sort of every
  row in the 3D search box), and *after*, the checkout's own statements (when this was written: ranked by
  ``<<->>``, the N-D GiST nearest first; since revision 0013_nearby_2d: the walk of the 2D GiST that
  ``cim.spatial`` proves exact, one statement a walk).
  Per request: statements, partitions read, rows the scans read, shared buffers hit / read, I/O time, planning
  and execution time; and the two answers compared (same distances in the same order, same features).
* ``items`` — the page statement of items by bbox (limit 100, parts) at each place, the same way (one form).
* ``http`` — two real servers on the loaded base, ``--before-cim`` (e.g. main's checkout) and this checkout's
  ``cim``, each with one worker; every place asked of both, one request at a time, which server goes first
  alternating; wall latency p50/p95/p99, each server's CPU time per request, and the two answers compared.

The base is only read. Wall times on a shared machine are noisy: compare the two forms of the same run, and
the work counts (rows, buffers, partitions), which the machine's load does not change.

    .venv/bin/python benchmarks/nearby_tail.py --home /tmp/h15 --before-cim /work/main/.venv/bin/cim \\
        --results /tmp/nearby-tail.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scratch import CIM, ROOT  # noqa: E402
from benchmarks.shanghai import database_url, query_paths  # noqa: E402
from cim.database import engine_for, reader_engine  # noqa: E402
from cim.registry import load_layers  # noqa: E402

NEARBY = "nearby k=10 3D (parts)"
ITEMS = "items bbox limit 100 (parts)"


def pct(values: list[float]) -> dict[str, float]:
    a = np.array(values, dtype=float)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2),
            "mean": round(float(a.mean()), 2)}


# --- EXPLAIN of each statement ----------------------------------------------------------------------------------

def _scans(node: dict, acc: dict) -> None:
    if "Relation Name" in node and node.get("Actual Loops", 0) > 0:
        acc["partitions"].add(node["Relation Name"])
        acc["rows"] += (node.get("Actual Rows", 0) * node.get("Actual Loops", 1) + node.get("Rows Removed by Filter", 0)
                        + node.get("Rows Removed by Index Recheck", 0))
    if node.get("Node Type") == "Sort":
        acc["sorted"] = True
    for child in node.get("Plans", []):
        _scans(child, acc)


def plan_work(plan: list[dict]) -> dict[str, Any]:
    top = plan[0]
    acc: dict[str, Any] = {"partitions": set(), "rows": 0, "sorted": False}
    _scans(top["Plan"], acc)
    node = top["Plan"]
    return {"partitions": acc["partitions"], "rows": acc["rows"], "sorted": acc["sorted"],
            "hit": node.get("Shared Hit Blocks", 0), "read": node.get("Shared Read Blocks", 0),
            "io_ms": node.get("I/O Read Time", 0.0), "plan_ms": top.get("Planning Time", 0.0),
            "exec_ms": top.get("Execution Time", 0.0)}


class Explaining:
    """A connection that EXPLAINs each SELECT it is given before running it (``before``: ranked by the distance
    column, main's form), adding up the work of one request."""

    def __init__(self, conn: sa.Connection, before: bool) -> None:
        self.conn, self.before = conn, before
        self.work: dict[str, Any] = {"statements": 0, "partitions": set(), "rows": 0, "hit": 0, "read": 0,
                                     "io_ms": 0.0, "plan_ms": 0.0, "exec_ms": 0.0, "sorted": False}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def execute(self, stmt: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(stmt, sa.Select) and "_distance_m" in stmt.selected_columns:
            if self.before:
                stmt = stmt.order_by(None).order_by(stmt.selected_columns["_distance_m"])
            sql = stmt.compile(dialect=postgresql.dialect())
            plan = self.conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + str(sql),
                                             sql.params).scalar()
            w = plan_work(plan)
            self.work["statements"] += 1
            self.work["partitions"] |= w.pop("partitions")
            self.work["sorted"] |= w.pop("sorted")
            for k, v in w.items():
                self.work[k] += v
        return self.conn.execute(stmt, *args, **kw)


def _api_engine(url: str) -> sa.Engine:
    engine = reader_engine(engine_for(url))

    @sa.event.listens_for(engine, "connect")
    def _io_timing(dbapi_connection, record) -> None:  # noqa: ANN001 — the login role may; cim_api may not
        with dbapi_connection.cursor() as cur:
            cur.execute("SET track_io_timing = on")
    return engine


def _point(path: str, srid: int) -> tuple[float, float, float]:
    from cim.spatial import to_storage

    q = parse_qs(urlsplit(path).query)
    xs, ys = to_storage([float(q["lon"][0])], [float(q["lat"][0])], "EPSG:4326", srid)
    return float(xs[0]), float(ys[0]), float(q["z"][0])


def step_explain(url: str, paths: list[str], srid: int) -> dict[str, Any]:
    from cim.spatial import nearby

    engine = _api_engine(url)
    with engine_for(url).connect() as conn:
        layer = load_layers(conn)["parts"]
    per: dict[str, list[dict]] = {"before": [], "after": []}
    differ = ties = 0
    for i, path in enumerate(paths):
        x, y, z = _point(path, srid)
        answers = {}
        for form in (("before", "after") if i % 2 == 0 else ("after", "before")):
            with engine.connect() as conn:
                proxy = Explaining(conn, form == "before")
                t = time.perf_counter()
                hits = nearby(proxy, layer, x, y, z, srid, k=10)  # type: ignore[arg-type]
                wall = (time.perf_counter() - t) * 1000
            w = proxy.work
            per[form].append({**w, "partitions": len(w["partitions"]), "wall_ms": wall, "x": x, "y": y, "z": z})
            answers[form] = [(h.feature_id, h.distance_m) for h in hits]
        a, b = answers["before"], answers["after"]
        if [d for _, d in a] != [d for _, d in b] or sorted(a) != sorted(b):
            # features at one distance may come in either order; a tie at the k-th may be cut either way
            if [d for _, d in a] != [d for _, d in b] or (sorted(a[:-1]) != sorted(b[:-1])):
                differ += 1
            else:
                ties += 1
    out: dict[str, Any] = {"places": len(paths), "answers_differ": differ, "tie_at_kth_cut_otherwise": ties}
    for form, rows in per.items():
        out[form] = {key: pct([r[key] for r in rows]) for key in
                     ("rows", "hit", "read", "io_ms", "plan_ms", "exec_ms", "partitions", "statements", "wall_ms")}
        out[form]["sorted_share"] = round(sum(r["sorted"] for r in rows) / len(rows), 3)
        out[form]["slowest"] = sorted(rows, key=lambda r: -r["exec_ms"])[:5]
    return out


def step_items(url: str, paths: list[str], srid: int) -> dict[str, Any]:
    from cim import features
    from cim.selection import Selection, parse_bbox

    engine = _api_engine(url)
    with engine_for(url).connect() as conn:
        layer = load_layers(conn)["parts"]
    rows = []
    for path in paths:
        bbox = parse_qs(urlsplit(path).query)["bbox"][0]
        query = features.ItemsQuery(selection=Selection(bbox=parse_bbox(bbox)), limit=100)
        with engine.connect() as conn:
            districts = query.selection.districts(conn, layer, srid)
            stmt, _ = features.page_statement(layer, srid, query, districts)
            sql = stmt.compile(dialect=postgresql.dialect())
            with features._planner_settings(conn, features._NEAREST_SETTINGS):
                w = plan_work(conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + str(sql),
                                                   sql.params).scalar())
        rows.append({**w, "partitions": len(w["partitions"])})
    out = {key: pct([r[key] for r in rows]) for key in
           ("rows", "hit", "read", "io_ms", "plan_ms", "exec_ms", "partitions")}
    out["sorted_share"] = round(sum(r["sorted"] for r in rows) / len(rows), 3)
    # how the slowest pages differ from the typical one: the same rows and buffers, more I/O time
    slow = sorted(rows, key=lambda r: -r["exec_ms"])[: max(1, len(rows) // 20)]
    out["slowest_5pct"] = {key: pct([r[key] for r in slow]) for key in ("rows", "read", "io_ms", "exec_ms")}
    return out


# --- two real servers side by side ----------------------------------------------------------------------------

def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answer(body: bytes) -> list[tuple[str, float]]:
    return [(f["id"], f["properties"]["distance_m"]) for f in json.loads(body)["features"]]


def step_http(url: str, paths: list[str], warm: list[str], before_cim: str, work: Path) -> dict[str, Any]:
    from benchmarks.tiles import Server, fetch, free_port

    servers = {}
    try:
        for form, cim in (("before", before_cim), ("after", CIM)):
            home = work / f"serve-{form}"
            home.mkdir(parents=True, exist_ok=True)
            port = free_port()
            env = {**os.environ, "CIM_HOME": str(home), "CIM_DATABASE_URL": url}
            cwd = Path(cim).resolve().parents[2] if form == "before" else ROOT
            servers[form] = Server([cim, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                    "--no-access-log"], env, port, "/conformance", cwd, home / "serve.log")

        async def run() -> dict[str, Any]:
            conns = {f: await asyncio.open_connection("127.0.0.1", s.port) for f, s in servers.items()}
            from benchmarks.tiles import _request

            async def get(form: str, path: str) -> tuple[float, int, bytes]:
                reader, writer = conns[form]
                t = time.perf_counter()
                status, body = await _request(reader, writer, path)
                return (time.perf_counter() - t) * 1000, status, body

            for path in warm:  # pools, plans, PROJ in each connection
                for form in servers:
                    await get(form, path)
            lat: dict[str, list[float]] = {f: [] for f in servers}
            cpu0 = {f: _cpu_s(s.proc.pid) for f, s in servers.items()}
            errors = differ = 0
            for i, path in enumerate(paths):
                bodies = {}
                for form in (("before", "after") if i % 2 == 0 else ("after", "before")):
                    ms, status, body = await get(form, path)
                    lat[form].append(ms)
                    errors += status != 200
                    bodies[form] = body
                a, b = _answer(bodies["before"]), _answer(bodies["after"])
                if [d for _, d in a] != [d for _, d in b] or sorted(a[:-1]) != sorted(b[:-1]):
                    differ += 1
            cpu = {f: (_cpu_s(s.proc.pid) - cpu0[f]) * 1000 / len(paths) for f, s in servers.items()}
            for _, writer in conns.values():
                writer.close()
            return {"errors": errors, "answers_differ": differ,
                    **{f: {**pct(lat[f]), "server_cpu_ms_per_request": round(cpu[f], 2)} for f in servers}}

        return asyncio.run(run())
    finally:
        for s in servers.values():
            s.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/h15"), help="CIM_HOME of the loaded base (read only)")
    parser.add_argument("--steps", default="explain,items,http")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--before-cim", default="/work/main/.venv/bin/cim",
                        help="http: the cim command of the checkout to compare with (its own .venv)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nearby-tail"), help="the servers' CIM_HOMEs")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    url = database_url(args.home.resolve())
    with engine_for(url).connect() as conn:
        srid = int(conn.execute(sa.text("SELECT Find_SRID('public', 'parts', 'geom')")).scalar())
    timed = query_paths(url, args.requests, args.seed, [])
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               "load_before": os.getloadavg()}
    for step in [s for s in args.steps.split(",") if s]:
        t = time.perf_counter()
        if step == "explain":
            results[step] = step_explain(url, timed[NEARBY], srid)
        elif step == "items":
            results[step] = step_items(url, timed[ITEMS], srid)
        elif step == "http":
            warm = query_paths(url, 100, args.seed + 100, [])[NEARBY]
            results[step] = step_http(url, timed[NEARBY], warm, args.before_cim, args.work)
        else:
            parser.error(f"unknown step {step!r}")
        results[f"{step}_s"] = round(time.perf_counter() - t, 1)
        results[f"load_after_{step}"] = os.getloadavg()
        summary = {k: v for k, v in results[step].items() if k not in ("before", "after")}
        print(step, json.dumps(summary, default=str)[:1500], flush=True)
        for form in ("before", "after"):
            if form in results[step]:
                print(f"  {form}:", json.dumps({k: v for k, v in results[step][form].items() if k != "slowest"},
                                               default=str)[:1500], flush=True)
    if args.results:
        args.results.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
