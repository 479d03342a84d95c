"""Static exports: a 3D tileset directory, vector tiles as a z/x/y.pbf tree or one MBTiles file."""
from __future__ import annotations

import gzip
import json
import math
import multiprocessing
import os
import re
import sqlite3
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Connection

from cim.errors import UserError
from cim.selection import Selection
from tiles import implicit, mvt
from tiles.geodesy import LocalFrame
from tiles.plan import Tile
from tiles.service import TileService
from tiles.tileset import (DEFAULT_MAX_FEATURES, Plan, city_region, content_version, model_for, read_features,
                           tile_glb, tileset_json)


@dataclass(frozen=True)
class ExportSummary:
    tiles: int
    features: int
    empty: int
    path: Path


def export_3d(service: TileService, layer_name: str, outdir: Path, selection: Selection = Selection(),
              max_features: int = DEFAULT_MAX_FEATURES) -> ExportSummary:
    """``outdir/tileset.json`` and ``outdir/<version>/<tile>.glb``: the layout the API serves."""
    layer = service.layer(layer_name)
    plan = service.plan(layer, selection, max_features)
    outdir.mkdir(parents=True, exist_ok=True)
    version, doc = service.tileset(layer, selection, max_features)
    (outdir / version).mkdir(exist_ok=True)
    n = 0
    for tile in plan.tiles.values():
        if len(tile.fids):
            (outdir / version / f"{tile.id}.glb").write_bytes(
                service.glb(layer, version, tile.id, selection, max_features))
            n += 1
    (outdir / "tileset.json").write_bytes(doc)
    return ExportSummary(n, plan.feature_count, 0, outdir)


def default_workers() -> int:
    """One export process per core this process may run on: tile building is CPU-bound in both the exporter
    and the database, so more processes than cores only queue."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def export_3d_implicit(service: TileService, layer_name: str, outdir: Path, selection: Selection = Selection(),
                       max_features: int = DEFAULT_MAX_FEATURES, subtree_levels: int = 4,
                       workers: int = 1) -> ExportSummary:
    """``outdir/tileset.json`` (one root tile with ``implicitTiling``), ``outdir/subtrees/…`` and
    ``outdir/content/{level}/{x}/{y}.glb``: 3D Tiles 1.1 implicit tiling (see :mod:`tiles.implicit`).

    With ``workers`` > 1 the content tiles are built by that many processes, each with its own database
    connection, in batches of neighbouring tiles; every tile's bytes depend on the tile alone, so the output is
    the same as one process's."""
    if not 1 <= subtree_levels <= 10:
        raise UserError(f"--subtree-levels: must be 1 to 10, got {subtree_levels}")
    if workers < 1:
        raise UserError(f"--workers: must be at least 1, got {workers}")
    layer = service.layer(layer_name)
    s = service.settings
    with service.engine.connect() as conn:
        version = content_version(conn, layer)
        features = read_features(conn, layer, s.srid, s.floor_height_m, selection)
    if features is None:  # nothing to subdivide: the explicit tileset of an empty layer says it
        return export_3d(service, layer_name, outdir, selection, max_features)
    tree = implicit.build_implicit(features, max_features, subtree_levels)
    count = len(features)
    del features  # the tree holds the fids; the workers inherit less
    w, so, e, n = tree.region[:4]
    frame = LocalFrame(math.degrees((w + e) / 2), math.degrees((so + n) / 2), 0.0)
    plan = Plan(layer, model_for(layer.name), version, selection, s.srid, s.floor_height_m, frame, None,
                count, city_region(s.city_bbox_wgs84))
    outdir.mkdir(parents=True, exist_ok=True)
    # batches of at most _BATCH_FEATURES, and at least four per worker so that both finish together
    batches = _content_batches(tree, max(1, min(_BATCH_FEATURES, count // (4 * workers))))
    n_tiles = sum(len(b) for b in batches)
    if workers == 1 or len(batches) == 1:
        with service.engine.connect() as conn:
            for batch in batches:
                _write_contents(conn, plan, tree, outdir, batch)
    else:
        _write_contents_in_pool(service, plan, tree, outdir, batches, workers)
    members = implicit.subtree_members(tree)
    for level, x, y in implicit.subtree_roots(tree):
        path = outdir / implicit.SUBTREE_URI.format(level=level, x=x, y=y)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(implicit.subtree_bytes(tree, level, x, y, members[(level, x, y)]))
    explicit = tileset_json(plan)  # the same asset, schema and metadata as the explicit tileset
    doc = implicit.tileset_json(tree, frame.transform(), explicit["asset"],
                                {k: explicit[k] for k in ("schema", "metadata", "extras")})
    (outdir / "tileset.json").write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")),
                                         encoding="utf-8")
    return ExportSummary(n_tiles, plan.feature_count, 0, outdir)


#: features per batch of content tiles handed to a worker: big enough that a batch is seconds of work (the
#: hand-over costs little), small enough that both workers stay busy to the end
_BATCH_FEATURES = 5_000

_Batch = list[tuple[int, int, int]]


def _content_batches(tree: implicit.ImplicitTree, batch_features: int) -> list[_Batch]:
    """The content tiles in batches of neighbours (the tree's sorted order keeps a subtree's tiles together)."""
    batches: list[_Batch] = [[]]
    size = 0
    for level, x, y, fids in tree.contents():
        if size >= batch_features:
            batches.append([])
            size = 0
        batches[-1].append((level, x, y))
        size += len(fids)
    return [b for b in batches if b]


def _write_contents(conn: Connection, plan: Plan, tree: implicit.ImplicitTree, outdir: Path,
                    batch: _Batch) -> int:
    for level, x, y in batch:
        tile = Tile(f"{level}/{x}/{y}", level, (0.0, 0.0, 0.0, 0.0), tree.tiles[(level, x, y)],
                    tree.tile_region(level, x, y), 0.0)
        path = outdir / implicit.CONTENT_URI.format(level=level, x=x, y=y)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tile_glb(conn, plan, tile))
    return len(batch)


# What a worker process needs, set before the pool forks (the plan's model holds functions, which do not
# pickle); the workers get it by inheritance and only batch lists travel through the pool's queue.
_JOB: tuple[TileService, Plan, implicit.ImplicitTree, Path] | None = None


def _worker_start() -> None:
    assert _JOB is not None
    # the pool inherited the parent's pooled connections: a new pool here, the parent's left to the parent
    _JOB[0].engine.dispose(close=False)


def _worker_batch(batch: _Batch) -> int:
    assert _JOB is not None
    service, plan, tree, outdir = _JOB
    with service.engine.connect() as conn:
        return _write_contents(conn, plan, tree, outdir, batch)


def _write_contents_in_pool(service: TileService, plan: Plan, tree: implicit.ImplicitTree, outdir: Path,
                            batches: list[_Batch], workers: int) -> None:
    global _JOB
    _JOB = (service, plan, tree, outdir)
    try:
        # fork: the workers share the parent's tree and settings without copying them (copy on write)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_worker_start) as pool:
            # at most two batches queued per worker: a failure stops the export soon, memory stays flat
            pending: set[Future] = set()
            for batch in batches:
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                pending.add(pool.submit(_worker_batch, batch))
            for f in pending:
                f.result()
    finally:
        _JOB = None


def parse_zooms(text: str) -> range:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text or "")
    if not m:
        raise UserError(f"--zooms {text!r}: expected a zoom or a range such as 10-16")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo > hi or hi > mvt.TMS.maxzoom:
        raise UserError(f"--zooms {text!r}: need from ≤ to ≤ {mvt.TMS.maxzoom}")
    return range(lo, hi + 1)


