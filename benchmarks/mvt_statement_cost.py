"""Benchmark: the database CPU of one vector tile's statement, by what the statement is made of (issue 15, item 4).

Run by hand (never by ``make test``) against a loaded base it only reads:

    .venv/bin/python benchmarks/mvt_statement_cost.py --home /tmp/h15 --layer parts --zoom 16 [--tiles 12]

For tiles drawn under random features it captures the statement ``tiles.mvt.tile`` sends (the owner's, so no policy
applies by itself) and runs it in four forms on one connection, each in blocks, alternating, reading the backend's
CPU from ``/proc`` (which a busy machine disturbs far less than wall time): the read policy of revision 0008 written
out (``cim_in_scope`` + the district worked out in SQL on every row: main before revision 0011), revision 0011's
policy (the district from the one setting ``cim.partition``), 0011 with the affine map into Web Mercator
(``ST_Affine``, this branch), and no policy. A base at revision 0010 can be measured this way without migrating it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import sqlalchemy as sa  # noqa: E402

from benchmarks.shanghai import database_url, mvt_paths  # noqa: E402
from cim.bootstrap import load_settings  # noqa: E402
from cim.database import engine_for  # noqa: E402
from cim.jurisdiction import PUBLIC, acting_as, district_pruning  # noqa: E402
from cim.registry import load_layers  # noqa: E402
from cim.selection import Selection  # noqa: E402
from tiles import mvt  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _migration_0011():
    path = HERE.parent / "cim" / "migrations" / "versions" / "0012_policy_partition.py"
    spec = importlib.util.spec_from_file_location("m0011", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def captured(engine: sa.Engine, layer, srid: int, z: int, x: int, y: int, affine: bool) -> tuple[str, dict]:
    """The tile statement (without the parallel-worker prefix) and its parameters, as tiles.mvt sends them."""
    sent: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        sent.append((statement, parameters))

    keep = mvt.AFFINE_MAX_ERROR_CELLS
    mvt.AFFINE_MAX_ERROR_CELLS = keep if affine else -1.0
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with acting_as(PUBLIC), engine.connect() as conn:
            mvt.tile(conn, layer, srid, z, x, y, Selection(), mvt.map_properties(layer))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        mvt.AFFINE_MAX_ERROR_CELLS = keep
    statement, parameters = next((s, p) for s, p in sent if "ST_AsMVT" in s)
    return statement.split("; ", 1)[1], parameters


def with_policy(statement: str, table: str, policy: str) -> str:
    """The statement with the read policy written into its WHERE clause (as PostgreSQL inlines it)."""
    head = f"WHERE {table}.valid_to IS NULL AND "
    if head not in statement:
        raise SystemExit(f"unexpected tile statement shape: {statement[:300]}")
    return statement.replace(head, f"{head}({policy.replace('district_code', f'{table}.district_code')}) AND ", 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="CIM_HOME of the loaded base (read only)")
    ap.add_argument("--layer", default="parts")
    ap.add_argument("--zoom", type=int, default=16)
    ap.add_argument("--tiles", type=int, default=12)
    ap.add_argument("--block", type=int, default=5, help="executions of one form per block")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()

    url = database_url(args.home)
    engine = engine_for(url)
    srid = load_settings(engine).srid
    with engine.connect() as conn:
        layer = load_layers(conn)[args.layer]
    in_scope = "cim_in_scope(district_code, street_code, grid_code)"
    old = f"{in_scope} AND {_migration_0011()._PRUNING_0008}"
    new = f"{in_scope} AND {district_pruning('district_code')}"
    template = f"/{{z}}/{{x}}/{{y}}"
    paths = mvt_paths(url, args.layer, template, args.tiles, args.seed, zooms=(args.zoom,))
    cpu: dict[str, list[float]] = {k: [] for k in ("0008 policy, ST_Transform (main)", "0011 policy, ST_Transform",
                                                    "0011 policy, ST_Affine (branch)", "no policy, ST_Transform")}
    sizes: dict[str, list[int]] = {k: [] for k in cpu}
    raw = engine.raw_connection()
    cur = raw.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    # the scope's settings as the API sets them for the public (cim.partition: none), without the role switch
    scope = ("SELECT set_config('cim.scope', 'public', true), set_config('cim.district', '', true), "
             "set_config('cim.street', '', true), set_config('cim.grids', '', true), "
             "set_config('cim.partition', '', true), set_config('max_parallel_workers_per_gather', '0', true)")
    for path in paths:
        z, x, y = (int(v) for v in re.findall(r"\d+", path))
        exact, p_exact = captured(engine, layer, srid, z, x, y, affine=False)
        mapped, p_mapped = captured(engine, layer, srid, z, x, y, affine=True)
        forms = {"0008 policy, ST_Transform (main)": (with_policy(exact, layer.table, old), p_exact),
                 "0011 policy, ST_Transform": (with_policy(exact, layer.table, new), p_exact),
                 "0011 policy, ST_Affine (branch)": (with_policy(mapped, layer.table, new), p_mapped),
                 "no policy, ST_Transform": (exact, p_exact)}
        for statement, params in forms.values():  # pages in the buffers before anything counts
            cur.execute(scope)
            cur.execute(statement, params)
            raw.rollback()
        spent = {k: 0.0 for k in forms}
        for r in range(args.rounds):
            for name in (list(forms) if r % 2 == 0 else list(forms)[::-1]):
                statement, params = forms[name]
                cur.execute(scope)
                c0 = _cpu_s(pid)
                for _ in range(args.block):
                    cur.execute(statement, params)
                    data = cur.fetchone()[0]
                spent[name] += _cpu_s(pid) - c0
                raw.rollback()
                if r == 0:
                    sizes[name].append(len(data or b""))
        for name in forms:
            cpu[name].append(spent[name] * 1000 / (args.rounds * args.block))
        print(f"{path}: " + ", ".join(f"{spent[n] * 1000 / (args.rounds * args.block):.1f}" for n in forms) + " ms",
              flush=True)
    raw.close()
    first = statistics.mean(cpu["0008 policy, ST_Transform (main)"])
    print(f"\n{args.layer} z{args.zoom}, {len(paths)} tiles, backend CPU a tile (mean over tiles):")
    for name in cpu:
        mean = statistics.mean(cpu[name])
        print(f"  {name:36} {mean:7.2f} ms  {mean / first:.2f}×  {statistics.mean(sizes[name]) / 1024:6.1f} KiB")


if __name__ == "__main__":
    main()
