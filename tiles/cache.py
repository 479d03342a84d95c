"""Generated tiles, kept in memory (LRU by bytes) and, for the unfiltered tiles, on disk under
``$CIM_HOME/tiles/<kind>/<layer>/<version>/…``.

Keys carry the layer's version, so a load that bumps it makes every old entry unreachable: nothing
has to be invalidated by hand. Older versions' directories are removed when a newer one is written.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from cim.config import settings

Key = tuple[str, str, str, str, str]  # kind, layer, version, variant, name
_SAFE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
#: folders remembered as existing (saves a makedirs per tile); forgotten all at once beyond this many,
#: since a vector-tile layer has a folder per zoom and column
MAX_KNOWN_DIRS = 4096


class TileCache:
    def __init__(self, root: Path | None, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = settings().tile_memory_mb << 20 if max_bytes is None else max_bytes
        self._memory: OrderedDict[Key, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._dirs: set[str] = set()  # directories known to exist (this process made or saw them)
        self._pruned: dict[tuple[str, str], str] = {}  # (kind, layer) → the version last pruned for

    def _path(self, key: Key) -> str | None:
        # plain strings, not pathlib: building paths was a tenth of an uncached tile's Python time
        if self.root is None or not all(_SAFE.match(part) and ".." not in part for part in key):
            return None
        return os.path.join(self.root, *key)

    def get_memory(self, key: Key) -> bytes | None:
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
            return data

    def get(self, key: Key) -> bytes | None:
        data = self.get_memory(key)
        if data is not None:
            return data
        path = self._path(key)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        self._remember(key, data)
        return data

    def put(self, key: Key, data: bytes, persist: bool = True) -> None:
        self._remember(key, data)
        path = self._path(key)
        if persist and path is not None:
            folder, name = os.path.split(path)
            tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}")
            try:
                if folder not in self._dirs:
                    os.makedirs(folder, exist_ok=True)
                    self._known(folder)
                self._write(tmp, data)
            except FileNotFoundError:  # another thread or process pruned the folder meanwhile
                os.makedirs(folder, exist_ok=True)
                self._write(tmp, data)
            os.replace(tmp, path)  # readers never see half a tile
            with self._lock:  # once per version (the first tile of a new one), however many threads put
                first = self._pruned.get(key[:2]) != key[2]
                if first:
                    self._pruned[key[:2]] = key[2]
                    self._dirs.clear()  # forget the folders of older versions (they are about to go)
            if first:
                self._prune(key)

    def _known(self, folder: str) -> None:
        with self._lock:
            if len(self._dirs) >= MAX_KNOWN_DIRS:
                self._dirs.clear()
            self._dirs.add(folder)

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def _remember(self, key: Key, data: bytes) -> None:
        with self._lock:
            old = self._memory.pop(key, None)
            self._size -= len(old) if old is not None else 0
            self._memory[key] = data
            self._size += len(data)
            while self._size > self.max_bytes and len(self._memory) > 1:
                _, dropped = self._memory.popitem(last=False)
                self._size -= len(dropped)

    def _prune(self, key: Key) -> None:
        """Drop older versions of this layer on disk (keep the previous one for clients mid-load)."""
        kind, layer, version, *_ = key
        layer_dir = Path(self.root, kind, layer)  # type: ignore[arg-type]
        versions = []
        for p in layer_dir.iterdir():
            try:
                if p.is_dir() and p.name != version:
                    versions.append((p.stat().st_mtime, p))
            except FileNotFoundError:  # another process removed it meanwhile
                continue
        for _, old in sorted(versions)[:-1]:
            shutil.rmtree(old, ignore_errors=True)
