"""Every command's --help works and documents every option (and its environment variable)."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from outbox.cli import cli, parse_duration
from outbox.errors import ConfigurationError

pytestmark = pytest.mark.unit


def walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    expected = {
        "", "relay", "migrate", "status", "parked", "parked list", "parked requeue",
        "parked drop", "purge", "healthcheck", "demo",
    }  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "outbox" for p, _ in COMMANDS]
)
def test_help_mentions_every_option(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('cli', *path))}")
    # The command's own explanation, not just the option list.
    assert command.help and command.help.split("\n")[0].split()[0] in result.output
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts + param.secondary_opts:
                assert opt in result.output, f"{opt} missing from the help of {path}"
            envvar = param.envvar
            if isinstance(envvar, str):
                assert envvar in result.output, f"{envvar} missing from the help of {path}"
        else:
            assert (param.metavar or param.name or "").upper() in result.output.upper()
    if isinstance(command, click.Group):
        for name in command.commands:
            assert name in result.output


def test_relay_options_come_from_the_environment() -> None:
    relay = cli.commands["relay"]
    named = {p.name: p for p in relay.params if isinstance(p, click.Option)}
    without_env = sorted(n for n, p in named.items() if not p.envvar and n != "help")
    # -X has its own variables, OUTBOX_PRODUCER_<NAME>, read by RelayConfig.from_env.
    assert without_env == ["producer_config"]
    assert all(str(p.envvar).startswith("OUTBOX_") for p in named.values() if p.envvar)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("7d", 604800.0),
     ("1.5h", 5400.0), (" 1W ", 604800.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "3x", "1h30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_duration(text)
