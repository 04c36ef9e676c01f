"""`outbox relay`: the sidecar command, its health/metrics servers and signal handling."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import DBAPIError

from outbox.cli._options import LOG_LEVELS, handling_signals, producer_settings_option
from outbox.config import ENVELOPES, RelayConfig

if TYPE_CHECKING:
    from outbox.ops.health import HealthServer
    from outbox.relay import Relay

logger = logging.getLogger("outbox.cli")


# -- relay ---------------------------------------------------------------------------------------


def _relay_defaults() -> dict[str, Any]:
    from dataclasses import MISSING, fields

    return {f.name: f.default for f in fields(RelayConfig) if f.default is not MISSING}


_D = _relay_defaults()


@click.command()
@click.option(
    "--db-url",
    envvar="OUTBOX_DB_URL",
    show_envvar=True,
    required=True,
    metavar="URL",
    help="SQLAlchemy database URL of the application's database (an asyncio URL such as "
    "postgresql+asyncpg:// is used through its sync driver, psycopg).",
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
    "--health-host",
    envvar="OUTBOX_HEALTH_HOST",
    show_envvar=True,
    metavar="ADDRESS",
    show_default=_D["health_host"],
    help="Address the health and metrics endpoints bind to (127.0.0.1: this host only).",
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
    "--partitioned/--single-active",
    default=None,
    envvar="OUTBOX_PARTITIONED",
    show_envvar=True,
    help="Share the table with the other partitioned relays, each publishing its share of 64 "
    "partitions (needs `outbox partitions enable`; docs/PARTITIONING.md), or be the one active "
    "relay per table (the default).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    envvar="OUTBOX_WORKERS",
    show_envvar=True,
    show_default=str(_D["workers"]),
    help="With --partitioned: member relay processes to run in this sidecar (one core each); "
    "worker i serves health and metrics on port + i.",
)
@click.option(
    "-X",
    "--producer-config",
    multiple=True,
    metavar="NAME=VALUE",
    callback=producer_settings_option,
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
    from outbox.ops.progress import ProgressObserver
    from outbox.relay import Relay
    from outbox.relay.observer import CompositeObserver, RelayObserver

    config = RelayConfig.from_env(**options, producer_config=producer_config)
    # Every static setting is checked before the first connection: a typo in -X fails at once,
    # not after the database answered (kafka-python itself checks only when it connects).
    from outbox.kafka import producer_settings

    producer_settings(config.bootstrap_servers, config.producer_config)
    configure_logging(config.log_format, log_level)
    if config.workers > 1:
        import sys

        from outbox.ops.workers import Workers

        code = Workers(config, log_level).run()
        logger.info("relay workers stopped")
        if code:
            sys.exit(code)
        return
    observers: list[RelayObserver] = [LoggingObserver(), ProgressObserver()]
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

    # This process is the relay's alone, and what start-up loaded (modules, SQLAlchemy's and
    # kafka-python's objects) lives as long as it does: frozen, the collector stops scanning it
    # in every full collection (50-60 ms each, a quarter of the relay's CPU in a drain).
    gc.collect()
    gc.freeze()
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
                    config.health_host,
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
                    config.metrics_port, config.health_host, alive=the_relay.alive,
                    ready=the_relay.ready, metrics=metrics,
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

    with handling_signals(handle):
        yield
