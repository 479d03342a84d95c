"""Alembic environment: always run against a connection handed in by :mod:`cim.bootstrap`."""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
