"""Scenario 2, the relay drain: a backlog of pending events drained by one relay, per database.

The baseline is kafka-python alone sending the same number of messages of the same shape
(`bench.producer.raw_producer`), measured in the same run, interleaved with the drains. The
relay runs in its own process, as a sidecar does. Two figures per database: the rate from
building the relay (connecting to both sides included) to the last acknowledgement, and the
steady-state rate between the first and the last acknowledgement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import relayproc
from bench.common import Context, interleaved, make_events, scenario, unique
from bench.producer import raw_producer

DATABASES = ("postgresql", "mariadb", "sqlite")


@scenario("drain", "Relay drain: a 100k backlog, one relay, vs kafka-python alone")
def drain(ctx: Context) -> None:
    count = ctx.size(full=100_000, quick=10_000)
    repeats = 1 if ctx.quick else 3
    ctx.fact("backlog", count)
    ctx.fact("poll_interval", {k: v for k, v in relayproc.POLL_INTERVAL.items() if v})
    baseline = "kafka-python alone"
    subjects: dict[str, Callable[[], Any]] = {
        baseline: lambda: raw_producer(ctx, make_events(unique("bench-drain-raw"), count))[0]
    }
    for kind in DATABASES:
        subjects[kind] = lambda kind=kind: relayproc.backlog_drain(ctx, kind, count)
    samples = interleaved(subjects, repeats)
    ctx.record(baseline, samples[baseline], "msg/s", note="same messages, send all then flush")
    for kind in DATABASES:
        runs = samples[kind]
        ctx.record(
            f"{kind}: relay start to last ack",
            [r["rate"] for r in runs],
            "events/s",
            baseline=baseline,
            headline=kind == "postgresql",
        )
        ctx.record(
            f"{kind}: steady state",
            [r["steady_rate"] for r in runs],
            "events/s",
            baseline=baseline,
        )
        ctx.fact(f"{kind}_first_ack_s", [round(r["first_ack_s"], 2) for r in runs])
        ctx.fact(f"{kind}_maxrss_mb", [round(r["maxrss_mb"], 1) for r in runs])
