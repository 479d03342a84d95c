"""The duplicate search of a new case probes an index of the open cases by class and place.

``cases.batch._DUPLICATES`` looks, for each new case, for the open cases of its class within the class's radius and
time window. It probed the spatial index of every case (``ix_cases_geom``): each probe read every case ever
reported within the radius — any class, any status — to keep the few open ones of the class. That grows with the
cases at a place: on the sample city's doors, ~2 ms of the database's CPU per group of 4 reports at 40,000
cases, a third of the group's (docs/benchmarks.md, issue 11). In a city most cases are closed and the classes
are many, so this index holds only the open cases, and leads with the class (``btree_gist`` makes text a GiST
key): a probe reads the open cases of the class within the radius, and nothing else. The statement names the
same status list as the index's predicate, which is how the planner knows it may use it.

``ix_cases_geom`` stays (bbox reads of the cases collection, tiles). On Citus the index reaches the shards and
``CREATE EXTENSION`` the workers.

Revision ID: 0014_case_duplicates
Revises: 0013_nearby_2d
"""
from alembic import op

revision = "0014_case_duplicates"
down_revision = "0013_nearby_2d"
branch_labels = None
depends_on = None

#: the statuses of a case that is no longer open (cases.batch._DUPLICATES says the same)
CLOSED = ("closed", "not_registered", "merged")


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    closed = ", ".join(f"'{s}'" for s in CLOSED)
    op.execute("CREATE INDEX IF NOT EXISTS ix_cases_open_class_geom ON cases USING gist (class_code, geom) "
               f"WHERE status NOT IN ({closed})")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_cases_open_class_geom")  # btree_gist stays: others may use it
