"""`outbox status`: the backlog, the age of the oldest pending event, parked events."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from outbox.cli._options import db_options, make_console, open_store

if TYPE_CHECKING:
    from rich.console import RenderableType

    from outbox.relay.records import Status
    from outbox.relay.store import OutboxStore


# -- status --------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def _status_table(status: Status, where: str) -> RenderableType:
    from rich.table import Table

    table = Table(title=f"table {where}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("pending events", str(status.pending))
    table.add_row("oldest pending event", _age(status.oldest_pending_age_seconds))
    failed = str(status.failed) if not status.failed else f"[red]{status.failed}[/red]"
    table.add_row("parked (failed) events", failed)
    table.caption = time.strftime("as of %H:%M:%S")
    return table


@click.command()
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C (with --json: one JSON object per line).",
)
def status(db_url: str, table: str, schema: str | None, as_json: bool, watch: float | None) -> None:
    """Show the backlog: pending events, the age of the oldest one, and parked events.

    The JSON form has the keys pending, oldest_pending_age_seconds (null when nothing is
    pending) and failed (parked events, see `outbox parked`).
    """
    try:
        with open_store(db_url, table, schema) as store:
            _show_status(store, as_json, watch)
    except KeyboardInterrupt:
        if watch is None:
            raise
        # Ctrl-C is how a --watch ends: not an error.


def _show_status(store: OutboxStore, as_json: bool, watch: float | None) -> None:
    where = store.table.fullname
    if as_json:
        while True:
            click.echo(json.dumps(store.status().as_dict()))
            if watch is None:
                return
            time.sleep(watch)
    console = make_console()
    if watch is None:
        console.print(_status_table(store.status(), where))
        return
    from rich.live import Live

    with Live(_status_table(store.status(), where), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(watch)
            live.update(_status_table(store.status(), where), refresh=True)
