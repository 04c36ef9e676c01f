"""Turning an outbox row into a Kafka record: routing, key, headers and the envelope format.

Three envelopes (``RelayConfig.envelope``):

``plain`` (default)
    value = the payload bytes unchanged; headers ``event_id``, ``event_type``,
    ``aggregate_type``, ``aggregate_id``, ``created_at``, ``content-type`` (the row's, which
    `emit` sets for text and bytes payloads, else ``application/json``; none on a tombstone)
    and then the row's other headers.
``cloudevents``
    CloudEvents Kafka protocol binding, binary content mode: value = the payload; attributes in
    ``ce_*`` headers; ``content-type`` from the row's ``content-type`` header, else
    ``application/json``; then the row's other headers.
``cloudevents-structured``
    value = the whole event as a JSON CloudEvent; header ``content-type:
    application/cloudevents+json``; then the row's other headers (trace context among them).

In every envelope the topic is the row's topic, else ``topic_prefix + aggregatetype``; the key
is the row's key, else the aggregate id; a NULL payload stays a NULL value (a tombstone for
compacted topics), also in the structured envelope. The record timestamp is the event's
``created_at`` (not the time of sending), as Debezium's ``table.field.event.timestamp`` does, so
that events held back by an outage keep their time and a move to CDC changes nothing.

A row that cannot become a record (headers that are not a JSON object of text values, a
reserved header name, a topic name Kafka refuses) raises `PayloadError`: the relay parks it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from outbox.config import RelayConfig
from outbox.errors import ConfigurationError, PayloadError
from outbox.relay.publisher import Message
from outbox.relay.records import PendingEvent

Encoder = Callable[[PendingEvent], Message]
Headers = list[tuple[str, bytes]]

#: Headers the plain envelope writes itself; a row may not carry them.
PLAIN_HEADERS: frozenset[str] = frozenset(
    ("event_id", "event_type", "aggregate_type", "aggregate_id", "created_at")
)
CONTENT_TYPE = "content-type"
CE_PREFIX = "ce_"
STRUCTURED_CONTENT_TYPE = b"application/cloudevents+json"
DEFAULT_CONTENT_TYPE = "application/json"
_JSON_CONTENT_TYPE = (CONTENT_TYPE, DEFAULT_CONTENT_TYPE.encode())

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# The media types the CloudEvents SDKs read as JSON.
_JSON_MEDIA = re.compile(r"^(application|text)/([A-Za-z0-9.-]+\+)?json(;.*)?$", re.IGNORECASE)
# Valid topic names seen so far; bounded so that a stream of distinct bad rows cannot grow it.
_TOPIC_CACHE_LIMIT = 4096


def make_encoder(config: RelayConfig) -> Encoder:
    """The function that turns one pending row into a `Message`, for `config`'s envelope."""
    if config.envelope in ("cloudevents", "cloudevents-structured") and not config.source:
        raise ConfigurationError("the CloudEvents envelope needs a non-empty source")
    topic_of = _router(config.topic_prefix)
    if config.envelope == "plain":
        return _plain_encoder(topic_of)
    source = config.source
    if config.envelope == "cloudevents":
        return _binary_encoder(topic_of, source)
    if config.envelope == "cloudevents-structured":
        return _structured_encoder(topic_of, source)
    raise ConfigurationError(f"unknown envelope {config.envelope!r}")


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, ``Z`` suffix. A naive datetime is UTC (SQLite drops the zone)."""
    # isoformat is C code: several times faster than formatting the fields one by one; without
    # the timespec keyword it is faster still, and prints microseconds whenever they are not 0.
    if moment.microsecond:
        # The relay's rows are UTC already: one isoformat call, no offset arithmetic (half the
        # cost; only an aware time at offset zero ends in "+00:00").
        text = moment.isoformat()
        if text.endswith("+00:00"):
            return text[:-6] + "Z"
    offset = moment.utcoffset()
    if offset is None:
        text = (
            moment.isoformat() if moment.microsecond else moment.isoformat(timespec="microseconds")
        )
        return text + "Z"
    if offset:
        moment = moment.astimezone(UTC)
    text = moment.isoformat() if moment.microsecond else moment.isoformat(timespec="microseconds")
    # Drop the "+00:00".
    return text[:-6] + "Z"


def timestamp_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of `moment` (naive = UTC), the Kafka record timestamp."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# The formatted forms of a read event (`PendingEvent.id_text` and co.) where the database made
# them, else computed here; the same text and number either way.


def _id_text(event: PendingEvent) -> str:
    text = event.id_text
    return text if text is not None else str(event.id)


def _created_text(event: PendingEvent) -> str:
    text = event.created_text
    return text if text is not None else rfc3339(event.created_at)


def _created_ms(event: PendingEvent) -> int:
    # The very float arithmetic of timestamp_ms, whichever way the seconds were computed.
    return int(event.created_seconds() * 1000)


def _router(prefix: str) -> Callable[[PendingEvent], str]:
    valid: set[str] = set()

    def topic_of(event: PendingEvent) -> str:
        topic = event.topic if event.topic is not None else prefix + event.aggregatetype
        if topic in valid:
            return topic
        if not _TOPIC.match(topic) or topic in (".", ".."):
            source = "topic" if event.topic is not None else "aggregate type (as topic)"
            raise PayloadError(
                f"invalid {source} {topic!r}: Kafka topics are 1-249 characters "
                "of letters, digits, '.', '_' and '-'"
            )
        if len(valid) >= _TOPIC_CACHE_LIMIT:
            valid.clear()
        valid.add(topic)
        return topic

    return topic_of


def _key(event: PendingEvent) -> bytes:
    return _utf8(event.key if event.key is not None else event.aggregateid, "key")


def _payload(event: PendingEvent) -> bytes | None:
    payload: Any = event.payload
    if payload is None or type(payload) is bytes:
        return payload
    # psycopg2 hands out memoryview for bytea.
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    raise PayloadError(f"payload must be bytes or NULL, got {type(payload).__name__}")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadError(f"{what} is not valid text: {exc.reason}") from None


def user_headers(raw: Any) -> dict[str, str]:
    """The row's headers column checked: None or a JSON object of text values."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PayloadError(
            f"headers must be a JSON object of text values, got {type(raw).__name__}"
        )
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            raise PayloadError(f"header names must be non-empty text, got {name!r}")
        if not isinstance(value, str):
            raise PayloadError(
                f"header {name!r} must have a text value, got {type(value).__name__}"
            )
    return dict(raw)


