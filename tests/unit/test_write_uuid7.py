"""Event ids are RFC 9562 UUIDv7 values that strictly increase within a process."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from outbox import _uuid7
from outbox._uuid7 import uuid7, uuid7_time_ms

pytestmark = pytest.mark.unit


def test_version_variant_and_timestamp() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= uuid7_time_ms(value) <= after + 1


def test_strictly_increasing_within_a_millisecond() -> None:
    values = [uuid7() for _ in range(5000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    # Thousands of ids in a few milliseconds: many shared a timestamp and still increased.
    assert len({uuid7_time_ms(v) for v in values}) < len(values)


def test_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = uuid7()
    monkeypatch.setattr(_uuid7.time, "time_ns", lambda: 0)
    later = [uuid7() for _ in range(3)]
    assert first < later[0] < later[1] < later[2]
    assert all(v.version == 7 for v in later)


def test_increasing_across_threads() -> None:
    per_thread: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def work(out: list[uuid.UUID]) -> None:
        out.extend(uuid7() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [v for out in per_thread for v in out]
    assert len(set(everything)) == len(everything)
    assert all(out == sorted(out) for out in per_thread)
