"""The policies of the tables partitioned by district read the caller's one district from one setting.

Revision 0008 made those policies state the caller's district so that PostgreSQL prunes the other districts'
partitions; the district was worked out in SQL from ``cim.district``, ``cim.street`` and ``cim.grids`` (two regular
expressions and ten ``current_setting`` calls). A policy is also a filter evaluated on every row read, so that
work was done for each row: ~5 µs a row, 35 of the 45 ms a dense vector tile of 5,471 parts spent in the database
(synthetic Shanghai, the public scope). The scope now sets ``cim.partition`` to that district once per
transaction (:meth:`cim.jurisdiction.Scope.one_district`, the same rule), and the policies compare the partition
key with it (:func:`cim.jurisdiction.district_pruning`): the same rows, the same pruning, two ``current_setting``
calls a row.

Revision ID: 0012_policy_partition
Revises: 0011_case_keys
"""
from alembic import op

from cim.jurisdiction import area_expressions, area_tables, protect_sql
from cim.schema import DISTRICT_PARTITIONED, PARTITION_COLUMN

revision = "0012_policy_partition"
down_revision = "0011_case_keys"
branch_labels = None
depends_on = None

_POLICIES = ("cim_read", "cim_insert", "cim_update", "cim_delete")
_GRIDS = "current_setting('cim.grids', true)"
#: revision 0008's conjunct, for the downgrade
_SCOPE_DISTRICT_0008 = (
    "coalesce(nullif(current_setting('cim.district', true), ''), "
    "nullif(left(coalesce(current_setting('cim.street', true), ''), 6), ''), "
    f"CASE WHEN left({_GRIDS}, 6) ~ '^[0-9]{{6}}$' THEN CASE WHEN {_GRIDS} ~ "
    f"('^' || left({_GRIDS}, 6) || '[^,]*(,' || left({_GRIDS}, 6) || '[^,]*)*$') THEN left({_GRIDS}, 6) END END)")
_PRUNING_0008 = (f"({PARTITION_COLUMN} = {_SCOPE_DISTRICT_0008} OR {PARTITION_COLUMN} >= "
                 f"CASE WHEN {_SCOPE_DISTRICT_0008} IS NULL THEN '' END)")


def _protect(policies: dict[str, tuple[str, str]]) -> None:
    for name in DISTRICT_PARTITIONED:
        for policy in _POLICIES:
            op.execute(f"DROP POLICY IF EXISTS {policy} ON {name}")
        op.execute(f"DROP TRIGGER IF EXISTS {name}_audit ON {name}")
        for statement in protect_sql(name, *policies[name]):
            op.execute(statement)


def upgrade() -> None:
    _protect(area_tables())


def downgrade() -> None:
    plain = area_expressions("district_code", "street_code", "grid_code")
    _protect({name: tuple(f"{e} AND {_PRUNING_0008}" for e in plain) for name in DISTRICT_PARTITIONED})
