"""The ``cim`` command: joins the core's sub-commands and each edge's (ingest, tiles, api).

The core must not depend on its edges, so each edge is imported here only when the app is
built, through its own ``register(app)`` hook.
"""
from __future__ import annotations

import importlib
import sys

import typer
from cim.cli.console import err_console
from cim.errors import UserError

EDGE_MODULES = ("ingest.cli", "tiles.cli", "cases.cli", "sensing.cli", "scenarios.cli", "vitals.cli", "api.cli")
CORE_MODULES = ("cim.cli.db", "cim.cli.gazetteer", "cim.cli.grid", "cim.cli.keys", "cim.cli.users", "cim.cli.audit")


def _root(as_user: str | None = typer.Option(
        None, "--as", metavar="USER", help="Run the command in this user's jurisdiction (row-level security, as "
                                           "the API does); without it, commands run as the database owner.")) -> None:
    if as_user:
        from cim.cli.users import act_as

        act_as(as_user)


def build_app() -> typer.Typer:
    # typer draws usage errors and help in rich panels 80 columns wide even into a pipe; output that is
    # not a terminal gets click's plain, unwrapped lines instead (see cim.cli.console)
    app = typer.Typer(name="cim", help="CIM city data platform: PostGIS 3D base, loaders, gazetteer, API, tiles.",
                      no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                      rich_markup_mode="rich" if err_console.is_terminal else None)
    app.callback()(_root)
    for module_name in CORE_MODULES + EDGE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real missing dependency, not an absent edge
                raise
            continue
        module.register(app)
    return app


def run() -> None:
    """Console entry point: a user's mistake becomes one clear line and exit code 1, never a traceback."""
    try:
        build_app()()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    run()
