"""Every benchmark still starts: ``python benchmarks/X.py --help`` imports what the script imports and builds its
arguments. The benchmarks are run by hand, not by the suite, so a helper renamed or removed elsewhere (as
``make_buildings``, which benchmarks/tiles.py and the Shanghai query step import, once was) would otherwise be
found only by the next person who runs one."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT

SCRIPTS = sorted(p for p in (PROJECT / "benchmarks").glob("*.py") if p.name != "scratch.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_the_benchmark_starts(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=PROJECT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
