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


#: the scope's settings as the API sets them for the public (cim.partition: none), without the role switch
PUBLIC_SCOPE = ("SELECT set_config('cim.scope', 'public', true), set_config('cim.district', '', true), "
                "set_config('cim.street', '', true), set_config('cim.grids', '', true), "
                "set_config('cim.partition', '', true), set_config('max_parallel_workers_per_gather', '0', true)")
#: the read policy of revision 0012, written into a captured statement by :func:`with_policy`
POLICY = f"cim_in_scope(district_code, street_code, grid_code) AND {district_pruning('district_code')}"


def arguments(description: str, layer: str | None = "parts", zoom: int = 16) -> argparse.Namespace:
    """The options every statement-cost benchmark takes (``layer`` None: the script names its own layer)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="CIM_HOME of the loaded base (read only)")
    if layer is not None:
        ap.add_argument("--layer", default=layer)
    ap.add_argument("--zoom", type=int, default=zoom)
    ap.add_argument("--tiles", type=int, default=12)
    ap.add_argument("--block", type=int, default=5, help="executions of one form per block")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=15)
    return ap.parse_args()


class FormBench:
    """Statements of one tile in several forms, run on one connection in blocks of ``block``, the order of the
    forms alternating round by round, each form's backend CPU read from ``/proc`` (a busy machine disturbs it far
    less than wall time) and its tile's bytes; per tile and, at the end, the mean over tiles."""

    def __init__(self, home: Path, layer_name: str, zoom: int, tiles: int, seed: int, rounds: int,
                 block: int) -> None:
        url = database_url(home)
        self.engine = engine_for(url)
        self.srid = load_settings(self.engine).srid
        with self.engine.connect() as conn:
            self.layer = load_layers(conn)[layer_name]
        self.zoom, self.rounds, self.block = zoom, rounds, block
        self.paths = mvt_paths(url, layer_name, "/{z}/{x}/{y}", tiles, seed, zooms=(zoom,))
        self.cpu: dict[str, list[float]] = {}
        self.sizes: dict[str, list[int]] = {}
        self._raw = self.engine.raw_connection()
        self._cur = self._raw.cursor()
        self._cur.execute("SELECT pg_backend_pid()")
        self._pid = self._cur.fetchone()[0]

    def tiles(self):
        """(path, z, x, y) of each tile measured."""
        for path in self.paths:
            z, x, y = (int(v) for v in re.findall(r"\d+", path))
            yield path, z, x, y

    def measure(self, path: str, forms: dict[str, tuple[str, dict]]) -> None:
        cur, raw = self._cur, self._raw
        for statement, params in forms.values():  # pages in the buffers before anything counts
            cur.execute(PUBLIC_SCOPE)
            cur.execute(statement, params)
            raw.rollback()
        spent = {k: 0.0 for k in forms}
        for r in range(self.rounds):
            for name in (list(forms) if r % 2 == 0 else list(forms)[::-1]):
                statement, params = forms[name]
                cur.execute(PUBLIC_SCOPE)
                c0 = _cpu_s(self._pid)
                for _ in range(self.block):
                    cur.execute(statement, params)
                    data = cur.fetchone()[0]
                spent[name] += _cpu_s(self._pid) - c0
                raw.rollback()
                if r == 0:
                    self.sizes.setdefault(name, []).append(len(data or b""))
        for name in forms:
            self.cpu.setdefault(name, []).append(spent[name] * 1000 / (self.rounds * self.block))
        print(f"{path}: " + ", ".join(f"{self.cpu[n][-1]:.1f} ms {self.sizes[n][-1] / 1024:.0f} KiB" for n in forms),
              flush=True)

    def report(self) -> None:
        self._raw.close()
        names = list(self.cpu)
        first = statistics.mean(self.cpu[names[0]])
        print(f"\n{self.layer.name} z{self.zoom}, {len(self.paths)} tiles, backend CPU a tile (mean over tiles):")
        for name in names:
            mean = statistics.mean(self.cpu[name])
            ratio = mean / first if first else float("nan")  # /proc counts 10 ms ticks: a short run may see none
            print(f"  {name:36} {mean:7.2f} ms  {ratio:.2f}×  "
                  f"{statistics.mean(self.sizes[name]) / 1024:6.1f} KiB")
        densest = max(range(len(self.paths)), key=lambda i: self.sizes[names[0]][i])
        print(f"  densest tile {self.paths[densest]}: " + ", ".join(f"{self.cpu[n][densest]:.1f} ms" for n in names))


def main() -> None:
    args = arguments(__doc__)
    bench = FormBench(args.home, args.layer, args.zoom, args.tiles, args.seed, args.rounds, args.block)
    layer, table = bench.layer, bench.layer.table
    old = f"cim_in_scope(district_code, street_code, grid_code) AND {_migration_0011()._PRUNING_0008}"
    for path, z, x, y in bench.tiles():
        exact, p_exact = captured(bench.engine, layer, bench.srid, z, x, y, affine=False)
        mapped, p_mapped = captured(bench.engine, layer, bench.srid, z, x, y, affine=True)
        bench.measure(path, {"0008 policy, ST_Transform (main)": (with_policy(exact, table, old), p_exact),
                             "0011 policy, ST_Transform": (with_policy(exact, table, POLICY), p_exact),
                             "0011 policy, ST_Affine (branch)": (with_policy(mapped, table, POLICY), p_mapped),
                             "no policy, ST_Transform": (exact, p_exact)})
    bench.report()


if __name__ == "__main__":
    main()
