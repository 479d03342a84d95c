"""Benchmark: what the ``cim`` command costs before it does anything — ``cim --help`` and a 1-row
``cim cases import`` — wall time and CPU seconds (user + system of the process), median of --runs.

Run by hand (not a test):  .venv/bin/python benchmarks/cli_startup.py [--before DIR] [--runs 5]

``--before DIR``: also run the command from another checkout of the project (e.g. ``git archive`` of the
base commit unpacked in DIR; its packages go first on PYTHONPATH, the same virtualenv), alternating
with this one run by run, so both see the same machine. Needs a database server (CIM_DATABASE_URL or the
embedded cluster): each import goes into a fresh scratch database (``cim init`` once, then one copy
per run as a template).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.scratch import create_database, drop_databases  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, dispose_engines, engine_for  # noqa: E402

ROW = "channel,class,address,external_id\nhotline_12345,暴露垃圾,火星路1号,STARTUP-1\n"


def timed(tree: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of ``cim ARGS`` run from ``tree``'s packages."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from cim.cli.main import run; run()", *args], cwd=tree,
                   env={**env, "PYTHONPATH": str(tree)}, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to compare with (run alternately)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = {"this checkout": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    template = f"startup_{uuid.uuid4().hex[:6]}"
    names = [template]
    csv_path = ROOT / "benchmarks" / "work" / "one_case.csv"
    csv_path.parent.mkdir(exist_ok=True)
    csv_path.write_text(ROW, encoding="utf-8")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    loads = [os.getloadavg()[0]]
    try:
        initialise(engine_for(create_database(server, template)))
        dispose_engines()
        for run in range(args.runs):
            for label, tree in (trees.items() if run % 2 == 0 else reversed(trees.items())):
                base = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"}
                results.setdefault((label, "cim --help"), []).append(timed(tree, ["--help"], base))
                name = f"{template}_{len(names)}"
                names.append(name)
                url = create_database(server, name, template)
                results.setdefault((label, "cim cases import (1 row)"), []).append(
                    timed(tree, ["cases", "import", str(csv_path)], {**base, "CIM_DATABASE_URL": url}))
            loads.append(os.getloadavg()[0])
    finally:
        dispose_engines()
        drop_databases(server, names[1:] + names[:1])
    print(f"load average (1 min) during the runs: {min(loads):.1f}–{max(loads):.1f}\n")
    print(f"| command | checkout | wall s (median of {args.runs}) | CPU s (median) |\n|---|---|---:|---:|")
    for (label, command), values in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| `{command}` | {label} | {statistics.median(v[0] for v in values):.2f} | "
              f"{statistics.median(v[1] for v in values):.2f} |")


if __name__ == "__main__":
    main()
