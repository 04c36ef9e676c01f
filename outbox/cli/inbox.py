"""`outbox inbox status|parked|purge`: the consuming side's stored offsets and parked events."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click
import sqlalchemy as sa

from outbox.cli._options import CONTEXT, duration_option, make_console
from outbox.errors import ConfigurationError, TableMissingError
from outbox.inbox.status import consumers, partition_status
from outbox.inbox.store import InboxStore, ParkedRow


def _options(func: Any) -> Any:
    func = click.option(
        "--consumer", envvar="OUTBOX_CONSUMER", show_envvar=True, default=None,
        help="Only this consumer name (default: every consumer in the database).",
    )(func)  # fmt: skip
    func = click.option(
        "--schema", envvar="OUTBOX_SCHEMA", show_envvar=True, default=None,
        help="Schema of the inbox tables.",
    )(func)  # fmt: skip
    func = click.option(
        "--table", envvar="OUTBOX_TABLE", show_envvar=True, default="outbox",
        show_default=True, help="The outbox table name the inbox tables are named after.",
    )(func)  # fmt: skip
    func = click.option(
        "--db-url", envvar="OUTBOX_DB_URL", show_envvar=True, required=True, metavar="URL",
        help="SQLAlchemy URL of the consuming service's database.",
    )(func)  # fmt: skip
    return func


@contextmanager
def _connect(db_url: str, table: str, schema: str | None) -> Iterator[sa.Connection]:
    try:
        engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"invalid --db-url: {exc}") from None
    try:
        with engine.begin() as conn:
            store = InboxStore("", table, schema)
            inspector = sa.inspect(conn)
            for t in (store.dedup, store.offsets, store.parked):
                if not inspector.has_table(t.name, schema=t.schema):
                    raise TableMissingError(
                        f"the inbox table {t.name} does not exist: run `outbox migrate`"
                    )
            yield conn
    finally:
        engine.dispose()


def _stores(
    conn: sa.Connection, table: str, schema: str | None, only: str | None
) -> list[InboxStore]:
    names = [only] if only else consumers(conn, table, schema)
    return [InboxStore(name, table, schema) for name in names]


@click.group(context_settings=CONTEXT)
def inbox() -> None:
    """Inspect the consuming side: stored offsets, parked and held events, retention."""


@inbox.command("status")
@_options
@click.option(
    "--bootstrap-servers",
    envvar="OUTBOX_BOOTSTRAP_SERVERS",
    show_envvar=True,
    default=None,
    help="Also show the lag per partition (needs the broker).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(db_url: str, table: str, schema: str | None, consumer: str | None,
           bootstrap_servers: str | None, as_json: bool) -> None:  # fmt: skip
    """Per consumer and partition: the stored offset, lag, parked and held counts."""
    with _connect(db_url, table, schema) as conn:
        rows = [
            r for s in _stores(conn, table, schema, consumer) for r in partition_status(conn, s)
        ]
    if bootstrap_servers:
        from outbox.kafka.consumer import end_offsets

        ends = end_offsets(bootstrap_servers, {(r["topic"], r["partition"]) for r in rows})
        for r in rows:
            end = ends.get((r["topic"], r["partition"]))
            # Never negative: some brokers report a batch's base offset as the end.
            r["lag"] = None if end is None else max(end - (r["next_offset"] or 0), 0)
    if as_json:
        click.echo(json.dumps({"partitions": rows}))
        return
    console = make_console()
    if not rows:
        console.print("no consumer has stored an offset yet")
        return
    from rich.table import Table

    grid = Table(title="inbox partitions", title_justify="left")
    columns = ["consumer", "topic", "partition", "next_offset", "generation", "parked", "held"]
    if bootstrap_servers:
        columns.append("lag")
    for name in columns:
        grid.add_column(name)
    for r in rows:
        grid.add_row(*("" if r.get(c) is None else str(r[c]) for c in columns))
    console.print(grid)


@inbox.group("parked", context_settings=CONTEXT)
def parked() -> None:
    """Events whose handler failed every attempt (and the held events of their keys)."""


def _row_json(consumer: str, row: ParkedRow) -> dict[str, Any]:
    return {
        "consumer": consumer, "event_id": row.event_id, "type": row.event_type,
        "topic": row.topic, "partition": row.partition, "offset": row.offset, "key": row.key,
        "state": row.state, "attempts": row.attempts, "error": row.error,
        "parked_at": row.parked_at.isoformat(),
    }  # fmt: skip


@parked.command("list")
@_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def parked_list(db_url: str, table: str, schema: str | None, consumer: str | None,
                as_json: bool) -> None:  # fmt: skip
    """List parked, requeued and held events in offset order."""
    with _connect(db_url, table, schema) as conn:
        found = [
            _row_json(s.consumer, row)
            for s in _stores(conn, table, schema, consumer)
            for row in s.parked_rows(conn)
        ]
    if as_json:
        click.echo(json.dumps(found))
        return
    console = make_console()
    if not found:
        console.print("no parked events")
        return
    from rich.table import Table

    grid = Table(title=f"{len(found)} parked or held event(s)", title_justify="left")
    columns = ["event_id", "consumer", "state", "type", "topic", "partition", "offset", "key",
               "attempts", "error"]  # fmt: skip
    for name in columns:
        grid.add_column(name, no_wrap=name == "event_id", overflow="fold")
    for r in found:
        grid.add_row(*("" if r[c] is None else str(r[c]) for c in columns))
    console.print(grid)


def _selection(event_ids: Sequence[str], all_: bool) -> list[str] | None:
    if all_ and event_ids:
        raise click.UsageError("give EVENT_IDs or --all, not both")
    if not all_ and not event_ids:
        raise click.UsageError("give the EVENT_IDs to act on, or --all")
    return None if all_ else list(event_ids)


@parked.command("requeue")
@_options
@click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]...")
@click.option("--all", "all_", is_flag=True, help="Every parked event.")
def parked_requeue(db_url: str, table: str, schema: str | None, consumer: str | None,
                   event_ids: tuple[str, ...], all_: bool) -> None:  # fmt: skip
    """Have the running consumer apply parked events again, then the held events of their
    keys in their original order."""
    ids = _selection(event_ids, all_)
    with _connect(db_url, table, schema) as conn:
        count = sum(s.requeue(conn, ids) for s in _stores(conn, table, schema, consumer))
    click.echo(f"requeued {count} event(s)")


@parked.command("drop")
@_options
@click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]...")
@click.option("--all", "all_", is_flag=True, help="Every parked event.")
def parked_drop(db_url: str, table: str, schema: str | None, consumer: str | None,
                event_ids: tuple[str, ...], all_: bool) -> None:  # fmt: skip
    """Give parked events up (never applied); the held events of their keys then flow."""
    ids = _selection(event_ids, all_)
    with _connect(db_url, table, schema) as conn:
        count = sum(s.drop(conn, ids) for s in _stores(conn, table, schema, consumer))
    click.echo(f"dropped {count} event(s)")


@inbox.command("purge")
@_options
@click.option("--older-than", required=True, callback=duration_option, metavar="DURATION",
              help="Delete dedup records older than this (7d, 12h ...), only below the stored "
              "offsets. Keep it longer than any relay repeat or replay can come late.")  # fmt: skip
def purge(db_url: str, table: str, schema: str | None, consumer: str | None,
          older_than: float) -> None:  # fmt: skip
    """Delete old dedup records of applied or dropped events (never parked or held ones)."""
    with _connect(db_url, table, schema) as conn:
        count = sum(
            s.purge(conn, timedelta(seconds=older_than))
            for s in _stores(conn, table, schema, consumer)
        )
    click.echo(f"purged {count} dedup record(s)")
