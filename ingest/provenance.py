"""Every load is a run: opened inside the load's transaction (so a killed load leaves no trace),
finished with its counts, or — when refused as a whole — recorded as failed in a transaction of its own."""
from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.config import settings
from ingest.faults import pause_at
from ingest.report import IngestReport


def operator_name(explicit: str | None) -> str:
    """Who ran the load: as given, else ``CIM_OPERATOR``, else the OS user."""
    return explicit or settings().operator or getpass.getuser()


@contextmanager
def load_transaction(engine: Engine, report: IngestReport) -> Iterator:
    """A DBAPI cursor in one transaction: committed at the end, or rolled back on error and on dry runs."""
    raw = engine.raw_connection()
    try:
        yield raw.cursor()
        pause_at("commit")
        if report.dry_run:
            raw.rollback()
            report.run_id = None
        else:
            raw.commit()
    except BaseException:
        try:
            raw.rollback()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # the connection is gone, and the server rolled the transaction back with it: the error
            # that is on its way says why, this one ('connection already closed') would only hide it
            raw.invalidate()
        raise
    finally:
        raw.close()


def start_run(cur, report: IngestReport, operator: str, options: dict) -> None:
    cur.execute("INSERT INTO ingest_runs (layer, mode, operator, options) VALUES (%s, %s, %s, %s) RETURNING id",
                (report.layer, report.mode, operator, json.dumps(options, ensure_ascii=False)))
    report.run_id = cur.fetchone()[0]


def _files_json(report: IngestReport) -> str:
    return json.dumps([f.__dict__ for f in report.files], ensure_ascii=False)


def finish_run(cur, report: IngestReport) -> None:
    r = report
    cur.execute("""UPDATE ingest_runs SET finished_at = now(), status = %s, files = %s, crs = %s, encoding = %s,
        n_read = %s, n_inserted = %s, n_updated = %s, n_unchanged = %s, n_closed = %s, n_rejected = %s,
        duration_s = %s, message = %s WHERE id = %s""",
                (r.status, _files_json(r), ", ".join(sorted({f.crs for f in r.files if f.crs})) or None,
                 ", ".join(sorted({f.encoding for f in r.files if f.encoding})) or None,
                 r.read, r.inserted, r.updated, r.unchanged, r.closed, r.rejected, r.duration_s, r.message,
                 r.run_id))


def record_failure(engine: Engine, report: IngestReport, operator: str) -> None:
    """A refused load still leaves a provenance record, but no data."""
    r = report
    with engine.begin() as conn:
        r.run_id = conn.execute(sa.text(
            "INSERT INTO ingest_runs (layer, mode, operator, status, files, n_read, n_rejected, duration_s, "
            "message, finished_at) VALUES (:layer, :mode, :op, 'failed', CAST(:files AS jsonb), :read, :rej, "
            ":dur, :msg, now()) RETURNING id"),
            {"layer": r.layer, "mode": r.mode, "op": operator, "files": _files_json(r), "read": r.read,
             "rej": r.rejected, "dur": r.duration_s, "msg": r.message}).scalar_one()
