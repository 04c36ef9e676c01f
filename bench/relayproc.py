"""Run `bench.relay_child` (one relay in its own process) from a scenario."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import sqlalchemy as sa

from bench import outboxdb
from bench.common import Context, unique

#: Relay settings every scenario uses on top of the defaults, by database.
POLL_INTERVAL = {"postgresql": None, "mariadb": 0.01, "sqlite": 0.01}


def relay_config(kind: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if POLL_INTERVAL.get(kind) is not None:
        config["poll_interval"] = POLL_INTERVAL[kind]
    config.update(overrides)
    return config


def spec(ctx: Context, url: str, kind: str, expect: int, **overrides: Any) -> str:
    return json.dumps(
        {
            "db_url": url,
            "bootstrap_servers": ctx.bootstrap_servers,
            "expect": expect,
            "config": relay_config(kind, **overrides),
        }
    )


def drain(ctx: Context, url: str, kind: str, expect: int) -> dict[str, Any]:
    """Run a relay until it published `expect` events; its JSON report."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.relay_child", spec(ctx, url, kind, expect)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"relay child failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def start(ctx: Context, url: str, kind: str) -> subprocess.Popen[str]:
    """A relay that runs until `stop`; returns once it is up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.relay_child", spec(ctx, url, kind, 0)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(60)


def backlog_drain(ctx: Context, kind: str, count: int) -> dict[str, Any]:
    """A fresh database with `count` pending events, drained by one relay; checks it emptied."""
    with ctx.database(kind) as url:
        table = outboxdb.create(url)
        outboxdb.fill(url, table, count, unique(f"bench-drain-{kind}"))
        outboxdb.vacuum(url, table)
        result = drain(ctx, url, kind, count)
        left = outboxdb.count(url, table)
        if left:
            raise RuntimeError(f"{left} events left in the outbox after the drain")
        return result


def engine(url: str) -> sa.Engine:
    return outboxdb.engine_for(url)
