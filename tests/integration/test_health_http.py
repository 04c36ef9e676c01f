"""The health server over real HTTP on 127.0.0.1, and the HEALTHCHECK probe against it."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from outbox.errors import ConfigurationError
from outbox.ops.health import HealthServer, probe


class State:
    def __init__(self) -> None:
        self.alive = True
        self.ready = True
        self.detail: dict[str, Any] = {"database": True, "broker": True, "lease": "active"}
        self.fail = False

    def is_alive(self) -> bool:
        if self.fail:
            raise RuntimeError("boom")
        return self.alive

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.fail:
            raise RuntimeError("boom")
        return self.ready, dict(self.detail)


def get(url: str) -> tuple[int, bytes, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers["Content-Type"]


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
def server(state: State) -> Iterator[HealthServer]:
    metrics = (b"outbox_pending_events 3.0\n", "text/plain; version=0.0.4; charset=utf-8")
    with HealthServer(
        0, "127.0.0.1", alive=state.is_alive, ready=state.readiness, metrics=lambda: metrics
    ) as running:
        yield running


def base(server: HealthServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def test_port_zero_picks_a_free_port(server: HealthServer) -> None:
    assert server.port > 0


def test_healthz_follows_alive(server: HealthServer, state: State) -> None:
    assert get(base(server) + "/healthz")[0] == 200
    state.alive = False
    assert get(base(server) + "/healthz")[0] == 503


def test_readyz_reports_the_detail_as_json(server: HealthServer, state: State) -> None:
    status, body, content_type = get(base(server) + "/readyz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"database": True, "broker": True, "lease": "active"}
    state.ready = False
    state.detail = {"database": True, "broker": False, "lease": "standby"}
    status, body, _ = get(base(server) + "/readyz?verbose=1")
    assert status == 503
    assert json.loads(body) == {"database": True, "broker": False, "lease": "standby"}


def test_failing_callbacks_give_503_and_the_server_survives(
    server: HealthServer, state: State
) -> None:
    state.fail = True
    assert get(base(server) + "/healthz")[0] == 503
    status, body, _ = get(base(server) + "/readyz")
    assert status == 503
    assert json.loads(body) == {"error": "RuntimeError"}
    state.fail = False
    assert get(base(server) + "/healthz")[0] == 200


def test_metrics_body_and_content_type(server: HealthServer) -> None:
    status, body, content_type = get(base(server) + "/metrics")
    assert status == 200
    assert body == b"outbox_pending_events 3.0\n"
    assert content_type.startswith("text/plain; version=0.0.4")


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert get(base(server) + "/nope")[0] == 404


def test_no_metrics_source_means_404(state: State) -> None:
    with HealthServer(0, "127.0.0.1", alive=state.is_alive, ready=state.readiness) as running:
        assert get(base(running) + "/metrics")[0] == 404
        assert get(base(running) + "/healthz")[0] == 200


def test_no_access_log_on_stderr(server: HealthServer, capfd: pytest.CaptureFixture[str]) -> None:
    get(base(server) + "/healthz")
    get(base(server) + "/nope")
    assert capfd.readouterr().err == ""


def test_probe_exit_codes(server: HealthServer, state: State) -> None:
    assert probe(base(server) + "/healthz", timeout=5) == 0
    state.alive = False
    assert probe(base(server) + "/healthz", timeout=5) == 1
    assert probe(base(server) + "/readyz", timeout=5) == 0


def test_probe_of_a_closed_port_is_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there any more.
    assert probe(f"http://127.0.0.1:{port}/healthz", timeout=2) == 1


def test_stop_releases_the_port(state: State) -> None:
    running = HealthServer(0, "127.0.0.1", alive=state.is_alive, ready=state.readiness)
    running.start()
    port = running.port
    running.stop()
    assert probe(f"http://127.0.0.1:{port}/healthz", timeout=2) == 1
    again = HealthServer(port, "127.0.0.1", alive=state.is_alive, ready=state.readiness)
    again.start()
    try:
        assert probe(f"http://127.0.0.1:{port}/healthz", timeout=2) == 0
    finally:
        again.stop()


def test_busy_port_is_a_configuration_error(server: HealthServer, state: State) -> None:
    clash = HealthServer(server.port, "127.0.0.1", alive=state.is_alive, ready=state.readiness)
    with pytest.raises(ConfigurationError, match="cannot serve health checks"):
        clash.start()
