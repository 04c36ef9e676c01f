"""`EventSource`: a mixin that lets mapped entities record their own domain events."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from outbox.write.outbox import record_entity_event


class EventSource:
    """Mixin for mapped classes: ``self.record_event(type, payload)`` inside domain methods.

    ::

        class Order(Base, EventSource):
            __tablename__ = "orders"
            id: Mapped[int] = mapped_column(primary_key=True)

            def place(self) -> None:
                self.record_event("OrderPlaced", {"total": "9.90"})

    The event joins the transaction of the session the entity belongs to (or will be added to),
    in call order with `Outbox.emit`. Its aggregate type defaults to the entity's table name and
    its aggregate id is the entity's primary key, known after the flush (so autoincrement keys
    work). The mixin adds no columns and no mapped attributes.
    """

    __slots__ = ()

    def record_event(
        self,
        type: str,
        payload: Any,
        *,
        aggregate_type: str | None = None,
        key: str | None = None,
        topic: str | None = None,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> uuid.UUID:
        """Record an event about this entity; return its id.

        The payload is serialized now (`PayloadError` at this call). If the entity is in a
        session, the session's factory must have an Outbox installed (`NotInstalledError`);
        if it is not in a session yet, the event waits on the entity until `Session.add`, and
        the Outbox's ``max_payload_bytes`` is checked then. Add entities with ``add`` (not
        ``merge``, which copies the entity and leaves its pending events behind).
        """
        return record_entity_event(
            self,
            type,
            payload,
            aggregate_type=aggregate_type,
            key=key,
            topic=topic,
            headers=headers,
        )
