"""The package's Alembic revisions: standalone, inside a user's environment, and from a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
import zipfile
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import alembic as alembic_package
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from outbox.migrate import build_metadata, downgrade, upgrade
from tests.support import async_url, fresh_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OUTBOX_TABLES = {"outbox", "outbox_lease", "outbox_relays", "outbox_snapshot"}
#: The head revision of the package's branch.
HEAD = "outbox_0004"


@contextmanager
def engine_for(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def differences(url: str, metadata: sa.MetaData, schemas: set[str | None]) -> list[Any]:
    """What autogenerate would change to make the database match `metadata`."""

    def include_name(name: str | None, type_: str, parent: Any) -> bool:
        return type_ != "schema" or name in schemas

    def include_object(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
        # The version tables are Alembic's, not the model's.
        return not (type_ == "table" and str(name).startswith("alembic_version"))

    with engine_for(url) as engine, engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_schemas": schemas != {None},
                "include_name": include_name,
                "include_object": include_object,
            },
        )
        return list(compare_metadata(context, metadata))


def snapshot(url: str) -> dict[str, Any]:
    """The outbox tables as the database itself reports them (catches what autogenerate
    misses, such as MariaDB's DATETIME precision)."""
    out: dict[str, Any] = {}
    with engine_for(url) as engine, engine.connect() as conn:
        inspector = sa.inspect(conn)
        for name in sorted(OUTBOX_TABLES):
            columns = [
                (c["name"], str(c["type"].compile(engine.dialect)), c["nullable"], c["default"])
                for c in inspector.get_columns(name)
            ]
            ddl: Any = None
            if engine.dialect.name == "sqlite":  # AUTOINCREMENT shows only here
                rows = conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE tbl_name = ? ORDER BY name", (name,)
                ).all()
                # A table copied by batch mode (revision 0002) is renamed into place, and
                # SQLite then stores its name quoted: the same table.
                ddl = [
                    (None if sql is None else sql.replace(f'"{name}"', name),) for (sql,) in rows
                ]
            out[name] = (
                columns,
                inspector.get_pk_constraint(name),
                sorted(inspector.get_unique_constraints(name), key=lambda u: str(u["name"])),
                sorted(inspector.get_indexes(name), key=lambda i: str(i["name"])),
                ddl,
            )
    return out


def tables(url: str, schema: str | None = None) -> set[str]:
    with engine_for(url) as engine:
        return set(sa.inspect(engine).get_table_names(schema=schema))


