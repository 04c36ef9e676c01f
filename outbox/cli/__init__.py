"""The `outbox` command line: relay, migrate, status, parked events, purge, healthcheck, demo.

Every option can also come from an ``OUTBOX_*`` environment variable (shown in ``--help``); a
flag wins over the environment. Kafka producer settings pass through as ``-X name=value`` or
``OUTBOX_PRODUCER_<NAME>``. A user's mistake prints one line, ``outbox: error: ...``, on stderr
and exits non-zero; it never prints a traceback or a database password.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import DBAPIError

from outbox.config import ENVELOPES, RelayConfig
from outbox.errors import ConfigurationError, OutboxError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from outbox.ops.health import HealthServer
    from outbox.relay import Relay
    from outbox.relay.records import ParkedEvent, Status
    from outbox.relay.store import OutboxStore

logger = logging.getLogger("outbox.cli")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# -- option types --------------------------------------------------------------------------------


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``15m``, ``2h``, ``7d`` or ``1w``."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(f"{text!r} is not a duration (examples: 3600, 90s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _producer_settings(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, Any]:
    """``-X NAME=VALUE`` pairs as kafka-python keyword arguments. Values stay text: the Kafka
    publisher converts them by each setting's type (a password "00123" stays "00123")."""
    settings: dict[str, Any] = {}
    for value in values:
        name, sep, raw = value.partition("=")
        # Accept Java-style names too (compression.type): kafka-python uses underscores.
        name = name.strip().lower().replace("-", "_").replace(".", "_")
        if not sep or not name:
            raise click.BadParameter(
                f"{value!r} is not NAME=VALUE (e.g. compression_type=gzip)", ctx, param
            )
        settings[name] = raw
    return settings


def db_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--db-url, --table and --schema, shared by every command that reads the outbox table."""
    func = click.option(
        "--schema",
        envvar="OUTBOX_SCHEMA",
        show_envvar=True,
        default=None,
        help="Schema of the outbox table (default: the connection's default schema).",
    )(func)
    func = click.option(
        "--table",
        envvar="OUTBOX_TABLE",
        show_envvar=True,
        default="outbox",
        show_default=True,
        help="Name of the outbox table (its lease table is <table>_lease).",
    )(func)
    func = click.option(
        "--db-url",
        envvar="OUTBOX_DB_URL",
        show_envvar=True,
        required=True,
        metavar="URL",
        help="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pass@host/db.",
    )(func)
    return func


@contextmanager
def open_store(db_url: str, table: str, schema: str | None) -> Iterator[OutboxStore]:
    """The outbox table's store, checked to exist (else `TableMissingError`), disposed after."""
    from outbox.relay.store import OutboxStore

    store = OutboxStore.from_url(db_url, table, schema)
    try:
        store.check_table()
        yield store
    finally:
        store.dispose()


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# -- the group -----------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="sqlalchemy-outbox", prog_name="outbox")
def cli() -> None:
    """Transactional outbox for SQLAlchemy: migrate the outbox table, relay it to Kafka, and
    inspect or repair it.

    \b
    Typical use:
      outbox migrate --db-url URL                  create or upgrade the outbox tables
      outbox relay --db-url URL --bootstrap-servers kafka:9092
      outbox status --db-url URL                   backlog and parked events
      outbox parked list --db-url URL              events the broker rejected for good
      outbox demo                                  the whole flow on this machine

    Every option can also be set with an environment variable (OUTBOX_DB_URL, OUTBOX_TABLE,
    ...; see each command's --help); a flag wins over the environment. Mistakes print one line,
    "outbox: error: ...", on stderr and exit with a non-zero code.
    """


@cli.command()
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

    upgrade(db_url, table=table, schema=schema, sql=sql)


# -- relay ---------------------------------------------------------------------------------------


def _relay_defaults() -> dict[str, Any]:
    from dataclasses import MISSING, fields

    return {f.name: f.default for f in fields(RelayConfig) if f.default is not MISSING}


_D = _relay_defaults()


