"""Group commit: concurrent requests gathered into one database transaction.

A single case intake costs ~23 statements and a commit; 32 of them at once cost 32 commits and
32 geocode, grid and dispatch passes. :class:`GroupCommit` lets each request hand its item in
and wait: the items that arrive while the previous group runs (or within ``window_s``) are done
together by one call of ``run_group`` in a worker thread, and every request gets its own result
— or its own exception — back. With at most ``workers`` groups in flight at once, a busy server
makes bigger groups, not more transactions.

The window is waited only by a drainer that starts on an idle key (to gather a burst into one group): items
that queued while a group ran have waited long enough, and a drainer coming back from its group takes them at
once — a fixed ``window_s`` on top of every queued report's wait was pure latency, since the arrivals during a
group are gathered anyway. ``max_group`` caps a group, so no report waits behind an unbounded one.

Only items of the same ``key`` share a group: the case intake keys them by the caller's scope
(:class:`cim.jurisdiction.Scope`), because a group runs in the context of the request that started its
drainer — under that caller's jurisdiction and in that caller's name in the audit trail — so a group must
never hold another caller's item.

Loop-safe: the pending lists belong to the running event loop; a new loop (a test client that
opens one per request) starts afresh. No task outlives its group: a drainer ends when nothing is
pending.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``await submit(item)`` → the result ``run_group`` gave for the item (or raises its exception).

    ``run_group(items)`` runs in a thread and returns one result per item, in order: a value, or
    an exception instance, which is raised in the item's own request only."""

    def __init__(self, run_group: Callable[[Sequence[T]], Sequence[R | BaseException]],
                 window_s: float = 0.002, max_group: int = 256, workers: int = 2,
                 observe: Callable[[Sequence[float], float], None] | None = None) -> None:
        self._run = run_group
        self.window_s, self.max_group, self.workers = window_s, max_group, workers
        # told of each group: how long each of its items waited for it to start, and how long it ran (seconds)
        self._observe = observe
        self._state: _LoopState | None = None
        self.groups = 0  # how many groups ran (for tests and the benchmark)
        self.items = 0

    async def submit(self, item: T, key: Hashable = None) -> R:
        """``item``'s result, once the group it joins has run; only items of the same ``key`` are grouped
        (the drainer, and so the group, runs in the context of the request that started it)."""
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:  # a new event loop: nothing of the old one is awaited here
            state = self._state = _LoopState(loop)
        future: asyncio.Future[R] = loop.create_future()
        state.pending.setdefault(key, []).append((item, future, time.perf_counter()))
        if state.active.get(key, 0) < self.workers:
            state.active[key] = state.active.get(key, 0) + 1
            loop.create_task(self._drain(state, key))  # copies this request's context (its scope)
        return await future

    async def _drain(self, state: _LoopState, key: Hashable) -> None:
        pending = state.pending[key]
        gather = self.window_s > 0  # only the first group of a drainer waits for a burst to gather
        try:
            while pending:
                if gather and len(pending) < self.max_group:
                    # let the requests arriving right now join this group
                    await asyncio.sleep(self.window_s)
                gather = False  # what queues while this group runs is taken at once after it
                group = pending[:self.max_group]
                del pending[:self.max_group]
                if not group:
                    continue
                items = [item for item, _, _ in group]
                started = time.perf_counter()
                try:
                    results: Sequence[R | BaseException] = await run_in_threadpool(self._run, items)
                    if len(results) != len(items):
                        raise RuntimeError(f"group of {len(items)} answered {len(results)} results")
                except Exception as exc:  # the group as a whole failed: each request hears why
                    results = [exc] * len(items)
                self.groups += 1
                self.items += len(items)
                if self._observe is not None:
                    self._observe([started - queued for _, _, queued in group], time.perf_counter() - started)
                for (_, future, _), result in zip(group, results):
                    if future.done():  # the request went away meanwhile
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            state.active[key] -= 1
            if not state.active[key] and not pending:  # nothing left of this key: forget it
                del state.active[key]
                state.pending.pop(key, None)


class _LoopState:
    """The pending items and running drainers of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # per key: (item, its future, when it was submitted) in order of arrival
        self.pending: dict[Hashable, list[tuple[Any, asyncio.Future[Any], float]]] = {}
        self.active: dict[Hashable, int] = {}  # running drainers per key
