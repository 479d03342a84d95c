"""``cim tiles export-3d`` and ``cim tiles export-mvt``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from cim.cli.console import console

tiles_app = typer.Typer(help="3D Tiles and vector tiles of the city base, as static files.", no_args_is_help=True)


def _service():
    from cim.database import get_engine
    from tiles.cache import TileCache
    from tiles.service import TileService

    # no disk cache for exports: the output directory is the product
    return TileService(get_engine(), TileCache(None))


def _selection(bbox: Optional[str], filter_: Optional[str], filter_lang: str):
    from cim.selection import Selection, parse_bbox

    return Selection(parse_bbox(bbox), filter_, filter_lang)


@tiles_app.command("export-3d")
def export_3d(
    layer: str = typer.Argument(..., help="Layer: buildings, curtain-walls, pipelines, parts or iot-devices."),
    outdir: Path = typer.Argument(..., help="Directory for tileset.json and the glb tiles."),
    bbox: Optional[str] = typer.Option(None, help="minlon,minlat,maxlon,maxlat (CRS84)."),
    filter_: Optional[str] = typer.Option(None, "--filter", help="CQL2 filter on the layer's queryables."),
    filter_lang: str = typer.Option("cql2-text", "--filter-lang", help="cql2-text or cql2-json."),
    max_features: int = typer.Option(500, "--max-features", help="Most features in one tile."),
    implicit: bool = typer.Option(False, "--implicit", help="Implicit tiling (a quadtree in subtree files; a "
                                                            "small tileset.json for layers of millions)."),
    subtree_levels: int = typer.Option(4, "--subtree-levels", help="With --implicit: levels per subtree file."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --implicit: processes building the content "
                                                                  "tiles, each with its own connection (default: "
                                                                  "one per core)."),
) -> None:
    """Write a static 3D Tiles 1.1 tileset (glb content with per-feature metadata)."""
    from tiles.export import export_3d as run
    from tiles.export import default_workers, export_3d_implicit

    started = time.monotonic()
    selection = _selection(bbox, filter_, filter_lang)
    if implicit:
        summary = export_3d_implicit(_service(), layer, outdir, selection, max_features, subtree_levels,
                                     default_workers() if workers is None else workers)
    else:
        summary = run(_service(), layer, outdir, selection, max_features)
    console.print(f"{layer}: {summary.features} features in {summary.tiles} tiles → {summary.path / 'tileset.json'} "
                  f"({time.monotonic() - started:.1f} s)")


@tiles_app.command("export-mvt")
def export_mvt(
    layer: str = typer.Argument(..., help="Any layer (collection id), e.g. grids, streets, parts."),
    outdir: Optional[Path] = typer.Argument(None, help="Directory for z/x/y.pbf (omit with --mbtiles)."),
    zooms: str = typer.Option(..., "--zooms", help="Zoom range, e.g. 10-16."),
    mbtiles: Optional[Path] = typer.Option(None, "--mbtiles", help="Write one MBTiles file instead."),
    bbox: Optional[str] = typer.Option(None, help="minlon,minlat,maxlon,maxlat (CRS84)."),
    filter_: Optional[str] = typer.Option(None, "--filter", help="CQL2 filter on the layer's queryables."),
    filter_lang: str = typer.Option("cql2-text", "--filter-lang", help="cql2-text or cql2-json."),
    properties: Optional[str] = typer.Option(None, help="Comma-separated properties (default: all)."),
) -> None:
    """Write Mapbox vector tiles (WebMercatorQuad) of a layer for the given zooms."""
    from tiles.export import export_mvt as run, parse_zooms

    started = time.monotonic()
    props = [p.strip() for p in properties.split(",") if p.strip()] if properties is not None else None
    summary = run(_service(), layer, parse_zooms(zooms), outdir, mbtiles, _selection(bbox, filter_, filter_lang),
                  props)
    console.print(f"{layer}: {summary.tiles} tiles written ({summary.empty} empty skipped) → {summary.path} "
                  f"({time.monotonic() - started:.1f} s)")


def register(app: typer.Typer) -> None:
    app.add_typer(tiles_app, name="tiles")
