"""Benchmark: a simulated Shanghai day (issue 11) — 60,000 cases through the whole lifecycle on the
sample city (intake → machine dispatch → accept → handle → verify → close, with returns and
re-dispatch, extensions, failed verifications and rework, merges of second reports, the manual
queue, and the tick's overdue marking and escalation), by `cases.simulate` (`cim cases simulate
--days 1 --per-day 60000`). Target: ≤ 3 minutes on this 2-core machine.

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up`, with CIM_HOME set).
Creates a scratch database (dropped at the end unless --keep), runs `cim init` and `cim samples
load`, then times the simulation in-process, with the time per kind of event (each kind is taken
set-based per 10-minute window of simulated time) and where the database spent it.

Prints a Markdown section for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.dispatch_check import check_dispatch  # noqa: E402
from benchmarks.scratch import machine, sample_city  # noqa: E402
from cases import simulate as sim  # noqa: E402
from cases.calendar import LOCAL  # noqa: E402
from cim.database import engine_for  # noqa: E402

CIM = str(Path(sys.executable).with_name("cim"))
TARGET_S = 180.0


class TimedSimulation(sim._Simulation):
    """The simulation, with the wall time and the number of events of each kind recorded."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spent: dict[str, float] = defaultdict(float)
        self.events: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        for kind in ("report", "merge", "accept", "redispatch", "extension", "decide_extension", "handle",
                     "verify", "tick"):
            handler = getattr(self, f"on_{kind}")
            setattr(self, f"on_{kind}", self._timed(kind, handler))

    def _timed(self, kind, handler):
        def run(events):
            started = time.perf_counter()
            handler(events)
            self.spent[kind] += time.perf_counter() - started
            self.events[kind] += len(events)
            self.calls[kind] += 1
        return run


def backend_cpu(engine: sa.Engine) -> dict[int, float]:
    """Backend pid → its CPU seconds (user + system, from /proc), recorded each time a connection of
    ``engine`` goes back to the pool: the database's share of the work, whatever the machine's load."""
    spent: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")

    @sa.event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn, _record) -> None:
        try:
            pid = dbapi_conn.get_backend_pid()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except Exception:  # noqa: BLE001 - a closed connection, another host: not counted
            return
        spent[pid] = (int(fields[11]) + int(fields[12])) / tick
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=60_000, help="reports in the day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    # the sample city in a scratch database (benchmarks.scratch), dropped afterwards unless --keep
    with sample_city("casesday", keep=args.keep) as url:
        try:
            engine = engine_for(url)
            with engine.connect() as conn:
                about = machine(conn)
            start = datetime.combine(date(2026, 11, 23), datetime.min.time(), LOCAL)  # a Monday
            db_cpu = backend_cpu(engine)
            simulation = TimedSimulation(engine, 1, args.seed, start, args.cases)
            load_before = os.getloadavg()
            started, cpu_started = time.perf_counter(), time.process_time()
            report = simulation.run()
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            load_after = os.getloadavg()
            with engine.connect() as conn:
                statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM cases GROUP BY 1")).all())
                events = conn.execute(sa.text("SELECT count(*) FROM case_events")).scalar()
                agreed = check_dispatch(conn)
            print(f"## A simulated Shanghai day: {args.cases:,} cases through the lifecycle (issue 11)\n")
            print(f"`benchmarks/cases_day.py --cases {args.cases}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
                  f"**Machine:** {about}. Other engineers' processes share the 2 cores.\n")
            print(f"| measurement | result | target |\n|---|---:|---:|")
            print(f"| wall time, {report.created:,} cases, {events:,} log rows | {wall:,.1f} s | ≤ {TARGET_S:.0f} s |")
            print(f"| cases/s through the lifecycle | {report.created / wall:,.0f} | ≥ {args.cases / TARGET_S:,.0f} |")
            print(f"| CPU time of the simulating process (Python) | {cpu:,.1f} s | |")
            print(f"| CPU time of its database backends ({len(db_cpu)}) | {sum(db_cpu.values()):,.1f} s | |")
            print(f"| load average (1 min) before / after, on {os.cpu_count()} cores | {load_before[0]:.1f} / "
                  f"{load_after[0]:.1f} | |")
            located = report.created - report.manual_queue
            print(f"| machine-dispatched share of the located cases | {report.machine_dispatched / max(located, 1):.1%} "
                  f"| ≥ 95 % |")
            print(f"| machine dispatches where a hand-written reading of the rule (benchmarks/dispatch_check.py) "
                  f"sends them | {agreed.agreeing:,} of {agreed.checked:,} ({agreed.share:.1%}) | all |\n")
            if agreed.disagreements:
                print(f"Disagreements (case, machine, rule), the first 20: {agreed.disagreements[:20]}\n")
            print("| kind of event | events | windows | s | share |\n|---|---:|---:|---:|---:|")
            for kind, spent in sorted(simulation.spent.items(), key=lambda kv: -kv[1]):
                print(f"| {kind} | {simulation.events[kind]:,} | {simulation.calls[kind]:,} | {spent:.1f} | "
                      f"{spent / wall:.0%} |")
            print(f"\nStatuses at the end of the day: {json.dumps(statuses, ensure_ascii=False)}\n")
            print(f"Simulation report: `{json.dumps(report.as_dict(), ensure_ascii=False)}`")
        finally:
            engine_for(url).dispose()


if __name__ == "__main__":
    main()
