"""Payloads and headers become the exact bytes and text the relay sends, or fail at emit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from outbox.errors import PayloadError
from outbox.write.serialization import dumps_json, serialize_headers, serialize_payload

pytestmark = pytest.mark.unit

ORDER_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
PLACED = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Line:
    sku: str
    price: Decimal


@dataclasses.dataclass
class Placed:
    order_id: uuid.UUID
    at: dt.datetime
    lines: list[Line]


class PlacedModel(pydantic.BaseModel):
    order_id: uuid.UUID
    at: dt.datetime
    total: Decimal


def test_none_is_a_tombstone() -> None:
    assert serialize_payload(None, "Deleted", 10) is None


def test_bytes_and_str_pass_unchanged() -> None:
    assert serialize_payload(b"\x00\xffraw", "E", None) == b"\x00\xffraw"
    assert serialize_payload(bytearray(b"ab"), "E", None) == b"ab"
    assert serialize_payload(memoryview(b"cd"), "E", None) == b"cd"
    assert serialize_payload("héllo", "E", None) == "héllo".encode()


def test_json_is_compact_utf8() -> None:
    data = serialize_payload({"name": "Zoë", "items": [1, 2]}, "E", None)
    assert data == '{"name":"Zoë","items":[1,2]}'.encode()
    assert serialize_payload([1, "a"], "E", None) == b'[1,"a"]'


def test_extra_types_nested() -> None:
    payload = {
        "id": ORDER_ID,
        "at": PLACED,
        "day": dt.date(2024, 5, 6),
        "time": dt.time(7, 8),
        "total": Decimal("9.90"),
        "color": Color.RED,
    }
    assert json.loads(serialize_payload(payload, "E", None) or b"") == {
        "id": str(ORDER_ID),
        "at": "2024-05-06T07:08:09.123456+00:00",
        "day": "2024-05-06",
        "time": "07:08:00",
        "total": "9.90",
        "color": "red",
    }


def test_dataclass_top_level_and_nested() -> None:
    value = Placed(ORDER_ID, PLACED, [Line("a", Decimal("1.50"))])
    assert serialize_payload(value, "E", None) == (
        b'{"order_id":"01890a5d-ac96-774b-bcce-b302099a8057",'
        b'"at":"2024-05-06T07:08:09.123456+00:00","lines":[{"sku":"a","price":"1.50"}]}'
    )
    assert serialize_payload({"wrapped": Line("b", Decimal(2))}, "E", None) == (
        b'{"wrapped":{"sku":"b","price":"2"}}'
    )


def test_pydantic_model_top_level_and_nested() -> None:
    model = PlacedModel(order_id=ORDER_ID, at=PLACED, total=Decimal("9.90"))
    expected = {"order_id": str(ORDER_ID), "at": "2024-05-06T07:08:09.123456Z", "total": "9.90"}
    assert json.loads(serialize_payload(model, "E", None) or b"") == expected
    assert json.loads(dumps_json([model])) == [expected]


@pytest.mark.parametrize(
    "payload",
    [
        object(),
        {"bytes inside": b"x"},
        {"nan": float("nan")},
        {"set": {1, 2}},
        {("tuple", "key"): 1},
        "\ud800",  # a lone surrogate cannot be UTF-8
    ],
)
def test_unserializable_payload_is_payload_error(payload: Any) -> None:
    with pytest.raises(PayloadError, match="payload of event 'OrderPlaced' cannot be serialized"):
        serialize_payload(payload, "OrderPlaced", None)


def test_circular_payload_is_payload_error() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(PayloadError):
        serialize_payload(loop, "E", None)


def test_payload_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        serialize_payload(object(), "E", None)


def test_size_cap_counts_serialized_bytes() -> None:
    assert serialize_payload(b"x" * 10, "E", 10) == b"x" * 10
    with pytest.raises(PayloadError, match="11 bytes, over max_payload_bytes=10"):
        serialize_payload(b"x" * 11, "E", 10)
    with pytest.raises(PayloadError, match="over max_payload_bytes"):
        serialize_payload({"k": "é" * 5}, "E", 12)  # 5 characters, 10 bytes, 18 with JSON


def test_headers_text_and_utf8_bytes() -> None:
    assert serialize_headers(None, "E") == {}
    assert serialize_headers({"a": "1", "b": "é".encode()}, "E") == {"a": "1", "b": "é"}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"bad": b"\xff"}, "header 'bad' of event 'E' is not UTF-8"),
        ({"n": 1}, "must be str or UTF-8 bytes, not int"),
        ({"n": None}, "must be str or UTF-8 bytes, not NoneType"),
        ({1: "x"}, "header name 1"),
        ({"": "x"}, "header name ''"),
        ([("a", "b")], "must be a mapping"),
    ],
)
def test_bad_headers_are_payload_errors(headers: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        serialize_headers(headers, "E")


def test_pydantic_and_opentelemetry_are_never_imported_by_the_write_side() -> None:
    code = (
        "import sys, sqlalchemy as sa\n"
        "from sqlalchemy.orm import sessionmaker\n"
        "from outbox.write.outbox import Outbox\n"
        "from outbox.write.entity import EventSource\n"
        "outbox = Outbox(); maker = sessionmaker(); outbox.install(maker)\n"
        "event = outbox.emit(maker(), 'E', {'a': 1}, aggregate_type='t', aggregate_id=1)\n"
        "assert event.headers == {}, event.headers\n"
        "print(sorted(m for m in ('pydantic', 'opentelemetry') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
