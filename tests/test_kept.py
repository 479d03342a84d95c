"""cim.kept.Kept, the one way a long-running process keeps what it read from the base for a while (the layer
registry, the case intake's constants, the district frame): fresh for max_age_s after its read began."""
from __future__ import annotations

from cim.kept import Kept


def test_kept_until_older_than_max_age_counted_from_the_read_start():
    clock = [100.0]
    reads = []

    def read() -> str:
        reads.append(clock[0])
        clock[0] += 2.0  # the read itself takes 2 s: the age counts from when it began
        return f"v{len(reads)}"

    kept: Kept[str] = Kept(5.0, clock=lambda: clock[0])
    assert kept.fresh() is None and kept.latest() is None
    assert kept.get(read) == "v1" and kept.reads == 1
    clock[0] = 105.0
    assert kept.get(read) == "v1" and kept.fresh() == "v1"  # 5 s after the read began: still fresh
    clock[0] = 105.5
    assert kept.fresh() is None and kept.latest() == "v1"
    assert kept.get(read) == "v2" and reads == [100.0, 105.5] and kept.reads == 2
    kept.forget()
    assert kept.latest() is None
    assert Kept(0.0, clock=lambda: clock[0]).get(read) == "v3"
