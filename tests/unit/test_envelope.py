"""The row-to-record encoder: routing, headers, the three envelopes, and rows it must refuse."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from outbox.config import RelayConfig
from outbox.errors import PayloadError
from outbox.relay.envelope import make_encoder, rfc3339
from outbox.relay.publisher import Message
from outbox.relay.records import PendingEvent

EVENT_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
CREATED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def config(**changes: Any) -> RelayConfig:
    return RelayConfig(db_url="sqlite://", **changes)


def event(**changes: Any) -> PendingEvent:
    values: dict[str, Any] = {
        "seq": 1,
        "id": EVENT_ID,
        "aggregatetype": "order",
        "aggregateid": "o-42",
        "type": "OrderPlaced",
        "payload": b'{"total": 12.50, "items": [1, 2]}',
        "topic": None,
        "key": None,
        "headers": None,
        "created_at": CREATED,
        "attempts": 0,
    }
    values.update(changes)
    return PendingEvent(**values)


def as_kafka(message: Message) -> ce_kafka.KafkaMessage:
    """What a consumer gets: kafka-python's list of header tuples as the SDK's dict."""
    assert message.value is not None
    return ce_kafka.KafkaMessage(
        headers=dict(message.headers), key=message.key, value=message.value
    )


# --- routing ---------------------------------------------------------------------------------


def test_topic_is_prefix_plus_aggregate_type_and_key_is_aggregate_id() -> None:
    message = make_encoder(config(topic_prefix="shop."))(event())
    assert message.topic == "shop.order"
    assert message.key == b"o-42"
    assert message.value == b'{"total": 12.50, "items": [1, 2]}'


@pytest.mark.parametrize("envelope", ["plain", "cloudevents", "cloudevents-structured"])
@pytest.mark.parametrize(
    "created",
    [CREATED, CREATED.replace(tzinfo=None), CREATED.astimezone(timezone(timedelta(hours=-5)))],
)
def test_record_timestamp_is_created_at(envelope: str, created: datetime) -> None:
    """Not the send time: polling and Debezium's table.field.event.timestamp agree."""
    for payload in (b"{}", None):
        message = make_encoder(config(envelope=envelope))(
            event(created_at=created, payload=payload)
        )
        assert message.timestamp_ms == int(CREATED.timestamp() * 1000) == 1714979289123
        later = make_encoder(config(envelope=envelope))(
            event(created_at=created + timedelta(seconds=90), payload=payload)
        )
        assert later.timestamp_ms == message.timestamp_ms + 90_000


def test_explicit_topic_and_key_win() -> None:
    message = make_encoder(config(topic_prefix="shop."))(event(topic="audit", key="k\u00e9"))
    assert message.topic == "audit"
    assert message.key == "k\u00e9".encode()


def test_null_payload_stays_a_tombstone_in_every_envelope() -> None:
    for envelope in ("plain", "cloudevents", "cloudevents-structured"):
        assert make_encoder(config(envelope=envelope))(event(payload=None)).value is None


