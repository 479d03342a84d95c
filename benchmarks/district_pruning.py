"""Spatial queries naming the districts their area touches, on one node with partitions (issue 15): items by
bbox (limit 100), /nearby k=10 in 3D and a z15 vector tile over N parts (default 3,000,000), each asked as a
query naming no district (CIM_DISTRICT_PRUNING=false: every partition) and naming its districts
(cim.districts_index: their partitions only), alternating request by request so both see the same machine.

Data: 16 districts with Shanghai's codes as a 4 x 4 grid of rectangles over the city (loaded by the real
``cim ingest districts``, which makes their partitions), then N parts at random positions and depths written
by one SQL statement (a loader at this size takes longer than this benchmark may), each with the code of the
rectangle it lies in — the loader's rule — and the layer's version bumped as a load does.

    CIM_HOME=… .venv/bin/python benchmarks/district_pruning.py [--parts 3000000] [--queries 200] [--keep NAME]

Prints one JSON document; docs/benchmarks.md holds the numbers of a run. ``--keep NAME`` keeps (and reuses)
the scratch database NAME.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.citus import DISTRICTS, EXTENT, SUBCLASSES, percentiles, write_inputs  # noqa: E402
from benchmarks.scratch import admin, create_database, drop_databases, machine, run_cim  # noqa: E402
from cim.config import override_settings  # noqa: E402
from cim.database import database_url, dispose_engines, engine_for  # noqa: E402


def fill(url: str, n_parts: int, seed: int) -> None:
    """16 districts through the loader, then ``n_parts`` parts by SQL with the loader's codes."""
    with tempfile.TemporaryDirectory() as folder:
        districts, _ = write_inputs(Path(folder), 0, seed)
        run_cim(url, "init")
        run_cim(url, "ingest", "districts", str(districts), "--crs", "EPSG:4326")
    minx, miny, maxx, maxy = EXTENT
    engine = engine_for(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        from cim.distribution import ensure_partitions

        ensure_partitions(conn.connection.cursor(), "parts", DISTRICTS)
        conn.execute(sa.text("SELECT setseed(:s)"), {"s": seed / 1000})
        # column i, row j of the 4 x 4 grid: the district whose rectangle holds the point
        conn.execute(sa.text(
            "INSERT INTO parts (source_id, object_code, part_class, part_subclass, name, district_code, geom) "
            "SELECT 'P' || i, (CAST(:codes AS text[]))[1 + c + 4 * r] || sub || lpad((i % 999999 + 1)::text, 6, "
            "'0'), left(sub, 2), sub, '部件', (CAST(:codes AS text[]))[1 + c + 4 * r], "
            "ST_Transform(ST_SetSRID(ST_MakePoint(lon, lat, z), 4326), 4549) FROM ("
            " SELECT i, lon, lat, z, (CAST(:subclasses AS text[]))[1 + i / 999999] AS sub, "
            " least(3, floor((lon - :minx) / :dx))::int AS c, "
            " least(3, floor((lat - :miny) / :dy))::int AS r FROM ("
            "  SELECT i, :minx + random() * (:maxx - :minx) AS lon, :miny + random() * (:maxy - :miny) AS lat, "
            "  -3 * random() AS z FROM generate_series(1, :n) AS i) AS p) AS q"),
            {"codes": DISTRICTS, "subclasses": SUBCLASSES, "minx": minx, "miny": miny, "maxx": maxx, "maxy": maxy,
             "dx": (maxx - minx) / 4, "dy": (maxy - miny) / 4, "n": n_parts})
        conn.execute(sa.text("UPDATE layers SET version = version + 1, updated_at = clock_timestamp() "
                             "WHERE table_name = 'parts'"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE parts"))
    print(f"filled {n_parts:,} parts in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def measure(url: str, n: int, seed: int) -> dict:
    import morecantile
    from fastapi.testclient import TestClient

    from api.app import create_app

    tms = morecantile.tms.get("WebMercatorQuad")
    rng = random.Random(seed)
    minx, miny, maxx, maxy = EXTENT
    points = [(rng.uniform(minx + 0.01, maxx - 0.01), rng.uniform(miny + 0.01, maxy - 0.01)) for _ in range(n)]
    requests = {
        "items_bbox_limit100": lambda c, x, y, p: c.get("/collections/parts/items", params={
            "bbox": f"{x - 0.005},{y - 0.005},{x + 0.005},{y + 0.005}", "limit": 100}),
        "nearby_k10_3d": lambda c, x, y, p: c.get("/nearby", params={
            "layer": "parts", "lon": x, "lat": y, "z": -1.5, "k": 10, "radius": 500}),
        # a selection of its own per request (a filter every part passes): the tile is built, never cached
        "vector_tile_z15": lambda c, x, y, p: c.get(
            "/collections/parts/tiles/WebMercatorQuad/{z}/{yy}/{xx}".format(**_tile(tms, x, y, 15)),
            params={"filter": f"object_code <> 'x{p}{x:.7f}'"}),
    }
    samples: dict[str, dict[bool, list[float]]] = {k: {False: [], True: []} for k in requests}
    answers_agree = 0
    with TestClient(create_app(engine_for(url))) as client:
        for name, request in requests.items():
            for pruning in (False, True):  # warm: plans, pools, the districts' cache
                with override_settings(district_pruning=pruning):
                    request(client, *points[0], pruning)
            for i, (x, y) in enumerate(points):
                got = {}
                for pruning in ((False, True) if i % 2 else (True, False)):
                    with override_settings(district_pruning=pruning):
                        started = time.perf_counter()
                        response = request(client, x, y, pruning)
                        samples[name][pruning].append(time.perf_counter() - started)
                    assert response.status_code in (200, 204), response.text
                    got[pruning] = response.content
                if name != "vector_tile_z15":
                    assert json.loads(got[True])["features"] == json.loads(got[False])["features"], (name, x, y)
                else:
                    assert got[True] == got[False], (name, x, y)
                answers_agree += 1
    result = {name: {"all_partitions": percentiles(s[False]), "named_districts": percentiles(s[True])}
              for name, s in samples.items()}
    result["answers_compared"] = answers_agree
    return result


def _tile(tms, lon: float, lat: float, z: int) -> dict:
    t = tms.tile(lon, lat, z)
    return {"z": t.z, "xx": t.x, "yy": t.y}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=3_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", help="keep (and reuse) the scratch database of this name")
    args = parser.parse_args()
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    name = args.keep or f"bench_pruning_{os.getpid()}"
    with admin(server).connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
    url = create_database(server, name) if not exists else server.rsplit("/", 1)[0] + "/" + name
    try:
        if not exists:
            fill(url, args.parts, args.seed)
        with engine_for(url).connect() as conn:
            parts = conn.execute(sa.text("SELECT count(*) FROM parts WHERE valid_to IS NULL")).scalar()
            partitions = conn.execute(sa.text(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'parts'::regclass")).scalar()
            about = machine(conn)
        result = {"parts": parts, "partitions": partitions, "queries": args.queries, "machine": about,
                  "results": measure(url, args.queries, args.seed)}
        print(json.dumps(result, indent=2, ensure_ascii=False))
    finally:
        dispose_engines()
        if not args.keep:
            drop_databases(server, [name])


if __name__ == "__main__":
    main()
