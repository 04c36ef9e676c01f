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
    `mid_rate`, `mid_cpu_us`, `db_mid_cpu_us`: the same from 10% to 90% of the backlog gone.
    From the first deletion, the batches already read and sent count in the events but not in
    the time or the CPU (a pipelined relay has a batch or two in flight then): worth several
    per cent of a 10k drain, nothing of a million. Between 10% and 90% as much is in flight at
    both ends, so it cancels out: the window to compare drains of different sizes.

    The probe reads the lowest `column` from the last one seen upwards: a drain only deletes,
    so nothing lower can come back, and the probe does not walk the index entries of the rows
    deleted so far (a plain min() did, 200 times a second: at a million rows it took more of
    PostgreSQL's CPU than the relay's reads).
    """
    database = postgres_pids if url.startswith("postgresql") else None
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    query = sa.text(f"SELECT min({column}) FROM {table} WHERE {column} >= :low")
    marks: dict[str, tuple[float, int, float, float]] = {}

    def mark(name: str, at: float, gone: int) -> None:
        db_cpu = total_cpu_seconds(database()) if database else 0.0
        marks[name] = (at, gone, sidecar.cpu_seconds(), db_cpu)

    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            start = conn.execute(sa.text(f"SELECT min({column}) FROM {table}")).scalar()
            if start is None:
                raise RuntimeError(f"{table} is empty before the drain")
            low = start
            deadline = time.monotonic() + timeout
            while True:
                seen = conn.execute(query, {"low": low}).scalar()
                now = time.perf_counter()
                if seen is None:
                    break
                low = seen
                gone = int(low) - int(start)
                if "first" not in marks and gone:
                    mark("first", now, gone)
                if "10%" not in marks and gone >= count // 10:
                    mark("10%", now, gone)
                if "90%" not in marks and gone >= count * 9 // 10:
                    mark("90%", now, gone)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"drain not done after {timeout}s: {sidecar.tail()}")
                sidecar.check_alive()
                time.sleep(PROBE_INTERVAL)
            mark("done", now, count)
    finally:
        engine.dispose()
    done = marks["done"]
    first = marks.get("first", done)

    def between(a: tuple[float, int, float, float], b: tuple[float, int, float, float]) -> dict:
        events = b[1] - a[1]
        if events <= 0 or b[0] <= a[0]:
            return {"rate": 0.0, "cpu_us": 0.0, "db_cpu_us": 0.0}
        return {
            "rate": events / (b[0] - a[0]),
            "cpu_us": (b[2] - a[2]) / events * 1e6,
            "db_cpu_us": (b[3] - a[3]) / events * 1e6 if database else 0.0,
        }

    steady = between(first, done)
    mid = between(marks["10%"], marks["90%"]) if "90%" in marks else steady
    return {
        "events": count,
        "total_s": done[0] - sidecar.started,
        "first_ack_s": first[0] - sidecar.started,
        "rate": count / (done[0] - sidecar.started),
        "steady_rate": steady["rate"],
        "maxrss_mb": sidecar.peak_rss_mb(),
        "cpu_s": done[2],
        # The relay process's CPU per event in the steady state (start-up and imports left
        # out): on a loaded machine a steadier comparison than rates.
        "steady_cpu_us": steady["cpu_us"],
        "db_steady_cpu_us": steady["db_cpu_us"],
        "mid_rate": mid["rate"],
        "mid_cpu_us": mid["cpu_us"],
        "db_mid_cpu_us": mid["db_cpu_us"],
    }
