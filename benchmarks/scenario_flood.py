"""Flood response for one alarm (issue 14, Speed): the affected compounds (and buildings, addresses,
underground parts), the nearest 5 pump trucks by road distance (pgRouting) and the cases pushed
(条 and 块, through the case loop's intake and machine dispatch) — target ≤ 1 s on the sample city.

A scratch base gets the sample city (`cim samples load`'s loader) and the scenario's layers
(`cim scenarios flood load-samples`: 265 compounds, 31 roads → the routable network, 20 monitoring
points with their rules, 40 pump trucks and 4 teams with GPS fixes). Each round raises a water-level
alarm at every monitoring point at once (readings through the ordinary intake, so sensing opens the
alarms and their 道路积水 cases), then responds to them one by one, timing each response in its own
transaction, commit included; each response is closed again (untimed) so trucks stay available. The
same is done with the roads removed (straight-line fallback) to show what routing costs.

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up` with CIM_HOME set).
Prints a Markdown section.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scratch import create_database, drop_databases, machine  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402
from ingest.samples import load_samples  # noqa: E402
from scenarios.flood.loaders import load_layer  # noqa: E402
from scenarios.flood.response import close_response, respond_to_alarm  # noqa: E402
from scenarios.flood.routing import nearest_trucks  # noqa: E402
from scenarios.flood.setup import ensure_scenario  # noqa: E402
from sensing.intake import store_batch  # noqa: E402

FLOOD = ROOT / "data_samples" / "flood"


def _base(server: str) -> tuple[str, str]:
    name = f"bench_flood_{int(time.time())}"
    url = create_database(server, name)
    engine = engine_for(url)
    initialise(engine)
    load_samples(ROOT / "data_samples", engine)
    with engine.begin() as conn:
        ensure_scenario(conn)
    for entry in json.loads((FLOOD / "manifest.json").read_text(encoding="utf-8")):
        load_layer(engine, entry["layer"], FLOOD / entry["path"], entry.get("crs"))
    return name, url


def _raise_alarms(engine: sa.Engine, at: datetime, level: str) -> list[int]:
    """One reading per monitoring point: over its alarm depth ('high') or back to dry ('low')."""
    with engine.begin() as conn:
        points = conn.execute(sa.text("SELECT device_id, alarm_m FROM flood_points WHERE kind = 'monitoring'")).all()
        frame = pd.DataFrame([{"device_id": d, "time": at.isoformat(), "quantity": "water_level",
                               "value": 2.0 * a if level == "high" else 0.0, "unit": "m"} for d, a in points])
        store_batch(conn, frame)
        return list(conn.execute(sa.text("""SELECT a.id FROM iot_alerts a WHERE a.level = 'alarm'
            AND a.cleared_at IS NULL AND a.quantity = 'water_level'
            AND NOT EXISTS (SELECT 1 FROM flood_responses f WHERE f.alert_id = a.id) ORDER BY a.id""")).scalars())


def _round(engine: sa.Engine, alert_ids: list[int]) -> tuple[list[float], list[str], int]:
    times, methods, compounds = [], [], 0
    for alert_id in alert_ids:
        started = time.perf_counter()
        with engine.begin() as conn:
            response = respond_to_alarm(conn, alert_id, k=5)
        times.append(time.perf_counter() - started)
        methods.append(response["routing"])
        compounds += len(response["summary"]["compounds"])
        with engine.begin() as conn:
            close_response(conn, response["id"])
    return times, methods, compounds


def _nearest_only(engine: sa.Engine, repeats: int = 20) -> list[float]:
    with engine.connect() as conn:
        points = conn.execute(sa.text("SELECT ST_X(geom), ST_Y(geom) FROM flood_points ORDER BY code")).all()
    out = []
    for i in range(repeats):
        x, y = points[i % len(points)]
        started = time.perf_counter()
        with engine.connect() as conn:
            nearest_trucks(conn, x, y, 5)
        out.append(time.perf_counter() - started)
    return out


def _stats(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[max(0, int(round(0.9 * len(values))) - 1)]
    return f"{statistics.median(values) * 1000:.0f} / {p90 * 1000:.0f} / {values[-1] * 1000:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alarm rounds (each: every monitoring point)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    server = database_url()
    name, url = _base(server)
    engine = engine_for(url)
    try:
        start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=args.rounds * 2 + 2)
        road_times, methods, compounds = [], [], 0
        for r in range(args.rounds):
            at = start + timedelta(hours=2 * r)
            times, m, c = _round(engine, _raise_alarms(engine, at, "high"))
            road_times += times
            methods += m
            compounds += c
            _raise_alarms(engine, at + timedelta(minutes=30), "low")
        nearest = _nearest_only(engine)
        with engine.begin() as conn:  # the fallback: the same alarms without roads
            conn.execute(sa.text("DELETE FROM flood_road_edges; DELETE FROM flood_road_vertices; DELETE FROM flood_roads"))
        at = start + timedelta(hours=2 * args.rounds)
        straight_times, straight_methods, _ = _round(engine, _raise_alarms(engine, at, "high"))
        with engine.connect() as conn:
            line = machine(conn)
            pgr = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'pgrouting'")).scalar()
    finally:
        engine.dispose()
        if not args.keep:
            drop_databases(server, [name])
    median = statistics.median(road_times)
    print(f"""## Flood response per alarm (issue 14, water-logging)

Machine: {line}, pgRouting {pgr}; {datetime.now(timezone.utc):%Y-%m-%d}. `python benchmarks/scenario_flood.py
--rounds {args.rounds}`: the sample city + the scenario's sample layers (265 compounds, 31 roads → routable
network, 40 pump trucks), {len(road_times)} water-level alarms ({args.rounds} rounds × every monitoring point),
each answered by `respond_to_alarm` in its own transaction (commit included): affected compounds, buildings,
addresses and underground parts, nearest 5 available pump trucks, cases to 条 and 块 ({compounds / max(1, len(road_times)):.1f}
compounds per alarm on average).

| what | median / p90 / max (ms) | target | ratio (median / target) |
|---|---:|---:|---:|
| whole response, trucks by road ({sorted(set(methods))}) | {_stats(road_times)} | 1,000 | {median:.2f}× |
| nearest 5 trucks by road alone (`nearest_trucks`) | {_stats(nearest)} | | |
| whole response, roads removed ({sorted(set(straight_methods))}) | {_stats(straight_times)} | | |
""")


if __name__ == "__main__":
    main()
