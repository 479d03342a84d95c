"""The scenarios' tables that carry area codes come under jurisdiction like the base's (issue 12): row-level
security for the API role and the audit trigger, through :func:`cim.jurisdiction.protect_sql` — the ponding
points and compounds of the flood scenario, the illegal-building clues and structures, and the group-rental
addresses with the utility use and scores that hang off them (personal data: a street sees its own).

Revision ID: 0007_scenario_jurisdiction
Revises: 0006_vitals
"""
from alembic import op

from cim.jurisdiction import area_expressions, protect_sql, through_expressions

revision = "0007_scenario_jurisdiction"
down_revision = "0006_vitals"
branch_labels = None
depends_on = None


def _tables() -> dict[str, tuple[str, str]]:
    plain = area_expressions("district_code", "street_code", "grid_code")
    return {
        # a compound belongs to a street; a point to a street and (monitoring points) a grid
        "flood_compounds": area_expressions("left(street_code, 6)", "street_code", "NULL"),
        "flood_points": area_expressions("left(street_code, 6)", "street_code", "grid_code"),
        "ib_clues": plain,
        "ib_structures": plain,
        "rental_addresses": plain,
        "rental_observations": through_expressions("rental_addresses", "id", "rental_observations.address_id"),
        "rental_scores": through_expressions("rental_addresses", "id", "rental_scores.address_id"),
    }


def upgrade() -> None:
    existing = {r[0] for r in op.get_bind().exec_driver_sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    for table, (read, write) in _tables().items():
        if table in existing:
            for statement in protect_sql(table, read, write):
                op.execute(statement)


def downgrade() -> None:
    for table in _tables():
        for policy in ("cim_read", "cim_insert", "cim_update", "cim_delete"):
            op.execute(f"DROP POLICY IF EXISTS {policy} ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_audit ON {table}")
        op.execute(f"ALTER TABLE IF EXISTS {table} DISABLE ROW LEVEL SECURITY")
