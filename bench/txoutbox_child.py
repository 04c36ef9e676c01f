"""txoutbox (the best Python peer, from PyPI) as a relay process: `python -m bench.txoutbox_child
SPEC_JSON`, run until SIGTERM.

SPEC: {"dsn" (asyncpg form), "bootstrap_servers", "table", "notify" (LISTEN/NOTIFY wake-up),
"batch_size", "concurrency", "producer" (kafka-python settings)}. txoutbox's PostgreSQL storage
(asyncpg, `delete_on_ack=True` as this relay deletes) and its `Relay`; the publisher is the one
function its README asks for, on kafka-python with the same producer settings as `outbox relay`
(so the client is the same and the relays' designs are what differs): each message awaited
until acknowledged, as txoutbox requires before it acks the row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any

import asyncpg
from kafka import KafkaProducer
from txoutbox import OutboxMessage, Relay, RelayConfig
from txoutbox.adapters.postgres import PostgresStorage

CHANNEL = "bench_txoutbox"


def storage_for(pool: asyncpg.Pool, table: str, notify: bool) -> PostgresStorage:
    return PostgresStorage(
        pool, table=table, delete_on_ack=True, notify_channel=CHANNEL if notify else None
    )


async def run(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    pool = await asyncpg.create_pool(spec["dsn"], min_size=2, max_size=4)
    storage = storage_for(pool, spec["table"], spec["notify"])
    producer = KafkaProducer(bootstrap_servers=spec["bootstrap_servers"], **spec["producer"])

    def settle(done: asyncio.Future[None], future: Any) -> None:
        if done.done():
            return
        if future.failed():
            done.set_exception(future.exception)
        else:
            done.set_result(None)

    async def publish(message: OutboxMessage) -> None:
        done: asyncio.Future[None] = loop.create_future()
        future = producer.send(
            message.topic,
            message.payload,
            key=message.key.encode() if message.key is not None else None,
            headers=[(k, v.encode()) for k, v in message.headers.items()],
        )
        future.add_both(lambda _: loop.call_soon_threadsafe(settle, done, future))
        await done

    config = RelayConfig(batch_size=spec["batch_size"], concurrency=spec["concurrency"])
    relay = Relay(storage, publish, config=config)
    listener = await storage.listen(relay.wake) if spec["notify"] else None
    loop.add_signal_handler(signal.SIGTERM, relay.stop)
    print("ready", flush=True)
    try:
        await relay.run()
    finally:
        if listener is not None:
            await listener.close()
        producer.close(5)
        await pool.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    asyncio.run(run(json.loads(sys.argv[1])))


if __name__ == "__main__":
    main()
