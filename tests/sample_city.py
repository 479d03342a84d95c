"""What the loader tests share: the sample city as a base, a load through `ingest_files`, one value
read back, and a few WGS84 points inside the sample district."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from cim.database import engine_for
from ingest.report import IngestReport
from ingest.run import IngestOptions, ingest_files
from tests.conftest import PROJECT, create_database, run_cim

SAMPLES = PROJECT / "data_samples"

# points inside the sample district (徐汇), WGS84
LONLAT = [(121.437, 31.190), (121.440, 31.195), (121.445, 31.200), (121.450, 31.185), (121.430, 31.180)]


def sample_city_base(server_url: str) -> str:
    """A new database with the whole sample city loaded through `cim samples load`; its URL."""
    url = create_database(server_url)
    run_cim("init", db_url=url)
    run_cim("samples", "load", "--json", db_url=url)
    return url


def scalar(url: str, sql: str, **params):
    with engine_for(url).connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def load(url: str, layer: str, *paths: Path, **options) -> IngestReport:
    return ingest_files(layer, list(paths), IngestOptions(**options), engine_for(url))
