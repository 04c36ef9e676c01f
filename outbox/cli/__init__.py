"""The `outbox` command line: one module per command group, registered on one click group.

Every option can also come from an ``OUTBOX_*`` environment variable (shown in ``--help``); a
flag wins over the environment. Kafka producer settings pass through as ``-X name=value`` or
``OUTBOX_PRODUCER_<NAME>``. A user's mistake prints one line, ``outbox: error: ...``, on stderr
and exits non-zero (`outbox.ops.entrypoint.run_command`); it never prints a traceback or a
database password. A new command group goes in its own module here and is added below.
"""

from __future__ import annotations

from typing import Any

import click

from outbox.cli._options import CONTEXT, parse_duration
from outbox.cli.demo import demo
from outbox.cli.maintenance import healthcheck, migrate, purge
from outbox.cli.parked import parked
from outbox.cli.relay import relay
from outbox.cli.snapshot import snapshot
from outbox.cli.status import status
from outbox.ops.entrypoint import run_command


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="sqlalchemy-outbox", prog_name="outbox")
def cli() -> None:
    """Transactional outbox for SQLAlchemy: migrate the outbox table, relay it to Kafka, and
    inspect or repair it.

    \b
    Typical use:
      outbox migrate --db-url URL                  create or upgrade the outbox tables
      outbox relay --db-url URL --bootstrap-servers kafka:9092
      outbox status --db-url URL                   backlog and parked events
      outbox parked list --db-url URL              events the broker rejected for good
      outbox snapshot run --db-url URL --app APP --model MODEL   existing rows as events
      outbox demo                                  the whole flow on this machine

    Every option can also be set with an environment variable (OUTBOX_DB_URL, OUTBOX_TABLE,
    ...; see each command's --help); a flag wins over the environment. Mistakes print one line,
    "outbox: error: ...", on stderr and exit with a non-zero code.
    """


for _command in (migrate, relay, status, parked, purge, healthcheck, demo, snapshot):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: a user's mistake becomes one line on stderr and exit code 2."""
    return run_command(cli, argv, "outbox")


__all__ = ["cli", "main", "parse_duration", "run_command"]
