"""The ``cim`` command: joins the core's sub-commands and each edge's (ingest, tiles, api).

The core must not depend on its edges, so each edge is imported here only by name, through its own
``register(app)`` hook — and only when one of its commands runs: importing every command group
cost 1.8 s of CPU before any command started (pandas, the gazetteer, FastAPI …). ``cim --help``
lists every command from :data:`COMMANDS` without importing a module; ``cim cases import`` imports
``cases.cli`` and what it needs, nothing of tiles, ingest or the scenarios.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from cim import extensions
from cim.cli.console import err_console
from cim.errors import UserError

EDGE_MODULES = ("ingest.cli", "tiles.cli", "cases.cli", "sensing.cli", "scenarios.cli", "vitals.cli", "api.cli")
CORE_MODULES = ("cim.cli.db", "cim.cli.gazetteer", "cim.cli.grid", "cim.cli.keys", "cim.cli.users", "cim.cli.audit")

#: Each top-level command → the module whose ``register(app)`` adds it, and its one-line help, in the
#: order ``cim --help`` lists them (single commands first, then groups, as typer does). A module is
#: imported when one of its commands runs; a module of CORE_MODULES or EDGE_MODULES not named here
#: (a new edge) is imported up front, as all were before. tests/test_cli_lazy.py checks this table
#: against what each module really registers, so the help here cannot drift from the modules'.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("cim.cli.db", "Create or upgrade the schema and seed code lists (idempotent)."),
    "geocode": ("cim.cli.gazetteer", "Geocode an address: point, match level, score, and the grid and people "
                                     "responsible."),
    "reverse": ("cim.cli.gazetteer", "The address nearest a point within a radius, and the "
                                     "grid/community/street/district there."),
    "audit": ("cim.cli.audit", "Who did what, when and from where: every write, every unmasked read of personal "
                               "data."),
    "serve": ("api.cli", "Serve the spatial API, tiles and viewer."),
    "db": ("cim.cli.db", "The embedded PostgreSQL + PostGIS cluster (or CIM_DATABASE_URL)."),
    "grid": ("cim.cli.grid", "Grid management units: which grid a point lies in and who answers for it."),
    "keys": ("cim.cli.keys", "API keys: reader (read when keys are required), loader (upload data), admin."),
    "users": ("cim.cli.users", "Users: a role and a jurisdiction (city, district, street, grids, department); "
                               "their API keys come from 'cim keys create --user'."),
    "ingest": ("ingest.cli", "Load survey deliveries into the city base."),
    "samples": ("ingest.cli", "The sample city in data_samples/."),
    "tiles": ("tiles.cli", "3D Tiles and vector tiles of the city base, as static files."),
    "cases": ("cases.cli", "City-management cases (部件/事件): intake, dispatch, lifecycle, evaluation."),
    "iot": ("sensing.cli", "Live sensing: readings from MQTT, threshold rules, simulation."),
    "scenarios": ("scenarios.cli", "Scenarios: curtain-wall risk, water-logging response, illegal construction, "
                                   "group rental."),
    "vitals": ("vitals.cli", "City vital signs (城市生命体征): catalogue, computation, fed values."),
}

#: Modules that add commands to a group another module registers (``cases.cli`` adds ``cim ingest
#: case-classes``: the loaders may not import the case loop), loaded right after that module.
EXTENDS: dict[str, tuple[str, ...]] = {"ingest.cli": ("cases.cli",)}


def _root(as_user: str | None = typer.Option(
        None, "--as", metavar="USER", help="Run the command in this user's jurisdiction (row-level security, as "
                                           "the API does); without it, commands run as the database owner.")) -> None:
    if as_user:
        from cim.cli.users import act_as

        act_as(as_user)


def _import(module_name: str) -> Any:
    """The module, or None when its edge is absent (a real missing dependency still raises)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise
        return None


class _Pending(TyperCommand):
    """A command whose module is not imported yet: its name and help, for listings only."""

    def __init__(self, name: str, module_name: str, help_text: str) -> None:
        super().__init__(name, help=help_text)
        self.module_name = module_name


class LazyGroup(TyperGroup):
    """The root group: each module's commands stand in as :class:`_Pending` until one of them is
    resolved to run, then the module is imported and registered and its real commands take their place."""

    markup_mode: Any = None  # the root's rich_markup_mode, for the groups registered later

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        pending = self.commands.get(args[0]) if args else None
        if isinstance(pending, _Pending):
            self._load(pending.module_name)
        return super().resolve_command(ctx, args)

    def _load(self, module_name: str) -> None:
        scratch = typer.Typer(rich_markup_mode=self.markup_mode)
        scratch.callback()(lambda: None)  # a group, so that a single command (`init`) stays a command
        module = _import(module_name)
        if module is None:  # its edge is not installed: its commands are unknown, as before
            for name in [n for n, c in self.commands.items() if getattr(c, "module_name", None) == module_name]:
                del self.commands[name]
            return
        module.register(scratch)
        for extension in EXTENDS.get(module_name, ()):
            found = _import(extension)
            if found is not None:
                found.register(scratch)
        self.commands.update(typer.main.get_command(scratch).commands)  # type: ignore[attr-defined]


def _case_hooks() -> None:
    """Import the scenarios: each registers its hooks into the case loop's actions on import."""
    scenarios = _import("scenarios")
    for name in getattr(scenarios, "SCENARIOS", ()):
        importlib.import_module(f"scenarios.{name}")


def build_app() -> typer.Typer:
    # typer draws usage errors and help in rich panels 80 columns wide even into a pipe; output that is
    # not a terminal gets click's plain, unwrapped lines instead (see cim.cli.console)
    markup = "rich" if err_console.is_terminal else None
    eager = [m for m in CORE_MODULES + EDGE_MODULES if m not in {module for module, _ in COMMANDS.values()}]

    class Root(LazyGroup):
        markup_mode = markup

        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            for name, (module_name, help_text) in COMMANDS.items():
                self.commands.setdefault(name, _Pending(name, module_name, help_text))

    app = typer.Typer(name="cim", help="CIM city data platform: PostGIS 3D base, loaders, gazetteer, API, tiles.",
                      no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                      rich_markup_mode=markup, cls=Root)
    app.callback()(_root)
    for module_name in eager:
        module = _import(module_name)
        if module is not None:
            module.register(app)
    extensions.defer(extensions.CASE_HOOKS, _case_hooks)  # `cim cases act` runs the scenarios' hooks
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
