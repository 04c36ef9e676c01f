"""A buffered event (`Draft`) and its validation: everything is checked and serialized at emit.

`make_draft` is the one way an event enters the write side (`Outbox.emit`, entity events and
`capture` alike), so a bad type, key, topic or payload fails the application's own call.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import SessionTransaction

from outbox._uuid7 import uuid7
from outbox.errors import ConfigurationError
from outbox.schema.tables import NAME_LENGTH, TOPIC_LENGTH
from outbox.write.orm import identity_of, mapper_of, table_name
from outbox.write.serialization import (
    payload_content_type,
    serialize_headers,
    serialize_payload,
)

_ID_TYPES = (int, uuid.UUID)  # a tuple: a union in isinstance is built per call
_TOPIC = re.compile(rf"^[A-Za-z0-9._-]{{1,{TOPIC_LENGTH}}}$")


@dataclass(slots=True, eq=False)
class Draft:
    """A buffered event. Entity events get their aggregate id when written (after the flush)."""

    id: uuid.UUID
    type: str
    payload: bytes | None
    created_at: datetime
    key: str | None
    topic: str | None
    headers: dict[str, str]
    aggregate_type: str | None
    aggregate_id: str | None
    entity: object | None = None
    #: The innermost transaction the event was emitted in; None while not yet in a session.
    tx: SessionTransaction | None = None

    def resolve(self) -> bool:
        """Fill an entity event's aggregate type and id; False while its key is unknown."""
        if self.entity is None:
            return True
        if self.aggregate_type is None:
            self.aggregate_type = table_name(mapper_of(self.entity)[1])
        if self.aggregate_id is None:
            self.aggregate_id = identity_of(self.entity)
            if self.aggregate_id is None:
                return False
        return True


def check_text(value: Any, what: str, max_length: int = NAME_LENGTH) -> str:
    if isinstance(value, _ID_TYPES) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ConfigurationError(f"{what} is longer than {max_length} characters: {value[:40]!r}…")
    return value


def check_topic(topic: str | None) -> str | None:
    if topic is None:
        return None
    if not isinstance(topic, str) or not _TOPIC.match(topic) or topic in (".", ".."):
        raise ConfigurationError(
            f"invalid topic {topic!r}: Kafka topic names use letters, digits, '.', '_' and '-', "
            f"at most {TOPIC_LENGTH} characters"
        )
    return topic


def _trace_headers() -> dict[str, str]:
    """W3C trace context of the active span, if the application uses OpenTelemetry.

    Never imports opentelemetry: an application that did not import it has no span to store.
    """
    if "opentelemetry" not in sys.modules:
        return {}
    try:
        from opentelemetry import propagate, trace
    except ImportError:  # pragma: no cover - a partial install
        return {}
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: carrier[k] for k in ("traceparent", "tracestate") if carrier.get(k)}


def make_draft(
    event_type: str,
    payload: Any,
    *,
    max_bytes: int | None,
    aggregate_type: str | None,
    aggregate_id: str | None,
    key: Any,
    topic: str | None,
    headers: Mapping[str, str | bytes] | None,
    entity: object | None = None,
) -> Draft:
    """Validate and serialize an event now, so that mistakes fail the emitting call."""
    [draft] = make_drafts(
        event_type,
        [(payload, aggregate_id)],
        max_bytes=max_bytes,
        aggregate_type=aggregate_type,
        key=key,
        topic=topic,
        headers=headers,
        entity=entity,
    )
    return draft


def make_drafts(
    event_type: str,
    items: Sequence[tuple[Any, str | None]],
    *,
    max_bytes: int | None,
    aggregate_type: str | None,
    key: Any,
    topic: str | None,
    headers: Mapping[str, str | bytes] | None,
    entity: object | None = None,
) -> list[Draft]:
    """Drafts of one type, topic and headers, one per (payload, aggregate id) in `items`: what
    they share is validated once (a snapshot chunk makes a thousand at a time)."""
    event_type = check_text(event_type, "event type")
    user_headers = serialize_headers(headers, event_type)
    # User headers win: an explicit traceparent is the caller's choice.
    shared_headers = {**_trace_headers(), **user_headers}
    checked_key = None if key is None else check_text(key, "key")
    checked_topic = check_topic(topic)
    has_content_type = any(n.lower() == "content-type" for n in shared_headers)
    # Events made together are made at one instant (a snapshot chunk: in one transaction).
    now = datetime.now(UTC)
    drafts = []
    for payload, aggregate_id in items:
        # Drafts' headers are never changed once made: drafts without a header of their own
        # share one dict (and the writer serializes it once per statement).
        draft_headers = shared_headers
        content_type = payload_content_type(payload)
        if content_type is not None and not has_content_type:
            # Text and bytes say what they are, so consumers (and CloudEvents) do not read them
            # as JSON; JSON payloads, the common case, carry no header (the relay's default).
            draft_headers = {**shared_headers, "content-type": content_type}
        drafts.append(
            Draft(  # positional, in the field order: a snapshot chunk makes a thousand
                uuid7(),
                event_type,
                serialize_payload(payload, event_type, max_bytes),
                now,
                checked_key,
                checked_topic,
                draft_headers,
                aggregate_type,
                aggregate_id,
                entity,
            )
        )
    return drafts
