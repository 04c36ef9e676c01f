"""Scenario 0, the true ceiling: kafka-python alone with the best producer settings found here.

The relay's messages (300-byte JSON, five headers, 1,000 keys), acks=all and idempotent as the
relay's must be, sent by one kafka-python producer with no outbox code in the loop, for a grid
of `linger_ms` and `batch_size` (every other setting the relay's default). The fastest cell's
median is this run's ceiling; the drain scenario measures its kafka-python baseline with those
settings (`best_settings`), so every relay figure is a ratio to the physical limit of one
kafka-python process on this machine, in the same run.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from typing import Any

from bench.common import Context, interleaved, make_events, scenario, unique
from bench.producer import raw_producer

LINGER_MS = (0, 2, 5, 10)
BATCH_SIZE = (65_536, 262_144, 1_048_576)
#: What the sweep found best on this machine (round 2); used when the sweep did not run.
TUNED: dict[str, Any] = {"linger_ms": 5, "batch_size": 262_144}

_best: dict[str, Any] | None = None


def best_settings() -> dict[str, Any]:
    """The settings of this run's fastest cell, or `TUNED` if the ceiling did not run."""
    return dict(_best if _best is not None else TUNED)


def _label(settings: dict[str, Any]) -> str:
    return f"linger_ms={settings['linger_ms']} batch_size={settings['batch_size'] // 1024}K"


@scenario("ceiling", "True ceiling: kafka-python alone, linger_ms x batch_size, acks=all")
def ceiling(ctx: Context) -> None:
    global _best
    count = ctx.size(full=30_000, quick=10_000)
    repeats = 1 if ctx.quick else 3
    messages = make_events(unique("bench-ceiling"), count)
    grid = [
        {"linger_ms": linger, "batch_size": batch}
        for linger, batch in itertools.product(LINGER_MS, BATCH_SIZE)
    ]
    ctx.fact("messages", count)
    ctx.fact("grid", [_label(g) for g in grid])
    subjects: dict[str, Callable[[], float]] = {
        _label(g): (lambda g=g: raw_producer(ctx, messages, g)[0])  # type: ignore[misc]
        for g in grid
    }
    samples = interleaved(subjects, repeats)
    medians = {name: statistics.median(runs) for name, runs in samples.items()}
    best_name = max(medians, key=medians.__getitem__)
    _best = next(g for g in grid if _label(g) == best_name)
    default = "the relay's producer defaults"
    subjects_default = {default: lambda: raw_producer(ctx, messages, {})[0]}
    samples.update(interleaved(subjects_default, repeats))
    ctx.record(f"best: {best_name}", samples[best_name], "msg/s", note="the ceiling")
    for name, runs in samples.items():
        if name != best_name:
            ctx.record(name, runs, "msg/s", baseline=f"best: {best_name}")
    ctx.fact("best", _best)
