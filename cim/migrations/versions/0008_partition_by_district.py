"""The big feature layers become LIST-partitioned on the jurisdiction (``district_code``): parts, pipelines,
buildings, addresses — one partition per district present and a DEFAULT one (features outside every district,
``district_code = ''``); the loaders add a district's partition when one first appears
(:func:`cim.distribution.ensure_partitions`). Design: docs/ARCHITECTURE.md, "Partitions by district".

A new base is made partitioned by revision 0001 (``cim.schema.build_metadata``); here it only gets its DEFAULT
partitions. An existing base is converted table by table, keeping every row as it is (fid, feature id,
history): the old table is renamed, the partitioned one made from ``cim.schema``, the rows copied
(``district_code`` NULL becomes ``''``), the indexes built once the rows are in, the fid sequence continued,
and the history triggers, row-level security policies, audit trigger, grants and dependent views made again.

For both: the history triggers learn to move a feature between districts (a BEFORE ROW trigger cannot move a
row to another partition: an UPDATE that changes ``district_code`` closes the row where it is and inserts the
new version, same feature id, in its district's partition), and the policies state the caller's district so
that PostgreSQL prunes partitions at executor start-up (:func:`cim.jurisdiction.area_tables`).

Revision ID: 0008_partition_by_district
Revises: 0007_scenario_jurisdiction
"""
from alembic import context, op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from cim.bootstrap import InitError
from cim.distribution import district_partitions, ensure_partitions, is_citus, partition_index_sql
from cim.jurisdiction import area_tables, protect_sql
from cim.schema import DISTRICT_PARTITIONED, NO_DISTRICT, PARTITION_COLUMN, build_metadata

revision = "0008_partition_by_district"
down_revision = "0007_scenario_jurisdiction"
branch_labels = None
depends_on = None

_POLICIES = ("cim_read", "cim_insert", "cim_update", "cim_delete")


def _srid(bind: sa.Connection) -> int:
    stored = bind.execute(sa.text("SELECT value FROM cim_settings WHERE key = 'srid'")).scalar()
    return int(stored if stored is not None else context.config.attributes["srid"])


def history_function_sql(table: str, columns: list[str]) -> str:
    """Revision 0002's history trigger for a partitioned table: as before (an UPDATE of a current row keeps
    the old version, a DELETE terminates), and an UPDATE that changes the district — which a BEFORE ROW trigger
    cannot carry into another partition — closes the row where it is and inserts the new version (same
    feature id, a new fid) into its district's partition."""
    col_list = ", ".join(f'"{c}"' for c in columns)
    old_values = ", ".join("now()" if c == "valid_to" else f'OLD."{c}"' for c in columns)
    new_values = ", ".join("now()" if c == "valid_from" else f'NEW."{c}"' for c in columns)
    return f"""
CREATE OR REPLACE FUNCTION {table}_keep_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.valid_to IS NULL THEN
      UPDATE {table} SET valid_to = now() WHERE fid = OLD.fid AND {PARTITION_COLUMN} = OLD.{PARTITION_COLUMN};
    END IF;
    RETURN NULL;  -- terminate, never delete
  END IF;
  IF OLD.valid_to IS NULL AND NEW.valid_to IS NULL
     AND (to_jsonb(OLD) - 'valid_from' - 'ingest_run_id') IS DISTINCT FROM
         (to_jsonb(NEW) - 'valid_from' - 'ingest_run_id') THEN
    IF NEW.{PARTITION_COLUMN} IS DISTINCT FROM OLD.{PARTITION_COLUMN} THEN
      INSERT INTO {table} ({col_list}) VALUES ({new_values});
      OLD.valid_to := now();
      RETURN OLD;  -- the old version, closed in its own partition
    END IF;
    INSERT INTO {table} ({col_list}) VALUES ({old_values});
    NEW.valid_from := now();
  END IF;
  RETURN NEW;
END $$"""


