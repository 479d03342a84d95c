"""A project-local PostgreSQL + PostGIS cluster under ``$CIM_HOME``.

Why not the machine's default cluster: the platform must never touch it, and a developer or CI
must get a working base with no step by hand. initdb refuses to run as root, so as root the
server runs as an unprivileged system user (``postgres`` when the distribution created it, else
one we create). It listens on loopback and a private socket directory only, with a random
password kept in ``$CIM_HOME`` (mode 0600).
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cim.config import cim_home, settings
from cim.errors import UserError

SUPERUSER = "cim"
DATABASE = "cim"
SERVICE_USER_FALLBACK = "cim-postgres"


class ClusterError(UserError):
    """The embedded cluster cannot be created, started or reached; the message says why."""


def find_pg_bindir() -> Path:
    """The newest installed PostgreSQL server whose share dir has PostGIS."""
    candidates: list[tuple[int, Path]] = []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.isdigit() and (entry / "bin" / "initdb").exists():
                candidates.append((int(entry.name), entry / "bin"))
    if not candidates:
        pg_config = shutil.which("pg_config")
        if pg_config:
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
            if (Path(bindir) / "initdb").exists():
                return Path(bindir)
        raise ClusterError(
            "no PostgreSQL server found: install 'postgresql' and 'postgresql-NN-postgis-3' "
            "(Debian/Ubuntu: run 'make setup' as root), or set CIM_DATABASE_URL"
        )
    candidates.sort(reverse=True)
    for version, bindir in candidates:
        if Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists():
            return bindir
    version = candidates[0][0]
    raise ClusterError(
        f"PostgreSQL {version} is installed but PostGIS is not: install 'postgresql-{version}-postgis-3' "
        "(Debian/Ubuntu: 'make setup' as root does it)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_user() -> str | None:
    """The OS user the server runs as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVICE_USER_FALLBACK):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER_FALLBACK],
        check=True,
    )
    return SERVICE_USER_FALLBACK


