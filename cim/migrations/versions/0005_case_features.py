"""Cases published as a read-only layer (``case_features``, collection ``cases``): a view over
``cases`` with the columns every layer has (``fid``, ``feature_id``, ``source_id`` = the case id,
``valid_from`` = reported, never ended), so the OGC API and the vector tiles serve it like any
other layer. The reporter's contact and the person are left out: the layer is for maps.

Tiles and ETags key on ``layers.version``: a trigger bumps the layer's version once in every
transaction that changes ``cases`` (at its commit), so a map never shows a stale case.

Revision ID: 0005_case_features
Revises: 0004_cases
"""
from alembic import op

revision = "0005_case_features"
down_revision = "0004_cases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE VIEW case_features AS
SELECT c.id::bigint AS fid,
       CAST(lpad(to_hex(c.id), 32, '0') AS uuid) AS feature_id,  -- case 42 → 00000000-…-00000000002a
       c.id::text AS source_id,
       c.reported_at AS valid_from,
       CAST(NULL AS timestamptz) AS valid_to,
       CAST(NULL AS integer) AS ingest_run_id,
       CAST(NULL AS text) AS content_hash,
       jsonb_build_object('case', '/cases/' || c.id) AS attributes,
       c.channel, c.class_code, cc.name AS class_name, c.urgency, c.status, c.overdue, c.escalation_level,
       c.department_name, c.reported_at, c.due_at, c.closed_at, c.address_text, c.description,
       c.district_code, c.street_code, c.community_code, c.grid_code, c.geom
FROM cases c LEFT JOIN case_classes cc ON cc.code = c.class_code
WHERE c.geom IS NOT NULL
""")
    # Bumped once per transaction, at its commit (a deferred constraint trigger; a transaction-local
    # setting remembers it was done): an intake changes its case in several statements, and taking
    # the layers row's lock at the first of them would serialise concurrent intakes for their whole
    # length instead of for the instant of their commits.
    op.execute("""
CREATE FUNCTION case_features_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('cim.case_features_bumped', true) = '1' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('cim.case_features_bumped', '1', true);
    UPDATE layers SET version = version + 1, updated_at = now() WHERE table_name = 'case_features';
    RETURN NULL;
END $$
""")
    op.execute("CREATE CONSTRAINT TRIGGER cases_bump_layer_version AFTER INSERT OR UPDATE OR DELETE ON cases "
               "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION case_features_changed()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS cases_bump_layer_version ON cases")
    op.execute("DROP FUNCTION IF EXISTS case_features_changed()")
    op.execute("DROP VIEW IF EXISTS case_features")
