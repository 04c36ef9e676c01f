"""Reading the relay's records back into events, in each of its three envelopes.

plain: headers ``event_id`` and ``event_type``, value = payload. CloudEvents binary: ``ce_id``
and ``ce_type`` headers, value = payload. CloudEvents structured (``content-type:
application/cloudevents+json``): the value is the whole event; ``data`` (JSON) or
``data_base64`` is the payload. A record without an event id raises `UndecodableRecord`: the
inbox parks it instead of guessing an identity (a guessed one would defeat deduplication).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from outbox.inbox.event import InboxEvent
from outbox.relay.envelope import CE_PREFIX, CONTENT_TYPE, STRUCTURED_CONTENT_TYPE

RawHeaders = Sequence[tuple[str, bytes]]


class UndecodableRecord(Exception):
    """The record carries no usable event id (or a structured CloudEvent that is not JSON)."""


@dataclass(frozen=True, slots=True)
class Record:
    """A Kafka record as the consumer wrapper hands it out (no kafka-python types)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def header_map(headers: RawHeaders) -> dict[str, bytes]:
    """The first value of each header name (the envelopes write each name once)."""
    found: dict[str, bytes] = {}
    for name, value in headers or ():
        found.setdefault(name, value if value is not None else b"")
    return found


def decode(record: Record) -> InboxEvent:
    """The event in `record`; `UndecodableRecord` when it has no event id."""
    headers = header_map(record.headers)
    key = _text(record.key)
    content_type = headers.get(CONTENT_TYPE, b"").split(b";")[0].strip().lower()
    if content_type == STRUCTURED_CONTENT_TYPE:
        event_id, event_type, payload = _structured(record.value)
    elif CE_PREFIX + "id" in headers:
        event_id = _text(headers[CE_PREFIX + "id"])
        event_type = _text(headers.get(CE_PREFIX + "type"))
        payload = record.value
    else:
        event_id = _text(headers.get("event_id"))
        event_type = _text(headers.get("event_type"))
        payload = record.value
    if not event_id:
        raise UndecodableRecord("the record has no event id (event_id or ce_id header)")
    return InboxEvent(
        id=event_id,
        type=event_type,
        key=key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        payload=payload,
        headers=headers,
    )


def _structured(value: bytes | None) -> tuple[str | None, str | None, bytes | None]:
    if value is None:
        raise UndecodableRecord("a structured CloudEvent without a value has no event id")
    try:
        event: Any = json.loads(value)
    except ValueError:
        raise UndecodableRecord("the structured CloudEvent is not JSON") from None
    if not isinstance(event, dict):
        raise UndecodableRecord("the structured CloudEvent is not a JSON object")
    event_id = event.get("id")
    event_type = event.get("type")
    payload: bytes | None = None
    if "data_base64" in event:
        try:
            payload = base64.b64decode(str(event["data_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise UndecodableRecord("the CloudEvent's data_base64 is not base64") from None
    elif "data" in event:
        payload = json.dumps(event["data"], ensure_ascii=False, separators=(",", ":")).encode()
    return (
        str(event_id) if event_id is not None else None,
        str(event_type) if event_type is not None else None,
        payload,
    )
