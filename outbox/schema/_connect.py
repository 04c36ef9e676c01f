"""How the migration runner connects, and its failures as one line each: an unreachable
server, a missing driver, Alembic's own errors (`outbox.schema.migrate`)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic.util.exc import CommandError

from outbox.config import mask_url
from outbox.errors import ConfigurationError


def unreachable(url: sa.URL, exc: sa.exc.DBAPIError | OSError) -> ConfigurationError:
    where = f"on host {url.host} " if url.host else ""
    return ConfigurationError(
        f"cannot connect to the database {where}({mask_url(url)}): {first_line(exc)}"
    )


def alembic_call(call: Callable[[], None], url: sa.URL) -> None:
    try:
        call()
    except CommandError as exc:
        raise ConfigurationError(f"migration of {mask_url(url)} failed: {exc}") from None
    except sa.exc.DBAPIError as exc:
        raise ConfigurationError(
            f"migration of {mask_url(url)} failed: {first_line(exc)}"
        ) from None


def parse_url(db_url: str) -> sa.URL:
    # Same hints as every other command (postgres://, a missing driver and its extra); an
    # asyncio driver stays (`migrate._run_async` runs it), and SQLite creates its file here
    # on purpose.
    from outbox._urls import SYNC_DRIVERS, resolve_db_url
    from outbox.config import parse_db_url

    try:
        return resolve_db_url(db_url, allow_async=True, must_exist=False).url
    except ConfigurationError:
        driver = parse_db_url(db_url).drivername.partition("+")[2]
        if driver not in SYNC_DRIVERS:
            raise
        # The asyncio driver is not installed here: its synchronous counterpart may be.
        return resolve_db_url(db_url, must_exist=False).url


def engine_for(url: sa.URL) -> sa.Engine:
    try:
        return sa.create_engine(url, poolclass=sa.NullPool)
    except ImportError as exc:
        raise ConfigurationError(
            f"the database driver for {url.drivername} is not installed ({exc.name})"
        ) from None


def first_line(exc: sa.exc.DBAPIError | OSError) -> str:
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__
