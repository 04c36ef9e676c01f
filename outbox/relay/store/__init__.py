"""All SQL the relay and the operator tools run: reading pending events, marking them, parking,
the lease that elects one active relay per table, status, requeue, purge and the wake-up.

Every write that follows a publish is fenced: it runs in one transaction with an UPDATE of the
lease row that matches only while this relay still holds the lease with the same epoch, by the
database's clock. A relay that was paused past its lease therefore cannot mark anything.

`OutboxStore` (facade.py) is the one object the relay and the CLI use; it composes the roles:

- engine.py      the engine and its per-dialect setup, transient errors, the database's clock
- executor.py    transactions, reads outside them, and the hot statements' faster driver path
- leases.py      named leases in the lease table: take, renew, release, fence, holder
- members.py     the relays table: heartbeats, the live relays, leaving
- reads.py       pending events (the relay's hot reads) and the pending/parked conditions
- marks.py       completions and rejections, fenced by the lease
- admin.py       status, parked events, requeue, drop, purge (the CLI's)
- waker.py       the wait between reads (a timer)
- postgresql.py  PostgreSQL only: the one-statement fence, psycopg 3's cursor, LISTEN/NOTIFY
"""

from outbox.relay.store.engine import create_relay_engine, db_epoch, is_transient_db_error
from outbox.relay.store.facade import OutboxStore
from outbox.relay.store.leases import LEASE_NAME, Lease
from outbox.relay.store.postgresql import PostgresWaker
from outbox.relay.store.reads import COUNT_ALL
from outbox.relay.store.waker import Waker

__all__ = [
    "COUNT_ALL",
    "LEASE_NAME",
    "Lease",
    "OutboxStore",
    "PostgresWaker",
    "Waker",
    "create_relay_engine",
    "db_epoch",
    "is_transient_db_error",
]
