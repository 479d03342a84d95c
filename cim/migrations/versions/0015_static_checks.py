"""The statement-level checks on a write of cases and their log run planned SQL: one function per key, and the
audit's insert in PL/pgSQL.

Each ``INSERT``/``COPY`` into ``cases`` or ``case_events`` runs two statement-level triggers: the key check of
0011_case_keys and the audit row of 0006_jurisdiction. Both were re-planned at every statement: the key check
built its query with ``EXECUTE format(…)`` (one function for both keys, told the table and columns by its
arguments), and ``cim_audit`` is a SQL function with a ``SET`` clause, which PostgreSQL 15 never inlines and
plans again at each call. On a write of 4 rows (the size of a ``POST /cases`` group at 500 reports/s) they took
~0.17–0.22 and ~0.09–0.17 ms of the statement's ~0.4 (``EXPLAIN ANALYZE``, docs/benchmarks.md); the same
check written as static SQL in a function of its own takes ~0.03 ms, its plan kept for the session. The intake
writes both tables in every group, so ~0.4 ms of the database's CPU a group.

So each key's insert check is a function of its own, ``case_key_check_new_<table>_<column>()``, with the same
query, errors (``foreign_key_violation``, the same message, table, column and constraint) and the lock under
``REPEATABLE READ``/``SERIALIZABLE``; the rare paths (a changed key, the referenced side) keep the generic
function. ``cim_audit`` is the same insert in PL/pgSQL, which keeps its plan. On Citus none of these triggers
exists (0011 left the foreign keys; ``cim.distribution`` drops the audit triggers): only ``cim_audit``
changes there.

Revision ID: 0015_static_checks
Revises: 0014_case_duplicates
"""
import sqlalchemy as sa
from alembic import op

revision = "0015_static_checks"
down_revision = "0014_case_duplicates"
branch_labels = None
depends_on = None

#: (table, column, referenced table, referenced column): the keys 0011_case_keys checks by statement
KEYS = (("case_events", "case_id", "cases", "id"), ("cases", "class_code", "case_classes", "code"))

_AUDIT_INSERT = """
INSERT INTO audit_log (actor, key_id, role, scope, action, object, detail, client, request)
VALUES (coalesce(nullif(current_setting('cim.user', true), ''), session_user::text),
        nullif(current_setting('cim.key', true), '')::integer,
        nullif(current_setting('cim.role', true), ''),
        nullif(current_setting('cim.scope_text', true), ''),
        p_action, p_object, coalesce(p_detail, '{}'::jsonb),
        nullif(current_setting('cim.client', true), ''),
        nullif(current_setting('cim.request', true), ''))"""
_AUDIT = ("CREATE OR REPLACE FUNCTION cim_audit(p_action text, p_object text, p_detail jsonb) RETURNS void "
          "LANGUAGE {language} SECURITY DEFINER SET search_path = public, pg_temp AS $$\n{body}\n$$")


def function_name(table: str, column: str) -> str:
    return f"case_key_check_new_{table}_{column}"


def _check_function(table: str, column: str, target: str, key: str) -> str:
    # the query and message of 0011's case_key_check_new, written out for this key
    return f"""
CREATE FUNCTION {function_name(table, column)}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
DECLARE
  missing text;
BEGIN
  -- one index probe per distinct key of the statement (LATERAL … LIMIT 1 is never turned into a join)
  SELECT n.k::text INTO missing FROM (SELECT DISTINCT {column} AS k FROM new_rows) n LEFT JOIN LATERAL
    (SELECT true AS found FROM {target} r WHERE r.{key} = n.k LIMIT 1) f ON true WHERE f.found IS NULL LIMIT 1;
  IF missing IS NOT NULL THEN
    RAISE EXCEPTION 'insert or update on table "%" violates key "%": % = % is not in %', TG_TABLE_NAME,
      TG_NAME, '{column}', missing, '{target}'
      USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME, COLUMN = '{column}', CONSTRAINT = TG_NAME;
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    -- an older snapshot may still see a row deleted since: lock them, as a foreign key's check does
    PERFORM 1 FROM {target} r WHERE r.{key} IN (SELECT n.{column} FROM new_rows n) FOR KEY SHARE;
  END IF;
  RETURN NULL;
END $$"""


def _trigger(table: str, column: str, function: str) -> str:
    return (f"CREATE TRIGGER {table}_{column}_key AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}")


def _has_trigger(bind: sa.Connection, table: str, name: str) -> bool:
    return bool(bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) "
                                     "AND tgname = :n)"), {"t": table, "n": name}).scalar())


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(_AUDIT.format(language="plpgsql", body=f"BEGIN{_AUDIT_INSERT};\nEND"))
    for table, column, target, key in KEYS:
        op.execute(_check_function(table, column, target, key))
        if _has_trigger(bind, table, f"{table}_{column}_key"):  # one node (on Citus: the foreign key)
            op.execute(f"DROP TRIGGER {table}_{column}_key ON {table}")
            op.execute(_trigger(table, column, f"{function_name(table, column)}()"))


def downgrade() -> None:
    bind = op.get_bind()
    for table, column, target, key in KEYS:
        if _has_trigger(bind, table, f"{table}_{column}_key"):
            op.execute(f"DROP TRIGGER {table}_{column}_key ON {table}")
            op.execute(_trigger(table, column, f"case_key_check_new('{column}', '{target}', '{key}')"))
        op.execute(f"DROP FUNCTION IF EXISTS {function_name(table, column)}()")
    op.execute(_AUDIT.format(language="sql", body=_AUDIT_INSERT.strip()))
