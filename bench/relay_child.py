"""One relay in its own process, as a sidecar runs: `python -m bench.relay_child SPEC_JSON`.

SPEC: {"db_url", "bootstrap_servers", "expect" (stop after this many published; 0 = run until
stdin closes), "config": {RelayConfig overrides}, "profile": optional path for a cProfile dump}.

Prints one JSON line when done: seconds from building the relay to the last acknowledgement
(`total_s`, includes connecting), the first acknowledgement's time (`first_ack_s`), the
steady-state rate between the first and last acknowledgement, and peak RSS (VmHWM).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import threading
import time
from collections.abc import Sequence

from outbox.config import RelayConfig
from outbox.relay import Relay
from outbox.relay.observer import RelayObserver


class Counter(RelayObserver):
    def __init__(self, expect: int, on_done: threading.Event) -> None:
        self.expect = expect
        self.count = 0
        self.first: float | None = None
        self.first_count = 0
        self.last = 0.0
        self.on_done = on_done

    def published(self, topic: str, count: int, delays: Sequence[float]) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_count = now, count
        self.count += count
        self.last = now
        if self.expect and self.count >= self.expect:
            self.on_done.set()


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across
    exec, so a child would report its (larger) parent's peak from before the fork."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    config = RelayConfig(
        db_url=spec["db_url"], bootstrap_servers=spec["bootstrap_servers"], **spec["config"]
    )
    done = threading.Event()
    counter = Counter(int(spec["expect"]), done)
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    print(json.dumps({"ready": True}), flush=True)
    started = time.perf_counter()
    relay = Relay(config, observer=counter)
    thread = threading.Thread(target=relay.run, name="relay")
    if profiler is not None:
        profiler.enable()
    thread.start()
    if counter.expect:
        done.wait()
    else:
        sys.stdin.read()  # the parent closes stdin to stop us
    relay.stop()
    thread.join()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    first = counter.first or started
    steady = counter.count - counter.first_count
    result = {
        "published": counter.count,
        "total_s": counter.last - started,
        "first_ack_s": first - started,
        "steady_rate": steady / (counter.last - first) if counter.last > first else 0.0,
        "rate": counter.count / (counter.last - started) if counter.last > started else 0.0,
        "maxrss_mb": peak_rss_mb(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