def history_trigger_sql(table: str) -> list[str]:
    # as revision 0002: the WHEN clause keeps the loaders' bulk closing of versions free of any plpgsql call
    return [f"CREATE TRIGGER {table}_history_update BEFORE UPDATE ON {table} FOR EACH ROW "
            f"WHEN (OLD.valid_to IS NULL AND NEW.valid_to IS NULL) EXECUTE FUNCTION {table}_keep_history()",
            f"CREATE TRIGGER {table}_history_delete BEFORE DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_keep_history()"]


def _districts(bind: sa.Connection, source: str | None) -> set[str]:
    """The districts to give partitions: those of the base's districts layer and those the rows carry."""
    codes = set(bind.execute(sa.text("SELECT DISTINCT code FROM districts WHERE valid_to IS NULL")).scalars())
    if source:
        codes |= set(bind.execute(sa.text(
            f'SELECT DISTINCT {PARTITION_COLUMN} FROM "{source}" WHERE {PARTITION_COLUMN} IS NOT NULL')).scalars())
    return codes


def _convert(bind: sa.Connection, table: sa.Table) -> None:
    name = table.name
    old = f"{name}__unpartitioned"
    dialect = postgresql.dialect()
    sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'fid')"), {"t": name}).scalar()
    last, called = bind.execute(sa.text(f"SELECT last_value, is_called FROM {sequence}")).one()
    next_fid = last + 1 if called else last
    # views on the table (none of the platform's own; an analyst's may be) are dropped and made again
    views = bind.execute(sa.text(
        "SELECT DISTINCT v.oid, v.relname, v.relkind, pg_get_viewdef(v.oid), v.reloptions, v.relacl::text[] "
        "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = CAST(:t AS regclass) AND v.oid <> d.refobjid"),
        {"t": name}).all()
    if any(kind != "v" for _oid, _n, kind, *_ in views):
        raise InitError(f"materialized views depend on {name} ({', '.join(v[1] for v in views if v[2] != 'v')}); "
                        "drop them, run cim init, and make them again")
    grants = bind.execute(sa.text(
        "SELECT a.grantee::regrole::text, a.privilege_type, a.is_grantable FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = CAST(:t AS regclass) AND a.grantee <> 0 AND a.grantee <> c.relowner"), {"t": name}).all()
    for _oid, view, *_ in views:
        op.execute(f'DROP VIEW "{view}"')
    op.execute(f'ALTER TABLE "{name}" RENAME TO "{old}"')
    # the old table's indexes, key and fid sequence carry the names the new table's get
    for index in bind.execute(sa.text(
            "SELECT i.relname, x.indisprimary FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = CAST(:t AS regclass)"), {"t": old}).all():
        if index[1]:
            op.execute(f'ALTER TABLE "{old}" DROP CONSTRAINT "{index[0]}"')
        else:
            op.execute(f'DROP INDEX "{index[0]}"')
    # (foreign keys too: PostgreSQL names the new table's after any of that name in the schema)
    for (constraint,) in bind.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND contype = 'f'"), {"t": old}):
        op.execute(f'ALTER TABLE "{old}" DROP CONSTRAINT "{constraint}"')
    op.execute(f'ALTER TABLE "{old}" ALTER COLUMN fid DROP IDENTITY')
    op.execute(str(sa.schema.CreateTable(table).compile(dialect=dialect)))
    ensure_partitions(bind.connection.cursor(), name, _districts(bind, old))
    columns = [c.name for c in table.columns]
    listed = ", ".join(f'"{c}"' for c in columns)
    selected = ", ".join(f"COALESCE({c}, '{NO_DISTRICT}')" if c == PARTITION_COLUMN else f'"{c}"' for c in columns)
    op.execute(f'INSERT INTO "{name}" ({listed}) OVERRIDING SYSTEM VALUE SELECT {selected} FROM "{old}"')
    # the indexes, built once the rows are in: the parent's first (ON ONLY: not recursing), then each
    # partition's under the name a partition made later gets (cim.distribution.partition_index_sql), attached
    cur = bind.connection.cursor()
    for index in table.indexes:
        statement = str(sa.schema.CreateIndex(index).compile(dialect=dialect))
        op.execute(statement.replace(f" ON {name} ", f" ON ONLY {name} ", 1))
    for partition in district_partitions(cur, name).values():
        for parent_index, statement in partition_index_sql(cur, name, partition):
            op.execute(statement)
            op.execute(f'ALTER INDEX "{parent_index}" ATTACH PARTITION "{statement.split(chr(34))[1]}"')
    op.execute(f'ALTER TABLE "{name}" ALTER COLUMN fid RESTART WITH {max(next_fid, 1)}')
    op.execute(f"""SELECT setval(pg_get_serial_sequence('{name}', 'fid'),
        greatest({next_fid}, (SELECT coalesce(max(fid), 0) + 1 FROM "{name}")), false)""")
    for grantee, privilege, grantable in grants:
        op.execute(f'GRANT {privilege} ON "{name}" TO "{grantee}"' + (" WITH GRANT OPTION" if grantable else ""))
    for statement in history_trigger_sql(name):
        op.execute(statement)
    op.execute(f'DROP TABLE "{old}"')
    for _oid, view, _kind, definition, options, acl in views:
        with_options = f" WITH ({', '.join(options)})" if options else ""
        op.execute(f'CREATE VIEW "{view}"{with_options} AS {definition}')
        for entry in acl or []:
            _grant_acl_entry(view, entry)
    op.execute(f'ANALYZE "{name}"')


