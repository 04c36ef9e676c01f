"""Which of the relay's statements bypass SQLAlchemy's execution on psycopg 3 (no I/O: an
engine connects only when used)."""

from __future__ import annotations

import sqlalchemy as sa

from outbox.relay.store import OutboxStore
from outbox.relay.store.postgresql import PsycopgCursor


def store_for(url: str) -> OutboxStore:
    return OutboxStore(sa.create_engine(url), "orders_outbox", "app")


def test_the_hot_statements_run_on_psycopg3s_cursor_with_only_the_seq_list_converted() -> None:
    store = store_for("postgresql+psycopg://relay@127.0.0.1/shop")
    fenced, direct = store.marks.fenced, store.executor.direct
    assert fenced is not None and isinstance(direct, PsycopgCursor)
    hot = [
        store.reads.fetch_query(100, (), after=False),
        store.reads.fetch_query(100, (), after=True),
        *(
            fenced.statement(where, retain)
            for where in (store.marks.seq_range, store.marks.seq_any)
            for retain in (False, True)
        ),
    ]
    assert set(direct.compiled) == set(hot)
    for statement in hot:
        compiled, converters = direct.compiled[statement]
        assert '"app".orders_outbox' in compiled.string or "app.orders_outbox" in compiled.string
        # The seq list (an ARRAY) is the one parameter SQLAlchemy would touch, and it is passed
        # through unchanged; no other parameter or column needs converting on this driver.
        assert set(converters) <= {"seqs"}
        for convert in converters.values():
            assert convert([3, 1, 2]) == [3, 1, 2]


def test_a_read_leaving_out_keys_is_built_per_call_and_runs_through_sqlalchemy() -> None:
    store = store_for("postgresql+psycopg://relay@127.0.0.1/shop")
    query = store.reads.fetch_query(100, {"k1"}, after=True)
    assert store.reads.fetch_query(100, {"k1"}, after=True) is not query
    assert isinstance(store.executor.direct, PsycopgCursor) and store.executor.direct.compiled == {}


def test_other_drivers_use_sqlalchemys_execution() -> None:
    for url in ("postgresql+psycopg2://relay@127.0.0.1/shop", "sqlite://"):
        store = store_for(url) if url != "sqlite://" else OutboxStore(sa.create_engine(url))
        store.reads.fetch_query(100, (), after=True)
        assert store.executor.direct is None
