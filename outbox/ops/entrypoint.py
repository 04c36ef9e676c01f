"""Running a command at the boundary: every error a user can cause becomes one line.

The console scripts (`outbox`, the demo's example application) run their click commands here, so
that a configuration mistake, an unreachable database or Ctrl-C prints `prog: error: ...` and
exits non-zero, never a traceback or a password. It lives apart from `outbox.cli` so that the
demo can use it without importing the command line (which imports the demo).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from outbox.errors import OutboxError
from outbox.ops.logs import mask_text


def database_error(exc: DBAPIError) -> str:
    """The first line of a driver's error, passwords masked."""
    text = str(exc.orig if exc.orig is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return mask_text(f"database error: {first}")


def run_command(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> Any:
    """Run a click command; a user's mistake becomes one line on stderr and a non-zero exit."""
    try:
        return command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        click.echo(f"{prog_name}: error: {message}", err=True)
        sys.exit(exc.exit_code)
    except OutboxError as exc:
        click.echo(f"{prog_name}: error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    except DBAPIError as exc:
        click.echo(f"{prog_name}: error: {database_error(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
