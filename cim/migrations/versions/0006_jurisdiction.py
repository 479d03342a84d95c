"""Users, jurisdiction and row-level security, with an append-only audit trail (issue 12).

* ``users``: a role and a jurisdiction (city, or a district / street code, a set of grid codes,
  and/or a department); ``api_keys.user_id`` ties a key to its user.
* ``cim_api``: the non-owner role the API switches to at the start of every request's transaction
  (``set_config('role', 'cim_api', true)`` with the caller's jurisdiction as transaction-local
  ``cim.*`` settings: :mod:`cim.jurisdiction`). The owner (loads, migrations, ``cim`` commands
  without ``--as``) is not subject to the policies: RLS is enabled but not forced.
* Policies, for ``cim_api`` only, on every table that carries area codes (and those that hang off
  one: a case's log and attachments, a device's readings, latest values and alerts). They compare
  indexed code columns by equality (``cim_in_scope``), never spatially, so a bbox query's GiST index
  still drives the scan. The SQL of one table's policies is :func:`cim.jurisdiction.protect_sql`, for
  later migrations too.
* ``audit_log``: who, when, what, from where — every write (a statement trigger on each protected
  table) and every unmasked read of personal data (``cim_audit_read``). No role but the owner can
  write it directly, and nobody can change or delete a row (REVOKE and a trigger).

Revision ID: 0006_jurisdiction
Revises: 0005_sensing
"""
from alembic import op

from cim.jurisdiction import API_ROLE, area_tables, protect_sql

#: the functions of PostGIS's && (2D) and &&& (N-D) box operators on geometry
LEAKPROOF_BOX_TESTS = ("geometry_overlaps(geometry, geometry)", "geometry_overlaps_nd(geometry, geometry)")

