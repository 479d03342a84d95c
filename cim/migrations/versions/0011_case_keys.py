"""The case log's key to its case, and a case's key to its class, checked once per statement instead of once per row.

``case_events.case_id → cases(id)`` and ``cases.class_code → case_classes(code)`` were foreign keys: PostgreSQL
queues one check per inserted row and runs each as its own index probe through SPI — for an import of 20,000
cases and 60,000 log rows, 80,000 queued checks, ≈ 0.9 s of the database's CPU (``benchmarks/
cases_copy_variants.py``: 0.52 s the log's key, 0.36 s the class's). On one node they become statement-level
triggers that see the statement's rows as a transition table and check them all in one statement (an index
probe per distinct key, no queued event per row, no SPI call per row), with the same
guarantee for every writer (the import, ``POST /cases``, the lifecycle, psql):

* **referencing side** (``INSERT``/``COPY`` into ``case_events`` or ``cases``; a change of a case's class): a row
  whose case (class) is not there refuses the whole statement with ``foreign_key_violation`` (23503), as the
  key did. Under ``REPEATABLE READ``/``SERIALIZABLE`` the referenced rows are also locked ``FOR KEY SHARE``, as
  the key's check does, so a concurrent delete is a serialization failure, not an orphan.
* **referenced side** (``DELETE``/``TRUNCATE`` of cases or classes, a changed ``cases.id`` or class code): refused
  while a log row (a case) refers to it. The check first takes a ``SHARE`` lock on the referencing table, which
  waits for writers in flight and holds new ones off until the deleting transaction ends — so a log row written
  meanwhile is either seen by the check (and the delete refused) or checked after the delete committed (and
  refused itself). It needs ``READ COMMITTED`` (the default) to see those rows, and refuses otherwise. The
  platform never deletes a case or a class (history is never lost); this side only keeps others honest.

The functions are ``SECURITY DEFINER`` (owned by the base's owner) so that the checks see every row whatever
the writer's row-level security, as a foreign key's checks do.

On Citus the plain foreign keys stay (``cim.distribution`` makes them co-located keys through the district); a
Citus base is left as it is here, and a single-node base placed on Citus later gets its keys back from
:data:`cim.distribution.TRIGGER_CHECKED_KEYS`.

Revision ID: 0011_case_keys
Revises: 0010_case_import
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_case_keys"
down_revision = "0010_case_import"
branch_labels = None
depends_on = None

#: (table, column, referenced table, referenced column): the keys this revision checks by statement
KEYS = (("case_events", "case_id", "cases", "id"), ("cases", "class_code", "case_classes", "code"))

_FUNCTIONS = """
-- the referencing side: every row of the statement has its referenced row (one anti-join)
CREATE FUNCTION case_key_check_new() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $$
DECLARE
  missing text;
BEGIN
  -- one index probe per distinct key of the statement (LATERAL … LIMIT 1 is never turned into a join): left to
  -- itself the planner hashes the whole referenced table for an anti-join — every case, for each chunk's log
  IF TG_LEVEL = 'ROW' THEN  -- UPDATE OF the column, one row
    EXECUTE format('SELECT ($1).%1$I::text WHERE NOT EXISTS (SELECT 1 FROM %2$I r WHERE r.%3$I = ($1).%1$I)',
                   TG_ARGV[0], TG_ARGV[1], TG_ARGV[2]) INTO missing USING NEW;
  ELSE
    EXECUTE format('SELECT n.k::text FROM (SELECT DISTINCT %1$I AS k FROM new_rows) n LEFT JOIN LATERAL '
                   '(SELECT true AS found FROM %2$I r WHERE r.%3$I = n.k LIMIT 1) f ON true WHERE f.found IS NULL '
                   'LIMIT 1', TG_ARGV[0], TG_ARGV[1], TG_ARGV[2]) INTO missing;
  END IF;
  IF missing IS NOT NULL THEN
    RAISE EXCEPTION 'insert or update on table "%" violates key "%": % = % is not in %', TG_TABLE_NAME,
      TG_NAME, TG_ARGV[0], missing, TG_ARGV[1]
      USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME, COLUMN = TG_ARGV[0], CONSTRAINT = TG_NAME;
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    -- an older snapshot may still see a row deleted since: lock them, as a foreign key's check does
    IF TG_LEVEL = 'ROW' THEN
      EXECUTE format('SELECT 1 FROM %2$I r WHERE r.%3$I = ($1).%1$I FOR KEY SHARE', TG_ARGV[0], TG_ARGV[1],
                     TG_ARGV[2]) USING NEW;
    ELSE
      EXECUTE format('SELECT 1 FROM %2$I r WHERE r.%3$I IN (SELECT n.%1$I FROM new_rows n) FOR KEY SHARE',
                     TG_ARGV[0], TG_ARGV[1], TG_ARGV[2]);
    END IF;
  END IF;
  RETURN NULL;
