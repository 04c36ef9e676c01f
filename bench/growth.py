"""Scenario 5, growth: the drain rate and the relay's peak memory as the backlog grows.

On PostgreSQL, backlogs of 10k, 100k and 1M events (generated in SQL; only the drain is
measured), each drained by the shipped `outbox relay` command in its own process (timed from
outside, `bench.cliproc.watch_drain`), each on a fresh broker. The baseline is the 10k drain's
steady-state rate, from 10% to 90% of the backlog gone: a scan or a round trip that grows
with the table would show as a falling ratio. Peak memory is the relay process's VmHWM, read
when the table is empty.

The embedded broker itself slows down as it fills (kafka-python alone, a million messages into
a fresh one: 30.8k msg/s over the first 100k, 19.9k over the last, 2026-12-03). So kafka-python
alone sends the same number of messages into a fresh broker at each size too, and the relay's
ratio is also given against that: what is left is the relay's own cost of a larger backlog.
The relay's CPU per event and PostgreSQL's (all its processes) at each size say which side of
it grows.
"""

from __future__ import annotations

from typing import Any

from bench import ceiling, producer, relayproc
from bench.common import Context, make_events, scenario, unique

KIND = "postgresql"
#: The rate compared across sizes: from 10% to 90% of the backlog gone (`cliproc.watch_drain`),
#: where the batches in flight at either end cancel out, whatever the backlog's size.
STEADY = "steady state, 10% to 90% gone"


@scenario("growth", "Growth: drain rate and relay memory at 10k / 100k / 1M pending (PostgreSQL)")
def growth(ctx: Context) -> None:
    sizes = [10_000, 100_000, 1_000_000] if not ctx.quick else [10_000, 20_000, 50_000]
    # The smaller drains last a second or less, so one sample is mostly noise: the median of
    # several (the largest, a minute long, once).
    repeats = dict(zip(sizes, (ctx.repeats, min(3, ctx.repeats), 1), strict=True))
    ctx.fact("sizes", sizes)
    ctx.fact("samples", {f"{n:,}": repeats[n] for n in sizes})
    ctx.fact("database", KIND)
    results = {n: [_drain(ctx, n) for _ in range(repeats[n])] for n in sizes}
    _against_first(ctx, sizes, results, STEADY, "mid_rate", "events/s")
    _against_first(ctx, sizes, results, "kafka-python alone", "ceiling", "msg/s")
    first = sizes[0]
    for n in sizes[1:]:
        relay = ctx.figure(f"{n:,} pending: {STEADY}").ratio or 0.0
        alone = ctx.figure(f"{n:,} pending: kafka-python alone").ratio or 1.0
        ctx.record(
            f"{n:,} pending vs {first:,}: the relay's ratio over the broker's",
            [relay / alone],
            "x",
            headline=n == sizes[-1],
            note="steady-state ratio divided by kafka-python alone's ratio at the same sizes",
        )
    for n in sizes:
        rates = [r["rate"] for r in results[n]]
        ctx.record(f"{n:,} pending: start to last ack", rates, "events/s")
    _against_first(ctx, sizes, results, "relay peak RSS", "maxrss_mb", "MB")
    # Where a falling rate comes from: the relay's own CPU per event, and the database's (every
    # PostgreSQL process: the relay's backends, and the checkpoints, WAL and vacuum its deletes
    # cause), in the same steady state.
    _against_first(ctx, sizes, results, "relay CPU per event", "mid_cpu_us", "µs", False)
    _against_first(ctx, sizes, results, "PostgreSQL CPU per event", "db_mid_cpu_us", "µs", False)


def _drain(ctx: Context, count: int) -> dict[str, Any]:
    """One drain of `count` by the relay and one send of `count` by kafka-python alone, each
    on a fresh broker."""
    with ctx.fresh_broker():
        result = relayproc.backlog_drain(ctx, KIND, count)
    with ctx.fresh_broker():
        messages = make_events(unique("bench-growth-raw"), count)
        result["ceiling"] = producer.raw_producer(ctx, messages, ceiling.best_settings())[0]
    return result


def _against_first(
    ctx: Context,
    sizes: list[int],
    results: dict[int, list[dict[str, Any]]],
    label: str,
    field: str,
    unit: str,
    headline: bool = True,
) -> None:
    """Record `field` for every size, each later size against the first (the largest is the
    headline)."""
    base = f"{sizes[0]:,} pending: {label}"
    ctx.record(base, [r[field] for r in results[sizes[0]]], unit)
    for n in sizes[1:]:
        ctx.record(
            f"{n:,} pending: {label}",
            [r[field] for r in results[n]],
            unit,
            baseline=base,
            headline=headline and n == sizes[-1],
        )
