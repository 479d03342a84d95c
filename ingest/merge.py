"""Staging and merging one file's rows into a feature table, in a single transaction.

Rows are COPYed into a temporary staging table shaped like the target; the merge then runs as a
handful of set-based statements: close the current versions whose content changed, insert new
versions (keeping the feature id) and new features, and in ``replace`` mode close the features
absent from the file. Readers see the old base until COMMIT; a killed loader leaves nothing.
"""
from __future__ import annotations

import concurrent.futures
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ingest.faults import pause_at

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import shapely

SYSTEM_COLUMNS = ("fid", "feature_id", "valid_from", "valid_to", "ingest_run_id")


@dataclass
class MergeCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0


def table_columns(cur, table: str) -> list[str]:
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s ORDER BY ordinal_position", (table,))
    return [r[0] for r in cur.fetchall() if r[0] not in SYSTEM_COLUMNS]


def create_stage(cur, table: str, columns: list[str]) -> None:
    """A temp table with the target's data ``columns`` (see :func:`table_columns`) and row_no."""
    cur.execute("DROP TABLE IF EXISTS _stage")
    cur.execute(f'CREATE TEMP TABLE _stage ON COMMIT DROP AS SELECT {", ".join(columns)} '
                f'FROM "{table}" WITH NO DATA')
    cur.execute("ALTER TABLE _stage ADD COLUMN row_no integer")


def ewkb_hex(geometry: np.ndarray | None, srid: int) -> np.ndarray | None:
    """Geometries as hex EWKB with Z — what PostGIS parses fastest from text COPY."""
    if geometry is None:
        return None
    return shapely.to_wkb(shapely.set_srid(geometry, srid), hex=True, include_srid=True, output_dimension=3)


def content_hash(frame: pd.DataFrame, ewkb: np.ndarray | None) -> np.ndarray:
    """A stable per-row fingerprint of everything a delivery says about a feature."""
    # pandas' hash uses a fixed key, so the same values hash the same in every process
    content = frame.astype("string")
    if ewkb is not None:
        content["_geom"] = pd.array(ewkb, dtype="string")
    hashed = pd.util.hash_pandas_object(content, index=False).to_numpy()
    return np.char.mod("%016x", hashed).astype(object)


def copy_rows(cur, frame: pd.DataFrame, ewkb: np.ndarray | None, columns: list[str], into: str = "_stage") -> None:
    """COPY a prepared batch into ``into`` (the staging table, or an empty target: see :class:`DirectLoad`);
    ``frame`` holds ``columns``."""
    data = {}
    for column in columns:
        if column == "geom":
            data[column] = pa.array(ewkb if ewkb is not None else [None] * len(frame), type=pa.string())
        elif column in frame.columns:
            data[column] = _arrow_column(frame[column])
        else:
            data[column] = pa.array([None] * len(frame), type=pa.string())
    buffer = io.BytesIO()
    pacsv.write_csv(pa.table(data), buffer, write_options=pacsv.WriteOptions(include_header=False,
                                                                             quoting_style="needed"))
    buffer.seek(0)
    cur.copy_expert(f'COPY "{into}" ({", ".join(columns)}) FROM STDIN WITH (FORMAT csv)', buffer)


class PipelinedCursor:
    """A DBAPI cursor whose COPYs run on a worker thread, one at a time, so that Python prepares batch
    *n + 1* while PostgreSQL parses batch *n* (on a 2-core machine the other core sat idle during each).

    Any other use of the cursor (``execute``, ``fetchall``, ``rowcount``…) first waits for the COPY in
    flight and raises its error, so statements keep their order and no caller has to remember to wait.
    psycopg2 releases the GIL while it sends COPY data and waits for the result.
    """

    def __init__(self, cursor) -> None:
        self._cursor = cursor
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cim-copy")
        self._pending: Future | None = None

    def copy_expert(self, sql: str, file) -> None:
        self.wait()
        self._pending = self._worker.submit(self._cursor.copy_expert, sql, file)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish(self, *, check: bool) -> None:
        """Wait for the last COPY (before the transaction ends); ``check=False`` when another error is
        already on its way, so that one is not masked."""
        try:
            if check:
                self.wait()
            elif self._pending is not None:
                concurrent.futures.wait([self._pending])
                self._pending = None
        finally:
            self._worker.shutdown(wait=True)

    def __getattr__(self, name: str):
        self.wait()
        return getattr(self._cursor, name)


def _arrow_column(series: pd.Series) -> pa.Array:
    if series.dtype == object:
        first = series.dropna().head(1).tolist()
        if first and isinstance(first[0], bool):
            return pa.array(series, type=pa.bool_(), from_pandas=True)
        return pa.array(series.astype("string"), type=pa.string(), from_pandas=True)
    return pa.Array.from_pandas(series)


