"""Benchmark: the first `cim ingest parts` of the synthetic Shanghai's parts (or their first N rows) into a base
holding the city's areas (16 districts, ~218 streets, 6,000 communities, 20,000 grids), as the Shanghai load
does it — optionally the same with the loader of another source tree (before/after, same run, same server).

Run by hand (not a test):
  .venv/bin/python benchmarks/parts_scale.py --rows 3000000 [--before DIR] [--city /work/scale-data/city]

Each load runs as a child process into its own database, cloned from one that holds the areas (with
``--before``, one for each tree, its schema made by that tree's ``cim init``); the report
gives wall time, rows/s, the loader's peak RSS and CPU seconds, the server backends' CPU seconds and the load
average (the machine is shared). DIR is a source tree (e.g. `git archive COMMIT | tar -x -C DIR`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ingest_vs_ogr2ogr import LoadWatch, ServerCpu, timed  # noqa: E402
from benchmarks.scratch import CIM, create_database, drop_databases  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402

WORK = Path(__file__).resolve().parent / "work"
AREAS = ("districts", "streets", "communities", "grids")


def ingest_args(entry: dict, path: Path) -> list[str]:
    out = ["ingest", entry["layer"], str(path), "--json"]
    for option in ("crs", "encoding", "x", "y", "z", "wkt"):
        if entry.get(option):
            out += [f"--{option}", str(entry[option])]
    for field, column in (entry.get("map") or {}).items():
        out += ["--map", f"{field}={column}"]
    return out


def head(path: Path, rows: int, into: Path) -> Path:
    """The header and the first ``rows`` lines of a CSV (the delivery is sorted by object code, so by district)."""
    if into.exists():
        return into
    with open(path, "rb") as src, open(into, "wb") as out:
        for i, line in enumerate(src):
            if i > rows:
                break
            out.write(line)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3_000_000, help="first N parts of the delivery (0: all)")
    parser.add_argument("--city", type=Path, default=Path("/work/scale-data/city"))
    parser.add_argument("--before", type=Path, help="also load with the loader of this source tree, first")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    manifest = {e["layer"]: e for e in json.loads((args.city / "manifest.json").read_text())}
    parts = args.city / manifest["parts"]["path"]
    if args.rows:
        parts = head(parts, args.rows, WORK / f"parts_head_{args.rows}.csv")
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    names: list[str] = []

    def areas(source: Path | None) -> str:
        """A database holding the areas, its schema made by ``source``'s ``cim init`` (this tree's: None)."""
        template = f"bench_areas_{uuid.uuid4().hex[:8]}"
        names.append(template)
        url = create_database(server, template)
        env = {**os.environ, "CIM_DATABASE_URL": url, "CIM_HOME": str(WORK / "cim-home")}
        if source is None:
            initialise(engine_for(url))  # the schema, seeded
            engine_for(url).dispose()
        else:  # that tree's schema (its migrations), so its loads meet the constraints it had
            env["PYTHONPATH"] = str(source)
            timed([CIM, "init"], env)
        started = time.perf_counter()
        for layer in AREAS:
            timed([CIM, *ingest_args(manifest[layer], args.city / manifest[layer]["path"])], env)
        print(f"areas loaded in {time.perf_counter() - started:.0f} s", flush=True)
        psycopg2.connect(url).close()
        time.sleep(1)  # the template must have no connection left
        return template

    try:
        runs = ([("before", args.before)] if args.before else []) + [("after", None)]
        templates = {label: areas(source) for label, source in runs}
        for label, source in runs:
            name = f"bench_{uuid.uuid4().hex[:8]}"
            names.append(name)
            run_url = create_database(server, name, template=templates[label])
            env = {**os.environ, "CIM_DATABASE_URL": run_url, "CIM_HOME": str(WORK / "cim-home")}
            if source is not None:
                env["PYTHONPATH"] = str(source)
            watch = LoadWatch()
            server_cpu = ServerCpu(run_url)
            out = WORK / f"parts-scale-{label}.json"
            with open(out, "w") as f:
                wall, peak, cpu = timed([CIM, *ingest_args(manifest["parts"], parts)], env, stdout=f)
            report = json.loads(out.read_text())
            backends = server_cpu.stop()
            print(f"{label}: {report['inserted']:,} parts in {wall:.1f} s ({report['inserted'] / wall:,.0f} rows/s); "
                  f"peak RSS {peak:,.0f} MB; CPU loader {cpu:.1f} s, server "
                  f"{'n/a' if backends is None else f'{backends:.1f} s'}; load avg {watch.stop()}; "
                  f"{report.get('message') or ''}", flush=True)
    finally:
        if not args.keep:
            drop_databases(server, names)


if __name__ == "__main__":
    main()
