"""Past one node: a Citus cluster (a coordinator and N workers) on loopback under ``$CIM_HOME``.

Where Citus comes from: the PostgreSQL installation when it has the extension (a deployment that
installed Debian's or citusdata's package), else the build of ``scripts/build-citus.sh`` in the
checkout's ``.cache/citus/<version>/stage`` (``make install DESTDIR=…``: the system's PostgreSQL
directories are shared by every cluster on the machine and are never written). PostgreSQL 15 finds
its extensions only under its own share directory, which it derives from where its binary lies; so
the build is used through an *overlay*: a private copy of the server binaries whose share and library
directories hold links to the system's files plus Citus's (``.cache/citus/<version>/pg``). The overlay
is re-linked on each start, so a PostgreSQL minor upgrade or a newly installed extension shows through.

How the nodes know each other: one password for the superuser on every node, handed to Citus in
``pg_dist_authinfo`` (the coordinator and the workers connect to each other over loopback with it).

Which tables go where (reference, distributed on ``district_code``, local): :mod:`cim.distribution`.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cim.cluster import DATABASE, SUPERUSER, Cluster, ClusterError, find_pg_bindir

CITUS_VERSION = "13.2.2"
#: the checkout this package was installed from (editable install: ``make setup``)
PROJECT = Path(__file__).resolve().parents[1]
BUILD = PROJECT / ".cache" / "citus" / CITUS_VERSION
#: binaries run from the overlay: the server and the two tools that find it next to themselves
OVERLAY_BINARIES = ("postgres", "pg_ctl", "initdb")
#: worker nodes' homes, below the coordinator's ($CIM_HOME)
WORKERS_DIR = "workers"


class CitusUnavailableError(ClusterError):
    """Citus is neither installed with PostgreSQL nor built into the checkout's cache."""


def _system_has_citus(bindir: Path) -> bool:
    share = Path(f"/usr/share/postgresql/{bindir.parent.name}/extension/citus.control")
    return share.exists()


def _build_paths() -> dict[str, Path]:
    """Where ``pg_config`` put the files inside the build's stage (written by scripts/build-citus.sh)."""
    if not (BUILD / ".built").exists():
        raise CitusUnavailableError(
            f"Citus {CITUS_VERSION} is not installed with PostgreSQL and not built in {BUILD}: "
            "run 'make setup' (scripts/build-citus.sh builds it from ../shared/vendor/citus-"
            f"{CITUS_VERSION}.tar.gz), or install the citus package for your PostgreSQL")
    lines = (BUILD / "paths").read_text().split()
    return {key: Path(value) for key, value in (line.split("=", 1) for line in lines)}


def citus_bindir() -> Path:
    """The bin directory of a PostgreSQL that has Citus: the system's, or the overlay around the build."""
    system = find_pg_bindir()
    if _system_has_citus(system):
        return system
    paths = _build_paths()
    if paths["bindir"] != system:
        raise CitusUnavailableError(f"the Citus build in {BUILD} is for {paths['bindir']}, but the PostgreSQL "
                                    f"with PostGIS is {system}: delete {BUILD} and run 'make setup' again")
    return _assemble_overlay(paths)


