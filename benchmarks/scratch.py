"""What every benchmark needs around its measurement: the machine it ran on (for docs/benchmarks.md) and
scratch databases on the server under test, created (optionally from a template) and dropped again."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

from cim.database import database_url, engine_for

ROOT = Path(__file__).resolve().parents[1]
CIM = str(Path(sys.executable).with_name("cim"))


def machine(conn: sa.Connection) -> str:
    """CPU, cores, memory, Python, PostgreSQL and PostGIS, as one line for a results table."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    pg = conn.execute(sa.text("SHOW server_version")).scalar()
    postgis = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'postgis'")).scalar()
    return (f"{platform.machine()}, {os.cpu_count()} cores ({model}), {ram:.0f} GiB RAM, Python "
            f"{platform.python_version()}, PostgreSQL {pg.split()[0]} + PostGIS {postgis}")


def admin(server: str) -> sa.Engine:
    """An autocommit engine on the server's maintenance database (CREATE/DROP DATABASE)."""
    return sa.create_engine(engine_for(server).url, isolation_level="AUTOCOMMIT")


def create_database(server: str, name: str, template: str | None = None) -> str:
    engine = admin(server)
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    engine.dispose()
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


def drop_databases(server: str, names: list[str]) -> None:
    engine = admin(server)
    with engine.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def run_cim(url: str, *args: str) -> str:
    """The real ``cim`` command against ``url``; its stdout, or the benchmark stops with its stderr."""
    done = subprocess.run([CIM, *args], env={**os.environ, "CIM_DATABASE_URL": url}, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"cim {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def sample_city(prefix: str, keep: bool = False) -> Iterator[str]:
    """A scratch database on the server under test (``CIM_DATABASE_URL`` or the embedded cluster) holding the
    sample city, loaded by ``cim init`` and ``cim samples load``; its URL. Dropped afterwards unless ``keep``."""
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    try:
        run_cim(url, "init")
        run_cim(url, "samples", "load")
        yield url
    finally:
        if not keep:
            drop_databases(server, [name])
