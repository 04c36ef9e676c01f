"""The broker behind a narrow interface, and an in-memory implementation for tests.

Contract of `Publisher`
-----------------------
``publish(messages)`` starts sending every message, in the order given, and returns at once
with a `Delivery`. It never blocks on acknowledgements; it may block briefly when the client's
buffer is full. Messages with the same topic and key reach the broker in the order given.

``Delivery.done()`` tells without blocking whether every message has resolved.
``Delivery.wait(timeout)`` blocks until every message of that call was acknowledged or failed,
or the timeout passed, and returns one outcome per message, in order: ``None`` for an
acknowledged message, else a `PublishError`: `BrokerUnavailableError` for a transient failure
(outage, timeout: the message was maybe not stored), `EventRejectedError` for a permanent
rejection of that message (too large, invalid topic). A message that has not resolved when the
timeout passes gets a `BrokerUnavailableError`. `wait` raises nothing else.

Per-key order within a call: once a message fails at once (the publisher can tell before
sending it: too large, invalid topic, client closed), later messages of that call with the same
topic and key are not sent and get the same outcome, so no later event of a key overtakes a
failed one. A failure the broker reports later cannot stop messages already sent; the relay
then resends the key from its first unacknowledged message.

An acknowledged message is stored by the broker under its durability settings (for Kafka:
``acks=all``). ``close(timeout)`` flushes what is buffered and releases the connection.

Optional ``abort()``: drop everything buffered without sending it, fail every pending delivery
(with `BrokerUnavailableError`, so no attempt counts against an event) and stay usable for
later ``publish`` calls. The relay calls it, from any thread, when it loses its lease, so that
records buffered by a relay that is no longer active never reach the broker after the new
holder started. A publisher without it is left to deliver what it holds.

Thread safety: one thread calls ``publish``; ``Delivery.wait`` may be called from another
thread; ``close`` from any thread, once; ``abort`` from any thread, any time. Implementations
translate their client's exceptions into this package's errors at this boundary: no client
exception escapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from outbox.errors import BrokerUnavailableError, EventRejectedError, PublishError


# Not frozen, for the same reason as PendingEvent: one is built per event on the hot path.
@dataclass(slots=True)
class Message:
    """One record to publish (read-only by convention)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    #: Milliseconds since the epoch; None lets the broker client stamp it.
    timestamp_ms: int | None = None


@runtime_checkable
class Delivery(Protocol):
    def done(self) -> bool:
        """True when every message of the call was acknowledged or failed (never blocks)."""
        ...

    def wait(self, timeout: float | None = None) -> list[PublishError | None]:
        """Outcomes of the messages of one `publish` call, in order (see the module contract)."""
        ...


@runtime_checkable
class Publisher(Protocol):
    def publish(self, messages: Sequence[Message]) -> Delivery:
        """Start sending `messages` in order; return without waiting for acknowledgements."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Flush buffered messages and release resources."""
        ...


@dataclass(frozen=True, slots=True)
class ResolvedDelivery:
    """A `Delivery` whose outcomes are already known."""

    outcomes: list[PublishError | None]

    def done(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> list[PublishError | None]:
        return list(self.outcomes)


@dataclass
class InMemoryPublisher:
    """A `Publisher` that keeps what it was given, for tests of code that uses a relay.

    ``messages`` holds every acknowledged message in publish order. ``fail_with`` decides the
    outcome of a message: return an error to fail it (it is then not stored), or None.
    Set ``available = False`` to simulate an outage: every message fails as unavailable.
    """

    fail_with: Callable[[Message], PublishError | None] | None = None
    available: bool = True
    messages: list[Message] = field(default_factory=list)
    closed: bool = False
    #: How many times the relay aborted this publisher (it lost its lease).
    aborts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def publish(self, messages: Sequence[Message]) -> Delivery:
        outcomes: list[PublishError | None] = []
        failed: dict[tuple[str, bytes | None], PublishError] = {}
        with self._lock:
            if self.closed:
                raise BrokerUnavailableError("publisher is closed")
            for message in messages:
                error: PublishError | None
                line = (message.topic, message.key)
                if line in failed:
                    error = failed[line]
                elif not self.available:
                    error = BrokerUnavailableError("in-memory broker is unavailable")
                elif self.fail_with is not None:
                    error = self.fail_with(message)
                else:
                    error = None
                if error is None:
                    self.messages.append(message)
                else:
                    failed[line] = error
                outcomes.append(error)
        return ResolvedDelivery(outcomes)

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def abort(self) -> None:
        """Nothing is ever buffered here (every delivery resolves at once): counted only."""
        with self._lock:
            self.aborts += 1

    def by_topic(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


def reject(reason: str) -> EventRejectedError:
    """A permanent rejection, for `InMemoryPublisher.fail_with` callbacks."""
    return EventRejectedError(reason)
