"""Benchmark: a parts map tile with the 16-digit object code as a property (before) or as the feature id (after;
``tiles.mvt.CODE_IDS``), database CPU and bytes of the tile statement (issue 15, item 4).

Run by hand (never by ``make test``) against a loaded base it only reads:

    .venv/bin/python benchmarks/mvt_feature_id.py --home /tmp/h15 [--zoom 16] [--tiles 12]

For tiles drawn under random parts it captures the statement ``tiles.mvt.tile`` sends for a map tile in both forms
and runs them on one connection in blocks, alternating which goes first, with the read policy of revision 0012
written in (as ``benchmarks/mvt_statement_cost.py`` does: the owner's connection, so a base can be measured without
a role switch), reading the backend's CPU from ``/proc``.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.mvt_statement_cost import _cpu_s, captured, with_policy  # noqa: E402
from benchmarks.shanghai import database_url, mvt_paths  # noqa: E402
from cim.bootstrap import load_settings  # noqa: E402
from cim.database import engine_for  # noqa: E402
from cim.jurisdiction import district_pruning  # noqa: E402
from cim.registry import load_layers  # noqa: E402
from tiles import mvt  # noqa: E402

FORMS = ("object_code a property (before)", "object_code the feature id (after)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="CIM_HOME of the loaded base (read only)")
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
        layer = load_layers(conn)["parts"]
    policy = f"cim_in_scope(district_code, street_code, grid_code) AND {district_pruning('district_code')}"
    paths = mvt_paths(url, "parts", "/{z}/{x}/{y}", args.tiles, args.seed, zooms=(args.zoom,))
    cpu: dict[str, list[float]] = {k: [] for k in FORMS}
    sizes: dict[str, list[int]] = {k: [] for k in FORMS}
    raw = engine.raw_connection()
    cur = raw.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    scope = ("SELECT set_config('cim.scope', 'public', true), set_config('cim.district', '', true), "
             "set_config('cim.street', '', true), set_config('cim.grids', '', true), "
             "set_config('cim.partition', '', true), set_config('max_parallel_workers_per_gather', '0', true)")
    keep = dict(mvt.CODE_IDS)
    for path in paths:
        z, x, y = (int(v) for v in re.findall(r"\d+", path))
        mvt.CODE_IDS.clear()  # before: no code id, so the map's properties keep object_code
        mvt._statement.cache_clear(), mvt._compiled.cache_clear()
        before = captured(engine, layer, srid, z, x, y, affine=True)
        mvt.CODE_IDS.update(keep)
        mvt._statement.cache_clear(), mvt._compiled.cache_clear()
        after = captured(engine, layer, srid, z, x, y, affine=True)
        forms = {FORMS[0]: (with_policy(before[0], layer.table, policy), before[1]),
                 FORMS[1]: (with_policy(after[0], layer.table, policy), after[1])}
        for statement, params in forms.values():  # pages in the buffers before anything counts
            cur.execute(scope)
            cur.execute(statement, params)
            raw.rollback()
        spent = {k: 0.0 for k in forms}
        for r in range(args.rounds):
            for name in (FORMS if r % 2 == 0 else FORMS[::-1]):
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
        print(f"{path}: " + ", ".join(f"{spent[n] * 1000 / (args.rounds * args.block):.1f} ms "
                                      f"{sizes[n][-1] / 1024:.0f} KiB" for n in forms), flush=True)
    raw.close()
    first = statistics.mean(cpu[FORMS[0]])
    print(f"\nparts z{args.zoom}, {len(paths)} tiles, backend CPU a tile (mean over tiles):")
    for name in FORMS:
        mean = statistics.mean(cpu[name])
        print(f"  {name:36} {mean:7.2f} ms  {mean / first:.2f}×  {statistics.mean(sizes[name]) / 1024:6.1f} KiB")
    densest = max(range(len(paths)), key=lambda i: sizes[FORMS[0]][i])
    print(f"  densest tile {paths[densest]}: " + ", ".join(f"{cpu[n][densest]:.1f} ms" for n in FORMS))


if __name__ == "__main__":
    main()
