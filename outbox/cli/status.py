"""`outbox status`: the backlog, the age of the oldest pending event, parked events, and the
fleet: which relay holds the lease (owner, epoch, since when, last renewal) and the live
standbys."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from outbox.cli._options import db_options, make_console, open_store

if TYPE_CHECKING:
    from rich.console import RenderableType

    from outbox.relay.records import LeaseInfo, Member, Status
    from outbox.relay.store import OutboxStore


# -- status --------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    from outbox.ops.logs import format_duration

    return "-" if seconds is None else format_duration(seconds)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `outbox status` shows, read at one moment."""

    status: Status
    lease: LeaseInfo | None
    relays: list[Member]

    @classmethod
    def read(cls, store: OutboxStore, lease_ttl: float) -> Snapshot:
        return cls(store.status(), store.lease_info(), store.live_relays(lease_ttl))

    @property
    def holder(self) -> str | None:
        return self.lease.owner if self.lease is not None and self.lease.held else None

    def as_dict(self) -> dict[str, Any]:
        standbys = [m.as_dict() for m in self.relays if m.relay_id != self.holder]
        return {
            **self.status.as_dict(),
            "lease": None if self.lease is None else self.lease.as_dict(),
            "relays_live": len(self.relays),
            "relays": [m.as_dict() | {"active": m.relay_id == self.holder} for m in self.relays],
            "standbys": standbys,
        }


def _status_table(snapshot: Snapshot, where: str) -> RenderableType:
    from rich.console import Group
    from rich.table import Table

    status = snapshot.status
    table = Table(title=f"table {where}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("pending events", str(status.pending))
    table.add_row("oldest pending event", _age(status.oldest_pending_age_seconds))
    failed = str(status.failed) if not status.failed else f"[red]{status.failed}[/red]"
    table.add_row("parked (failed) events", failed)
    lease = snapshot.lease
    if snapshot.holder is not None and lease is not None:
        table.add_row("active relay", lease.owner)
        table.add_row("lease epoch", str(lease.epoch))
        table.add_row("holding the lease for", _age(lease.held_for))
        table.add_row("last renewal", f"{_age(lease.renewed_ago)} ago")
        table.add_row("lease expires in", _age(lease.expires_in))
    else:
        epoch = f" (last epoch {lease.epoch})" if lease is not None else ""
        table.add_row("active relay", f"[red]none[/red]{epoch}")
    table.add_row("live relays", str(len(snapshot.relays)))
    table.caption = time.strftime("as of %H:%M:%S")
    if not snapshot.relays:
        return table
    relays = Table(title="relays", title_justify="left")
    for column in ("relay", "host", "pid", "mode", "role", "up for", "last beat"):
        relays.add_column(column, justify="right" if column in ("pid",) else "left")
    for m in snapshot.relays:
        role = "active" if m.relay_id == snapshot.holder else "standby"
        relays.add_row(
            m.relay_id,
            m.host,
            str(m.pid),
            m.mode,
            role,
            _age(_up_for(m)),
            f"{_age(m.silent_seconds)} ago",
        )
    return Group(table, relays)


def _up_for(member: Member) -> float:
    # Both timestamps by the database's clock: no relay's or this host's clock involved.
    return (member.heartbeat_at - member.started_at).total_seconds() + member.silent_seconds


@click.command()
@db_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C (with --json: one JSON object per line).",
)
@click.option(
    "--lease-ttl",
    envvar="OUTBOX_LEASE_TTL",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=6.0,
    show_default=True,
    metavar="SECONDS",
    help="The relays' lease TTL: a relay silent for longer is not listed as live.",
)
def status(
    db_url: str,
    table: str,
    schema: str | None,
    as_json: bool,
    watch: float | None,
    lease_ttl: float,
) -> None:
    """Show the backlog (pending events, the age of the oldest one, parked events) and the
    fleet (the active relay, its lease, the live relays).

    The JSON form has the keys pending, oldest_pending_age_seconds (null when nothing is
    pending), failed (parked events, see `outbox parked`), lease (owner, epoch,
    expires_in_seconds, held_for_seconds, renewed_seconds_ago; owner null when nobody holds
    it), relays_live, relays (each with relay_id, host, pid, mode, started_at, heartbeat_at,
    silent_seconds, active) and standbys (the live relays other than the active one).
    """
    try:
        with open_store(db_url, table, schema) as store:
            _show_status(store, as_json, watch, lease_ttl)
    except KeyboardInterrupt:
        if watch is None:
            raise
        # Ctrl-C is how a --watch ends: not an error.


def _show_status(store: OutboxStore, as_json: bool, watch: float | None, ttl: float) -> None:
    where = store.table.fullname
    if as_json:
        while True:
            click.echo(json.dumps(Snapshot.read(store, ttl).as_dict()))
            if watch is None:
                return
            time.sleep(watch)
    console = make_console()

    def render() -> RenderableType:
        return _status_table(Snapshot.read(store, ttl), where)

    if watch is None:
        console.print(render())
        return
    from rich.live import Live

    with Live(render(), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(watch)
            live.update(render(), refresh=True)
