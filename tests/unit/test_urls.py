"""`outbox._urls`: the URL every command connects with, and the hints (no I/O)."""

from __future__ import annotations

import pytest

from outbox._urls import install_hint, resolve_db_url
from outbox.errors import ConfigurationError


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql+asyncpg://u:pw@db/app", "postgresql+psycopg://u:***@db/app"),
        ("postgresql+psycopg_async://u@db/app", "postgresql+psycopg://u@db/app"),
        ("sqlite+aiosqlite:///shop.db", "sqlite+pysqlite:///shop.db"),
        ("mysql+aiomysql://root@db/app", "mysql+pymysql://root@db/app"),
        ("mysql+asyncmy://root@db/app", "mysql+pymysql://root@db/app"),
    ],
)
def test_asyncio_drivers_map_to_their_sync_counterpart(given: str, used: str) -> None:
    resolved = resolve_db_url(given, must_exist=False)
    assert resolved.url.render_as_string(hide_password=True) == used
    assert resolved.note is not None and used in resolved.note
    assert "pw" not in resolved.note


def test_sync_urls_pass_unchanged_and_async_ones_can_stay() -> None:
    assert resolve_db_url("postgresql+psycopg://u@db/app").note is None
    kept = resolve_db_url("postgresql+asyncpg://u@db/app", allow_async=True)
    assert (kept.url.drivername, kept.note) == ("postgresql+asyncpg", None)


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("postgres://u:pw@db/app", ["'postgresql'", "postgresql://u:***@db/app"]),
        ("mysql://root@db/app", ["mysql+pymysql://", "sqlalchemy-outbox[mysql]"]),
        ("mariadb://root@db/app", ["mariadb+pymysql://", "sqlalchemy-outbox[mysql]"]),
        ("postgresql+pg8000://u@db/app", ["pg8000", "not installed"]),
        ("nosuch://x/y", ["unknown database dialect"]),
    ],
)
def test_hints(url: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_db_url(url)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert "pw" not in str(caught.value)


def test_install_hints_name_the_extra() -> None:
    assert install_hint("psycopg", "postgresql") == "pip install 'sqlalchemy-outbox[postgresql]'"
    assert install_hint("psycopg2", "postgresql") == "pip install 'sqlalchemy-outbox[psycopg2]'"
    assert install_hint("pymysql", "mysql") == "pip install 'sqlalchemy-outbox[mysql]'"
    assert install_hint("asyncpg", "postgresql") == "pip install 'sqlalchemy-outbox[asyncio]'"
