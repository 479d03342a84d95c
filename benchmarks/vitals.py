"""Benchmark: computing all vital signs (issue 13: sample city ≤ 5 s, Shanghai-size base ≤ 2 min).

Run by hand (not a test):
    .venv/bin/python benchmarks/vitals.py sample [--per-day 150] [--keep]
    .venv/bin/python benchmarks/vitals.py scaled [--scale 0.1] [--keep]

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up`, with CIM_HOME set).

* **sample** — a scratch copy of the sample city (every layer through the loaders), a week of simulated
  cases (`cases.simulate`, as `make demo` makes), a day of simulated readings with a rainstorm through the
  ordinary intake with a water-level rule (so alerts are open), then :func:`vitals.compute.compute_vitals`
  timed three times (median; every run replaces the last, so the second and third are the steady state).
* **scaled** — a synthetic city of Shanghai's size times ``--scale``, written with set-based INSERTs
  (the 16 districts, 256 streets and 20,736 unit grids at full size whatever the scale; at scale 1: 15 M parts, 500,000 pipeline segments
  ≈ 85,000 km, 1.5 M buildings, 13,000 curtain walls, 100,000 IoT devices with an hour of readings and
  2,000 open alarms, 300,000 cases over 90 days, 10 M addresses); then the same timing, with the slowest
  indicators listed. The indexes of the big tables (all but their primary keys) are dropped before the
  INSERTs: the vital signs read those tables whole, and building indexes is not what is measured.

Prints a Markdown section (also written to benchmarks/work/vitals-<mode>.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scratch import create_database, drop_databases, machine  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402
from vitals.compute import compute_vitals  # noqa: E402

WORK = ROOT / "benchmarks" / "work"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed_runs(engine: sa.Engine, at: datetime, runs: int = 3) -> tuple[list[float], dict]:
    seconds, report = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        report = compute_vitals(engine, at)
        seconds.append(time.perf_counter() - t0)
        log(f"compute_vitals: {seconds[-1]:.2f} s, {report.values} values")
    return seconds, report.as_dict()


# --- the sample city -------------------------------------------------------------------------------------

def sample(server: str, per_day: int, dbs: list[str]) -> dict:
    from cases.simulate import simulate
    from ingest.run import IngestOptions, ingest_files
    from sensing.rules import RuleSpec, add_rule
    from sensing.simulate import Storm, simulate_readings, store_simulated

    url = create_database(server, f"cim_bench_vitals_{uuid.uuid4().hex[:8]}")
    dbs.append(url.rsplit("/", 1)[1])
    engine = engine_for(url)
    initialise(engine)
    for e in json.loads((ROOT / "data_samples" / "manifest.json").read_text(encoding="utf-8")):
        if e["layer"] == "iot-readings":
            continue
        ingest_files(e["layer"], [ROOT / "data_samples" / e["path"]],
                     IngestOptions(crs=e["crs"], encoding=e["encoding"], layer_name=e["layer_name"], x=e["x"],
                                   y=e["y"], z=e["z"], wkt=e["wkt"], address_column=e["address_column"],
                                   mapping=e["map"] or {}, operator="bench"), engine)
    log("sample city loaded")
    simulate(engine, days=7, seed=1, per_day=per_day)
    log("a week of cases simulated")
    with engine.begin() as conn:
        add_rule(conn, RuleSpec(name="积水", kind="level", device_type="水位计", quantity="water_level",
                                direction="above", warning=1.0, alarm=1.5, hysteresis=0.2, case_class="道路积水"))
    now = datetime.now(timezone.utc)
    start = now - timedelta(hours=24)
    with engine.connect() as conn:
        frame = simulate_readings(conn, start, hours=24, every_min=10, storm=Storm(peak_after_h=23.5, hours=2), seed=13)
    store_simulated(engine, frame, batch=5000)
    log(f"{len(frame)} readings stored")
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.text(
            "SELECT 'parts', count(*) FROM parts UNION ALL SELECT 'cases', count(*) FROM cases UNION ALL "
            "SELECT 'alerts open', count(*) FROM iot_alerts WHERE cleared_at IS NULL UNION ALL "
            "SELECT 'readings', count(*) FROM iot_readings")).all())
        text = machine(conn)
    seconds, report = timed_runs(engine, datetime.now(timezone.utc))
    return {"machine": text, "counts": counts, "seconds": seconds, "report": report}


# --- a synthetic Shanghai-size city ----------------------------------------------------------------------

SIDE = 144          # grids per side at scale 1 (20,736 grids of 500 m)
GRID_M = 500.0
STREET_BLOCK = 9    # 9 × 9 grids per street
DISTRICT_BLOCK = 36  # 4 × 4 streets per district
X0, Y0 = 600_000.0, 3_420_000.0


def _code_parts(x: str, y: str) -> tuple[str, str, str]:
    """SQL for the district, street and grid codes of the cell at (x, y) in metres from the origin."""
    i, j = f"floor(({x}) / {GRID_M})::int", f"floor(({y}) / {GRID_M})::int"
    district = f"('31' || lpad(({i} / {DISTRICT_BLOCK} * 4 + {j} / {DISTRICT_BLOCK})::text, 4, '0'))"
    street = f"({district} || lpad((({i} % {DISTRICT_BLOCK}) / {STREET_BLOCK} * 4 + ({j} % {DISTRICT_BLOCK}) / {STREET_BLOCK})::text, 3, '0'))"
    grid = f"({street} || lpad((({i} % {STREET_BLOCK}) * {STREET_BLOCK} + {j} % {STREET_BLOCK})::text, 6, '0'))"
    return district, street, grid


def _codes(x: str, y: str) -> str:
    return ", ".join(_code_parts(x, y))


def scaled(server: str, scale: float, dbs: list[str]) -> dict:
    from cases.catalogue import ensure_seeded
    from cim.readings import ensure_month_partitions

    side = SIDE  # the areas at full size whatever the scale: the cost per area is measured as it is, that per row scales
    extent = side * GRID_M
    n = {k: max(1, int(v * scale)) for k, v in {
        "parts": 15_000_000, "pipelines": 500_000, "buildings": 1_500_000, "curtain_walls": 13_000,
        "devices": 100_000, "alarms": 2_000, "cases": 300_000, "addresses": 10_000_000}.items()}
    url = create_database(server, f"cim_bench_vitals_{uuid.uuid4().hex[:8]}")
    dbs.append(url.rsplit("/", 1)[1])
    engine = engine_for(url)
    initialise(engine)
    with engine.begin() as conn:
        ensure_seeded(conn)
        # the computation reads these tables whole (sequential scans); their indexes only slow the INSERTs
        for name in conn.execute(sa.text(
                "SELECT i.indexname FROM pg_indexes i WHERE i.schemaname = 'public' AND i.tablename IN "
                "('parts', 'pipelines', 'buildings', 'addresses', 'iot_devices', 'curtain_walls') "
                "AND i.indexname NOT LIKE '%pkey'")).scalars():
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
    since = "now() - interval '2 years'"
    rx, ry = f"random() * {extent}", f"random() * {extent}"
    steps = {
        "grids": f"""INSERT INTO grids (source_id, grid_code, name, district_code, street_code, valid_from, geom)
            SELECT 'G' || (i * {side} + j), {_code_parts('x', 'y')[2]}, 'grid', {_code_parts('x', 'y')[0]}, {_code_parts('x', 'y')[1]},
                   {since}, ST_Multi(ST_Force3D(ST_MakeEnvelope({X0} + i * {GRID_M}, {Y0} + j * {GRID_M},
                   {X0} + (i + 1) * {GRID_M}, {Y0} + (j + 1) * {GRID_M}, 4549)))
            FROM (SELECT i, j, i * {GRID_M} + 1 AS x, j * {GRID_M} + 1 AS y
                  FROM generate_series(0, {side} - 1) i, generate_series(0, {side} - 1) j) s""",
        "streets": """INSERT INTO streets (source_id, code, name, district_code, valid_from, geom)
            SELECT street_code, street_code, 'street ' || street_code, min(district_code), min(valid_from),
                   ST_Multi(ST_Force3D(ST_Envelope(ST_Collect(geom)))) FROM grids GROUP BY street_code""",
        "districts": """INSERT INTO districts (source_id, code, name, valid_from, geom)
            SELECT district_code, district_code, 'district ' || district_code, min(valid_from),
                   ST_Multi(ST_Force3D(ST_Envelope(ST_Collect(geom)))) FROM grids GROUP BY district_code""",
        "parts": f"""INSERT INTO parts (source_id, object_code, part_class, part_subclass, status, valid_from,
                district_code, street_code, grid_code, geom)
            SELECT 'P' || k, '31' || lpad(k::text, 14, '0'), left(sc, 2), sc,
                   CASE WHEN r < 0.05 THEN '破损' WHEN r < 0.07 THEN '丢失' WHEN r < 0.10 THEN '占用' ELSE '完好' END,
                   {since}, {_codes('x', 'y')}, ST_SetSRID(ST_MakePoint({X0} + x, {Y0} + y, 0), 4549)
            FROM (SELECT k, {rx} AS x, {ry} AS y, random() AS r,
                         (ARRAY['0101','0102','0103','0104','0105','0106','0110','0201','0202','0203','0205',
                                '0301','0302','0303','0402','0405','0406','0407','0501','0601'])[1 + (k % 20)] AS sc
                  FROM generate_series(1, {n['parts']}) k) s""",
        "pipelines": f"""INSERT INTO pipelines (source_id, kind, year_laid, start_depth, end_depth, valid_from,
                district_code, street_code, grid_code, geom)
            SELECT 'L' || k, (ARRAY['给水','排水','雨水','污水','燃气','电力','通信','热力','工业'])[1 + k % 9],
                   1960 + (k::bigint * 7919) % 66, CASE WHEN k % 20 = 0 THEN NULL ELSE 1.2 END,
                   CASE WHEN k % 20 = 0 THEN NULL ELSE 1.4 END, {since}, {_codes('x', 'y')},
                   ST_SetSRID(ST_MakeLine(ST_MakePoint({X0} + x, {Y0} + y, 0), ST_MakePoint({X0} + x + 170, {Y0} + y, 0)), 4549)
            FROM (SELECT k, random() * ({extent} - 171) AS x, {ry} AS y FROM generate_series(1, {n['pipelines']}) k) s""",
        "buildings": f"""INSERT INTO buildings (source_id, height, floors, use, year_built, structure, valid_from,
                district_code, street_code, grid_code, geom)
            SELECT 'B' || k, 20, 6, (ARRAY['住宅','办公','商业','教育','工业','医疗'])[1 + k % 6], 1930 + (k::bigint * 31) % 95,
                   (ARRAY['钢混','砖混','钢结构'])[1 + k % 3], {since}, {_codes('x', 'y')},
                   ST_Multi(ST_Force3D(ST_MakeEnvelope({X0} + x, {Y0} + y, {X0} + x + 20, {Y0} + y + 20, 4549)))
            FROM (SELECT k, random() * ({extent} - 21) AS x, random() * ({extent} - 21) AS y
                  FROM generate_series(1, {n['buildings']}) k) s""",
        "curtain_walls": f"""INSERT INTO curtain_walls (source_id, year_installed, last_inspection_date, inspection_result,
                valid_from, district_code, street_code, grid_code)
            SELECT 'CW' || k, 1990 + k % 35, CASE WHEN k % 9 = 0 THEN NULL ELSE current_date - (k % 3000) END,
                   (ARRAY['合格','需整改','不合格','合格','合格'])[1 + k % 5], {since}, {_codes('x', 'y')}
            FROM (SELECT k, {rx} AS x, {ry} AS y FROM generate_series(1, {n['curtain_walls']}) k) s""",
        "addresses": f"""INSERT INTO addresses (source_id, valid_from, district_code, street_code, grid_code, geom)
            SELECT 'A' || k, {since}, {_codes('x', 'y')}, ST_SetSRID(ST_MakePoint({X0} + x, {Y0} + y, 0), 4549)
            FROM (SELECT k, {rx} AS x, {ry} AS y FROM generate_series(1, {n['addresses']}) k) s""",
        "iot_devices": f"""INSERT INTO iot_devices (source_id, device_type, valid_from, district_code, street_code, grid_code, geom)
            SELECT 'D' || k, (ARRAY['井盖传感器','水位计','燃气探测器','烟感探测器','倾角传感器'])[1 + k % 5], {since},
                   {_codes('x', 'y')}, ST_SetSRID(ST_MakePoint({X0} + x, {Y0} + y, 0), 4549)
            FROM (SELECT k, {rx} AS x, {ry} AS y FROM generate_series(1, {n['devices']}) k) s""",
        "iot_readings": """INSERT INTO iot_readings (device_id, time, quantity, value)
            SELECT d.source_id, date_trunc('minute', now()) - m * interval '10 minutes', 'level', random()
            FROM iot_devices d, generate_series(0, 5) m WHERE d.fid % 20 <> 0""",
        "iot_alerts": f"""INSERT INTO iot_alerts (rule_id, device_id, quantity, level, opened_at, grid_code)
            SELECT 1, d.source_id, 'level', 'alarm', now() - interval '30 minutes', d.grid_code
            FROM iot_devices d WHERE d.fid % {max(1, n['devices'] // n['alarms'])} = 0""",
        "cases": f"""INSERT INTO cases (channel, class_code, urgency, status, reported_at, registered_at, closed_at, due_at,
                rework_count, extension_count, district_code, street_code, grid_code)
            SELECT (ARRAY['grid_patrol','hotline_12345','public','iot','media'])[1 + k % 5],
                   (ARRAY['E0102','E0105','E0503','E0504','E0201','E0302','0101','0202'])[1 + k % 8],
                   CASE WHEN k % 25 = 0 THEN 'emergency' ELSE 'normal' END,
                   CASE WHEN closed THEN 'closed' ELSE 'dispatched' END, t, t + interval '5 minutes',
                   CASE WHEN closed THEN t + (k % 96) * interval '1 hour' END, t + interval '48 hours',
                   (k % 17 = 0)::int, (k % 23 = 0)::int, {_codes('x', 'y')}
            FROM (SELECT k, {rx} AS x, {ry} AS y, now() - random() * interval '90 days' AS t, random() < 0.85 AS closed
                  FROM generate_series(1, {n['cases']}) k) s""",
    }
    ensure_month_partitions(engine, {(d.year, d.month) for d in (datetime.now(timezone.utc),
                                                                 datetime.now(timezone.utc) - timedelta(hours=1))})
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO iot_rules (id, name, kind, quantity, device_type, warning, alarm) "
                             "VALUES (1, 'bench', 'level', 'level', '水位计', 0.8, 0.9)"))
    for table, sql in steps.items():
        t0 = time.perf_counter()
        with engine.begin() as conn:
            rows = conn.execute(sa.text(sql)).rowcount
        log(f"{table}: {rows:,} rows in {time.perf_counter() - t0:.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        counts = dict(conn.execute(sa.text(
            "SELECT 'grids', count(*) FROM grids UNION ALL SELECT 'streets', count(*) FROM streets UNION ALL "
            "SELECT 'districts', count(*) FROM districts UNION ALL SELECT 'parts', count(*) FROM parts UNION ALL "
            "SELECT 'pipelines km', round(sum(ST_Length(geom)) / 1000) FROM pipelines UNION ALL "
            "SELECT 'buildings', count(*) FROM buildings UNION ALL SELECT 'addresses', count(*) FROM addresses UNION ALL "
            "SELECT 'devices', count(*) FROM iot_devices UNION ALL SELECT 'readings', count(*) FROM iot_readings "
            "UNION ALL SELECT 'cases', count(*) FROM cases")).all())
        size = conn.execute(sa.text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
        text = machine(conn)
    log(f"synthetic city: {counts}, {size}")
    seconds, report = timed_runs(engine, datetime.now(timezone.utc))
    return {"machine": text, "counts": counts, "size": size, "scale": scale, "seconds": seconds, "report": report}


def render(mode: str, result: dict) -> str:
    median = statistics.median(result["seconds"])
    slow = sorted(result["report"]["per_indicator"].items(), key=lambda kv: -kv[1]["seconds"])[:6]
    lines = [f"### {mode}: {', '.join(f'{k} {v:,.0f}' for k, v in result['counts'].items())}"
             + (f" ({result['size']} on disk, scale {result['scale']})" if "size" in result else ""), "",
             f"Machine: {result['machine']}", "",
             f"compute_vitals: {result['report']['indicators']} indicators, {result['report']['values']:,} values; "
             f"runs {', '.join(f'{s:.2f}' for s in result['seconds'])} s (median {median:.2f} s)", "",
             "source scans (last run): " + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in result["report"]["sources"].items()),
             "", "slowest indicator statements: " + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in slow)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("sample", "scaled"))
    parser.add_argument("--per-day", type=int, default=150)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    server = database_url()
    dbs: list[str] = []
    try:
        result = sample(server, args.per_day, dbs) if args.mode == "sample" else scaled(server, args.scale, dbs)
    finally:
        if not args.keep:
            drop_databases(server, dbs)
    text = render(args.mode, result)
    WORK.mkdir(exist_ok=True)
    (WORK / f"vitals-{args.mode}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
