"""kafka-python, imported here and nowhere else in `outbox`.

Every module of `outbox.kafka` (the publisher today, a consumer later) takes the kafka-python
names it needs from this module, so that the library's import quirks are handled once and a
version change touches one file.
"""

from __future__ import annotations

import importlib.util
import warnings

with warnings.catch_warnings():
    # kafka-python 3.0 loads its protocol schemas through importlib.resources' legacy API,
    # which warns on import: keep that out of applications that run with -W error.
    warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)
    import kafka.errors as kafka_errors
    from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.partitioner import DefaultPartitioner, Partitioner
    from kafka.partitioner.default import murmur2
    from kafka.structs import OffsetAndMetadata


def crc32c_available() -> bool:
    """Whether kafka-python can use the C implementation of CRC32C (else pure Python, slow)."""
    return importlib.util.find_spec("crc32c") is not None


__all__ = [
    "ConsumerRebalanceListener",
    "DefaultPartitioner",
    "KafkaConsumer",
    "KafkaProducer",
    "OffsetAndMetadata",
    "Partitioner",
    "TopicPartition",
    "crc32c_available",
    "kafka_errors",
    "murmur2",
]
