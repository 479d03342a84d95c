"""How many heap pages a page of items by bbox (101 rows nearest a box's centre) and a 3D ``/nearby`` k=10 touch
when a district's parts are stored in load order (as the loaded Shanghai holds them) vs in spatial order.

One district's partition of the loaded base is copied (read only there) into a throwaway cluster of its own
(``cim db up`` under ``--scratch-home``, stopped again at the end) twice: as it is stored (``ORDER BY ctid``) and
sorted by ``ORDER BY geom`` (PostGIS's B-tree order of geometries, a space-filling curve), both with the 2D and
N-D GiST; then at the places ``benchmarks/shanghai.py`` asks at that fall inside the district, the two queries'
rows, buffers touched and distinct heap pages (``ctid``). Distinct heap pages are what a cold request reads.

    .venv/bin/python benchmarks/heap_order.py --home /tmp/h15 --district 310104 --scratch-home /tmp/heap-order
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scratch import CIM, ROOT  # noqa: E402
from benchmarks.shanghai import database_url, query_paths  # noqa: E402
from cim.spatial import to_storage  # noqa: E402

FORMS = {"load_order": "ctid", "spatial_order": "geom"}


def _cim(home: Path, *args: str) -> str:
    done = subprocess.run([CIM, *args], env={**os.environ, "CIM_HOME": str(home)}, cwd=ROOT, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"cim {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout.strip()


def _copy(source: str, target: str, district: str) -> None:
    src = psycopg2.connect(source)
    dst = psycopg2.connect(target)
    dst.autocommit = True
    with src.cursor() as s, dst.cursor() as d:
        s.execute("SELECT string_agg(format('%%I %%s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)"
                  " FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                  (f"parts_{district}",))
        columns = s.fetchone()[0]
        d.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        d.execute("DROP TABLE IF EXISTS copied, load_order, spatial_order")
        d.execute(f"CREATE UNLOGGED TABLE copied ({columns})")
        read, write = os.pipe()
        with os.fdopen(read, "rb") as r, os.fdopen(write, "wb") as w:
            import threading

            def produce() -> None:
                s.copy_expert(f"COPY (SELECT * FROM parts_{district} ORDER BY ctid) TO STDOUT", w)
                w.close()
            t = threading.Thread(target=produce)
            t.start()
            d.copy_expert("COPY copied FROM STDIN", r)
            t.join()
        for table, order in FORMS.items():
            d.execute(f"CREATE TABLE {table} AS SELECT * FROM copied ORDER BY {order}")
            d.execute(f"CREATE INDEX ON {table} USING gist (geom)")
            d.execute(f"CREATE INDEX ON {table} USING gist (geom gist_geometry_ops_nd)")
            d.execute(f"VACUUM ANALYZE {table}")
        d.execute("DROP TABLE copied")
    src.close()
    dst.close()


def measure(target: str, places: list[tuple[float, float, float]]) -> dict[str, dict[str, dict[str, float]]]:
    conn = psycopg2.connect(target)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom) e FROM load_order) q")
    x0, y0, x1, y1 = cur.fetchone()
    out: dict[str, dict[str, list]] = {k: {t: [] for t in FORMS} for k in ("items", "nearby")}
    for x, y, z in places:
        if not (x0 + 500 < x < x1 - 500 and y0 + 500 < y < y1 - 500):
            continue
        for table in FORMS:
            p2, p3 = f"ST_SetSRID(ST_MakePoint({x}, {y}), 4549)", f"ST_SetSRID(ST_MakePoint({x}, {y}, {z}), 4549)"
            queries = {
                "items": f"SELECT ctid FROM {table} WHERE geom && ST_Expand({p2}, 400) AND valid_to IS NULL "
                         f"ORDER BY geom <-> {p2} LIMIT 101",
                "nearby": f"SELECT ctid FROM {table} WHERE geom &&& ST_Expand({p3}, 100) AND valid_to IS NULL "
                          f"ORDER BY geom <<->> {p3} LIMIT 10"}
            for key, sql in queries.items():
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
                plan = cur.fetchone()[0][0]["Plan"]
                cur.execute(f"SELECT count(DISTINCT (ctid::text::point)[0]) FROM ({sql}) q")
                out[key][table].append((plan["Actual Rows"], plan.get("Shared Hit Blocks", 0)
                                        + plan.get("Shared Read Blocks", 0), cur.fetchone()[0]))
    conn.close()
    result: dict[str, dict[str, dict[str, float]]] = {}
    for key, forms in out.items():
        result[key] = {}
        for table, rows in forms.items():
            a = np.array(rows, dtype=float)
            result[key][table] = {"places": len(rows), "rows_p50": float(np.percentile(a[:, 0], 50)),
                                  "buffers_p50": float(np.percentile(a[:, 1], 50)),
                                  "buffers_p95": float(np.percentile(a[:, 1], 95)),
                                  "heap_pages_p50": float(np.percentile(a[:, 2], 50)),
                                  "heap_pages_p95": float(np.percentile(a[:, 2], 95))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/h15"), help="CIM_HOME of the loaded base (read only)")
    parser.add_argument("--district", default="310104")
    parser.add_argument("--scratch-home", type=Path, default=Path("/tmp/heap-order"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="leave the scratch cluster up")
    args = parser.parse_args()
    source = database_url(args.home.resolve())
    args.scratch_home.mkdir(parents=True, exist_ok=True)
    _cim(args.scratch_home, "db", "up")
    try:
        target = _cim(args.scratch_home, "db", "url")
        _copy(source, target, args.district)
        places = []
        for path in query_paths(source, args.requests, args.seed, [])["nearby k=10 3D (parts)"]:
            q = parse_qs(urlsplit(path).query)
            xs, ys = to_storage([float(q["lon"][0])], [float(q["lat"][0])], "EPSG:4326", 4549)
            places.append((float(xs[0]), float(ys[0]), float(q["z"][0])))
        for key, forms in measure(target, places).items():
            for table, numbers in forms.items():
                print(key, table, numbers, flush=True)
    finally:
        if not args.keep:
            _cim(args.scratch_home, "db", "down")


if __name__ == "__main__":
    main()
