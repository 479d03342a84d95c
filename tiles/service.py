"""Tiles as the API and the exporters ask for them: resolved layer, settings, cache, one build at
a time per key. Both the HTTP routes and ``cim tiles export-…`` go through here, so a static
export and the dynamic service give the same bytes."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cim.bootstrap import BaseSettings, load_settings
from cim.config import settings as deployment_settings
from cim.errors import ConflictError, NotFoundError
from cim.jurisdiction import carries_scope, current_scope, statements_scoped
from cim.registry import Layer, load_layers
from tiles import mvt
from tiles.builds import BuiltOnce
from tiles.cache import TileCache
from cim.selection import Selection
from tiles.tileset import DEFAULT_MAX_FEATURES, Plan, content_version, plan_layer, tile_glb, tileset_json


#: what identifies the registry row of a layer: a load bumps the version, a schema upgrade may
#: change the queryables without bumping it
_LAYER_STAMP = sa.text("SELECT version, md5(concat_ws('|', title, description, table_name, geometry_type, is_3d, "
                       "queryables::text)) FROM layers WHERE name = :name")


# A vector tile is also written to the disk cache only when building it took at least
# CIM_TILE_PERSIST_AFTER_S (0.1 s). Most tiles of a street-level view build in a few milliseconds, about
# what writing one costs (measured: the write was a fifth of an uncached z14–16 tile's Python time);
# low-zoom tiles of big layers take far longer, and those are worth keeping across restarts and sharing
# between workers. Wall time, so a busy server stretches it: 0.1 s stays above a street-level tile's time
# under load.

# Tile plans kept in memory: the deployment setting CIM_TILE_PLAN_CACHE (least recently used dropped
# first). Every bbox or filter asked for is a plan of its own; a plan of a big layer holds a few arrays
# per feature (~100 bytes each), so 32 plans of 100,000 buildings are some 300 MB at most, and a
# client's tiles ask for one plan over and over.


class UnknownLayerError(NotFoundError):
    """No such layer, or no such tile in a layer's tileset (404)."""


class StaleVersionError(ConflictError):
    """A content URL of a version that is no longer current and no longer cached (409: reload the tileset)."""


