"""The address layer's first load, before and after (issue 15 item 3: the 10 M addresses of the synthetic
Shanghai took 88 min, ~40 of them linking each address to its building over all 17 building partitions).

On a cluster of its own (``--home``): a template base with the administrative units and grids of the whole
generated city (``--city``, read only) and the buildings of a few whole districts (``--districts``); then, in
the same run and alternating, ``cim ingest addresses`` of those districts' addresses into a fresh copy of the
template with the code *before* (``--before``, a git revision: its tree is archived under ``--home`` and run
with this Python) and *after* (this checkout). Per load: wall time, the loader's CPU and peak RSS, the
server's CPU (every process of the cluster), and whether both loads linked every address to the same
building. Then the merge path's link statement alone, old and new, over the same staged addresses: EXPLAIN
(ANALYZE, TIMING OFF) — its time and the index probes (loops) per building partition.

    .venv/bin/python benchmarks/addresses_load.py --districts 310101,310104 --before main
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scratch import create_database, drop_databases, machine  # noqa: E402
from benchmarks.shanghai import _ingest_args, log, measured, rows_beginning  # noqa: E402
from cim.database import engine_for  # noqa: E402
from ingest import layers  # noqa: E402

ADMIN = ("districts", "streets", "communities", "grids")
TEMPLATE = "addresses_bench_template"


def cim(src: Path) -> list[str]:
    """The ``cim`` command of the code in ``src``, run with this Python (its dependencies)."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(src)!r}); sys.argv[0] = 'cim'; "
                                  "from cim.cli.main import run; run()"]


def run(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[-6:])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def server_cpu(home: Path) -> float:
    """CPU seconds of the whole cluster so far: the postmaster's live children and those it has reaped."""
    pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p: int) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

    own = stat(pid)
    total = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = stat(int(entry.name))
            except OSError:
                continue
            if int(fields[1]) == pid:
                total += int(fields[11]) + int(fields[12])
    return total / tick


def measured_load(cmd: list[str], env: dict[str, str], home: Path, logfile: Path) -> dict[str, Any]:
    """One load to its end: wall seconds, the loader's CPU and peak RSS (its rusage, from wait4), the
    cluster's CPU meanwhile, and the load's JSON report."""
    cpu0 = server_cpu(home)
    run = measured(cmd, env, logfile)  # the loader's own wall time, CPU and peak RSS (wait4)
    return {"seconds": run["seconds"], "server_cpu_s": round(server_cpu(home) - cpu0, 1),
            "loader_cpu_s": run["cpu_s"], "peak_rss_mb": run["peak_rss_mb"], "report": json.loads(run["stdout"])}


def subset(city: Path, name: str, prefixes: tuple[str, ...], folder: Path, tag: str) -> Path:
    """The rows of ``name`` that begin with one of ``prefixes`` (the generator writes district by district)."""
    return rows_beginning(city / name, prefixes, folder / f"{Path(name).stem}-{tag}.csv")


def links(url: str) -> dict[str, str | None]:
    with engine_for(url).connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT a.source_id, b.source_id FROM addresses a LEFT JOIN buildings b "
            "ON b.feature_id = a.building_feature_id AND b.valid_to IS NULL WHERE a.valid_to IS NULL")).all())


def parsed(url: str) -> dict[str, str]:
    """Per current address, a digest of what the loader's parsing gave it (the columns it fills)."""
    with engine_for(url).connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT source_id, md5(concat_ws('|', city, district, road, door_number, lane, building_no, unit, floor, "
            "room, compound, remark, standard_address, address_code, door_int)) FROM addresses "
            "WHERE valid_to IS NULL")).all())


def probes(plan: dict) -> dict[str, int]:
    out: dict[str, int] = {}

    def walk(node: dict) -> None:
        if node.get("Relation Name", "").startswith("buildings_"):
            out[node["Relation Name"]] = out.get(node["Relation Name"], 0) + node["Actual Loops"]
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return out


def link_statements(url: str, order: list[str]) -> dict[str, Any]:
    """The merge's link statement, old (unpruned) and new, over every address of ``url`` staged as a load
    stages them: EXPLAIN (ANALYZE, TIMING OFF) — time, probes per building partition."""
    engine = engine_for(url)
    raw = engine.raw_connection()
    out: dict[str, Any] = {}
    try:
        cur = raw.cursor()
        cur.execute("CREATE TEMP TABLE _stage AS SELECT row_number() OVER (ORDER BY fid) AS stage_key, "
                    "NULLIF(district_code, '') AS district_code, geom FROM addresses WHERE valid_to IS NULL")
        cur.execute("ANALYZE _stage")
        for variant in order:
            started = time.perf_counter()
            if variant == "before":
                query, crossing = layers.ADDRESS_LINK_UNPRUNED, None
            else:
                query = layers.address_building_links(cur)
                cur.execute(f"SELECT count(*) FROM {layers.CROSSING}")
                crossing = cur.fetchone()[0]
            prepared = time.perf_counter() - started
            cur.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}")
            plan = cur.fetchone()[0][0]
            found = probes(plan)
            out[variant] = {"seconds": round(time.perf_counter() - started, 1), "crossing_s": round(prepared, 2),
                            "crossing_buildings": crossing, "rows": plan["Plan"]["Actual Rows"],
                            "probes": sum(found.values()),
                            "partitions_probed": sum(1 for v in found.values() if v)}
            log(f"link statement {variant}: {out[variant]}")
    finally:
        raw.rollback()
        raw.close()
        engine.dispose()
    return out


