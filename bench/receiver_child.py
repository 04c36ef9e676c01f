"""A consumer in its own process: `python -m bench.receiver_child BOOTSTRAP TOPIC`.

Assigns every partition of TOPIC at its current end, prints ``ready``, then stamps each record
with the wall-clock time of its receipt until its standard input closes; then prints one JSON
object: event_id -> [receipt time (s), record timestamp (ms)]. Its own process, so that the
application under test does not compete with it for the GIL.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from kafka import KafkaConsumer, TopicPartition


def main() -> None:
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    bootstrap, topic = sys.argv[1], sys.argv[2]
    # A short fetch wait: the broker answers a fetch with no new data after this long.
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    deadline = time.monotonic() + 30
    partitions: set[int] = set()
    while not partitions and time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic) or set()
        time.sleep(0.1)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)
    halt = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), halt.set()), daemon=True).start()
    seen: dict[str, tuple[float, int]] = {}
    print("ready", flush=True)
    try:
        while not halt.is_set():
            for records in consumer.poll(timeout_ms=20).values():
                now = time.time()
                for r in records:
                    event_id = dict(r.headers or []).get("event_id")
                    if event_id is not None:
                        seen[event_id.decode()] = (now, r.timestamp)
    finally:
        consumer.close()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
