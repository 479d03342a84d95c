"""What every tile route shares: its query parameters, the service's errors as problems, ETags and
cache headers."""
from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from fastapi import Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from api.problems import Problem, bad_parameter, not_found
from tiles.mvt import PropertiesError, TileAddressError
from tiles.selection import Selection, SelectionError, parse_bbox
from tiles.service import StaleVersionError, TileService, UnknownLayerError
from tiles.tileset import NoTilesError

MVT_TYPE = "application/vnd.mapbox-vector-tile"
GLB_TYPE = "model/gltf-binary"
REVALIDATE = "no-cache"  # clients keep tiles but ask (If-None-Match) each time: a load shows at once
IMMUTABLE = "public, max-age=31536000, immutable"  # versioned content URLs never change


def service(request: Request) -> TileService:
    return request.app.state.tiles


def problem(exc: Exception) -> Problem:
    if isinstance(exc, TileAddressError):
        return Problem(exc.status, "Bad tile address" if exc.status == 400 else "Not found", str(exc), exc.parameter)
    if isinstance(exc, SelectionError):
        return bad_parameter(exc.parameter, str(exc))
    if isinstance(exc, PropertiesError):
        return bad_parameter("properties", str(exc))
    if isinstance(exc, (UnknownLayerError, NoTilesError, StaleVersionError)):
        return not_found(str(exc))
    raise exc


async def call(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in the thread pool (it reads the database), its user errors as problems."""
    try:
        return await run_in_threadpool(fn, *args)
    except (TileAddressError, SelectionError, PropertiesError, UnknownLayerError, NoTilesError,
            StaleVersionError) as exc:
        raise problem(exc) from None


def etag(version: str) -> str:
    return f'"{version}"'


def not_modified(request: Request, tag: str) -> bool:
    return scope_not_modified(request.scope, tag)


def scope_not_modified(scope: Scope, tag: str) -> bool:
    header = next((value for name, value in scope["headers"] if name == b"if-none-match"), b"").decode("latin-1")
    return tag in [t.strip() for t in header.split(",")] or header.strip() == "*"


def selection(bbox: str | None, filter_: str | None, filter_lang: str) -> Selection:
    try:
        return Selection(parse_bbox(bbox), filter_ or None, filter_lang)
    except SelectionError as exc:
        raise bad_parameter(exc.parameter, str(exc)) from None


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


BboxQ = Annotated[str | None, Query(description="minlon,minlat,maxlon,maxlat (CRS84)")]
FilterQ = Annotated[str | None, Query(description="CQL2 filter on the layer's queryables")]
FilterLangQ = Annotated[Literal["cql2-text", "cql2-json"], Query(alias="filter-lang",
                                                                 description="the language of filter")]
