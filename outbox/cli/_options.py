"""Options and helpers shared by the commands: durations, -X producer settings, --db-url."""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from outbox.errors import ConfigurationError

if TYPE_CHECKING:
    from rich.console import Console

    from outbox.relay.store import OutboxStore

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


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def producer_settings_option(
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
        help="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pass@host/db (the "
        "application's asyncio URL works too: it is used through the matching sync driver).",
    )(func)
    return func


@contextmanager
def open_store(db_url: str, table: str, schema: str | None) -> Iterator[OutboxStore]:
    """The outbox table's store, checked to exist (else `TableMissingError`), disposed after.

    An asyncio URL is used through its synchronous driver, said once on stderr; a SQLite file
    that does not exist is an error, never created (these commands only read or repair)."""
    from outbox._urls import resolve_db_url
    from outbox.relay.store import OutboxStore

    resolved = resolve_db_url(db_url, must_exist=False)  # checked with the table, below
    if resolved.note is not None:
        click.echo(f"outbox: {resolved.note}", err=True)
    store = OutboxStore.from_url(resolved.url, table, schema)
    try:
        store.check_table()
        yield store
    finally:
        store.dispose()


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextmanager
def handling_signals(handle: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """Run the body with `handle` for SIGTERM and SIGINT (a long-running command's graceful
    stop), then put the previous handlers back."""
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def load_object(path: str, what: str) -> Any:
    """The object `package.module:name` names; `ConfigurationError` with one line otherwise."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"{what} {path!r} is not package.module:name")
    # Like `python -m`: the current directory's modules can be named.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {what} {path!r}: {exc}") from None
    except Exception as exc:  # the user's module failed while importing
        raise ConfigurationError(
            f"importing {what} {path!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{what} {path!r}: {module_name} has no {attribute}") from None
    return obj