def test_revisions_create_exactly_the_model_and_downgrade_removes_it(
    db_url: str, tmp_path: Path
) -> None:
    upgrade(db_url)

    assert tables(db_url) == OUTBOX_TABLES | {"alembic_version_outbox"}
    assert differences(db_url, build_metadata(), {None}) == []
    kind = sa.make_url(db_url).get_backend_name().replace("mysql", "mariadb")
    with fresh_database(kind, str(tmp_path)) as model_url:
        with engine_for(model_url) as engine:
            build_metadata().create_all(engine)
        assert snapshot(db_url) == snapshot(model_url)
    with engine_for(db_url) as engine, engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version_outbox").all() == [
            (HEAD,)
        ]
    upgrade(db_url)  # already at head: nothing to do

    downgrade(db_url)
    assert tables(db_url) == {"alembic_version_outbox"}


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_custom_table_in_another_schema_beside_the_default_one(
    kind: str, pg_url: str, mariadb_url: str
) -> None:
    url = pg_url if kind == "postgresql" else mariadb_url
    schema = f"obx_s_{uuid.uuid4().hex[:8]}"
    # On MariaDB a schema is another database: drop it afterwards.
    with engine_for(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE {'SCHEMA' if kind == 'postgresql' else 'DATABASE'} {schema}")
    try:
        upgrade(url)
        upgrade(url, table="events", schema=schema)
        upgrade(url, table="audit")  # a second outbox table in the same schema

        expected = build_metadata()
        for other in (build_metadata("events", schema), build_metadata("audit")):
            for table in other.tables.values():
                table.to_metadata(expected)
        assert differences(url, expected, {None, schema}) == []
        assert tables(url, schema) == {
            "events",
            "events_lease",
            "events_relays",
            "events_snapshot",
            "alembic_version_events",
        }
        assert "alembic_version_audit" in tables(url)

        downgrade(url, table="events", schema=schema)
        assert tables(url, schema) == {"alembic_version_events"}
        assert OUTBOX_TABLES | {"audit", "audit_lease", "audit_relays", "audit_snapshot"} <= tables(
            url
        )
    finally:
        with engine_for(url) as engine, engine.begin() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            else:
                conn.exec_driver_sql(f"DROP DATABASE {schema}")


def test_asyncio_driver_url_is_accepted(pg_url: str) -> None:
    upgrade(async_url(pg_url))  # the relay's URL may name asyncpg
    assert tables(pg_url) == OUTBOX_TABLES | {"alembic_version_outbox"}


USER_MODEL = """
import sqlalchemy as sa

metadata = sa.MetaData()
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
)
"""

USER_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "app_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )


def downgrade():
    op.drop_table("orders")
"""

# What docs/MIGRATIONS.md tells users to write.
USER_ENV = """
import os

import sqlalchemy as sa
from alembic import context

import app_models
from outbox.migrate import build_metadata, include_object_for, target

config = context.config
outbox = target(config)  # -x outbox_table=... / OUTBOX_TABLE, like the relay
target_metadata = [app_models.metadata, build_metadata(outbox.table, outbox.schema)]

engine = sa.create_engine(os.environ["APP_DB_URL"], poolclass=sa.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object_for(outbox.table, outbox.schema),
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

USER_INI = """
[alembic]
script_location = %(here)s/alembic
prepend_sys_path = %(here)s
path_separator = space
version_locations = %(here)s/alembic/versions outbox:migrations/versions
"""


def alembic(app: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APP_DB_URL": url}
    env.pop("OUTBOX_TABLE", None)
    env.pop("OUTBOX_SCHEMA", None)
    return subprocess.run(
        [str(BIN / "alembic"), "-c", str(app / "alembic.ini"), *args],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def test_users_own_alembic_environment(db_url: str, tmp_path: Path) -> None:
    app = tmp_path / "app"
    versions = app / "alembic" / "versions"
    versions.mkdir(parents=True)
    (app / "alembic.ini").write_text(USER_INI)
    (app / "app_models.py").write_text(USER_MODEL)
    (app / "alembic" / "env.py").write_text(USER_ENV)
    (app / "alembic" / "script.py.mako").write_text(
        (Path(alembic_package.__file__).parent / "templates/generic/script.py.mako").read_text()
    )
    (versions / "app_0001.py").write_text(USER_REVISION)

    alembic(app, db_url, "-x", "outbox_table=events", "upgrade", "heads")

    assert tables(db_url) == {
        "orders",
        "events",
        "events_lease",
        "events_relays",
        "events_snapshot",
        "alembic_version",
    }
    with engine_for(db_url) as engine, engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert sorted(r[0] for r in rows) == sorted([HEAD, "app_0001"])

    # The user's next revision: in their own folder, proposing nothing about the outbox.
    alembic(
        app, db_url, "-x", "outbox_table=events",
        "revision", "--autogenerate", "--head", "app_0001", "--rev-id", "app_0002", "-m", "next",
    )  # fmt: skip
    written = (versions / "app_0002_next.py").read_text()
    assert "events" not in written
    assert not any(f"op.{verb}" in written for verb in ("create", "drop", "alter", "add"))

    alembic(app, db_url, "-x", "outbox_table=events", "upgrade", "heads")
    with engine_for(db_url) as engine, engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert sorted(r[0] for r in rows) == sorted([HEAD, "app_0002"])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    return subprocess.run(
        [str(BIN / "outbox"), "migrate", *args], capture_output=True, text=True, env=env
    )


def test_cli_migrate_creates_the_tables_and_prints_sql(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    done = run_cli("--db-url", url, "--table", "events")
    assert done.returncode == 0, done.stderr
    assert tables(url) == {
        "events",
        "events_lease",
        "events_relays",
        "events_snapshot",
        "alembic_version_events",
    }

    # Offline: SQL only, so an unreachable server is fine.
    sql = run_cli(
        "--db-url", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "--schema", "s1", "--sql"
    )  # fmt: skip
    assert sql.returncode == 0, sql.stderr
    assert "CREATE TABLE s1.outbox (" in sql.stdout
    assert "CREATE TABLE s1.alembic_version_outbox" in sql.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--db-url", "not a url"], "malformed database URL"),
        (["--db-url", "nosuchdb://h/x"], "unknown database dialect"),
        (["--db-url", "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"], "on host 127.0.0.1"),
        (["--db-url", "sqlite:///x.db", "--table", "bad-name"], "invalid table name"),
        (["--db-url", "sqlite:///x.db", "--schema", "a;b"], "invalid schema name"),
    ],
)
def test_cli_migrate_bad_input_is_one_line(args: list[str], expected: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("outbox: error:")
    assert expected in lines[0]
    assert "s3cret" not in done.stderr


def test_installed_wheel_carries_the_revisions(tmp_path: Path) -> None:
    dist, site = tmp_path / "dist", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "outbox/migrations/env.py" in names
    assert "outbox/migrations/versions/0001_outbox_tables.py" in names
    assert "outbox/migrations/versions/0002_relay_members.py" in names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True,
        capture_output=True,
    )
    url = f"sqlite:///{tmp_path}/wheel.db"
    script = textwrap.dedent(f"""
        import outbox, outbox.migrate
        from alembic.util import coerce_resource_to_filename
        assert outbox.__file__.startswith({str(site)!r}), outbox.__file__
        found = coerce_resource_to_filename(outbox.migrate.VERSION_LOCATION)
        assert str(found).startswith({str(site)!r}), found
        outbox.migrate.upgrade({url!r})
    """)
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
    )
    assert tables(url) == OUTBOX_TABLES | {"alembic_version_outbox"}


def test_project_dev_environment_has_no_pending_diff(tmp_path: Path) -> None:
    config = Config(
        str(ROOT / "migrations" / "alembic.ini"),
        cmd_opts=Namespace(x=[f"db_url=sqlite:///{tmp_path}/dev.db"]),
    )
    command.upgrade(config, "heads")
    command.check(config)  # raises when autogenerate finds a difference
