"""The relay's HTTP endpoints for orchestrators and Prometheus, and the HEALTHCHECK probe.

``/healthz``  200 while the relay loop is alive, else 503 (restart me).
``/readyz``   200 when the database and broker are reachable, else 503, with a JSON body such
              as ``{"database": true, "broker": false, "lease": "standby"}``.
``/metrics``  the Prometheus exposition, when a metrics source is given (else 404).

The server runs on a daemon thread (stdlib ``ThreadingHTTPServer``), so a slow scrape never
blocks the relay loop, and it writes no access log.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from outbox.errors import ConfigurationError

log = logging.getLogger(__name__)

Alive = Callable[[], bool]
Ready = Callable[[], tuple[bool, dict[str, Any]]]
MetricsSource = Callable[[], tuple[bytes, str]]

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class HealthServer:
    """Serves ``/healthz``, ``/readyz`` and optionally ``/metrics`` on one port."""

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        *,
        alive: Alive,
        ready: Ready,
        metrics: MetricsSource | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"health port must be 0..65535, got {port}")
        self._address = (host, port)
        self._alive = alive
        self._ready = ready
        self._metrics = metrics
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the one the OS picked when 0 was asked), once started."""
        if self._server is None:
            raise RuntimeError("the health server is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            server_class = _IPv6Server if ":" in self._address[0] else ThreadingHTTPServer
            server = server_class(self._address, self._handler_class())
        except OSError as exc:
            host, port = self._address
            raise ConfigurationError(
                f"cannot serve health checks on {host}:{port}: {exc.strerror or exc}"
            ) from None
        server.daemon_threads = True
        self._server = server
        # A short poll interval makes stop() quick; the cost is an idle wake-up 10 times a second.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), name="outbox-health", daemon=True
        )
        self._thread.start()
        log.info("health endpoints on http://%s:%d", self._address[0], self.port)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "outbox-relay"
            sys_version = ""

            def do_GET(self) -> None:
                status, body, content_type = owner._respond(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # Probes arrive every few seconds: an access log would drown the relay's own.
                pass

        return Handler

    def _respond(self, path: str) -> tuple[int, bytes, str]:
        # The callbacks belong to the relay: one of them failing is a failed check, not a crash
        # of the server thread.
        if path == "/healthz":
            try:
                alive = bool(self._alive())
            except Exception:
                log.exception("liveness check failed")
                alive = False
            return (200, b"ok\n", _TEXT) if alive else (503, b"not alive\n", _TEXT)
        if path == "/readyz":
            try:
                ready, detail = self._ready()
            except Exception as exc:
                log.exception("readiness check failed")
                ready, detail = False, {"error": type(exc).__name__}
            body = json.dumps(detail, default=str, sort_keys=True).encode() + b"\n"
            return (200 if ready else 503), body, _JSON
        if path == "/metrics" and self._metrics is not None:
            try:
                payload, content_type = self._metrics()
            except Exception:
                log.exception("rendering metrics failed")
                return 500, b"metrics unavailable\n", _TEXT
            return 200, payload, content_type
        return int(HTTPStatus.NOT_FOUND), b"not found\n", _TEXT


def probe(url: str, timeout: float) -> int:
    """GET `url`: exit code 0 on HTTP 200, else 1. For ``outbox healthcheck`` (no curl in slim
    images)."""
    # No proxy: the probe targets the relay beside it, whatever HTTP_PROXY the container has.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError):
        # HTTPError (a 503) is a URLError; refused connections and timeouts are OSErrors.
        return 1
