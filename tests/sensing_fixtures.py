"""Shared set-up of the sensing tests: a base holding the sample city's IoT devices (loaded with
the ordinary loader from data_samples, as `cim samples load` does)."""
from __future__ import annotations

import json

import sqlalchemy as sa

from cim.database import engine_for
from ingest.run import IngestOptions, ingest_files
from tests.conftest import PROJECT

SAMPLES = PROJECT / "data_samples"


def load_sample_layers(url: str, *layers: str) -> None:
    """Load the manifest entries of ``layers`` (in manifest order) into the base at ``url``."""
    for entry in json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8")):
        if entry["layer"] not in layers:
            continue
        options = IngestOptions(crs=entry.get("crs"), encoding=entry.get("encoding"),
                                layer_name=entry.get("layer_name"), x=entry.get("x"), y=entry.get("y"),
                                z=entry.get("z"), wkt=entry.get("wkt"), mapping=entry.get("map") or {},
                                operator="test")
        ingest_files(entry["layer"], [SAMPLES / entry["path"]], options, engine_for(url))


def scalar(url: str, sql: str, **params):  # noqa: ANN201
    with engine_for(url).connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()
