"""Fewer wake-ups of kafka-python's sender thread while a batch of messages is handed over.

`KafkaProducer.send` wakes the sender (a write on a socket pair: a system call, and the GIL
handed to the sender thread) every time a message opens a new producer batch; with linger 0
the sender takes each batch as soon as it wakes, so during a backlog nearly every message opens
one, and the relay thread and the sender trade the GIL per message (a quarter of the relay
thread's time in a drain). `CoalescedWakeup` replaces the producer's hook: inside `deferred()`
it passes on one wake-up in `every`, and one at the end if any was held back, so the records of
one `publish` call leave in a few large requests, and a lone message still leaves at once.
The publisher holds around its send loop (`of(producer).hold()` / `.release()`), and releases
before closing a producer, so no wake-up stays held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

#: Wake-ups passed on while deferring: one per this many asked for.
EVERY = 64


class CoalescedWakeup:
    __slots__ = ("_deferring", "_every", "_held", "_wake")

    def __init__(self, wake: Callable[[], None], every: int = EVERY) -> None:
        self._wake = wake
        self._every = every
        self._deferring = False
        self._held = 0

    def __call__(self) -> None:
        if not self._deferring:
            self._wake()
            return
        self._held += 1
        if self._held >= self._every:
            self._held = 0
            self._wake()

    def hold(self) -> None:
        """Pass on one wake-up in `every` until `release`."""
        self._deferring = True

    def release(self) -> None:
        """Stop holding wake-ups back; wake the sender if one was held. Idempotent."""
        self._deferring = False
        if self._held:
            self._held = 0
            self._wake()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.hold()
        try:
            yield
        finally:
            self.release()


class _NoHook:
    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


def of(producer: Any, topics: Iterable[str] = ()) -> CoalescedWakeup | _NoHook:
    """The hook `install` put on `producer` (or one that does nothing). With `topics`, one that
    does nothing unless the producer has metadata for every one of them: `send` for a topic
    without metadata wakes the sender to fetch it and blocks until it arrives, and that
    wake-up must not be held back."""
    hook = getattr(getattr(producer, "_sender", None), "wakeup", None)
    if not isinstance(hook, CoalescedWakeup):
        return _NoHook()
    metadata = getattr(producer, "_metadata", None)
    if metadata is None or not all(metadata.partitions_for_topic(t) for t in topics):
        return _NoHook()
    return hook


def install(producer: Any) -> CoalescedWakeup | None:
    """Put a `CoalescedWakeup` in front of `producer`'s sender wake-up (None when this
    kafka-python has no such hook: sends then wake the sender as before)."""
    sender = getattr(producer, "_sender", None)
    wake = getattr(sender, "wakeup", None)
    if sender is None or wake is None:
        return None
    hook = CoalescedWakeup(wake)
    sender.wakeup = hook
    return hook


__all__ = ["EVERY", "CoalescedWakeup", "install", "of"]
