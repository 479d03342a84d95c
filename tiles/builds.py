"""Things that are costly to build and asked for by many threads at once (a tile plan): kept in a
bounded LRU, each built once however many requests ask for it together.

One lock guards the shared dicts, so no thread ever walks a dict another is changing. A build
itself runs outside that lock, under a lock of its own key: two requests for the same key build
once (the second waits and takes the first one's result), requests for different keys build side
by side. A key's build lock exists only while someone builds or waits for it, so neither dict
grows with the number of distinct keys ever asked for (every bbox or filter is a key).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Build(Generic[V]):
    """One key's build in progress: its lock, how many threads hold or wait for it, its result."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    done: bool = False
    value: V | None = None


class BuiltOnce(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._values: OrderedDict[K, V] = OrderedDict()
        self._builds: dict[K, _Build[V]] = {}
        self._guard = threading.Lock()

    def __len__(self) -> int:
        with self._guard:
            return len(self._values)

    @property
    def building(self) -> int:
        """Keys being built or waited for right now (0 when idle: build locks do not pile up)."""
        with self._guard:
            return len(self._builds)

    def peek(self, key: K) -> V | None:
        """The value of ``key`` if it has been built, else None (never builds)."""
        with self._guard:
            return self._values.get(key)

    def get(self, key: K, build: Callable[[], V], supersedes: Callable[[K], bool] | None = None) -> V:
        """The value of ``key``, built by ``build()`` if no one has it. ``supersedes(other)`` says
        which other keys the new value makes useless (an older version's plan): they are dropped."""
        with self._guard:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            pending = self._builds.get(key)
            if pending is None:
                pending = self._builds[key] = _Build()
            pending.users += 1
        try:
            with pending.lock:
                if not pending.done:  # the first thread in builds; the ones that waited take its value
                    value = build()
                    with self._guard:
                        if supersedes is not None:
                            for old in [k for k in self._values if k != key and supersedes(k)]:
                                del self._values[old]
                        self._values[key] = value
                        self._values.move_to_end(key)
                        while len(self._values) > self.max_entries:
                            self._values.popitem(last=False)
                    pending.value, pending.done = value, True
                return pending.value  # type: ignore[return-value]
        finally:
            with self._guard:
                pending.users -= 1
                if pending.users == 0:
                    del self._builds[key]