@dataclass
class TileService:
    engine: Engine
    cache: TileCache
    settings: BaseSettings | None = None
    plan_cache_size: int | None = None  # None: the deployment setting
    _layers: dict[str, tuple[tuple, Layer]] = field(default_factory=dict)  # name → (stamp, layer)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = load_settings(self.engine)
        # (layer, version, selection key, max features) → plan
        deployment = deployment_settings()  # read once: tile builds are a hot path
        size = self.plan_cache_size or deployment.tile_plan_cache
        self._persist_after_s = deployment.tile_persist_after_s
        self.plans: BuiltOnce[tuple[str, str, str, int], Plan] = BuiltOnce(size)
        # (layer, version) → the first zoom of its map tiles; (layer, version, jurisdiction) → its bounds (an
        # extent of 15 M parts takes ~40 s, and TileJSON was asking for it on every request)
        self.minzooms: BuiltOnce[tuple[str, int], int] = BuiltOnce(64)
        self.bounds: BuiltOnce[tuple[str, int, str], tuple[float, float, float, float] | None] = BuiltOnce(64)

    def layer(self, name: str) -> Layer:
        """The layer as it is now: its version is read on every call (tiles must follow each load at
        once), but the whole registry is read and parsed only when that row changed — one small
        indexed read instead of every layer's queryables on each tile request."""
        with self.engine.connect() as conn:
            return self._layer_on(conn, name)

    def _layer_on(self, conn: Connection, name: str) -> Layer:
        stamp = conn.execute(_LAYER_STAMP, {"name": name}).first()
        if stamp is None:
            names = conn.execute(sa.text("SELECT name FROM layers ORDER BY name")).scalars().all()
            raise UnknownLayerError(f"layer {name!r} does not exist; layers are: {', '.join(names)}")
        known = self._layers.get(name)
        if known is not None and known[0] == tuple(stamp):
            return known[1]
        layer = load_layers(conn)[name]
        with self._guard:
            self._layers[name] = (tuple(stamp), layer)
        return layer

    # --- 3D tiles ------------------------------------------------------------------------------

    def version_3d(self, layer: Layer) -> str:
        with self.engine.connect() as conn:
            return content_version(conn, layer)

    def plan(self, layer: Layer, selection: Selection = Selection(),
             max_features: int = DEFAULT_MAX_FEATURES, version: str | None = None) -> Plan:
        version = version or self.version_3d(layer)
        key = (layer.name, version, _scoped(selection.key), max_features)

        def build() -> Plan:
            s = self.settings
            with self.engine.connect() as conn:
                return plan_layer(conn, layer, s.srid, s.floor_height_m, s.city_bbox_wgs84, selection,
                                  max_features, version)

        # older versions' plans are never asked for again (their content is cached or stale)
        return self.plans.get(key, build, lambda old: old[0] == layer.name and old[1] != version)

    def _variant(self, selection: Selection, max_features: int) -> str:
        variant = selection.key if max_features == DEFAULT_MAX_FEATURES else f"{selection.key}-n{max_features}"
        return _scoped(variant)

    def tileset(self, layer: Layer, selection: Selection = Selection(),
                max_features: int = DEFAULT_MAX_FEATURES, query: str = "") -> tuple[str, bytes]:
        """(version, tileset.json bytes); ``query`` is appended to content URIs (filters)."""
        plan = self.plan(layer, selection, max_features)
        suffix = f"?{query}" if query else ""
        doc = tileset_json(plan, lambda t: f"{plan.version}/{t.id}.glb{suffix}")
        return plan.version, json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def glb(self, layer: Layer, version: str, tile_id: str, selection: Selection = Selection(),
            max_features: int = DEFAULT_MAX_FEATURES) -> bytes:
        variant = self._variant(selection, max_features)
        key = ("3d", layer.name, version, variant, f"{tile_id}.glb")
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        current = self.version_3d(layer)
        if version != current:
            raise StaleVersionError(f"version {version} of layer {layer.name!r} is outdated (now {current}); "
                                    "reload tileset.json")
        plan = self.plan(layer, selection, max_features, current)
        tile = plan.tiles.get(tile_id)
        if tile is None or not len(tile.fids):
            raise UnknownLayerError(f"tile {tile_id!r} is not in the tileset of layer {layer.name!r}")
        with self.engine.connect() as conn:
            data = tile_glb(conn, plan, tile)
        self.cache.put(key, data, persist=selection.is_all and not _narrowed())
        return data

    # --- vector tiles --------------------------------------------------------------------------

    def minzoom(self, layer: Layer, conn: Connection | None = None) -> int:
        """The first zoom of the layer's map tiles (:func:`tiles.mvt.layer_minzoom`), once per version."""
        def build() -> int:
            with contextlib.nullcontext(conn) if conn is not None else self.engine.connect() as c:
                return mvt.layer_minzoom(c, layer, self.settings.srid, self.settings.city_bbox_wgs84)

        return self.minzooms.get((layer.name, layer.version), build,
                                 lambda old: old[0] == layer.name and old[1] != layer.version)

    def layer_bounds(self, layer: Layer) -> tuple[float, float, float, float] | None:
        """The current features' lon/lat extent as the caller may see them, once per version."""
        def build() -> tuple[float, float, float, float] | None:
            with self.engine.connect() as conn:
                return mvt.layer_bounds(conn, layer, self.settings.srid)

        return self.bounds.get((layer.name, layer.version, current_scope().cache_key()), build,
                               lambda old: old[0] == layer.name and old[1] != layer.version)

    @staticmethod
    def _mvt_key(layer_name: str, version: str, z: int, x: int, y: int, selection: Selection,
                 properties: list[str] | None) -> tuple[str, str, str, str, str]:
        # a map tile's variant names its property set (mvt.map_properties): tiles kept on disk by a build that put
        # every property in are not served as map tiles
        variant = f"{selection.key}-map" if properties is None else f"{selection.key}-{_digest(properties)}"
        return ("mvt", layer_name, version, _scoped(variant), f"{z}/{x}/{y}.pbf")

    def mvt_in_memory(self, layer_name: str, version: str, z: int, x: int, y: int,
                      selection: Selection = Selection()) -> bytes | None:
        """The tile of that layer version with the default properties if it is in the memory cache, or empty
        when it lies below that version's first zoom as already worked out (no I/O: safe to call from the event
        loop); None sends the caller to :meth:`mvt`. A versioned URL's tile never changes, so a map tile below its
        version's first zoom is empty for good: on the synthetic Shanghai those were two thirds of a z14–16 parts
        run's requests, each a transaction with the scope and a read of the layer's version for an empty answer."""
        data = self.cache.get_memory(self._mvt_key(layer_name, version, z, x, y, selection, None))
        if data is None and selection.is_all and version.isdigit():
            first = self.minzooms.peek((layer_name, int(version)))
            if first is not None and z < first:
                return b""
        return data

    def _tile_connection(self) -> Connection:
        """A connection for a vector tile's statements. On the API's engine each statement is a transaction of
        its own with the caller's scope in front, in one round trip (:func:`cim.jurisdiction.statements_scoped`):
        an uncached tile is two statements (the layer's version, the tile), which otherwise took five round
        trips — BEGIN, the scope, the two statements, the pool's ROLLBACK. Read committed either way: each
        statement saw its own snapshot before too."""
        conn = self.engine.connect()
        return statements_scoped(conn) if carries_scope(self.engine) else conn

    def mvt(self, layer: Layer, z: int, x: int, y: int, selection: Selection = Selection(),
            properties: list[str] | None = None) -> bytes:
        with self._tile_connection() as conn:
            return self._mvt_on(conn, layer, z, x, y, selection, properties)

    def current_mvt(self, name: str, z: int, x: int, y: int, selection: Selection = Selection(),
                    properties: list[str] | None = None,
                    client_is_current: Callable[[Layer], bool] = lambda layer: False) -> tuple[Layer, bytes | None]:
        """The layer as it is now and its tile, on one connection; no tile (None) when
        ``client_is_current(layer)`` says the caller's copy is of this version already."""
        with self._tile_connection() as conn:
            layer = self._layer_on(conn, name)
            if client_is_current(layer):
                return layer, None
            return layer, self._mvt_on(conn, layer, z, x, y, selection, properties)

    def _mvt_on(self, conn: Connection, layer: Layer, z: int, x: int, y: int, selection: Selection,
                properties: list[str] | None) -> bytes:
        mvt.check_tile(z, x, y)
        props = mvt.property_names(layer, properties)
        key = self._mvt_key(layer.name, str(layer.version), z, x, y, selection,
                            None if properties is None else props)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        if selection.is_all and z < self.minzoom(layer, conn):
            data = b""  # a map tile below the layer's first zoom (a filtered one is the asker's choice)
        else:
            data = mvt.tile(conn, layer, self.settings.srid, z, x, y, selection, props)
        slow = time.perf_counter() - started >= self._persist_after_s
        self.cache.put(key, data, persist=slow and selection.is_all and properties is None and not _narrowed())
        return data


def _narrowed() -> bool:
    """Whether the caller sees fewer rows than the whole city (row-level security, cim.jurisdiction)."""
    return current_scope().cache_key() != "all"


def _scoped(variant: str) -> str:
    """A cache variant of the caller's jurisdiction: tiles are built from the rows the caller may see, so
    two jurisdictions never share one (the city and the public see the same rows and do)."""
    key = current_scope().cache_key()
    return variant if key == "all" else f"{variant}@{_digest(key)}"


def _digest(items: Any) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:12]
