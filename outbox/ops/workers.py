"""`outbox relay --partitioned --workers K`: K member relays of one sidecar, each its own process
(one core each: one Python process is bound by its GIL), supervised here.

Each worker is `python -m outbox relay` with the parent's settings in its environment (so flags
and ``OUTBOX_*`` variables reach it the same way) and ``workers=1``; worker ``i`` serves its
health and metrics on ``port + i``. Each is a full member of the table's partitioned relays:
its own relay id, heartbeat and partitions. SIGTERM/SIGINT are passed on (each worker releases
its partitions after its batches in flight); a worker that dies is restarted after a second,
and one that fails at start-up (exits non-zero within `STARTUP_GRACE`) stops the sidecar with
its exit code, so a mistake is reported once instead of restarted forever.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import fields
from types import FrameType
from typing import Any

from outbox.config import ENV_PREFIX, PRODUCER_ENV_PREFIX, RelayConfig

logger = logging.getLogger("outbox.workers")

#: Seconds after its start within which a failing worker stops the sidecar.
STARTUP_GRACE = 5.0
#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0


def worker_env(
    config: RelayConfig, index: int, log_level: str, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment of worker `index`: `base` without OUTBOX_* settings, plus `config`."""
    env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
    for f in fields(config):
        value: Any = getattr(config, f.name)
        if f.name == "producer_config":
            for name, setting in value.items():
                env[f"{PRODUCER_ENV_PREFIX}{name.upper()}"] = str(setting)
            continue
        if f.name in ("health_port", "metrics_port") and value:
            value += index
        if f.name == "workers":
            value = 1
        if value is None:
            continue
        env[ENV_PREFIX + f.name.upper()] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    env["OUTBOX_LOG_LEVEL"] = log_level
    return env


class Workers:
    """Starts, watches and stops the worker processes."""

    def __init__(self, config: RelayConfig, log_level: str) -> None:
        self.config = config
        self.log_level = log_level
        self._stop = threading.Event()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        env = worker_env(self.config, index, self.log_level, os.environ)
        return subprocess.Popen([sys.executable, "-m", "outbox", "relay"], env=env)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit code 0) or a worker's start-up failure (its code)."""
        previous = {
            sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(self.config.workers):
                self._procs.append(self._spawn(index))
                self._started.append(time.monotonic())
            logger.info(
                "started %d partitioned relay workers (pids %s)",
                len(self._procs),
                ", ".join(str(p.pid) for p in self._procs),
            )
            while not self._stop.wait(0.2):
                for index, proc in enumerate(self._procs):
                    code = proc.poll()
                    if code is None:
                        continue
                    if code != 0 and time.monotonic() - self._started[index] < STARTUP_GRACE:
                        logger.error("worker %d failed at start-up (exit %d)", index, code)
                        self._stop.set()
                        self._shutdown()
                        return code
                    logger.warning("worker %d exited (code %d): restarting it", index, code)
                    if self._stop.wait(RESTART_DELAY):
                        break
                    self._procs[index] = self._spawn(index)
                    self._started[index] = time.monotonic()
            self._shutdown()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop.is_set():  # a second signal: the workers exit at once too
            for proc in self._procs:
                if proc.poll() is None:
                    proc.send_signal(signum)
            return
        logger.info("%s received: stopping the workers", signal.Signals(signum).name)
        self._stop.set()

    def _shutdown(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout + 5
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


__all__ = ["Workers", "worker_env"]