@dataclass
class Cluster:
    """One embedded cluster rooted at ``home`` (``$CIM_HOME`` by default)."""

    home: Path

    @classmethod
    def default(cls) -> "Cluster":
        return cls(cim_home())

    @property
    def datadir(self) -> Path:
        return self.home / "pgdata"

    @property
    def socketdir(self) -> Path:
        return self.home / "run"

    @property
    def statefile(self) -> Path:
        return self.home / "cluster.json"

    @property
    def logfile(self) -> Path:
        return self.home / "postgres.log"

    def _state(self) -> dict:
        if not self.statefile.exists():
            raise ClusterError(f"no embedded cluster under {self.home}: run 'cim db up' first")
        return json.loads(self.statefile.read_text())

    def state(self) -> dict:
        """Port, password and bindir of the cluster (and ``citus_workers`` for a Citus coordinator)."""
        return self._state()

    def update_state(self, **values: object) -> None:
        self.statefile.write_text(json.dumps({**self._state(), **values}))
        os.chmod(self.statefile, 0o600)

    def url(self) -> str:
        st = self._state()
        return f"postgresql://{SUPERUSER}:{st['password']}@127.0.0.1:{st['port']}/{DATABASE}"

    def _run_pg(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        user = _service_user()
        cmd = ([ "runuser", "-u", user, "--"] if user else []) + args
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise ClusterError(f"{Path(args[0]).name} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def _give_to_service_user(self, *paths: Path) -> None:
        user = _service_user()
        if not user:
            return
        pw = pwd.getpwnam(user)
        for path in paths:
            os.chown(path, pw.pw_uid, pw.pw_gid)
            for root, dirs, files in os.walk(path):
                os.chown(root, pw.pw_uid, pw.pw_gid)
                for f in files:
                    os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)
        # The service user must be able to reach the data directory through its parents.
        parent = self.home
        while parent != parent.parent:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
            parent = parent.parent

    def initialise(self, bindir: Path | None = None, extra_conf: str = "", password: str | None = None) -> None:
        """initdb; ``bindir``, ``extra_conf`` and ``password`` are for the nodes of a Citus cluster
        (:mod:`cim.citus`: its server, ``shared_preload_libraries``, one password on every node)."""
        bindir = bindir or find_pg_bindir()
        self.home.mkdir(parents=True, exist_ok=True)
        password = password or secrets.token_urlsafe(18)
        port = _free_port()
        pwfile = self.home / "pwfile"
        pwfile.write_text(password + "\n")
        self.socketdir.mkdir(exist_ok=True)
        self.datadir.mkdir(mode=0o700, exist_ok=True)
        self._give_to_service_user(self.datadir, self.socketdir, pwfile)
        self._run_pg([
            str(bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER, f"--pwfile={pwfile}",
            # text compares byte by byte (collation C): the same order as C.UTF-8's (code points), but through
            # memcmp and abbreviated keys instead of strcoll, so the B-trees over codes and source ids build 3–4×
            # faster (docs/benchmarks.md); character classes (upper, regex, ILIKE) keep C.UTF-8's
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--lc-collate=C",
        ])
        pwfile.unlink()
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{self.socketdir}'\n"
                "fsync = on\nshared_buffers = '256MB'\nmax_wal_size = '2GB'\n"
                "maintenance_work_mem = '512MB'\nwork_mem = '32MB'\n" + extra_conf
            )
        self._give_to_service_user(self.datadir)
        state = {"port": port, "password": password, "bindir": str(bindir)}
        self.statefile.write_text(json.dumps(state))
        os.chmod(self.statefile, 0o600)

    def is_running(self) -> bool:
        if not self.statefile.exists() or not (self.datadir / "PG_VERSION").exists():
            return False
        bindir = Path(self._state()["bindir"])
        return self._run_pg([str(bindir / "pg_ctl"), "-D", str(self.datadir), "status"], check=False).returncode == 0

    def up(self, bindir: Path | None = None, extra_conf: str = "", password: str | None = None,
           wal_level: str | None = None) -> str:
        """Create (first time) and start the cluster, make the database with PostGIS; return its URL.
        ``bindir``, ``extra_conf`` and ``password`` are for a new cluster's initdb (see :meth:`initialise`);
        ``wal_level`` (default: the ``CIM_DB_WAL_LEVEL`` setting) is written before each start."""
        if not (self.datadir / "PG_VERSION").exists():
            if self.datadir.exists():
                shutil.rmtree(self.datadir)
            self.initialise(bindir, extra_conf, password)
        if not self.is_running():
            self._set_wal_level(wal_level or settings().db_wal_level)
            st = self._state()
            # the port recorded at initdb may have been taken meanwhile by someone else: move to a free one
            if not _port_is_free(st["port"]):
                st = self._move_to_port(_free_port())
            bindir = Path(st["bindir"])
            self.logfile.touch()
            self._give_to_service_user(self.logfile)
            self._run_pg([str(bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                          "-w", "-t", "60", "start"])
        self._ensure_database()
        return self.url()

    def _set_wal_level(self, level: str) -> None:
        """Write ``wal_level`` (and what it needs) into the cluster's configuration, replacing an earlier
        value: a cluster made before the setting existed (no line: PostgreSQL's default, replica) takes it at
        this start. Why minimal by default: a first load creates its staged tables in the transaction that
        COPYs them, and an index build makes a new file, so with minimal neither writes WAL (their files are
        synced at commit instead); minimal needs max_wal_senders = 0 (no standby can connect)."""
        wanted = {"wal_level": f"'{level}'", "max_wal_senders": "0" if level == "minimal" else "10"}
        conf = self.datadir / "postgresql.auto.conf"
        lines = [line for line in conf.read_text().splitlines()
                 if line.split("=")[0].strip() not in wanted]
        conf.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in wanted.items())]) + "\n")

    def _move_to_port(self, port: int) -> dict:
        """Listen on ``port`` from now on (the server's own setting and the URL we hand out); the new state."""
        conf = self.datadir / "postgresql.auto.conf"
        lines = [line for line in conf.read_text().splitlines() if not line.strip().startswith("port =")]
        conf.write_text("\n".join([*lines, f"port = {port}"]) + "\n")
        st = {**self._state(), "port": port}
        self.statefile.write_text(json.dumps(st))
        os.chmod(self.statefile, 0o600)
        return st

    def _ensure_database(self) -> None:
        import psycopg2

        st = self._state()
        deadline = time.time() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=st["port"], user=SUPERUSER,
                                        password=st["password"], dbname="postgres")
                break
            except psycopg2.OperationalError as exc:
                if time.time() > deadline:
                    raise ClusterError(f"embedded cluster not reachable: {exc}") from exc
                time.sleep(0.3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DATABASE}"')
        conn.close()

    def down(self, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is pg_ctl's (``immediate`` for a throwaway cluster: no checkpoint)."""
        if self.is_running():
            bindir = Path(self._state()["bindir"])
            self._run_pg([str(bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"])

    def reset(self) -> str:
        """Throw the cluster away and start a new empty one."""
        self.down()
        self.remove()
        return self.up()

    def remove(self) -> None:
        """Delete the (stopped) cluster's data, socket directory and state."""
        for path in (self.datadir, self.socketdir, self.statefile):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now. PostgreSQL binds with SO_REUSEADDR, so the
    connections of a server stopped moments ago (TIME_WAIT, about a minute) do not keep it from
    listening again; only another listener does — so the probe binds the same way."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