END $$;

-- the referenced side: no referenced row goes (or changes its key) while a row refers to it
CREATE FUNCTION case_key_check_old() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $$
DECLARE
  used text;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION '% on table "%" needs READ COMMITTED: rows of "%" refer to it (key "%")', TG_OP,
      TG_TABLE_NAME, TG_ARGV[0], TG_NAME USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME;
  END IF;
  -- wait for the referencing table's writers in flight, and hold new ones off until this transaction ends
  EXECUTE format('LOCK TABLE %I IN SHARE MODE', TG_ARGV[0]);
  IF TG_OP = 'TRUNCATE' THEN
    EXECUTE format('SELECT %I::text FROM %I LIMIT 1', TG_ARGV[1], TG_ARGV[0]) INTO used;
  ELSIF TG_LEVEL = 'ROW' THEN  -- UPDATE OF the key, one row
    EXECUTE format('SELECT r.%1$I::text FROM %2$I r WHERE r.%1$I = ($1).%3$I LIMIT 1', TG_ARGV[1], TG_ARGV[0],
                   TG_ARGV[2]) INTO used USING OLD;
  ELSE  -- DELETE
    EXECUTE format('SELECT o.%3$I::text FROM old_rows o WHERE EXISTS (SELECT 1 FROM %2$I r WHERE r.%1$I = o.%3$I) '
                   'LIMIT 1', TG_ARGV[1], TG_ARGV[0], TG_ARGV[2]) INTO used;
  END IF;
  IF used IS NOT NULL THEN
    RAISE EXCEPTION 'update or delete on table "%" violates key "%" on table "%": % = % is still referenced',
      TG_TABLE_NAME, TG_NAME, TG_ARGV[0], TG_ARGV[2], used
      USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME, CONSTRAINT = TG_NAME;
  END IF;
  RETURN NULL;
END $$
"""


def _triggers(table: str, column: str, target: str, key: str) -> list[str]:
    new, old = f"{table}_{column}_key", f"{table}_{column}_referenced"
    return [
        f"CREATE TRIGGER {new} AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION case_key_check_new('{column}', '{target}', '{key}')",
        # a changed reference: rare (a class corrected), so per row and only when the column is set
        f"CREATE TRIGGER {new}_changed AFTER UPDATE OF {column} ON {table} FOR EACH ROW "
        f"WHEN (OLD.{column} IS DISTINCT FROM NEW.{column}) "
        f"EXECUTE FUNCTION case_key_check_new('{column}', '{target}', '{key}')",
        f"CREATE TRIGGER {old} AFTER DELETE ON {target} REFERENCING OLD TABLE AS old_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION case_key_check_old('{table}', '{column}', '{key}')",
        f"CREATE TRIGGER {old}_changed AFTER UPDATE OF {key} ON {target} FOR EACH ROW "
        f"WHEN (OLD.{key} IS DISTINCT FROM NEW.{key}) EXECUTE FUNCTION case_key_check_old('{table}', '{column}', "
        f"'{key}')",
        f"CREATE TRIGGER {old}_truncated BEFORE TRUNCATE ON {target} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION case_key_check_old('{table}', '{column}', '{key}')",
    ]


def _foreign_key(bind: sa.Connection, table: str, column: str, target: str) -> str | None:
    return bind.execute(sa.text(
        "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = "
        "c.conkey[1] WHERE c.contype = 'f' AND c.conrelid = CAST(:t AS regclass) AND c.confrelid = "
        "CAST(:r AS regclass) AND cardinality(c.conkey) = 1 AND a.attname = :c"),
        {"t": table, "r": target, "c": column}).scalar()


def _on_citus(bind: sa.Connection) -> bool:
    return bool(bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")).scalar())


def upgrade() -> None:
    bind = op.get_bind()
    if _on_citus(bind):  # Citus keeps the plain, co-located foreign keys
        return
    op.execute(_FUNCTIONS)
    for table, column, target, key in KEYS:
        name = _foreign_key(bind, table, column, target)
        if name is not None:
            op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for statement in _triggers(table, column, target, key):
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if _on_citus(bind):
        return
    for table, column, target, key in KEYS:
        for trigger, on in ((f"{table}_{column}_key", table), (f"{table}_{column}_key_changed", table),
                            (f"{table}_{column}_referenced", target), (f"{table}_{column}_referenced_changed", target),
                            (f"{table}_{column}_referenced_truncated", target)):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {on}")
        if _foreign_key(bind, table, column, target) is None:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_fkey FOREIGN KEY ({column}) "
                       f"REFERENCES {target}({key})")
    op.execute("DROP FUNCTION IF EXISTS case_key_check_new()")
    op.execute("DROP FUNCTION IF EXISTS case_key_check_old()")
