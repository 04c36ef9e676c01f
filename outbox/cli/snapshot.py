"""`outbox snapshot run|status|cancel`: put a captured table's existing rows into the stream."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from outbox.cli._options import db_options, load_object, make_console
from outbox.errors import ConfigurationError, TableMissingError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from outbox.snapshot.state import SnapshotInfo, SnapshotState


def _engine(db_url: str) -> sa.Engine:
    """The application's database, by the URL rules every command follows (`outbox._urls`:
    an asyncio URL through its sync driver, a missing driver named with its extra)."""
    import sqlalchemy as sa

    from outbox._urls import resolve_db_url

    resolved = resolve_db_url(db_url, must_exist=False)
    if resolved.note is not None:
        logging.getLogger("outbox.snapshot").info("%s", resolved.note)
    url = resolved.url
    # SQLite: wait for the application's write lock instead of failing at once.
    kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 30}} if url.get_backend_name() == "sqlite" else {}
    )
    return sa.create_engine(url, **kwargs)


@contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C sets an event the runner checks between chunks (the chunk in flight commits)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@click.group()
def snapshot() -> None:
    """Snapshot the rows that already exist: one <table>.snapshot event per row, beside the live
    capture events. Install capture on every writer first; see docs/DATA-LIBERATION.md."""


@snapshot.command()
@click.option(
    "--db-url",
    envvar="OUTBOX_DB_URL",
    show_envvar=True,
    required=True,
    metavar="URL",
    help="SQLAlchemy URL of the application's database (the snapshot writes on the primary).",
)
@click.option(
    "--app",
    "app_path",
    required=True,
    metavar="MODULE:OUTBOX",
    help="The Outbox instance whose capture settings the events follow, e.g. myapp.events:outbox.",
)
@click.option(
    "--model", "model_path", required=True, metavar="MODULE:CLASS", help="The captured class."
)
@click.option("--where", default=None, metavar="SQL", help="Only rows matching this SQL filter.")
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows per chunk (one short transaction); a chunk over 100 ms halves the next.",
)
@click.option(
    "--max-rows-per-second",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Cap the snapshot's rate.",
)
@click.option(
    "--max-pending",
    type=click.IntRange(min=1),
    default=None,
    help="Pause while more outbox events than this wait for the relay.",
)
@click.option("--restart", is_flag=True, help="Abandon an unfinished snapshot and start anew.")
@click.option("--quiet", is_flag=True, help="No progress bar: one line at the end.")
def run(
    db_url: str,
    app_path: str,
    model_path: str,
    where: str | None,
    chunk_size: int,
    max_rows_per_second: float | None,
    max_pending: int | None,
    restart: bool,
    quiet: bool,
) -> None:
    """Snapshot every existing row of a captured model (the same command resumes after a crash).

    Ctrl-C stops after the chunk in flight; run the same command again to resume.
    """
    from sqlalchemy.orm import sessionmaker

    from outbox.snapshot.options import SnapshotOptions
    from outbox.snapshot.progress import ProgressBar
    from outbox.write.outbox import Outbox

    outbox = load_object(app_path, "--app")
    if not isinstance(outbox, Outbox):
        raise ConfigurationError(f"--app {app_path!r} is a {type(outbox).__name__}, not an Outbox")
    model = load_object(model_path, "--model")
    if not isinstance(model, type):
        raise ConfigurationError(f"--model {model_path!r} is not a class")
    options = SnapshotOptions(
        where=where,
        chunk_size=chunk_size,
        max_rows_per_second=max_rows_per_second,
        max_pending=max_pending,
        restart=restart,
    )
    engine = _engine(db_url)
    console = make_console(stderr=True)
    try:
        with _stop_on_ctrl_c() as stop, ProgressBar(console, model.__name__) as bar:
            runner = outbox.snapshot_runner(
                sessionmaker(engine),
                model,
                options,
                on_progress=None if quiet else bar.update,
                stop=stop,
            )
            result = runner.run()
    finally:
        engine.dispose()
    verb = "resumed and finished" if result.resumed else "finished"
    if result.state == "interrupted":
        click.echo(
            f"snapshot {result.id} interrupted after {result.rows} rows ({result.chunks} "
            "chunks committed); run the same command again to resume it",
            err=True,
        )
        sys.exit(130)
    click.echo(
        f"snapshot {result.id} of {model.__name__} {verb}: {result.rows} rows in "
        f"{result.chunks} chunks ({result.seconds:.1f}s of chunk work)"
    )


@contextmanager
def _state(db_url: str, table: str, schema: str | None) -> Iterator[tuple[Any, SnapshotState]]:
    import sqlalchemy as sa

    from outbox.schema.tables import build_outbox_table, build_snapshot_table
    from outbox.snapshot.state import SnapshotState

    metadata = sa.MetaData()
    state = SnapshotState(
        build_snapshot_table(metadata, table, schema), build_outbox_table(metadata, table, schema)
    )
    engine = _engine(db_url)
    try:
        if not sa.inspect(engine).has_table(state.table.name, schema=schema):
            raise TableMissingError(
                f"snapshot table {state.table.fullname!r} does not exist: run "
                "`outbox migrate --db-url URL`"
            )
        yield engine, state
    finally:
        engine.dispose()


def _row(info: SnapshotInfo) -> list[str]:
    total = "-" if info.total_estimate is None else f"{info.total_estimate:,}"
    rate = "-" if info.rate is None else f"{info.rate:,.0f}/s"
    return [
        info.id,
        info.model,
        info.state,
        f"{info.rows_done:,}",
        total,
        rate,
        info.last_error or "",
    ]


@snapshot.command()
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def status(db_url: str, table: str, schema: str | None, as_json: bool) -> None:
    """List the snapshots: id, model, state, rows done, estimated total, rate, last error.

    The rate is rows per second of chunk work (pauses for --max-pending, the rate cap and time
    between runs left out).
    """
    with _state(db_url, table, schema) as (engine, state), engine.connect() as conn:
        infos = state.list(conn)
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos]))
        return
    from rich.table import Table

    out = Table(title=f"snapshots ({table}_snapshot)", title_justify="left")
    for name in ("id", "model", "state", "rows done", "est. total", "chunk rate", "last error"):
        out.add_column(name, justify="right" if name in ("rows done", "est. total") else "left")
    for info in infos:
        out.add_row(*_row(info))
    make_console().print(out)


@snapshot.command()
@click.argument("snapshot_id", metavar="ID")
@db_options
def cancel(snapshot_id: str, db_url: str, table: str, schema: str | None) -> None:
    """Cancel an unfinished snapshot (its runner stops before its next chunk)."""
    with _state(db_url, table, schema) as (engine, state), engine.begin() as conn:
        if not state.cancel(conn, snapshot_id):
            found = state.get(conn, snapshot_id)
            if found is None:
                raise ConfigurationError(f"no snapshot {snapshot_id!r}")
            raise ConfigurationError(f"snapshot {snapshot_id} is already {found.state}")
    click.echo(f"snapshot {snapshot_id} cancelled")
