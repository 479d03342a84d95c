"""``cim ingest LAYER PATH…``, ``cim ingest runs`` and ``cim samples load``."""
from __future__ import annotations

import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cim.cli.console import console
from ingest.columns import parse_mapping
from ingest.specs import SPECS

ingest_app = typer.Typer(help="Load survey deliveries into the city base.", no_args_is_help=True,
                         invoke_without_command=False)
samples_app = typer.Typer(help="The sample city in data_samples/.", no_args_is_help=True)


def load(
    layer: str = typer.Argument(..., help=f"One of: {', '.join(SPECS)}"),
    paths: list[Path] = typer.Argument(..., help="Files: GeoJSON(Seq), Shapefile (.shp/.zip), GeoPackage, "
                                                 "FlatGeobuf, GeoParquet, CSV."),
    crs: Optional[str] = typer.Option(None, help="Source CRS: EPSG code, gcj02 or bd09 (overrides the file's)."),
    encoding: Optional[str] = typer.Option(None, help="Text encoding (overrides .cpg), e.g. GBK."),
    layer_name: Optional[str] = typer.Option(None, "--layer", help="Layer inside a GeoPackage / zip."),
    x: Optional[str] = typer.Option(None, "--x", help="CSV: x / longitude column."),
    y: Optional[str] = typer.Option(None, "--y", help="CSV: y / latitude column."),
    z: Optional[str] = typer.Option(None, "--z", help="CSV: z column."),
    wkt: Optional[str] = typer.Option(None, "--wkt", help="CSV: WKT geometry column."),
    address_column: Optional[str] = typer.Option(None, help="addresses: one full-address column, parsed on load."),
    mapping: list[str] = typer.Option([], "--map", help="FIELD=COLUMN (repeatable)."),
    mapping_file: Optional[Path] = typer.Option(None, help="JSON file {field: column}."),
    mode: str = typer.Option("upsert", help="upsert (by source id) | append | replace (also closes absent)."),
    strict: bool = typer.Option(False, help="Reject the whole file on any error."),
    dry_run: bool = typer.Option(False, help="Validate and report; write nothing."),
    rejects_dir: Optional[Path] = typer.Option(None, help="Where rejects files go (default $CIM_HOME/rejects)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Load LAYER from PATH… (validated, enriched with grid codes, merged with history)."""
    from cim.database import get_engine
    from ingest.run import IngestOptions

    options = IngestOptions(crs=crs, encoding=encoding, layer_name=layer_name, x=x, y=y, z=z, wkt=wkt,
                            address_column=address_column, mapping=parse_mapping(mapping, mapping_file), mode=mode,
                            strict=strict, dry_run=dry_run, rejects_dir=rejects_dir)
    report = _run_with_progress(layer, paths, options, get_engine(), quiet=as_json)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    if report.read and report.rejected >= report.read:
        # a batch script must notice a delivery that loaded nothing: the summary and rejects are as usual
        rejects = ", ".join(f.rejects_file for f in report.files if f.rejects_file)
        typer.echo(f"error: every one of the {report.read:,} row(s) was rejected, nothing loaded (see {rejects})",
                   err=True)
        raise typer.Exit(1)


def _run_with_progress(layer, paths, options, engine, quiet: bool):
    from ingest.run import ingest_files

    if quiet or not sys.stderr.isatty():
        return ingest_files(layer, paths, options, engine)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task(f"{layer}", total=None, rate="-")

        def advance(n: int) -> None:
            progress.advance(task, n)
            elapsed = progress.tasks[0].elapsed or 0
            if elapsed:
                progress.update(task, rate=f"{progress.tasks[0].completed / elapsed:,.0f}")

        return ingest_files(layer, paths, options, engine, progress=advance)


def _print_report(report) -> None:
    verb = "would load" if report.dry_run else "loaded"
    console.print(f"[bold]{report.layer}[/] {verb} (mode {report.mode}, run {report.run_id or '-'}): "
                  f"read {report.read:,}, inserted {report.inserted:,}, updated {report.updated:,}, "
                  f"unchanged {report.unchanged:,}, closed {report.closed:,}, rejected {report.rejected:,} "
                  f"in {report.duration_s:.1f} s")
    for f in report.files:
        console.print(f"  {f.path}: {f.format}, CRS {f.crs or '-'}, encoding {f.encoding or '-'}, "
                      f"{f.read:,} rows, {f.rejected:,} rejected")
        for note in f.notes:
            console.print(f"    note: {note}")
        if f.rejects_file:
            console.print(f"    rejects: {f.rejects_file}")


def runs(limit: int = typer.Option(20, help="How many runs to show, newest first."),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable list.")) -> None:
    """List ingest runs (provenance)."""
    import sqlalchemy as sa

    from cim.database import get_engine

    with get_engine().connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, layer, status, mode, started_at, duration_s, operator, n_read, n_inserted, n_updated, "
            "n_unchanged, n_closed, n_rejected, files FROM ingest_runs ORDER BY id DESC LIMIT :n"), {"n": limit}).all()
    if as_json:
        typer.echo(json.dumps([{**r._asdict(), "started_at": r.started_at.isoformat()} for r in rows],
                              ensure_ascii=False, indent=2))
        return
    table = Table("run", "layer", "status", "mode", "started", "s", "operator", "read", "ins", "upd", "same",
                  "closed", "rej", "files")
    for r in rows:
        files = ", ".join(f"{Path(f['path']).name} ({f['sha256'][:8]})" for f in r.files)
        table.add_row(str(r.id), r.layer, r.status, r.mode or "", f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                      f"{r.duration_s or 0:.1f}", r.operator or "", *(f"{v:,}" for v in r[7:13]), files)
    # a listing piped to a file should not be cut to 80 columns
    (console if sys.stdout.isatty() else Console(width=220)).print(table)


def reorder(
    layers: Optional[list[str]] = typer.Argument(None, help="Layers to rewrite (default: every layer with a "
                                                             "geometry), e.g. parts buildings."),
    districts: list[str] = typer.Option([], "--district", help="Only this district's partition (6-digit code; "
                                                                "repeatable)."),
    jobs: int = typer.Option(2, "--jobs", min=1, help="Tables rewritten at once (one server backend each)."),
) -> None:
    """Rewrite loaded layers on disk in spatial order, so a tile's or a page's rows share blocks.

    Each district's partition is rewritten in its own transaction and is locked while it is (that district's
    readers wait); ids, history and indexes stay as they are."""
    from cim.config import database_target
    from cim.database import get_engine
    from ingest.reorder import Reordered, reorder, reorder_targets

    engine = get_engine()
    targets = reorder_targets(engine, layers or (), districts)
    data_dir = None
    if not database_target().is_external:
        from cim.cluster import Cluster

        data_dir = Cluster.default().datadir
    total = sum(t.bytes for t in targets)
    console.print(f"rewriting {len(targets)} table(s), {total / 2**20:,.0f} MiB, {jobs} at a time")

    def done(r: Reordered) -> None:
        console.print(f"  {r.target.table}: {r.rows:,} rows, {r.target.bytes / 2**20:,.0f} → "
                      f"{r.bytes_after / 2**20:,.0f} MiB, {r.seconds:.1f} s")

    reorder(engine, targets, jobs=jobs, data_dir=data_dir, on_done=done)


def samples_load(
    directory: Path = typer.Option(Path("data_samples"), help="Folder with manifest.json."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable summaries."),
) -> None:
    """Load the whole sample city through the same loaders (what `make demo` does)."""
    from cim.database import get_engine
    from ingest.samples import load_samples

    reports = load_samples(directory, get_engine(), on_report=None if as_json else _print_report)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in reports], ensure_ascii=False, indent=2))


