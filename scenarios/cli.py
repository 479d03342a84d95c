"""``cim scenarios …``: one sub-command group per scenario, each registered by its own ``cli`` module."""
from __future__ import annotations

import importlib

import typer

from scenarios import SCENARIOS

scenarios_app = typer.Typer(help="Scenarios: curtain-wall risk, water-logging response, illegal construction, "
                                 "group rental.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    for name in SCENARIOS:
        importlib.import_module(f"scenarios.{name}.cli").register(scenarios_app)
    app.add_typer(scenarios_app, name="scenarios")