@cli.command()
@click.option(
    "--db-url",
    envvar="OUTBOX_DB_URL",
    show_envvar=True,
    required=True,
    metavar="URL",
    help="SQLAlchemy database URL of the application's database.",
)
@click.option(
    "--bootstrap-servers",
    envvar="OUTBOX_BOOTSTRAP_SERVERS",
    show_envvar=True,
    metavar="HOST:PORT[,...]",
    show_default=_D["bootstrap_servers"],
    help="Kafka bootstrap servers.",
)
@click.option(
    "--table",
    envvar="OUTBOX_TABLE",
    show_envvar=True,
    show_default=_D["table"],
    help="Name of the outbox table.",
)
@click.option(
    "--schema", envvar="OUTBOX_SCHEMA", show_envvar=True, help="Schema of the outbox table."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    envvar="OUTBOX_BATCH_SIZE",
    show_envvar=True,
    show_default=str(_D["batch_size"]),
    help="Events read, sent and marked per round trip.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    envvar="OUTBOX_POLL_INTERVAL",
    show_envvar=True,
    show_default=str(_D["poll_interval"]),
    metavar="SECONDS",
    help="Seconds between polls when idle (PostgreSQL also wakes the relay on commit).",
)
@click.option(
    "--topic-prefix",
    envvar="OUTBOX_TOPIC_PREFIX",
    show_envvar=True,
    help="Prepended to the aggregate type to name the topic of events without a topic.",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=0, min_open=True),
    envvar="OUTBOX_LEASE_TTL",
    show_envvar=True,
    show_default=str(_D["lease_ttl"]),
    metavar="SECONDS",
    help="Seconds the active relay's lease lasts without renewal; a standby relay takes over "
    "after at most about this long.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    envvar="OUTBOX_MAX_ATTEMPTS",
    show_envvar=True,
    show_default=str(_D["max_attempts"]),
    help="Publish attempts before an event the broker rejects for good is parked "
    "(outages never count).",
)
@click.option(
    "--hold-parked-keys/--pass-parked-keys",
    default=None,
    envvar="OUTBOX_HOLD_PARKED_KEYS",
    show_envvar=True,
    help="Hold back later events of a parked event's key until it is requeued or dropped "
    "(keeps per-key order; the default), or let them pass.",
)
@click.option(
    "--retention",
    type=click.FloatRange(min=0),
    envvar="OUTBOX_RETENTION",
    show_envvar=True,
    show_default=str(_D["retention"]),
    metavar="SECONDS",
    help="Seconds to keep published events in the table (0: delete them at once).",
)
@click.option(
    "--envelope",
    type=click.Choice(ENVELOPES),
    envvar="OUTBOX_ENVELOPE",
    show_envvar=True,
    show_default=_D["envelope"],
    help="Record format: the payload as is (plain), CloudEvents binary mode (cloudevents) or "
    "a JSON CloudEvent (cloudevents-structured).",
)
@click.option(
    "--source",
    envvar="OUTBOX_SOURCE",
    show_envvar=True,
    show_default=_D["source"],
    help="CloudEvents source attribute.",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    envvar="OUTBOX_HEALTH_PORT",
    show_envvar=True,
    help="Serve /healthz (loop alive) and /readyz (database and broker reachable) on this port.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar="OUTBOX_METRICS_PORT",
    show_envvar=True,
    help="Serve Prometheus /metrics on this port (may equal --health-port).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="OUTBOX_LOG_FORMAT",
    show_envvar=True,
    show_default=_D["log_format"],
    help="Log lines on stderr as text or JSON objects.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    envvar="OUTBOX_LOG_LEVEL",
    show_envvar=True,
    default="INFO",
    show_default=True,
    help="Least severe level logged.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0, min_open=True),
    envvar="OUTBOX_SHUTDOWN_TIMEOUT",
    show_envvar=True,
    show_default=str(_D["shutdown_timeout"]),
    metavar="SECONDS",
    help="On SIGTERM/SIGINT, seconds to finish the batch in flight before exiting anyway.",
)
@click.option(
    "-X",
    "--producer-config",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_producer_settings,
    help="A kafka-python producer setting, repeatable: -X security_protocol=SASL_SSL "
    "-X sasl_mechanism=PLAIN -X compression_type=gzip. Also from OUTBOX_PRODUCER_<NAME> "
    "variables (e.g. OUTBOX_PRODUCER_SASL_PLAIN_PASSWORD).",
)
def relay(log_level: str, producer_config: dict[str, Any], **options: Any) -> None:
    """Publish the outbox table to Kafka until stopped.

    Only one relay per table is active at a time (a lease in the database); extra relays wait
    as hot standbys. An event is deleted only after Kafka acknowledged it, so delivery is at
    least once, in order per key. While the database or the broker is unreachable the relay
    waits with backoff and says what it waits for; /readyz answers 503 meanwhile.

    SIGTERM or SIGINT finishes the batch in flight, flushes and exits 0 (a second signal
    exits at once).
    """
    from outbox.ops.logs import LoggingObserver, configure_logging
    from outbox.relay import Relay
    from outbox.relay.observer import CompositeObserver, RelayObserver

    config = RelayConfig.from_env(**options, producer_config=producer_config)
    configure_logging(config.log_format, log_level)
    observers: list[RelayObserver] = [LoggingObserver()]
    render_metrics = None
    if config.metrics_port is not None:
        from outbox.ops.metrics import PrometheusObserver

        prometheus = PrometheusObserver()
        observers.append(prometheus)
        render_metrics = prometheus.render
    the_relay = Relay(config, observer=CompositeObserver(observers))
    servers: list[HealthServer] = []
    try:
        servers = _start_servers(the_relay, config, render_metrics)
        with _stop_on_signals(the_relay, config.shutdown_timeout):
            _run_until_stopped(the_relay)
    finally:
        for server in servers:
            server.stop()
        the_relay.store.dispose()
    logger.info("relay stopped")


