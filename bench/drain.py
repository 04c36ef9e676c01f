"""Scenario 2, the relay drain: a backlog of pending events drained by the shipped `outbox relay`
command (its own process, its defaults, default logging), against the true ceiling and txoutbox.

The baseline is kafka-python alone with the ceiling scenario's best settings (`bench.ceiling`)
sending the same number of messages of the same shape, in the same run, interleaved with the
drains. txoutbox drains the same backlog (its own table, the same records) on the same database
server and broker. Two figures per subject: process start (connecting, imports included) to the
table empty, and the steady state from the first deletion to the table empty, both timed from
outside (`bench.cliproc.watch_drain`). MariaDB and SQLite drains run in full runs only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import ceiling, peer, producer, relayproc
from bench.common import Context, interleaved, make_events, scenario, unique
from bench.producer import raw_producer

BASELINE = "kafka-python alone, ceiling settings"
RELAY = "postgresql: outbox relay"


@scenario("drain", "Drain: a 100k backlog, `outbox relay` vs the ceiling and txoutbox")
def drain(ctx: Context) -> None:
    count = ctx.size(full=100_000, quick=20_000)
    repeats = 1 if ctx.quick else 3
    settings = ceiling.best_settings()
    ctx.fact("backlog", count)
    ctx.fact("ceiling_settings", settings)
    ctx.fact("poll_interval", {k: v for k, v in relayproc.POLL_INTERVAL.items() if v})

    def ceiling_sample() -> dict[str, float]:
        rate = raw_producer(ctx, make_events(unique("bench-drain-raw"), count), settings)[0]
        return {"rate": rate, "cpu_us": producer.last_cpu_us}

    subjects: dict[str, Callable[[], Any]] = {
        BASELINE: ceiling_sample,
        RELAY: lambda: relayproc.backlog_drain(ctx, "postgresql", count),
    }
    # txoutbox drains a smaller backlog in full runs (its rate does not depend on the size: each
    # claim is an indexed LIMIT), or its defaults' sample alone would take a minute.
    peer_count = min(count, 30_000)
    ctx.fact("txoutbox backlog", peer_count)
    for name, config in peer.CONFIGS.items():
        subjects[name] = lambda config=config: peer.backlog_drain(
            ctx, peer_count, config, unique("bench-drain-txoutbox")
        )
    # Every sample on a fresh broker: the embedded one slows down as it fills (bench.growth).
    fresh = {name: _on_fresh_broker(ctx, run) for name, run in subjects.items()}
    samples = interleaved(fresh, repeats)
    if not ctx.quick:
        for kind in ("mariadb", "sqlite"):
            drain_on = _on_fresh_broker(
                ctx, lambda kind=kind: relayproc.backlog_drain(ctx, kind, count)
            )  # type: ignore[misc]
            samples[f"{kind}: outbox relay"] = [drain_on()]
    ctx.record(BASELINE, [r["rate"] for r in samples[BASELINE]], "msg/s", note=str(settings))
    cpu_base = f"{BASELINE}: CPU per message"
    ctx.record(cpu_base, [r["cpu_us"] for r in samples[BASELINE]], "µs")
    for name, runs in samples.items():
        if name == BASELINE:
            continue
        ctx.record(
            f"{name}: start to empty",
            [r["rate"] for r in runs],
            "events/s",
            baseline=BASELINE,
        )
        ctx.record(
            f"{name}: steady state",
            [r["steady_rate"] for r in runs],
            "events/s",
            baseline=BASELINE,
            headline=name == RELAY,
        )
        ctx.record(
            f"{name}: CPU per event, steady state",
            [r["steady_cpu_us"] for r in runs],
            "µs",
            baseline=cpu_base,
        )
        ctx.fact(f"{name}: first deletion (s)", [round(r["first_ack_s"], 2) for r in runs])
        ctx.fact(f"{name}: peak RSS (MB)", [round(r["maxrss_mb"], 1) for r in runs])
        ctx.fact(
            f"{name}: process CPU per event (us)",
            [round(r["cpu_s"] / r["events"] * 1e6, 1) for r in runs],
        )
    best_peer = max(peer.CONFIGS, key=lambda n: ctx.figure(f"{n}: steady state").value)
    relay_cpu = ctx.figure(f"{RELAY}: CPU per event, steady state").value
    ctx.record(
        f"{RELAY}: ceiling CPU per message / relay CPU per event",
        [ctx.figure(cpu_base).value / relay_cpu] if relay_cpu else [0.0],
        "x",
        note="the rate ratio's load-independent companion (both are CPU-bound)",
    )
    relay_rate = ctx.figure(f"{RELAY}: steady state").value
    ctx.record(
        f"relay vs {best_peer} (steady state)",
        [relay_rate / ctx.figure(f"{best_peer}: steady state").value],
        "x",
        headline=True,
    )


def _on_fresh_broker(ctx: Context, run: Callable[[], Any]) -> Callable[[], Any]:
    def fresh() -> Any:
        with ctx.fresh_broker():
            return run()

    return fresh
