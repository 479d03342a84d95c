"""``cim vitals``: the indicator catalogue, computing the vital signs, loading fed values, showing them."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from cim.cli.console import print_json

vitals_app = typer.Typer(help="City vital signs (城市生命体征): catalogue, computation, fed values.",
                         no_args_is_help=True)
catalogue_app = typer.Typer(help="The indicator catalogue.", no_args_is_help=True)


def _instant(text: str, parameter: str) -> datetime:
    from cim.errors import ParameterError, UserError
    from cim.times import day_start, parse_instant

    try:
        value = parse_instant(text, parameter)
    except ParameterError as exc:  # the core's message names the value; the command line names the option
        raise UserError(f"{parameter}: {exc}") from None
    return value if isinstance(value, datetime) else day_start(value)


def compute(at: Optional[str] = typer.Option(None, "--at", help="The time (RFC 3339 with offset); default now."),
            indicator: list[str] = typer.Option([], "--indicator", help="Only this indicator (repeatable)."),
            quiet: bool = typer.Option(False, "--quiet", help="Totals only, not each indicator.")) -> None:
    """Compute the platform's indicators at a time (again: the time's computed values are replaced)."""
    from cim.database import get_engine
    from vitals.compute import compute as run

    when = _instant(at, "--at") if at else datetime.now(timezone.utc)
    with get_engine().begin() as conn:
        report = run(conn, when, indicator or None).as_dict()
    if quiet:
        report.pop("per_indicator")
    print_json(report)


def load(path: Path = typer.Argument(..., help="CSV: indicator, level, area_code, time, value.")) -> None:
    """Load values of fed indicators; a file with any bad row is rejected whole."""
    from cim.database import get_engine
    from vitals.feed import load_feed

    with get_engine().begin() as conn:
        print_json(load_feed(conn, path).as_dict())


def show(level: str = typer.Option("city", help="city | district | street | grid."),
         code: Optional[str] = typer.Option(None, help="The area's code (default: the city)."),
         worst: int = typer.Option(3, help="Worst indicators listed per dimension.")) -> None:
    """The newest vital signs of an area per dimension, worst first."""
    from cim.database import get_engine
    from vitals.query import summary

    with get_engine().connect() as conn:
        print_json(summary(conn, level, code, worst))


def catalogue_load(path: Optional[Path] = typer.Argument(None, help="A catalogue CSV; default: the packaged one.")) -> None:
    """Write the catalogue into the base (new indicators added, changed ones updated)."""
    from cim.database import get_engine
    from vitals.catalogue import load_catalogue

    with get_engine().begin() as conn:
        print_json({"written": load_catalogue(conn, path)})


def catalogue_list(dimension: Optional[str] = typer.Option(None, help="One of the six (Chinese or English)."),
                   source: Optional[str] = typer.Option(None, help="computed | fed.")) -> None:
    """The indicators, one line each: code, dimension, name, unit, computation, levels."""
    from cim.database import get_engine
    from vitals.catalogue import list_indicators

    with get_engine().begin() as conn:
        for i in list_indicators(conn, dimension, source):
            limits = f"{i.yellow:g}/{i.red:g}" if i.yellow is not None else "-"
            typer.echo(f"{i.code}\t{i.dimension}\t{i.name_zh} {i.name_en}\t{i.unit}\t{i.compute}\t{i.direction}"
                       f"\t{limits}\t{';'.join(i.levels)}")


def register(app: typer.Typer) -> None:
    vitals_app.command("compute")(compute)
    vitals_app.command("load")(load)
    vitals_app.command("show")(show)
    catalogue_app.command("load")(catalogue_load)
    catalogue_app.command("list")(catalogue_list)
    vitals_app.add_typer(catalogue_app, name="catalogue")
    app.add_typer(vitals_app, name="vitals")
