"""Benchmark: a map tile's features all through ``ST_AsMVTGeom`` (before) or, when inside the tile plus its buffer,
straight into the tile's grid (after; ``tiles.mvt._inside_first``), database CPU and bytes of the tile statement
(issue 15, item 4).

Run by hand (never by ``make test``) against a loaded base it only reads:

    .venv/bin/python benchmarks/mvt_direct_grid.py --home /tmp/h15 --layer buildings [--zoom 14] [--tiles 12]

For tiles drawn under random features it captures the statement ``tiles.mvt.tile`` sends for a map tile in both forms
and runs them on one connection in blocks, alternating which goes first, with the read policy of revision 0012
written in (as ``benchmarks/mvt_statement_cost.py`` does: the owner's connection, so a base can be measured without
a role switch), reading the backend's CPU from ``/proc``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mvt_statement_cost import POLICY, FormBench, arguments, captured, with_policy  # noqa: E402
from tiles import mvt  # noqa: E402

FORMS = ("ST_AsMVTGeom for all (before)", "inside: straight into the grid (after)")


def main() -> None:
    args = arguments(__doc__, layer="buildings", zoom=14)
    bench = FormBench(args.home, args.layer, args.zoom, args.tiles, args.seed, args.rounds, args.block)
    keep = mvt._inside_first
    for path, z, x, y in bench.tiles():
        mvt._inside_first = lambda t, srid, kind, clipped: clipped  # before: every feature clipped by ST_AsMVTGeom
        mvt._statement.cache_clear(), mvt._compiled.cache_clear()
        before = captured(bench.engine, bench.layer, bench.srid, z, x, y, affine=True)
        mvt._inside_first = keep
        mvt._statement.cache_clear(), mvt._compiled.cache_clear()
        after = captured(bench.engine, bench.layer, bench.srid, z, x, y, affine=True)
        bench.measure(path, {FORMS[0]: (with_policy(before[0], bench.layer.table, POLICY), before[1]),
                             FORMS[1]: (with_policy(after[0], bench.layer.table, POLICY), after[1])})
    bench.report()


if __name__ == "__main__":
    main()
