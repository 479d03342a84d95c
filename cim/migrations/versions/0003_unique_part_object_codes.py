"""An object code names one current part: ``ix_parts_object_code`` becomes unique among current
versions (versions of one feature share its code; a closed feature keeps it, so it may come back).

Two concurrent part loads could once hand out the same codes; a base that already holds such
duplicates is named here, not silently re-coded: the operator decides which part keeps its code.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

from cim.bootstrap import InitError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    duplicates = op.get_bind().execute(sa.text(
        "SELECT object_code, string_agg(coalesce(source_id, feature_id::text), ', ' ORDER BY source_id) "
        "FROM parts WHERE valid_to IS NULL GROUP BY object_code HAVING count(*) > 1 ORDER BY 1 LIMIT 20")).all()
    if duplicates:
        listed = "; ".join(f"{code}: {holders}" for code, holders in duplicates)
        raise InitError(f"current parts share object codes ({listed}); give each a code of its own "
                        "(e.g. cim ingest parts with the corrected codes) and run cim init again")
    # a base made partitioned by 0001 (cim.schema, since 0008_partition_by_district) has the key in it
    partitioned = op.get_bind().execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'parts'::regclass)")).scalar()
    op.execute("DROP INDEX IF EXISTS ix_parts_object_code")
    op.execute("CREATE UNIQUE INDEX ix_parts_object_code ON parts (object_code"
               f"{', district_code' if partitioned else ''}) WHERE valid_to IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_parts_object_code")
    op.execute("CREATE INDEX ix_parts_object_code ON parts (object_code)")
