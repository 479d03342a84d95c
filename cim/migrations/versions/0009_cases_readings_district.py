"""Cases, their log and the readings carry the jurisdiction (``district_code``), so that on Citus they are
distributed and co-located with the feature layers on it (:mod:`cim.distribution`; docs/citus.md, "Cases and
readings").

* ``cases.district_code`` becomes NOT NULL, ``''`` for a case the geocoder put in no district (as for features:
  a distribution column cannot be NULL).
* ``case_events.district_code`` is new: its case's district, written with every row of the log (the writers of
  ``cases`` supply it), so a case and its log sit in the same shard.
* ``iot_readings.district_code`` is new: its device's district (the writers supply it), in the primary key
  ``(device_id, quantity, time, district_code)`` — Citus enforces uniqueness only with the distribution column.
  The table stays RANGE-partitioned by month (retention drops a month), not by district.
* The unique ticket index ``ix_cases_channel_external_id`` includes ``district_code`` (the intake's
  ``ON CONFLICT`` names the same columns); the intake still looks a ticket up city-wide first.
* The self-reference ``cases.merged_into → cases(id)`` is dropped: Citus refuses a foreign key between shards
  of different districts, a merge may join cases of two districts, and no case is ever deleted — the lifecycle
  merges only into a case it has read and locked.

Existing rows are filled: a case's log from its case, a reading from its device's current (else last) version.
On one node nothing else changes: ``cases`` and ``case_events`` keep their primary key ``id`` (and the foreign
keys of the attachments and scenario tables); the keys Citus needs instead are made when the tables are
distributed (:func:`cim.distribution.distribute`).

Revision ID: 0009_cases_readings_district
Revises: 0008_partition_by_district
"""
import sqlalchemy as sa
from alembic import op

from cim.schema import NO_DISTRICT

revision = "0009_cases_readings_district"
down_revision = "0008_partition_by_district"
branch_labels = None
depends_on = None

_NONE = f"'{NO_DISTRICT}'"


def _has_column(bind: sa.Connection, table: str, column: str) -> bool:
    return bool(bind.execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attname = :c "
        "AND NOT attisdropped)"), {"t": table, "c": column}).scalar())


def upgrade() -> None:
    bind = op.get_bind()
    # --- cases ---
    # the layer-version trigger (0005_case_features) is deferred: fired now, so the ALTER below finds none pending
    op.execute("SET CONSTRAINTS ALL IMMEDIATE")
    op.execute(f"UPDATE cases SET district_code = {_NONE} WHERE district_code IS NULL")
    op.execute(f"ALTER TABLE cases ALTER COLUMN district_code SET DEFAULT {_NONE}, "
               "ALTER COLUMN district_code SET NOT NULL")
    for (name,) in bind.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'cases'::regclass AND confrelid = 'cases'::regclass "
            "AND contype = 'f'")).all():
        op.execute(f'ALTER TABLE cases DROP CONSTRAINT "{name}"')  # merged_into → cases(id)
    op.execute("DROP INDEX IF EXISTS ix_cases_channel_external_id")
    op.execute("CREATE UNIQUE INDEX ix_cases_channel_external_id ON cases (channel, external_id, district_code) "
               "WHERE external_id IS NOT NULL")
    # --- the log: its case's district ---
    if not _has_column(bind, "case_events", "district_code"):
        op.execute(f"ALTER TABLE case_events ADD COLUMN district_code text NOT NULL DEFAULT {_NONE}")
        # the append-only triggers refuse any UPDATE: this one only writes the new column
        op.execute("ALTER TABLE case_events DISABLE TRIGGER USER")
        op.execute("UPDATE case_events e SET district_code = c.district_code FROM cases c "
                   f"WHERE c.id = e.case_id AND c.district_code <> {_NONE}")
        op.execute("ALTER TABLE case_events ENABLE TRIGGER USER")
    # --- readings: their device's district ---
    if not _has_column(bind, "iot_readings", "district_code"):
        op.execute(f"ALTER TABLE iot_readings ADD COLUMN district_code text NOT NULL DEFAULT {_NONE}")
        op.execute(f"""UPDATE iot_readings r SET district_code = d.district_code
            FROM (SELECT DISTINCT ON (source_id) source_id, district_code FROM iot_devices
                  ORDER BY source_id, valid_to DESC NULLS FIRST, fid DESC) d
            WHERE d.source_id = r.device_id AND d.district_code IS NOT NULL AND d.district_code <> {_NONE}""")
        op.execute("ALTER TABLE iot_readings DROP CONSTRAINT pk_iot_readings")
        op.execute("ALTER TABLE iot_readings ADD CONSTRAINT pk_iot_readings "
                   "PRIMARY KEY (device_id, quantity, time, district_code)")


def downgrade() -> None:
    op.execute("ALTER TABLE iot_readings DROP CONSTRAINT pk_iot_readings")
    op.execute("ALTER TABLE iot_readings DROP COLUMN district_code")
    op.execute("ALTER TABLE iot_readings ADD CONSTRAINT pk_iot_readings PRIMARY KEY (device_id, quantity, time)")
    op.execute("ALTER TABLE case_events DROP COLUMN district_code")
    op.execute("DROP INDEX IF EXISTS ix_cases_channel_external_id")
    op.execute("CREATE UNIQUE INDEX ix_cases_channel_external_id ON cases (channel, external_id) "
               "WHERE external_id IS NOT NULL")
    op.execute("ALTER TABLE cases ADD CONSTRAINT cases_merged_into_fkey FOREIGN KEY (merged_into) REFERENCES cases(id)")
    op.execute("ALTER TABLE cases ALTER COLUMN district_code DROP NOT NULL, ALTER COLUMN district_code DROP DEFAULT")
    op.execute("SET CONSTRAINTS ALL IMMEDIATE")
    op.execute(f"UPDATE cases SET district_code = NULL WHERE district_code = {_NONE}")
