"""``ingest_files``: one load of one layer from one or more files, as one transaction and one run.

read (pyogrio / CSV, streamed) → map & coerce columns → CRS to storage, extent check → geometry
checks & 2D→3D → layer rules → grid enrichment (in memory) → COPY to staging → merge → provenance
(or, into a table that has never held a row, COPY straight into it: :class:`ingest.merge.DirectLoad`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.bootstrap import load_settings
from cim.config import cim_home
from cim.crs import CrsSpec, check_extent, resolve_crs, transform_geometries
from cim.errors import UserError
from cim.gridindex import GridIndex, representative_points
from cim.registry import bump_version
from ingest import geometry as geo
from ingest import binary_copy, merge, prepare, staged
from ingest.columns import coerce, plan_columns
from ingest.hashing import content_hash
from ingest.read import Batch, ReadOptions, open_source
from ingest.provenance import finish_run, load_transaction, operator_name, record_failure, start_run
from ingest.faults import database_faults, pause_at
from ingest.seen import FirstRows, text_keys
from ingest.report import FileReport, IngestReport, RejectsFiles, sha256_of
from ingest.specs import SPECS, LayerSpec
from ingest.statistics import analyze_parent, refresh_statistics

MODES = ("upsert", "append", "replace")


#: the dtype pandas gives a column set from Python strings and None (its Arrow-backed "str", missing as NaN)
_INFERRED_TEXT = pd.DataFrame({"c": np.array(["", None], dtype=object)})["c"].dtype


def area_codes(codes: np.ndarray, rows: np.ndarray, index: np.ndarray,
               n: int) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """A batch's column of area codes: ``codes[index]`` at ``rows`` (-1: none), missing elsewhere, as the column
    pandas makes when the codes are set as Python strings (its Arrow-backed text; an object array of None when
    no row has a code) — made by one Arrow take of the level's codes, not inferred from n Python strings (~0.07
    µs a row and level)."""
    at = np.full(n, -1, dtype=np.int64)
    at[rows] = index
    if not (at >= 0).any() or not (isinstance(_INFERRED_TEXT, pd.StringDtype) and _INFERRED_TEXT.storage == "pyarrow"):
        out = np.full(n, None, dtype=object)
        out[at >= 0] = codes[at[at >= 0]]
        return out
    taken = pa.array(codes, type=pa.string()).take(pa.array(np.maximum(at, 0), mask=at < 0))
    return pd.array(taken, dtype=_INFERRED_TEXT)


class IngestError(UserError):
    """The load was refused as a whole; the message says which file and why."""


class StrictRefusal(IngestError):
    """--strict and some rows were rejected: nothing is loaded."""


@dataclass(frozen=True)
class IngestOptions:
    crs: str | None = None
    encoding: str | None = None
    layer_name: str | None = None
    x: str | None = None
    y: str | None = None
    z: str | None = None
    wkt: str | None = None
    address_column: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    mode: str = "upsert"
    strict: bool = False
    dry_run: bool = False
    rejects_dir: Path | None = None
    operator: str | None = None
    batch_rows: int = 100_000

    def read_options(self) -> ReadOptions:
        return ReadOptions(layer_name=self.layer_name, encoding=self.encoding, x=self.x, y=self.y, z=self.z,
                           wkt=self.wkt, batch_rows=self.batch_rows)


Progress = Callable[[int], None]


def ingest_files(layer: str, paths: list[Path], options: IngestOptions, engine: Engine,
                 progress: Progress | None = None) -> IngestReport:
    spec = SPECS.get(layer)
    if spec is None:
        raise IngestError(f"unknown layer {layer!r}; layers: {', '.join(SPECS)}")
    if options.mode not in MODES:
        raise IngestError(f"--mode must be one of {', '.join(MODES)}, got {options.mode!r}")
    if not paths:
        raise IngestError("no input files given")
    for path in paths:
        if not Path(path).exists():
            raise IngestError(f"{path}: no such file")
    with database_faults(spec.name):
        if spec.table is None:
            from ingest import tables  # readings and responsibility are not feature tables

            return tables.ingest_table(spec, [Path(p) for p in paths], options, engine, progress)
        return FeatureLoad(spec, [Path(p) for p in paths], options, engine, progress).run()


class FeatureLoad:
    """State of one feature-table load; ``run`` is the whole of it."""

    def __init__(self, spec: LayerSpec, paths: list[Path], options: IngestOptions, engine: Engine,
                 progress: Progress | None) -> None:
        self.spec, self.paths, self.options, self.engine, self.progress = spec, paths, options, engine, progress
        self.settings = load_settings(engine)
        self.report = IngestReport(layer=spec.name, mode=options.mode, dry_run=options.dry_run)
        self.seen_ids = FirstRows()  # source id -> row number of its first occurrence (as arrays: ingest.seen)
        self.duplicate_ids: dict[str, int] = {}  # repeated source id -> row of its first occurrence
        self.rejects_dir = options.rejects_dir or (cim_home() / "rejects")
        self.rejects = RejectsFiles(self.rejects_dir)

    # --- context read once per run -------------------------------------------------------------
    def _context(self) -> tuple[prepare.Context, GridIndex | None]:
        with self.engine.connect() as conn:
            classes = {r[0] for r in conn.execute(sa.text("SELECT code FROM part_classes"))}
            ctx = prepare.Context(srid=self.settings.srid, floor_height_m=self.settings.floor_height_m,
                                  part_classes=classes)
            if self.spec.read_context:
                self.spec.read_context(conn, ctx)
            grid_index = GridIndex.load(conn) if self.spec.enrich else None
        return ctx, grid_index

    def run(self) -> IngestReport:
        started = time.perf_counter()
        self.ctx, self.grid_index = self._context()
        r = self.report
        self.staged_load: staged.StagedLoad | None = None
        self.parent_statistics = False  # the layer's own statistics are made after the commit
        if not self.options.dry_run:
            staged.drop_leftovers(self.engine, self.spec.table)
            # a first load makes its partitions itself, after its rows (ingest.staged)
            if not staged.likely(self.engine, self.spec.table, self.options.dry_run):
                merge.prepare_partitions(self.engine, self.spec.table)  # before the lock: see its docstring
        try:
            with load_transaction(self.engine, r) as raw_cursor:
                cur = merge.PipelinedCursor(raw_cursor)
                try:
                    self._load(cur, started)
                    cur.finish(check=True)
                except BaseException:
                    cur.finish(check=False)  # the COPY in flight ends before the rollback
                    raise
        except StrictRefusal as exc:
            self.rejects.publish()  # they are why the load was refused
            r.status, r.message = "failed", str(exc)
            r.duration_s = round(time.perf_counter() - started, 3)
            if self.staged_load is not None:
                self.staged_load.abort()
            record_failure(self.engine, r, self._operator())
            raise
        except BaseException:
            self.rejects.discard()
            if self.staged_load is not None:
                self.staged_load.abort()  # after the rollback: the load's transaction no longer holds them
            raise
        self.rejects.publish()
        if self.parent_statistics:  # the load has committed: a failure here is reported, not raised
            try:
                made, why = analyze_parent(self.engine, self.spec.table), "a load of it began meanwhile"
            except Exception as exc:  # noqa: BLE001
                made, why = False, str(exc).strip()
            if not made:
                r.message = "; ".join(filter(None, [r.message, f"the layer's own statistics were not made ({why}): "
                                                               f'run ANALYZE "{self.spec.table}"']))
        return r

    def _load(self, cur, started: float) -> None:
        """Everything the load does inside its transaction."""
        r = self.report
        # one load of a layer at a time (a second waits here); readers go on reading the committed base. A layer
        # that completes another's links locks that one too, every load in the same (sorted) order: no deadlock
        for table in sorted({self.spec.table, *self.spec.also_locks}):
            cur.execute(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE')
        start_run(cur, r, self._operator(), self._options_json())
        self.ctx.cur = cur
        if self.spec.begin:
            self.spec.begin(cur, self.ctx)  # after the lock: what it reads cannot change until the commit
        self.columns = merge.table_columns(cur, self.spec.table)
        # links to other layers are made by the merge's SQL: those layers go through staging, unless the layer
        # says how to link a staged first load (addresses)
        if ((not self.spec.merge_sql or self.spec.staged_links)
                and staged.applies(cur, self.spec.table, self.options.dry_run)):
            # its partitions analyzed as they are built, the layer's own statistics after the commit
            # (ingest.statistics) — unless this load's completion of another layer's links probes the layer
            self.staged_load = staged.StagedLoad(self.engine, cur, self.spec.table, self.columns, r.run_id,
                                                 links=self.spec.staged_links,
                                                 analyze=self.spec.complete_links is None)
        self.direct = self.staged_load or (
            merge.DirectLoad(cur, self.spec.table, self.columns, r.run_id)
            if not self.spec.merge_sql and merge.DirectLoad.applies(cur, self.spec.table) else None)
        self.ctx.base_empty = self.direct is not None  # nothing in the base to check codes against
        if self.direct is None:
            merge.create_stage(cur, self.spec.table, self.columns)
            self.stage_types = {**binary_copy.column_types(cur, "_stage", self.columns), "row_no": "int4"}
        for path in self.paths:
            self._load_file(cur, path)
        self._drop_duplicates(cur)
        if self.options.strict and r.rejected:
            rejects = ", ".join(f.rejects_file for f in r.files if f.rejects_file)
            raise StrictRefusal(f"--strict: {r.rejected} row(s) rejected, nothing loaded (see {rejects})")
        if self.direct is not None:
            counts = self.direct.finish()
            if self.staged_load is not None and self.staged_load.staged:
                r.message = (f"first load: {len(self.staged_load.staged)} district partition(s) filled, indexed "
                             "and attached after their rows")
                if self.staged_load.closed:
                    r.message += (f" ({len(self.staged_load.closed)} indexed while the next district's rows were "
                                  "read)")
        else:
            counts = merge.merge(cur, self.spec.table, self.columns, self.options.mode, r.run_id,
                                 **self.spec.merge_sql)
        r.inserted, r.updated, r.unchanged, r.closed = (counts.inserted, counts.updated, counts.unchanged,
                                                        counts.closed)
        if not self.options.dry_run:
            # before the completion below and the next load's links, which probe this layer (ingest.statistics)
            self.parent_statistics = refresh_statistics(
                cur, self.spec.table, counts.inserted + counts.updated + counts.closed,
                analyzed=self.staged_load.analyzed if self.staged_load is not None else ()).parent_later
        if self.spec.complete_links and counts.inserted and not self.options.dry_run:
            linked = self.spec.complete_links(cur, r.run_id)
            if linked:
                r.message = "; ".join(filter(None, [r.message, f"{linked} feature(s) of the linked layer given a "
                                                                 "link to this load's rows"]))
                for other in sorted(set(self.spec.also_locks) - {self.spec.table}):
                    bump_version(cur, other)  # its tiles and the gazetteer read the link
        r.duration_s = round(time.perf_counter() - started, 3)
        r.status = "dry-run" if self.options.dry_run else "succeeded"
        if r.changes and not self.options.dry_run:
            bump_version(cur, self.spec.table)
        finish_run(cur, r)

    # --- one file ---------------------------------------------------------------------------------
    def _load_file(self, cur, path: Path) -> None:
        source = open_source(path, self.options.read_options())
        if source.unreadable and self.options.mode == "replace":
            # replace closes every feature the delivery does not hold: one whose line is unreadable would go
            raise IngestError(f"{path}: {source.unreadable} line(s) cannot be read, so --mode replace would close "
                              "the features on them; repair the file, or load it with --mode upsert (the "
                              "unreadable lines are then listed as rejects)")
        crs = self._crs_for(source.declared_crs, path)
        file_report = FileReport(path=str(path), sha256=sha256_of(path), format=source.format,
                                 crs=crs.name if crs else None, encoding=source.encoding)
        if self.options.crs and source.declared_crs and crs and resolve_crs(source.declared_crs).name != crs.name:
            file_report.notes.append(f"--crs {crs.name} overrides the file's declared {source.declared_crs}")
        self.report.files.append(file_report)
        rejects = self.rejects.writer(f"run-{self.report.run_id}-{path.stem}.rejects.csv")
        plan = None
        try:
            for batch in source.batches:
                pause_at("reading")
                if plan is None:
                    plan = plan_columns(self.spec, list(batch.attributes.columns), self._mapping(), str(path))
                    self._check_key(plan, path)
                reasons = self._load_batch(cur, batch, plan, crs, path)
                rejects.write(batch.attributes, batch.geometry, batch.rows, reasons)
                file_report.read += len(batch.rows)
                file_report.rejected += len(reasons)
                if self.progress:
                    self.progress(len(batch.rows))
        finally:
            file_report.rejects_file = rejects.close()
        file_report.notes = source.notes + file_report.notes
        if file_report.read == 0:
            file_report.notes.append("the file holds no features")
        self.report.read += file_report.read
        self.report.rejected += file_report.rejected

    def _crs_for(self, declared: str | None, path: Path) -> CrsSpec | None:
        if self.spec.geometry is None and not self.spec.geometry_from_link:
            return None
        if self.options.crs:
            return resolve_crs(self.options.crs)
        if declared:
            return resolve_crs(declared)
        if self.spec.geometry_from_link:
            return None  # geometry comes from the linked feature
        raise IngestError(f"{path}: the file declares no coordinate system (no .prj / crs member / SRS) and no "
                          "--crs was given; pass e.g. --crs EPSG:4490, --crs EPSG:4549, --crs gcj02 or --crs bd09")

    def _mapping(self) -> dict[str, str]:
        mapping = dict(self.options.mapping)
        if self.options.address_column:
            mapping["full_address"] = self.options.address_column
        return mapping

    def _check_key(self, plan, path: Path) -> None:
        if self.options.mode == "append":
            return
        if "source_id" not in plan.mapped and (self.spec.key_fallback not in plan.mapped):
            key = "source_id" + (f" or {self.spec.key_fallback}" if self.spec.key_fallback else "")
            raise IngestError(f"{path}: --mode {self.options.mode} keys features by {key}, and no such column was "
                              f"found; map one with --map source_id=COLUMN, or load with --mode append")

    def _load_batch(self, cur, batch: Batch, plan, crs: CrsSpec | None, path: Path) -> dict[int, str]:
        frame, reasons = coerce(batch.attributes, self.spec, plan)
        reasons = {**batch.errors, **reasons}
        frame = frame.reset_index(drop=True)
        if "source_id" in frame and self.spec.key_fallback:
            frame["source_id"] = frame["source_id"].fillna(frame[self.spec.key_fallback])
        geoms, geometry_notes = self._geometry(batch, crs, path, reasons)
        prepared = self._apply_rules(frame, geoms, reasons, geometry_notes)
        frame, geoms = prepared.frame, prepared.geometry
        reasons.update({k: v for k, v in prepared.rejects.items() if k not in reasons})
        self._check_keys(frame, batch.rows, reasons)
        if self.spec.check:  # after the keys: a repeated source id is reported as such, whatever else it repeats
            self.spec.check(cur, frame, batch.rows, reasons, self.ctx)
        self.report.repaired += sum(1 for k in prepared.notes if k not in reasons and "make_valid" in prepared.notes[k])
        keep = np.ones(len(frame), dtype=bool)
        keep[list(reasons)] = False
        if not keep.any():
            return reasons
        if not keep.all():  # (a batch with no reject is taken as it is: no copy of every column)
            frame = frame[keep].reset_index(drop=True)
            geoms = geoms[keep] if geoms is not None else None
        if self.direct is not None and geoms is not None:  # a first load: neighbours onto the same heap pages
            order = geo.spatial_order(geoms)
            frame, geoms = frame.iloc[order].reset_index(drop=True), geoms[order]
        ewkb = merge.ewkb_hex(geoms, self.settings.srid)
        frame["content_hash"] = content_hash(frame, ewkb)
        if self.direct is not None:
            self.direct.copy(frame, ewkb)
        else:
            frame["row_no"] = batch.rows[keep]
            merge.copy_rows(cur, frame, ewkb, [*self.columns, "row_no"], types=self.stage_types)
        pause_at("copy")
        return reasons

    def _geometry(self, batch: Batch, crs: CrsSpec | None, path: Path,
                  reasons: dict[int, str]) -> tuple[np.ndarray | None, dict[int, str]]:
        """This batch's geometry in the storage CRS, and its repair notes by batch position."""
        if self.spec.geometry is None and (batch.geometry is None or crs is None
                                           or pd.isna(batch.geometry).all()):
            return None, {}
        if batch.geometry is None:
            raise IngestError(f"{path}: layer {self.spec.name} needs geometry; give --x/--y or --wkt for CSV")
        kind = self.spec.geometry or "polygon"
        geoms, rejects, notes = geo.check_types(batch.geometry, kind)
        for i, reason in rejects.items():
            reasons.setdefault(i, reason)
        present = ~pd.isna(geoms)
        present[list(reasons)] = False
        if present.any():
            chosen = geoms[present]
            # points are their own anchors: no 2D copy of each just to read x and y
            points = chosen if (shapely.get_type_id(chosen) == 0).all() else representative_points(chosen)
            try:
                check_extent(shapely.get_x(points), shapely.get_y(points), crs, self.settings.city_bbox_wgs84)
            except UserError as exc:
                raise IngestError(f"{path}: {exc}") from exc
            if crs.offset is not None or crs.srid != self.settings.srid:  # already in the storage CRS: as they are
                geoms = geoms.copy()
                geoms[present] = transform_geometries(geoms[present], crs, f"EPSG:{self.settings.srid}")
        return geoms, notes

    def _apply_rules(self, frame: pd.DataFrame, geoms: np.ndarray | None, reasons: dict[int, str],
                     geometry_notes: dict[int, str]) -> prepare.Prepared:
        valid = np.ones(len(frame), dtype=bool)
        valid[list(reasons)] = False
        codes = self._enrich(geoms, valid)
        if codes:
            for column, values in codes.items():
                if column in self.columns:
                    frame[column] = values
        safe = geoms
        if geoms is not None:
            safe = geoms.copy()
            safe[~valid] = None
        result = self.spec.rules(frame, safe, valid, self.ctx)
        if result.geometry is not None:
            result.geometry[~valid] = None
        result.notes.update(geometry_notes)
        return result

    def _enrich(self, geoms: np.ndarray | None, valid: np.ndarray) -> dict[str, np.ndarray | pd.api.extensions.ExtensionArray]:
        if self.grid_index is None or geoms is None or self.grid_index.is_empty:
            return {}
        if not valid.any():
            return {c: np.full(len(geoms), None, dtype=object) for c in ("district_code", "street_code",
                                                                         "community_code", "grid_code")}
        rows = np.flatnonzero(valid)
        found = self.grid_index.polygons(representative_points(geoms[valid]))
        return {column: area_codes(self.grid_index.codes(column), rows, index, len(geoms))
                for column, index in found.items()}

    def _check_keys(self, frame: pd.DataFrame, rows: np.ndarray, reasons: dict[int, str]) -> None:
        if self.options.mode == "append" or "source_id" not in frame:
            return
        keys = frame["source_id"].to_numpy(dtype=object)
        open_rows = np.ones(len(keys), dtype=bool)
        open_rows[list(reasons)] = False
        missing = open_rows & pd.isna(keys)
        for i in np.flatnonzero(missing):
            reasons[int(i)] = "missing source id"
        checked = np.flatnonzero(open_rows & ~missing)
        if not len(checked):
            return
        firsts = self.seen_ids.first(*text_keys(keys[checked]), rows[checked])
        for i, first in zip(checked[firsts != rows[checked]].tolist(), firsts[firsts != rows[checked]].tolist()):
            key = keys[i]
            self.duplicate_ids.setdefault(key, first)
            reasons[i] = f"duplicate source id {key!r} (also at row {first})"

    def _drop_duplicates(self, cur) -> None:
        """First occurrences of duplicated ids were staged before the repeat was seen: take them back."""
        if not self.duplicate_ids:
            return
        if self.direct is not None:
            taken = [(self.duplicate_ids[key], key) for key in self.direct.remove(list(self.duplicate_ids))]
        else:
            cur.execute("DELETE FROM _stage WHERE source_id = ANY(%s) RETURNING row_no, source_id",
                        (list(self.duplicate_ids),))
            taken = cur.fetchall()
        writer = self.rejects.writer(f"run-{self.report.run_id}-duplicates.rejects.csv")
        for row_no, key in taken:
            writer.write_plain(row_no, f"duplicate source id {key!r} (first occurrence; repeated later in the file)")
        path = writer.close()
        self.report.rejected += len(taken)
        if self.report.files:
            self.report.files[-1].rejected += len(taken)
            self.report.files[-1].notes.append(f"{len(taken)} first occurrence(s) of duplicated ids in {path}")

    # --- provenance -----------------------------------------------------------------------------
    def _operator(self) -> str:
        return operator_name(self.options.operator)

    def _options_json(self) -> dict:
        o = self.options
        return {k: v for k, v in {"crs": o.crs, "encoding": o.encoding, "layer": o.layer_name, "x": o.x, "y": o.y,
                                  "z": o.z, "wkt": o.wkt, "map": o.mapping or None, "strict": o.strict,
                                  "address_column": o.address_column}.items() if v}

