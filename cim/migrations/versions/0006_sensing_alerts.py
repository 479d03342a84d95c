"""Alerts published as a read-only layer (``alert_features``, collection ``alerts``): a view over
``iot_alerts`` at its device's point, with the columns every layer has. ``valid_from`` is when the alert
opened and ``valid_to`` when it cleared, so the collection's current features (the default of every
layer) are the active alerts, and ``datetime=T`` gives the alerts active at ``T``. ``fid`` and
``source_id`` are the alert's id (``/alerts/{id}``).

Tiles and ETags key on ``layers.version``: as for cases (0005_case_features), a deferred trigger bumps
the layer's version once per transaction that changes ``iot_alerts``.

Revision ID: 0006_sensing_alerts
Revises: 0006_illegal_rental
"""
from alembic import op

revision = "0006_sensing_alerts"
down_revision = "0006_illegal_rental"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE VIEW alert_features WITH (security_invoker = true) AS  -- the caller's jurisdiction (row-level security) applies
SELECT a.id AS fid,
       CAST(lpad(to_hex(a.id), 32, '0') AS uuid) AS feature_id,
       a.id::text AS source_id,
       a.opened_at AS valid_from,
       a.cleared_at AS valid_to,
       CAST(NULL AS integer) AS ingest_run_id,
       CAST(NULL AS text) AS content_hash,
       jsonb_build_object('alert', '/alerts/' || a.id) AS attributes,
       a.device_id, d.device_type, d.name AS device_name, a.rule_id, r.name AS rule_name, r.kind AS rule_kind,
       a.quantity, a.level,
       CASE WHEN a.cleared_at IS NOT NULL THEN 'cleared' WHEN a.acknowledged_at IS NOT NULL THEN 'acknowledged'
            ELSE 'open' END AS state,
       a.opened_at, a.escalated_at, a.acknowledged_at, a.cleared_at, a.last_value, a.last_time, a.case_id,
       d.district_code, d.street_code, d.community_code, coalesce(a.grid_code, d.grid_code) AS grid_code, d.geom
FROM iot_alerts a
JOIN iot_rules r ON r.id = a.rule_id
JOIN iot_devices d ON d.source_id = a.device_id AND d.valid_to IS NULL
""")
    op.execute("""
CREATE FUNCTION alert_features_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('cim.alert_features_bumped', true) = '1' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('cim.alert_features_bumped', '1', true);
    UPDATE layers SET version = version + 1, updated_at = now() WHERE table_name = 'alert_features';
    RETURN NULL;
END $$
""")
    op.execute("CREATE CONSTRAINT TRIGGER iot_alerts_bump_layer_version AFTER INSERT OR UPDATE OR DELETE ON iot_alerts "
               "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION alert_features_changed()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS iot_alerts_bump_layer_version ON iot_alerts")
    op.execute("DROP FUNCTION IF EXISTS alert_features_changed()")
    op.execute("DROP VIEW IF EXISTS alert_features")
