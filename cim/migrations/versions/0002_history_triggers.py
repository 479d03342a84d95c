"""History at the database level: an UPDATE of a current feature row keeps the old version as a
closed row, and a DELETE terminates the feature (sets ``valid_to``) instead of removing it.

Why triggers: analysts edit layers directly (QGIS, SQL); the history must not depend on every
writer remembering the rule. Loaders close and insert versions themselves in bulk, which these
triggers leave alone (they fire only when a *current* row is changed in place).

Revision ID: 0002
Revises: 0001
"""
from alembic import op

from cim.schema import FEATURE_TABLES, build_metadata

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _copy_columns(table_name: str) -> list[str]:
    # the SRID does not matter for the column list
    table = build_metadata(4549).tables[table_name]
    return [c.name for c in table.columns if c.name != "fid"]


def upgrade() -> None:
    for table in FEATURE_TABLES:
        cols = _copy_columns(table)
        col_list = ", ".join(f'"{c}"' for c in cols)
        old_values = ", ".join("now()" if c == "valid_to" else f'OLD."{c}"' for c in cols)
        op.execute(f"""
CREATE OR REPLACE FUNCTION {table}_keep_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.valid_to IS NULL THEN
      UPDATE {table} SET valid_to = now() WHERE fid = OLD.fid;
    END IF;
    RETURN NULL;  -- terminate, never delete
  END IF;
  IF OLD.valid_to IS NULL AND NEW.valid_to IS NULL
     AND (to_jsonb(OLD) - 'valid_from' - 'ingest_run_id') IS DISTINCT FROM
         (to_jsonb(NEW) - 'valid_from' - 'ingest_run_id') THEN
    INSERT INTO {table} ({col_list}) VALUES ({old_values});
    NEW.valid_from := now();
  END IF;
  RETURN NEW;
END $$""")
        # the WHEN clause keeps bulk closing of versions (valid_to set) free of any plpgsql call
        op.execute(f"CREATE TRIGGER {table}_history_update BEFORE UPDATE ON {table} FOR EACH ROW "
                   f"WHEN (OLD.valid_to IS NULL AND NEW.valid_to IS NULL) EXECUTE FUNCTION {table}_keep_history()")
        op.execute(f"CREATE TRIGGER {table}_history_delete BEFORE DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {table}_keep_history()")


def downgrade() -> None:
    for table in FEATURE_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_history_update ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_history_delete ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {table}_keep_history()")
