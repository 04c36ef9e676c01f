"""`python -m bench`: run the scenarios side by side, print a table, save the figures as JSON.

    python -m bench                 every scenario, full size
    python -m bench --quick         a small smoke run
    python -m bench --only producer one scenario (repeatable)
    python -m bench --json out.json also choose where the JSON goes

Without ``--bootstrap-servers`` every scenario, and every subject of the latency scenario, runs
on a fresh embedded broker (Tansu, in memory: it slows down as it fills); note that it shares
this machine's cores with the code being measured.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bench.common import SCENARIOS, Context, as_json

#: Modules whose import registers scenarios, in run order. Add yours here.
SCENARIO_MODULES: tuple[str, ...] = (
    "bench.ceiling",
    "bench.producer",
    "bench.latency",
    "bench.write_path",
    "bench.drain",
    "bench.growth",
    "bench.snapshot",
    "bench.scaleout",
    "bench.inbox",
)

RESULTS = Path(__file__).parent / "results"


def load_scenarios() -> None:
    for module in SCENARIO_MODULES:
        importlib.import_module(module)


def _commit() -> str:
    import subprocess

    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    )
    return out.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in (
        "sqlalchemy",
        "kafka-python",
        "crc32c",
        "psycopg",
        "pymysql",
        "txoutbox",
        "asyncpg",
    ):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def table(ctx: Context) -> Table:
    out = Table(title="sqlalchemy-outbox benchmark" + (" (quick)" if ctx.quick else ""))
    for column, justify in (
        ("scenario", "left"),
        ("figure", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("vs baseline", "right"),
        ("samples", "right"),
    ):
        out.add_column(column, justify=justify)
    for f in ctx.figures:
        ratio = "baseline" if f.baseline is None else f"{f.ratio:.2f}x" if f.ratio else "-"
        if f.headline:
            ratio = f"[bold]{ratio}[/bold]"
        out.add_row(
            f.scenario,
            f.name,
            f"{f.value:,.0f}" if abs(f.value) >= 100 else f"{f.value:.3g}",
            f.unit,
            ratio,
            ", ".join(f"{s:,.0f}" if abs(s) >= 100 else f"{s:.3g}" for s in f.samples),
        )
    return out


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes and one repeat: a smoke run.")
@click.option("--only", "only", multiple=True, metavar="NAME", help="Run only this scenario.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bootstrap-servers", envvar="OUTBOX_BENCH_KAFKA", help="Use this broker.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
def main(
    quick: bool,
    only: tuple[str, ...],
    json_path: Path | None,
    bootstrap_servers: str | None,
    list_only: bool,
) -> None:
    """Run the benchmark scenarios and report every figure against its same-run baseline."""
    load_scenarios()
    if list_only:
        for s in SCENARIOS:
            click.echo(f"{s.name:12} {s.title}")
        return
    unknown = sorted(set(only) - {s.name for s in SCENARIOS})
    if unknown:
        raise click.UsageError(
            f"unknown scenario(s) {', '.join(unknown)}; "
            f"choose from {', '.join(s.name for s in SCENARIOS)}"
        )
    selected = [s for s in SCENARIOS if not only or s.name in only]
    # kafka-python logs every refused connection at ERROR; the table is the output here.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    console = Console(width=max(Console().width, 110))
    started = datetime.now(UTC)
    # Without a broker given, each scenario starts its own embedded one (Context.fresh_broker).
    broker_kind = "embedded Tansu" if bootstrap_servers is None else "external"
    from tests.support import MYSQL_BASE, PG_BASE

    ctx = Context(
        bootstrap_servers or "",
        quick,
        PG_BASE,
        MYSQL_BASE,
        embedded_broker=broker_kind == "embedded Tansu",
    )
    for s in selected:
        ctx.current = s.name
        # Each scenario on an empty embedded broker: what one stored does not slow the next.
        with console.status(f"{s.name}: {s.title}"), ctx.fresh_broker():
            began = time.perf_counter()
            # The machine is shared: the load (1, 5, 15-minute averages) goes with the figures.
            ctx.fact("load average before", [round(x, 2) for x in os.getloadavg()])
            try:
                s.run(ctx)
            except RuntimeError as error:
                # A scenario that cannot run here (no root for the wire tap, a relay that
                # died): one line, not a traceback.
                raise click.ClickException(f"{s.name}: {error}") from None
            ctx.fact("seconds", round(time.perf_counter() - began, 1))
            ctx.fact("load average after", [round(x, 2) for x in os.getloadavg()])
    console.print(table(ctx))
    meta = {
        "started_at": started.isoformat(),
        "commit": _commit(),
        "quick": quick,
        "scenarios": [s.name for s in selected],
        "broker": broker_kind,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "versions": versions(),
        },
    }
    path = json_path or RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(as_json(ctx, meta) + "\n")
    console.print(f"figures saved to {path}")


if __name__ == "__main__":
    main()
