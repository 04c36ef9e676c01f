"""An application module for `outbox consume --app tests.inbox_app:inbox` in the tests.

Its database comes from INBOX_TEST_DB; INBOX_TEST_SLOW makes each application take that many
seconds (so that a SIGKILL or SIGSTOP lands mid-stream); INBOX_TEST_POISON lists event ids
whose handler raises.
"""

from __future__ import annotations

import os
import time

from sqlalchemy.orm import Session

from outbox.inbox import InboxEvent
from tests.inbox_support import effects_inbox

_poison = {p for p in os.environ.get("INBOX_TEST_POISON", "").split(",") if p}
inbox = effects_inbox(os.environ.get("INBOX_TEST_DB", "sqlite://"), poison=_poison)
_slow = float(os.environ.get("INBOX_TEST_SLOW", "0"))

if _slow:

    @inbox.handler()
    def slowly(session: Session, event: InboxEvent) -> None:
        time.sleep(_slow)


not_an_inbox = object()
