"""The Kafka `Publisher`: the only module that imports kafka-python.

kafka-python's exceptions are translated here, at the boundary, into `BrokerUnavailableError`
(transient: try again later) or `EventRejectedError` (permanent for that one message).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from outbox.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    EventRejectedError,
    PublishError,
)
from outbox.relay.publisher import Delivery, Message, ResolvedDelivery

with warnings.catch_warnings():
    # kafka-python 3.0 loads its protocol schemas through importlib.resources' legacy API,
    # which warns on import: keep that out of applications that run with -W error.
    warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)
    import kafka.errors as kafka_errors
    from kafka import KafkaProducer
    from kafka.partitioner import DefaultPartitioner, Partitioner
    from kafka.partitioner.default import murmur2

log = logging.getLogger("outbox.kafka")

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
    # send() blocks for metadata or buffer space; an outage must not stall the relay for the
    # library's default of 60 s, so the failure surfaces as a retriable outcome quickly.
    "max_block_ms": 5000,
    # One produce request waits at most this long for the broker's answer before a retry.
    "request_timeout_ms": 10000,
    # Upper bound on retries of one record: the library's 2 minutes, so that an outage of a
    # minute or so ends with kafka-python resending by itself the moment the broker is back
    # (an expired batch leaves kafka-python 3.0's idempotent producer unusable; see _failed).
    "delivery_timeout_ms": 120000,
    # Reconnect within a second of the broker coming back (library default: backoff up to 30 s).
    "reconnect_backoff_max_ms": 1000,
    # Building the publisher against an unreachable broker fails in seconds, not 30 s.
    "bootstrap_timeout_ms": 5000,
    # The relay reports its own metrics; kafka-python's sensors cost its network thread about
    # a tenth of its CPU per request, and nothing reads them.
    "metrics_enabled": False,
}

# Idempotence requires these; an explicit conflicting value is refused at construction.
_IDEMPOTENT_ACKS = ("all", -1, "-1")

# Non-retriable errors about one record: sending that record again cannot succeed.
_REJECTED = tuple(
    getattr(kafka_errors, name)
    for name in (
        "MessageSizeTooLargeError",
        "RecordListTooLargeError",
        "InvalidTopicError",
        "TopicAuthorizationFailedError",
        "InvalidRecordError",
        "InvalidTimestampError",
        "PolicyViolationError",
    )
    if hasattr(kafka_errors, name)
)

# Non-retriable errors about the producer, its session or its credentials, not about the event:
# a new producer (or fixed settings) can send the very same record, so it must not be parked.
_PRODUCER_FAILED = tuple(
    getattr(kafka_errors, name)
    for name in (
        "IllegalStateError",
        "KafkaConfigurationError",
        "ClusterAuthorizationFailedError",
        "TransactionalIdAuthorizationFailedError",
        "SaslAuthenticationFailedError",
        "ProducerFencedError",
        "OutOfOrderSequenceNumberError",
        "UnknownProducerIdError",
        "InvalidProducerEpochError",
        "InvalidTxnStateError",
        "TransactionAbortedError",
        "DuplicateSequenceNumberError",
        "UnsupportedVersionError",
        "UnsupportedForMessageFormatError",
        "UnsupportedCompressionTypeError",
        "InvalidRequiredAcksError",
        "NoBrokersAvailable",  # kafka-python 2.x
    )
    if hasattr(kafka_errors, name)
)


class CachedHashPartitioner(Partitioner):  # type: ignore[misc]
    """kafka-python's default partitioner (murmur2 of the key, like the Java client), remembering
    the hashes of recent keys: murmur2 is pure Python here and costs more than the rest of
    `send`, while an outbox's keys (aggregate ids) recur. Same partition for every key."""

    def __init__(self, limit: int = 65536) -> None:
        self._limit = limit
        self._hashes: dict[bytes, int] = {}
        self._default = DefaultPartitioner()

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:  # no key, or an unknown topic: the default's behaviour and errors
            result: int = self._default.partition(
                topic, key, serialized_key, value, serialized_value, cluster
            )
            return result
        hashes = self._hashes
        h = hashes.get(serialized_key)  # type: ignore[arg-type]
        if h is None:
            if len(hashes) >= self._limit:
                hashes.clear()
            h = hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF  # type: ignore[index]
        ordered = sorted(partitions)
        return int(ordered[h % len(ordered)])


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
        conflicts = []
        if "acks" in user and user["acks"] not in _IDEMPOTENT_ACKS:
            conflicts.append(f"acks={user['acks']!r}")
        if "retries" in user and user["retries"] == 0:
            conflicts.append("retries=0")
        if user.get("max_in_flight_requests_per_connection", 0) > 5:
            conflicts.append(
                "max_in_flight_requests_per_connection="
                f"{user['max_in_flight_requests_per_connection']}"
            )
        if conflicts:
            raise ConfigurationError(
                f"producer setting {', '.join(conflicts)} conflicts with enable_idempotence=True "
                "(needs acks='all', retries > 0, at most 5 in flight); "
                "set enable_idempotence=False explicitly to accept duplicates"
            )
    return settings


