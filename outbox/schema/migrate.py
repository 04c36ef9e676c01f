"""Apply the package's Alembic revisions, standalone or from an application's own environment.

The revisions live in the package (`outbox/migrations/versions`) on their own branch, labelled
`outbox`, so they never mix with an application's history:

* standalone (`outbox migrate`, `upgrade()`): an in-memory Alembic config points at the
  package's environment; the version table is per outbox table (`alembic_version_<table>`),
  so two outbox tables in one database never share one.
* inside an application's environment: `version_locations` includes `VERSION_LOCATION`, and
  `include_object_for()` keeps the application's autogenerate away from the outbox tables.

Which table the revisions create is decided at run time by `target()`, so one revision serves
every table name and schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from outbox._names import check_identifier
from outbox.errors import ConfigurationError
from outbox.schema._connect import alembic_call, engine_for, parse_url, unreachable
from outbox.schema.alembic_config import warn_about
from outbox.schema.tables import (
    build_inbox_tables,
    build_lease_table,
    build_members_table,
    build_outbox_table,
    build_partitions_table,
    build_snapshot_table,
    lease_table_name,
    members_table_name,
    partitions_table_name,
)

#: The branch label of every revision of this package.
BRANCH = "outbox"
#: What an application adds to `version_locations` (resource form, resolved by Alembic).
VERSION_LOCATION = "outbox:migrations/versions"
#: The package's own Alembic environment (env.py and versions/), used by `upgrade()`.
SCRIPT_LOCATION = Path(__file__).parent.parent / "migrations"

DEFAULT_TABLE = "outbox"
# Identifiers longer than this are truncated by PostgreSQL and refused by MySQL.
_MAX_IDENTIFIER = 63

IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


@dataclass(frozen=True, slots=True)
class Target:
    """The outbox table the revisions act on."""

    table: str = DEFAULT_TABLE
    schema: str | None = None

    def __post_init__(self) -> None:
        check_identifier(self.table, "table name")
        check_identifier(lease_table_name(self.table), "lease table name")
        if self.schema is not None:
            check_identifier(self.schema, "schema name")

    @property
    def lease_table(self) -> str:
        return lease_table_name(self.table)

    @property
    def partitions_table(self) -> str:
        return partitions_table_name(self.table)

    @property
    def members_table(self) -> str:
        return members_table_name(self.table)

    @property
    def version_table(self) -> str:
        """The standalone command's version table: one per outbox table name."""
        return version_table_name(self.table)

    @property
    def tables(self) -> tuple[str, ...]:
        """The names of the tables the revisions own, in creation order (from the one model)."""
        return tuple(t.name for t in build_metadata(self.table, self.schema).tables.values())


def version_table_name(table: str) -> str:
    """`alembic_version_<table>`, shortened with a hash when too long to stay unique."""
    name = f"alembic_version_{table}"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    return f"{name[: _MAX_IDENTIFIER - 9]}_{digest}"


def build_metadata(table: str = DEFAULT_TABLE, schema: str | None = None) -> sa.MetaData:
    """A `MetaData` holding the outbox table and its companions (lease, relays, partitions,
    snapshot, inbox), for an application's `target_metadata`."""
    metadata = sa.MetaData()
    build_outbox_table(metadata, table, schema)
    build_lease_table(metadata, table, schema)
    build_partitions_table(metadata, table, schema)
    build_members_table(metadata, table, schema)
    build_snapshot_table(metadata, table, schema)
    build_inbox_tables(metadata, table, schema)
    return metadata


def target(
    config: Config | None = None, environ: Mapping[str, str] | None = None, *, check: bool = True
) -> Target:
    """Which outbox table to migrate, first found wins.

    With `check` (the default), also warns (`AlembicConfigWarning`) when the application's
    Alembic config would hide the outbox revisions (``path_separator = os``).

    1. `config.attributes["outbox_table"]` / `["outbox_schema"]` (programmatic use);
    2. `-x outbox_table=...` / `-x outbox_schema=...` on the alembic command line;
    3. the `OUTBOX_TABLE` / `OUTBOX_SCHEMA` environment variables (shared with the relay);
    4. table `outbox` in the connection's default schema.
    """
    env = os.environ if environ is None else environ
    if check and config is not None:
        warn_about(config)
    attributes: Mapping[str, Any] = config.attributes if config is not None else {}
    x_args = _x_arguments(config)

    def pick(key: str, env_name: str) -> str | None:
        for source in (attributes, x_args):
            value = source.get(key)
            if value is not None:
                return str(value) or None
        return env.get(env_name) or None

    return Target(
        table=pick("outbox_table", "OUTBOX_TABLE") or DEFAULT_TABLE,
        schema=pick("outbox_schema", "OUTBOX_SCHEMA"),
    )


def current_target() -> Target:
    """The target of the running migration; called by the revision files."""
    from alembic import op

    return target(op.get_context().config, check=False)


def _x_arguments(config: Config | None) -> dict[str, str]:
    x = getattr(config.cmd_opts, "x", None) if config is not None else None
    pairs = (arg.partition("=") for arg in x or [])
    return {key: value for key, _, value in pairs}


