"""Curtain-wall risk (scenario ``scenarios.curtain_wall``): the per-building dossier and the pushes.

* ``curtain_wall_records``: "一楼一档", one row per building with a glass curtain wall, keyed by the
  building's source id (its feature id and grid codes are taken from ``buildings`` at load): wall
  area, support type (frame / point / cable / unitised), glass type (tempered / laminated / ordinary),
  sealant type and the year it was applied, height, completion year, design life, owner, the last
  inspection and its findings, the last structural-sealant sampling, breakages, storms and fires that
  call for an appraisal, wind exposure and what lies below the wall. Every attribute but the building
  may be missing: the scoring model lowers its confidence instead of guessing.
* ``curtain_wall_pushes``: each suspected risk pushed to the case loop as an inspection case, with the
  score, model version and reasons at the time of the push, and the inspection's outcome (confirmed
  or not) once recorded — the model's precision is read from here. One push per building waits for
  its outcome at a time (a partial unique index).

Revision ID: 0006_curtain_wall
Revises: 0006_flood
"""
from alembic import op

revision = "0006_curtain_wall"
down_revision = "0006_flood"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE TABLE curtain_wall_records (
    building_source_id text PRIMARY KEY,
    building_feature_id uuid,
    wall_area_m2 double precision CHECK (wall_area_m2 > 0),
    support_type text CHECK (support_type IN ('frame', 'point', 'cable', 'unitised')),
    glass_type text CHECK (glass_type IN ('tempered', 'laminated', 'ordinary')),
    sealant_type text CHECK (sealant_type IN ('structural_silicone', 'weatherproof')),
    sealant_year integer CHECK (sealant_year BETWEEN 1900 AND 2200),
    height_m double precision CHECK (height_m > 0 AND height_m <= 700),
    completion_year integer CHECK (completion_year BETWEEN 1900 AND 2200),
    design_life_years integer CHECK (design_life_years > 0),
    owner text,
    last_inspection_date date,
    last_inspection_findings text CHECK (last_inspection_findings IN ('none', 'minor', 'major')),
    last_sealant_sampling_date date,
    breakage_count integer CHECK (breakage_count >= 0),
    last_breakage_date date,
    last_storm_date date,
    last_fire_date date,
    last_appraisal_date date,
    wind_exposure text CHECK (wind_exposure IN ('sheltered', 'normal', 'exposed')),
    use_below text CHECK (use_below IN ('street', 'entrance', 'plaza', 'podium', 'enclosed')),
    attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
    source_file text,
    loaded_at timestamptz NOT NULL DEFAULT now()
)""")
    op.execute("""
CREATE TABLE curtain_wall_pushes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    building_source_id text NOT NULL,
    case_id bigint REFERENCES cases (id),
    pushed_at timestamptz NOT NULL,
    model_version text NOT NULL,
    score double precision NOT NULL,
    confidence double precision NOT NULL,
    reasons jsonb NOT NULL,
    outcome text CHECK (outcome IN ('confirmed', 'not_confirmed')),
    outcome_at timestamptz,
    outcome_by text,
    outcome_note text,
    CONSTRAINT ck_curtain_wall_pushes_outcome CHECK ((outcome IS NULL) = (outcome_at IS NULL))
)""")
    op.execute("CREATE UNIQUE INDEX uq_curtain_wall_pushes_pending ON curtain_wall_pushes (building_source_id) "
               "WHERE outcome IS NULL")
    op.execute("CREATE UNIQUE INDEX uq_curtain_wall_pushes_case ON curtain_wall_pushes (case_id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS curtain_wall_pushes")
    op.execute("DROP TABLE IF EXISTS curtain_wall_records")
