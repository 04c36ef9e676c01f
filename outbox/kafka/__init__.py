"""The Kafka adapter: kafka-python behind the project's own interfaces.

kafka-python is imported in `outbox.kafka._client` only; every other module here takes its
names from there. Its exceptions are translated into the project's own (`outbox.errors`) in
`outbox.kafka.outcomes`. The relay uses this package through the `Publisher` contract and never
imports kafka-python itself.

Modules: `settings` (producer defaults and checks), `publisher` (`KafkaPublisher` and its
deliveries), `partitioner` (the key-hash cache), `outcomes` (exception translation).
"""

from outbox.kafka._client import crc32c_available
from outbox.kafka.outcomes import translate
from outbox.kafka.publisher import KafkaDelivery, KafkaPublisher, close_producer
from outbox.kafka.settings import DEFAULT_PRODUCER_SETTINGS, producer_settings

__all__ = [
    "DEFAULT_PRODUCER_SETTINGS",
    "KafkaDelivery",
    "KafkaPublisher",
    "close_producer",
    "crc32c_available",
    "producer_settings",
    "translate",
]
