"""Faults of the database under a load, and the one test-only hook that lets tests cause them.

A load is one transaction, so a lost server or connection leaves the base as it was; what the
user must get is one line saying so, not psycopg2's traceback (where the cause hides under the
``InterfaceError: connection already closed`` of the rollback that followed).

``CIM_FAULT_PAUSE_AT=PHASE`` (test-only, inert unless set) makes a loader stop the first time it
reaches PHASE — one of :data:`PHASES` — print ``CIM_FAULT_PAUSED PHASE`` on stderr and wait for a
line on stdin, holding its transaction open. A fault-injection test can thus kill the loader, stop
the database or read the base at exactly that phase, without sleeps.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import sqlalchemy as sa

from cim.config import settings
from cim.database import DatabaseUnavailableError
from cim.errors import UnavailableError

#: reading the first batch · COPY of the first batch sent · staging table indexed ·
#: merge statements run · about to commit
PHASES = ("reading", "copy", "index", "merge", "commit")
_paused: set[str] = set()


def pause_at(phase: str) -> None:
    """The test hook: see the module's docstring. Does nothing unless ``CIM_FAULT_PAUSE_AT`` is ``phase``."""
    if settings().fault_pause_at != phase or phase in _paused:
        return
    _paused.add(phase)
    print(f"CIM_FAULT_PAUSED {phase}", file=sys.stderr, flush=True)
    sys.stdin.readline()


class LoadInterrupted(UnavailableError):
    """The database stopped answering during the load; nothing of it was committed."""


@contextmanager
def database_faults(layer: str) -> Iterator[None]:
    """Turn the database going away (stopped, restarted, connection killed) into one clear error."""
    try:
        yield
    except (psycopg2.OperationalError, psycopg2.InterfaceError, sa.exc.OperationalError,
            sa.exc.InterfaceError, DatabaseUnavailableError) as exc:
        what, then = _cause(exc)
        raise LoadInterrupted(f"load of {layer} stopped: {what}; nothing of this load was committed — {then}") from exc


def _cause(exc: BaseException) -> tuple[str, str]:
    """What happened, with the server's own first line (e.g. 'terminating connection due to administrator
    command') or what the client saw; and what to do."""
    # a DatabaseUnavailableError (the engine's word for a lost connection) carries the driver's error as its cause
    orig = getattr(exc, "orig", None) or exc.__cause__ or exc
    first = next((line.strip() for line in str(orig).splitlines() if line.strip()), type(orig).__name__)
    code = getattr(orig, "pgcode", None) or ""
    if code == "53100":  # disk_full: the transaction is rolled back, so the base keeps its last state
        return (f"the database ran out of disk space ({first})",
                "free space on the database server's disk and run it again")
    if code.startswith("53"):  # out of memory, too many connections: the server's resources, not the data
        return f"the database ran out of resources ({first})", "run it again when the server is less busy"
    if code and not code.startswith(("08", "57")):  # not a connection or shutdown error: e.g. a timeout
        return f"the database cancelled it ({first})", "run it again"
    if not code and "connection to server" in first:  # libpq could not connect at all
        return f"the database could not be reached ({first})", "start it ('cim db up') or check CIM_DATABASE_URL"
    return (f"the connection to the database was lost ({first})",
            "run it again once the database is back ('cim db status')")
