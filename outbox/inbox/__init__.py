"""The consuming side: `Inbox` applies the events of Kafka topics once per consumer."""

from outbox.inbox.event import InboxEvent
from outbox.inbox.inbox import Inbox
from outbox.inbox.observer import InboxObserver
from outbox.inbox.settings import InboxConfig

__all__ = ["Inbox", "InboxConfig", "InboxEvent", "InboxObserver"]
