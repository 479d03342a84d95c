"""The cases' layer-version trigger skips the rows of a writer that bumps the version itself.

``cases_bump_layer_version`` (migration 0005_case_features) is a deferred per-row trigger: every inserted or
changed case queued one call of ``case_features_changed()`` for the commit, of which the first bumped
``layers.version`` and the rest found the transaction's flag ``cim.case_features_bumped`` set and did nothing —
20,000 queued calls for an import of 20,000 cases. The trigger now has a ``WHEN`` condition on that flag, which
PostgreSQL evaluates as the row is written (for a constraint trigger it is not deferred): once the transaction
has bumped the version, or a set-based writer has said it will before its commit (:func:`cases.model.
defer_cases_bump`, then :func:`cases.model.bump_cases_layer`), rows are no longer queued. Every other writer of
``cases`` is unchanged: its first row is queued and bumps the version at the commit, as before.

On Citus the trigger is gone (:func:`cim.distribution.distribute` drops it; the writers bump the version
themselves): nothing to change there.

Revision ID: 0010_case_import
Revises: 0009_cases_readings_district
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_case_import"
down_revision = "0009_cases_readings_district"
branch_labels = None
depends_on = None

_CREATE = ("CREATE CONSTRAINT TRIGGER cases_bump_layer_version AFTER INSERT OR UPDATE OR DELETE ON cases "
           "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW {when}EXECUTE FUNCTION case_features_changed()")
_WHEN = "WHEN (current_setting('cim.case_features_bumped', true) IS DISTINCT FROM '1') "


def _has_trigger(bind: sa.Connection) -> bool:
    return bool(bind.execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'cases'::regclass "
        "AND tgname = 'cases_bump_layer_version')")).scalar())


def _replace(when: str) -> None:
    bind = op.get_bind()
    if not _has_trigger(bind):  # a distributed base (Citus): the writers bump the version, no trigger
        return
    # a deferred event of this trigger may be pending in the migration's transaction: fire it first
    op.execute("SET CONSTRAINTS ALL IMMEDIATE")
    op.execute("DROP TRIGGER cases_bump_layer_version ON cases")
    op.execute(_CREATE.format(when=when))


def upgrade() -> None:
    _replace(_WHEN)


def downgrade() -> None:
    _replace("")
