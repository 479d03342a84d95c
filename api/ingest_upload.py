"""``POST /ingest/{layer}``: upload files and load them, exactly as ``cim ingest`` would.

Needs a key with role ``loader`` or ``admin``. The files (a Shapefile's .shp/.dbf/.shx/.prj/.cpg
together, or one GeoJSON/CSV/GeoPackage/zip) are saved under their own names in a private temp
directory — names matter because a Shapefile's parts find each other by name — and handed to
:func:`ingest.run.ingest_files`, whose report is returned as JSON. The temp directory is removed
afterwards, loaded or not.
"""
from __future__ import annotations

import dataclasses
import importlib
import shutil
import tempfile
from pathlib import Path as FsPath
from types import ModuleType
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, Request, UploadFile

from api import auth
from api.deps import get_state
from api.problems import Problem, bad_parameter, not_found
from cim.apikeys import ApiKey

router = APIRouter(tags=["ingest"])
_CHUNK = 1 << 20


def _ingest_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in (name, name.rpartition(".")[0]):
            raise  # a real missing dependency inside the loader, not an absent loader
        return None


def _parse_map(entries: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for entry in entries:
        target, sep, source = entry.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise bad_parameter("map", f"map entries must look like 'target=source', got {entry!r}")
        mapping[target.strip()] = source.strip()
    return mapping


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


def _options(run: ModuleType, values: dict[str, Any]) -> Any:
    """The loader's options object when it declares one (a dataclass), else a plain dict."""
    cls = getattr(run, "IngestOptions", None)
    if cls is not None and dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
    return values


def _report_json(report: Any) -> Any:
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return dataclasses.asdict(report)
    return report


@router.post("/ingest/{layer}", summary="Upload and load files into a layer (role loader)")
def ingest_upload(
    request: Request,
    layer: str = Path(..., description="Layer to load, as for 'cim ingest' (e.g. buildings, parts, pipelines)."),
    files: list[UploadFile] = File(..., description="The file(s) to load; a Shapefile with all its parts."),
    crs: str | None = Form(None, description="CRS of the data when the files do not say (EPSG code, gcj02, bd09)."),
    encoding: str | None = Form(None, description="Text encoding when the files do not say (e.g. gbk)."),
    mode: str | None = Form(None, description="How the delivery relates to what is loaded (see 'cim ingest')."),
    layer_name: str | None = Form(None, description="Layer inside a multi-layer file (GeoPackage)."),
    x: str | None = Form(None, description="CSV column holding x / longitude."),
    y: str | None = Form(None, description="CSV column holding y / latitude."),
    z: str | None = Form(None, description="CSV column holding z / height."),
    wkt: str | None = Form(None, description="CSV column holding WKT geometry."),
    map: list[str] = Form([], description="Column mapping 'target=source', repeatable."),
    strict: bool = Form(False, description="Reject the whole delivery on the first bad row."),
    dry_run: bool = Form(False, description="Check and report without changing the base."),
    key: ApiKey = Depends(auth.require_role("loader")),
) -> Any:
    run = _ingest_module("ingest.run")
    if run is None or not hasattr(run, "ingest_files"):
        raise Problem(503, "Service unavailable", "loading over the API is not available: this installation "
                                                  "has no loader (ingest.run)")
    specs = _ingest_module("ingest.specs")
    known = getattr(specs, "SPECS", None) if specs else None
    if isinstance(known, dict) and layer not in known:
        raise not_found(f"no loadable layer {layer!r}; one of: {', '.join(sorted(known))}")
    mapping = _parse_map(map)
    values = {"crs": crs, "encoding": encoding, "mode": mode, "layer_name": layer_name, "x": x, "y": y,
              "z": z, "wkt": wkt, "map": mapping, "strict": strict, "dry_run": dry_run,
              "operator": key.name or f"api key {key.id}"}
    values = {k: v for k, v in values.items() if v is not None}
    engine = get_state(request).engine
    with tempfile.TemporaryDirectory(prefix="cim-upload-") as tmp:
        paths = _save(files, FsPath(tmp))
        report = run.ingest_files(layer, paths, _options(run, values), engine)
    return _report_json(report)


def install(app: FastAPI) -> None:
    auth.install(app)
    app.include_router(router)
