"""How many heap blocks hold the parts a map tile or an items page reads, in two bases holding the same parts
(e.g. the whole-city base loaded in the delivery's order, and a first load by ``benchmarks/parts_scale.py
--keep``, which writes each batch in Z order: ``ingest.geometry.spatial_order``). Read only.

At places drawn from the first base's parts (seeded sample): the blocks holding the 100 parts nearest the place
(an items page, a ``/nearby``) and the blocks and rows in a box around it (``--box``, default 500 m: about a
z16 tile at Shanghai's latitude). Distinct blocks are what a request reads when the cache is cold.

    .venv/bin/python benchmarks/heap_blocks.py URL_BEFORE URL_AFTER [--places 300] [--box 500]
"""
from __future__ import annotations

import argparse
import statistics

import psycopg2

_NEAREST = """SELECT count(DISTINCT (tableoid, (ctid::text::point)[0])) FROM (
    SELECT tableoid, ctid FROM parts WHERE valid_to IS NULL
    ORDER BY geom <-> ST_SetSRID(ST_MakePoint(%(x)s, %(y)s), %(srid)s) LIMIT 100) s"""
_BOX = """SELECT count(*), count(DISTINCT (tableoid, (ctid::text::point)[0])) FROM parts WHERE valid_to IS NULL
    AND geom && ST_MakeEnvelope(%(x)s - %(h)s, %(y)s - %(h)s, %(x)s + %(h)s, %(y)s + %(h)s, %(srid)s)"""


def places(url: str, n: int) -> list[tuple[float, float]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT ST_X(geom), ST_Y(geom) FROM parts TABLESAMPLE SYSTEM (0.01) REPEATABLE (7) "
                    "WHERE valid_to IS NULL LIMIT %s", (n,))
        return cur.fetchall()


def measure(url: str, at: list[tuple[float, float]], box_m: float) -> str:
    nearest, rows, blocks = [], [], []
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        # the SRID as a constant: `<->` against an expression of the row (ST_SRID(geom)) cannot use the index
        cur.execute("SELECT Find_SRID(current_schema()::text, 'parts', 'geom')")
        srid = cur.fetchone()[0]
        for x, y in at:
            cur.execute(_NEAREST, {"x": x, "y": y, "srid": srid})
            nearest.append(cur.fetchone()[0])
            cur.execute(_BOX, {"x": x, "y": y, "h": box_m / 2, "srid": srid})
            n, b = cur.fetchone()
            rows.append(n)
            blocks.append(b)
    p95 = sorted(nearest)[int(0.95 * len(nearest))]
    return (f"100 nearest parts on p50 {statistics.median(nearest):.0f} / p95 {p95} blocks; {box_m:.0f} m box: "
            f"p50 {statistics.median(rows):.0f} parts on {statistics.median(blocks):.0f} blocks "
            f"({sum(blocks) / max(sum(rows), 1):.3f} blocks a row)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="database URL of the first base (the places are drawn from it)")
    parser.add_argument("after", help="database URL of the second base")
    parser.add_argument("--places", type=int, default=300)
    parser.add_argument("--box", type=float, default=500.0, help="side of the box, metres in storage")
    args = parser.parse_args()
    at = places(args.before, args.places)
    for name, url in (("before", args.before), ("after", args.after)):
        print(f"{name}: {measure(url, at, args.box)}")


if __name__ == "__main__":
    main()
