"""Scenarios on the base (场景): each a chain of data → detection → case → handling → verification.

Each scenario is a subpackage of its own (``scenarios.curtain_wall``, ``scenarios.flood``,
``scenarios.illegal_building``, ``scenarios.group_rental``) built on the core (:mod:`cim`), the case loop
(:mod:`cases`) and live sensing (:mod:`sensing`); nothing imports a scenario back except the API and the
``cim`` command, which find them through :data:`SCENARIOS`.
"""
from __future__ import annotations

#: The scenario subpackages, each with a ``cli`` module (a ``register(scenarios_app)`` hook) and, when it
#: serves HTTP, an ``api`` router module of the outermost layer under ``api.scenarios``.
SCENARIOS: tuple[str, ...] = ("curtain_wall", "flood", "illegal_building", "group_rental")
