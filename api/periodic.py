"""Periodic jobs of the server: the case tick (overdue marking and escalation), the offline-device check,
the vital signs.

One list, :data:`PERIODIC_JOBS`: a job is a name, the deployment setting that holds its interval in
seconds (0 = off) and a function ``(engine, now)``. Adding a job is one line there (and its setting
in :class:`cim.config.DeploymentSettings` with a row in the README's table).

The app's lifespan starts :func:`run_periodic_jobs` when at least one interval is set. Several
server processes (``cim serve --workers N``, or several machines on one database) may all run it:
each run of a job first takes a PostgreSQL session advisory lock named after the job with
``pg_try_advisory_lock`` and skips the run when another process holds it, so a job never runs
twice at once. A failing run is logged and the job runs again at its next interval: one bad run
does not stop the server or the other jobs.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from cases.lifecycle import tick
from cim.config import DeploymentSettings
from cim.database import engine_for
from sensing.offline import check_offline
from vitals.compute import compute_vitals

log = logging.getLogger("cim.periodic")

#: the first key of every job's advisory lock (the second is the job name's CRC-32): the project's own
#: namespace, so the locks cannot meet another application's on a shared server
LOCK_NAMESPACE = 4549_0


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    interval_setting: str  # a field of DeploymentSettings: seconds between runs, 0 = off
    run: Callable[[Engine, datetime], object]


def _cases_tick(engine: Engine, now: datetime) -> object:
    """Mark overdue cases and escalate them (street → district → city), as ``cim cases tick`` does."""
    with engine.begin() as conn:
        return tick(conn, now)


PERIODIC_JOBS: tuple[PeriodicJob, ...] = (
    PeriodicJob("cases.tick", "cases_tick_s", _cases_tick),
    # "no data for N minutes" rules hold against the clock, not against arriving readings
    PeriodicJob("iot.offline", "iot_offline_check_s", check_offline),
    # the indicators' time series: one row per indicator, level and area each run
    PeriodicJob("vitals.compute", "vitals_compute_s", compute_vitals),
)


def lock_key(name: str) -> int:
    """The job's advisory lock key (a signed 32-bit int, as PostgreSQL's two-key form wants)."""
    crc = zlib.crc32(name.encode("utf-8"))
    return crc - (1 << 32) if crc >= (1 << 31) else crc


def run_once(engine: Engine, job: PeriodicJob, now: datetime | None = None) -> bool:
    """Run ``job`` now unless another process is running it; True if it ran. The lock is held on
    a connection of its own for the run, so the job's own transactions are free to commit."""
    key = {"ns": LOCK_NAMESPACE, "key": lock_key(job.name)}
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:ns, :key)"), key).scalar():
            conn.rollback()
            return False
        conn.commit()  # the session lock outlives this; no transaction stays open during the run
        try:
            job.run(engine, now or datetime.now(timezone.utc))
            return True
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, :key)"), key)
            conn.commit()


def enabled_jobs(deployment: DeploymentSettings) -> list[tuple[PeriodicJob, float]]:
    """The jobs whose interval is set, with it."""
    out = []
    for job in PERIODIC_JOBS:
        seconds = float(getattr(deployment, job.interval_setting))
        if seconds > 0:
            out.append((job, seconds))
    return out


async def _every(engine: Engine, job: PeriodicJob, seconds: float) -> None:
    while True:
        try:
            ran = await run_in_threadpool(run_once, engine, job)
            log.debug("periodic job %s %s", job.name, "ran" if ran else "skipped: another process runs it")
        except Exception:  # logged, and tried again at the next interval
            log.exception("periodic job %s failed", job.name)
        await asyncio.sleep(seconds)


async def run_periodic_jobs(engine: Engine, deployment: DeploymentSettings) -> None:
    """Run every enabled job at its interval until cancelled (the app's lifespan cancels it)."""
    jobs = enabled_jobs(deployment)
    if not jobs:
        return
    await asyncio.gather(*(_every(engine, job, seconds) for job, seconds in jobs))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's lifespan: the enabled jobs run while the server does. They write through an
    engine of their own — the API's pool gives up on lock waits after a moment, a tick must not."""
    state = app.state.cim
    task = None
    if enabled_jobs(state.deployment):
        engine = engine_for(state.engine.url.render_as_string(hide_password=False))
        task = asyncio.create_task(run_periodic_jobs(engine, state.deployment))
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
