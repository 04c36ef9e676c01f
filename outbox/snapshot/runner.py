"""The snapshot loop: resume or start a snapshot, then one short transaction per chunk.

Each chunk's transaction (1) holds the snapshot row (`SnapshotState.hold`: fencing, and the
write lock first on SQLite), (2) reads the next rows after the cursor under shared row locks,
(3) writes their ``<table>.snapshot`` events with the write side's own INSERT path, and (4)
moves the cursor, then commits. Events and cursor commit together, so a crash at any point
resumes exactly after the last committed chunk: every row once, none twice.

Between chunks the loop honours a stop request (Ctrl-C in the command), ``max_rows_per_second``
and ``max_pending`` (it waits while the relay has more events than that to publish, so that
live events are not queued behind the snapshot).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, NoInspectionAvailable

from outbox.errors import ConfigurationError, SnapshotError, TableMissingError
from outbox.ops.entrypoint import database_error
from outbox.relay.store.engine import is_transient_db_error
from outbox.retry import retry_transient
from outbox.snapshot.chunks import TableReader
from outbox.snapshot.keys import Key, KeySet
from outbox.snapshot.options import Progress, SnapshotOptions, SnapshotResult
from outbox.snapshot.pacing import Pacer, next_limit
from outbox.snapshot.state import SnapshotInfo, SnapshotState
from outbox.write.capture import CaptureRegistry
from outbox.write.orm import table_name
from outbox.write.writer import OutboxWriter, row_of

logger = logging.getLogger("outbox.snapshot")

#: The snapshot event's op: ``<table>.snapshot``.
SNAPSHOT_OP = "snapshot"


#: How long a chunk waits for one row's lock on PostgreSQL before it rolls back and retries:
#: while it waits it holds the locks it already took, which would stall the application's
#: writes to those rows behind one long application transaction.
LOCK_TIMEOUT = "2s"


def _is_transient(error: BaseException) -> bool:
    """Worth retrying: lost connections, deadlocks, lock timeouts, a locked SQLite database.
    SQLite reports a bad filter as an OperationalError too: that one is not transient."""
    if not is_transient_db_error(error):
        return False
    orig = getattr(error, "orig", None)
    if type(orig).__module__.startswith("sqlite3"):
        text = str(orig).lower()
        return "locked" in text or "busy" in text
    return True


def _result(info: SnapshotInfo, resumed: bool) -> SnapshotResult:
    return SnapshotResult(
        id=info.id,
        rows=info.rows_done,
        chunks=info.chunks,
        seconds=info.active_seconds,
        state=info.state,
        resumed=resumed,
    )


def _describe(error: BaseException) -> str:
    """One line for a log or a message: the driver's first line, passwords masked."""
    return database_error(error) if isinstance(error, DBAPIError) else str(error)