def _append_user(headers: Headers, extra: Mapping[str, str]) -> None:
    for name, value in extra.items():
        headers.append((name, _utf8(value, f"header {name!r}")))


def _plain_encoder(topic_of: Callable[[PendingEvent], str]) -> Encoder:
    def encode(event: PendingEvent) -> Message:
        # The common row, without headers of its own, in one go; anything unusual (user
        # headers, text that is not valid UTF-8) takes the checked path, which says what is wrong.
        if event.headers is not None:
            return checked(event)
        try:
            key = event.key if event.key is not None else event.aggregateid
            payload = _payload(event)
            # _id_text and _created_text inline: two calls less per event.
            id_text = event.id_text
            if id_text is None:
                id_text = str(event.id)
            created_text = event.created_text
            if created_text is None:
                created_text = rfc3339(event.created_at)
            headers: Headers = [
                ("event_id", id_text.encode()),
                ("event_type", event.type.encode()),
                ("aggregate_type", event.aggregatetype.encode()),
                ("aggregate_id", event.aggregateid.encode()),
                ("created_at", created_text.encode()),
            ]
            if payload is not None:
                headers.append(_JSON_CONTENT_TYPE)
            return Message(topic_of(event), key.encode(), payload, headers, _created_ms(event))
        except UnicodeEncodeError:
            return checked(event)

    def checked(event: PendingEvent) -> Message:
        extra = user_headers(event.headers)
        clash = PLAIN_HEADERS.intersection(extra)
        if clash:
            raise PayloadError(f"header {min(clash)!r} is reserved by the plain envelope")
        headers: Headers = [
            ("event_id", _id_text(event).encode()),
            ("event_type", _utf8(event.type, "event type")),
            ("aggregate_type", _utf8(event.aggregatetype, "aggregate type")),
            ("aggregate_id", _utf8(event.aggregateid, "aggregate id")),
            ("created_at", _created_text(event).encode()),
        ]
        payload = _payload(event)
        if payload is not None and not any(n.lower() == CONTENT_TYPE for n in extra):
            headers.append(_JSON_CONTENT_TYPE)
        _append_user(headers, extra)
        return Message(topic_of(event), _key(event), payload, headers, _created_ms(event))

    return encode


