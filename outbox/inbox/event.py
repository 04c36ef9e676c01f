"""The event a handler receives: what the relay sent, decoded from its envelope."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """One Kafka record as an event.

    `id` and `type` come from the envelope (``event_id``/``event_type`` headers, ``ce_id``/
    ``ce_type``, or the structured CloudEvent's ``id``/``type``); `payload` is the event's data
    as bytes (the record value, or the CloudEvent's ``data``); `headers` are the record's
    headers as sent, first value of each name. `attempt` counts handler attempts, from 1.
    """

    id: str
    type: str | None
    key: str | None
    topic: str
    partition: int
    offset: int
    payload: bytes | None
    headers: Mapping[str, bytes] = field(default_factory=dict)
    attempt: int = 1

    def json(self) -> Any:
        """The payload parsed as JSON (None for a tombstone)."""
        return None if self.payload is None else json.loads(self.payload)

    def header(self, name: str) -> str | None:
        """A header's value as text, or None when the record has no such header."""
        value = self.headers.get(name)
        return None if value is None else value.decode("utf-8", "replace")
