"""The relay's once-a-minute progress line (clock injected: no waiting)."""

from __future__ import annotations

import logging

import pytest

from outbox.ops.progress import ProgressObserver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_with_the_count_and_the_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    observer = ProgressObserver(interval=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="outbox.relay"):
        observer.published("t", 700, [])
        observer.backlog(40, 1.0)
        clock.now += 30
        observer.published("u", 500, [])  # within the minute: nothing yet
        assert caplog.messages == []
        clock.now += 31
        observer.backlog(35, 0.5)
        observer.published("t", 9, [])  # the new window
        assert caplog.messages == ["published 1200 events in the last 60 s, 35 pending"]
        clock.now += 61
        observer.published("t", 1, [])
        assert caplog.messages[-1] == "published 10 events in the last 60 s, 35 pending"
        clock.now += 120  # idle: nothing published, nothing logged
        observer.backlog(0, None)
        assert len(caplog.messages) == 2
    assert caplog.records[0].__dict__["published"] == 1200


def test_no_backlog_sample_yet(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    observer = ProgressObserver(interval=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="outbox.relay"):
        clock.now += 5
        observer.published("t", 1, [])
    assert caplog.messages == ["published 1 event in the last 5 s"]
