"""The `outbox` command line: relay, migrate, status, parked events, purge and the demo."""

from __future__ import annotations

import sys
from typing import Any

import click

from outbox.errors import OutboxError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sqlalchemy-outbox")
def cli() -> None:
    """Transactional outbox for SQLAlchemy: migrate the outbox table and relay it to Kafka."""


@cli.command()
@click.option("--db-url", envvar="OUTBOX_DB_URL", required=True, help="SQLAlchemy database URL.")
@click.option("--table", envvar="OUTBOX_TABLE", default="outbox", show_default=True)
@click.option("--schema", envvar="OUTBOX_SCHEMA", default=None, help="Schema of the table.")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (offline mode).")
def migrate(db_url: str, table: str, schema: str | None, sql: bool) -> None:
    """Create or upgrade the outbox tables with the package's Alembic revisions."""
    from outbox.migrate import upgrade

    upgrade(db_url, table=table, schema=schema, sql=sql)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: a user's mistake becomes one line on stderr and exit code 2."""
    try:
        return cli.main(args=argv, prog_name="outbox", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"outbox: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except OutboxError as exc:
        click.echo(f"outbox: error: {exc}", err=True)
        sys.exit(2)
