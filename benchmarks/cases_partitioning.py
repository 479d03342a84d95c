"""Should the case loop's and the readings' tables be LIST-partitioned by district on one node, as the feature layers
are? Measured on one node, on a scratch base (docs/benchmarks.md, "Cases and readings by district"):

* ``cases``: the real table (migration 0004 + 0009) with N synthetic cases over 16 districts, against a copy
  LIST-partitioned by district (one partition per district, primary key ``(id, district_code)``, the same indexes).
  Timed: a case by id (what every action, the API's ``/cases/{id}`` and the log do), the same naming its district,
  a street's open cases (the API's list for a street-scoped caller; also on the plain table with an index on
  ``(street_code, reported_at)``, which it lacks), and the insert of the rows.
* ``iot_readings``: retention. A month of readings leaves either by dropping its month partition (the table is
  RANGE-partitioned by month: migration 0001) or, were it partitioned by district, by a DELETE of the month's rows
  from every district partition. Both timed on M readings.

    .venv/bin/python benchmarks/cases_partitioning.py [--cases 500000] [--readings 1000000]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scratch import create_database, drop_databases, machine  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402

DISTRICTS = [f"3101{n:02d}" for n in (1, 4, 5, 6, 7, 9, 10, 12, 13, 14, 15, 16, 17, 18, 20, 51)]
OPEN = "('dispatched', 'accepted', 'returned', 'handled', 'registered')"


def _timed(conn: sa.Connection, sql: str, params: list[dict]) -> tuple[float, float]:
    """p50 and p99 in ms of ``sql`` over ``params``."""
    times = []
    statement = sa.text(sql)
    for p in params:
        t = time.perf_counter()
        conn.execute(statement, p).all()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def _fill(conn: sa.Connection, table: str, n: int) -> float:
    t = time.perf_counter()
    conn.execute(sa.text(f"""
        INSERT INTO {table} (id, channel, class_code, status, reported_at, district_code, street_code, due_at)
        OVERRIDING SYSTEM VALUE
        SELECT i, 'hotline', 'E01', CASE WHEN i % 10 = 0 THEN 'dispatched' ELSE 'closed' END,
               timestamptz '2026-01-01' + make_interval(secs => i * 30),
               d.code, d.code || lpad((i % 14 + 1)::text, 3, '0'), timestamptz '2026-01-01' + make_interval(secs => i * 31)
        FROM generate_series(1, :n) i JOIN unnest(CAST(:d AS text[])) WITH ORDINALITY d(code, k) ON d.k = i % 16 + 1
    """), {"n": n, "d": DISTRICTS})
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500_000)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    name = f"cim_bench_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    try:
        engine = engine_for(url)
        initialise(engine)
        with engine.begin() as conn:
            print(machine(conn))
            conn.execute(sa.text("INSERT INTO case_classes (code, kind, name) VALUES ('E01', '事件', '市容环境') "
                                 "ON CONFLICT DO NOTHING"))
            conn.execute(sa.text("ALTER TABLE cases DISABLE TRIGGER USER"))  # the layer bump: not what is measured
            # the partitioned copy: same columns, defaults, checks and indexes; the key must hold the district
            conn.execute(sa.text("CREATE TABLE cases_by_district (LIKE cases INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                                 "INCLUDING IDENTITY) PARTITION BY LIST (district_code)"))
            conn.execute(sa.text("ALTER TABLE cases_by_district ADD PRIMARY KEY (id, district_code)"))
            for code in DISTRICTS:
                conn.execute(sa.text(f"CREATE TABLE cases_by_district_{code} PARTITION OF cases_by_district "
                                     f"FOR VALUES IN ('{code}')"))
            for (definition,) in conn.execute(sa.text(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'cases' AND indexname <> 'cases_pkey'")).all():
                definition = definition.replace(" ON public.cases ", " ON cases_by_district ")
                definition = definition.replace("INDEX ix_cases_", "INDEX ix_cbd_")
                conn.execute(sa.text(definition))
        results = {}
        with engine.begin() as conn:
            results["insert"] = (_fill(conn, "cases", args.cases), _fill(conn, "cases_by_district", args.cases))
            conn.execute(sa.text("ANALYZE cases; ANALYZE cases_by_district"))
        rng = random.Random(15)
        ids = [{"id": rng.randint(1, args.cases)} for _ in range(args.lookups)]
        with_district = [{"id": p["id"], "d": DISTRICTS[p["id"] % 16]} for p in ids]
        streets = [{"s": f"{d}{k:03d}", "d": d} for d in DISTRICTS for k in range(1, 15)] * 3
        with engine.connect() as conn:
            for table in ("cases", "cases_by_district"):
                results[f"{table} by id"] = _timed(conn, f"SELECT * FROM {table} WHERE id = :id", ids)
                results[f"{table} by id + district"] = _timed(
                    conn, f"SELECT * FROM {table} WHERE id = :id AND district_code = :d", with_district)
                results[f"{table} street's open cases"] = _timed(
                    conn, f"SELECT id FROM {table} WHERE district_code = :d AND street_code = :s AND status IN {OPEN} "
                          "ORDER BY reported_at DESC LIMIT 100", streets)
            # the plain table with an index for the street's list: what partitioning's gain there is measured against
            conn.execute(sa.text("CREATE INDEX ix_cases_street_reported ON cases (street_code, reported_at)"))
            conn.execute(sa.text("ANALYZE cases"))
            results["cases + street index: street's open cases"] = _timed(
                conn, f"SELECT id FROM cases WHERE district_code = :d AND street_code = :s AND status IN {OPEN} "
                      "ORDER BY reported_at DESC LIMIT 100", streets)
        # readings: a month leaves by DROP of its partition, or by DELETE from district partitions
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE iot_readings_202601 PARTITION OF iot_readings "
                                 "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')"))
            conn.execute(sa.text("CREATE TABLE readings_by_district (LIKE iot_readings INCLUDING DEFAULTS) "
                                 "PARTITION BY LIST (district_code)"))
            conn.execute(sa.text("ALTER TABLE readings_by_district ADD PRIMARY KEY (device_id, quantity, time, "
                                 "district_code)"))
            conn.execute(sa.text("CREATE INDEX ON readings_by_district USING brin (time)"))
            for code in DISTRICTS:
                conn.execute(sa.text(f"CREATE TABLE readings_by_district_{code} PARTITION OF readings_by_district "
                                     f"FOR VALUES IN ('{code}')"))
            for table in ("iot_readings", "readings_by_district"):
                conn.execute(sa.text(f"""INSERT INTO {table} (device_id, quantity, time, value, district_code)
                    SELECT 'D' || (i % 1000), 'water_level', timestamptz '2026-01-01' + make_interval(secs => i * 2),
                           1.0, (CAST(:d AS text[]))[i % 16 + 1] FROM generate_series(0, :n - 1) i"""),
                             {"n": args.readings, "d": DISTRICTS})
        with engine.begin() as conn:
            t = time.perf_counter()
            conn.execute(sa.text("ALTER TABLE iot_readings DETACH PARTITION iot_readings_202601"))
            conn.execute(sa.text("DROP TABLE iot_readings_202601"))
            drop = time.perf_counter() - t
        with engine.begin() as conn:
            t = time.perf_counter()
            conn.execute(sa.text("DELETE FROM readings_by_district WHERE time < '2026-02-01'"))
            delete = time.perf_counter() - t
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            t = time.perf_counter()
            conn.execute(sa.text("VACUUM readings_by_district"))
            vacuum = time.perf_counter() - t
        engine.dispose()
    finally:
        drop_databases(server, [name])
    print(f"cases: {args.cases:,} over {len(DISTRICTS)} districts; readings: {args.readings:,} in one month")
    print(f"insert: plain {results['insert'][0]:.2f} s, by district {results['insert'][1]:.2f} s")
    for key, (p50, p99) in results.items():
        if key != "insert":
            print(f"{key}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    print(f"retention of one month: DETACH + DROP of its partition {drop * 1000:.1f} ms; "
          f"DELETE from district partitions {delete:.2f} s + VACUUM {vacuum:.2f} s")


if __name__ == "__main__":
    main()
