"""Coalesced sender wake-ups: every wake-up asked for outside a hold, one in EVERY inside it,
and the held one passed on at release."""

from __future__ import annotations

from outbox.kafka import wakeup
from outbox.kafka.wakeup import CoalescedWakeup


class Calls:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_passes_through_when_not_held() -> None:
    calls = Calls()
    hook = CoalescedWakeup(calls, every=4)
    for _ in range(5):
        hook()
    assert calls.count == 5


def test_one_in_every_while_held_and_the_rest_at_release() -> None:
    calls = Calls()
    hook = CoalescedWakeup(calls, every=4)
    with hook.deferred():
        for _ in range(10):
            hook()
        assert calls.count == 2
    assert calls.count == 3
    hook.release()  # idempotent: nothing held
    assert calls.count == 3


def test_release_without_held_wakeups_does_not_wake() -> None:
    calls = Calls()
    hook = CoalescedWakeup(calls, every=4)
    hook.hold()
    hook.release()
    assert calls.count == 0


def test_install_and_of() -> None:
    class Sender:
        def __init__(self) -> None:
            self.woken = 0

        def wakeup(self) -> None:
            self.woken += 1

    class Metadata:
        def partitions_for_topic(self, topic: str) -> set[int] | None:
            return {0} if topic == "known" else None

    class Producer:
        def __init__(self) -> None:
            self._sender = Sender()
            self._metadata = Metadata()

    producer = Producer()
    hook = wakeup.install(producer)
    assert isinstance(hook, CoalescedWakeup)
    assert wakeup.of(producer) is hook
    held = wakeup.of(producer)
    held.hold()
    producer._sender.wakeup()
    assert producer._sender.woken == 0
    held.release()
    assert producer._sender.woken == 1
    # A topic without metadata: send() wakes the sender to fetch it, never held back.
    assert wakeup.of(producer, {"known"}) is hook
    assert wakeup.of(producer, {"known", "new"}) is not hook
    assert wakeup.install(object()) is None
    wakeup.of(object()).hold()  # a producer without the hook: nothing to do
