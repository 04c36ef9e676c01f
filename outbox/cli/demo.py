"""`outbox demo`: the whole flow on this machine, with no servers needed."""

from __future__ import annotations

import sys

import click

from outbox.cli._options import make_console


@click.command()
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Orders to place; each records one OrderPlaced event, one in ten is rolled back.",
)
@click.option(
    "--bootstrap-servers",
    envvar="OUTBOX_DEMO_BOOTSTRAP_SERVERS",
    show_envvar=True,
    metavar="HOST:PORT",
    help="Use this Kafka instead of starting the embedded (Tansu) broker.",
)
@click.option(
    "--db-url",
    envvar="OUTBOX_DEMO_DB_URL",
    show_envvar=True,
    metavar="URL",
    help="Use this database instead of a SQLite file in a temporary directory (the demo "
    "creates the outbox tables and an example_orders table in it).",
)
@click.option(
    "--writers",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Application threads placing orders at the same time.",
)
def demo(events: int, bootstrap_servers: str | None, db_url: str | None, writers: int) -> None:
    """Run the whole flow on this machine, with no servers needed.

    An example application places orders in several threads; each committed order records an
    OrderPlaced event in the same transaction, and some orders are rolled back. A relay
    publishes the events to Kafka and a consumer reads them back. The summary checks that
    every committed event arrived (lost 0) and no rolled-back one did (phantom 0); the exit
    code is 0 only then.
    """
    from outbox.demo.runner import run_demo

    result = run_demo(
        events=events,
        bootstrap_servers=bootstrap_servers,
        db_url=db_url,
        writers=writers,
        console=make_console(),
    )
    if not result.ok:
        sys.exit(1)
