"""The project's dev environment: the same env as the package's, with a URL from the CLI."""

from outbox.migrate import run_env

run_env()
