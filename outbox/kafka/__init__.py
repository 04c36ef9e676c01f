"""The Kafka adapter: kafka-python behind the project's own interfaces.

kafka-python is imported in `outbox.kafka.publisher` only; its exceptions are translated there
into the project's own (`outbox.errors`). The relay uses this package through the `Publisher`
contract and never imports kafka-python itself.
"""

from outbox.kafka.publisher import (
    DEFAULT_PRODUCER_SETTINGS,
    KafkaDelivery,
    KafkaPublisher,
    close_producer,
    crc32c_available,
    producer_settings,
    translate,
)

__all__ = [
    "DEFAULT_PRODUCER_SETTINGS",
    "KafkaDelivery",
    "KafkaPublisher",
    "close_producer",
    "crc32c_available",
    "producer_settings",
    "translate",
]
