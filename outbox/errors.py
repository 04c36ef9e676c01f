"""The exception tree. Every error this package raises on purpose derives from `OutboxError`.

    OutboxError
    ├── ConfigurationError (also ValueError)  bad names, options, URLs; raised when built
    │   ├── NotInstalledError                 emit() on a session whose factory was not installed
    │   └── TableMissingError                 the outbox table does not exist: run the migration
    ├── PayloadError (also TypeError)         a payload or header that cannot be serialized
    ├── PublishError                          the broker did not take a message
    │   ├── BrokerUnavailableError            transient: outage, timeout, leader moving (retry)
    │   └── EventRejectedError                permanent for this event: too large, bad topic (park)
    ├── LeaseLostError                        this relay is no longer the active one (fenced)
    └── SnapshotError                         a snapshot failed, was cancelled or resumed elsewhere

kafka-python's exceptions never escape the Kafka publisher: they are translated at that boundary.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Root of every error raised by sqlalchemy-outbox."""


class ConfigurationError(OutboxError, ValueError):
    """A setting, name or URL is invalid. The message says which and why."""


class NotInstalledError(ConfigurationError):
    """`emit` was called on a session whose class or factory was never passed to `install`."""


class TableMissingError(ConfigurationError):
    """The outbox table does not exist in the database."""


class PayloadError(OutboxError, TypeError):
    """A payload or header value cannot be serialized to bytes."""


class PublishError(OutboxError):
    """The broker did not acknowledge a message."""

    #: True when sending the same message again may succeed.
    retriable: bool = True


class BrokerUnavailableError(PublishError):
    """The broker cannot be reached or did not answer in time. Not the event's fault."""

    retriable = True


class EventRejectedError(PublishError):
    """The broker rejected this event for good (too large, invalid topic name, ...)."""

    retriable = False


class LeaseLostError(OutboxError):
    """This relay lost its lease: another relay may be active, so it must not publish or mark."""


class SnapshotError(OutboxError):
    """A snapshot stopped before it finished: it failed, was cancelled or was resumed elsewhere.

    A failed snapshot resumes from its last committed chunk when run again."""
