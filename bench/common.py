"""The harness shared by the scenarios: registry, run context, figures, events, timing.

A scenario is a function ``run(ctx: Context) -> None`` registered with `@scenario(...)` in a
module listed in `bench.__main__.SCENARIO_MODULES`. It measures its baseline and its subjects in
the same run and records them with `Context.record`; the harness prints and saves them.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from outbox.relay.publisher import Message

T = TypeVar("T")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[Context], None]


#: Every registered scenario, in the order they run.
SCENARIOS: list[Scenario] = []


def scenario(
    name: str, title: str
) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register `run(ctx)` as the scenario `name` (selectable with ``--only name``)."""

    def register(run: Callable[[Context], None]) -> Callable[[Context], None]:
        if any(s.name == name for s in SCENARIOS):
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS.append(Scenario(name, title, run))
        return run

    return register


@dataclass
class Figure:
    scenario: str
    name: str
    value: float
    unit: str
    #: Name of the figure (same scenario) this one is compared with; None for a baseline.
    baseline: str | None = None
    #: value / baseline value.
    ratio: float | None = None
    headline: bool = False
    samples: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class Context:
    """What a scenario gets: the broker, the databases, the run's size and its figures."""

    bootstrap_servers: str
    quick: bool
    pg_url: str
    mariadb_url: str
    #: True when the harness runs its own embedded broker (fresh ones can be started).
    embedded_broker: bool = False
    figures: list[Figure] = field(default_factory=list)
    #: Free-form facts a scenario wants saved in the JSON (partition counts, settings...).
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str = ""

    @property
    def repeats(self) -> int:
        """Measurements per subject; the median is reported."""
        return 1 if self.quick else 5

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def fact(self, name: str, value: Any) -> None:
        self.facts.setdefault(self.current, {})[name] = value

    def record(
        self,
        name: str,
        samples: Sequence[float],
        unit: str,
        *,
        baseline: str | None = None,
        headline: bool = False,
        note: str = "",
    ) -> Figure:
        """Record the median of `samples`; with `baseline`, also its ratio to that figure."""
        value = statistics.median(samples)
        ratio = None
        if baseline is not None:
            base = self.figure(baseline)
            ratio = value / base.value if base.value else None
        figure = Figure(
            self.current, name, value, unit, baseline, ratio, headline, list(samples), note
        )
        self.figures.append(figure)
        return figure

    def figure(self, name: str) -> Figure:
        for f in self.figures:
            if f.scenario == self.current and f.name == name:
                return f
        raise KeyError(f"no figure {name!r} in scenario {self.current!r} yet")

    @contextmanager
    def fresh_broker(self) -> Iterator[str]:
        """Point `bootstrap_servers` at a new embedded broker for the block (an in-memory
        broker slows down as it fills: every measurement gets an empty one); an external
        broker is used as it is."""
        if not self.embedded_broker:
            yield self.bootstrap_servers
            return
        from outbox.demo.broker import start_broker

        broker = start_broker()
        previous, self.bootstrap_servers = self.bootstrap_servers, broker.bootstrap_servers
        try:
            yield self.bootstrap_servers
        finally:
            self.bootstrap_servers = previous
            broker.stop()

    @contextmanager
    def database(self, kind: str) -> Iterator[str]:
        """A fresh, empty database (postgresql, mariadb, sqlite), dropped afterwards."""
        import tempfile

        from tests.support import fresh_database

        with tempfile.TemporaryDirectory() as tmp, fresh_database(kind, tmp) as url:
            yield url


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_events(
    topic: str, count: int, *, keys: int = 1000, payload_bytes: int = 300
) -> list[Message]:
    """Messages shaped like the relay's: JSON payload, 1,000 keys, the relay's five headers."""
    created = datetime(2025, 1, 1, tzinfo=UTC)
    created_at = created.isoformat().encode()
    created_ms = int(created.timestamp() * 1000)
    messages = []
    for i in range(count):
        aggregate_id = f"order-{i % keys}"
        body = json.dumps({"order_id": aggregate_id, "seq": i, "status": "placed", "pad": ""})
        payload = body[:-2] + "x" * max(0, payload_bytes - len(body)) + '"}'
        messages.append(
            Message(
                topic,
                aggregate_id.encode(),
                payload.encode(),
                [
                    ("event_id", str(uuid.uuid4()).encode()),
                    ("event_type", b"OrderPlaced"),
                    ("aggregate_type", b"order"),
                    ("aggregate_id", aggregate_id.encode()),
                    ("created_at", created_at),
                ],
                created_ms + i,
            )
        )
    return messages


def timed(action: Callable[[], object]) -> float:
    """Seconds that `action()` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def interleaved(subjects: dict[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Run every subject `repeats` times, rotating the order so drift hits all of them alike."""
    samples: dict[str, list[T]] = {name: [] for name in subjects}
    names = list(subjects)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(subjects[name]())
    return samples


def as_json(ctx: Context, meta: dict[str, Any]) -> str:
    return json.dumps(
        {**meta, "figures": [asdict(f) for f in ctx.figures], "facts": ctx.facts}, indent=2
    )
