"""`outbox migrate`, `outbox purge` and `outbox healthcheck`: keeping the tables and the sidecar."""

from __future__ import annotations

import sys

import click

from outbox.cli._options import db_options, duration_option, open_store


@click.command()
@db_options
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (offline mode).")
def migrate(db_url: str, table: str, schema: str | None, sql: bool) -> None:
    """Create or upgrade the outbox tables with the package's Alembic revisions.

    Safe to run again: it applies only what is missing. Its version table is
    alembic_version_<table>, so it never touches the application's own Alembic history.
    Applications that run Alembic themselves can instead add outbox's revisions to their
    version_locations and run `alembic upgrade heads`.
    """
    from outbox.schema.migrate import upgrade

    done = upgrade(db_url, table=table, schema=schema, sql=sql)
    if not sql:  # with --sql, stdout is the SQL script alone
        click.echo(done)


@click.command()
@db_options
@click.option(
    "--older-than",
    required=True,
    callback=duration_option,
    metavar="DURATION",
    help="Delete published events older than this: seconds, or 90s, 15m, 2h, 7d, 1w.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows deleted per transaction (short transactions hold no long locks).",
)
def purge(db_url: str, table: str, schema: str | None, older_than: float, batch_size: int) -> None:
    """Delete published events kept by the relay's --retention, in batches.

    The relay purges retained events itself about once a minute; this command is for a
    one-off cleanup (for example after lowering --retention). Pending and parked events are
    never touched.
    """
    with open_store(db_url, table, schema) as store:
        purged = store.purge(older_than, batch_size)
    click.echo(f"purged {purged} published event{'' if purged == 1 else 's'}")


@click.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar="OUTBOX_HEALTH_PORT",
    show_envvar=True,
    default=8080,
    show_default=True,
    help="The relay's --health-port.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The relay's address.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after this long.",
)
def healthcheck(port: int, host: str, timeout: float) -> None:
    """Exit 0 if the relay's /healthz answers 200, else 1. For Docker's HEALTHCHECK (slim
    images have no curl)."""
    from outbox.ops.health import probe

    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    sys.exit(probe(f"http://{host}:{port}/healthz", timeout))
