"""Scenario 1, the producer ceiling: kafka-python alone versus the same messages via KafkaPublisher.

The baseline is what the relay can never beat: one kafka-python producer sending every message
and then flushing, with no outbox code in the loop. It uses the publisher's producer settings
(acks=all, idempotent, linger_ms=0 ...), so the only difference measured is the wrapper. The
publisher is measured on the same messages, as one call and in relay-sized calls waited on in
turn (what the relay does between reading and marking a batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaProducer

from bench.common import Context, interleaved, make_events, scenario, unique
from outbox.kafka import DEFAULT_PRODUCER_SETTINGS, KafkaPublisher
from outbox.relay.publisher import Message

#: The relay's default batch size (RelayConfig.batch_size).
RELAY_BATCH = 1000

#: (messages per second end to end, microseconds per message spent in the send loop)
Sample = tuple[float, float]


def raw_producer(
    ctx: Context, messages: list[Message], settings: Mapping[str, Any] | None = None
) -> Sample:
    """kafka-python alone: send every message, then flush. `settings` on top of the relay's
    producer defaults (the ceiling scenario passes its tuned ones)."""
    producer = KafkaProducer(
        bootstrap_servers=ctx.bootstrap_servers, **{**DEFAULT_PRODUCER_SETTINGS, **(settings or {})}
    )
    try:
        producer.send(messages[0].topic, b"warm-up", key=b"warm-up").get(30)
        # Headers become lists outside the timed loop: the relay builds lists too.
        sends = [(m.topic, m.value, m.key, list(m.headers), m.timestamp_ms) for m in messages]
        send = producer.send
        cpu = time.process_time()
        started = time.perf_counter()
        for topic, value, key, headers, timestamp_ms in sends:
            send(topic, value, key, headers, None, timestamp_ms)
        sent = time.perf_counter()
        producer.flush()
        done = time.perf_counter()
        # This process's CPU (the send loop and kafka-python's sender thread) per message.
        global last_cpu_us
        last_cpu_us = (time.process_time() - cpu) / len(messages) * 1e6
    finally:
        producer.close(5)
    return len(messages) / (done - started), (sent - started) / len(messages) * 1e6


#: CPU per message of the last `raw_producer` run (µs), for the drain's CPU comparison.
last_cpu_us = 0.0


def publisher(ctx: Context, messages: list[Message], batch: int) -> Sample:
    pub = KafkaPublisher(ctx.bootstrap_servers, client_id="bench-publisher")
    try:
        warm_up = Message(messages[0].topic, b"warm-up", b"warm-up")
        if pub.publish([warm_up]).wait(30) != [None]:
            raise RuntimeError("the broker did not take the warm-up message")
        sending = 0.0
        started = time.perf_counter()
        for start in range(0, len(messages), batch):
            call = time.perf_counter()
            delivery = pub.publish(messages[start : start + batch])
            sending += time.perf_counter() - call
            failed = [o for o in delivery.wait(60) if o is not None]
            if failed:
                raise RuntimeError(f"{len(failed)} messages failed, first: {failed[0]}")
        done = time.perf_counter()
    finally:
        pub.close(5)
    return len(messages) / (done - started), sending / len(messages) * 1e6


@scenario("producer", "Producer ceiling: kafka-python alone vs KafkaPublisher")
def producer_ceiling(ctx: Context) -> None:
    count = ctx.size(full=30_000, quick=5_000)
    topic = unique("bench-producer")
    messages = make_events(topic, count)
    ctx.fact("messages", count)
    ctx.fact("payload_bytes", len(messages[0].value or b""))
    ctx.fact("distinct_keys", len({m.key for m in messages}))
    ctx.fact("relay_batch", RELAY_BATCH)
    ctx.fact("producer_settings", {k: str(v) for k, v in DEFAULT_PRODUCER_SETTINGS.items()})

    baseline = "kafka-python alone"
    subjects: dict[str, Callable[[], Sample]] = {
        baseline: lambda: raw_producer(ctx, messages),
        "KafkaPublisher, 1 call": lambda: publisher(ctx, messages, len(messages)),
        f"KafkaPublisher, {RELAY_BATCH}/call": lambda: publisher(ctx, messages, RELAY_BATCH),
    }
    samples = interleaved(subjects, ctx.repeats)
    rates = {name: [rate for rate, _ in runs] for name, runs in samples.items()}
    send_us = {name: [us for _, us in runs] for name, runs in samples.items()}
    ctx.record(baseline, rates[baseline], "msg/s", note="send all, then flush")
    for name in list(subjects)[1:]:
        ctx.record(name, rates[name], "msg/s", baseline=baseline, headline=True)
    # The wrapper's own cost shows best in the send loop, before the broker's pace dominates.
    ctx.record(f"{baseline}: send loop", send_us[baseline], "µs/msg")
    name = "KafkaPublisher, 1 call"
    ctx.record(f"{name}: publish()", send_us[name], "µs/msg", baseline=f"{baseline}: send loop")

    probe = KafkaPublisher(ctx.bootstrap_servers)
    try:
        ctx.fact("partitions", len(probe._producer.partitions_for(topic)))
    finally:
        probe.close(5)
