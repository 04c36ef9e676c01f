"""The inbox reads each of the relay's envelopes; a record without an event id is refused."""

from __future__ import annotations

import base64
import json

import pytest

from outbox.errors import ConfigurationError
from outbox.inbox.decode import Record, UndecodableRecord, decode
from outbox.inbox.settings import InboxConfig


def _record(value: bytes | None, headers: list[tuple[str, bytes]]) -> Record:
    return Record("orders", 2, 41, b"o-1", value, headers)


def test_plain_headers() -> None:
    event = decode(_record(b'{"n": 1}', [("event_id", b"e1"), ("event_type", b"OrderPlaced")]))
    assert (event.id, event.type, event.key, event.partition, event.offset) == (
        "e1", "OrderPlaced", "o-1", 2, 41,
    )  # fmt: skip
    assert event.json() == {"n": 1} and event.header("event_id") == "e1"


def test_cloudevents_binary() -> None:
    event = decode(_record(b"[1]", [("ce_id", b"c1"), ("ce_type", b"OrderPlaced")]))
    assert (event.id, event.type, event.json()) == ("c1", "OrderPlaced", [1])


@pytest.mark.parametrize(
    ("body", "payload"),
    [
        ({"id": "s1", "type": "T", "data": {"a": 1}}, b'{"a":1}'),
        ({"id": "s1", "type": "T", "data_base64": base64.b64encode(b"\x00").decode()}, b"\x00"),
    ],
)
def test_cloudevents_structured(body: dict[str, object], payload: bytes) -> None:
    headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    event = decode(_record(json.dumps(body).encode(), headers))
    assert (event.id, event.type, event.payload) == ("s1", "T", payload)


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"{}", [("event_type", b"T")]),
        (b"{}", [("event_id", b"")]),
        (b"not json", [("content-type", b"application/cloudevents+json")]),
        (b'{"type": "T"}', [("content-type", b"application/cloudevents+json")]),
    ],
)
def test_no_event_id_is_undecodable(value: bytes, headers: list[tuple[str, bytes]]) -> None:
    with pytest.raises(UndecodableRecord):
        decode(_record(value, headers))


def test_config_is_validated_when_built() -> None:
    with pytest.raises(ConfigurationError, match="handler_attempts"):
        InboxConfig(handler_attempts=0)
    with pytest.raises(ConfigurationError, match="poll_timeout"):
        InboxConfig(poll_timeout=-1)