def _link_all(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """``target`` holds a link to every entry of ``source`` (stale links of removed entries dropped)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():
        if entry.is_symlink() and not entry.exists():
            entry.unlink()
    for entry in source.iterdir():
        link = target / entry.name
        if entry.name in skip or link.exists() or link.is_symlink():
            continue
        link.symlink_to(entry)


def _assemble_overlay(paths: dict[str, Path]) -> Path:
    """The overlay under ``BUILD/pg``, mirroring the system's layout so the copied server derives its
    share and library directories (relative to itself) inside the overlay; its bin directory."""
    root = BUILD / "pg"
    stage = BUILD / "stage"
    bindir, libdir, sharedir = (root / str(paths[k]).lstrip("/") for k in ("bindir", "pkglibdir", "sharedir"))
    root.mkdir(exist_ok=True)
    # two processes starting clusters at once (tests, the CLI) must not assemble it over each other
    with open(BUILD / ".overlay.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bindir.mkdir(parents=True, exist_ok=True)
        for name in OVERLAY_BINARIES:
            source, copy = paths["bindir"] / name, bindir / name
            # a copy, not a link: PostgreSQL resolves links to find its own installation
            if not copy.exists() or copy.stat().st_mtime != source.stat().st_mtime \
                    or copy.stat().st_size != source.stat().st_size:
                tmp = copy.with_suffix(".tmp")
                shutil.copy2(source, tmp)
                os.replace(tmp, copy)
        # Citus's own files first (they win), then everything of the system's installation
        _link_all(stage / str(paths["pkglibdir"]).lstrip("/"), libdir)
        _link_all(paths["pkglibdir"], libdir)
        _link_all(paths["sharedir"], sharedir, skip=("extension",))
        _link_all(stage / str(paths["sharedir"]).lstrip("/") / "extension", sharedir / "extension")
        _link_all(paths["sharedir"] / "extension", sharedir / "extension")
    return bindir


#: Citus nodes keep PostgreSQL's default whatever CIM_DB_WAL_LEVEL says: a distributed deployment is the one
#: that needs standbys and shard moves (the latter replicate, which minimal forbids); its loads are not staged
CITUS_WAL_LEVEL = "replica"


def _node_conf() -> str:
    # citus.enable_statistics_collection: no usage reports (the build has no libcurl anyway);
    # max_connections: the coordinator opens connections to every worker per parallel query;
    # shared_buffers: half the single node's (written after it, so it wins): the nodes share one machine
    return ("shared_preload_libraries = 'citus'\n"
            "citus.enable_statistics_collection = off\n"
            "max_connections = 200\n"
            "shared_buffers = '128MB'\n")


@dataclass
class CitusCluster:
    """A coordinator at ``home`` (the embedded cluster's usual place: ``cim db url`` names it) and
    ``workers`` worker nodes at ``home/workers/<i>``, all on loopback."""

    home: Path
    workers: int

    @property
    def coordinator(self) -> Cluster:
        return Cluster(self.home)

    def worker(self, index: int) -> Cluster:
        return Cluster(self.home / WORKERS_DIR / str(index))

    @property
    def nodes(self) -> list[Cluster]:
        return [self.coordinator, *(self.worker(i) for i in range(1, self.workers + 1))]

    @classmethod
    def existing(cls, home: Path) -> "CitusCluster | None":
        """The Citus cluster made earlier under ``home``, or None (no cluster, or a single node)."""
        statefile = Cluster(home).statefile
        if not statefile.exists():
            return None
        workers = json.loads(statefile.read_text()).get("citus_workers")
        return cls(home, int(workers)) if workers else None

    def up(self) -> str:
        """Create (first time) and start every node, register the workers; the coordinator's URL."""
        if self.workers < 1:
            raise ClusterError("a Citus cluster needs at least one worker (--workers N, N >= 1)")
        coordinator = self.coordinator
        earlier = CitusCluster.existing(self.home)
        if coordinator.statefile.exists() and earlier is None:
            raise ClusterError(f"{self.home} holds a single-node cluster: 'cim db reset' it (or use another "
                               "CIM_HOME) before starting a Citus cluster there")
        if earlier is not None and earlier.workers != self.workers:
            raise ClusterError(f"the Citus cluster under {self.home} has {earlier.workers} workers; "
                               f"adding or removing workers is not supported here (reset it to change)")
        bindir = citus_bindir()
        conf = _node_conf()
        password = None
        if coordinator.statefile.exists():
            password = coordinator.state()["password"]
        url = coordinator.up(bindir=bindir, extra_conf=conf, password=password, wal_level=CITUS_WAL_LEVEL)
        password = coordinator.state()["password"]
        coordinator.update_state(citus_workers=self.workers)
        for index in range(1, self.workers + 1):
            self.worker(index).up(bindir=bindir, extra_conf=conf, password=password,
                                    wal_level=CITUS_WAL_LEVEL)
        self._register(password)
        return url

    def _connect(self, node: Cluster):
        import psycopg2

        st = node.state()
        conn = psycopg2.connect(host="127.0.0.1", port=st["port"], user=SUPERUSER, password=st["password"],
                                dbname=DATABASE, connect_timeout=10)
        conn.autocommit = True
        return conn

    def _register(self, password: str) -> None:
        """Citus and PostGIS in every node's database, then the workers known to the coordinator
        (at their current ports: a node that had to move port on restart is updated)."""
        for node in self.nodes:
            conn = self._connect(node)
            with conn.cursor() as cur:
                # only those missing: a worker that holds Citus metadata refuses even CREATE EXTENSION IF NOT EXISTS
                # ("operation is not allowed on this node") — a restart of a cluster with distributed tables
                cur.execute("SELECT extname FROM pg_extension")
                present = {name for (name,) in cur.fetchall()}
                for extension in ("citus", "postgis", "pgcrypto"):
                    if extension not in present:
                        cur.execute(f"CREATE EXTENSION {extension}")
            conn.close()
        conn = self._connect(self.coordinator)
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_dist_authinfo WHERE nodeid = 0 AND rolename = %s", (SUPERUSER,))
            if cur.fetchone() is None:
                cur.execute("INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES (0, %s, %s)",
                            (SUPERUSER, f"password={password}"))
            cur.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.state()["port"],))
            cur.execute("SELECT nodeid, nodeport FROM pg_dist_node WHERE groupid > 0 ORDER BY nodeid")
            registered = cur.fetchall()
            for index in range(1, self.workers + 1):
                port = self.worker(index).state()["port"]
                if index <= len(registered):
                    node_id, old_port = registered[index - 1]
                    if old_port != port:
                        cur.execute("SELECT citus_update_node(%s, '127.0.0.1', %s)", (node_id, port))
                else:
                    cur.execute("SELECT citus_add_node('127.0.0.1', %s)", (port,))
        conn.close()

    def down(self, mode: str = "fast") -> None:
        # workers first: the coordinator is what clients talk to, and it goes last
        for node in reversed(self.nodes):
            node.down(mode)

    def reset(self) -> str:
        self.down()
        for index in range(1, self.workers + 1):
            shutil.rmtree(self.worker(index).home, ignore_errors=True)
        shutil.rmtree(self.home / WORKERS_DIR, ignore_errors=True)
        self.coordinator.remove()
        return self.up()

    def status(self) -> list[tuple[str, int, bool]]:
        """(role, port, running) per node."""
        out = []
        for index, node in enumerate(self.nodes):
            out.append(("coordinator" if index == 0 else f"worker {index}", node.state()["port"], node.is_running()))
        return out

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Until every worker answers the coordinator (after a restart)."""
        deadline = time.time() + timeout_s
        while True:
            try:
                conn = self._connect(self.coordinator)
                with conn.cursor() as cur:
                    cur.execute("SELECT bool_and(result = '1') FROM run_command_on_workers('SELECT 1')")
                    ok = cur.fetchone()[0]
                conn.close()
                if ok:
                    return
            except Exception:  # noqa: BLE001 - still starting: retried until the deadline
                pass
            if time.time() > deadline:
                raise ClusterError("the Citus workers do not answer the coordinator")
            time.sleep(0.5)