def translate(exc: BaseException) -> PublishError:
    """kafka-python's (or a send argument's) exception as this package's outcome."""
    if isinstance(exc, PublishError):
        return exc
    if isinstance(exc, _REJECTED):
        return EventRejectedError(f"rejected by Kafka: {exc}")
    if isinstance(exc, _PRODUCER_FAILED):
        return BrokerUnavailableError(f"Kafka producer failed: {exc}")
    if isinstance(exc, kafka_errors.KafkaError):
        if exc.retriable:
            return BrokerUnavailableError(f"Kafka unavailable: {exc}")
        return EventRejectedError(f"rejected by Kafka: {exc}")
    if isinstance(exc, (ValueError, TypeError)):
        # send() validates its arguments: illegal topic name, no key and no value, bad headers.
        return EventRejectedError(f"invalid message: {exc}")
    return BrokerUnavailableError(f"Kafka producer error: {type(exc).__name__}: {exc}")


def crc32c_available() -> bool:
    return importlib.util.find_spec("crc32c") is not None


def close_producer(producer: Any, timeout: float | None) -> None:
    """Flush for up to `timeout` seconds, then close for sure, dropping what is left."""
    try:
        producer.close(timeout=timeout)
        return
    except kafka_errors.KafkaTimeoutError:
        # The flush timed out: kafka-python raises out of close() and leaves its sender thread
        # running. Stop it without sending; it fails the remaining futures on its way out.
        log.warning("Kafka producer closed before every message was acknowledged")
    except Exception as exc:
        log.warning("closing the Kafka producer: %s", translate(exc))
    try:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(5)
        producer.close(timeout=1)
    except Exception as exc:
        log.warning("closing the Kafka producer: %s", translate(exc))


