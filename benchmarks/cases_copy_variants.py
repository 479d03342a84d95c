"""Benchmark: what the schema costs the import's writes — COPY of an imported base's cases and their log (the very
rows `cim cases import` wrote) into a copy of the sample city under schema variants (the layer-version trigger
as it was, skipped by its WHEN; without the log's or the class's foreign key; without each index of `cases`),
each variant in a transaction rolled back, rounds alternating; reported as the CPU seconds of the database backend
(from /proc; wall time at a shared machine's load says little).

Run by hand (not a test):
  .venv/bin/python benchmarks/cases_copy_variants.py SOURCE_URL TARGET_URL [--rounds N] [--variants A,B]
  SOURCE_URL: a base `benchmarks/cases.py --keep` imported into (e.g. casebench_batch_…)
  TARGET_URL: a fresh copy of its template (the sample city, no cases), on the same server as this process, at
              revision 0010_case_import (``benchmarks/cases.py --before-revision`` keeps one: its …_before)
"""
from __future__ import annotations

import argparse
import io
import os
import statistics

import psycopg2

from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path


def _migration_0011():  # noqa: ANN202 (a module)
    """Migration 0011_case_keys, for its statements (the keys checked once per statement by trigger)."""
    path = Path(__file__).resolve().parents[1] / "cim" / "migrations" / "versions" / "0011_case_keys.py"
    spec = spec_from_file_location("migration_0011_case_keys", path)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_M0011 = _migration_0011()

CASE_COLUMNS = (
    "id, channel, external_id, class_code, urgency, description, address_text, geocode, district_code, "
    "street_code, community_code, grid_code, part_object_code, reporter_contact, status, reported_at, registered_at, "
    "dispatched_at, due_at, department_code, department_name, post_code, person_name, person_contact, "
    "dispatch_reason, manual_reason, attributes, version, geom")
EVENT_COLUMNS = "case_id, at, actor, role, action, from_status, to_status, note, data, district_code"
INDEXES = ["ix_cases_class_reported", "ix_cases_geom", "ix_cases_manual", "ix_cases_open_due",
           "ix_cases_registered_at", "ix_cases_status"]
VARIANTS: dict[str, list[str]] = {
    "as now": [],
    "no layer trigger": ["ALTER TABLE cases DISABLE TRIGGER cases_bump_layer_version"],
    "trigger WHEN skipped": [
        "DROP TRIGGER cases_bump_layer_version ON cases",
        "CREATE CONSTRAINT TRIGGER cases_bump_layer_version AFTER INSERT OR UPDATE OR DELETE ON cases DEFERRABLE "
        "INITIALLY DEFERRED FOR EACH ROW WHEN (current_setting('cim.case_features_bumped', true) IS DISTINCT FROM "
        "'1') EXECUTE FUNCTION case_features_changed()",
        "SELECT set_config('cim.case_features_bumped', '1', true)"],
    "no events FK": ["ALTER TABLE case_events DROP CONSTRAINT case_events_case_id_fkey"],
    "no class FK": ["ALTER TABLE cases DROP CONSTRAINT cases_class_code_fkey"],
    "bare (no trig, no FKs)": ["ALTER TABLE cases DISABLE TRIGGER cases_bump_layer_version",
                               "ALTER TABLE case_events DROP CONSTRAINT case_events_case_id_fkey",
                               "ALTER TABLE cases DROP CONSTRAINT cases_class_code_fkey"],
    # migration 0011_case_keys (the TARGET must be at 0010_case_import, with the two foreign keys)
    "keys by statement (0011)": ["ALTER TABLE case_events DROP CONSTRAINT case_events_case_id_fkey",
                                 "ALTER TABLE cases DROP CONSTRAINT cases_class_code_fkey", _M0011._FUNCTIONS,
                                 *[sql for key in _M0011.KEYS for sql in _M0011._triggers(*key)]],
    "keys by statement + trigger WHEN skipped (0011 as the import runs)": [
        "ALTER TABLE case_events DROP CONSTRAINT case_events_case_id_fkey",
        "ALTER TABLE cases DROP CONSTRAINT cases_class_code_fkey", _M0011._FUNCTIONS,
        *[sql for key in _M0011.KEYS for sql in _M0011._triggers(*key)],
        "SELECT set_config('cim.case_features_bumped', '1', true)"],
    **{f"no {index}": [f"DROP INDEX {index}"] for index in INDEXES},
}
CASE_CHUNK, EVENT_CHUNK = 2000, 6000  # the import's chunk: 2,000 cases and their ~3 log rows each


def dump(url: str, table: str, columns: str) -> list[str]:
    """The table's rows as COPY text lines, in id order."""
    conn = psycopg2.connect(url)
    try:
        out = io.StringIO()
        conn.cursor().copy_expert(f"COPY (SELECT {columns} FROM {table} ORDER BY id) TO STDOUT", out)
        return out.getvalue().splitlines(keepends=True)
    finally:
        conn.close()


def backend_cpu(pid: int) -> float:
    """User + system CPU seconds of a backend on this machine."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def copy_in(cur, table: str, columns: str, lines: list[str], chunk: int) -> None:  # noqa: ANN001 (DBAPI cursor)
    for i in range(0, len(lines), chunk):
        cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", io.StringIO("".join(lines[i:i + chunk])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source_url")
    parser.add_argument("target_url")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=None, help="comma-separated names (\"as now\" is always run)")
    args = parser.parse_args()
    variants = VARIANTS if args.variants is None else {
        k: v for k, v in VARIANTS.items() if k == "as now" or k in args.variants.split(",")}
    cases = dump(args.source_url, "cases", CASE_COLUMNS)
    events = dump(args.source_url, "case_events", EVENT_COLUMNS)
    print(f"{len(cases)} cases, {len(events)} log rows")
    results = {name: {"cases": [], "events": [], "deferred": []} for name in variants}
    conn = psycopg2.connect(args.target_url)
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    conn.rollback()
    for round_ in range(args.rounds):  # alternating order: a busy spell does not favour one variant
        names = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
        for name in names:
            cur = conn.cursor()
            for statement in variants[name]:
                cur.execute(statement)
            t0 = backend_cpu(pid)
            copy_in(cur, "cases", CASE_COLUMNS, cases, CASE_CHUNK)
            t1 = backend_cpu(pid)
            copy_in(cur, "case_events", EVENT_COLUMNS, events, EVENT_CHUNK)
            t2 = backend_cpu(pid)
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the deferred triggers' and keys' work, as at commit
            t3 = backend_cpu(pid)
            conn.rollback()
            for key, seconds in zip(("cases", "events", "deferred"), (t1 - t0, t2 - t1, t3 - t2)):
                results[name][key].append(seconds)
    conn.close()
    for name, parts in results.items():
        m = {k: statistics.median(v) for k, v in parts.items()}
        print(f"CPU {name:24s} cases {m['cases']:.3f}  events {m['events']:.3f}  deferred {m['deferred']:.3f}  "
              f"total {sum(m.values()):.3f}")


if __name__ == "__main__":
    main()
