"""``POST /ingest/{layer}``: upload files and load them, exactly as ``cim ingest`` would.

Needs a key with role ``loader`` or ``admin``. The files (a Shapefile's .shp/.dbf/.shx/.prj/.cpg
together, or one GeoJSON/CSV/GeoPackage/zip) are saved under their own names in a private temp
directory — names matter because a Shapefile's parts find each other by name — and handed to
:func:`ingest.run.ingest_files`, whose report is returned as JSON. The temp directory is removed
afterwards, loaded or not.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path as FsPath
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, Request, UploadFile

from api import auth
from api.deps import get_state
from api.limits import MAX_CRS_CHARS, MAX_NAME_CHARS
from api.problems import bad_parameter, not_found
from cim.apikeys import ApiKey
from cim.jurisdiction import as_owner
from ingest.columns import parse_mapping
from ingest.run import IngestOptions, ingest_files
from ingest.specs import SPECS

router = APIRouter(tags=["ingest"], route_class=auth.key_first_route("loader"))  # no key: refused before the upload
_CHUNK = 1 << 20


def _safe_name(filename: str | None, index: int) -> str:
    name = FsPath((filename or "").replace("\\", "/")).name
    return name if name not in ("", ".", "..") else f"upload_{index}"


def _save(files: list[UploadFile], directory: FsPath) -> list[FsPath]:
    paths: list[FsPath] = []
    for i, upload in enumerate(files):
        path = directory / _safe_name(upload.filename, i)
        if path in paths:
            raise bad_parameter("files", f"two uploaded files are both named {path.name!r}")
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out, _CHUNK)
        paths.append(path)
    return paths


SIDECARS = {".dbf", ".shx", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".xml", ".qmd"}


def _primary_files(paths: list[FsPath]) -> list[FsPath]:
    """The files to load: a Shapefile's .dbf/.shx/.prj/.cpg travel with its .shp and are not loaded alone."""
    shp_stems = {p.stem for p in paths if p.suffix.lower() == ".shp"}
    return [p for p in paths if not (p.suffix.lower() in SIDECARS and p.stem in shp_stems)]


@router.post("/ingest/{layer}", summary="Upload and load files into a layer (role loader)")
def ingest_upload(
    request: Request,
    layer: str = Path(..., max_length=MAX_NAME_CHARS,
                      description="Layer to load, as for 'cim ingest' (e.g. buildings, parts, pipelines)."),
    files: list[UploadFile] = File(..., description="The file(s) to load; a Shapefile with all its parts."),
    crs: str | None = Form(None, max_length=MAX_CRS_CHARS,
                           description="CRS of the data when the files do not say (EPSG code, gcj02, bd09)."),
    encoding: str | None = Form(None, max_length=MAX_NAME_CHARS,
                                description="Text encoding when the files do not say (e.g. gbk)."),
    mode: Literal["upsert", "append", "replace"] | None = Form(
        None, description="upsert (by source id, default) | append | replace (also closes features absent from "
                          "the delivery)."),
    layer_name: str | None = Form(None, max_length=MAX_NAME_CHARS,
                                  description="Layer inside a multi-layer file (GeoPackage)."),
    x: str | None = Form(None, max_length=MAX_NAME_CHARS, description="CSV column holding x / longitude."),
    y: str | None = Form(None, max_length=MAX_NAME_CHARS, description="CSV column holding y / latitude."),
    z: str | None = Form(None, max_length=MAX_NAME_CHARS, description="CSV column holding z / height."),
    wkt: str | None = Form(None, max_length=MAX_NAME_CHARS, description="CSV column holding WKT geometry."),
    address_column: str | None = Form(None, max_length=MAX_NAME_CHARS,
                                      description="addresses: one full-address column, parsed on load."),
    map: list[str] = Form([], description="Column mapping 'FIELD=COLUMN', repeatable."),
    strict: bool = Form(False, description="Reject the whole file on any error."),
    dry_run: bool = Form(False, description="Validate and report; write nothing."),
    key: ApiKey = Depends(auth.require_role("loader")),
) -> Any:
    if layer not in SPECS:
        raise not_found(f"no loadable layer {layer!r}; one of: {', '.join(SPECS)}")
    mapping = parse_mapping(map, None)
    fields = {"crs": crs, "encoding": encoding, "mode": mode, "layer_name": layer_name, "x": x, "y": y, "z": z,
              "wkt": wkt, "address_column": address_column}
    options = IngestOptions(**{k: v for k, v in fields.items() if v is not None}, mapping=mapping,
                                strict=strict, dry_run=dry_run, operator=key.name or f"api key {key.id}")
    engine = get_state(request).engine
    with tempfile.TemporaryDirectory(prefix="cim-upload-") as tmp:
        paths = _primary_files(_save(files, FsPath(tmp)))
        # a load locks, stages and versions a whole layer: the owner's work, for city-wide keys only
        with as_owner(f"loading layer {layer}"):
            report = ingest_files(layer, paths, options, engine)
    return report.as_dict()


def install(app: FastAPI) -> None:
    app.include_router(router)
