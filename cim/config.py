"""The deployment's settings: one typed object, read from ``CIM_*`` environment variables.

Two kinds of settings must not be confused:

- *Deployment settings* (this module): where state lives, which database, pool sizes, timeouts,
  cache sizes, access control — chosen per process by whoever runs it, and free to change between
  restarts. Every one is a field of :class:`DeploymentSettings`, documented in the README's
  "Deployment settings" table; nothing else in the code reads the environment.
- *Settings of the base* (:class:`cim.bootstrap.BaseSettings`, table ``cim_settings``): storage
  SRID, city name and extent, floor height — fixed when data exists, so kept in the database
  where every process that opens the base agrees on them. The ``city_*`` fields here are only the
  defaults ``cim init`` writes into a new base.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings as _PydanticSettings, NoDecode, SettingsConfigDict

from cim.errors import UserError

ENV_PREFIX = "CIM_"
DEFAULT_STORAGE_SRID = 4549  # CGCS2000 / 3-degree Gauss-Krüger CM 120E, metres
# lon_min, lat_min, lon_max, lat_max in WGS84: the whole of Shanghai incl. Chongming and the islands
SHANGHAI_BBOX_WGS84: tuple[float, float, float, float] = (120.85, 30.66, 122.20, 31.88)
DEFAULT_FLOOR_HEIGHT_M = 3.0

BBox = tuple[float, float, float, float]


class SettingsError(UserError):
    """A ``CIM_*`` variable has a value that cannot be used; the message names the variable."""


class DeploymentSettings(_PydanticSettings):
    """Every deployment setting, each from ``CIM_<NAME>`` (e.g. ``CIM_DB_POOL_SIZE=16``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", env_ignore_empty=True)

    # --- where things live ----------------------------------------------------------------------
    home: Path = Field(Path(".cim"), description="state directory: embedded cluster, tile cache, rejects files")
    database_url: str | None = Field(None, description="a PostgreSQL/PostGIS server to use instead of the "
                                                       "embedded cluster")
    node_modules: Path | None = Field(None, description="where the viewer's npm packages are "
                                                        "(default: node_modules of the checkout)")
    # --- the database pool ----------------------------------------------------------------------
    db_pool_size: int = Field(8, ge=1, le=1000, description="pooled connections per process (fixed: no overflow)")
    db_pool_timeout_s: float = Field(60.0, gt=0, description="seconds a request waits for a free pooled connection")
    db_reader_lock_timeout_ms: int = Field(2000, ge=1, description="milliseconds an API read waits for a lock "
                                           "before it is answered 503 (a load or maintenance holds it)")
    db_ping_after_idle_s: float = Field(2.0, ge=0, description="a pooled connection idle longer than this is "
                                                               "pinged before use")
    db_wal_level: Literal["replica", "minimal"] = Field(
        "minimal", description="the embedded cluster's wal_level, applied when `cim db up` starts it: 'minimal' "
                               "lets a first load's staged tables and index builds skip the write-ahead log (no "
                               "streaming replication, WAL archiving or point-in-time recovery of that cluster); "
                               "'replica' for those. Not used with CIM_DATABASE_URL or on Citus nodes")
    # --- the API --------------------------------------------------------------------------------
    api_read_key_required: bool = Field(False, description="reading the API also needs an API key")
    jwt_issuer: str | None = Field(None, description="accept bearer JWTs from this issuer (with CIM_JWT_JWKS_URL)")
    jwt_jwks_url: str | None = Field(None, description="the issuer's JWKS (https:// or file://)")
    jwt_audience: str | None = Field(None, description="the audience bearer JWTs must name (unset: not checked)")
    layer_cache_s: float = Field(5.0, ge=0, description="seconds the API keeps the layer registry before re-reading")
    auth_cache_s: float = Field(10.0, ge=0, description="seconds the API keeps a verified API key (a revoked key "
                                                        "or a disabled user is refused at most this much later)")
    extent_cache_s: float = Field(300.0, ge=0, description="seconds the API keeps a collection's extent")
    district_pruning: bool = Field(True, description="spatial queries (bbox, nearby, tiles) name the districts their "
                                                    "area touches, so partitions and Citus shards of the others "
                                                    "are skipped (cim.districts_index); false: never")
    upload_max_mb: int = Field(2048, ge=1, description="megabytes one upload to POST /ingest/{layer} may send "
                                                        "(spooled to disk while it streams in)")
    # --- tiles and the gazetteer ----------------------------------------------------------------
    tile_memory_mb: int = Field(256, ge=0, description="megabytes of generated tiles kept in memory per process")
    tile_plan_cache: int = Field(32, ge=1, description="tile plans (one per layer version, bbox and filter) kept in "
                                                       "memory per process; least recently used dropped first")
    tile_persist_after_s: float = Field(0.1, ge=0, description="a vector tile that took at least this long to build "
                                                              "is also written to the disk cache")
    geocode_road_cache: int = Field(5_000, ge=1, description="roads whose address index the gazetteer keeps in memory")
    geocode_parse_cache: int = Field(200_000, ge=1, description="parsed addresses the gazetteer keeps in memory")
    # --- the case loop -------------------------------------------------------------------------
    case_attachments: Path | None = Field(None, description="folder where case photos are kept by content hash "
                                                            "(default: case-attachments under CIM_HOME)")
    case_group_window_ms: float = Field(2.0, ge=0, description="milliseconds POST /cases on an idle server waits "
                                                              "for concurrent reports to join its group (0: none)")
    # 16: at 500 reports/s on 2 cores p99 39–54 ms, against 48–55 ms with 64 (docs/benchmarks.md)
    case_group_max: int = Field(16, ge=1, description="most reports POST /cases writes in one group (transaction)")
    case_groups_in_flight: int = Field(2, ge=1, description="groups of POST /cases reports written at once per "
                                                             "API process (each on its own pooled connection)")
    cases_tick_s: float = Field(0.0, ge=0, description="seconds between the server's case ticks (mark overdue "
                                                       "cases, escalate them); 0: off")
    iot_offline_check_s: float = Field(0.0, ge=0, description="seconds between the server's checks of the 'no data "
                                                              "for N minutes' rules (offline devices); 0: off")
    vitals_compute_s: float = Field(0.0, ge=0, description="seconds between the server's computations of the vital "
                                                           "signs (cim vitals compute); 0: off")
    # --- loads ----------------------------------------------------------------------------------
    operator: str | None = Field(None, description="the operator recorded on ingest runs (default: the OS user)")
    fault_pause_at: Literal["reading", "copy", "index", "merge", "commit"] | None = Field(
        None, description="tests only: a load stops at this phase, prints 'CIM_FAULT_PAUSED PHASE' on stderr and "
                          "waits for a line on stdin (fault-injection tests, see ingest/faults.py)")
    # --- defaults for a new base (``cim init``); afterwards the base's stored values rule --------
    city_name: str = Field("上海市", min_length=1, description="the city's name as written in front of addresses")
    city_bbox_wgs84: Annotated[BBox, NoDecode] = Field(
        SHANGHAI_BBOX_WGS84, description="the city's extent in WGS84, 'minlon,minlat,maxlon,maxlat'")

    @field_validator("database_url", "operator", "node_modules", "fault_pause_at", "case_attachments", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("city_bbox_wgs84", mode="before")
    @classmethod
    def _bbox(cls, value: Any) -> BBox:
        parts = value.split(",") if isinstance(value, str) else list(value)
        try:
            b = tuple(float(v) for v in parts)
        except (TypeError, ValueError):
            b = ()
        if len(b) != 4 or not all(math.isfinite(v) for v in b):
            raise ValueError(f"expected four numbers minlon,minlat,maxlon,maxlat, got {value!r}")
        if not (-180 <= b[0] < b[2] <= 180 and -90 <= b[1] < b[3] <= 90):
            raise ValueError(f"expected minlon,minlat,maxlon,maxlat in degrees with min < max, got {value!r}")
        return b  # type: ignore[return-value]


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: Any) -> DeploymentSettings:
    """Read the settings from the environment now (``overrides`` win), or one clear error naming
    each bad variable."""
    try:
        return DeploymentSettings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ()) if not isinstance(p, int)]
            name = _env_name(loc[0]) if loc else "a CIM_ setting"
            shown = os.environ.get(name) if loc else None
            problems.append(f"{name}={shown!r}: {error['msg']}" if shown is not None else f"{name}: {error['msg']}")
        raise SettingsError("invalid deployment setting: " + "; ".join(problems)) from None


