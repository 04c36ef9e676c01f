"""Which table the revisions act on, and what the autogenerate filter hides. No I/O."""

from __future__ import annotations

from argparse import Namespace

import pytest
import sqlalchemy as sa
from alembic.config import Config

from outbox.errors import ConfigurationError
from outbox.migrate import Target, build_metadata, include_object_for, target, upgrade

pytestmark = pytest.mark.unit


def config(x: list[str] | None = None, **attributes: str) -> Config:
    cfg = Config(cmd_opts=Namespace(x=x))
    cfg.attributes.update(attributes)
    return cfg


def test_target_precedence_attributes_then_x_then_environment() -> None:
    env = {"OUTBOX_TABLE": "env_t", "OUTBOX_SCHEMA": "env_s"}
    assert target(config(), {}) == Target("outbox", None)
    assert target(config(), env) == Target("env_t", "env_s")
    assert target(config(["outbox_table=x_t"]), env) == Target("x_t", "env_s")
    both = config(["outbox_table=x_t", "outbox_schema=x_s"], outbox_table="a_t")
    assert target(both, env) == Target("a_t", "x_s")
    # An explicit empty schema means the default schema, whatever the environment says.
    assert target(config(outbox_schema=""), env) == Target("env_t", None)


@pytest.mark.parametrize("x", [["outbox_table=bad-name"], ["outbox_schema=a;b"]])
def test_target_refuses_names_that_are_not_identifiers(x: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="invalid"):
        target(config(x), {})


def test_version_table_is_per_table_and_fits_an_identifier() -> None:
    assert Target("outbox").version_table == "alembic_version_outbox"
    long_a, long_b = "a" * 56 + "x", "a" * 56 + "y"
    assert len(Target(long_a).version_table) <= 63
    assert Target(long_a).version_table != Target(long_b).version_table


def test_include_object_hides_only_this_outbox() -> None:
    include = include_object_for("events", "s1")
    mine = build_metadata("events", "s1").tables
    other_schema = build_metadata("events", None).tables
    app = sa.Table("orders", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))

    assert not include(mine["s1.events"], "events", "table", True, None)
    assert not include(mine["s1.events_lease"], "events_lease", "table", False, None)
    assert not include(mine["s1.events_relays"], "events_relays", "table", False, None)
    version = sa.Table("alembic_version_events", sa.MetaData(), schema="s1")
    assert not include(version, "alembic_version_events", "table", True, None)
    index = next(iter(mine["s1.events"].indexes))
    assert not include(index, index.name, "index", True, None)
    assert include(other_schema["events"], "events", "table", True, None)
    assert include(app, "orders", "table", True, None)


def test_include_object_chains_the_applications_filter() -> None:
    include = include_object_for(also=lambda obj, name, *_: name != "legacy")
    assert not include(sa.Table("legacy", sa.MetaData()), "legacy", "table", True, None)
    assert include(sa.Table("orders", sa.MetaData()), "orders", "table", True, None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "malformed database URL"),
        ("nosuchdialect://host/db", "unknown database dialect"),
    ],
)
def test_upgrade_refuses_bad_urls_before_connecting(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        upgrade(url)
