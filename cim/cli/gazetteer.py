"""``cim geocode`` and ``cim reverse``: the gazetteer from the command line.

``cim geocode "上海徐汇区汾阳路150号"`` answers one address (``--json`` for the full record);
``cim geocode --in FILE.csv --column NAME --out OUT.csv`` streams a CSV file in chunks, keeping
every input column and adding lon, lat (WGS84), match_level, score, standard_address and the
district/street/community/grid codes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cim.errors import UserError

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

CRS_HELP = "CRS of the answer: EPSG code (4326, 4490, the storage CRS), gcj02 or bd09."


def _area_line(label: str, area: dict | None) -> None:
    if area:
        console.print(f"  {label:<10} {area['code']} {area['name'] or ''}")


def _point(d: dict) -> str:
    if d.get("lon") is not None:
        return f"{d['lon']:.7f}, {d['lat']:.7f}"
    if d.get("x") is not None:
        return f"{d['x']:.3f}, {d['y']:.3f}"
    return "-"


def _print_assignment(assignment: dict) -> None:
    for level in ("district", "street", "community", "grid"):
        _area_line(level, assignment.get(level))
    for r in assignment.get("responsibility", []):
        people = ", ".join(f"{p['name']} {p['contact'] or ''}".strip() for p in r["persons"]) or "-"
        console.print(f"  {'post':<10} {r['post']['name']} ({r['department']['name']}): {people}")


def _print_geocode(d: dict) -> None:
    console.print(f"[bold]{d['standard_address'] or d['query']}[/]")
    ambiguous = "  [yellow]ambiguous[/]" if d["ambiguous"] else ""
    console.print(f"  {'match':<10} {d['match_level']} (score {d['score']:.2f}){ambiguous}")
    if d["match_level"] != "none":
        console.print(f"  {'point':<10} {_point(d)} ({d['crs']})")
    if d["reason"]:
        console.print(f"  {'why':<10} {d['reason']}")
    _print_assignment(d["assignment"])
    for c in d["candidates"]:
        console.print(f"  {'candidate':<10} {c['district']['name'] or '-'}: {c['match_level']} "
                      f"(score {c['score']:.2f}) at {_point(c)} {c['standard_address'] or ''}")


def _batch(input_path: Path, column: str | None, output_path: Path | None, encoding: str, chunk_rows: int) -> None:
    from cim.database import get_engine
    from cim.gazetteer.batch import geocode_csv

    if not column:
        raise UserError("--column: name the CSV column that holds the addresses")
    if output_path is None:
        raise UserError("--out: give the CSV file to write")
    if not input_path.is_file():
        raise UserError(f"--in: no such file {str(input_path)!r}")
    try:
        src = input_path.open(newline="", encoding=encoding)
    except LookupError:
        raise UserError(f"--encoding: unknown text encoding {encoding!r}") from None
    engine = get_engine()
    with src, output_path.open("w", newline="", encoding="utf-8") as dst, engine.connect() as conn:
        summary = geocode_csv(src, dst, column, conn, chunk_rows=chunk_rows)
    levels = ", ".join(f"{k} {v}" for k, v in summary.to_dict()["match_levels"].items() if v)
    err_console.print(f"{summary.rows} rows geocoded in {summary.seconds:.1f} s "
                      f"({summary.rows_per_second:,.0f} rows/s): {levels or 'none'}"
                      f"{f'; {summary.ambiguous} ambiguous' if summary.ambiguous else ''} -> {output_path}")


def geocode_command(
    address: Optional[str] = typer.Argument(None, help="The address to geocode (omit with --in)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full answer as JSON."),
    crs: str = typer.Option("EPSG:4326", "--crs", help=CRS_HELP),
    input_path: Optional[Path] = typer.Option(None, "--in", help="CSV file with a header row: geocode every row."),
    column: Optional[str] = typer.Option(None, "--column", help="With --in: the column holding the addresses."),
    output_path: Optional[Path] = typer.Option(None, "--out", help="With --in: the CSV file to write."),
    encoding: str = typer.Option("utf-8-sig", "--encoding", help="With --in: text encoding of the input (e.g. gbk)."),
    chunk_rows: int = typer.Option(5_000, "--chunk-rows", min=1, help="With --in: rows geocoded per chunk."),
) -> None:
    """Geocode an address: point, match level, score, and the grid and people responsible."""
    if input_path is not None:
        if address is not None:
            raise UserError("give either an ADDRESS or --in FILE, not both")
        _batch(input_path, column, output_path, encoding, chunk_rows)
        return
    if address is None or not address.strip():
        raise UserError("ADDRESS: give an address to geocode, or --in FILE.csv --column NAME --out OUT.csv")
    from cim.crs import resolve_crs
    from cim.database import get_engine
    from cim.gazetteer.geocode import geocode

    spec = resolve_crs(crs)  # a bad --crs fails before the database is opened
    with get_engine().connect() as conn:
        answer = geocode(conn, address, spec).to_dict()
    if as_json:
        typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
    else:
        _print_geocode(answer)


def reverse_command(
    lon: float = typer.Option(..., "--lon", help="Longitude (or easting in a projected --crs)."),
    lat: float = typer.Option(..., "--lat", help="Latitude (or northing in a projected --crs)."),
    crs: str = typer.Option("EPSG:4326", "--crs", help="CRS of --lon/--lat and of the answer (EPSG code, gcj02, bd09)."),
    radius: float = typer.Option(100.0, "--radius", help="Search radius in metres (at most 2000)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full answer as JSON."),
) -> None:
    """The address nearest a point within a radius, and the grid/community/street/district there."""
    from cim.crs import resolve_crs
    from cim.database import get_engine
    from cim.gazetteer.reverse import check_radius, reverse

    spec = resolve_crs(crs)
    check_radius(radius)
    with get_engine().connect() as conn:
        answer = reverse(conn, lon, lat, spec, radius).to_dict()
    if as_json:
        typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    address = answer["address"]
    if address:
        console.print(f"[bold]{address['standard_address']}[/]")
        console.print(f"  {'distance':<10} {address['distance_m']:.1f} m")
        console.print(f"  {'point':<10} {_point(address)} ({answer['query']['crs']})")
    else:
        console.print(f"[bold]no address within {answer['query']['radius_m']:g} m[/]")
    _print_assignment(answer["assignment"])


def register(app: typer.Typer) -> None:
    app.command("geocode")(geocode_command)
    app.command("reverse")(reverse_command)