def _grant_acl_entry(relation: str, entry: str) -> None:
    """Grant again what one ``aclitem`` (``grantee=arwd/grantor``) of a dropped view gave."""
    grantee, _, rights = entry.partition("=")
    rights = rights.split("/")[0]
    letters = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "D": "TRUNCATE", "x": "REFERENCES",
               "t": "TRIGGER"}
    privileges = [p for letter, p in letters.items() if letter in rights]
    if privileges:
        op.execute(f'GRANT {", ".join(privileges)} ON "{relation}" TO {grantee or "PUBLIC"}')


def upgrade() -> None:
    bind = op.get_bind()
    if is_citus(bind) and bind.execute(sa.text(
            "SELECT count(*) FROM citus_tables WHERE table_name::text = ANY(:t) AND NOT EXISTS "
            "(SELECT 1 FROM pg_partitioned_table p WHERE p.partrelid = table_name)"),
            {"t": list(DISTRICT_PARTITIONED)}).scalar():
        raise InitError("this Citus base distributed its feature layers before they were partitioned; run "
                        "SELECT undistribute_table(t) for parts, buildings, addresses, pipelines on the "
                        "coordinator, then cim init again (it partitions and distributes them anew)")
    tables = build_metadata(_srid(bind)).tables
    policies = area_tables()
    for name in DISTRICT_PARTITIONED:
        table = tables[name]
        columns = [c.name for c in table.columns if c.name != "fid"]
        op.execute(history_function_sql(name, columns))
        kind = bind.execute(sa.text("SELECT relkind FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                            {"t": name}).scalar()
        if kind == "p":  # a new base: made partitioned by revision 0001
            ensure_partitions(bind.connection.cursor(), name, _districts(bind, None))
        else:
            _convert(bind, table)
        # the policies of revision 0006 again, now stating the caller's district (partition pruning)
        for policy in _POLICIES:
            op.execute(f"DROP POLICY IF EXISTS {policy} ON {name}")
        op.execute(f"DROP TRIGGER IF EXISTS {name}_audit ON {name}")
        for statement in protect_sql(name, *policies[name]):
            op.execute(statement)


def downgrade() -> None:
    # The tables stay partitioned: that is how revision 0001 makes them now (cim.schema), and revisions
    # 0002–0007 work on them (0006's downgrade and upgrade rewrite the policies from cim.jurisdiction). So do the
    # history functions, which keep 0002's rules. Nothing to undo that an earlier revision would not redo.
    pass
