"""Illegal construction (违法建筑): clues from five channels merged by spot (:mod:`.clues`), the
verification flow as case classes and a hook on the case loop (:mod:`.flow`), the illegal-structures
layer (:mod:`.structures`) and hot spots by grid over time (:mod:`.hotspots`). See docs/scenarios.md.

Importing the package installs the flow's hook on the case loop, so any process that may act on
these cases (the ``cim`` command, the API) runs the flow, whichever route the action takes.
"""
from __future__ import annotations

from scenarios.illegal_building.flow import install_hooks

install_hooks()
