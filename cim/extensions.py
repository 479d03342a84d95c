"""Packages imported for what their import registers, on first need instead of up front.

A scenario registers its hooks into the case loop's state machine (``cases.lifecycle.on_action``) when
its package is imported. The API imports every scenario anyway; the ``cim`` command imports a command
group only when one of its commands runs (``cim.cli.main``), so ``cim cases act`` would run without
the scenarios' hooks. The command therefore *defers* their import to an extension point here, and the
case loop *loads* that point just before it first looks a hook up: the scenarios are imported only by
a command that runs an action. The core names no edge: whoever defers a loader names the packages.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

#: the extension point the case loop loads before it looks up an action's hooks
CASE_HOOKS = "cases.hooks"

_pending: dict[str, list[Callable[[], None]]] = {}
_lock = threading.RLock()


def defer(point: str, loader: Callable[[], None]) -> None:
    """Run ``loader`` (it imports what registers into ``point``) the first time ``point`` is loaded."""
    with _lock:
        _pending.setdefault(point, []).append(loader)


def load(point: str) -> None:
    """Run, once, the loaders deferred to ``point`` (cheap when there are none). A caller that comes
    while another thread loads waits for it; a loader that fails stays deferred (and raises again)."""
    if point not in _pending:
        return
    with _lock:
        loaders = _pending.get(point, [])
        while loaders:
            loaders[0]()
            del loaders[0]
        _pending.pop(point, None)
