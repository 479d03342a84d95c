"""Where things live: CIM_HOME, which database to use, and the storage defaults.

Settings that must stay fixed once data exists (storage SRID, city extent) are kept in the
database itself (table ``cim_settings``, see :mod:`cim.settings`), not here, so every process
that opens the base agrees on them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STORAGE_SRID = 4549  # CGCS2000 / 3-degree Gauss-Krüger CM 120E, metres
# lon_min, lat_min, lon_max, lat_max in WGS84: the whole of Shanghai incl. Chongming and the islands
SHANGHAI_BBOX_WGS84: tuple[float, float, float, float] = (120.85, 30.66, 122.20, 31.88)
DEFAULT_FLOOR_HEIGHT_M = 3.0


def cim_home() -> Path:
    """The project-local state directory (embedded cluster, caches): ``$CIM_HOME`` or ``./.cim``."""
    return Path(os.environ.get("CIM_HOME", ".cim")).resolve()


@dataclass(frozen=True)
class DatabaseTarget:
    """Which server the platform talks to: an external URL or the embedded cluster."""

    url: str | None  # None means "the embedded cluster under CIM_HOME"

    @property
    def is_external(self) -> bool:
        return self.url is not None


def database_target() -> DatabaseTarget:
    return DatabaseTarget(url=os.environ.get("CIM_DATABASE_URL") or None)
