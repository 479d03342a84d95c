"""The server's entry point (``api.asgi``, what ``cim serve`` runs) leaves what start-up made out of the garbage
collector's generations, so that a full collection during a request does not walk it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import gc
import api.asgi
frozen = gc.get_freeze_count()
tracked = len(gc.get_objects())
print(frozen, tracked)
"""


def test_start_up_objects_are_frozen_out_of_the_collector(db_url):
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "CIM_DATABASE_URL": db_url}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen, tracked = (int(v) for v in done.stdout.split())
    assert frozen > 50_000, (frozen, tracked)  # the app and its libraries
    assert tracked < frozen / 10, (frozen, tracked)  # what a full collection still walks
