"""The inbox against the real broker and real databases: dedup, order, poison, fence, CLI."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from outbox.inbox.decode import Record
from outbox.inbox.store import DuplicateRace, Fenced, InboxStore
from tests.inbox_support import (
    ConsumerProcess,
    Sent,
    applied_ids,
    create_topic,
    effect_rows,
    effects,
    effects_inbox,
    figures,
    make_events,
    new_topic,
    prepare_db,
    produce,
    run_outbox,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration


def _record(event_id: str, offset: int = 0) -> Record:
    return Record("t", 0, offset, b"k", b"{}", [("event_id", event_id.encode())])


# -- 6. duplicate detection without error text, on each database ------------------------------


def test_duplicate_detection_uses_the_key_not_the_error_text(db_url: str) -> None:
    engine = prepare_db(db_url)
    store = InboxStore("billing")
    factory = sessionmaker(engine)
    with factory() as s, s.begin():
        assert not store.seen(s, "e1")
        store.record(s, "e1", _record("e1"), "done")
    with factory() as s, s.begin():
        assert store.seen(s, "e1")
    # A copy that slipped past the SELECT fails the primary key: that class, whatever the
    # server's language, is the signal; the transaction is rolled back whole.
    with pytest.raises(DuplicateRace), factory() as s, s.begin():
        s.execute(effects.insert().values(event_id="e1", key="k", seq=0, attempt=1))
        store.record(s, "e1", _record("e1", 5), "done")
    assert effect_rows(db_url) == []
    # Another consumer's namespace is separate.
    with factory() as s, s.begin():
        assert not InboxStore("shipping").seen(s, "e1")
    engine.dispose()


def test_each_event_applied_once_when_repeated_at_new_offsets(db_url: str, kafka: str) -> None:
    prepare_db(db_url).dispose()
    topic = new_topic()
    create_topic(kafka, topic, 2)
    sent = make_events(keys=4, per_key=5)
    repeats = sent[::3]  # the relay publishing some events again after a crash
    produce(kafka, topic, sent + repeats)
    inbox = effects_inbox(db_url)
    with running(inbox, kafka, [topic]):
        wait_for(lambda: len(applied_ids(db_url)) >= len(sent), 60, "every event applied")
        wait_for(lambda: _next_offsets(db_url) == len(sent) + len(repeats), 30, "offsets stored")
    found = figures(db_url, sent)
    print(found.line(f"dedup on {sa.make_url(db_url).get_backend_name()}"),
          f"duplicates dropped {len(repeats)}")  # fmt: skip
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)
    assert found.applied == len(sent)


def _next_offsets(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    offsets = InboxStore("billing").offsets
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.sum(offsets.c.next_offset))).scalar() or 0)
    finally:
        engine.dispose()


# -- 5 (fence). a consumer that lost a partition cannot commit for it ---------------------------


def test_enter_fences_and_dedups_in_one_step(db_url: str) -> None:
    """The apply path's `enter`: fresh id -> True and the offset stored; the same id again (at a
    new offset) -> False, offset still advanced; an older generation -> Fenced, nothing kept."""
    engine = prepare_db(db_url)
    store = InboxStore("billing")
    factory = sessionmaker(engine)
    with factory() as s, s.begin():
        old, _ = store.claim(s, "t", 0, "first")
    with factory() as s, s.begin():
        assert store.enter(s, old, "e1", _record("e1", 3), "done") is True
    with factory() as s, s.begin():
        assert store.enter(s, old, "e1", _record("e1", 7), "done") is False
        assert store.seen(s, "e1")
    with factory() as s, s.begin():
        new, start = store.claim(s, "t", 0, "second")
    assert (new, start) == (old + 1, 8)
    with pytest.raises(Fenced), factory() as s, s.begin():
        s.execute(effects.insert().values(event_id="e2", key="k", seq=0, attempt=1))
        store.enter(s, old, "e2", _record("e2", 8), "done")
    assert effect_rows(db_url) == []
    with factory() as s, s.begin():
        assert not store.seen(s, "e2")
        assert store.enter(s, new, "e2", _record("e2", 8), "done") is True
        # Another consumer's namespace is separate.
        other = InboxStore("shipping")
        generation, _ = other.claim(s, "t", 0, "third")
        assert other.enter(s, generation, "e2", _record("e2", 8), "done") is True
    engine.dispose()


def test_an_older_generation_cannot_commit(db_url: str) -> None:
    engine = prepare_db(db_url)
    factory = sessionmaker(engine)
    store = InboxStore("billing")
    with factory() as s, s.begin():
        old, start = store.claim(s, "orders", 0, "zombie")
    assert (old, start) == (1, None)
    with factory() as s, s.begin():
        store.fence(s, "orders", 0, old, 10)
    with factory() as s, s.begin():
        new, start = store.claim(s, "orders", 0, "successor")
    assert (new, start) == (2, 10)
    # The zombie wakes up and tries to apply a record: the fence fails, nothing commits.
    with pytest.raises(Fenced), factory() as s, s.begin():
        s.execute(effects.insert().values(event_id="z", key="k", seq=0, attempt=1))
        store.fence(s, "orders", 0, old, 11)
    assert effect_rows(db_url) == []
    with factory() as s, s.begin():
        store.fence(s, "orders", 0, new, 11)
    engine.dispose()


# -- 4. poison holds only its key; requeue and drop --------------------------------------------


def _parked(db_url: str) -> list[dict[str, object]]:
    result = run_outbox("inbox", "parked", "list", "--db-url", db_url, "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_poison_parks_its_key_and_requeue_applies_it_then_the_held_in_order(
    pg_url: str, kafka: str
) -> None:
    prepare_db(pg_url).dispose()
    topic = new_topic()
    create_topic(kafka, topic, 2)
    sent = make_events(keys=3, per_key=5)
    poison = next(e for e in sent if e.key == "k0" and e.seq == 1)
    second = next(e for e in sent if e.key == "k1" and e.seq == 3)
    bad = {poison.event_id or "", second.event_id or ""}
    produce(kafka, topic, sent)
    inbox = effects_inbox(pg_url, poison=bad)
    other = {e.event_id for e in sent if e.key == "k2"}
    with running(inbox, kafka, [topic]):
        wait_for(lambda: other <= applied_ids(pg_url), 60, "the other key applied")
        wait_for(lambda: len(_parked(pg_url)) == 4 + 2, 30, "parked and held rows")
        rows = _parked(pg_url)
        assert [(r["key"], r["state"]) for r in rows if r["key"] == "k0"] == [
            ("k0", "parked"), ("k0", "held"), ("k0", "held"), ("k0", "held"),
        ]  # fmt: skip
        assert "ValueError: cannot apply" in str(rows[0]["error"])
        applied = applied_ids(pg_url)
        assert {e.event_id for e in sent if e.key == "k0" and e.seq >= 1}.isdisjoint(applied)
        status = json.loads(run_outbox("inbox", "status", "--db-url", pg_url, "--json",
                                       "--bootstrap-servers", kafka).stdout)  # fmt: skip
        assert sum(p["parked"] for p in status["partitions"]) == 2
        assert sum(p["held"] for p in status["partitions"]) == 4
        # Tansu reports the last batch's base offset + 1 as the end: only check it is known.
        assert all(p["lag"] is not None for p in status["partitions"]), json.dumps(status)
        # The fix is deployed: the handler accepts the events again.
        bad.clear()
        result = run_outbox("inbox", "parked", "requeue", "--db-url", pg_url,
                            str(poison.event_id))  # fmt: skip
        assert result.returncode == 0 and "requeued 1" in result.stdout, result.stderr
        k0 = {e.event_id for e in sent if e.key == "k0"}
        wait_for(lambda: k0 <= applied_ids(pg_url), 30, "the parked key applied")
        # k1: dropped instead; its held event then flows, the dropped one never applies.
        result = run_outbox("inbox", "parked", "drop", "--db-url", pg_url, "--all")
        assert result.returncode == 0 and "dropped 1" in result.stdout, result.stderr
        k1 = {e.event_id for e in sent if e.key == "k1"} - {second.event_id}
        wait_for(lambda: k1 <= applied_ids(pg_url), 30, "the dropped key's held events")
        wait_for(lambda: _parked(pg_url) == [], 30, "no parked rows left")
    found = figures(pg_url, sent, expect={e.event_id for e in sent} - {second.event_id})  # type: ignore[misc]
    print(found.line("poison, requeue and drop"))
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)
    assert second.event_id not in applied_ids(pg_url)


def test_a_record_without_event_id_is_parked(sqlite_url: str, kafka: str) -> None:
    prepare_db(sqlite_url).dispose()
    topic = new_topic()
    create_topic(kafka, topic, 1)
    sent = [Sent("a", "x", 0), Sent(None, "y", 0), Sent("c", "z", 0)]
    produce(kafka, topic, sent)
    with running(effects_inbox(sqlite_url), kafka, [topic]):
        wait_for(lambda: applied_ids(sqlite_url) == {"a", "c"}, 60, "the good ones")
        wait_for(lambda: len(_parked(sqlite_url)) == 1, 30, "the parked one")
    row = _parked(sqlite_url)[0]
    assert row["offset"] == 1 and "no event id" in str(row["error"])


# -- CLI: purge only below the stored offset; bad input ----------------------------------------


def test_purge_deletes_only_old_rows_below_the_stored_offset(sqlite_url: str) -> None:
    engine = prepare_db(sqlite_url)
    store = InboxStore("billing")
    factory = sessionmaker(engine)
    with factory() as s, s.begin():
        store.claim(s, "t", 0, "me")
        store.fence(s, "t", 0, 1, 2)  # offsets 0 and 1 applied, 2 not yet
        for n in range(3):
            store.record(s, f"e{n}", _record(f"e{n}", n), "done")
        s.execute(store.dedup.update().values(received_at=datetime.now(UTC) - timedelta(days=9)))
    result = run_outbox("inbox", "purge", "--db-url", sqlite_url, "--older-than", "7d")
    assert result.returncode == 0 and "purged 2" in result.stdout, result.stderr
    with factory() as s:
        assert [r[0] for r in s.execute(sa.select(store.dedup.c.event_id))] == ["e2"]
    engine.dispose()


def test_bad_input_is_one_line_and_a_non_zero_exit(sqlite_url: str, kafka: str) -> None:
    cases = [
        (["--app", "no_such_module:inbox"], "cannot import --app 'no_such_module:inbox'"),
        (["--app", "tests.inbox_app:not_an_inbox"], "not an outbox.Inbox"),
        (["--app", "tests.inbox_app"], "is not package.module:name"),
        (["--app", "tests.inbox_app:inbox"], "does not exist: run `outbox migrate`"),
    ]
    for args, message in cases:
        result = run_outbox("consume", *args, "--bootstrap-servers", kafka, "--topic", "t",
                            env={**_env(), "INBOX_TEST_DB": sqlite_url})  # fmt: skip
        assert result.returncode != 0
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    result = run_outbox("inbox", "status", "--db-url", sqlite_url)
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def _env() -> dict[str, str]:
    from tests.support import clean_env

    return clean_env()


def test_a_handler_that_is_not_callable_is_refused() -> None:
    from outbox import ConfigurationError, Inbox

    inbox = Inbox(sessionmaker(), consumer="billing")
    with pytest.raises(ConfigurationError, match="not callable"):
        inbox.add_handler("OrderPlaced", "not a function")  # type: ignore[arg-type]


def test_sigterm_finishes_the_record_in_flight_and_exits_0(sqlite_url: str, kafka: str) -> None:
    prepare_db(sqlite_url).dispose()
    topic = new_topic()
    create_topic(kafka, topic, 1)
    sent = make_events(keys=2, per_key=10)
    produce(kafka, topic, sent)
    from outbox.demo.broker import free_port
    from tests.support import http_status

    health, metrics = free_port(), free_port()
    consumer = ConsumerProcess(
        sqlite_url, kafka, [topic], "--health-port", str(health), "--metrics-port", str(metrics),
        env={"INBOX_TEST_SLOW": "0.2"},
    )  # fmt: skip
    try:
        wait_for(lambda: len(applied_ids(sqlite_url)) >= 3, 60, "some applied")
        assert http_status(health, "/healthz") == 200
        assert http_status(health, "/readyz") == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as page:
            text = page.read().decode()
        assert 'outbox_inbox_events_applied_total{topic="' + topic in text
        assert "outbox_inbox_handler_duration_seconds_bucket" in text
        assert consumer.terminate() == 0, consumer.log[-2000:]
    finally:
        consumer.kill()
    assert "Traceback" not in consumer.log
    done = len(applied_ids(sqlite_url))
    assert _next_offsets(sqlite_url) == done  # the record in flight finished, with its offset


def test_handler_sees_the_session_and_event_fields(sqlite_url: str) -> None:
    from outbox import Inbox, InboxEvent

    engine = prepare_db(sqlite_url)
    inbox = Inbox(sessionmaker(engine), consumer="billing")
    seen: list[tuple[str, str | None, object]] = []

    @inbox.handler("OrderPlaced")
    def placed(session: Session, event: InboxEvent) -> None:
        seen.append(("typed", event.type, event.json()))

    @inbox.handler()
    def every(session: Session, event: InboxEvent) -> None:
        seen.append(("all", event.type, event.header("event_id")))

    event = InboxEvent("e", "OrderPlaced", "k", "t", 0, 3, b'{"a": 1}', {"event_id": b"e"})
    with sessionmaker(engine)() as s:
        inbox.handle(s, event)
        inbox.handle(s, InboxEvent("f", "Other", None, "t", 0, 4, None, {}))
    assert seen == [("typed", "OrderPlaced", {"a": 1}), ("all", "OrderPlaced", "e"),
                    ("all", "Other", None)]  # fmt: skip
    engine.dispose()


def test_batched_mode_dedups_and_falls_back_for_a_failing_record(db_url: str, kafka: str) -> None:
    prepare_db(db_url).dispose()
    topic = new_topic("batch")
    create_topic(kafka, topic, 1)
    sent = make_events(keys=4, per_key=10)
    repeats = sent[::5]
    poison = sent[17]
    # Each repeat after its original (a repeat of a later event would move it earlier).
    produce(kafka, topic, sent[:20] + sent[:20:5] + sent[20:] + sent[20::5] + repeats)
    inbox = effects_inbox(db_url, poison={poison.event_id or ""}, batch_size=16)
    held = {e.event_id for e in sent if e.key == poison.key and e.seq > poison.seq}
    with running(inbox, kafka, [topic]):
        wait_for(lambda: _next_offsets(db_url) == len(sent) + 2 * len(repeats), 60, "all read")
        wait_for(lambda: len(_parked(db_url)) == 1 + len(held), 30, "parked and held")
    expect = {e.event_id for e in sent} - held - {poison.event_id}
    found = figures(db_url, sent, expect=expect)  # type: ignore[arg-type]
    print(found.line(f"batched mode on {sa.make_url(db_url).get_backend_name()}"))
    assert (found.lost, found.applied_twice, found.order_violations) == (0, 0, 0)
    assert applied_ids(db_url) == expect