def _run_until_stopped(the_relay: Relay) -> None:
    from outbox.errors import BrokerUnavailableError
    from outbox.relay.store import is_transient_db_error

    try:
        the_relay.run()
    except (BrokerUnavailableError, DBAPIError) as error:
        # Stopped while waiting for the broker or the database at start-up: the wait ends
        # with the outage's error, but stopping is what was asked for.
        transient = isinstance(error, BrokerUnavailableError) or is_transient_db_error(error)
        if not (the_relay.stopped and transient):
            raise
        logger.info("stopped while waiting: %s", error)


def _start_servers(
    the_relay: Relay, config: RelayConfig, metrics: Callable[[], tuple[bytes, str]] | None
) -> list[HealthServer]:
    from outbox.ops.health import HealthServer

    servers: list[HealthServer] = []
    try:
        if config.health_port is not None:
            same = config.metrics_port == config.health_port
            servers.append(
                HealthServer(
                    config.health_port,
                    alive=the_relay.alive,
                    ready=the_relay.ready,
                    metrics=metrics if same else None,
                )
            )
            servers[-1].start()
        if metrics is not None and config.metrics_port != config.health_port:
            assert config.metrics_port is not None
            servers.append(
                HealthServer(
                    config.metrics_port, alive=the_relay.alive, ready=the_relay.ready,
                    metrics=metrics,
                )
            )  # fmt: skip
            servers[-1].start()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@contextmanager
def _stop_on_signals(the_relay: Relay, shutdown_timeout: float) -> Iterator[None]:
    """SIGTERM/SIGINT: stop after the batch in flight; a second one, or the shutdown timeout
    running out, exits at once (unacknowledged events stay in the table and go again later)."""
    received: list[int] = []

    def force_exit(code: int, why: str) -> None:
        logger.error("%s: exiting now; events not yet acknowledged will be sent again", why)
        logging.shutdown()
        os._exit(code)

    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) > 1:
            force_exit(128 + signum, f"second {name}")
        logger.info(
            "%s received: finishing the batch in flight (send it again to exit at once)", name
        )
        the_relay.stop()
        timer = threading.Timer(
            shutdown_timeout,
            force_exit,
            args=(1, f"did not stop within the shutdown timeout of {shutdown_timeout:g}s"),
        )
        timer.daemon = True
        timer.start()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


@cli.command()
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
    console = _console()
    if watch is None:
        console.print(_status_table(store.status(), where))
        return
    from rich.live import Live

    with Live(_status_table(store.status(), where), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(watch)
            live.update(_status_table(store.status(), where), refresh=True)


# -- parked events -------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
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
    console = _console()
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


# -- purge, healthcheck, demo --------------------------------------------------------------------


@cli.command()
@db_options
@click.option(
    "--older-than",
    required=True,
    callback=_duration_option,
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


@cli.command()
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


@cli.command()
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
        console=_console(),
    )
    if not result.ok:
        sys.exit(1)


# -- entry point ---------------------------------------------------------------------------------


def _database_error(exc: DBAPIError) -> str:
    from outbox.ops.logs import mask_text

    text = str(exc.orig if exc.orig is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return mask_text(f"database error: {first}")


def run_command(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> Any:
    """Run a click command; a user's mistake becomes one line on stderr and a non-zero exit."""
    try:
        return command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        click.echo(f"{prog_name}: error: {message}", err=True)
        sys.exit(exc.exit_code)
    except OutboxError as exc:
        click.echo(f"{prog_name}: error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    except DBAPIError as exc:
        click.echo(f"{prog_name}: error: {_database_error(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: a user's mistake becomes one line on stderr and exit code 2."""
    return run_command(cli, argv, "outbox")


__all__ = ["cli", "main", "parse_duration", "run_command"]

if __name__ == "__main__":
    main()
