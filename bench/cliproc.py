"""The shipped `outbox relay` command in its own process, as a sidecar runs it, and a probe that
times a drain from outside.

The command gets only the database URL and the broker (environment, as a deployment sets
them) and runs with its defaults, default logging included (INFO lines on stderr, kept in a file
whose tail is shown if it fails). A drain is timed by watching the outbox table's lowest `seq`
(backlogs are generated with consecutive sequence numbers; the index answers `min(seq)` in
microseconds, so the probe costs the relay nothing that counting rows would): the first change
is the first batch deleted after its acknowledgement, NULL is the last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

#: Seconds between two looks at the table while a drain runs.
PROBE_INTERVAL = 0.005


def outbox_command() -> list[str]:
    """The `outbox` console script of this environment (what `pip install` puts on PATH)."""
    script = Path(sys.executable).with_name("outbox")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from outbox.cli import main; main()"]


def proc_status(pid: int, field: str) -> float:
    """A /proc/PID/status field in MB (VmHWM: peak resident memory)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids`, those still running (a process gone counts nothing)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            continue
    return total


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine: the relay's backends and the
    checkpointer, WAL writer, background writer and autovacuum workers that its deletes keep
    busy (the machine's other sessions too: read on a quiet machine)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() == "postgres":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


class Sidecar:
    """A process started with `argv`; `stop` sends SIGTERM and expects exit status 0."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.log: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def peak_rss_mb(self) -> float:
        return proc_status(self.proc.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.returncode != 0:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
        finally:
            self.log.close()


def outbox_relay(url: str, bootstrap_servers: str, **env: str) -> Sidecar:
    """`outbox relay` with its defaults, configured from the environment."""
    return Sidecar(
        [*outbox_command(), "relay"],
        {"OUTBOX_DB_URL": url, "OUTBOX_BOOTSTRAP_SERVERS": bootstrap_servers, **env},
        "outbox relay",
    )


def watch_drain(
    url: str, table: str, column: str, count: int, sidecar: Sidecar, timeout: float = 1800
) -> dict[str, Any]:
    """Wait until `table` is empty; the drain's rates, timed from outside the relay.

    `rate`: events / (process start to empty): connecting and the first batch included.
    `steady_rate`: the events after the first deletion / (first deletion to empty);
    `steady_cpu_us`: the process's CPU time per event over the same stretch;
    `db_steady_cpu_us` (PostgreSQL): all PostgreSQL processes' CPU per event over it.
    """
    database = postgres_pids if url.startswith("postgresql") else None
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    query = sa.text(f"SELECT min({column}) FROM {table}")
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            start = conn.execute(query).scalar()
            if start is None:
                raise RuntimeError(f"{table} is empty before the drain")
            first: float | None = None
            first_gone = 0
            first_cpu = 0.0
            first_db_cpu = 0.0
            deadline = time.monotonic() + timeout
            while True:
                low = conn.execute(query).scalar()
                now = time.perf_counter()
                if low is None:
                    break
                if first is None and low != start:
                    first, first_gone = now, int(low) - int(start)
                    first_cpu = sidecar.cpu_seconds()
                    first_db_cpu = total_cpu_seconds(database()) if database else 0.0
                if time.monotonic() > deadline:
                    raise RuntimeError(f"drain not done after {timeout}s: {sidecar.tail()}")
                sidecar.check_alive()
                time.sleep(PROBE_INTERVAL)
            done = now
            done_cpu = sidecar.cpu_seconds()
            done_db_cpu = total_cpu_seconds(database()) if database else 0.0
    finally:
        engine.dispose()
    first = first if first is not None else done
    return {
        "events": count,
        "total_s": done - sidecar.started,
        "first_ack_s": first - sidecar.started,
        "rate": count / (done - sidecar.started),
        "steady_rate": (count - first_gone) / (done - first) if done > first else 0.0,
        "maxrss_mb": sidecar.peak_rss_mb(),
        "cpu_s": done_cpu,
        # The relay process's CPU per event in the steady state (start-up and imports left
        # out): on a loaded machine a steadier comparison than rates.
        "steady_cpu_us": (done_cpu - first_cpu) / (count - first_gone) * 1e6
        if first_cpu and count > first_gone
        else 0.0,
        "db_steady_cpu_us": (done_db_cpu - first_db_cpu) / (count - first_gone) * 1e6
        if database and first_cpu and count > first_gone
        else 0.0,
    }
