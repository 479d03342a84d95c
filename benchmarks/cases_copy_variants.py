"""Benchmark: what the schema costs the import's writes — COPY of an imported base's cases and their log (the very
rows `cim cases import` wrote) into a copy of the sample city under schema variants (the layer-version trigger
as it was, skipped by its WHEN; without the log's or the class's foreign key; without each index of `cases`),
each variant in a transaction rolled back, rounds alternating; reported as the CPU seconds of the database backend
(from /proc; wall time at a shared machine's load says little).

Run by hand (not a test):  .venv/bin/python benchmarks/cases_copy_variants.py SOURCE_URL TARGET_URL ROUNDS [VARIANTS]
  SOURCE_URL: a base `benchmarks/cases.py --keep` imported into (e.g. casebench_batch_…)
  TARGET_URL: a fresh copy of its template (the sample city, no cases), on the same server as this process
"""
import io, sys, time, statistics
import psycopg2
src, dst, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def dump(table, cols):
    c = psycopg2.connect(src); cur = c.cursor(); b = io.StringIO()
    cur.copy_expert(f"COPY (SELECT {cols} FROM {table} ORDER BY id) TO STDOUT", b); c.close()
    return b.getvalue().splitlines(keepends=True)
CASE_COLS = ("id, channel, external_id, class_code, urgency, description, address_text, geocode, district_code, "
  "street_code, community_code, grid_code, part_object_code, reporter_contact, status, reported_at, registered_at, "
  "dispatched_at, due_at, department_code, department_name, post_code, person_name, person_contact, dispatch_reason, "
  "manual_reason, attributes, version, geom")
EV_COLS = "case_id, at, actor, role, action, from_status, to_status, note, data, district_code"
cases = dump("cases", CASE_COLS); events = dump("case_events", EV_COLS)
print(len(cases), len(events))
IDX = ["ix_cases_class_reported", "ix_cases_geom", "ix_cases_manual", "ix_cases_open_due", "ix_cases_registered_at", "ix_cases_status"]
variants = {
  "as now": [],
  "no layer trigger": ["ALTER TABLE cases DISABLE TRIGGER cases_bump_layer_version"],
  "trigger WHEN, skipped": ["DROP TRIGGER cases_bump_layer_version ON cases",
     "CREATE CONSTRAINT TRIGGER cases_bump_layer_version AFTER INSERT OR UPDATE OR DELETE ON cases DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (current_setting('cim.case_features_bumped', true) IS DISTINCT FROM '1') EXECUTE FUNCTION case_features_changed()",
     "SELECT set_config('cim.case_features_bumped', '1', true)"],
  "no events FK": ["ALTER TABLE case_events DROP CONSTRAINT case_events_case_id_fkey"],
  "no class FK": ["ALTER TABLE cases DROP CONSTRAINT cases_class_code_fkey"],
  "bare (no trig, no FKs)": ["ALTER TABLE cases DISABLE TRIGGER cases_bump_layer_version",
     "ALTER TABLE case_events DROP CONSTRAINT case_events_case_id_fkey", "ALTER TABLE cases DROP CONSTRAINT cases_class_code_fkey"],
  **{f"no {i}": [f"DROP INDEX {i}"] for i in IDX},
}
if len(sys.argv) > 4: variants = {k: v for k, v in variants.items() if k in sys.argv[4].split(",") or k == "as now"}
res = {k: {"cases": [], "events": [], "commit": []} for k in variants}
conn = psycopg2.connect(dst)
_c = conn.cursor(); _c.execute('SELECT pg_backend_pid()'); PID = _c.fetchone()[0]; conn.rollback()
import os
TICK = os.sysconf('SC_CLK_TCK')
def cpu():
    f = open(f'/proc/{PID}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK
for r in range(rounds):
    names = list(variants) if r % 2 == 0 else list(variants)[::-1]
    for name in names:
        cur = conn.cursor()
        for s in variants[name]: cur.execute(s)
        t = cpu()
        for i in range(0, len(cases), 2000):
            cur.copy_expert(f"COPY cases ({CASE_COLS}) FROM STDIN", io.StringIO("".join(cases[i:i+2000])))
        t1 = cpu()
        for i in range(0, len(events), 6000):
            cur.copy_expert(f"COPY case_events ({EV_COLS}) FROM STDIN", io.StringIO("".join(events[i:i+6000])))
        t2 = cpu()
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
        t3 = cpu()
        conn.rollback()
        for k, v in zip(("cases", "events", "commit"), (t1 - t, t2 - t1, t3 - t2)): res[name][k].append(v)
for name, d in res.items():
    m = {k: statistics.median(v) for k, v in d.items()}
    print(f"CPU {name:24s} cases {m['cases']:.3f}  events {m['events']:.3f}  deferred {m['commit']:.3f}  total {sum(m.values()):.3f}")
