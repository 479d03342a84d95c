"""What every tile route shares: its query parameters, the thread hop, ETags and cache headers."""
from __future__ import annotations

import hashlib
from typing import Annotated, Any, Callable, Literal

from fastapi import Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from api.limits import MAX_BBOX_CHARS, MAX_FILTER_CHARS
from cim.jurisdiction import current_scope
from cim.selection import Selection, parse_bbox
from tiles.service import TileService

MVT_TYPE = "application/vnd.mapbox-vector-tile"
GLB_TYPE = "model/gltf-binary"
REVALIDATE = "no-cache"  # clients keep tiles but ask (If-None-Match) each time: a load shows at once
IMMUTABLE = "public, max-age=31536000, immutable"  # versioned content URLs never change


def service(request: Request) -> TileService:
    return request.app.state.tiles


async def call(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in the thread pool (it reads the database); its errors carry their own status
    (see api.problems)."""
    return await run_in_threadpool(fn, *args)


def etag(version: str) -> str:
    """The tag of a version as the caller sees it: a narrower jurisdiction's tiles are other bytes."""
    key = current_scope().cache_key()
    return f'"{version}"' if key == "all" else f'"{version}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"'


def not_modified(request: Request, tag: str) -> bool:
    return scope_not_modified(request.scope, tag)


def scope_not_modified(scope: Scope, tag: str) -> bool:
    header = next((value for name, value in scope["headers"] if name == b"if-none-match"), b"").decode("latin-1")
    return tag in [t.strip() for t in header.split(",")] or header.strip() == "*"


def selection(bbox: str | None, filter_: str | None, filter_lang: str) -> Selection:
    return Selection(parse_bbox(bbox), filter_ or None, filter_lang)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


BboxQ = Annotated[str | None, Query(max_length=MAX_BBOX_CHARS, description="minlon,minlat,maxlon,maxlat (CRS84)")]
FilterQ = Annotated[str | None, Query(max_length=MAX_FILTER_CHARS,
                                      description="CQL2 filter on the layer's queryables")]
FilterLangQ = Annotated[Literal["cql2-text", "cql2-json"], Query(alias="filter-lang",
                                                                 description="the language of filter")]
