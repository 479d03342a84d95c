"""``/scenarios/…``: each scenario's routes live in ``api.scenario_<name>`` modules listed here, so the
scenario packages stay below the API (they never import it)."""
from __future__ import annotations

import importlib

from fastapi import FastAPI

#: API modules of the scenarios, each with an ``install(app)`` hook like the other routers.
SCENARIO_ROUTERS: tuple[str, ...] = ("api.scenario_curtain_wall", "api.scenario_flood", "api.scenario_illegal_building",
                                     "api.scenario_group_rental")


def install(app: FastAPI) -> None:
    for module_name in SCENARIO_ROUTERS:
        importlib.import_module(module_name).install(app)
