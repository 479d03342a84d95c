"""The districts index is shared by the API's worker threads (every bbox page and vector tile asks it which
districts a box touches): concurrent first uses of its prepared union crashed the server in libgeos (the
Shanghai benchmark's tile run died with socket errors). No database: the index is built from shapes."""
from __future__ import annotations

import subprocess
import sys
import textwrap

HAMMER = textwrap.dedent("""
    import threading
    import numpy as np
    import shapely
    from cim.districts_index import _Index

    rng = np.random.default_rng(1)
    for attempt in range(10):  # a fresh index each time: the crash is in the lazily built structures
        t = np.linspace(0, 2 * np.pi, 400)
        polys = [shapely.Polygon(np.c_[np.cos(t) * 1000 + x, np.sin(t) * 1000 + y])
                 for x, y in rng.uniform(0, 20000, (16, 2))]
        cover = shapely.union_all(polys)
        shapely.prepare(cover)
        index = _Index(np.array([str(i) for i in range(16)], dtype=object), shapely.STRtree(polys), cover)
        boxes = rng.uniform(0, 20000, (2000, 2))
        answers = [None] * 8

        def work(k):
            answers[k] = [index.touching((x, y, x + 300, y + 300)) for x, y in boxes[k::8]]

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        alone = [index.touching((x, y, x + 300, y + 300)) for x, y in boxes]
        assert [a for k in range(8) for a in answers[k]] == [a for k in range(8) for a in alone[k::8]]
    print("ok")
""")


def test_concurrent_lookups_neither_crash_nor_differ():
    # in a child process: without the index's lock it dies of SIGSEGV / SIGABRT within a few rounds
    done = subprocess.run([sys.executable, "-c", HAMMER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])
