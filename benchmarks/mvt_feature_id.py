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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mvt_statement_cost import POLICY, FormBench, arguments, captured, with_policy  # noqa: E402
from tiles import mvt  # noqa: E402

FORMS = ("object_code a property (before)", "object_code the feature id (after)")


def main() -> None:
    args = arguments(__doc__, layer=None, zoom=16)
    bench = FormBench(args.home, "parts", args.zoom, args.tiles, args.seed, args.rounds, args.block)
    keep = dict(mvt.CODE_IDS)
    for path, z, x, y in bench.tiles():
        mvt.CODE_IDS.clear()  # before: no code id, so the map's properties keep object_code
        mvt._statement.cache_clear(), mvt._compiled.cache_clear()
        before = captured(bench.engine, bench.layer, bench.srid, z, x, y, affine=True)
        mvt.CODE_IDS.update(keep)
        mvt._statement.cache_clear(), mvt._compiled.cache_clear()
        after = captured(bench.engine, bench.layer, bench.srid, z, x, y, affine=True)
        bench.measure(path, {FORMS[0]: (with_policy(before[0], "parts", POLICY), before[1]),
                             FORMS[1]: (with_policy(after[0], "parts", POLICY), after[1])})
    bench.report()


if __name__ == "__main__":
    main()
