"""Turn payloads and headers into the exact bytes and text the relay will send.

Everything here runs at emit time, so an event that cannot be sent fails the application's
own call (a `PayloadError`) instead of becoming a poison row that the relay can never publish.

Payloads:

- ``None`` is a tombstone (NULL payload, a Kafka record with a null value);
- ``bytes`` (and ``bytearray``/``memoryview``) pass unchanged; ``str`` is encoded as UTF-8;
- anything else is JSON: compact (``separators=(",", ":")``), UTF-8 (``ensure_ascii=False``),
  no NaN or Infinity. Beyond what `json` knows, it accepts dataclasses, pydantic models (only
  when the application imported pydantic: this module never imports it), ``datetime``/``date``/
  ``time`` (ISO 8601), ``Decimal`` (as a string, exact), ``UUID`` (as a string) and ``Enum``
  (its value), nested anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import sys
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from outbox.errors import PayloadError

# Tuples, not `A | B`: a union in isinstance is built anew on every call (per event here).
_BINARY = (bytes, bytearray, memoryview)
_BYTES_LIKE = (bytearray, memoryview)

#: The default cap on a payload: Kafka's default `max.request.size` / `message.max.bytes`.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


def _to_json_value(value: Any) -> Any:
    """`json.dumps` hook for the types it does not know. Raise TypeError for the rest."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Shallow: json recurses into the field values and calls this hook again.
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    # A pydantic model exists only if the application imported pydantic; never import it here.
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__qualname__} is not JSON serializable")


# One encoder for every call: `json.dumps` with options builds a new one each time. `encode`
# keeps no state between calls, so threads can share it.
_ENCODER = json.JSONEncoder(
    default=_to_json_value,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
)


def dumps_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`, with the extra types above. Raises TypeError/ValueError."""
    return _ENCODER.encode(value).encode("utf-8")


def serialize_payload(payload: Any, event_type: str, max_bytes: int | None) -> bytes | None:
    """The bytes to store for `payload`, or None for a tombstone.

    Raises `PayloadError` when the payload cannot be serialized or is larger than `max_bytes`.
    """
    if payload is None:
        return None
    try:
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, _BYTES_LIKE):
            data = bytes(payload)
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = dumps_json(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"payload of event {event_type!r} cannot be serialized: {exc}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadError(
            f"payload of event {event_type!r} is {len(data)} bytes, "
            f"over max_payload_bytes={max_bytes}"
        )
    return data


#: The media type of a payload that is not JSON, by its kind at emit (JSON needs no header: it is
#: what the relay's envelopes assume when a row has no ``content-type``).
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
BINARY_CONTENT_TYPE = "application/octet-stream"


def payload_content_type(payload: Any) -> str | None:
    """``content-type`` for a str or bytes payload; None for JSON and for a tombstone."""
    if isinstance(payload, str):
        return TEXT_CONTENT_TYPE
    if isinstance(payload, _BINARY):
        return BINARY_CONTENT_TYPE
    return None


def serialize_headers(headers: Mapping[str, str | bytes] | None, event_type: str) -> dict[str, str]:
    """User headers as a dict of text values; bytes values must be UTF-8.

    Raises `PayloadError` for a non-text name or a value that is neither text nor UTF-8 bytes.
    """
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise PayloadError(
            f"headers of event {event_type!r} must be a mapping, not {type(headers).__qualname__}"
        )
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise PayloadError(f"header name {name!r} of event {event_type!r} must be text")
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, bytes | bytearray):
            try:
                out[name] = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PayloadError(
                    f"header {name!r} of event {event_type!r} is not UTF-8: {exc}"
                ) from exc
        else:
            raise PayloadError(
                f"header {name!r} of event {event_type!r} must be str or UTF-8 bytes, "
                f"not {type(value).__qualname__}"
            )
    return out