def samples_generate(
    out: Path = typer.Option(..., "--out", help="Folder to write the city's files and manifest.json into."),
    scale: str = typer.Option("shanghai", help="'shanghai' (15 M parts, 10 M addresses, 1.5 M buildings …) or a "
                                                "fraction of it, e.g. 0.01."),
    seed: int = typer.Option(1, help="Random seed: the same seed and scale give the same files."),
) -> None:
    """Write a synthetic city of Shanghai's size (or a fraction) as files for `cim samples load --directory`."""
    import time

    from ingest.synthetic_city import generate_city, parse_scale

    started = time.perf_counter()
    report = generate_city(out, parse_scale(scale), seed)
    typer.echo(json.dumps({**report.as_dict(), "seconds": round(time.perf_counter() - started, 1)},
                          ensure_ascii=False, indent=2))


def register(app: typer.Typer) -> None:
    ingest_app.command("runs")(runs)
    ingest_app.command("reorder")(reorder)
    app.add_typer(ingest_app, name="ingest")
    samples_app.command("load")(samples_load)
    samples_app.command("generate")(samples_generate)
    app.add_typer(samples_app, name="samples")


def _layer_command(layer: str):
    """``load`` with LAYER fixed, so each layer is its own sub-command beside ``runs``."""
    def command(**kwargs) -> None:
        load(layer, **kwargs)

    signature = inspect.signature(load)
    hints = typing.get_type_hints(load)  # resolved types: this module uses postponed annotations
    command.__signature__ = signature.replace(
        parameters=[p.replace(annotation=hints[p.name]) for p in signature.parameters.values() if p.name != "layer"],
        return_annotation=None)
    command.__doc__ = f"Load the {layer} layer from PATH… (validated, enriched, merged with history)."
    return command


for _layer in SPECS:
    ingest_app.command(_layer)(_layer_command(_layer))
