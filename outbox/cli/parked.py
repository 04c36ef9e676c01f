"""`outbox parked list|requeue|drop`: events the broker rejected for good."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from outbox.cli._options import CONTEXT, db_options, make_console, open_store

if TYPE_CHECKING:
    from outbox.relay.records import ParkedEvent


# -- parked events -------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def parked() -> None:
    """Inspect, requeue or drop parked events.

    An event is parked when the broker rejected it for good --max-attempts times (too large,
    invalid topic, not authorized ...). By default, later events of its key wait behind it
    until it is requeued (after fixing the cause) or dropped.
    """


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _parked_json(event: ParkedEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "seq": event.seq,
        "type": event.type,
        "aggregate_type": event.aggregatetype,
        "aggregate_id": event.aggregateid,
        "topic": event.topic,
        "key": event.key,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "created_at": event.created_at.isoformat(),
        "parked_at": event.parked_at.isoformat(),
    }


@parked.command("list")
@db_options
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Show at most this many parked events (oldest first).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def parked_list(db_url: str, table: str, schema: str | None, limit: int, as_json: bool) -> None:
    """List parked events, oldest first, with the error that parked them."""
    with open_store(db_url, table, schema) as store:
        events = store.list_parked(limit)
    if as_json:
        click.echo(json.dumps([_parked_json(e) for e in events]))
        return
    console = make_console()
    if not events:
        console.print("no parked events")
        return
    from rich.table import Table

    grid = Table(title=f"{len(events)} parked event(s)", title_justify="left")
    # The id is what `requeue` and `drop` take: never wrapped, so it can be copied.
    grid.add_column("id", no_wrap=True, min_width=36)
    for name in ("type", "aggregate", "topic", "attempts", "parked at", "last error"):
        grid.add_column(name, overflow="fold")
    for e in events:
        grid.add_row(
            str(e.id),
            e.type,
            f"{e.aggregatetype}/{e.aggregateid}",
            e.topic or "-",
            str(e.attempts),
            _iso(e.parked_at),
            e.last_error or "",
        )
    console.print(grid)


def _selection(event_ids: Sequence[uuid.UUID], all_: bool) -> list[uuid.UUID] | None:
    if all_ and event_ids:
        raise click.UsageError("give event ids or --all, not both")
    if not all_ and not event_ids:
        raise click.UsageError("give the ids of parked events, or --all")
    return None if all_ else list(dict.fromkeys(event_ids))


def _report(verb: str, done: int, ids: list[uuid.UUID] | None) -> None:
    click.echo(f"{verb} {done} parked event{'' if done == 1 else 's'}")
    if ids is not None and done < len(ids):
        missing = len(ids) - done
        click.echo(
            f"{missing} of the given ids {'is' if missing == 1 else 'are'} not parked", err=True
        )


_event_ids = click.argument("event_ids", nargs=-1, type=click.UUID, metavar="EVENT_ID...")
_all = click.option("--all", "all_", is_flag=True, help="Every parked event.")


@parked.command("requeue")
@db_options
@_all
@_event_ids
def parked_requeue(
    db_url: str, table: str, schema: str | None, all_: bool, event_ids: tuple[uuid.UUID, ...]
) -> None:
    """Put parked events back in line, in their original place, with their attempts reset.

    Give the ids shown by `outbox parked list`, or --all.
    """
    ids = _selection(event_ids, all_)
    with open_store(db_url, table, schema) as store:
        done = store.requeue(ids)
    _report("requeued", done, ids)


@parked.command("drop")
@db_options
@_all
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_event_ids
def parked_drop(
    db_url: str,
    table: str,
    schema: str | None,
    all_: bool,
    yes: bool,
    event_ids: tuple[uuid.UUID, ...],
) -> None:
    """Delete parked events for good: they will never be published.

    Give the ids shown by `outbox parked list`, or --all. Asks for confirmation unless --yes.
    """
    ids = _selection(event_ids, all_)
    with open_store(db_url, table, schema) as store:
        if not yes:
            what = "every parked event" if ids is None else f"{len(ids)} parked event(s)"
            click.confirm(
                f"Delete {what} from {store.table.fullname}? They will never be published",
                abort=True,
                err=True,
            )
        done = store.drop(ids)
    _report("dropped", done, ids)
