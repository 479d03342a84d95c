"""Water-logging response (防汛, issue 14 item 2): the scenario's own tables.

* ``flood_compounds``: residential compounds (小区), polygons.
* ``flood_roads`` (as loaded) and the routable network made from them: ``flood_road_edges``
  (noded segments with ``source``/``target`` vertex ids and a length ``cost``, the shape pgRouting
  reads) and ``flood_road_vertices``.
* ``flood_points``: ponding-prone points (易积水点) and monitoring points with their response plans;
  a monitoring point names the IoT device that watches it.
* ``flood_resources``: pump trucks and teams; each is an IoT device whose GPS fixes (quantities
  ``lon``/``lat``) arrive through the ordinary readings path, so its position is ``iot_latest``'s.
* ``flood_responses``: one per water-level alarm (``alert_id``, unique: responding twice gives the
  same response) or declared warning: the ponding area, what lies in it, the trucks, the cases.

pgRouting is created here when the server has it (Debian: ``postgresql-15-pgrouting``); without it
the scenario answers with straight-line distances and says so. A trigger on ``iot_alerts`` notifies
channel ``cim_flood_alarm`` when an alert is (or becomes) an alarm, so ``cim scenarios flood watch``
responds at once; the SQL lives here because ``cim`` never imports the scenario.

Revision ID: 0006_flood
Revises: 0006_jurisdiction
"""
from alembic import op

revision = "0006_flood"
down_revision = "0006_jurisdiction"
branch_labels = None
depends_on = None


def upgrade() -> None:
    srid = op.get_bind().exec_driver_sql("SELECT value #>> '{}' FROM cim_settings WHERE key = 'srid'").scalar()
    if srid is None:  # a fresh base: 0001 ran in this same upgrade, with the SRID in the config
        from alembic import context

        srid = context.config.attributes["srid"]
    srid = int(srid)
    available = op.get_bind().exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgrouting')").scalar()
    if available:
        # a role that may not create it leaves the base without routing, not without the scenario
        op.execute("""DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS pgrouting;
            EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'pgrouting not created: %', SQLERRM; END $$""")
    op.execute(f"""
CREATE TABLE flood_compounds (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id text NOT NULL UNIQUE,
    name text NOT NULL,
    address text,
    households integer CHECK (households >= 0),
    street_code text,
    community_code text,
    attributes jsonb NOT NULL DEFAULT '{{}}',
    geom geometry(MultiPolygon, {srid}) NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
)""")
    op.execute("CREATE INDEX ix_flood_compounds_geom ON flood_compounds USING gist (geom)")
    op.execute(f"""
CREATE TABLE flood_roads (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id text NOT NULL UNIQUE,
    name text,
    road_code text,
    attributes jsonb NOT NULL DEFAULT '{{}}',
    geom geometry(LineString, {srid}) NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
)""")
    op.execute(f"""
CREATE TABLE flood_road_vertices (
    id bigint PRIMARY KEY,
    geom geometry(Point, {srid}) NOT NULL
)""")
    op.execute("CREATE INDEX ix_flood_road_vertices_geom ON flood_road_vertices USING gist (geom)")
    op.execute(f"""
CREATE TABLE flood_road_edges (
    id bigint PRIMARY KEY,
    road_id bigint NOT NULL REFERENCES flood_roads (id) ON DELETE CASCADE,
    source bigint NOT NULL REFERENCES flood_road_vertices (id),
    target bigint NOT NULL REFERENCES flood_road_vertices (id),
    cost double precision NOT NULL CHECK (cost >= 0),
    reverse_cost double precision NOT NULL CHECK (reverse_cost >= 0),
    geom geometry(LineString, {srid}) NOT NULL
)""")
    op.execute("CREATE INDEX ix_flood_road_edges_geom ON flood_road_edges USING gist (geom)")
    op.execute(f"""
CREATE TABLE flood_points (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code text NOT NULL UNIQUE,
    name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('ponding_prone', 'monitoring')),
    location_type text,
    device_id text,
    alarm_m double precision,
    radius_m double precision NOT NULL DEFAULT 300 CHECK (radius_m > 0),
    plan text,
    street_code text,
    grid_code text,
    geom geometry(Point, {srid}) NOT NULL,
    CHECK (kind <> 'monitoring' OR device_id IS NOT NULL)
)""")
    op.execute("CREATE UNIQUE INDEX uq_flood_points_device ON flood_points (device_id) WHERE device_id IS NOT NULL")
    op.execute("""
CREATE TABLE flood_resources (
    code text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('pump_truck', 'team')),
    name text NOT NULL,
    team text,
    capacity_m3h double precision CHECK (capacity_m3h >= 0),
    device_id text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'dispatched', 'maintenance')),
    updated_at timestamptz NOT NULL DEFAULT now()
)""")
    op.execute(f"""
CREATE TABLE flood_responses (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger text NOT NULL CHECK (trigger IN ('alarm', 'warning')),
    alert_id bigint UNIQUE REFERENCES iot_alerts (id),
    point_code text,
    title text NOT NULL,
    level text,
    area geometry(MultiPolygon, {srid}) NOT NULL,
    routing text NOT NULL CHECK (routing IN ('road_network', 'straight_line')),
    summary jsonb NOT NULL,
    case_ids bigint[] NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz,
    CHECK ((trigger = 'alarm') = (alert_id IS NOT NULL))
)""")
    op.execute("CREATE INDEX ix_flood_responses_area ON flood_responses USING gist (area)")
    op.execute("""
CREATE FUNCTION flood_alarm_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cim_flood_alarm', NEW.id::text);
    RETURN NEW;
END $$""")
    op.execute("""CREATE TRIGGER tr_iot_alerts_flood_alarm AFTER INSERT OR UPDATE OF level ON iot_alerts
        FOR EACH ROW WHEN (NEW.level = 'alarm' AND NEW.cleared_at IS NULL) EXECUTE FUNCTION flood_alarm_notify()""")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tr_iot_alerts_flood_alarm ON iot_alerts")
    op.execute("DROP FUNCTION IF EXISTS flood_alarm_notify()")
    for table in ("flood_responses", "flood_resources", "flood_points", "flood_road_edges", "flood_road_vertices",
                  "flood_roads", "flood_compounds"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
