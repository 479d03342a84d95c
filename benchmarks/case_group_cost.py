"""Benchmark: what one group of concurrent case reports costs, in process — the server's own group function
(``app.state.case_intake``, as :mod:`api.cases` installs it) run under a city-wide scope on groups of N new hotline
reports drawn as ``benchmarks/cases_api.py`` draws them (issue 11 speed line: ``POST /cases`` at 500/s).

For each group size: the group thread's CPU, the database backend's CPU (``/proc/<pid>/schedstat`` of the
connection's backend, read around each step) and the wall time a group; and the backend's CPU by step — each
statement through SQLAlchemy, each ``COPY`` and the ``COMMIT``. The fixed cost of a group (what a group of one
costs) against the cost of one report more says how much larger groups would save.

Needs a database server on this machine (its backends' /proc entries are read): CIM_DATABASE_URL, or the
embedded cluster (`cim db up`, with CIM_HOME set). Creates a scratch database with the sample city (dropped
at the end unless --keep).

  .venv/bin/python benchmarks/case_group_cost.py --sizes 1 4 8 16 --groups 200
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cases.batch as batch  # noqa: E402
from benchmarks.cases_api import reports  # noqa: E402
from benchmarks.scratch import machine, sample_city  # noqa: E402


def backend_ns(pid: int) -> int:
    """Nanoseconds the process has run on a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


class StepClock:
    """The backend CPU between one mark and the next, summed per step label."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}  # id(DBAPI connection) → its backend's pid
        self.spent: collections.Counter[str] = collections.Counter()
        self._last: tuple[int, int] | None = None  # (pid, ns) at the last mark
        self.committed: object | None = None  # the DBAPI connection of the last commit (marked once it is done)

    def mark(self, dbapi_connection: object, label: str) -> None:
        pid = self.pids[id(dbapi_connection)]
        now = backend_ns(pid)
        if self._last is not None and self._last[0] == pid:
            self.spent[label] += now - self._last[1]
        self._last = (pid, now)


def instrument(engine: sa.Engine, clock: StepClock) -> None:
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        clock.pids[id(dbapi_connection)] = cursor.fetchone()[0]
        cursor.close()
        dbapi_connection.rollback()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        clock.mark(conn.connection.dbapi_connection, "(between groups)")

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(conn, _cursor, _statement, _parameters, _context, _many) -> None:  # noqa: ANN001
        clock.mark(conn.connection.dbapi_connection, "BEGIN and in between")

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(conn, _cursor, statement, _parameters, _context, _many) -> None:  # noqa: ANN001
        clock.mark(conn.connection.dbapi_connection, " ".join(statement.split())[:60])

    copy = batch._copy

    def timed_copy(conn: sa.Connection, table: str, *args: object, **kwargs: object) -> None:
        clock.mark(conn.connection.dbapi_connection, "BEGIN and in between")
        copy(conn, table, *args, **kwargs)
        clock.mark(conn.connection.dbapi_connection, f"COPY {table}")

    batch._copy = timed_copy

    @sa.event.listens_for(engine, "commit")
    def _commit(conn: sa.Connection) -> None:
        clock.mark(conn.connection.dbapi_connection, "BEGIN and in between")
        clock.committed = conn.connection.dbapi_connection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--groups", type=int, default=200, help="groups timed per size (after 5 unmeasured)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    with sample_city("casegroup", args.keep) as url:
        os.environ["CIM_DATABASE_URL"] = url
        from api.app import create_app
        from api.cases import report_from
        from cim.jurisdiction import Scope, acting_as

        app = create_app()
        engine = app.state.cim.engine
        clock = StepClock()
        instrument(engine, clock)
        engine.dispose()  # connections start-up made: new ones pass the connect hook (their backend's pid)
        run = app.state.case_intake._run  # the server's group function: intake_group and the answers
        with acting_as(Scope("city", role="admin", user="benchmark")):
            with engine.begin() as conn:
                about = machine(conn)
                doors = [r[0] for r in conn.execute(sa.text(
                    "SELECT road || door_number || '号' FROM addresses WHERE valid_to IS NULL AND road IS NOT NULL "
                    "AND door_number IS NOT NULL AND grid_code IS NOT NULL ORDER BY 1"))]
            print(f"## One group of case reports, in process\n\n**Machine:** {about}\n")
            print("| reports a group | group thread CPU ms | backend CPU ms | wall ms |\n|---:|---:|---:|---:|")
            steps: dict[int, collections.Counter[str]] = {}
            for size in args.sizes:
                items = [report_from(b) for b in reports(doors, size * (args.groups + 5), 9, f"G{size}-{time.time()}")]
                for g in range(5):  # warm: connection, kept constants, parse caches
                    run(items[g * size:(g + 1) * size])
                clock.spent.clear()
                thread0, wall0 = time.thread_time(), time.perf_counter()
                for g in range(5, args.groups + 5):
                    out = run(items[g * size:(g + 1) * size])
                    if any(isinstance(o, Exception) for o in out):
                        raise SystemExit(f"a report failed: {next(o for o in out if isinstance(o, Exception))}")
                    clock.mark(clock.committed, "COMMIT")
                thread_ms = (time.thread_time() - thread0) * 1000 / args.groups
                wall_ms = (time.perf_counter() - wall0) * 1000 / args.groups
                steps[size] = collections.Counter(clock.spent)
                print(f"| {size} | {thread_ms:.2f} | {sum(clock.spent.values()) / 1e6 / args.groups:.2f} | "
                      f"{wall_ms:.2f} |")
            print("\nBackend CPU a group by step, ms:\n")
            print("| step | " + " | ".join(f"group of {s}" for s in args.sizes) + " |\n|---|"
                  + "---:|" * len(args.sizes))
            labels = sorted({k for c in steps.values() for k in c}, key=lambda k: -steps[args.sizes[-1]][k])
            for label in labels:
                print(f"| `{label}` | " + " | ".join(f"{steps[s][label] / 1e6 / args.groups:.3f}" for s in args.sizes)
                      + " |")


if __name__ == "__main__":
    main()
