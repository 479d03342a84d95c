"""The first load of a district-partitioned layer (``parts``, ``buildings``…) that has never held a row: each
district's rows are COPYed into a table of their own that has no index yet, the indexes and foreign keys
are then built two at a time on two connections (both cores), and each table is attached as its district's
partition by the load's transaction at its end (the tables built while the next district's rows were read are
attached while the last district's indexes are built). With ``analyze``, each table is also analyzed once its
indexes are in, by the connection that built them, so the load's statistics refresh has only the layer's own
statistics left to make (ingest.statistics).

Why: an index maintained row by row costs far more than the same index built once over the rows (1,000,000
parts, measured: COPY into the indexed table 150 s, COPY into a bare one 8.6 s + every build 29 s on one
connection; docs/benchmarks.md), and building on two connections uses the second core. The partition being
made is no table a reader uses, so no reader waits on its locks; attaching takes SHARE UPDATE EXCLUSIVE on the
parent (readers go on), and ACCESS EXCLUSIVE on the DEFAULT partition for the moments between the ATTACH and
the commit (PostgreSQL checks the DEFAULT partition holds no row of the new one): the attach is the last step,
and its checks are cheap because the partition already holds matching indexes, foreign keys and a CHECK
constraint equal to its bound (no validation scan).

Rows the districts do not place (no district: the DEFAULT partition) or whose district already has a
partition (made by an earlier, rolled-back load) go the ordinary way, through :class:`ingest.merge.DirectLoad`.

The staged tables are made and filled in a transaction of their own (the builders must see them), committed
before the builds. If the load fails, they are dropped; if the process dies after that commit, the next load
of the layer drops them (:func:`drop_leftovers`: they carry a comment saying whose they are).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from cim.distribution import IS_CITUS_SQL, revoke_partition_access, district_partitions, partition_index_sql
from cim.schema import DISTRICT_PARTITIONED, NO_DISTRICT, PARTITION_COLUMN, district_partition_sql, partition_name
from ingest.merge import DirectLoad, MergeCounts, PipelinedCursor, copy_rows

#: a layer whose rows link to another layer's (addresses → buildings): the statements that link one district's
#: staged rows, run together before its indexes are built — (district, staged table, the parent's columns) —
#: and the function linking the rows COPYed straight into the layer — (cursor, layer table, run id)
StagedLinks = tuple[Callable[[str, str, list[str]], list[str]], Callable[[object, str, int], None]]

#: the comment on a table being staged: ``<MARK> <layer table>``, so leftovers of a killed load can be found
MARK = "cim: staged first load of"


def likely(engine: Engine, table: str, dry_run: bool) -> bool:
    """Before the load's lock: whether the load will probably be staged (it decides again under the lock)."""
    if dry_run or table not in DISTRICT_PARTITIONED:
        return False
    with engine.connect() as conn:
        cur = conn.connection.cursor()
        cur.execute(IS_CITUS_SQL)
        if cur.fetchone()[0]:
            return False
        cur.execute(f'SELECT NOT EXISTS (SELECT 1 FROM "{table}")')
        return bool(cur.fetchone()[0])


def applies(cur, table: str, dry_run: bool) -> bool:
    """Under the load's lock: a partitioned table (not on Citus) that holds no row at all."""
    if dry_run or table not in DISTRICT_PARTITIONED:
        return False
    cur.execute(IS_CITUS_SQL)
    if cur.fetchone()[0]:
        return False
    return DirectLoad.applies(cur, table)