def _cloudevents_headers(event: PendingEvent) -> tuple[str | None, dict[str, str]]:
    """The row's content type (if any) and its other headers, for the CloudEvents envelopes."""
    extra = user_headers(event.headers)
    content_type = None
    for name in list(extra):
        lowered = name.lower()
        if lowered == CONTENT_TYPE:
            content_type = extra.pop(name)
        elif lowered.startswith(CE_PREFIX):
            # A consumer would read it as a CloudEvents attribute of this event.
            raise PayloadError(f"header {name!r} is reserved by the CloudEvents envelope")
    return content_type, extra


def _binary_encoder(topic_of: Callable[[PendingEvent], str], source: str) -> Encoder:
    source_bytes = _utf8(source, "source")

    def encode(event: PendingEvent) -> Message:
        content_type, extra = _cloudevents_headers(event)
        headers: Headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", _id_text(event).encode()),
            ("ce_source", source_bytes),
            ("ce_type", _utf8(event.type, "event type")),
            ("ce_time", _created_text(event).encode()),
            ("ce_subject", _utf8(event.aggregateid, "aggregate id")),
            (CONTENT_TYPE, _utf8(content_type or DEFAULT_CONTENT_TYPE, "content type")),
        ]
        _append_user(headers, extra)
        return Message(topic_of(event), _key(event), _payload(event), headers, _created_ms(event))

    return encode


def _is_json_type(content_type: str) -> bool:
    return _JSON_MEDIA.match(content_type.strip()) is not None


def _structured_encoder(topic_of: Callable[[PendingEvent], str], source: str) -> Encoder:
    def encode(event: PendingEvent) -> Message:
        content_type, extra = _cloudevents_headers(event)
        payload = _payload(event)
        headers: Headers = [(CONTENT_TYPE, STRUCTURED_CONTENT_TYPE)]
        _append_user(headers, extra)
        topic = topic_of(event)
        key = _key(event)
        stamp = _created_ms(event)
        if payload is None:
            return Message(topic, key, None, headers, stamp)
        attributes: dict[str, Any] = {
            "specversion": "1.0",
            "id": _id_text(event),
            "source": source,
            "type": event.type,
            "time": _created_text(event),
            "subject": event.aggregateid,
        }
        json_text = _json_text(payload, content_type)
        if json_text is not None:
            attributes["datacontenttype"] = content_type or DEFAULT_CONTENT_TYPE
            # Splice the payload's own text so that numbers and key order reach consumers as
            # the application wrote them; the attributes before it are plain JSON.
            head = json.dumps(attributes, ensure_ascii=False, separators=(",", ":"))
            value = f'{head[:-1]},"data":{json_text}}}'.encode()
        else:
            attributes["datacontenttype"] = content_type or "application/octet-stream"
            text = _text(payload, content_type)
            if text is not None:
                attributes["data"] = text  # text/*: readable as is, no base64
            else:
                attributes["data_base64"] = base64.b64encode(payload).decode("ascii")
            value = json.dumps(attributes, ensure_ascii=False, separators=(",", ":")).encode()
        return Message(topic, key, value, headers, stamp)

    return encode


def _text(payload: bytes, content_type: str | None) -> str | None:
    if content_type is None or not content_type.strip().lower().startswith("text/"):
        return None
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json_text(payload: bytes, content_type: str | None) -> str | None:
    """The payload as JSON text when it is JSON (and declared so, if declared), else None."""
    if content_type is not None and not _is_json_type(content_type):
        return None
    try:
        text = payload.decode("utf-8")
        json.loads(text)
    except ValueError:
        return None
    return text.strip()