def include_object_for(
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    also: IncludeObject | None = None,
) -> IncludeObject:
    """An `include_object` hook that hides the outbox tables from an application's autogenerate.

    The package's revisions own these tables (and the standalone version table), so the
    application's own revisions must never create, alter or drop them. `also` chains the
    application's own filter.
    """
    t = Target(table, schema)
    owned = {*t.tables, t.version_table}

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        table_obj = obj if type_ == "table" else getattr(obj, "table", None)
        if (
            table_obj is not None
            and getattr(table_obj, "name", None) in owned
            and getattr(table_obj, "schema", None) == t.schema
        ):
            return False
        return also(obj, name, type_, reflected, compare_to) if also is not None else True

    return include_object


def upgrade(
    db_url: str,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    sql: bool = False,
    revision: str = "heads",
) -> str:
    """Create or upgrade the outbox tables of `db_url` (what `outbox migrate` runs) and say
    what was done: ``created outbox, outbox_lease at revision 0001``, ``upgraded ...`` or
    ``already at revision 0001``.

    With `sql`, print the SQL instead of running it. Raises `ConfigurationError` with a
    one-line message for a malformed URL, an unreachable database or an invalid name.
    """
    return _run("upgrade", db_url, Target(table, schema), sql, revision)


def downgrade(
    db_url: str,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    sql: bool = False,
    revision: str = "base",
) -> str:
    """Undo the package's revisions down to `revision` (by default: drop the outbox tables)."""
    return _run("downgrade", db_url, Target(table, schema), sql, revision)


def _config(t: Target) -> Config:
    # No ini file: everything a standalone run needs is set here.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    config.attributes["outbox_table"] = t.table
    config.attributes["outbox_schema"] = t.schema or ""
    return config


def _run(action: str, db_url: str, t: Target, sql: bool, revision: str) -> str:
    url = parse_url(db_url)
    config = _config(t)
    step = getattr(command, action)
    if sql:
        config.attributes["url"] = url
        if action == "downgrade" and ":" not in revision:
            revision = f"heads:{revision}"
        alembic_call(lambda: step(config, revision, sql=True), url)
        return "printed the SQL"
    revisions: list[tuple[str, ...]] = []

    def migrate(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        revisions.append(_applied(connection, t))
        alembic_call(lambda: step(config, revision), url)
        revisions.append(_applied(connection, t))

    if url.get_dialect().is_async:
        # The relay's URL may name an asyncio driver: Alembic itself is synchronous.
        asyncio.run(_run_async(url, migrate))
        return _report(t, *revisions)
    engine = engine_for(url)
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise unreachable(url, exc) from None
        with connection, connection.begin():
            migrate(connection)
    finally:
        engine.dispose()
    return _report(t, *revisions)


def _applied(connection: sa.Connection, t: Target) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(
        connection, opts={"version_table": t.version_table, "version_table_schema": t.schema}
    )
    return tuple(sorted(context.get_current_heads()))


def _report(t: Target, before: tuple[str, ...], after: tuple[str, ...]) -> str:
    """What `outbox migrate` prints: the tables and the revision they are now at."""
    where = f"{t.schema}." if t.schema else ""
    tables = ", ".join(f"{where}{name}" for name in t.tables)
    now = ", ".join(after) or "base (no outbox tables)"
    if before == after:
        return f"{tables} already at revision {now}"
    if not before:
        return f"created {tables} at revision {now}"
    if not after:
        return f"dropped {tables} (was at revision {', '.join(before)})"
    return f"migrated {tables} from revision {', '.join(before)} to {now}"


async def _run_async(url: sa.URL, migrate: Callable[[sa.Connection], None]) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    try:
        engine = create_async_engine(url, poolclass=sa.NullPool)
    except (ImportError, ValueError) as exc:
        raise ConfigurationError(f"cannot use {url.drivername}: {exc}") from None
    try:
        try:
            connection = await engine.connect()
        except (sa.exc.DBAPIError, OSError) as exc:  # asyncpg lets OSError through
            raise unreachable(url, exc) from None
        try:
            async with connection.begin():
                await connection.run_sync(migrate)
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def run_env() -> None:
    """The body of the package's env.py (and of the project's dev environment).

    Uses `config.attributes["connection"]` when `upgrade()` passed one, else the URL from
    `config.attributes["url"]`, `-x db_url=...`, `OUTBOX_DB_URL` or `sqlalchemy.url`.
    """
    from alembic import context

    config = context.config
    t = target(config)
    options: dict[str, Any] = {
        "target_metadata": build_metadata(t.table, t.schema),
        "version_table": t.version_table,
        "version_table_schema": t.schema,
    }
    if context.is_offline_mode():
        context.configure(url=_env_url(config), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(_env_url(config), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _env_url(config: Config) -> sa.URL:
    url = config.attributes.get("url")
    if url is not None:
        return sa.make_url(url)
    given = (
        _x_arguments(config).get("db_url")
        or os.environ.get("OUTBOX_DB_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not given:
        raise ConfigurationError(
            "no database URL: pass -x db_url=..., set OUTBOX_DB_URL or sqlalchemy.url"
        )
    return parse_url(given)