revision = "0006_jurisdiction"
down_revision = "0005_sensing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # roles are the cluster's, not the database's: another base on the same server may have made it
    op.execute(f"""DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{API_ROLE}') THEN
        CREATE ROLE {API_ROLE} NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another base's migration made it at the same moment
END $$""")
    op.execute(f"GRANT {API_ROLE} TO CURRENT_USER")  # so the owner's connections may switch to it
    op.execute("""
CREATE TABLE users (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    role text NOT NULL,
    city boolean NOT NULL DEFAULT false,
    district_code text,
    street_code text,
    grid_codes text[] NOT NULL DEFAULT '{}',
    department_code text,
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz,
    CONSTRAINT ck_users_role CHECK (role IN ('viewer', 'operator', 'handler', 'dispatcher', 'loader', 'admin')),
    CONSTRAINT ck_users_scope CHECK (city OR district_code IS NOT NULL OR street_code IS NOT NULL
                                     OR cardinality(grid_codes) > 0 OR department_code IS NOT NULL),
    CONSTRAINT ck_users_city CHECK (NOT city OR (district_code IS NULL AND street_code IS NULL
                                                 AND cardinality(grid_codes) = 0))
)""")
    op.execute("ALTER TABLE api_keys ADD COLUMN user_id integer REFERENCES users (id)")
    op.execute("CREATE INDEX ix_api_keys_user ON api_keys (user_id)")
    op.execute("""
CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    key_id integer,
    role text,
    scope text,
    action text NOT NULL,
    object text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    client text,
    request text
)""")
    op.execute("CREATE INDEX ix_audit_log_at ON audit_log (at)")
    op.execute("""
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$""")
    op.execute("CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
               "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")
    op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
               "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()")
    # who and from where come from the request's transaction-local settings; a write by the owner
    # outside the API (a load, a migration, psql) is recorded under the database user's name
    op.execute("""
CREATE FUNCTION cim_audit(p_action text, p_object text, p_detail jsonb) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
INSERT INTO audit_log (actor, key_id, role, scope, action, object, detail, client, request)
VALUES (coalesce(nullif(current_setting('cim.user', true), ''), session_user::text),
        nullif(current_setting('cim.key', true), '')::integer,
        nullif(current_setting('cim.role', true), ''),
        nullif(current_setting('cim.scope_text', true), ''),
        p_action, p_object, coalesce(p_detail, '{}'::jsonb),
        nullif(current_setting('cim.client', true), ''),
        nullif(current_setting('cim.request', true), ''))
$$""")
    op.execute("""
CREATE FUNCTION cim_audit_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  PERFORM cim_audit(lower(TG_OP), TG_TABLE_NAME::text, '{}'::jsonb);
  RETURN NULL;
END $$""")
    op.execute("""
CREATE FUNCTION cim_audit_read(p_object text, p_detail jsonb) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
SELECT cim_audit('read_unmasked', p_object, p_detail)
$$""")
    # Inlined into each policy (a plain SQL expression, each argument used once): equality on the code
    # columns against the transaction's settings. 'public' (anonymous) reads, never writes; no scope
    # at all (a connection that switched to the role without settings) sees and writes nothing.
    op.execute("""
CREATE FUNCTION cim_in_scope(d text, s text, g text) RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE current_setting('cim.scope', true)
    WHEN 'city' THEN true
    WHEN 'public' THEN true
    WHEN 'area' THEN (coalesce(current_setting('cim.district', true), '') = '' OR d = current_setting('cim.district', true))
        AND (coalesce(current_setting('cim.street', true), '') = '' OR s = current_setting('cim.street', true))
        AND (coalesce(current_setting('cim.grids', true), '') = ''
             OR g = ANY (string_to_array(current_setting('cim.grids', true), ',')))
    ELSE false END
$$""")
    op.execute("""
CREATE FUNCTION cim_may_write(d text, s text, g text) RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE current_setting('cim.scope', true)
    WHEN 'city' THEN true
    WHEN 'area' THEN (coalesce(current_setting('cim.district', true), '') = '' OR d = current_setting('cim.district', true))
        AND (coalesce(current_setting('cim.street', true), '') = '' OR s = current_setting('cim.street', true))
        AND (coalesce(current_setting('cim.grids', true), '') = ''
             OR g = ANY (string_to_array(current_setting('cim.grids', true), ',')))
    ELSE false END
$$""")
    op.execute("""
CREATE FUNCTION cim_in_department(dep text) RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT current_setting('cim.scope', true) IS DISTINCT FROM 'area'
    OR coalesce(current_setting('cim.department', true), '') = ''
    OR dep = current_setting('cim.department', true)
$$""")

    op.execute(f"GRANT USAGE ON SCHEMA public TO {API_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {API_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {API_ROLE}")
    # tables a later migration makes are granted too; their rows are then protected by their own
    # policies (tests/test_jurisdiction_schema.py fails for a table with area codes that has none)
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES "
               f"TO {API_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {API_ROLE}")
    # who may do what is the owner's business: the API reads keys and users, never changes them
    op.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON users, api_keys, audit_log FROM {API_ROLE}")
    op.execute(f"REVOKE SELECT ON audit_log FROM {API_ROLE}")
    op.execute("REVOKE ALL ON audit_log FROM PUBLIC")
    op.execute("REVOKE EXECUTE ON FUNCTION cim_audit(text, text, jsonb) FROM PUBLIC")

    # Under row-level security a query's own conditions may drive an index only when they are LEAKPROOF
    # (they run before the policy's); PostGIS does not mark its box operators so, and without it a scoped
    # caller's bbox query scans the whole table. The box tests compare two boxes and raise nothing: safe
    # to mark. Only a superuser may; otherwise the migration says what to ask the DBA to run.
    op.execute(f"""DO $$ BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        {' '.join(f'ALTER FUNCTION {fn} LEAKPROOF;' for fn in LEAKPROOF_BOX_TESTS)}
    ELSE
        RAISE WARNING 'cim: not a superuser, so the PostGIS box operators stay non-LEAKPROOF and scoped '
                      'bbox queries cannot use the spatial index; as a superuser run: %',
                      '{' '.join(f'ALTER FUNCTION {fn} LEAKPROOF;' for fn in LEAKPROOF_BOX_TESTS)}';
    END IF;
END $$""")

    # a view runs with its owner's rights unless told otherwise: the case layer must see as the caller
    op.execute("ALTER VIEW case_features SET (security_invoker = true)")

    existing = {r[0] for r in op.get_bind().exec_driver_sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    for table, expressions in area_tables().items():
        if table in existing:
            for statement in protect_sql(table, *expressions):
                op.execute(statement)


def downgrade() -> None:
    for table in reversed(list(area_tables())):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_audit ON {table}")
        for policy in ("cim_read", "cim_insert", "cim_update", "cim_delete"):
            op.execute(f"DROP POLICY IF EXISTS {policy} ON {table}")
        op.execute(f"ALTER TABLE IF EXISTS {table} DISABLE ROW LEVEL SECURITY")
    op.execute("ALTER VIEW case_features RESET (security_invoker)")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {API_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {API_ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {API_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {API_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {API_ROLE}")
    for fn in ("cim_in_department(text)", "cim_may_write(text, text, text)", "cim_in_scope(text, text, text)",
               "cim_audit_read(text, jsonb)", "cim_audit_write()", "cim_audit(text, text, jsonb)"):
        op.execute(f"DROP FUNCTION IF EXISTS {fn}")
    op.execute("DROP TABLE IF EXISTS audit_log")
    op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.execute("ALTER TABLE api_keys DROP COLUMN IF EXISTS user_id")
    op.execute("DROP TABLE IF EXISTS users")
    # the role is the cluster's and other bases may use it: it stays; so does LEAKPROOF on PostGIS's box
    # tests (true of them whatever the schema, and only a superuser could take it back)