class SnapshotRunner:
    """Runs one model's snapshot to completion (or until stopped), resuming an unfinished one."""

    def __init__(
        self,
        *,
        session_factory: Callable[[], Any],
        model: type[Any],
        writer: OutboxWriter,
        capture: CaptureRegistry,
        state: SnapshotState,
        options: SnapshotOptions,
        on_progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        try:
            mapper = sa.inspect(model)
        except NoInspectionAvailable:
            raise ConfigurationError(f"snapshot() takes a mapped class, not {model!r}") from None
        if type(session_factory).__name__ == "async_sessionmaker":
            raise ConfigurationError(
                "snapshot() runs synchronous transactions: pass sessionmaker(engine.sync_engine) "
                "instead of an async_sessionmaker"
            )
        if not capture.covers(model):
            raise ConfigurationError(
                f"{model.__qualname__} is not captured by this outbox: call "
                f"outbox.capture({model.__qualname__}) in every process that writes it, deploy "
                "that, then snapshot (changes made without capture are never seen)"
            )
        self.mapper = mapper
        self.model_name = f"{model.__module__}:{model.__qualname__}"
        self.target = table_name(mapper)
        self.keys = KeySet(mapper)
        where = options.where
        self.where_text = where if isinstance(where, str) or where is None else None
        clause: sa.ColumnElement[bool] | None
        clause = sa.text(where) if isinstance(where, str) else where  # type: ignore[assignment]
        self.reader = TableReader(mapper, self.keys, clause)
        self.session_factory = session_factory
        self.writer = writer
        self.capture = capture
        self.state = state
        self.options = options
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        self.pacer = Pacer(options, self.stop)
        self.owner = f"{uuid.uuid4()}"

    # -- transactions ----------------------------------------------------------------------------

    def _connection(self, session: Any) -> sa.Connection:
        """The session's connection at READ COMMITTED: a locking read then returns the row as
        its last writer committed it (and MariaDB takes no gap locks that block inserts)."""
        bind = session.get_bind(mapper=self.mapper)
        options = {} if bind.dialect.name == "sqlite" else {"isolation_level": "READ COMMITTED"}
        conn: sa.Connection = session.connection(
            bind_arguments={"mapper": self.mapper}, execution_options=options
        )
        if bind.dialect.name == "postgresql":
            # SET LOCAL: this transaction only, never the application's pooled sessions.
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        return conn

    def _transaction(self, work: Callable[[sa.Connection], Any]) -> Any:
        def attempt() -> Any:
            with self.session_factory() as session, session.begin():
                return work(self._connection(session))

        return retry_transient(
            attempt,
            is_transient=_is_transient,
            stop=self.stop,
            describe=lambda e: f"snapshot of {self.target}: {_describe(e)}",
            logger=logger,
            maximum=5.0,
        )

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> SnapshotResult:
        info, resumed = self._begin()
        if info.state == "done":
            return _result(info, resumed)
        cursor, upto = self.keys.load(info.cursor), self.keys.load(info.max_key)
        logger.info(
            "snapshot %s of %s %s: %d of about %s rows done",
            info.id,
            self.target,
            "resumed" if resumed else "started",
            info.rows_done,
            info.total_estimate,
        )
        started, rows_now = time.monotonic(), 0
        limit = self.options.effective_chunk_size
        try:
            while upto is not None:
                if self.stop.is_set():
                    return self._end(info.id, "interrupted", resumed)
                self.pacer.wait_for_backlog(
                    lambda limit: self._transaction(partial(self.state.pending_over, limit=limit)),
                    lambda note: self._report(info.id, None, note),
                )
                if self.stop.is_set():
                    continue
                done = self._transaction(
                    partial(self._chunk, snapshot_id=info.id, after=cursor, upto=upto, limit=limit)
                )
                if done is None:
                    return self._fenced(info.id)
                count, cursor, seconds = done
                rows_now += count
                self._report(info.id, rows_now, None)
                if cursor == upto or (
                    count < limit
                    and not self._transaction(
                        partial(self.reader.remaining, after=cursor, upto=upto)
                    )
                ):
                    break
                limit = next_limit(limit, seconds, self.options.effective_chunk_size)
                self.pacer.throttle(started, rows_now)
        except KeyboardInterrupt:
            # The chunk in flight rolled back with its transaction: resume is still exact.
            self._transaction(lambda c: self.state.finish(c, info.id, self.owner, "interrupted"))
            raise
        except DBAPIError as exc:
            error = _describe(exc)
            self._transaction(lambda c: self.state.finish(c, info.id, self.owner, "failed", error))
            raise SnapshotError(
                f"snapshot {info.id} of {self.target} failed: {error}; run it again to resume"
            ) from None
        return self._end(info.id, "done", resumed)

    def _begin(self) -> tuple[SnapshotInfo, bool]:
        """The snapshot to run: the unfinished one of this table (claimed), or a new one."""
        try:
            return self._transaction(self._claim_or_create)  # type: ignore[no-any-return]
        except DBAPIError as exc:
            if self._missing_table():
                raise TableMissingError(
                    f"snapshot table {self.state.table.fullname!r} does not exist: run "
                    "`outbox migrate --db-url URL` or `alembic upgrade heads`"
                ) from None
            raise ConfigurationError(
                f"cannot start the snapshot of {self.target}: {_describe(exc)}"
            ) from None

    def _missing_table(self) -> bool:
        with self.session_factory() as session:
            bind = session.get_bind(mapper=self.mapper)
            table = self.state.table
            return not sa.inspect(bind).has_table(table.name, schema=table.schema)

    def _claim_or_create(self, conn: sa.Connection) -> tuple[SnapshotInfo, bool]:
        old = self.state.unfinished(conn, self.target)
        if old is not None and self.options.restart:
            self.state.cancel(conn, old.id)
            old = None
        if old is not None:
            if old.where != self._where_sql(conn):
                raise ConfigurationError(
                    f"snapshot {old.id} of {self.target} is unfinished with where="
                    f"{old.where!r}: run it with the same filter to resume, or restart"
                )
            self.state.claim(conn, old.id, self.owner)
            info = self.state.get(conn, old.id)
            assert info is not None
            return info, True
        upto = self.reader.max_key(conn)
        snapshot_id = self.state.create(
            conn,
            model=self.model_name,
            target=self.target,
            where=self._where_sql(conn),
            max_key=self.keys.dump(upto),
            total_estimate=self.reader.count(conn),
            chunk_size=self.options.chunk_size,
            owner=self.owner,
        )
        if upto is None:  # Nothing to snapshot.
            self.state.finish(conn, snapshot_id, self.owner, "done")
        info = self.state.get(conn, snapshot_id)
        assert info is not None
        return info, False

    def _where_sql(self, conn: sa.Connection) -> str | None:
        if self.where_text is not None or self.reader.where is None:
            return self.where_text
        compiled = self.reader.where.compile(conn, compile_kwargs={"literal_binds": True})
        return str(compiled)

    def _chunk(
        self, conn: sa.Connection, snapshot_id: str, after: Key | None, upto: Key, limit: int
    ) -> tuple[int, Key | None, float] | None:
        began = time.monotonic()
        if not self.state.hold(conn, snapshot_id, self.owner):
            return None
        rows = self.reader.chunk(conn, after, upto, limit)
        if not rows:
            self.state.advance(
                conn, snapshot_id, self.owner, cursor=self.keys.dump(after), rows=0, seconds=0.0
            )
            return 0, after, time.monotonic() - began
        drafts = self.capture.row_events(
            self.mapper,
            SNAPSHOT_OP,
            [({"row": self.reader.payload_row(r)}, self.reader.key_of(r)[1]) for r in rows],
            {"snapshot_id": snapshot_id},
        )
        self.writer.insert(
            conn,
            [row_of(d) for d in drafts],
            [len(d.payload or b"") for d in drafts],
            notify=self.writer.notify and conn.dialect.name == "postgresql",
        )
        last, _ = self.reader.key_of(rows[-1])
        seconds = time.monotonic() - began
        self.state.advance(
            conn,
            snapshot_id,
            self.owner,
            cursor=self.keys.dump(last),
            rows=len(rows),
            seconds=seconds,
        )
        return len(rows), last, seconds

    def _report(self, snapshot_id: str, rows_now: int | None, waiting: str | None) -> None:
        if self.on_progress is None:
            return
        info = self._transaction(lambda c: self.state.get(c, snapshot_id))
        if info is not None:
            self.on_progress(Progress(info=info, waiting=waiting))

    # -- endings ---------------------------------------------------------------------------------

    def _end(self, snapshot_id: str, state: str, resumed: bool) -> SnapshotResult:
        if not self._transaction(lambda c: self.state.finish(c, snapshot_id, self.owner, state)):
            return self._fenced(snapshot_id)
        info = self._transaction(lambda c: self.state.get(c, snapshot_id))
        return _result(info, resumed)

    def _fenced(self, snapshot_id: str) -> SnapshotResult:
        info = self._transaction(lambda c: self.state.get(c, snapshot_id))
        if info is not None and info.state == "cancelled":
            raise SnapshotError(f"snapshot {snapshot_id} of {self.target} was cancelled")
        raise SnapshotError(
            f"snapshot {snapshot_id} of {self.target} was resumed by another runner: "
            "this one stopped after its last committed chunk"
        )