def drop_leftovers(engine: Engine, table: str) -> list[str]:
    """Staged tables of ``table`` left by a load that died after staging; dropped only while no load of the
    layer runs (the loads' table lock is taken without waiting: if another load holds it, nothing is done)."""
    if table not in DISTRICT_PARTITIONED:
        return []
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SET LOCAL lock_timeout = '100ms'")
        try:
            cur.execute(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE NOWAIT')
        except Exception:  # psycopg2's LockNotAvailable: a load runs; its tables are not leftovers
            raw.rollback()
            return []
        cur.execute("SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace "
                    "AND obj_description(c.oid, 'pg_class') = %s AND NOT c.relispartition", (f"{MARK} {table}",))
        names = [r[0] for r in cur.fetchall()]
        for name in names:
            cur.execute(f'DROP TABLE "{name}"')
        raw.commit()
        return names
    finally:
        raw.close()


class StagedLoad:
    """Same interface as :class:`ingest.merge.DirectLoad` (``copy``, ``remove``, ``finish``), plus ``abort``."""

    def __init__(self, engine: Engine, cur, table: str, columns: list[str], run_id: int,
                 links: StagedLinks | None = None, analyze: bool = False) -> None:
        self.engine, self.cur, self.table, self.run_id, self.links = engine, cur, table, run_id, links
        # analyze each staged table once its rows and indexes are in (a closed district's on the background
        # builder, while the next are read): the load's statistics refresh then leaves them out, and only the
        # layer's own statistics remain for after the commit (ingest.statistics)
        self.analyze = analyze
        self.stale: set[str] = set()  # closed districts whose rows changed after their ANALYZE was handed in
        self.direct = DirectLoad(cur, table, columns, run_id)  # rows that go the ordinary way
        self.columns = self.direct.columns
        self.existing = district_partitions(cur, table)
        cur.execute("SELECT now()::text, pg_get_serial_sequence(%s, 'fid')", (table,))
        self.now, self.sequence = cur.fetchone()
        self.staged: dict[str, str] = {}  # district -> table being staged
        self.rows = 0
        self._raw = engine.raw_connection()  # the staging transaction, committed before the builds
        self.stage = PipelinedCursor(self._raw.cursor())
        self.closed: set[str] = set()  # districts whose rows seem all in: indexed in the background meanwhile
        self.begun: set[str] = set()  # districts that held the most rows of a batch: their run has begun
        # tables made in the staging transaction now open: COPYed FREEZE (no reader's table: it becomes a
        # partition as the load commits; frozen rows need no index build, reader or VACUUM to look up their
        # transaction, nor to write their pages again with hint bits)
        self.fresh: set[str] = set()
        self._background: _Builder | None = None
        self._finished = False

    def copy(self, frame: pd.DataFrame, ewkb: np.ndarray | None) -> None:
        frame = self.direct.prepared(frame)
        codes = frame[PARTITION_COLUMN].to_numpy(dtype=object)
        ordinary = np.zeros(len(frame), dtype=bool)
        present = pd.unique(codes)
        # a delivery sorted by district (object codes begin with the district's) is done with a district once
        # a batch holds none of its rows: its indexes are built on the second core while the next are read.
        # A row of it that still comes later is COPYed into the indexed table (slower, still right). Only a
        # district whose run has begun (it held the most rows of a batch) is closed: a point on a border that
        # the district of a code read earlier covers (the lowest code wins) would otherwise close its table
        # before its run, and the run's rows (688,000 in the synthetic Shanghai) would go into built indexes.
        done = [d for d in self.staged if d in self.begun and d not in self.closed and d not in set(present)]
        if done:
            self._close(done)
        biggest, most = None, 0
        for code in present:
            rows = codes == code
            if code is None or code == NO_DISTRICT or code in self.existing:
                ordinary |= rows
                continue
            name = self.staged.get(code) or self._stage(code)
            if code in self.closed:
                self.stale.add(code)  # a late row: its table is analyzed again before it is attached
            freeze = name in self.fresh
            if len(present) == 1:  # the usual batch of a delivery sorted by district: no copy of it to select it
                copy_rows(self.stage, frame, ewkb, self.columns, into=name, types=self.direct.types, freeze=freeze)
            else:
                copy_rows(self.stage, frame[rows], ewkb[rows] if ewkb is not None else None, self.columns,
                          into=name, types=self.direct.types, freeze=freeze)
            n = int(rows.sum())
            self.rows += n
            if n > most:
                biggest, most = code, n
        if biggest is not None:
            self.begun.add(biggest)
        if ordinary.any():
            self.direct.copy(frame[ordinary].reset_index(drop=True), ewkb[ordinary] if ewkb is not None else None)

    def _stage(self, district: str) -> str:
        create, _attach = district_partition_sql(self.table, district)
        name = partition_name(self.table, district)
        self.stage.execute(create)
        self.stage.execute(f'COMMENT ON TABLE "{name}" IS %s', (f"{MARK} {self.table}",))
        # what the partition's rows would get through the parent: its fid sequence, the load's time. No
        # autovacuum while it is staged: its ANALYZE would be done again by the load's (ingest.statistics), and
        # its VACUUM finds the rows COPYed FREEZE already frozen (the setting is reset as it is attached)
        self.stage.execute(f'ALTER TABLE "{name}" ALTER COLUMN fid SET DEFAULT nextval(%s::regclass), '
                           "ALTER COLUMN valid_from SET DEFAULT %s::timestamptz, SET (autovacuum_enabled = off)",
                           (self.sequence, self.now))
        self.staged[district] = name
        self.fresh.add(name)
        self._bound(district)
        return name

    def _close(self, districts: list[str]) -> None:
        """Commit these districts' staged rows and hand their index and key builds to the background builder."""
        self.stage.wait()
        self._raw.commit()
        self.fresh.clear()
        if self._background is None:
            self._background = _Builder(self.engine)
        names = [self.staged[d] for d in districts]
        statements = self._statements(names)
        self._background.submit(self._link_jobs(names) + [s for _rank, s in sorted(statements[0], key=lambda w: w[0])]
                                + statements[1] + ([f'ANALYZE "{name}"' for name in names] if self.analyze else []))
        self.closed.update(districts)

    def _bound(self, district: str) -> None:
        # the bound as a constraint: ATTACH PARTITION then knows every row belongs without a scan. Made with the
        # empty table, each row is checked as it is COPYed (added at the end, it read the whole table again on
        # the connection the loader's next COPY waits for)
        name = self.staged[district]
        self.stage.execute(f'ALTER TABLE "{name}" ADD CONSTRAINT "{name}_bound" CHECK ({PARTITION_COLUMN} '
                           f"IS NOT NULL AND {PARTITION_COLUMN} = %s)", (district,))

    def remove(self, source_ids: list[str]) -> list[str]:
        removed = self.direct.remove(source_ids)
        for district, name in self.staged.items():
            self.stage.execute(f'DELETE FROM "{name}" WHERE source_id = ANY(%s) RETURNING source_id', (source_ids,))
            taken = [r[0] for r in self.stage.fetchall()]
            self.rows -= len(taken)
            removed += taken
            if taken and district in self.closed:
                self.stale.add(district)
        return removed

    @property
    def analyzed(self) -> set[str]:
        """The staged tables this load analyzed after their last change (all of them, once :meth:`finish` has
        run, if it analyzes)."""
        return set(self.staged.values()) if self.analyze and self._finished else set()

    def _link_jobs(self, names: list[str]) -> list[list[str]]:
        """Per staged table, the statements (one transaction) that link its rows, if the layer links any."""
        if self.links is None:
            return []
        self.cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                         "AND NOT attisdropped ORDER BY attnum", (self.table,))
        columns = [r[0] for r in self.cur.fetchall()]
        district = {name: code for code, name in self.staged.items()}
        mark = f"{MARK} {self.table}".replace("'", "''")
        # the copy that replaces the staged table is staged too (abort and drop_leftovers find it by the comment)
        return [[*self.links[0](district[name], name, columns), f"COMMENT ON TABLE \"{name}\" IS '{mark}'"]
                for name in names]

    def finish(self) -> MergeCounts:
        counts = self.direct.finish()
        if self.links is not None and counts.inserted:
            self.links[1](self.cur, self.table, self.run_id)
        if not self.staged:
            self.stage.finish(check=True)
            self._raw.rollback()
            self._raw.close()
            return counts
        # (waits for the background builder's statement on each table: nothing else waits for this connection)
        for name in self.staged.values():
            self.stage.execute(f'ALTER TABLE "{name}" ALTER COLUMN fid DROP DEFAULT, '
                               "ALTER COLUMN valid_from SET DEFAULT now()")
        self.stage.finish(check=True)
        self._raw.commit()
        if self._background is not None:
            self._background.join()  # before the remaining builds: ALTER TABLEs side by side deadlock
        # the tables built in the background are attached by this connection while the others' indexes are built
        # on two more (the last district's: the load's tail); one whose rows changed since it was closed (a late
        # row) is analyzed again by a builder first — not after: once attached, it is the load's until the commit
        ready = [d for d in self.staged if d in self.closed and not (self.analyze and d in self.stale)]
        again = {self.staged[d]: threading.Event() for d in self.staged if d in self.closed and d not in ready}
        rest = [d for d in self.staged if d not in self.closed]

        def meanwhile() -> None:
            for district in ready:
                self._attach(district)
            for district, name in self.staged.items():
                if name in again:
                    again[name].wait()
                    self._attach(district)

        self._build([self.staged[d] for d in rest], analyze=[self.staged[d] for d in rest] if self.analyze else [],
                    again=again, meanwhile=meanwhile)
        for district in rest:
            self._attach(district)
        self._finished = True
        # the rows arrived by COPY into the partitions, so the layer's statement trigger did not see them
        self.cur.execute("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'cim_audit')")
        if self.cur.fetchone()[0]:
            self.cur.execute("SELECT cim_audit('insert', %s, '{}'::jsonb)", (self.table,))
        return MergeCounts(inserted=counts.inserted + self.rows)

    def _attach(self, district: str) -> None:
        """Attach a built table as its district's partition, in the load's transaction (its indexes and keys
        match the layer's: no build, no validation scan but the run's key's)."""
        name = self.staged[district]
        self.cur.execute(district_partition_sql(self.table, district)[1])
        self.cur.execute(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_bound"')
        self.cur.execute(f'COMMENT ON TABLE "{name}" IS NULL')
        self.cur.execute(f'ALTER TABLE "{name}" RESET (autovacuum_enabled)')
        revoke_partition_access(self.cur, name)

    def _statements(self, names: list[str]) -> tuple[list[tuple[int, str]], list[str]]:
        """The index builds (rank 0: GiST, the longest; 1: B-tree) and the key statements of these tables."""
        builds: list[tuple[int, str]] = []
        keys: list[str] = []
        self.cur.execute("SELECT conname, pg_get_constraintdef(oid), contype, confrelid::regclass::text FROM "
                         "pg_constraint WHERE conrelid = %s::regclass AND contype IN ('p', 'f')", (self.table,))
        constraints = self.cur.fetchall()
        for name in names:
            for _parent, statement in partition_index_sql(self.cur, self.table, name):
                builds.append((0 if " USING gist " in statement else 1, statement))
            for conname, definition, kind, referenced in constraints:
                if kind == "p":
                    columns = definition.removeprefix("PRIMARY KEY ")
                    builds.append((1, f'CREATE UNIQUE INDEX "{name}_pkey" ON "{name}" {columns}'))
                    keys.insert(0, f'ALTER TABLE "{name}" ADD CONSTRAINT "{name}_pkey" PRIMARY KEY USING INDEX '
                                   f'"{name}_pkey"')
                elif referenced != "ingest_runs":  # the run's row is not committed: checked by the ATTACH
                    keys.append(f'ALTER TABLE "{name}" ADD CONSTRAINT "{conname}" {definition}')
        return builds, keys

    def _build(self, names: list[str], analyze: list[str] = (), again: dict[str, threading.Event] | None = None,
               meanwhile: Callable[[], object] | None = None) -> None:
        """Indexes of these staged tables on two connections at once, the longest builds first (GiST before
        B-tree; the ANALYZE of the tables in ``again``, built before, after the GiST, each setting its event when
        done or when the builders stop), then the ANALYZE of the tables in ``analyze``; meanwhile this thread
        runs ``meanwhile`` (the attaches of the tables built before, on the load's connection). Then, on the
        load's connection, the primary keys (over their indexes) and foreign keys: ALTER TABLE statements running
        beside each other's builds deadlock, two foreign keys to one table wait for each other, and an ATTACH
        holds the table a foreign key refers to until the load commits (a builder's foreign key would wait)."""
        links = self._link_jobs(names)  # every table's rows linked before any index is built over them
        builds, keys = self._statements(names)
        errors: list[BaseException] = []

        def builder(jobs: queue.Queue) -> None:
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                # two builders share two cores: no parallel workers on top
                cur.execute("SET max_parallel_maintenance_workers = 0")
                raw.commit()
                while not errors:
                    try:
                        job = jobs.get_nowait()
                    except queue.Empty:
                        break
                    statement, done = job if isinstance(job, tuple) else (job, None)
                    _run(cur, statement)
                    raw.commit()
                    if done is not None:
                        done.set()
            except BaseException as exc:  # noqa: BLE001 (raised again in the load's thread)
                errors.append(exc)
            finally:
                raw.close()

        def phase(jobs: list) -> None:
            if not jobs:
                return
            work: queue.Queue = queue.Queue()
            for job in jobs:
                work.put(job)
            threads = [threading.Thread(target=builder, args=(work,), name=f"cim-build-{i}") for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        if links:
            phase(links)
        if errors:
            raise errors[0]

        def background() -> None:
            ordered = [statement for _rank, statement in sorted(builds, key=lambda w: w[0])]
            gist = sum(1 for rank, _statement in builds if rank == 0)
            try:
                phase(ordered[:gist] + [(f'ANALYZE "{name}"', done) for name, done in (again or {}).items()]
                      + ordered[gist:])
                if not errors:
                    phase([f'ANALYZE "{name}"' for name in analyze])
            finally:
                for done in (again or {}).values():
                    done.set()  # the load's thread waits for none after the builders stopped

        thread = threading.Thread(target=background, name="cim-build")
        thread.start()
        try:
            if meanwhile is not None:
                meanwhile()
        except BaseException as exc:
            errors.append(exc)  # the builders stop after their statement
            raise
        finally:
            thread.join()
        if errors:
            raise errors[0]
        for statement in keys:
            self.cur.execute(statement)

    def abort(self) -> None:
        """The load failed: its staged tables go (they were committed only if the builds had begun)."""
        if self._background is not None:
            self._background.join(check=False)
        try:
            self.stage.finish(check=False)
            self._raw.rollback()
        except Exception:  # noqa: BLE001 (the connection may be gone with the error being raised)
            pass
        finally:
            self._raw.close()
        if not self.staged:
            return
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            for name in self.staged.values():
                cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (name,))
                if cur.fetchone()[0] == f"{MARK} {self.table}":
                    cur.execute(f'DROP TABLE "{name}"')
            raw.commit()
        except Exception:  # noqa: BLE001 (a lost database: the next load drops them, drop_leftovers)
            pass
        finally:
            raw.close()


class _Builder:
    """One connection building closed districts' indexes and keys in the background, statement by statement,
    while the load goes on reading (the second core; PostgreSQL's own parallel workers are off)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._jobs: queue.Queue[list[str] | None] = queue.Queue()
        self._errors: list[BaseException] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cim-build-background", daemon=True)
        self._thread.start()

    def submit(self, statements: list) -> None:
        """Statements (or lists of statements, each list one transaction), run in order."""
        if self._errors:
            raise self._errors[0]
        self._jobs.put(statements)

    def join(self, check: bool = True) -> None:
        """Wait for every statement handed in (``check=False``: only for the one running) and raise its error."""
        if not check:
            self._stop = True
        self._jobs.put(None)
        self._thread.join()
        if check and self._errors:
            raise self._errors[0]

    def _run(self) -> None:
        try:
            raw = self._engine.raw_connection()
        except BaseException as exc:  # noqa: BLE001 (raised again in the load's thread)
            self._errors.append(exc)
            return
        try:
            cur = raw.cursor()
            cur.execute("SET max_parallel_maintenance_workers = 0")
            raw.commit()
            while True:
                statements = self._jobs.get()
                if statements is None:
                    return
                for job in statements:
                    if self._stop or self._errors:
                        break
                    _run(cur, job)
                    raw.commit()
        except BaseException as exc:  # noqa: BLE001 (raised again in the load's thread)
            self._errors.append(exc)
        finally:
            raw.close()


def _run(cur, job: str | list[str]) -> None:  # noqa: ANN001 (a DBAPI cursor)
    """One statement, or a list of them run in one transaction (the caller commits)."""
    for statement in [job] if isinstance(job, str) else job:
        cur.execute(statement)
