"""The `Inbox` facade: handlers by event type, and the runner that applies each event once."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from outbox._names import check_identifier
from outbox.errors import ConfigurationError, TableMissingError
from outbox.inbox.event import InboxEvent
from outbox.inbox.observer import InboxObserver
from outbox.inbox.settings import InboxConfig
from outbox.inbox.store import InboxStore

Handler = Callable[[Session, InboxEvent], Any]
H = TypeVar("H", bound=Handler)

#: The registration key of handlers for every event type.
ALL = "*"


class Inbox:
    """Applies the events of Kafka topics to this service's database, each once per consumer.

    ``inbox = Inbox(Session, consumer="billing")``; ``@inbox.handler("OrderPlaced")`` registers
    ``handler(session, event)``; ``@inbox.handler()`` one for every type. Per record, the
    handlers of its type (then the catch-all ones, in registration order) run in one
    transaction with the dedup row and the stored offset. An event with no handler is recorded
    as applied. `consumer` is the dedup namespace: two services reading the same events need
    two names. Do not commit inside a handler: the inbox commits.
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        consumer: str,
        *,
        table: str = "outbox",
        schema: str | None = None,
        config: InboxConfig | None = None,
    ) -> None:
        if not callable(session_factory):
            raise ConfigurationError("session_factory must be callable (a sessionmaker)")
        if not consumer or len(consumer) > 200:
            raise ConfigurationError("consumer must be a name of 1 to 200 characters")
        check_identifier(table, "table name")
        self.session_factory = session_factory
        self.consumer = consumer
        self.config = config or InboxConfig()
        self.store = InboxStore(consumer, table, schema)
        self._handlers: dict[str, list[Handler]] = {}

    def handler(self, event_type: str | None = None) -> Callable[[H], H]:
        """Decorator: register a handler for `event_type` (None: for every type)."""

        def register(fn: H) -> H:
            self.add_handler(event_type, fn)
            return fn

        return register

    def add_handler(self, event_type: str | None, fn: Handler) -> None:
        if not callable(fn):
            raise ConfigurationError(
                f"the handler for {event_type or 'every type'} is not callable"
            )
        self._handlers.setdefault(event_type or ALL, []).append(fn)

    @property
    def handlers(self) -> Mapping[str, list[Handler]]:
        return self._handlers

    def handle(self, session: Session, event: InboxEvent) -> None:
        """Run the handlers of `event` on `session` (no dedup, no offsets: for unit tests)."""
        for fn in (*self._handlers.get(event.type or "", ()), *self._handlers.get(ALL, ())):
            fn(session, event)

    def check_tables(self) -> None:
        """`TableMissingError` unless the inbox tables exist (run `outbox migrate`)."""
        with self.session_factory() as session:
            bind = session.get_bind()
            inspector = sa.inspect(bind)
            for table in (self.store.dedup, self.store.offsets, self.store.parked):
                if not inspector.has_table(table.name, schema=table.schema):
                    raise TableMissingError(
                        f"the inbox table {table.name} does not exist: run `outbox migrate`"
                    )

    def run(
        self,
        *,
        bootstrap_servers: str,
        topics: list[str],
        group: str | None = None,
        stop: threading.Event | None = None,
        observer: InboxObserver | None = None,
        consumer_settings: Mapping[str, Any] | None = None,
        on_start: Callable[[Any], None] | None = None,
    ) -> None:
        """Consume `topics` as a member of `group` (default: the consumer name) until `stop`
        is set. Offsets are kept in the database; Kafka's are only for dashboards."""
        from outbox.inbox.runner import Runner
        from outbox.kafka.consumer import KafkaRecordSource

        if not topics:
            raise ConfigurationError("at least one topic is needed")
        self.check_tables()
        settings = {**self.config.consumer_settings, **(consumer_settings or {})}
        source = KafkaRecordSource(bootstrap_servers, group or self.consumer, settings)
        runner = Runner(
            session_factory=self.session_factory,
            store=self.store,
            dispatch=self.handle,
            source=source,
            topics=list(topics),
            owner=f"{socket.gethostname()}:{os.getpid()}",
            config=self.config,
            stop=stop or threading.Event(),
            observer=observer or InboxObserver(),
        )
        if on_start is not None:
            on_start(runner)
        runner.run()
