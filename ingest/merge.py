"""Staging and merging one file's rows into a feature table, in a single transaction.

Rows are COPYed into a temporary staging table shaped like the target; the merge then runs as a
handful of set-based statements: close the current versions whose content changed, insert new
versions (keeping the feature id) and new features, and in ``replace`` mode close the features
absent from the file. Readers see the old base until COMMIT; a killed loader leaves nothing.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

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


def create_stage(cur, table: str) -> list[str]:
    """A temp table with the target's data columns (+ row_no); returns the staged column names."""
    columns = table_columns(cur, table)
    cur.execute("DROP TABLE IF EXISTS _stage")
    cur.execute(f'CREATE TEMP TABLE _stage ON COMMIT DROP AS SELECT {", ".join(columns)} '
                f'FROM "{table}" WITH NO DATA')
    cur.execute("ALTER TABLE _stage ADD COLUMN row_no integer")
    return columns


def content_hash(frame: pd.DataFrame) -> np.ndarray:
    """A stable per-row fingerprint of everything a delivery says about a feature."""
    # pandas' hash uses a fixed key, so the same values hash the same in every process
    as_text = frame.astype(str)
    return pd.util.hash_pandas_object(as_text, index=False).map("{:016x}".format).to_numpy()


def copy_rows(cur, frame: pd.DataFrame, geometry: np.ndarray | None, srid: int, columns: list[str]) -> None:
    """COPY a prepared batch into ``_stage``; ``frame`` holds the canonical columns + row_no."""
    data = {}
    for column in columns + ["row_no"]:
        if column == "geom":
            if geometry is None:
                data[column] = pa.array([None] * len(frame), type=pa.string())
            else:
                wkb = shapely.to_wkb(shapely.set_srid(geometry, srid), hex=True, include_srid=True,
                                     output_dimension=3)
                data[column] = pa.array(wkb, type=pa.string())
        elif column in frame.columns:
            data[column] = _arrow_column(frame[column])
        else:
            data[column] = pa.array([None] * len(frame), type=pa.string())
    buffer = io.BytesIO()
    pacsv.write_csv(pa.table(data), buffer, write_options=pacsv.WriteOptions(include_header=False,
                                                                             quoting_style="needed"))
    buffer.seek(0)
    cur.copy_expert(f"COPY _stage ({', '.join(columns + ['row_no'])}) FROM STDIN WITH (FORMAT csv)", buffer)


def _arrow_column(series: pd.Series) -> pa.Array:
    if series.dtype == object:
        values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in series]
        if any(isinstance(v, bool) for v in values):
            return pa.array(values, type=pa.bool_())
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.Array.from_pandas(series)


def merge(cur, table: str, columns: list[str], mode: str, run_id: int, extra_select: dict[str, str] | None = None,
          joins: str = "") -> MergeCounts:
    """Apply ``_stage`` to ``table``. ``extra_select`` overrides how a column is computed (e.g. links)."""
    counts = MergeCounts()
    cur.execute("CREATE INDEX ON _stage (source_id)")
    cur.execute("ANALYZE _stage")
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
    cur.execute(f'''INSERT INTO "{table}" (feature_id, ingest_run_id, valid_from, {insert_cols})
        SELECT COALESCE(c.feature_id, gen_random_uuid()), %s, now(), {select}
        FROM _stage s LEFT JOIN _closed c ON c.source_id = s.source_id {joins}
        WHERE s.source_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM "{table}" t WHERE t.source_id = s.source_id AND t.valid_to IS NULL)
        ORDER BY s.row_no''', (run_id,))
    counts.inserted = cur.rowcount - counts.updated
    if mode == "replace":
        cur.execute(f'''UPDATE "{table}" t SET valid_to = now() WHERE t.valid_to IS NULL
            AND NOT EXISTS (SELECT 1 FROM _stage s WHERE s.source_id = t.source_id)''')
        counts.closed = cur.rowcount
    return counts


def _not_null_defaults(cur, table: str) -> dict[str, str]:
    """NOT NULL columns with a default: an absent value in the delivery means that default."""
    cur.execute("SELECT column_name, column_default FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = %s AND is_nullable = 'NO' AND column_default IS NOT NULL",
                (table,))
    return {name: default for name, default in cur.fetchall() if name not in SYSTEM_COLUMNS}
