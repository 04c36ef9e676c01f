"""Helpers of the snapshot tests: models per primary key kind, a relay thread, the fold."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, sessionmaker

from outbox.config import RelayConfig
from outbox.relay import Relay
from outbox.write.capture import encode_value
from outbox.write.orm import key_text
from outbox.write.outbox import Outbox
from outbox.write.serialization import dumps_json
from tests.support import Received, write_engine

KEY_KINDS = ["int", "uuid", "text", "composite"]


def unique_table(prefix: str = "cust") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def make_model(kind: str, table: str) -> type[Any]:
    """A mapped class on its own metadata, with a primary key of `kind` (see KEY_KINDS)."""

    class Base(DeclarativeBase):
        pass

    columns: dict[str, Any] = {"__tablename__": table}
    if kind == "int":
        columns["id"] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    elif kind == "uuid":
        columns["id"] = mapped_column(sa.Uuid, primary_key=True)
    elif kind == "text":
        columns["code"] = mapped_column(sa.String(40), primary_key=True)
    elif kind == "composite":
        columns["region"] = mapped_column(sa.String(10), primary_key=True)
        columns["num"] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    else:
        raise ValueError(kind)
    columns["name"] = mapped_column(sa.String(60), nullable=False)
    columns["n"] = mapped_column(sa.Integer, nullable=False, default=0)
    return type(f"Row_{kind}", (Base,), columns)


def key_of(kind: str, i: int) -> dict[str, Any]:
    """The primary key columns of row number `i`."""
    if kind == "int":
        return {"id": i + 1}
    if kind == "uuid":
        return {"id": uuid.UUID(int=(i * 2654435761 + 12345) % (1 << 122) | (4 << 76))}
    if kind == "text":
        return {"code": f"c{i:06d}"}
    return {"region": f"r{i % 5}", "num": i}


def key_columns(model: type[Any]) -> list[str]:
    return [c.name for c in sa.inspect(model).primary_key]


@dataclass
class App:
    """An application: engine, session factory, an Outbox capturing `model` (compacted)."""

    url: str
    model: type[Any]
    compacted: bool = True
    outbox: Outbox = field(default_factory=Outbox)

    def __post_init__(self) -> None:
        self.engine = write_engine(self.url)
        self.outbox.capture(self.model, compacted=self.compacted)
        self.outbox.metadata.create_all(self.engine)
        self.model.metadata.create_all(self.engine)
        self.factory: sessionmaker[Session] = sessionmaker(self.engine)
        self.outbox.install(self.factory)
        self.table: sa.Table = self.model.__table__

    def seed(self, kind: str, count: int) -> None:
        """Rows that exist before capture: inserted with Core, so no event is written."""
        rows = [{**key_of(kind, i), "name": f"name {i}", "n": i} for i in range(count)]
        with self.engine.begin() as conn:
            for start in range(0, count, 500):
                conn.execute(self.table.insert(), rows[start : start + 500])

    def contents(self) -> dict[str, dict[str, Any]]:
        """The table as the folded topic must equal it: key text -> row as JSON values."""
        names = key_columns(self.model)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table)).all()
        out = {}
        for row in rows:
            m = row._mapping
            encoded = {c.name: encode_value(m[c]) for c in self.table.columns}
            out[key_text(m[n] for n in names) or ""] = json.loads(dumps_json(encoded))
        return out

    def close(self) -> None:
        self.outbox.uninstall(self.factory)
        self.engine.dispose()


@contextmanager
def running_relay(url: str, kafka: str) -> Iterator[Relay]:
    relay = Relay(RelayConfig(db_url=url, bootstrap_servers=kafka, poll_interval=0.05))
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        relay.stop()
        thread.join(30)
        relay.store.dispose()


def op_of(record: Received) -> str:
    return record.headers["event_type"].decode().rsplit(".", 1)[1]


@dataclass
class Fold:
    """Each key's events folded in topic order, and the order violations seen on the way."""

    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshot_events: int = 0
    #: A snapshot event that differs from the state its key's earlier capture events made.
    stale_after_update: int = 0
    #: A snapshot event of a key after its delete (and no re-create in between).
    stale_after_delete: int = 0
    tombstones: int = 0


def fold(records: list[Received]) -> Fold:
    out = Fold()
    captured: set[str] = set()  # keys whose state came from a capture event
    deleted: set[str] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        key = (r.key or b"").decode()
        if r.value is None:
            out.tombstones += 1
            out.state.pop(key, None)
            deleted.add(key)
            continue
        op = op_of(r)
        row = json.loads(r.value)["row"]
        if op == "deleted":
            out.state.pop(key, None)
            deleted.add(key)
            captured.add(key)
        elif op == "snapshot":
            out.snapshot_events += 1
            if key in deleted:
                out.stale_after_delete += 1
            elif key in captured and out.state.get(key) != row:
                out.stale_after_update += 1
            out.state[key] = row
        else:
            out.state[key] = row
            deleted.discard(key)
            captured.add(key)
    return out


def random_writes(
    app: App, kind: str, count: int, stop: threading.Event, seed: int, most: int = 400
) -> int:
    """Update, delete and re-insert random rows of this thread's own third of the table (one
    per transaction) until `stop` (or `most` changes); returns the
    number of committed changes. Lock conflicts (SQLite, deadlocks) are retried, as an
    application would."""
    rng = random.Random(seed)
    done = 0
    while not stop.is_set() and done < most:
        # Each thread owns the rows i % 3 == seed % 3: two application threads racing on one
        # row (an update of a row another thread deleted) would be the test's own failure.
        i = rng.randrange(seed % 3, count, 3)
        pk = key_of(kind, i)
        for _ in range(50):
            try:
                with app.factory.begin() as session:
                    identity = tuple(pk[c] for c in key_columns(app.model))
                    obj = session.get(app.model, identity if len(identity) > 1 else identity[0])
                    if obj is None:
                        session.add(app.model(**pk, name=f"again {i}", n=-i))
                    elif rng.random() < 0.3:
                        session.delete(obj)
                    else:
                        obj.name = f"upd {rng.random():.6f}"
                        obj.n = obj.n + 1
                done += 1
                break
            except sa.exc.OperationalError:
                # Lock conflicts (SQLite's single writer, MariaDB deadlocks): retried.
                stop.wait(0.01)
    return done


#: An application module for the command's tests (`--app snapapp:outbox`), written to a
#: temporary directory with its table name filled in.
APP_MODULE = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outbox import Outbox

outbox = Outbox()


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "{table}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(60))
    n: Mapped[int] = mapped_column(default=0)


class Uncaptured(Base):
    __tablename__ = "{table}_other"
    id: Mapped[int] = mapped_column(primary_key=True)


outbox.capture(Customer, compacted=True)
not_an_outbox = 42
"""


def write_app(directory: Any, table: str) -> None:
    from pathlib import Path

    Path(directory, "snapapp.py").write_text(APP_MODULE.format(table=table))
