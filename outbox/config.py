"""Relay settings as a frozen value object, validated when built.

Every field can come from the environment with the prefix ``OUTBOX_`` (``OUTBOX_DB_URL``,
``OUTBOX_BOOTSTRAP_SERVERS``, ``OUTBOX_BATCH_SIZE`` ...). Producer settings pass through
unchanged as ``OUTBOX_PRODUCER_<SETTING>`` (text; the Kafka publisher converts numbers and
booleans by the setting's type) (for example ``OUTBOX_PRODUCER_SASL_MECHANISM``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from outbox._names import check_identifier
from outbox.errors import ConfigurationError

ENV_PREFIX = "OUTBOX_"
PRODUCER_ENV_PREFIX = "OUTBOX_PRODUCER_"

Envelope = Literal["plain", "cloudevents", "cloudevents-structured"]
ENVELOPES: tuple[str, ...] = ("plain", "cloudevents", "cloudevents-structured")
LogFormat = Literal["text", "json"]


def parse_db_url(value: str) -> URL:
    """Parse a SQLAlchemy database URL or raise a one-line `ConfigurationError`."""
    try:
        return make_url(value)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"malformed database URL: {exc}") from None


def mask_url(url: str | URL) -> str:
    """The URL as text with its password hidden, for logs and messages."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return "<malformed URL>"
    return parsed.render_as_string(hide_password=True)


def check_bootstrap_servers(value: str) -> None:
    """Raise a `ConfigurationError` naming the setting unless `value` is host[:port][,...]."""
    if not value.strip():
        raise ConfigurationError("bootstrap servers must not be empty")
    for entry in (part.strip() for part in value.split(",")):
        address = entry.partition("://")[2] or entry  # PLAINTEXT://host:9092 is accepted too
        if address.startswith("["):  # [IPv6]:port
            host, _, rest = address[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest
        elif address.count(":") == 1:
            host, _, port = address.partition(":")
        else:
            host, port = address, ""
        valid_port = port == "" or (port.isdigit() and 0 < int(port) <= 65535)
        if not host or not valid_port:
            raise ConfigurationError(
                f"bootstrap servers (--bootstrap-servers / OUTBOX_BOOTSTRAP_SERVERS): {entry!r} "
                "is not host:port with a port 1-65535 (e.g. kafka:9092,kafka2:9092)"
            )


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything a relay needs. Build it directly, with `from_env`, or through the CLI."""

    db_url: str
    bootstrap_servers: str = "localhost:9092"
    table: str = "outbox"
    schema: str | None = None
    #: Events read, sent and marked per round trip.
    batch_size: int = 1000
    #: Seconds between polls when idle and no wake-up (LISTEN/NOTIFY) is available.
    poll_interval: float = 0.5
    #: Prepended to the aggregate type when an event has no explicit topic.
    topic_prefix: str = ""
    #: kafka-python producer settings, passed through unchanged.
    producer_config: Mapping[str, Any] = field(default_factory=dict)
    #: Seconds a lease lasts without renewal; a standby takes over after at most this long.
    lease_ttl: float = 6.0
    #: Publish attempts before an event that the broker rejects for good is parked.
    max_attempts: int = 3
    #: Hold back later events of a parked event's key (keeps per-key order).
    hold_parked_keys: bool = True
    #: Seconds to keep published events (0: delete at once).
    retention: float = 0.0
    envelope: Envelope = "plain"
    #: CloudEvents `source` attribute.
    source: str = "/sqlalchemy-outbox"
    health_port: int | None = None
    metrics_port: int | None = None
    #: Address the health and metrics endpoints bind to (all interfaces, for a sidecar's probes;
    #: 127.0.0.1 keeps them local, "::" for IPv6).
    health_host: str = "0.0.0.0"
    #: Seconds to finish the batch in flight at shutdown.
    shutdown_timeout: float = 10.0
    log_format: LogFormat = "text"

    def __post_init__(self) -> None:
        parse_db_url(self.db_url)
        check_identifier(self.table, "table name")
        if self.schema is not None:
            check_identifier(self.schema, "schema name")
        check_bootstrap_servers(self.bootstrap_servers)
        _positive("batch_size", self.batch_size, integer=True)
        _positive("poll_interval", self.poll_interval)
        _positive("lease_ttl", self.lease_ttl)
        _positive("max_attempts", self.max_attempts, integer=True)
        _positive("shutdown_timeout", self.shutdown_timeout)
        if self.retention < 0:
            raise ConfigurationError(f"retention must be >= 0 seconds, got {self.retention}")
        if self.envelope not in ENVELOPES:
            raise ConfigurationError(
                f"unknown envelope {self.envelope!r}: choose one of {', '.join(ENVELOPES)}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(f"unknown log format {self.log_format!r}: text or json")
        for port_name in ("health_port", "metrics_port"):
            port = getattr(self, port_name)
            if port is not None and not 0 <= port <= 65535:
                raise ConfigurationError(f"{port_name} must be 0..65535, got {port}")
        if not self.health_host.strip():
            raise ConfigurationError("health host must not be empty (0.0.0.0: every interface)")
        if len(self.topic_prefix) > 200:
            raise ConfigurationError("topic prefix is longer than 200 characters")
        # A frozen copy, so that the caller's dict cannot change the settings afterwards.
        object.__setattr__(self, "producer_config", dict(self.producer_config))

    @property
    def masked_db_url(self) -> str:
        return mask_url(self.db_url)

    def replace(self, **changes: Any) -> RelayConfig:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RelayConfig:
        """Build from ``OUTBOX_*`` variables; keyword arguments that are not None win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "producer_config":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, raw)
        producer = {
            # Kept as text: the Kafka publisher converts by each setting's own type, so that a
            # password such as "00123" reaches kafka-python unchanged.
            name[len(PRODUCER_ENV_PREFIX) :].lower(): raw
            for name, raw in env.items()
            if name.startswith(PRODUCER_ENV_PREFIX)
        }
        producer.update(overrides.pop("producer_config", None) or {})
        values["producer_config"] = producer
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "db_url" not in values:
            raise ConfigurationError("no database URL: pass --db-url or set OUTBOX_DB_URL")
        return cls(**values)


_INTS = {"batch_size", "max_attempts", "health_port", "metrics_port"}
_FLOATS = {"poll_interval", "lease_ttl", "retention", "shutdown_timeout"}
_BOOLS = {"hold_parked_keys"}


def _convert(name: str, raw: str) -> Any:
    try:
        if name in _INTS:
            return int(raw)
        if name in _FLOATS:
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    if name in _BOOLS:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean")
    return raw


def _positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}")
    if not value > 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {value!r}")
