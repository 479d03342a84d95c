"""Benchmark: the case loop's intake and evaluation speed (issue 11).

Run by hand (not a test):  .venv/bin/python benchmarks/cases.py [--cases 20000] [--single 1000] [--keep]

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up`, with CIM_HOME set). Creates
throwaway databases on it (dropped at the end unless --keep), each a copy of the sample city
(`cim samples load`):

(a) `cim cases import FILE` of N realistic cases over the sample city — doors of its address layer written
    as a hotline would, points on its parts for part classes (WGS84, as a patrol app sends them), every
    小类 of the catalogue, a share of addresses no gazetteer knows (manual queue), 12345 tickets — timed
    end to end as a subprocess, set-based (the default) and one case at a time (`--one-by-one`, on the
    first `--single` rows) side by side; then the same import in-process with its phases timed, and the
    physical limit: COPY of the very rows it wrote (cases and log) into empty copies of the tables.
(b) `cases.evaluation.evaluate` per unit over 1,000,000 synthetic cases, generated with one
    `generate_series` INSERT (statuses, deadlines, closures, rework and extensions in realistic shares,
    over a year, spread over the city's real grids, departments and persons); median of 3 per unit, for
    the whole year and for one month.

Prints a Markdown section (also written to benchmarks/work/cases.md).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.scratch import create_database, drop_databases, machine  # noqa: E402
from cases import batch as batch_module  # noqa: E402
from cases.calendar import LOCAL  # noqa: E402
from cases.catalogue import all_classes  # noqa: E402
from cases.evaluation import UNITS, evaluate  # noqa: E402
from cases.importer import import_cases  # noqa: E402
from cim.bootstrap import downgrade, initialise  # noqa: E402
from cim.database import database_url, dispose_engines, engine_for  # noqa: E402

WORK = ROOT / "benchmarks" / "work"
SAMPLES = ROOT / "data_samples"
CIM = str(Path(sys.executable).with_name("cim"))
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=LOCAL)
IMPORT_TARGET = 5_000  # cases/s
EVAL_TARGET_S = 2.0
FIELDS = ("channel", "class", "description", "address", "x", "y", "crs", "urgency", "external_id",
          "reporter_contact", "reported_at")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)






def run_cim(url: str, *args: str, tree: Path | None = None) -> tuple[str, float]:
    """``cim ARGS`` against ``url`` (from another checkout's packages with ``tree``): stdout, wall seconds."""
    start = time.perf_counter()
    command = [CIM, *args] if tree is None else [sys.executable, "-c", "from cim.cli.main import run; run()", *args]
    env = {**os.environ, "CIM_DATABASE_URL": url} | ({"PYTHONPATH": str(tree)} if tree is not None else {})
    done = subprocess.run(command, env=env, cwd=tree or ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"cim {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout, seconds


# --- (a) import --------------------------------------------------------------------------------

def hotline_rows(engine: sa.Engine, n: int, seed: int, unlocatable: float = 0.05) -> list[dict[str, str]]:
    """N reports over the sample city, as a hotline system exports them."""
    rng = random.Random(seed)
    with engine.begin() as conn:
        classes = [c for c in all_classes(conn) if c.parent_code]
        doors = conn.execute(sa.text(
            "SELECT road, lane, door_number FROM addresses WHERE valid_to IS NULL AND road IS NOT NULL "
            "AND door_number IS NOT NULL")).all()
        parts = defaultdict(list)
        for subclass, lon, lat in conn.execute(sa.text(
                "SELECT part_subclass, ST_X(p), ST_Y(p) FROM (SELECT part_subclass, ST_Transform(geom, 4326) AS p "
                "FROM parts WHERE valid_to IS NULL) AS q")):
            parts[subclass].append((lon, lat))
    channels = ("hotline_12345", "hotline_12345", "hotline_12345", "grid_patrol", "vehicle_patrol", "police_110",
                "media", "public")
    start = NOW - timedelta(days=1)
    rows = []
    for i in range(n):
        cls = rng.choice(classes)
        channel = "grid_patrol" if cls.is_part and parts.get(cls.code) else rng.choice(channels)
        row = {"channel": channel, "class": cls.code if rng.random() < 0.7 else cls.name,
               "description": f"{cls.name}，请尽快处理（{i}）", "urgency": "emergency" if rng.random() < 0.05 else "normal",
               "external_id": f"B{seed}-{i:07d}",
               "reporter_contact": f"13{rng.randrange(10**9):09d}" if channel == "hotline_12345" else "",
               "reported_at": (start + timedelta(seconds=86_400 * i / n)).isoformat()}
        if cls.is_part and parts.get(cls.code):
            lon, lat = rng.choice(parts[cls.code])
            row.update(x=repr(lon + rng.uniform(-2e-5, 2e-5)), y=repr(lat + rng.uniform(-2e-5, 2e-5)), crs="EPSG:4326")
        elif rng.random() < unlocatable:
            row["address"] = f"{rng.choice(['火星路', '月球街', '银河大道'])}{rng.randrange(1, 999)}号"
        else:
            road, lane, door = rng.choice(doors)
            row["address"] = f"{road}{lane + '弄' if lane else ''}{door}号" + rng.choice(["", "门口", "附近", "对面"])
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@contextmanager
def phases_timed(totals: dict[str, float]):
    """Time cases.batch's steps (wrapping the module's functions for the duration of one run)."""
    names = ("_known_and_ids", "_locate_all", "_parts", "_duplicates", "_events", "_event_lines", "_copy")
    saved = {name: getattr(batch_module, name) for name in names if hasattr(batch_module, name)}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - t
        return wrapper
    for name, fn in saved.items():
        setattr(batch_module, name, timed(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(batch_module, name, fn)


def copy_limit(engine: sa.Engine) -> dict[str, float]:
    """COPY of the rows the import wrote (cases and their log) into empty copies of the tables with
    the same indexes: what writing them costs at the least."""
    out = {}
    with engine.begin() as conn:
        raw = conn.connection.dbapi_connection
        cur = raw.cursor()
        for table in ("cases", "case_events"):
            buf = io.StringIO()
            cur.copy_expert(f"COPY {table} TO STDOUT", buf)
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
            conn.execute(sa.text(f"CREATE TEMP TABLE copy_{table} (LIKE {table} INCLUDING DEFAULTS INCLUDING INDEXES)"))
            buf.seek(0)
            t = time.perf_counter()
            cur.copy_expert(f"COPY copy_{table} FROM STDIN", buf)
            out[table] = time.perf_counter() - t
            out[f"{table}_rows"] = rows
        conn.rollback()
    return out


def measure_import(server: str, template: str, n: int, single: int, seed: int, dbs: list[str]) -> dict:
    tag = uuid.uuid4().hex[:6]
    url_b = create_database(server, f"casebench_batch_{tag}", template)
    url_s = create_database(server, f"casebench_single_{tag}", template)
    url_p = create_database(server, f"casebench_phases_{tag}", template)
    dbs += [f"casebench_batch_{tag}", f"casebench_single_{tag}", f"casebench_phases_{tag}"]
    rows = hotline_rows(engine_for(url_b), n, seed)
    src = write_csv(WORK / "cases_import.csv", rows)
    src_single = write_csv(WORK / "cases_import_single.csv", rows[:single])
    src_batch_small = write_csv(WORK / "cases_import_small.csv", rows[:single])
    out: dict = {"n": n, "single_n": single}
    log(f"(a) cim cases import, set-based, {n:,} cases …")
    stdout, out["batch_s"] = run_cim(url_b, "cases", "import", str(src), "--now", NOW.isoformat())
    out["batch_summary"] = stdout.strip().split(": ", 1)[-1]
    log(f"(a) cim cases import --one-by-one, {single:,} cases …")
    stdout, out["single_s"] = run_cim(url_s, "cases", "import", str(src_single), "--now", NOW.isoformat(),
                                      "--one-by-one")
    out["single_summary"] = stdout.strip().split(": ", 1)[-1]
    # the set-based path on the same small file, into a fresh copy, for a like-for-like ratio
    url_bs = create_database(server, f"casebench_small_{tag}", template)
    dbs.append(f"casebench_small_{tag}")
    _, out["batch_small_s"] = run_cim(url_bs, "cases", "import", str(src_batch_small), "--now", NOW.isoformat())
    log("(a) the same import in-process, its phases timed …")
    totals: dict[str, float] = defaultdict(float)
    engine = engine_for(url_p)
    t = time.perf_counter()
    with phases_timed(totals):
        import_cases(engine, src, now=NOW)
    out["inproc_s"] = time.perf_counter() - t
    out["phases"] = dict(totals)
    log("(a) raw COPY of the same rows …")
    out["copy"] = copy_limit(engine_for(url_b))
    return out


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def database_cpu(url: str) -> float:
    """CPU seconds of the database server so far: its postmaster with the backends it has reaped, and the
    live ones (the embedded cluster is this benchmark's alone)."""
    with engine_for(url).connect() as conn:
        backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == postmaster:
            total += sum(int(v) for v in fields[11:15]) / tick
        elif int(fields[1]) == postmaster:
            total += sum(int(v) for v in fields[11:13]) / tick
    return total


def import_before_after(server: str, template: str, src: Path, before: Path, runs: int,
                        dbs: list[str], before_template: str | None = None) -> list[dict]:
    """`cim cases import` of the same file end to end, from this checkout and from ``before``, in turns
    (which goes first alternating), each into a fresh copy of the template (``before``'s into a copy of
    ``before_template`` when given: the schema it was written for): wall, CPU of the command, CPU of the
    database server, load."""
    out = []
    for run in range(runs):
        order = [("this checkout", None), ("before", before)]
        for label, tree in (order if run % 2 == 0 else order[::-1]):
            name = f"casebench_ba_{uuid.uuid4().hex[:6]}"
            url = create_database(server, name, before_template if tree is not None and before_template
                                  else template)
            dbs.append(name)
            load = os.getloadavg()[0]
            cpu, db_cpu = cpu_of_children(), database_cpu(url)
            _, wall = run_cim(url, "cases", "import", str(src), "--now", NOW.isoformat(), tree=tree)
            out.append({"tree": label, "wall": wall, "cpu": cpu_of_children() - cpu,
                        "db_cpu": database_cpu(url) - db_cpu, "load": (load, os.getloadavg()[0])})
            log(f"    {label}: {wall:.1f} s, CPU {out[-1]['cpu']:.1f} s + database {out[-1]['db_cpu']:.1f} s")
            dispose_engines()
    return out


def render_before_after(rows: list[dict], n: int) -> str:
    lines = [f"| `cim cases import`, {n:,} rows, end to end | wall s | cases/s | CPU s of the command | CPU s of the "
             "database | load (1 min) |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['tree']} | {r['wall']:.2f} | {n / r['wall']:,.0f} | {r['cpu']:.2f} | {r['db_cpu']:.2f} | "
                     f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |")
    for tree in dict.fromkeys(r["tree"] for r in rows):
        mine = [r for r in rows if r["tree"] == tree]
        lines.append(f"| **{tree}, median** | {statistics.median(r['wall'] for r in mine):.2f} | "
                     f"{n / statistics.median(r['wall'] for r in mine):,.0f} | "
                     f"{statistics.median(r['cpu'] for r in mine):.2f} | "
                     f"{statistics.median(r['db_cpu'] for r in mine):.2f} | |")
    return "\n".join(lines)


# --- (b) evaluation ----------------------------------------------------------------------------

SYNTHETIC = """
WITH g AS (SELECT array_agg(grid_code ORDER BY grid_code) AS codes, array_agg(street_code ORDER BY grid_code) AS streets,
                  array_agg(district_code ORDER BY grid_code) AS districts FROM grids WHERE valid_to IS NULL),
     d AS (SELECT array_agg(code ORDER BY code) AS codes, array_agg(name ORDER BY code) AS names FROM departments),
     p AS (SELECT array_agg(name ORDER BY name, id) AS names, array_agg(coalesce(contact, '') ORDER BY name, id)
                  AS contacts FROM persons),
     k AS (SELECT array_agg(code ORDER BY code) AS codes FROM case_classes WHERE parent_code IS NOT NULL),
     s AS (SELECT i, random() AS r, random() AS r2, random() AS r3,
                  :start + (i::float8 / :n) * interval '365 days' AS reg
           FROM generate_series(1, :n) AS i)
INSERT INTO cases (channel, external_id, class_code, urgency, status, reported_at, registered_at,
                   dispatched_at, handled_at, closed_at, due_at, district_code, street_code, grid_code,
                   department_code, department_name, post_code, person_name, person_contact, rework_count,
                   extension_count, overdue)
SELECT 'hotline_12345', 'SYN-' || i, k.codes[1 + (i % cardinality(k.codes))],
       CASE WHEN r3 < 0.05 THEN 'emergency' ELSE 'normal' END,
       CASE WHEN r < 0.03 THEN 'not_registered' WHEN r < 0.05 THEN 'merged' WHEN r < 0.90 THEN 'closed'
            WHEN r < 0.94 THEN 'accepted' WHEN r < 0.97 THEN 'dispatched' ELSE 'handled' END,
       reg - interval '20 minutes', reg, reg + interval '2 minutes',
       CASE WHEN r >= 0.05 AND r < 0.90 OR r >= 0.97 THEN reg + (r2 * 120) * interval '1 hour' END,
       CASE WHEN r >= 0.05 AND r < 0.90 THEN reg + (r2 * 120 + 2) * interval '1 hour' END,
       reg + interval '72 hours',
       g.districts[1 + (i % cardinality(g.codes))], g.streets[1 + (i % cardinality(g.codes))],
       g.codes[1 + (i % cardinality(g.codes))],
       d.codes[1 + ((i / 7) % cardinality(d.codes))], d.names[1 + ((i / 7) % cardinality(d.codes))], 'P',
       p.names[1 + ((i / 3) % cardinality(p.names))], p.contacts[1 + ((i / 3) % cardinality(p.names))],
       CASE WHEN r3 < 0.06 THEN 1 ELSE 0 END, CASE WHEN r2 > 0.95 THEN 1 ELSE 0 END, r2 > 0.6 AND r >= 0.90
FROM s, g, d, p, k
"""


def measure_evaluation(server: str, template: str, n: int, dbs: list[str]) -> dict:
    name = f"casebench_eval_{uuid.uuid4().hex[:6]}"
    url = create_database(server, name, template)
    dbs.append(name)
    engine = engine_for(url)
    start = datetime(2025, 12, 1, tzinfo=LOCAL)
    log(f"(b) generating {n:,} synthetic cases …")
    t = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text(SYNTHETIC), {"start": start, "n": n})
    gen_s = time.perf_counter() - t
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE cases"))
    out: dict = {"n": n, "generate_s": gen_s, "periods": {}}
    periods = {"the year": (start, start + timedelta(days=365)),
               "one month": (start + timedelta(days=150), start + timedelta(days=180))}
    for label, (a, b) in periods.items():
        per_unit = {}
        for unit in UNITS:
            times = []
            for _ in range(3):
                with engine.connect() as conn:
                    t = time.perf_counter()
                    result = evaluate(conn, unit, a, b)
                    times.append(time.perf_counter() - t)
            per_unit[unit] = (statistics.median(times), len(result), sum(r.registered for r in result))
            log(f"    {label} by {unit}: {per_unit[unit][0]:.2f} s, {len(result)} units")
        out["periods"][label] = per_unit
    with engine.connect() as conn:
        out["plan"] = "\n".join(r[0] for r in conn.execute(sa.text(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) FROM cases c WHERE c.registered_at >= "
            ":a AND c.registered_at < :b AND c.status NOT IN ('merged', 'not_registered')"),
            {"a": periods["one month"][0], "b": periods["one month"][1]}))
    return out


# --- report ------------------------------------------------------------------------------------

def render(imp: dict, ev: dict, machine_text: str) -> str:
    rate_b = imp["n"] / imp["batch_s"]
    rate_s = imp["single_n"] / imp["single_s"]
    rate_bs = imp["single_n"] / imp["batch_small_s"]
    c = imp["copy"]
    lines = [
        "## Cases: `cim cases import` and evaluation (issue 11)", "",
        f"`benchmarks/cases.py`, {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. **Machine:** {machine_text}. "
        "Other engineers' processes share the 2 cores during the run.", "",
        "### (a) `cim cases import` (end to end: a subprocess reading the CSV, checking every row, geocoding, "
        "grid lookup, part binding, dispatch, cases and log rows written)", "",
        "| path | cases | s | cases/s | ÷ target 5,000/s |", "|---|---:|---:|---:|---:|",
        f"| set-based (default), chunks of 2,000 | {imp['n']:,} | {imp['batch_s']:.1f} | {rate_b:,.0f} | "
        f"{rate_b / IMPORT_TARGET:.2f}× |",
        f"| set-based, first {imp['single_n']:,} rows | {imp['single_n']:,} | {imp['batch_small_s']:.1f} | "
        f"{rate_bs:,.0f} | {rate_bs / IMPORT_TARGET:.2f}× |",
        f"| one at a time (`--one-by-one`), same {imp['single_n']:,} rows | {imp['single_n']:,} | "
        f"{imp['single_s']:.1f} | {rate_s:,.0f} | {rate_s / IMPORT_TARGET:.3f}× |", "",
        f"Set-based ÷ one at a time on the same rows: {rate_bs / rate_s:.0f}×. Outcome: {imp['batch_summary']}.", "",
        f"Where the time goes (the same {imp['n']:,} cases in-process, {imp['inproc_s']:.1f} s):", "",
        "| step | s | share |", "|---|---:|---:|"]
    phases = imp["phases"]
    named = {"_known_and_ids": "tickets already in and case ids (1 statement)", "_locate_all": "geocode + grid lookup",
             "_parts": "part binding (LATERAL KNN)",
             "_duplicates": "duplicate suggestions", "_events": "log rows built (Python)",
             "_event_lines": "log rows built as COPY text (Python)",
             "_copy": "COPY of cases and log rows (buffers built + sent)"}
    for key, label in named.items():
        lines.append(f"| {label} | {phases.get(key, 0):.2f} | {phases.get(key, 0) / imp['inproc_s']:.0%} |")
    rest = imp["inproc_s"] - sum(phases.values())
    lines += [f"| reading + checking the file, dispatch rule, the rest | {rest:.2f} | "
              f"{rest / imp['inproc_s']:.0%} |", "",
              f"Physical limit: COPY of the very rows written into empty copies of the tables with the same "
              f"indexes: {c['cases_rows']:,} cases in {c['cases']:.2f} s and {c['case_events_rows']:,} log rows in "
              f"{c['case_events']:.2f} s — {c['cases_rows'] / (c['cases'] + c['case_events']):,.0f} cases/s "
              "for the writing alone.", "",
              f"### (b) Evaluation over {ev['n']:,} synthetic cases (generated in {ev['generate_s']:.0f} s with "
              "one `generate_series` INSERT)", "",
              "Median of 3 calls of `cases.evaluation.evaluate` (one SQL statement) per unit; target ≤ 2 s.", "",
              "| period | unit | units | cases in cohort | s | ÷ target |", "|---|---|---:|---:|---:|---:|"]
    for label, per_unit in ev["periods"].items():
        for unit, (s, units, cohort) in per_unit.items():
            lines.append(f"| {label} | {unit} | {units:,} | {cohort:,} | {s:.2f} | {s / EVAL_TARGET_S:.2f}× |")
    lines += ["", "Plan of the one-month cohort scan:", "", "```", ev["plan"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20_000, help="cases imported set-based (default 20,000)")
    parser.add_argument("--single", type=int, default=1_000, help="of them, imported one at a time too")
    parser.add_argument("--evaluation", type=int, default=1_000_000, help="synthetic cases for (b)")
    parser.add_argument("--only", choices=("import", "evaluation"))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--before", type=Path, help="only: `cim cases import` end to end from this checkout and "
                        "from another (e.g. the base commit unpacked by git archive), in turns, --runs times each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before-revision", help="with --before: its imports go into a copy of the sample city "
                        "migrated down to this revision (the schema the before tree was written for, e.g. "
                        "0010_case_import)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    server = database_url()
    template = f"casebench_city_{uuid.uuid4().hex[:6]}"
    dbs = [template]
    try:
        url = create_database(server, template)
        initialise(engine_for(url))
        log("loading the sample city …")
        run_cim(url, "samples", "load", "--directory", str(SAMPLES), "--json")
        with engine_for(url).connect() as conn:
            machine_text = machine(conn)
            all_classes(conn)  # seed the catalogue once, in the template
            conn.commit()
        dispose_engines()
        if args.before:  # only the end-to-end import, from both checkouts in turns
            rows = hotline_rows(engine_for(url), args.cases, args.seed)
            dispose_engines()
            src = write_csv(WORK / "cases_import.csv", rows)
            before_template = None
            if args.before_revision:
                before_template = f"{template}_before"
                dbs.append(before_template)
                downgrade(engine_for(create_database(server, before_template, template)), args.before_revision)
                dispose_engines()
            table = render_before_after(import_before_after(server, template, src, args.before.resolve(), args.runs,
                                                            dbs, before_template), args.cases)
            print(table)
            return
        imp = measure_import(server, template, args.cases, args.single, args.seed, dbs) \
            if args.only != "evaluation" else None
        ev = measure_evaluation(server, template, args.evaluation, dbs) if args.only != "import" else None
    finally:
        dispose_engines()
        if args.keep:
            log(f"kept databases {', '.join(dbs)}")
        else:
            drop_databases(server, dbs)
    report = render(imp, ev, machine_text) if imp and ev else repr(imp or ev)
    (WORK / "cases.md").write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