class KafkaDelivery:
    """The futures of one `publish` call; `wait` turns them into outcomes."""

    __slots__ = ("_errors", "_futures", "_publisher")

    def done(self) -> bool:
        # Futures resolve in order per partition: checking from the end finds a pending one soon.
        return all(f is None or f.is_done for f in reversed(self._futures))

    def __init__(
        self, futures: list[Any], errors: dict[int, PublishError], publisher: KafkaPublisher
    ) -> None:
        self._futures = futures
        # Messages that failed inside send() itself, by position; their future slot is None.
        self._errors = errors
        self._publisher = publisher

    def wait(self, timeout: float | None = None) -> list[PublishError | None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        outcomes: list[PublishError | None] = []
        append = outcomes.append
        errors = self._errors
        for index, future in enumerate(self._futures):
            if future is None:
                append(errors[index])
                continue
            if not future.is_done:
                # Waiting on one future usually resolves the rest of its batch too, so the
                # others of this loop cost an attribute read each.
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if remaining is None or remaining > 0:
                    # get() raises on failure and on timeout; the outcome is read below.
                    with contextlib.suppress(Exception):
                        future.get(remaining)
                if not future.is_done:
                    # A send stuck this long means a wedged producer (see _failed): replace it.
                    self._publisher._replace_producer = True
                    append(BrokerUnavailableError(f"not acknowledged within {timeout}s"))
                    continue
            exc = future.exception
            if exc is None:
                append(None)
            else:
                append(self._publisher._failed(exc))
        return outcomes


class KafkaPublisher:
    """A `Publisher` backed by one kafka-python `KafkaProducer` (acks=all, idempotent).

    Construction connects to the broker: `BrokerUnavailableError` when it cannot be reached,
    `ConfigurationError` for bad producer settings. `producer_config` takes kafka-python setting
    names (security_protocol, sasl_mechanism, ssl_cafile, compression_type, ...) unchanged.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        producer_config: Mapping[str, Any] | None = None,
        *,
        client_id: str | None = None,
    ) -> None:
        self._settings = producer_settings(bootstrap_servers, producer_config, client_id)
        self._bootstrap_servers = bootstrap_servers
        if not crc32c_available():
            log.warning(
                "the crc32c package is not installed: kafka-python computes CRC32C checksums in "
                "pure Python, which halves publishing throughput; pip install crc32c"
            )
        self._lock = threading.Lock()
        self._closed = False
        # Set when a send failed in a way that leaves kafka-python's idempotent producer unusable
        # (a non-retriable error puts it in a fatal state that fails every later batch).
        self._replace_producer = False
        self._producer: Any = self._new_producer()

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def _create_producer(self) -> Any:
        # kafka-python does not close its network client when construction fails (its wake-up
        # socket pair leaks until garbage collection): keep hold of it to close it ourselves.
        clients: list[Any] = []
        client_class = self._settings.get(
            "kafka_client", KafkaProducer.DEFAULT_CONFIG["kafka_client"]
        )

        def tracked_client(**configs: Any) -> Any:
            client = client_class(**configs)
            clients.append(client)
            return client

        try:
            settings = {**self._settings, "kafka_client": tracked_client}
            settings.setdefault("partitioner", CachedHashPartitioner())
            return KafkaProducer(**settings)
        except BaseException:
            for client in clients:
                with contextlib.suppress(Exception):
                    client.close()
            raise

    def _new_producer(self) -> Any:
        try:
            return self._create_producer()
        except kafka_errors.KafkaConfigurationError as exc:
            raise ConfigurationError(f"invalid Kafka producer settings: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid Kafka producer settings: {exc}") from None
        except kafka_errors.KafkaError as exc:
            raise BrokerUnavailableError(
                f"cannot reach Kafka at {self._bootstrap_servers}: {exc}"
            ) from None
        except OSError as exc:
            # ssl_cafile and friends are read while connecting.
            raise ConfigurationError(f"Kafka connection setup failed: {exc}") from None
        except RuntimeError as exc:
            # A compression codec whose library is not installed.
            raise ConfigurationError(f"invalid Kafka producer settings: {exc}") from None

    def _failed(self, exc: BaseException) -> PublishError:
        # Any non-retriable failure reported asynchronously may have put the idempotent
        # producer in its fatal state: build a fresh one before the next publish. So may an
        # expired batch: after a long outage kafka-python 3.0's idempotent producer lets every
        # later send hang (reproduced by tests/faults), while a fresh producer delivers at once.
        if isinstance(exc, kafka_errors.KafkaTimeoutError) or (
            isinstance(exc, kafka_errors.KafkaError) and not exc.retriable
        ):
            self._replace_producer = True
        return translate(exc)

    def _usable_producer(self) -> Any:
        """The producer to send with; replaced first when the last one failed for good."""
        if not self._replace_producer and self._producer is not None:
            return self._producer
        with self._lock:
            if self._closed:
                return None
            if self._replace_producer and self._producer is not None:
                log.warning("replacing the Kafka producer after a non-retriable failure")
                old, self._producer = self._producer, None
                self._replace_producer = False
                close_producer(old, 0)
            if self._producer is None:
                self._producer = self._new_producer()
            return self._producer

    def publish(self, messages: Sequence[Message]) -> Delivery:
        try:
            producer = self._usable_producer()
        except PublishError as exc:
            return ResolvedDelivery([exc] * len(messages))
        except ConfigurationError as exc:
            return ResolvedDelivery([BrokerUnavailableError(str(exc))] * len(messages))
        if producer is None:
            return ResolvedDelivery(
                [BrokerUnavailableError("the Kafka publisher is closed")] * len(messages)
            )
        send = producer.send
        futures: list[Any] = []
        append = futures.append
        errors: dict[int, PublishError] = {}
        # (topic, key) lines whose message failed inside send(): their later messages are not
        # sent (the Publisher contract), so no event overtakes a failed one of its key.
        failed: dict[tuple[str, bytes | None], PublishError] = {}
        # Everything is handed to the producer before any future is waited on.
        for message in messages:
            if failed and (message.topic, message.key) in failed:
                errors[len(futures)] = failed[(message.topic, message.key)]
                append(None)
                continue
            headers = message.headers
            try:
                append(
                    send(
                        message.topic,
                        message.value,
                        message.key,
                        (headers if type(headers) is list else list(headers)) if headers else None,
                        None,
                        message.timestamp_ms,
                    )
                )
            except Exception as exc:
                error = errors[len(futures)] = self._failed_sync(exc)
                failed[(message.topic, message.key)] = error
                append(None)
        return KafkaDelivery(futures, errors, self)

    def _failed_sync(self, exc: BaseException) -> PublishError:
        if isinstance(exc, kafka_errors.IllegalStateError) and not self._closed:
            self._replace_producer = True
        return translate(exc)

    def reachable(self, timeout: float = 1.0) -> bool:
        """True when the broker answered a metadata request within `timeout` seconds."""
        producer = self._producer
        if producer is None or self._closed:
            return False
        try:
            # Private but stable since kafka-python 1.x: the producer's own metadata refresh,
            # the cheapest request that proves a broker answers the Kafka protocol.
            future = producer._metadata.request_update()
            producer._sender.wakeup()
            done = threading.Event()
            future.add_both(lambda *_: done.set())
            done.wait(timeout)
            return bool(future.succeeded())
        except Exception as exc:
            log.debug("Kafka readiness check failed: %s", exc)
            return False

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            close_producer(producer, timeout)

    def __enter__(self) -> KafkaPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
