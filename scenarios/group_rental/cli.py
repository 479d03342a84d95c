"""``cim scenarios group-rental …``."""
from __future__ import annotations

import typer

rental_app = typer.Typer(help="Group rental (群租).", no_args_is_help=True)


def register(scenarios_app: typer.Typer) -> None:
    scenarios_app.add_typer(rental_app, name="group-rental")
