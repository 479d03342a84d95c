"""The big layers lose their N-D GiST index: /nearby in 3D walks the 2D one (issue 15).

Each of buildings, curtain_walls, parts, pipelines, iot_devices and addresses carried, beside its 2D GiST, an N-D
GiST (``gist_geometry_ops_nd``) whose only user was /nearby in 3D (``ORDER BY geom <<->> point``). PostGIS 3.3
cannot build that operator class sorted: it cost ~7 s of server CPU per 1 M rows loaded (the 2D GiST, built
sorted, ~1 s), ~105 s of the 15 M parts' load. /nearby in 3D now takes candidates from the 2D GiST in 2D
distance order and proves the 3D answer from them (cim.spatial), so the N-D indexes go. On a partitioned layer
dropping the parent's index drops its partitions'; on Citus the drop reaches the shards.

Revision ID: 0013_nearby_2d
Revises: 0012_policy_partition
"""
from alembic import op
import sqlalchemy as sa

from cim.distribution import district_partitions, is_citus, partition_index_sql

revision = "0013_nearby_2d"
down_revision = "0012_policy_partition"
branch_labels = None
depends_on = None

#: the layers that had an N-D GiST (cim.schema's ND_INDEXED until this revision)
ND_INDEXED = ("buildings", "curtain_walls", "parts", "pipelines", "iot_devices", "addresses")
OPCLASS = "gist_geometry_ops_nd"


def index_name(table: str) -> str:
    return f"ix_{table}_geom_nd"


def upgrade() -> None:
    for table in ND_INDEXED:
        op.execute(f'DROP INDEX IF EXISTS "{index_name(table)}"')


def downgrade() -> None:
    bind = op.get_bind()
    citus = is_citus(bind)
    for table in ND_INDEXED:
        partitioned = bind.execute(sa.text("SELECT relkind = 'p' FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                                   {"t": table}).scalar()
        using = f"USING gist (geom {OPCLASS})"
        if not partitioned or citus:  # (Citus makes the shards' and partitions' indexes itself)
            op.execute(f'CREATE INDEX IF NOT EXISTS "{index_name(table)}" ON "{table}" {using}')
            continue
        # the parent's first (ON ONLY), then each partition's under the name cim.distribution gives a partition
        # made later (ix_parts_geom_nd_310104), attached: as revision 0008 built them
        op.execute(f'CREATE INDEX IF NOT EXISTS "{index_name(table)}" ON ONLY "{table}" {using}')
        cur = bind.connection.cursor()
        for partition in district_partitions(cur, table).values():
            for parent_index, statement in partition_index_sql(cur, table, partition):
                if parent_index == index_name(table):
                    op.execute(statement)
                    op.execute(f'ALTER INDEX "{parent_index}" ATTACH PARTITION "{statement.split(chr(34))[1]}"')