_cached: tuple[tuple[tuple[str, str], ...], DeploymentSettings] | None = None
_pinned: DeploymentSettings | None = None


def settings() -> DeploymentSettings:
    """The deployment settings, read once and kept; read again only if a ``CIM_*`` variable has
    changed since (a test or an embedding process that sets one), so the environment stays the one
    source. Tests may pin other values with :func:`override_settings`."""
    global _cached
    if _pinned is not None:
        return _pinned
    # keys first, values of the CIM_ ones only: os.environ decodes what it hands out, and this runs several times
    # per API request (reading every value cost ~0.1 ms a call, ~1/10 of a /nearby's server CPU)
    env = tuple(sorted((k, os.environ[k]) for k in os.environ if k.startswith(ENV_PREFIX)))
    if _cached is None or _cached[0] != env:
        _cached = (env, load_settings())
    return _cached[1]


@contextmanager
def override_settings(**values: Any) -> Iterator[DeploymentSettings]:
    """Within the block, :func:`settings` answers these values (over the environment's)."""
    global _pinned
    previous = _pinned
    _pinned = load_settings(**{**(previous.model_dump() if previous else {}), **values})
    try:
        yield _pinned
    finally:
        _pinned = previous


def cim_home() -> Path:
    """The project-local state directory (embedded cluster, caches): ``$CIM_HOME`` or ``./.cim``."""
    return settings().home.resolve()


@dataclass(frozen=True)
class DatabaseTarget:
    """Which server the platform talks to: an external URL or the embedded cluster."""

    url: str | None  # None means "the embedded cluster under CIM_HOME"

    @property
    def is_external(self) -> bool:
        return self.url is not None


def database_target() -> DatabaseTarget:
    return DatabaseTarget(url=settings().database_url)
