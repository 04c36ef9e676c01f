"""The producer settings of the Kafka publisher: the relay's defaults, the user's overrides
converted from text, and the checks that keep idempotence from being turned off by accident."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from outbox.errors import ConfigurationError
from outbox.kafka._client import KafkaProducer

#: Producer settings chosen for an outbox relay; every one can be overridden by `producer_config`.
DEFAULT_PRODUCER_SETTINGS: Mapping[str, Any] = {
    # A row is deleted once acknowledged, so the ack must mean "stored by every in-sync replica".
    "acks": "all",
    # Passed explicitly: kafka-python then raises on a conflicting acks/retries setting instead
    # of silently turning idempotence (no duplicates from the producer's own retries) off.
    "enable_idempotence": True,
    # No linger: an idle relay sends a new event at once (latency); under load batches still
    # form while the sender thread is busy.
    "linger_ms": 0,
    # Batches up to 256 KiB per partition: a backlog leaves in few large produce requests (the
    # library's 16 KiB caps a drain at about 0.6 of what one kafka-python process sends here,
    # bench/ceiling.py); a trickle's batch holds what is there, so it costs nothing at low rates.
    "batch_size": 262144,
    # send() blocks for metadata or buffer space; an outage must not stall the relay for the
    # library's default of 60 s, so the failure surfaces as a retriable outcome quickly.
    "max_block_ms": 5000,
    # One produce request waits at most this long for the broker's answer before a retry.
    "request_timeout_ms": 10000,
    # Upper bound on retries of one record: the library's 2 minutes, so that an outage of a
    # minute or so ends with kafka-python resending by itself the moment the broker is back
    # (an expired batch leaves kafka-python 3.0's idempotent producer unusable; see
    # KafkaPublisher._failed).
    "delivery_timeout_ms": 120000,
    # Reconnect within a second of the broker coming back (library default: backoff up to 30 s).
    "reconnect_backoff_max_ms": 1000,
    # Building the publisher against an unreachable broker fails in seconds, not 30 s.
    "bootstrap_timeout_ms": 5000,
    # The relay reports its own metrics; kafka-python's sensors cost its network thread about
    # a tenth of its CPU per request, and nothing reads them.
    "metrics_enabled": False,
}

# Settings with a numeric default that also take a word (acks=all).
_TEXT_ALLOWED = frozenset({"acks"})

# Idempotence requires these; an explicit conflicting value is refused at construction.
_IDEMPOTENT_ACKS = ("all", -1, "-1")


def _typed(name: str, value: Any) -> Any:
    """A setting given as text (environment, ``-X``) converted to the type of kafka-python's
    default for it. Text settings (passwords, file names, mechanisms) stay exactly as given."""
    default = KafkaProducer.DEFAULT_CONFIG.get(name)
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    text = value.strip()
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigurationError(f"producer setting {name}={value!r} is not a boolean")
    if isinstance(default, int | float):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        if name not in _TEXT_ALLOWED:
            expected = "a whole number" if isinstance(default, int) else "a number"
            raise ConfigurationError(
                f"producer setting {name}={value!r} is not a number: expected {expected} "
                f"(kafka-python's default is {default!r})"
            )
    return value  # e.g. acks="all": kafka-python validates it


def producer_settings(
    bootstrap_servers: str,
    producer_config: Mapping[str, Any] | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """The exact keyword arguments given to `KafkaProducer`.

    Defaults first, then `client_id`, then the user's `producer_config` unchanged (it wins).
    Raises `ConfigurationError` for unknown setting names and for settings that conflict with
    idempotence while it is on.
    """
    if not bootstrap_servers or not bootstrap_servers.strip():
        raise ConfigurationError("bootstrap servers must not be empty")
    user = {name: _typed(name, value) for name, value in (producer_config or {}).items()}
    known = set(KafkaProducer.DEFAULT_CONFIG) | set(
        getattr(KafkaProducer, "DEPRECATED_CONFIGS", ())
    )
    known.discard("bootstrap_servers")
    unknown = sorted(name for name in user if name not in known)
    if unknown:
        raise ConfigurationError(
            f"unknown kafka-python producer setting(s): {', '.join(unknown)}"
            + (" (bootstrap servers are given separately)" if "bootstrap_servers" in user else "")
        )
    settings: dict[str, Any] = {"bootstrap_servers": bootstrap_servers, **DEFAULT_PRODUCER_SETTINGS}
    if client_id is not None:
        settings["client_id"] = client_id
    settings.update(user)
    if settings.get("enable_idempotence"):
        _check_idempotence(user)
    return settings


def _check_idempotence(user: Mapping[str, Any]) -> None:
    """Refuse the user's settings that idempotence cannot work with, naming each one."""
    conflicts = []
    if "acks" in user and user["acks"] not in _IDEMPOTENT_ACKS:
        conflicts.append(f"acks={user['acks']!r}")
    if "retries" in user and user["retries"] == 0:
        conflicts.append("retries=0")
    if user.get("max_in_flight_requests_per_connection", 0) > 5:
        conflicts.append(
            f"max_in_flight_requests_per_connection={user['max_in_flight_requests_per_connection']}"
        )
    if conflicts:
        raise ConfigurationError(
            f"producer setting {', '.join(conflicts)} conflicts with enable_idempotence=True "
            "(needs acks='all', retries > 0, at most 5 in flight); "
            "set enable_idempotence=False explicitly to accept duplicates"
        )


__all__ = ["DEFAULT_PRODUCER_SETTINGS", "producer_settings"]
