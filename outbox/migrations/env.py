"""The package's Alembic environment, used by `outbox migrate` (`outbox.schema.migrate.upgrade`)."""

from outbox.schema.migrate import run_env

run_env()