def test_memoryview_payload_becomes_bytes() -> None:
    message = make_encoder(config())(event(payload=memoryview(b"abc")))
    assert message.value == b"abc"
    assert type(message.value) is bytes


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"aggregatetype": "order placed"}, "invalid aggregate type"),
        ({"aggregatetype": "caf\u00e9"}, "invalid aggregate type"),
        ({"topic": ""}, "invalid topic"),
        ({"topic": ".."}, "invalid topic"),
        ({"topic": "x" * 250}, "invalid topic"),
        ({"topic": "a/b"}, "invalid topic"),
    ],
)
def test_invalid_topic_is_a_payload_error(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        make_encoder(config())(event(**changes))


def test_a_valid_topic_is_cached_but_invalid_ones_keep_failing() -> None:
    encode = make_encoder(config())
    for _ in range(2):
        assert encode(event()).topic == "order"
        with pytest.raises(PayloadError):
            encode(event(aggregatetype="bad name"))


# --- plain envelope --------------------------------------------------------------------------


def test_plain_headers_then_user_headers() -> None:
    user = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x": "\u00e9"}
    message = make_encoder(config())(event(headers=user))
    assert list(message.headers) == [
        ("event_id", str(EVENT_ID).encode()),
        ("event_type", b"OrderPlaced"),
        ("aggregate_type", b"order"),
        ("aggregate_id", b"o-42"),
        ("created_at", b"2024-05-06T07:08:09.123456Z"),
        ("content-type", b"application/json"),
        ("traceparent", user["traceparent"].encode()),
        ("x", "\u00e9".encode()),
    ]
    assert all(isinstance(v, bytes) for _, v in message.headers)


@pytest.mark.parametrize("with_user_headers", [False, True])
def test_plain_content_type_by_payload_kind(with_user_headers: bool) -> None:
    """JSON rows carry none and get application/json; emit stores text/bytes types on the row."""
    extra = {"x": "1"} if with_user_headers else {}
    encode = make_encoder(config())

    def content_types(**changes: Any) -> list[bytes]:
        message = encode(event(**changes))
        return [v for n, v in message.headers if n.lower() == "content-type"]

    assert content_types(headers=extra or None) == [b"application/json"]
    assert content_types(headers={**extra, "content-type": "text/plain; charset=utf-8"}) == [
        b"text/plain; charset=utf-8"
    ]
    assert content_types(headers={**extra, "Content-Type": "application/octet-stream"}) == [
        b"application/octet-stream"
    ]
    assert content_types(payload=None, headers=extra or None) == []  # a tombstone has no type


def test_rfc3339_is_utc_with_microseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2024, 1, 2, 5, 0, 0, tzinfo=plus_two)) == "2024-01-02T03:00:00.000000Z"
    # SQLite returns naive datetimes: they are UTC.
    assert rfc3339(datetime(2024, 1, 2, 3, 4, 5, 6)) == "2024-01-02T03:04:05.000006Z"
    parsed = datetime.fromisoformat(rfc3339(CREATED))
    assert parsed == CREATED


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (7, "JSON object of text values, got int"),
        ([["a", "b"]], "JSON object of text values, got list"),
        ("{}", "JSON object of text values, got str"),
        ({"a": 1}, "header 'a' must have a text value, got int"),
        ({"a": None}, "header 'a' must have a text value, got NoneType"),
        ({"a": {"b": "c"}}, "header 'a' must have a text value, got dict"),
        ({"": "x"}, "non-empty"),
        ({"event_id": "forged"}, "'event_id' is reserved"),
        ({"a": "\ud800"}, "header 'a' is not valid text"),
    ],
)
def test_garbage_headers_are_a_payload_error(headers: Any, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        make_encoder(config())(event(headers=headers))


def test_payload_error_is_one_clear_line() -> None:
    with pytest.raises(PayloadError) as info:
        make_encoder(config())(event(headers=[1]))
    assert "\n" not in str(info.value)


# --- CloudEvents binary mode -----------------------------------------------------------------


def test_cloudevents_binary_headers() -> None:
    message = make_encoder(config(envelope="cloudevents", source="/shop"))(
        event(headers={"traceparent": "00-abc-def-01"})
    )
    assert dict(message.headers) == {
        "ce_specversion": b"1.0",
        "ce_id": str(EVENT_ID).encode(),
        "ce_source": b"/shop",
        "ce_type": b"OrderPlaced",
        "ce_time": b"2024-05-06T07:08:09.123456Z",
        "ce_subject": b"o-42",
        "content-type": b"application/json",
        "traceparent": b"00-abc-def-01",
    }
    assert message.value == event().payload
    assert message.key == b"o-42"


def test_cloudevents_binary_is_decoded_by_the_sdk() -> None:
    message = make_encoder(config(envelope="cloudevents", source="/shop"))(event())
    decoded = ce_kafka.from_binary(as_kafka(message), JSONFormat())
    assert decoded.get_specversion() == "1.0"
    assert decoded.get_id() == str(EVENT_ID)
    assert decoded.get_source() == "/shop"
    assert decoded.get_type() == "OrderPlaced"
    assert decoded.get_subject() == "o-42"
    assert decoded.get_time() == CREATED
    assert decoded.get_datacontenttype() == "application/json"
    assert decoded.get_data() == {"total": 12.5, "items": [1, 2]}
    assert decoded.get_extension("partitionkey") == "o-42"
    # The auto-detecting entry point picks binary mode from the ce_ headers.
    assert ce_kafka.from_kafka(as_kafka(message), JSONFormat()).get_id() == str(EVENT_ID)


def test_cloudevents_binary_uses_the_rows_content_type() -> None:
    message = make_encoder(config(envelope="cloudevents"))(
        event(payload=b"plain words", headers={"Content-Type": "text/plain", "a": "b"})
    )
    headers = dict(message.headers)
    assert headers["content-type"] == b"text/plain"
    assert "Content-Type" not in headers
    assert headers["a"] == b"b"
    decoded = ce_kafka.from_binary(as_kafka(message), JSONFormat())
    assert decoded.get_datacontenttype() == "text/plain"
    assert decoded.get_data() == "plain words"


def test_cloudevents_refuses_ce_headers_from_the_row() -> None:
    for envelope in ("cloudevents", "cloudevents-structured"):
        with pytest.raises(PayloadError, match="'ce_type' is reserved"):
            make_encoder(config(envelope=envelope))(event(headers={"ce_type": "forged"}))


def test_cloudevents_also_refuses_garbage_headers() -> None:
    with pytest.raises(PayloadError, match="got list"):
        make_encoder(config(envelope="cloudevents"))(event(headers=["x"]))


# --- CloudEvents structured mode -------------------------------------------------------------


def test_structured_json_payload_is_decoded_by_the_sdk() -> None:
    message = make_encoder(config(envelope="cloudevents-structured", source="/shop"))(
        event(headers={"traceparent": "00-abc-def-01"})
    )
    assert list(message.headers) == [
        ("content-type", b"application/cloudevents+json"),
        ("traceparent", b"00-abc-def-01"),
    ]
    assert message.key == b"o-42"
    decoded = ce_kafka.from_structured(as_kafka(message), JSONFormat())
    assert decoded.get_id() == str(EVENT_ID)
    assert decoded.get_source() == "/shop"
    assert decoded.get_type() == "OrderPlaced"
    assert decoded.get_subject() == "o-42"
    assert decoded.get_time() == CREATED
    assert decoded.get_datacontenttype() == "application/json"
    assert decoded.get_data() == {"total": 12.5, "items": [1, 2]}
    assert ce_kafka.from_kafka(as_kafka(message), JSONFormat()).get_id() == str(EVENT_ID)


def test_structured_keeps_the_payloads_own_json_text() -> None:
    message = make_encoder(config(envelope="cloudevents-structured"))(event())
    assert message.value is not None
    assert message.value.endswith(b',"data":{"total": 12.50, "items": [1, 2]}}')
    assert json.loads(message.value)["specversion"] == "1.0"


def test_structured_binary_payload_goes_to_data_base64() -> None:
    raw = b"\x00\xff\x10binary"
    message = make_encoder(config(envelope="cloudevents-structured"))(event(payload=raw))
    assert message.value is not None
    body = json.loads(message.value)
    assert "data" not in body
    assert base64.b64decode(body["data_base64"]) == raw
    assert body["datacontenttype"] == "application/octet-stream"
    decoded = ce_kafka.from_structured(as_kafka(message), JSONFormat())
    assert decoded.get_data() == raw


def test_structured_declared_non_json_type_is_base64_even_if_it_parses() -> None:
    message = make_encoder(config(envelope="cloudevents-structured"))(
        event(payload=b"123", headers={"content-type": "application/avro"})
    )
    assert message.value is not None
    body = json.loads(message.value)
    assert body["datacontenttype"] == "application/avro"
    assert base64.b64decode(body["data_base64"]) == b"123"
    assert dict(message.headers) == {"content-type": b"application/cloudevents+json"}


def test_structured_value_is_valid_json_for_unusual_text() -> None:
    message = make_encoder(config(envelope="cloudevents-structured", source='/a"b'))(
        event(type='T"\u00e9\n', aggregateid="id\\1", payload=b' "str" ')
    )
    assert message.value is not None
    body = json.loads(message.value)
    assert body["type"] == 'T"\u00e9\n'
    assert body["source"] == '/a"b'
    assert body["subject"] == "id\\1"
    assert body["data"] == "str"


def test_structured_text_payload_is_data_as_a_string() -> None:
    message = make_encoder(config(envelope="cloudevents-structured"))(
        event(payload="h\u00e9llo".encode(), headers={"content-type": "text/plain; charset=utf-8"})
    )
    assert message.value is not None
    body = json.loads(message.value)
    assert (body["data"], body["datacontenttype"]) == ("h\u00e9llo", "text/plain; charset=utf-8")
    assert "data_base64" not in body