def export_mvt(service: TileService, layer_name: str, zooms: range, outdir: Path | None = None,
               mbtiles: Path | None = None, selection: Selection = Selection(),
               properties: list[str] | None = None) -> ExportSummary:
    """Every non-empty tile over the layer's extent at the given zooms."""
    if (outdir is None) == (mbtiles is None):
        raise UserError("give either OUTDIR (a z/x/y.pbf tree) or --mbtiles FILE")
    layer = service.layer(layer_name)
    with service.engine.connect() as conn:
        bounds = mvt.layer_bounds(conn, layer, service.settings.srid)
    writer = _MbtilesWriter(mbtiles, layer, zooms, bounds, mvt.property_names(layer, properties)) if mbtiles \
        else None
    written = empty = 0
    for t in (mvt.tiles_covering(bounds, zooms) if bounds else []):
        data = service.mvt(layer, t.z, t.x, t.y, selection, properties)
        if not data:
            empty += 1
            continue
        written += 1
        if writer:
            writer.add(t.z, t.x, t.y, data)
        else:
            path = outdir / str(t.z) / str(t.x) / f"{t.y}.pbf"  # type: ignore[operator]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    if writer:
        writer.close()
    elif outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
    return ExportSummary(written, 0, empty, mbtiles or outdir)  # type: ignore[arg-type]


class _MbtilesWriter:
    """MBTiles 1.3: TMS row order (y flipped), gzip-compressed pbf, vector_layers in metadata."""

    def __init__(self, path: Path, layer, zooms: range, bounds, fields: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        self.db = sqlite3.connect(path)
        self.db.executescript(
            "CREATE TABLE metadata (name TEXT, value TEXT);"
            "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);"
            "CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);")
        types = {q.name: q.type for q in layer.queryables}
        meta = {
            "name": layer.name, "description": layer.title, "format": "pbf", "type": "overlay", "version": "1",
            "minzoom": str(zooms.start), "maxzoom": str(zooms.stop - 1),
            "bounds": ",".join(f"{v:.6f}" for v in (bounds or (-180, -85.05, 180, 85.05))),
            "json": json.dumps({"vector_layers": [{
                "id": layer.name, "description": layer.title, "minzoom": zooms.start, "maxzoom": zooms.stop - 1,
                "fields": {f: "Number" if types.get(f) in ("number", "integer") else
                           "Boolean" if types.get(f) == "boolean" else "String" for f in fields}}]},
                ensure_ascii=False),
        }
        self.db.executemany("INSERT INTO metadata VALUES (?, ?)", list(meta.items()))

    def add(self, z: int, x: int, y: int, data: bytes) -> None:
        self.db.execute("INSERT INTO tiles VALUES (?, ?, ?, ?)", (z, x, (2 ** z - 1) - y, gzip.compress(data)))

    def close(self) -> None:
        self.db.commit()
        self.db.close()
