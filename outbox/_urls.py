"""Database URLs as the relay and the commands take them.

Applications often hold one ``DATABASE_URL`` naming an asyncio driver (``postgresql+asyncpg``);
the relay and the operator commands are synchronous, so they use the same database through the
matching synchronous driver and say so once. Common mistakes get a hint instead of a library
error: Heroku-style ``postgres://``, a driver that is not installed (named with the package
extra that installs it), and a SQLite file that does not exist (a read-only command must not
create an empty one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError

from outbox.config import mask_url, parse_db_url
from outbox.errors import ConfigurationError, TableMissingError

#: asyncio driver -> the synchronous driver of the same database.
SYNC_DRIVERS: dict[str, str] = {
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiosqlite": "pysqlite",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
}

#: driver -> the sqlalchemy-outbox extra that installs it.
DRIVER_EXTRAS: dict[str, str] = {
    "psycopg": "postgresql",
    "psycopg_async": "postgresql",
    "psycopg2": "psycopg2",
    "pymysql": "mysql",
    "asyncpg": "asyncio",
    "aiosqlite": "asyncio",
}

#: Dialect names people write that SQLAlchemy does not know, and the one it does.
_DIALECT_HINTS = {"postgres": "postgresql", "pg": "postgresql", "psql": "postgresql"}


@dataclass(frozen=True, slots=True)
class ResolvedUrl:
    """The URL to connect with, and what was changed on the way (None: nothing)."""

    url: URL
    note: str | None = None


def install_hint(driver: str, backend: str) -> str:
    """How to install `driver`, naming the package extra where there is one."""
    extra = DRIVER_EXTRAS.get(driver)
    if extra is not None:
        return f"pip install 'sqlalchemy-outbox[{extra}]'"
    if driver == "mysqldb":
        # mysql:// and mariadb:// default to mysqlclient, which needs a C toolchain.
        return (
            f"use {backend}+pymysql://... and pip install 'sqlalchemy-outbox[mysql]' "
            "(or pip install mysqlclient)"
        )
    return f"install the {driver} package"


def _load_dialect(url: URL) -> type:
    try:
        return url.get_dialect()
    except NoSuchModuleError:
        name = url.get_backend_name()
        better = _DIALECT_HINTS.get(name)
        if better is not None:
            fixed = url.set(drivername=url.drivername.replace(name, better, 1))
            raise ConfigurationError(
                f"unknown database dialect {name!r}: SQLAlchemy spells it {better!r}, "
                f"use {mask_url(fixed)}"
            ) from None
        raise ConfigurationError(f"unknown database dialect in URL {mask_url(url)}") from None


def _check_driver(url: URL, dialect: type) -> None:
    try:
        dialect.import_dbapi()  # type: ignore[attr-defined]
    except ImportError as exc:
        driver = url.get_driver_name()
        raise ConfigurationError(
            f"the database driver {driver} for {mask_url(url)} is not installed "
            f"({exc.name or exc}): {install_hint(driver, url.get_backend_name())}"
        ) from None


def check_sqlite_file(url: URL) -> None:
    """`TableMissingError` when `url` names a SQLite file that does not exist: connecting would
    create an empty one (a read-only command must leave the disk as it was)."""
    if url.get_backend_name() != "sqlite":
        return
    database = url.database
    if not database or database == ":memory:" or url.query.get("uri") or "mode=memory" in database:
        return
    if not os.path.exists(database):
        raise TableMissingError(
            f"database file {database} does not exist (check the path; "
            "`outbox migrate --db-url URL` creates it with the outbox tables)"
        )


def resolve_db_url(
    db_url: str | URL, *, allow_async: bool = False, must_exist: bool = True
) -> ResolvedUrl:
    """The URL a synchronous command connects with, or one-line `ConfigurationError`.

    An asyncio driver is replaced by its synchronous counterpart (unless `allow_async`); the
    driver is checked to be importable; with `must_exist`, a SQLite file must exist already.
    """
    url = db_url if isinstance(db_url, URL) else parse_db_url(db_url)
    dialect = _load_dialect(url)
    note = None
    if dialect.is_async and not allow_async:  # type: ignore[attr-defined]
        given = url.get_driver_name()
        sync = SYNC_DRIVERS.get(given)
        if sync is None:
            raise ConfigurationError(
                f"{url.drivername} is an asyncio driver and has no synchronous counterpart "
                f"here: give the synchronous URL of the same database (e.g. "
                f"{url.get_backend_name()}://...)"
            )
        url = url.set(drivername=f"{url.get_backend_name()}+{sync}")
        dialect = _load_dialect(url)
        note = (
            f"database URL names the asyncio driver {given}: using the synchronous driver "
            f"{sync} for the same database ({mask_url(url)})"
        )
        try:
            _check_driver(url, dialect)
        except ConfigurationError:
            raise ConfigurationError(
                f"{given} is an asyncio driver; this command needs the synchronous driver "
                f"{sync}, which is not installed: {install_hint(sync, url.get_backend_name())} "
                f"(the URL it uses: {mask_url(url)})"
            ) from None
    else:
        _check_driver(url, dialect)
    if must_exist:
        check_sqlite_file(url)
    return ResolvedUrl(url, note)


__all__ = [
    "DRIVER_EXTRAS",
    "SYNC_DRIVERS",
    "ResolvedUrl",
    "check_sqlite_file",
    "install_hint",
    "resolve_db_url",
]
