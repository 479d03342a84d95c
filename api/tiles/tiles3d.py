"""3D Tiles 1.1 over HTTP: ``/3dtiles/{layer}/tileset.json`` and ``/3dtiles/{layer}/{version}/{tile}.glb``,
built on first request and cached by layer version (ETag = version; content URLs carry the version,
so they can be cached for good)."""
from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.problems import PROBLEM
from api.tiles.shared import (GLB_TYPE, IMMUTABLE, REVALIDATE, BboxQ, FilterLangQ, FilterQ, call, etag,
                              not_modified, selection, service)
from cim.registry import Layer
from tiles.tileset import DEFAULT_MAX_FEATURES

router = APIRouter(tags=["Tiles"])

MaxFeaturesQ = Annotated[int, Query(alias="max-features", ge=1, le=100_000)]
_NOT_MODIFIED = {304: {"description": "the client's copy (If-None-Match) is current"}}
_NO_TILESET = {404: {"description": "no such layer, or a layer without 3D tiles", "content": {PROBLEM: {}}}}
_NO_CONTENT = {404: {"description": "no such layer or tile, or a version no longer served: reload tileset.json",
                     "content": {PROBLEM: {}}}}


@router.get("/3dtiles/{layer}/tileset.json", summary="3D Tiles 1.1 tileset of a layer",
            responses={**_NOT_MODIFIED, **_NO_TILESET})
async def tileset(request: Request, layer: str, bbox: BboxQ = None, filter: FilterQ = None,
                  filter_lang: FilterLangQ = "cql2-text", max_features: MaxFeaturesQ = DEFAULT_MAX_FEATURES):
    svc = service(request)
    chosen = selection(bbox, filter, filter_lang)
    lyr = await call(svc.layer, layer)
    await call(_model_check, lyr)
    params = {k: v for k, v in (("bbox", bbox), ("filter", filter), ("filter-lang", filter_lang if filter else None),
                                ("max-features", max_features if max_features != DEFAULT_MAX_FEATURES else None))
              if v is not None}
    version = await call(svc.version_3d, lyr)
    tag = etag(version)
    if not_modified(request, tag):
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": REVALIDATE})
    version, body = await call(svc.tileset, lyr, chosen, max_features, urlencode(params))
    return Response(body, media_type="application/json",
                    headers={"ETag": etag(version), "Cache-Control": REVALIDATE})


def _model_check(layer: Layer) -> None:
    from tiles.tileset import model_for

    model_for(layer.name)


@router.get("/3dtiles/{layer}/{version}/{tile}.glb", summary="One tile's binary glTF",
            responses={**_NOT_MODIFIED, **_NO_CONTENT})
async def tile_content(request: Request, layer: str, version: str, tile: str, bbox: BboxQ = None,
                       filter: FilterQ = None, filter_lang: FilterLangQ = "cql2-text",
                       max_features: MaxFeaturesQ = DEFAULT_MAX_FEATURES):
    svc = service(request)
    chosen = selection(bbox, filter, filter_lang)
    tag = etag(version)
    if not_modified(request, tag):
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": IMMUTABLE})
    lyr = await call(svc.layer, layer)
    await call(_model_check, lyr)
    data = await call(svc.glb, lyr, version, tile, chosen, max_features)
    return Response(data, media_type=GLB_TYPE, headers={"ETag": tag, "Cache-Control": IMMUTABLE})
