"""The package's Alembic environment, used by `outbox migrate` (`outbox.migrate.upgrade`)."""

from outbox.migrate import run_env

run_env()
