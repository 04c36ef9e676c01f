"""`outbox consume`: run an application's `Inbox` until SIGTERM, with health and metrics."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from outbox.cli._options import (
    CONTEXT,
    LOG_LEVELS,
    handling_signals,
    load_object,
    producer_settings_option,
)
from outbox.errors import ConfigurationError

if TYPE_CHECKING:
    from outbox.inbox import Inbox
    from outbox.inbox.runner import Runner
    from outbox.ops.health import HealthServer

logger = logging.getLogger("outbox.inbox")

#: /healthz fails when the loop has not come round for this long (a stuck handler).
STUCK_AFTER = 120.0


def load_app(spec: str) -> Inbox:
    """The `Inbox` named by ``package.module:attribute``; a `ConfigurationError` otherwise."""
    from outbox.inbox import Inbox

    found = load_object(spec, "--app")
    if not isinstance(found, Inbox):
        raise ConfigurationError(f"--app {spec!r} is a {type(found).__name__}, not an outbox.Inbox")
    return found


def _typed(value: Any) -> Any:
    """-X values arrive as text; kafka-python wants numbers and booleans as such."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


@click.command(context_settings=CONTEXT)
@click.option(
    "--app",
    envvar="OUTBOX_APP",
    show_envvar=True,
    required=True,
    metavar="MODULE:NAME",
    help="The Inbox to run, e.g. billing.events:inbox.",
)
@click.option(
    "--bootstrap-servers",
    envvar="OUTBOX_BOOTSTRAP_SERVERS",
    show_envvar=True,
    required=True,
    metavar="HOST:PORT[,...]",
    help="Kafka brokers.",
)
@click.option(
    "--topic",
    "topics",
    multiple=True,
    required=True,
    metavar="TOPIC",
    help="A topic to consume, repeatable.",
)
@click.option(
    "--group",
    envvar="OUTBOX_GROUP",
    show_envvar=True,
    default=None,
    help="Consumer group (default: the inbox's consumer name).",
)
@click.option(
    "--health-port",
    envvar="OUTBOX_HEALTH_PORT",
    show_envvar=True,
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /healthz and /readyz.",
)
@click.option(
    "--metrics-port",
    envvar="OUTBOX_METRICS_PORT",
    show_envvar=True,
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus /metrics.",
)
@click.option(
    "--log-level",
    envvar="OUTBOX_LOG_LEVEL",
    show_envvar=True,
    default="INFO",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    show_default=True,
)
@click.option(
    "--log-format",
    envvar="OUTBOX_LOG_FORMAT",
    show_envvar=True,
    default="text",
    type=click.Choice(["text", "json"]),
    show_default=True,
)
@click.option(
    "-X",
    "--consumer-config",
    "consumer_config",
    multiple=True,
    metavar="NAME=VALUE",
    callback=producer_settings_option,
    help="A kafka-python consumer setting, repeatable: -X session_timeout_ms=10000.",
)
def consume(
    app: str,
    bootstrap_servers: str,
    topics: tuple[str, ...],
    group: str | None,
    health_port: int | None,
    metrics_port: int | None,
    log_level: str,
    log_format: str,
    consumer_config: dict[str, Any],
) -> None:  # fmt: skip
    """Apply the events of TOPICs with an application's Inbox, each once, until stopped.

    Offsets are kept in the application's database, fenced per partition; each record is
    applied in one transaction with its dedup row. SIGTERM or SIGINT finishes the record in
    flight and exits 0 (a second signal exits at once; the record is then read again).
    """
    from outbox.inbox.observer import InboxObserver
    from outbox.ops.logs import configure_logging

    # The application first: what its imports log at INFO (alembic's plugins) stays quiet.
    inbox = load_app(app)
    configure_logging(log_format, log_level)  # type: ignore[arg-type]
    stop = threading.Event()
    observer: InboxObserver = InboxObserver()
    render = None
    if metrics_port is not None:
        from outbox.ops.inbox_metrics import InboxPrometheusObserver

        prometheus = InboxPrometheusObserver()
        observer, render = prometheus, prometheus.render
    servers: list[HealthServer] = []
    runners: list[Runner] = []

    def started(runner: Runner) -> None:
        runners.append(runner)
        servers.extend(_start_servers(runner, health_port, metrics_port, render))

    try:
        with _stop_on_signals(stop):
            inbox.run(
                bootstrap_servers=bootstrap_servers,
                topics=list(topics),
                group=group,
                stop=stop,
                observer=observer,
                consumer_settings={k: _typed(v) for k, v in consumer_config.items()},
                on_start=started,
            )
    finally:
        for server in servers:
            server.stop()


def _start_servers(
    runner: Runner, health_port: int | None, metrics_port: int | None, render: Any
) -> list[HealthServer]:
    from outbox.ops.health import HealthServer

    def alive() -> bool:
        return time.monotonic() - runner.heartbeat < STUCK_AFTER

    def ready() -> tuple[bool, dict[str, Any]]:
        state = runner.describe()
        return bool(state["database"]), state

    servers: list[HealthServer] = []
    ports = {p for p in (health_port, metrics_port) if p is not None}
    for port in sorted(ports):
        server = HealthServer(
            port, alive=alive, ready=ready, metrics=render if port == metrics_port else None
        )
        server.start()
        servers.append(server)
    return servers


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT: stop after the record in flight; a second one exits at once."""
    received: list[int] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) > 1:
            logger.error("second %s: exiting now; the record in flight is read again", name)
            logging.shutdown()
            os._exit(128 + signum)
        logger.info("%s received: finishing the record in flight", name)
        stop.set()

    with handling_signals(handle):
        yield
