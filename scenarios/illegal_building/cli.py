"""``cim scenarios illegal-building …``: clues (one, a file, a change-polygon file), the flow's
findings and certificates, the illegal-structures layer, hot spots and the sample cluster."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from cim.cli.console import print_json
from cim.database import get_engine

illegal_app = typer.Typer(help="Illegal construction (违法建筑): clues from five channels, merged by spot, verified "
                               "by the street's 拆违办, compared with the illegal-structures layer; hot spots.",
                          no_args_is_help=True)

SAMPLE = Path(__file__).parent / "sample"


@illegal_app.command("clue")
def clue(channel: str = typer.Option(..., help="grid_patrol, demolition_patrol, hotline, property_app, "
                                               "remote_sensing"),
         lon: float | None = typer.Option(None), lat: float | None = typer.Option(None),
         crs: str = typer.Option("EPSG:4326", help="CRS of lon/lat (gcj02, bd09, EPSG:4549 …)."),
         address: str | None = typer.Option(None, help="Address text (geocoded) when there is no point."),
         description: str | None = typer.Option(None), external_id: str | None = typer.Option(None),
         reported_at: str | None = typer.Option(None, help="RFC 3339 with offset; default now.")) -> None:
    """Take one clue in: merged into the open spot it falls on, or the spot's verification case opens."""
    from scenarios.illegal_building.clues import Clue, add_clue
    from scenarios.illegal_building.importer import instant

    item = Clue(channel=channel, x=lon, y=lat, crs=crs, address_text=address, description=description,
                external_id=external_id,
                reported_at=instant("--reported-at", "reported_at", reported_at) if reported_at else None)
    with get_engine().begin() as conn:
        print_json(add_clue(conn, item).to_dict())


def _summary(results: list) -> dict:
    return {"clues": len(results), "new": sum(r.created for r in results),
            "spots_opened": sum(1 for r in results if r.created and r.merged_into is None),
            "merged": sum(1 for r in results if r.merged_into is not None),
            "cases": len({r.case_id for r in results if r.case_id is not None})}


@illegal_app.command("import")
def import_(path: Path = typer.Argument(..., help="CSV (channel,lon,lat,crs,address,description,external_id,"
                                                  "reported_at) or a JSON array with the same keys.")) -> None:
    """Clues from a file of any channel (idempotent on channel + external id)."""
    from scenarios.illegal_building.clues import add_clues
    from scenarios.illegal_building.importer import read_clues

    rows = read_clues(path)
    with get_engine().begin() as conn:
        print_json(_summary(add_clues(conn, rows)))


@illegal_app.command("changes")
def changes(path: Path = typer.Argument(..., help="Change polygons (GeoJSON, Shapefile, GeoPackage …)."),
            crs: str | None = typer.Option(None, help="CRS when the file declares none."),
            id_field: str = typer.Option("id", help="Column with the change's id (its external id)."),
            time_field: str = typer.Option("detected_at", help="Column with the detection time.")) -> None:
    """Clues from a remote-sensing change-polygon file (drones, satellites)."""
    from scenarios.illegal_building.clues import add_clues
    from scenarios.illegal_building.importer import read_changes

    rows = read_changes(path, crs, id_field, time_field)
    with get_engine().begin() as conn:
        print_json(_summary(add_clues(conn, rows)))


@illegal_app.command("spot")
def spot(clue_id: int = typer.Argument(...)) -> None:
    """The clues of the spot a clue belongs to."""
    from scenarios.illegal_building.clues import spot_of

    with get_engine().connect() as conn:
        print_json(spot_of(conn, clue_id))


@illegal_app.command("certificate")
def certificate(structure: str = typer.Argument(..., help="Code of the structure in the layer."),
                number: str = typer.Option(..., "--number", help="The property certificate's number.")) -> None:
    """A structure of the layer got a property certificate: open the district's re-check (E9605)."""
    from scenarios.illegal_building.flow import certificate as open_recheck

    with get_engine().begin() as conn:
        print_json({"structure_code": structure, "case_id": open_recheck(conn, structure, number)})


@illegal_app.command("structures")
def structures_(load: Path | None = typer.Option(None, "--load", help="Load a register of illegal structures "
                                                                      "(polygons with code, status, found_at)."),
                crs: str | None = typer.Option(None, help="CRS of the register when it declares none."),
                status: str | None = typer.Option(None), grid: str | None = typer.Option(None)) -> None:
    """The illegal-structures layer: load a register, or list it (one JSON object a line)."""
    from scenarios.illegal_building import structures

    if load is not None:
        with get_engine().begin() as conn:
            print_json(structures.load_register(conn, load, crs))
        return
    with get_engine().connect() as conn:
        for item in structures.list_structures(conn, status, grid):
            typer.echo(json.dumps(item, ensure_ascii=False, default=str))


@illegal_app.command("hotspots")
def hotspots_(month_from: str = typer.Option(..., "--from", help="First month, YYYY-MM."),
              month_to: str = typer.Option(..., "--to", help="Last month, YYYY-MM."),
              baseline: int = typer.Option(12, help="Months before each month that make its baseline."),
              alpha: float = typer.Option(0.01, help="Significance level."),
              min_count: int = typer.Option(3, help="Fewest spots in a month for a hot spot."),
              only_hot: bool = typer.Option(False, "--hot", help="Only hot grid-months.")) -> None:
    """Spots per grid per month with the grid's baseline and a Poisson significance."""
    from scenarios.illegal_building.hotspots import hotspots

    with get_engine().connect() as conn:
        for row in hotspots(conn, month_from, month_to, baseline, alpha, min_count, only_hot):
            typer.echo(json.dumps(row.to_dict(), ensure_ascii=False))


@illegal_app.command("sample")
def sample() -> None:
    """The sample city's cluster: the register of known structures, then a year of clues (files in
    scenarios/illegal_building/sample/; its 拆违办 posts are loaded first with
    `cim ingest responsibility scenarios/illegal_building/sample/responsibility.csv`)."""
    from scenarios.illegal_building import structures
    from scenarios.illegal_building.clues import add_clues
    from scenarios.illegal_building.importer import read_changes, read_clues

    clues = read_clues(SAMPLE / "clues.csv") + read_changes(SAMPLE / "changes.geojson")
    with get_engine().begin() as conn:
        loaded = structures.load_register(conn, SAMPLE / "structures.geojson")
        print_json({"structures": loaded, **_summary(add_clues(conn, clues))})


def register(scenarios_app: typer.Typer) -> None:
    scenarios_app.add_typer(illegal_app, name="illegal-building")
