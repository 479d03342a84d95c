"""The fast path of the vector tiles that TileJSON hands out: answered before routing."""
from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.tiles.ogc import TileAnswer, collection_tile, router, tile_answer
from api.tiles.shared import etag, scope_not_modified
from tiles import mvt
from cim.selection import Selection
from tiles.service import TileService


class VersionedTileMiddleware:
    """Serves the vector-tile URLs that TileJSON hands out (``…/WebMercatorQuad/{z}/{y}/{x}?v=N``, nothing
    else in the query) before routing.

    They are most of a map's requests, and each is simple: a tile from memory, or the layer's version
    and a tile built on one connection. Going through FastAPI cost a cached tile about 2.5× a request
    that does nothing and an uncached one a fifth of its Python time (parameter validation and
    routing). The content of such a URL never changes, so a tile in memory needs no database read at
    all. Whatever it cannot serve (no such tile matrix, row or layer; a database error) goes on to the
    route, which words the problem; so do all other requests. Installed innermost: access control and
    metrics still see every request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = _versioned_tile(scope)
        if address is None:
            await self.app(scope, receive, send)
            return
        name, asked, z, y, x = address
        svc: TileService = scope["app"].state.tiles
        data = svc.mvt_in_memory(name, str(asked), z, x, y)
        scope["route"] = _TILE_ROUTE  # metrics count it under the tile route
        if data is not None:  # the hot path: raw ASGI messages, no Request or Response objects
            await _send(scope, send, tile_answer(None if scope_not_modified(scope, etag(str(asked))) else data,
                                                 asked, asked))
            return
        try:
            layer, data = await run_in_threadpool(svc.current_mvt, name, z, x, y, Selection(), None,
                                                  lambda layer: scope_not_modified(scope, etag(str(layer.version))))
        except Exception:  # noqa: BLE001 — a bad address, an unknown layer, the database away: the route
            # answers it again and words the problem (this middleware sits outside the app's exception handlers)
            del scope["route"]
            await self.app(scope, receive, send)
            return
        await _send(scope, send, tile_answer(data, layer.version, asked))


async def _send(scope: Scope, send: Send, answer: TileAnswer) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


_TILE_ROUTE = next(r for r in router.routes if getattr(r, "endpoint", None) is collection_tile)
_TILE_PATH = re.compile(rf"^/collections/([^/]+)/tiles/{mvt.TMS_ID}/(\d{{1,2}})/(\d{{1,9}})/(\d{{1,9}})$")
_VERSION_QUERY = re.compile(rb"^v=(\d{1,18})$")


def _versioned_tile(scope: Scope) -> tuple[str, int, int, int, int] | None:
    """(layer, version, z, row, column) of a GET/HEAD of a TileJSON tile URL, else None."""
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return None
    version = _VERSION_QUERY.match(scope.get("query_string", b""))
    path = _TILE_PATH.match(scope["path"]) if version else None
    if path is None:
        return None
    return path.group(1), int(version.group(1)), int(path.group(2)), int(path.group(3)), int(path.group(4))
