"""kafka-python's exceptions translated, at the boundary, into the project's outcomes:
`BrokerUnavailableError` (transient: try again later) or `EventRejectedError` (permanent for
that one message). Nothing outside `outbox.kafka` sees a kafka-python exception."""

from __future__ import annotations

from outbox.errors import BrokerUnavailableError, EventRejectedError, PublishError
from outbox.kafka._client import kafka_errors

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


__all__ = ["translate"]
