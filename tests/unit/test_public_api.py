"""The public surface, pinned: what users import and the commands they type.

A change here is a change for every user: add to the pinned sets deliberately, and give a removed
or renamed name a deprecation path in the README first.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import outbox
from outbox.cli import cli

PUBLIC = {
    "BrokerUnavailableError",
    "CaptureBypassedWarning",
    "ConfigurationError",
    "Delivery",
    "Event",
    "EventRejectedError",
    "EventSource",
    "InMemoryPublisher",
    "LeaseLostError",
    "Message",
    "NotInstalledError",
    "Outbox",
    "OutboxError",
    "ParkedEvent",
    "PayloadError",
    "PendingEvent",
    "PublishError",
    "Publisher",
    "RelayConfig",
    "SnapshotError",
    "SnapshotResult",
    "Status",
    "TableMissingError",
    "fix_sqlite_transactions",
}

COMMANDS = {
    "demo": set(),
    "healthcheck": set(),
    "migrate": set(),
    "parked": {"drop", "list", "requeue"},
    "purge": set(),
    "relay": set(),
    "snapshot": {"cancel", "run", "status"},
    "status": set(),
}


def test_exported_members() -> None:
    assert set(outbox.__all__) == PUBLIC
    for name in outbox.__all__:
        member = getattr(outbox, name)
        # Every public name is defined inside the package (re-exported, not a third party's).
        assert getattr(member, "__module__", "outbox").startswith("outbox"), name


def test_private_modules_are_not_exported() -> None:
    assert not {name for name in outbox.__all__ if name.startswith("_")}


def test_documented_import_paths() -> None:
    from outbox.migrate import include_object_for, run_env, upgrade
    from outbox.relay import Relay
    from outbox.testing import OutboxRecorder, RecordedEvent, record_events

    assert Relay.__name__ == "Relay"
    assert callable(OutboxRecorder) and callable(RecordedEvent) and callable(record_events)
    assert callable(include_object_for) and callable(run_env) and callable(upgrade)
    for module in (
        "outbox.relay",
        "outbox.write",
        "outbox.kafka",
        "outbox.migrate",
        "outbox.testing",
    ):
        assert importlib.import_module(module).__all__


def test_console_script_commands() -> None:
    import click

    found = {
        name: set(command.commands) if isinstance(command, click.Group) else set()
        for name, command in cli.commands.items()
    }
    assert found == COMMANDS


def test_alembic_location_ships_in_the_package() -> None:
    from alembic.util import coerce_resource_to_filename

    from outbox.schema.migrate import VERSION_LOCATION

    assert VERSION_LOCATION == "outbox:migrations/versions"
    versions = Path(coerce_resource_to_filename(VERSION_LOCATION))
    assert any(p.name.startswith("0001_") for p in versions.iterdir())


def test_pytest_plugin_entry_point() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    plugins = pyproject["project"]["entry-points"]["pytest11"]
    assert plugins == {"outbox": "outbox.testing"}
    plugin = importlib.import_module(plugins["outbox"])
    assert callable(plugin.outbox_events)
