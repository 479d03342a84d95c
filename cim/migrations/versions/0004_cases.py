"""The city-management case loop (issue 11): the class catalogue (部件/事件 大类 and 小类 with
their time limits and handling department kind), cases, their append-only event log, the working
calendar and attachments.

The tables are written here as SQL, once: the ``cases`` package reads and writes them with SQL
too, and ``cim`` (this migration included) never imports ``cases``. The catalogue's rows are
seeded by ``cases`` itself (``cases.catalogue``), from its own CSV.

Revision ID: 0004_cases
Revises: 0002
"""
from alembic import op

revision = "0004_cases"
down_revision = "0003"
branch_labels = None
depends_on = None

STATUSES = ("reported", "registered", "not_registered", "dispatched", "accepted", "returned", "handled",
            "closed", "suspended", "merged")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def upgrade() -> None:
    srid = op.get_bind().exec_driver_sql("SELECT value #>> '{}' FROM cim_settings WHERE key = 'srid'").scalar()
    if srid is None:  # a fresh base: 0001 ran in this same upgrade, with the SRID in the config
        from alembic import context

        srid = context.config.attributes["srid"]
    srid = int(srid)
    op.execute("""
CREATE TABLE case_classes (
    code text PRIMARY KEY,               -- 部件: the 2/4-digit codes of part_classes; 事件: 'E' + 2/4 digits
    kind text NOT NULL CHECK (kind IN ('部件', '事件')),
    name text NOT NULL,
    parent_code text REFERENCES case_classes(code),
    register_condition text,             -- 立案条件
    close_condition text,                -- 结案条件
    emergency_hours double precision CHECK (emergency_hours > 0),
    emergency_calendar text NOT NULL DEFAULT '24x7' CHECK (emergency_calendar IN ('working', '24x7')),
    normal_hours double precision CHECK (normal_hours > 0),
    normal_calendar text NOT NULL DEFAULT 'working' CHECK (normal_calendar IN ('working', '24x7')),
    department_kind text,                -- who handles it: matched against the grid's departments
    duplicate_radius_m double precision NOT NULL DEFAULT 50 CHECK (duplicate_radius_m >= 0),
    duplicate_window_h double precision NOT NULL DEFAULT 72 CHECK (duplicate_window_h >= 0),
    CHECK ((parent_code IS NULL) = (length(code) - (kind = '事件')::int = 2))
)""")
    # a department kind (道路养护, 市容环境 …) is recognised in a department's name by a pattern:
    # department names are what the responsibility chains of every district already carry
    op.execute("""
CREATE TABLE case_department_kinds (
    kind text PRIMARY KEY,
    name_pattern text NOT NULL           -- a POSIX regular expression over departments.name
)""")
    op.execute(f"""
CREATE TABLE cases (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel text NOT NULL,
    external_id text,
    class_code text NOT NULL REFERENCES case_classes(code),
    urgency text NOT NULL DEFAULT 'normal' CHECK (urgency IN ('normal', 'emergency')),
    description text,
    address_text text,
    geom geometry(POINTZ, {srid}),
    geocode jsonb,
    district_code text, street_code text, community_code text, grid_code text,
    part_object_code text,
    reporter_contact text,
    status text NOT NULL CHECK (status IN ({_in(STATUSES)})),
    suspended_status text,
    reported_at timestamptz NOT NULL,
    registered_at timestamptz,
    dispatched_at timestamptz,
    handled_at timestamptz,
    closed_at timestamptz,
    due_at timestamptz,
    remaining_hours double precision,    -- time left on the clock while suspended
    overdue boolean NOT NULL DEFAULT false,
    escalation_level smallint NOT NULL DEFAULT 0 CHECK (escalation_level BETWEEN 0 AND 2),
    department_code text,
    department_name text,
    post_code text,
    person_name text,
    person_contact text,
    dispatch_reason text,
    manual_reason text,                  -- set while the case waits in the manual queue
    returned_departments text[] NOT NULL DEFAULT '{{}}',
    rework_count integer NOT NULL DEFAULT 0,
    extension_count integer NOT NULL DEFAULT 0,
    extension_requested_hours double precision,
    merged_into bigint REFERENCES cases(id),
    version integer NOT NULL DEFAULT 1,
    attributes jsonb NOT NULL DEFAULT '{{}}'::jsonb
)""")
    op.execute("CREATE UNIQUE INDEX ix_cases_channel_external_id ON cases (channel, external_id) "
               "WHERE external_id IS NOT NULL")
    op.execute("CREATE INDEX ix_cases_geom ON cases USING gist (geom)")
    op.execute("CREATE INDEX ix_cases_status ON cases (status)")
    op.execute("CREATE INDEX ix_cases_class_reported ON cases (class_code, reported_at)")
    op.execute("CREATE INDEX ix_cases_registered_at ON cases (registered_at)")
    op.execute("CREATE INDEX ix_cases_open_due ON cases (due_at) "
               "WHERE status IN ('dispatched', 'accepted', 'returned', 'handled', 'registered')")
    op.execute("CREATE INDEX ix_cases_manual ON cases (id) WHERE manual_reason IS NOT NULL")
    op.execute("""
CREATE TABLE case_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    case_id bigint NOT NULL REFERENCES cases(id),
    at timestamptz NOT NULL,
    actor text NOT NULL,
    role text NOT NULL,
    action text NOT NULL,
    from_status text,
    to_status text,
    note text,
    data jsonb NOT NULL DEFAULT '{}'::jsonb
)""")
    op.execute("CREATE INDEX ix_case_events_case ON case_events (case_id, id)")
    # history is never lost: the log takes INSERTs only, whoever writes to it
    op.execute("""
CREATE FUNCTION case_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'case_events is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$""")
    op.execute("CREATE TRIGGER case_events_no_change BEFORE UPDATE OR DELETE ON case_events "
               "FOR EACH ROW EXECUTE FUNCTION case_events_append_only()")
    op.execute("CREATE TRIGGER case_events_no_truncate BEFORE TRUNCATE ON case_events "
               "FOR EACH STATEMENT EXECUTE FUNCTION case_events_append_only()")
    op.execute("""
CREATE TABLE case_calendar (
    day date PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('holiday', 'workday')),  -- workday: a make-up working weekend day
    name text
)""")
    op.execute("""
CREATE TABLE case_working_hours (
    start_time time NOT NULL,
    end_time time NOT NULL,
    PRIMARY KEY (start_time),
    CHECK (end_time > start_time)
)""")
    op.execute("INSERT INTO case_working_hours VALUES ('09:00', '12:00'), ('13:00', '18:00')")
    op.execute("""
CREATE TABLE case_attachments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    case_id bigint NOT NULL REFERENCES cases(id),
    event_id bigint REFERENCES case_events(id),
    content_hash text NOT NULL,
    media_type text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    path text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)""")
    op.execute("CREATE INDEX ix_case_attachments_case ON case_attachments (case_id)")


def downgrade() -> None:
    for table in ("case_attachments", "case_working_hours", "case_calendar", "case_events", "cases",
                  "case_department_kinds", "case_classes"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP FUNCTION IF EXISTS case_events_append_only()")
