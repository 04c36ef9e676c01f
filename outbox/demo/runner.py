"""`outbox demo`: the whole flow on one machine, checked end to end.

An example application (`outbox.demo.example_app`) places orders from several threads; each order's
transaction also writes its ``OrderPlaced`` event, and one order in ten is rolled back after its
rows were flushed. A relay publishes the outbox to Kafka (an embedded Tansu broker unless one is
given) and a consumer reads the topic back. The summary uses the terms of a queue checker:

* lost = committed events never consumed (must be 0);
* phantom = consumed events whose transaction never committed (must be 0);
* duplicates = deliveries beyond the first of an event (allowed: delivery is at least once).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from outbox.config import RelayConfig, mask_url
from outbox.demo.example_app import ExampleApp, Order, committed_count
from outbox.errors import OutboxError
from outbox.relay.observer import RelayObserver

#: Give up when nothing new arrived for this long after the writers finished.
STALL_SECONDS = 30.0
#: Keep reading this long after the last expected event, to see duplicates and phantoms.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class DemoResult:
    placed: int
    committed: int
    rolled_back: int
    published: int
    consumed: int
    duplicates: int
    lost: int
    phantom: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.phantom == 0


class _PublishedCounter(RelayObserver):
    """Counts acknowledged events (called from the relay's thread only)."""

    def __init__(self) -> None:
        self.count = 0

    def published(self, topic: str, count: int, delays: Sequence[float]) -> None:
        self.count += count


class _Ledger:
    """What the writers did: the order ids that committed and those rolled back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.committed: set[str] = set()
        self.rolled_back: set[str] = set()

    def record(self, order: Order, committed: bool) -> None:
        with self._lock:
            (self.committed if committed else self.rolled_back).add(str(order.id))


class _Consumer(threading.Thread):
    """Reads every record of `topic` from the beginning; counts deliveries per order id.

    Partitions are assigned by hand: a consumer group would wait for Tansu's slow group join.
    """

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        super().__init__(name="outbox-demo-consumer", daemon=True)
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.deliveries: Counter[str] = Counter()
        self.total = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            self._consume()
        except BaseException as error:  # reported by the demo, not lost in a thread
            self.error = error

    def _consume(self) -> None:
        # kafka-python's names come from the one module that imports it (and its warnings).
        from outbox.kafka._client import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="outbox-demo-consumer",
        )
        try:
            partitions: list[Any] = []
            while not partitions and not self._stop_event.is_set():
                found = consumer.partitions_for_topic(self.topic) or set()
                partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
                if not partitions:
                    self._stop_event.wait(0.2)
            if not partitions:
                return
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            while not self._stop_event.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    for record in records:
                        order_id = str(json.loads(record.value)["order_id"])
                        self.deliveries[order_id] += 1
                        self.total += 1
        finally:
            consumer.close()


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(bar_width=36),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _summary(result: DemoResult) -> Table:
    table = Table(title="summary", title_justify="left")
    table.add_column("")
    table.add_column("events", justify="right")
    table.add_column("")

    def check(value: int) -> str:
        return f"[green]{value}[/green]" if value == 0 else f"[bold red]{value}[/bold red]"

    table.add_row("written (committed)", str(result.committed), "orders committed with their event")
    table.add_row("rolled back", str(result.rolled_back), "orders and events that never left")
    table.add_row("published", str(result.published), "acknowledged by Kafka")
    table.add_row("consumed", str(result.consumed), "records read back from the topic")
    table.add_row("duplicates", str(result.duplicates), "extra deliveries (at least once)")
    table.add_row("lost", check(result.lost), "committed but never consumed: must be 0")
    table.add_row("phantom", check(result.phantom), "consumed but never committed: must be 0")
    return table


def _run_threads(
    count: int, target: Callable[[int], None], errors: list[BaseException]
) -> list[threading.Thread]:
    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=guarded, args=(i,), name=f"outbox-demo-writer-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def run_demo(
    *,
    events: int = 2000,
    bootstrap_servers: str | None = None,
    db_url: str | None = None,
    writers: int = 4,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo and print its progress and summary on `console`."""
    console = console or Console(highlight=False)
    with ExitStack() as stack:
        stack.callback(_log_to(console))
        console.rule("sqlalchemy-outbox demo")
        if db_url is None:
            directory = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="outbox-demo-", ignore_cleanup_errors=True)
            )
            db_url = f"sqlite:///{directory}/demo.db"
            console.print(f"database   SQLite file {directory}/demo.db")
        else:
            console.print(f"database   {mask_url(db_url)}")
        if bootstrap_servers is None:
            from outbox.demo.broker import start_broker

            with console.status("starting the embedded Kafka broker (Tansu)"):
                broker = start_broker()
            stack.callback(broker.stop)
            bootstrap_servers = broker.bootstrap_servers
            console.print(f"broker     embedded Tansu on {bootstrap_servers}")
        else:
            console.print(f"broker     {bootstrap_servers}")

        from outbox.schema.migrate import upgrade

        upgrade(db_url)
        app = ExampleApp(db_url)
        stack.callback(app.close)
        app.create_schema()
        console.print("tables     outbox and outbox_lease (outbox migrate), example_orders")

        run_id = uuid.uuid4().hex[:8]
        config = RelayConfig(
            db_url=db_url,
            bootstrap_servers=bootstrap_servers,
            topic_prefix=f"outbox-demo-{run_id}.",
            poll_interval=0.05,
            batch_size=500,
        )
        topic = f"{config.topic_prefix}orders"
        console.print(f"topic      {topic}")
        console.print(
            f"writing    {events} orders from {writers} threads; one in ten is rolled back\n"
        )

        from outbox.relay import Relay

        counter = _PublishedCounter()
        relay = Relay(config, observer=counter, owner=f"outbox-demo-{run_id}")
        relay_errors: list[BaseException] = []

        def run_relay() -> None:
            try:
                relay.run()
            except BaseException as error:
                relay_errors.append(error)

        relay_thread = threading.Thread(target=run_relay, name="outbox-demo-relay", daemon=True)
        consumer = _Consumer(bootstrap_servers, topic)

        def stop_relay() -> None:
            relay.stop()
            relay_thread.join(config.shutdown_timeout + 5)
            relay.store.dispose()

        def stop_consumer() -> None:
            consumer.stop()
            consumer.join(10)

        stack.callback(stop_relay)
        stack.callback(stop_consumer)
        started = time.monotonic()
        relay_thread.start()
        consumer.start()

        ledger = _Ledger()
        writer_errors: list[BaseException] = []
        threads = _run_threads(
            writers,
            lambda i: app.place_orders(range(i, events, writers), ledger.record),
            writer_errors,
        )
        expected = committed_count(events)
        with _progress(console) as progress:
            placed_task = progress.add_task("written", total=events, note="")
            published_task = progress.add_task("published", total=expected, note="")
            consumed_task = progress.add_task("consumed", total=expected, note="")
            last_change = time.monotonic()
            last_seen = -1
            settled_at: float | None = None
            while True:
                committed, rolled_back = len(ledger.committed), len(ledger.rolled_back)
                unique = len(consumer.deliveries)
                progress.update(
                    placed_task,
                    completed=committed + rolled_back,
                    note=f"{rolled_back} rolled back",
                )
                progress.update(published_task, completed=min(counter.count, expected))
                dup = consumer.total - unique
                progress.update(
                    consumed_task, completed=unique, note=f"{dup} duplicates" if dup else ""
                )
                writing = any(t.is_alive() for t in threads)
                seen = committed + rolled_back + counter.count + consumer.total
                if seen != last_seen:
                    last_seen, last_change = seen, time.monotonic()
                if relay_errors or writer_errors or consumer.error:
                    break
                if not writing:
                    if unique >= committed:
                        settled_at = settled_at or time.monotonic()
                        if time.monotonic() - settled_at >= SETTLE_SECONDS:
                            break
                    elif time.monotonic() - last_change > STALL_SECONDS:
                        console.print(
                            f"[red]nothing arrived for {STALL_SECONDS:g}s: giving up[/red]"
                        )
                        break
                time.sleep(0.1)
        seconds = time.monotonic() - started
        for thread in threads:
            thread.join()
        stop_consumer()
        stop_relay()
        for errors in (writer_errors, relay_errors):
            if errors:
                raise errors[0]
        if consumer.error is not None:
            raise OutboxError(f"the demo's consumer failed: {consumer.error}")

        delivered = set(consumer.deliveries)
        result = DemoResult(
            placed=len(ledger.committed) + len(ledger.rolled_back),
            committed=len(ledger.committed),
            rolled_back=len(ledger.rolled_back),
            published=counter.count,
            consumed=consumer.total,
            duplicates=consumer.total - len(delivered),
            lost=len(ledger.committed - delivered),
            phantom=len(delivered - ledger.committed),
            seconds=seconds,
        )
        console.print()
        console.print(_summary(result))
        rate = result.committed / seconds if seconds > 0 else 0.0
        verdict = "[bold green]OK[/bold green]" if result.ok else "[bold red]FAILED[/bold red]"
        console.print(
            f"{verdict}: lost {result.lost}, phantom {result.phantom}, duplicates "
            f"{result.duplicates}; {result.committed} events end to end in {seconds:.1f}s "
            f"({rate:.0f}/s)"
        )
        return result
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions


def _log_to(console: Console) -> Callable[[], None]:
    """Show warnings (an unreachable broker, a parked event) above the live display; return
    the function that removes the handler again."""
    from outbox.ops.logs import MaskPasswordsFilter

    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    handler.addFilter(MaskPasswordsFilter())
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)

    def remove() -> None:
        root.removeHandler(handler)
        root.setLevel(previous)

    return remove


__all__ = ["DemoResult", "run_demo"]
