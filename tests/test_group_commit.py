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


def test_items_queued_behind_a_group_do_not_wait_the_window_again():
    """The window gathers a burst on an idle key; reports that queued while a group ran have waited already,
    so the drainer takes them as soon as its group is done. The window here is far longer than the test's
    time-out: a drainer that waited it again would fail the test, not slow it."""
    release = threading.Event()
    started = threading.Event()
    groups: list[list[int]] = []

    def run_group(items):
        groups.append(list(items))
        if len(groups) == 1:
            started.set()
            release.wait(10)
        return list(items)

    # the first group is full (max_group), so it starts without the window
    commit: GroupCommit = GroupCommit(run_group, window_s=60.0, max_group=2, workers=1)

    async def main() -> list[int]:
        first = [asyncio.create_task(commit.submit(n)) for n in (1, 2)]
        while not started.is_set():
            await asyncio.sleep(0.001)
        queued = asyncio.create_task(commit.submit(3))  # arrives while the first group runs
        await asyncio.sleep(0.01)
        release.set()
        return await asyncio.wait_for(asyncio.gather(*first, queued), timeout=10)

    assert asyncio.run(main()) == [1, 2, 3]
    assert groups == [[1, 2], [3]]


def test_a_group_holds_at_most_max_group_items():
    groups: list[list[int]] = []

    def run_group(items):
        groups.append(list(items))
        return list(items)

    commit: GroupCommit = GroupCommit(run_group, window_s=0.01, max_group=4, workers=1)

    async def main() -> list[int]:
        return await asyncio.gather(*(asyncio.create_task(commit.submit(n)) for n in range(10)))

    assert asyncio.run(main()) == list(range(10))
    assert [len(g) for g in groups] == [4, 4, 2]
