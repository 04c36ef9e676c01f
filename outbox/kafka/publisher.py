"""The Kafka `Publisher`: one kafka-python producer behind the relay's `Publisher` contract.

A `KafkaDelivery` is one `publish` call's futures; the publisher replaces its producer when a
failure leaves kafka-python's idempotent producer unusable. kafka-python itself is imported in
`outbox.kafka._client`; its exceptions are translated in `outbox.kafka.outcomes`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import outbox.kafka._client as _client
from outbox.errors import BrokerUnavailableError, ConfigurationError, PublishError
from outbox.kafka._client import KafkaProducer, kafka_errors
from outbox.kafka.outcomes import translate
from outbox.kafka.partitioner import CachedHashPartitioner, PartitionChooser
from outbox.kafka.settings import producer_settings
from outbox.kafka.wakeup import install as install_wakeup
from outbox.kafka.wakeup import of as wakeups_of
from outbox.relay.publisher import Delivery, Message, ResolvedDelivery

log = logging.getLogger("outbox.kafka")


def close_producer(producer: Any, timeout: float | None) -> None:
    """Flush for up to `timeout` seconds, then close for sure, dropping what is left."""
    wakeups_of(producer).release()
    try:
        producer.close(timeout=timeout)
        return
    except kafka_errors.KafkaTimeoutError:
        # The flush timed out: kafka-python raises out of close() and leaves its sender thread
        # running. Stop it without sending; it fails the remaining futures on its way out.
        log.warning("Kafka producer closed before every message was acknowledged")
    except Exception as exc:
        log.warning("closing the Kafka producer: %s", translate(exc))
    abort_producer(producer)


def abort_producer(producer: Any) -> None:
    """Close without sending anything more: the sender thread stops after the request it is
    writing (if any), fails every buffered and in-flight future ("Producer is closed
    forcefully", a retriable outcome) and closes its connections."""
    try:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(5)
        producer.close(timeout=0)
    except Exception as exc:
        log.warning("closing the Kafka producer: %s", translate(exc))


def _no_partition(topic: str, key: bytes | None) -> None:
    return None


def fail_fast_on_unknown_producer_id(producer: Any) -> None:
    """Make `producer` give up a batch at once when the broker does not know its producer id on
    a partition it never had an acknowledgement from.

    kafka-python reads that answer as the broker's retention having removed the producer's
    state (KAFKA-5793): it resets the sequence and resends, which a broker that lost the
    producer id altogether (an in-memory broker restarted, a cluster rebuilt) answers the same
    way again, every 100 ms until the delivery timeout, 2 minutes. Retention cannot explain it
    where nothing was ever acknowledged, so such a batch fails with UnknownProducerIdError
    instead, and the publisher builds a new producer (see `KafkaPublisher._failed`).
    Private API, guarded: without the hook the behaviour stays kafka-python's own.
    """
    sender = getattr(producer, "_sender", None)
    original = getattr(sender, "_is_retention_based_unknown_producer_id", None)
    manager = getattr(sender, "_transaction_manager", None)
    if (
        sender is None
        or original is None
        or manager is None
        or not hasattr(manager, "last_acked_offset")
    ):
        return

    def is_retention_based(batch: Any, error_cls: Any, log_start_offset: Any) -> bool:
        if manager.last_acked_offset(batch.topic_partition) < 0:
            return False
        return bool(original(batch, error_cls, log_start_offset))

    sender._is_retention_based_unknown_producer_id = is_retention_based


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
        self._own_partitioner = "partitioner" not in self._settings
        self._bootstrap_servers = bootstrap_servers
        # Looked up on the module, so that a test can pretend the package is missing.
        if not _client.crc32c_available():
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
            producer = KafkaProducer(**settings)
            install_wakeup(producer)
            fail_fast_on_unknown_producer_id(producer)
            return producer
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
        # The partition of a keyed message computed here (a cached hash), not by kafka-python;
        # a user's own partitioner is left alone.
        choose = PartitionChooser.for_call(producer) if self._own_partitioner else _no_partition
        # Sender wake-ups held back while the batch is handed over (outbox.kafka.wakeup).
        wakeups = wakeups_of(producer, {message.topic for message in messages})
        wakeups.hold()
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
                        choose(message.topic, message.key),
                        message.timestamp_ms,
                    )
                )
            except Exception as exc:
                error = errors[len(futures)] = self._failed_sync(exc)
                failed[(message.topic, message.key)] = error
                append(None)
        wakeups.release()
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

    def abort(self) -> None:
        """Drop what the producer holds, unsent, and fail its pending deliveries; the next
        `publish` builds a new producer. For a relay that lost its lease: nothing buffered may
        reach the broker after another relay took over."""
        with self._lock:
            if self._closed:
                return
            producer, self._producer = self._producer, None
            self._replace_producer = False
        if producer is not None:
            abort_producer(producer)
            log.debug("Kafka producer aborted: its buffered records were dropped")

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


__all__ = ["KafkaDelivery", "KafkaPublisher", "abort_producer", "close_producer"]
