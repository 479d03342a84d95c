"""Static exports: a 3D tileset directory, vector tiles as a z/x/y.pbf tree or one MBTiles file."""
from __future__ import annotations

import gzip
import json
import math
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

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


def export_3d_implicit(service: TileService, layer_name: str, outdir: Path, selection: Selection = Selection(),
                       max_features: int = DEFAULT_MAX_FEATURES, subtree_levels: int = 4) -> ExportSummary:
    """``outdir/tileset.json`` (one root tile with ``implicitTiling``), ``outdir/subtrees/…`` and
    ``outdir/content/{level}/{x}/{y}.glb``: 3D Tiles 1.1 implicit tiling (see :mod:`tiles.implicit`)."""
    if not 1 <= subtree_levels <= 10:
        raise UserError(f"--subtree-levels: must be 1 to 10, got {subtree_levels}")
    layer = service.layer(layer_name)
    s = service.settings
    with service.engine.connect() as conn:
        version = content_version(conn, layer)
        features = read_features(conn, layer, s.srid, s.floor_height_m, selection)
        if features is None:  # nothing to subdivide: the explicit tileset of an empty layer says it
            return export_3d(service, layer_name, outdir, selection, max_features)
        tree = implicit.build_implicit(features, max_features, subtree_levels)
        w, so, e, n = tree.region[:4]
        frame = LocalFrame(math.degrees((w + e) / 2), math.degrees((so + n) / 2), 0.0)
        plan = Plan(layer, model_for(layer.name), version, selection, s.srid, s.floor_height_m, frame, None,
                    len(features), city_region(s.city_bbox_wgs84))
        n_tiles = 0
        for level, x, y, fids in tree.contents():
            tile = Tile(f"{level}/{x}/{y}", level, (0.0, 0.0, 0.0, 0.0), fids, tree.tile_region(level, x, y), 0.0)
            path = outdir / implicit.CONTENT_URI.format(level=level, x=x, y=y)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tile_glb(conn, plan, tile))
            n_tiles += 1
    for level, x, y in implicit.subtree_roots(tree):
        path = outdir / implicit.SUBTREE_URI.format(level=level, x=x, y=y)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(implicit.subtree_bytes(tree, level, x, y))
    explicit = tileset_json(plan)  # the same asset, schema and metadata as the explicit tileset
    doc = implicit.tileset_json(tree, frame.transform(), explicit["asset"],
                                {k: explicit[k] for k in ("schema", "metadata", "extras")})
    (outdir / "tileset.json").write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")),
                                         encoding="utf-8")
    return ExportSummary(n_tiles, len(features), 0, outdir)


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
