"""Group commit (api/group_commit.py) never puts two callers' items in one group: a group runs in the context
of the request that started it — under that caller's jurisdiction and name — so the case intake keys the
groups by the caller's scope. Pure asyncio, no database: the group function records the context it ran in."""
from __future__ import annotations

import asyncio
import contextvars
import threading

from api.group_commit import GroupCommit

caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="nobody")


def test_items_of_different_keys_never_share_a_group():
    groups: list[tuple[str, list[tuple[str, int]]]] = []
    lock = threading.Lock()

    def run_group(items):
        with lock:
            groups.append((caller.get(), list(items)))
        return [n for _, n in items]

    commit: GroupCommit = GroupCommit(run_group, window_s=0.01)

    async def request(who: str, n: int) -> int:
        caller.set(who)  # as the auth middleware sets the caller's scope for its request
        return await commit.submit((who, n), key=who)

    async def main() -> list[int]:
        return await asyncio.gather(*(asyncio.create_task(request("A" if n % 2 else "B", n)) for n in range(40)))

    assert asyncio.run(main()) == list(range(40))  # each request its own result
    assert sum(len(items) for _, items in groups) == 40
    assert len(groups) < 40, "concurrent items of one caller are grouped"
    for ran_as, items in groups:
        assert {who for who, _ in items} == {ran_as}, f"a group of {ran_as} held another caller's item: {items}"