def link_on_loaded(url: str, percent: float) -> dict[str, Any]:
    """Read only, on a loaded base (e.g. the whole synthetic Shanghai): a sample of its addresses (TABLESAMPLE)
    linked by the old unpruned join and by the new per-district probe, EXPLAIN (ANALYZE, TIMING OFF) — time
    and probes; and the crossing buildings of every district, counted as the load would make them."""
    engine = engine_for(url)
    out: dict[str, Any] = {}
    sample = (f"SELECT fid AS stage_key, district_code, geom FROM addresses TABLESAMPLE SYSTEM ({percent}) "
              "REPEATABLE (1) WHERE valid_to IS NULL")
    none = "(SELECT NULL::uuid AS feature_id, NULL::text AS source_id, NULL::text AS district_code, " \
           "NULL::geometry AS geom WHERE false)"
    queries = {
        "before": layers.ADDRESS_LINK_UNPRUNED.replace("(SELECT stage_key, geom FROM _stage)", f"({sample})"),
        "after (own district's partition; crossing buildings apart)":
            f"SELECT s.stage_key, l.feature_id FROM ({sample}) s CROSS JOIN LATERAL {layers.building_lateral('s', none)} l",
    }
    with engine.connect() as conn:
        conn.execute(sa.text("SET max_parallel_workers_per_gather = 0"))  # one process each, as in a load
        times: dict[str, list[float]] = {name: [] for name in queries}
        for turn in range(4):  # the first turn warms the cache for both; then alternating, the median
            for name in (list(queries) if turn % 2 == 0 else list(queries)[::-1]):
                started = time.perf_counter()
                conn.execute(sa.text(f"SELECT count(*) FROM ({queries[name]}) x")).scalar()
                if turn:
                    times[name].append(time.perf_counter() - started)
        for name, query in queries.items():
            plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}")).scalar()[0]
            found = probes(plan)
            out[name] = {"seconds_median": round(sorted(times[name])[len(times[name]) // 2], 2),
                         "seconds": [round(t, 2) for t in times[name]], "rows": plan["Plan"]["Actual Rows"],
                         "probes": sum(found.values()), "partitions_probed": sum(1 for v in found.values() if v)}
            log(f"loaded base, {name}: {out[name]}")
        crossing = layers.crossing_statements("SELECT code FROM districts WHERE valid_to IS NULL")[1]
        select = crossing[crossing.index("SELECT DISTINCT"):]
        started = time.perf_counter()
        out["crossing_buildings"] = conn.execute(sa.text(f"SELECT count(*) FROM ({select}) c")).scalar()
        out["crossing_s"] = round(time.perf_counter() - started, 1)
        out["sampled_addresses"] = conn.execute(sa.text(f"SELECT count(*) FROM ({sample}) s")).scalar()
        log(f"loaded base: {out}")
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--city", type=Path, default=Path("/work/scale-data/city"))
    parser.add_argument("--districts", default="310101,310104", help="whole districts whose buildings and "
                                                                      "addresses are loaded")
    parser.add_argument("--before", default="main", help="git revision of the code measured as 'before'")
    parser.add_argument("--home", type=Path, default=Path("/tmp/cim-addresses-bench"))
    parser.add_argument("--runs", type=int, default=1, help="before/after pairs, alternating which goes first")
    parser.add_argument("--first-run", type=int, default=0, help="number of the first pair (odd: 'after' first)")
    parser.add_argument("--keep", action="store_true", help="keep the loaded bases")
    parser.add_argument("--loaded-home", type=Path, help="also (read only) the link statements on the base of "
                                                          "this CIM_HOME, e.g. the loaded Shanghai, over a sample")
    parser.add_argument("--sample-percent", type=float, default=0.5)
    parser.add_argument("--only-loaded", action="store_true", help="just the read-only --loaded-home measurement")
    args = parser.parse_args()
    if args.loaded_home:
        env = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"} | {"CIM_HOME": str(args.loaded_home)}
        loaded = link_on_loaded(run([*cim(ROOT), "db", "url"], env).strip(), args.sample_percent)
        (args.home / "results-loaded.json").parent.mkdir(parents=True, exist_ok=True)
        (args.home / "results-loaded.json").write_text(json.dumps(loaded, indent=1, ensure_ascii=False))
        if args.only_loaded:
            print(json.dumps(loaded, indent=1, ensure_ascii=False))
            return
    from ingest.synthetic_city import DISTRICTS

    names = {code: name for code, name, *_ in DISTRICTS}
    codes = args.districts.split(",")
    tag = "-".join(codes)
    home = args.home.resolve()
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"} | {"CIM_HOME": str(home / "cluster")}
    after_cim, before_src = cim(ROOT), home / f"src-{args.before}"
    if not before_src.exists():
        before_src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive.stdout, check=True)
    revision = run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], env).strip()
    run([*after_cim, "db", "up"], env)
    server = run([*after_cim, "db", "url"], env).strip()
    manifest = {e["layer"]: e for e in json.loads((args.city / "manifest.json").read_text(encoding="utf-8"))}
    buildings = subset(args.city, "buildings.csv", tuple(f"B{c}" for c in codes), data, tag)
    addresses = subset(args.city, "addresses.csv", tuple(f"上海市{names[c]}" for c in codes), data, tag)
    template = f"{TEMPLATE}_{tag.replace('-', '_')}"
    with sa.create_engine(engine_for(server).url, isolation_level="AUTOCOMMIT").connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": template}).first()
    if not exists:
        log(f"template {template}: init, administrative units, buildings of {tag}")
        drop_databases(server, [f"{template}_making"])  # a template is renamed once complete
        url = create_database(server, f"{template}_making")
        base_env = env | {"CIM_DATABASE_URL": url}
        run([*after_cim, "init"], base_env)
        for layer in ADMIN:
            run([*after_cim, *_ingest_args(manifest[layer], args.city / manifest[layer]["path"])], base_env)
        report = json.loads(run([*after_cim, *_ingest_args(manifest["buildings"], buildings)], base_env))
        log(f"buildings: {report['inserted']} in {report['duration_s']} s")
        vacuum = sa.create_engine(engine_for(url).url, isolation_level="AUTOCOMMIT")
        with vacuum.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        vacuum.dispose()
        engine_for(url).dispose()
        with sa.create_engine(engine_for(server).url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{template}_making" RENAME TO "{template}"'))
    results: dict[str, Any] = {"machine": None, "districts": codes, "before": revision, "loads": [],
                               "addresses_file": str(addresses)}
    with engine_for(server).connect() as conn:
        results["machine"] = machine(conn)
    for i in range(args.first_run, args.first_run + args.runs):
        order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
        made: dict[str, str] = {}
        for variant in order:
            name = f"addresses_bench_{variant}_{i}"
            drop_databases(server, [name])
            made[variant] = create_database(server, name, template=template)
            with engine_for(made[variant]).connect() as conn:
                conn.execute(sa.text("CHECKPOINT"))
            command = [*(cim(before_src) if variant == "before" else after_cim),
                       *_ingest_args(manifest["addresses"], addresses)]
            log(f"run {i}: {variant} ({revision if variant == 'before' else 'this checkout'}) loading {addresses.name}")
            load = measured_load(command, env | {"CIM_DATABASE_URL": made[variant]}, home / "cluster",
                                 home / f"load-{variant}-{i}")
            report = load.pop("report")
            load.update(variant=variant, run=i, inserted=report["inserted"], rejected=report["rejected"],
                        message=report.get("message"), rows_per_s=round(report["inserted"] / load["seconds"]))
            with engine_for(made[variant]).connect() as conn:
                load["linked"] = conn.execute(sa.text(
                    "SELECT count(*) FROM addresses WHERE building_feature_id IS NOT NULL")).scalar()
                # buildings loaded before the addresses: given their address by the address load (ingest.layers.
                # complete_building_links) since this branch; 0 before it
                load["buildings_linked"] = conn.execute(sa.text(
                    "SELECT count(*) FROM buildings WHERE address_feature_id IS NOT NULL AND valid_to IS NULL")).scalar()
                load["addresses_bytes"] = int(conn.execute(sa.text(
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                    "WHERE inhparent = 'addresses'::regclass")).scalar())
            log(f"run {i}: {variant}: {load}")
            results["loads"].append(load)
        results.setdefault("same_links", []).append(links(made["before"]) == links(made["after"]))
        log(f"run {i}: the same building for every address in both: {results['same_links'][-1]}")
        results.setdefault("same_parse", []).append(parsed(made["before"]) == parsed(made["after"]))
        log(f"run {i}: the same parsed columns for every address in both: {results['same_parse'][-1]}")
        if i == args.first_run:
            results["link_statement"] = link_statements(made["after"], order)
        if not args.keep:
            drop_databases(server, list(made.values()))
    out = home / f"results-{tag}.json"
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
