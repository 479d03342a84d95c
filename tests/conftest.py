"""Test fixtures: a real PostGIS for the whole session — a throwaway embedded cluster, or the
server named by CIM_TEST_DATABASE_URL — and a fresh, initialised database per test module that
needs one, so tests never see each other's rows."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from cim.bootstrap import initialise
from cim.database import dispose_engines, engine_for

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"  # real data (data/) and vendored tools (vendor/), beside the clone
SHARED_DATA = SHARED / "data"
CIM = str(Path(sys.executable).with_name("cim"))


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> str:
    """URL of a PostGIS server for this test session (database part: the maintenance db)."""
    external = os.environ.get("CIM_TEST_DATABASE_URL")
    if external:
        yield external
        return
    from cim.cluster import Cluster

    home = tmp_path_factory.mktemp("cim-home")
    cluster = Cluster(home)
    url = cluster.up()
    yield url
    dispose_engines()
    cluster.down()
    shutil.rmtree(home, ignore_errors=True)


def create_database(server_url: str, name: str | None = None) -> str:
    """A new empty database on the test server; returns its URL."""
    name = name or f"cim_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(engine_for(server_url).url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return _with_database(server_url, name)


@pytest.fixture(scope="module", autouse=True)
def _pools_closed_after_each_module():
    """Each module works on databases of its own; their pooled connections (an engine per URL, two with the
    API's reader pool) are closed when it ends, so the session's server never runs out of connections."""
    yield
    dispose_engines()


@pytest.fixture(scope="module")
def db_url(server_url) -> str:
    """A freshly created and initialised city base (default storage CRS) for one test module."""
    url = create_database(server_url)
    initialise(engine_for(url))
    return url


@pytest.fixture(scope="module")
def engine(db_url):
    return engine_for(db_url)


def run_cim(*args: str, db_url: str | None = None, env: dict | None = None, check: bool = True,
            input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``cim`` console command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("CIM_DATABASE_URL",)}
    if db_url:
        full_env["CIM_DATABASE_URL"] = db_url
    full_env.update(env or {})
    proc = subprocess.run([CIM, *args], capture_output=True, text=True, env=full_env, input=input,
                          cwd=cwd or PROJECT)
    if check and proc.returncode != 0:
        raise AssertionError(f"cim {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


#: set to 1 (``.ci/run`` does) to make a missing file of ../shared a failure, not a skip
REQUIRE_SHARED_ENV = "CIM_REQUIRE_SHARED"


def shared_data_required() -> bool:
    """Whether a missing ../shared file fails the test: when asked to (CIM_REQUIRE_SHARED=1), or
    in CI (``CI`` set) while ../shared is there — a skip would then hide a broken path."""
    if os.environ.get(REQUIRE_SHARED_ENV, "").strip() not in ("", "0"):
        return True
    return in_ci() and SHARED.is_dir()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def missing_tool(message: str) -> None:
    """A system tool a test needs is not there (mosquitto, chromium, ogrinfo, npm…): skipped on a
    developer's machine, naming it, but a failure in CI, whose set-up (make test →
    scripts/system-deps.sh, npm ci) installs every one of them — a skip there would hide a broken set-up."""
    if in_ci():
        pytest.fail(f"{message} (CI installs it through make test: the set-up is broken)", pytrace=False)
    pytest.skip(message)


def shared_path(*parts: str, folder: str = "data") -> Path:
    """A file of ../shared/data (the real Shanghai data; ``folder="vendor"`` for ../shared/vendor),
    for every test that reads one.

    Absent on a user's clone: the test is skipped, naming the missing file. Where the data must be
    there (:func:`shared_data_required`) the test fails instead, so CI cannot go green by skipping."""
    path = SHARED.joinpath(folder, *parts)
    if path.exists():
        return path
    if shared_data_required():
        pytest.fail(f"{path} is missing, but ../shared is required here "
                    f"({REQUIRE_SHARED_ENV}=1, or CI with ../shared present)", pytrace=False)
    pytest.skip(f"{path} not present (../shared is only in CI and developer workspaces)")


# --- Citus: a coordinator and two workers (issue 15, item 5) -----------------------------------------

def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "citus: runs against a Citus coordinator + 2 workers (the citus_home "
                                       "fixture); select with -m citus, leave out with -m 'not citus'")


@pytest.fixture(scope="session")
def citus_home(tmp_path_factory) -> Path:
    """``$CIM_HOME`` of a Citus cluster (a coordinator and two workers on loopback) for this session,
    started through the real ``cim db up --workers 2`` from the build in ``.cache/citus`` (``make
    setup`` → scripts/build-citus.sh). Without the Citus source beside the clone: skipped (failed where
    ../shared is required); without the build: skipped on a developer's machine, failed in CI."""
    from cim.citus import CITUS_VERSION, CitusCluster, CitusUnavailableError, citus_bindir

    shared_path(f"citus-{CITUS_VERSION}.tar.gz", folder="vendor")
    try:
        citus_bindir()
    except CitusUnavailableError as exc:
        missing_tool(str(exc))
    home = tmp_path_factory.mktemp("cim-citus")
    try:
        run_cim("db", "up", "--workers", "2", env={"CIM_HOME": str(home)})
        yield home
    finally:
        dispose_engines()
        CitusCluster(home, 2).down("immediate")  # thrown away next: no shutdown checkpoints
        shutil.rmtree(home, ignore_errors=True)
