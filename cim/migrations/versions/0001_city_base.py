"""The city base: hierarchy, responsibility, gazetteer, buildings, curtain walls, parts,
pipelines, IoT, provenance, layer registry.

The storage SRID is a parameter of this first revision (``cim init --srid``), read from the
Alembic config attributes; later revisions read it back from ``cim_settings``.

Revision ID: 0001
Revises:
"""
from alembic import context, op

from cim.schema import build_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    srid = int(context.config.attributes["srid"])
    bind = op.get_bind()
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")  # gen_random_uuid() on PostgreSQL 12
    build_metadata(srid).create_all(bind)
    # readings are partitioned by month on demand; the default partition catches the rest
    op.execute("CREATE TABLE iot_readings_default PARTITION OF iot_readings DEFAULT")


def downgrade() -> None:
    srid = int(context.config.attributes.get("srid", 4549))
    build_metadata(srid).drop_all(op.get_bind())