def merge(cur, table: str, columns: list[str], mode: str, run_id: int, extra_select: dict[str, str] | None = None,
          joins: str = "") -> MergeCounts:
    """Apply ``_stage`` to ``table``. ``extra_select`` overrides how a column is computed (e.g. links)."""
    counts = MergeCounts()
    cur.execute("CREATE INDEX ON _stage (source_id)")
    cur.execute("ANALYZE _stage")
    pause_at("index")
    if mode in ("upsert", "replace"):
        cur.execute(f'SELECT count(*) FROM _stage s JOIN "{table}" t ON t.source_id = s.source_id '
                    "AND t.valid_to IS NULL AND t.content_hash = s.content_hash")
        counts.unchanged = cur.fetchone()[0]
        cur.execute(f'''CREATE TEMP TABLE _closed ON COMMIT DROP AS
            WITH closed AS (
              UPDATE "{table}" t SET valid_to = now() FROM _stage s
              WHERE t.source_id = s.source_id AND t.valid_to IS NULL
                AND t.content_hash IS DISTINCT FROM s.content_hash
              RETURNING t.source_id, t.feature_id)
            SELECT * FROM closed''')
        counts.updated = cur.rowcount
    else:
        cur.execute("CREATE TEMP TABLE _closed (source_id text, feature_id uuid) ON COMMIT DROP")
    defaults = _not_null_defaults(cur, table)
    select = ", ".join((extra_select or {}).get(c, f"COALESCE(s.{c}, {defaults[c]})" if c in defaults else f"s.{c}")
                       for c in columns)
    insert_cols = ", ".join(columns)
    # The table's indexes stay: dropping them for a large batch would lock every reader of the layer out
    # until the commit, where they must go on reading the last version (see DirectLoad).
    # a source id delivered again after its feature was closed (by a replace, or an edit) is that
    # feature again: its latest closed version gives the feature id back
    cur.execute(f'''CREATE TEMP TABLE _returning ON COMMIT DROP AS
        SELECT DISTINCT ON (t.source_id) t.source_id, t.feature_id FROM "{table}" t
        WHERE t.valid_to IS NOT NULL AND t.source_id IN (SELECT source_id FROM _stage)
        ORDER BY t.source_id, t.valid_to DESC, t.fid DESC''')
    cur.execute(f'''INSERT INTO "{table}" (feature_id, ingest_run_id, valid_from, {insert_cols})
        SELECT COALESCE(c.feature_id, p.feature_id, gen_random_uuid()), %s, now(), {select}
        FROM _stage s LEFT JOIN _closed c ON c.source_id = s.source_id
        LEFT JOIN _returning p ON p.source_id = s.source_id {joins}
        WHERE s.source_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM "{table}" t WHERE t.source_id = s.source_id AND t.valid_to IS NULL)
''', (run_id,))  # stage rows are read in COPY order: no sort needed
    counts.inserted = cur.rowcount - counts.updated
    pause_at("merge")
    if mode == "replace":
        cur.execute(f'''UPDATE "{table}" t SET valid_to = now() WHERE t.valid_to IS NULL
            AND NOT EXISTS (SELECT 1 FROM _stage s WHERE s.source_id = t.source_id)''')
        counts.closed = cur.rowcount
    return counts


class DirectLoad:
    """A load into a table that holds no row at all (no current and no past versions): batches are COPYed
    straight into it.

    Nothing there can be unchanged, updated or closed, so staging and merging would only write every
    row twice (measured: the INSERT … SELECT from staging was a sixth of a 1,000,000-point load). Each
    row gets the run id and the defaults the merge would give it; the whole load is still one
    transaction. The indexes stay and are maintained as rows arrive: dropping them (ACCESS EXCLUSIVE)
    would lock every reader of the layer out until the commit, and rebuilding them at the end measured
    no faster on 200,000 points (the N-D GiST has no sorted build in PostGIS 3.3; see docs/benchmarks.md).
    """

    def __init__(self, cur, table: str, columns: list[str], run_id: int) -> None:
        self.cur, self.table, self.run_id = cur, table, run_id
        self.columns = [*columns, "ingest_run_id"]
        self.rows = 0
        self._defaults = {name: _evaluate(cur, default) for name, default in _not_null_defaults(cur, table).items()
                          if name in columns}

    @staticmethod
    def applies(cur, table: str) -> bool:
        cur.execute(f'SELECT NOT EXISTS (SELECT 1 FROM "{table}")')
        return cur.fetchone()[0]

    def copy(self, frame: pd.DataFrame, ewkb: np.ndarray | None) -> None:
        frame = frame.assign(ingest_run_id=self.run_id)
        for name, value in self._defaults.items():
            if name in frame and frame[name].isna().any():
                frame[name] = frame[name].where(frame[name].notna(), value)
        copy_rows(self.cur, frame, ewkb, self.columns, into=self.table)
        self.rows += len(frame)

    def remove(self, source_ids: list[str]) -> list[str]:
        """Take rows of this load back out (first occurrences of ids repeated later); their ids."""
        # the history trigger would only terminate them; these rows were never part of the base
        self.cur.execute(f'ALTER TABLE "{self.table}" DISABLE TRIGGER USER')
        self.cur.execute(f'DELETE FROM "{self.table}" WHERE ingest_run_id = %s AND source_id = ANY(%s) '
                         "RETURNING source_id", (self.run_id, source_ids))
        removed = [r[0] for r in self.cur.fetchall()]
        self.cur.execute(f'ALTER TABLE "{self.table}" ENABLE TRIGGER USER')
        self.rows -= len(removed)
        return removed

    def finish(self) -> MergeCounts:
        return MergeCounts(inserted=self.rows)


def _evaluate(cur, default: str) -> object:
    """A column default's value as text for COPY (constant defaults such as ``'{}'::jsonb``)."""
    cur.execute(f"SELECT ({default})::text")
    return cur.fetchone()[0]


def _not_null_defaults(cur, table: str) -> dict[str, str]:
    """NOT NULL columns with a default: an absent value in the delivery means that default."""
    cur.execute("SELECT column_name, column_default FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = %s AND is_nullable = 'NO' AND column_default IS NOT NULL",
                (table,))
    return {name: default for name, default in cur.fetchall() if name not in SYSTEM_COLUMNS}
