"""A value kept for a while: what a long-running process (the API server) reads from the base and re-reads
once it is older than a deployment setting allows (``CIM_LAYER_CACHE_S``: the layer registry, the case
intake's constants, the district frame of :mod:`cim.districts_index`). The one place that says when a kept
value is stale, so that every such cache ages the same way.

The age is counted from when the read *began*: a change made while it ran is seen at the next read, never
missed. Reading is not under a lock — two threads finding it stale at once may both read, and the later
answer stays — because a read is a query or two and a lock held over it would queue every request behind
one slow read; putting and taking the value are under a lock.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Kept(Generic[T]):
    """One value, fresh for ``max_age_s`` seconds after the read that gave it began (0: never fresh).
    ``clock`` is injectable for tests; ``reads`` counts the reads (for tests)."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at: float | None = None
        self.reads = 0

    def fresh(self, max_age_s: float | None = None) -> T | None:
        """The value while it is fresh, else None; ``max_age_s``: the age allowed now, for a cache whose
        setting is read at each use (default: the one it was made with)."""
        with self._lock:
            value, read_at = self._value, self._read_at
        allowed = self.max_age_s if max_age_s is None else max_age_s
        if read_at is not None and self._clock() - read_at <= allowed:
            return value
        return None

    def latest(self) -> T | None:
        """The value last kept, fresh or not (None before the first)."""
        with self._lock:
            return self._value

    def put(self, value: T, read_at: float) -> T:
        """Keep ``value``, read (or checked) at ``read_at`` (this cache's clock, :meth:`now`)."""
        with self._lock:
            self._value, self._read_at = value, read_at
            self.reads += 1
        return value

    def now(self) -> float:
        return self._clock()

    def get(self, read: Callable[[], T]) -> T:
        """The fresh value, or ``read()``'s, which is kept."""
        value = self.fresh()
        if value is not None:
            return value
        started = self._clock()
        return self.put(read(), started)

    def forget(self) -> None:
        with self._lock:
            self._value, self._read_at = None, None
