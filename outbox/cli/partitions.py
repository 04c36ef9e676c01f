"""`outbox partitions enable|disable`: switch a table between single-active mode (one relay
publishes, the default) and partitioned mode (the relays share 64 partitions), safely while the
application writes. The procedure is in docs/PARTITIONING.md."""

from __future__ import annotations

import time

import click

from outbox.cli._options import db_options, open_store
from outbox.errors import ConfigurationError


def _check_dialect(db_url: str) -> None:
    from outbox.config import parse_db_url

    if parse_db_url(db_url).get_backend_name() == "sqlite":
        raise ConfigurationError(
            "partitioned mode is not supported on SQLite (one writer per database file)"
        )


@click.group()
def partitions() -> None:
    """Switch the table between single-active and partitioned relays (docs/PARTITIONING.md)."""


@partitions.command()
@db_options
def enable(db_url: str, table: str, schema: str | None) -> None:
    """Let the table's `outbox relay --partitioned` relays share it.

    Run it once every writer runs a version that stores the partition (revision 0003). It
    fills the partition of rows written without one, takes the single-active relay's lease
    (raising its epoch, so that relay can mark nothing more), waits until that relay's lease
    would have run out (it stops sending before then), fills the rows once more and creates
    the 64 partition leases. Single-active relays then stand by; partitioned relays claim
    their shares within a few lease periods. Events written meanwhile wait, none is lost.
    """
    _check_dialect(db_url)
    with open_store(db_url, table, schema) as store:
        leases = store.partitions
        mode = leases.mode()
        if mode == "partitioned":
            click.echo(f"table {store.table.fullname} is already in partitioned mode")
            return
        holder, left = leases.begin_enable()
        if left > 0:
            click.echo(
                f"took the lease from relay {holder}: waiting {left:.1f}s for its last sends"
            )
            time.sleep(left + 0.2)
        leases.finish_enable()
        click.echo(f"table {store.table.fullname} is in partitioned mode")


@partitions.command()
@db_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up (exit 1, the table stays draining) if partitions are still held by then.",
)
def disable(db_url: str, table: str, schema: str | None, timeout: float) -> None:
    """Hand the table back to one single-active relay.

    The partitioned relays release their partitions after the batches in flight (within a
    lease period) and wait; once no partition is held, by the database's clock, the relay
    lease is freed and a single-active relay takes it. Run `enable` to go back.
    """
    _check_dialect(db_url)
    with open_store(db_url, table, schema) as store:
        leases = store.partitions
        mode = leases.begin_disable()
        if mode == "single":
            click.echo(f"table {store.table.fullname} is already in single-active mode")
            return
        deadline = time.monotonic() + timeout
        while held := leases.finish_disable():
            if time.monotonic() >= deadline:
                raise ConfigurationError(
                    f"{len(held)} partitions are still held after {timeout:g}s: the table "
                    "stays draining; run `outbox partitions disable` again"
                )
            time.sleep(0.2)
        click.echo(f"table {store.table.fullname} is in single-active mode")
