"""The parts' object-code CHECK in a cheaper, equivalent form (issue 15: the 15 M parts' first load).

``object_code ~ '^[0-9]{16}$'`` cost ~1.2 µs a row in every COPY and INSERT (its bounded repetition is the dear part
of PostgreSQL's regex engine), ~18 s of server CPU over the 15 M parts' first load. ``octet_length(object_code) = 16
AND object_code::text !~ '[^0-9]'`` holds for exactly the same values — 16 bytes, none of them outside the ASCII
digits, is 16 ASCII digits — and costs ~0.25 µs (benchmarks in docs/benchmarks.md). Same name, so a violation
names the same constraint. On a partitioned layer the parent's constraint is its partitions' (dropped and added
with it; adding checks every row once); on Citus the change reaches the shards.

Revision ID: 0016_object_code_check
Revises: 0015_static_checks
"""
from alembic import op

revision = "0016_object_code_check"
down_revision = "0015_static_checks"
branch_labels = None
depends_on = None

NAME = "ck_parts_object_code"
#: the CHECK before and after this revision (cim.schema.OBJECT_CODE_CHECK is the new one)
BEFORE = "object_code ~ '^[0-9]{16}$'"
AFTER = "octet_length(object_code) = 16 AND object_code::text !~ '[^0-9]'"


def _replace(expression: str) -> None:
    op.execute(f'ALTER TABLE parts DROP CONSTRAINT IF EXISTS "{NAME}"')
    op.execute(f'ALTER TABLE parts ADD CONSTRAINT "{NAME}" CHECK ({expression})')


def upgrade() -> None:
    _replace(AFTER)


def downgrade() -> None:
    _replace(BEFORE)
